"""The bundle's module graph: what the entry reaches through `from pgolf.x import`, in order."""

import ast

from pgolf.bundle.rules import BundleError, ModuleSources, is_pgolf


def _pgolf_deps(tree: ast.Module) -> list[str]:
    deps = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and is_pgolf(node.module):
            if node.module != "pgolf" and node.module not in deps:
                deps.append(node.module)
    return deps


def _find_cycle(deps: dict[str, list[str]], nodes: list[str]) -> list[str]:
    """One import cycle among `nodes` (each of which sits on or behind a cycle)."""
    node, path, seen = nodes[0], [], {}
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = sorted(d for d in deps[node] if d in nodes)[0]
    return path[seen[node]:] + [node]


def ordered_modules(entry_modules: list[str], mods: ModuleSources) -> list[str]:
    deps: dict[str, list[str]] = {}
    todo = [(name, "") for name in entry_modules]
    while todo:
        name, parent = todo.pop()
        if name in deps:
            continue
        try:
            deps[name] = _pgolf_deps(mods.get(name)[1])
        except BundleError as e:
            raise BundleError(f"{parent} imports {name}: {e}" if parent else str(e)) from None
        todo.extend((d, name) for d in deps[name])
    # Kahn's algorithm, smallest name first: the order depends only on the graph.
    waiting = {n: set(d) for n, d in deps.items()}
    order: list[str] = []
    ready = sorted(n for n, d in waiting.items() if not d)
    while ready:
        name = ready.pop(0)
        order.append(name)
        del waiting[name]
        for n, d in waiting.items():
            if name in d:
                d.discard(name)
                if not d:
                    ready.append(n)
        ready.sort()
    if waiting:
        cycle = _find_cycle(deps, sorted(waiting))
        raise BundleError(f"import cycle: {' -> '.join(cycle)}; move the shared names into a module both can import")
    return order


def module_graph(entry_modules: list[str], sources: dict[str, str] | None = None) -> list[str]:
    """Modules reachable from `entry_modules` through `from pgolf.x import ...`, dependencies first.

    `sources` maps module names to source text (for tests) and takes precedence; other modules
    are read from the files `importlib.util.find_spec` locates.
    """
    return ordered_modules(list(entry_modules), ModuleSources(sources))


