"""The docs against the code and the repository: a doc that drifts fails the suite.

- docs/benchmarks.md "Deterministic figures": every row is recomputed from the code (an
  unknown row fails too, so nothing in that table is left unchecked); README.md and
  docs/architecture.md quote rows of it.
- Every commit a doc names is a commit of this repository, and every benchmarks section that
  reports measured figures names the commit whose code produced them.
- docs/architecture.md's module table names every module under src/pgolf, and only those.
- docs/cli.md's enum values are the config tree's `Literal` values.
- No doc cites a file or an issue that is not in the repository."""

import base64
import dataclasses
import json
import re
import subprocess
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BENCH = DOCS / "benchmarks.md"
ARCH = DOCS / "architecture.md"
README = ROOT / "README.md"
# Every markdown file a reader of the repository is sent to.
DOC_FILES = sorted([README, ROOT / "bench" / "README.md", *DOCS.glob("*.md")])


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _info(preset: str, capsys) -> dict:
    from pgolf.cli import main
    assert main(["info", "--preset", preset, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _flops(preset: str) -> int:
    from pgolf.bench import bench_flops_per_token
    from pgolf.config import resolve_config
    from pgolf.model.gpt import GPT
    cfg, _ = resolve_config(preset, env={})
    return bench_flops_per_token(GPT(cfg.model), cfg.run.train_seq_len)["flops_per_token"]


def _record_config(preset: str):
    from pgolf.config import finalize_config, resolve_config
    cfg, _ = resolve_config(preset, env={})
    finalize_config(cfg)
    return cfg


def _bundle_modules(preset: str) -> int:
    from pgolf.bundle import BUNDLE_ENTRY, bundle_modules
    from pgolf.bundle.build import left_out_names
    from pgolf.parts import parts_needed
    cfg = _record_config(preset)
    return len(bundle_modules(list(BUNDLE_ENTRY), leave_out=left_out_names(parts_needed(cfg))))


def _lzma_bytes(preset: str) -> int:
    """Bytes of the LZMA stream inside the counted train_gpt.py (what base85 then encodes)."""
    from pgolf.bundle import shipped_files
    counted = shipped_files(_record_config(preset), "compressed")["train_gpt.py"]
    blob = re.search(r'b85decode\("([^"]+)"\)', counted)
    assert blob, "the counted file no longer holds a base85 blob: update this figure's definition"
    return len(base64.b85decode(blob.group(1)))


FIGURES = {
    "params smoke": lambda c: _info("smoke", c)["params"],
    "params baseline": lambda c: _info("baseline", c)["params"],
    "params record_1128": lambda c: _info("record_1128", c)["params"],
    "params record_1855": lambda c: _info("record_1855", c)["params"],
    "code bytes record_1128": lambda c: _info("record_1128", c)["code_bytes"],
    "code bytes record_1128_fixed": lambda c: _info("record_1128_fixed", c)["code_bytes"],
    "code bytes record_1855": lambda c: _info("record_1855", c)["code_bytes"],
    "code bytes record_1855_fixed": lambda c: _info("record_1855_fixed", c)["code_bytes"],
    "bundle modules record_1128": lambda c: _bundle_modules("record_1128"),
    "bundle lzma bytes record_1128": lambda c: _lzma_bytes("record_1128"),
    "flops per token record_1128": lambda c: _flops("record_1128"),
}


def doc_figures() -> dict[str, int]:
    table = _text(BENCH).split("## Deterministic figures", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([a-z0-9_ ]+?) \| ([\d,]+) \|", table, flags=re.M)
    return {name: int(value.replace(",", "")) for name, value in rows}


def test_every_deterministic_row_is_checked():
    rows = doc_figures()
    assert rows and set(rows) == set(FIGURES), set(rows) ^ set(FIGURES)


@pytest.mark.slow  # builds the record bundles and models: seconds per figure
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_doc_figure_matches_the_code(name, capsys):
    assert doc_figures()[name] == FIGURES[name](capsys)


def _count(pattern: str, text: str, where: str) -> int:
    found = re.findall(pattern, text)
    assert len(found) == 1, f"{where}: expected one match of {pattern!r}, found {found}"
    return int(found[0].replace(",", ""))


def test_readme_and_architecture_quote_the_checked_table():
    rows = doc_figures()
    readme, arch = _text(README), _text(ARCH)
    assert _count(r"parameter count \(([\d,]+)\)", readme, "README.md") == rows["params record_1128"]
    assert _count(r"`record_1855` to the record's script: ([\d,]+)\s+parameters", arch,
                  "architecture.md") == rows["params record_1855"]


# --- commits -------------------------------------------------------------------------------

COMMIT = re.compile(r"`([0-9a-f]{7,40})`")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def _full_history() -> bool:
    try:
        shallow = _git("rev-parse", "--is-shallow-repository")
    except OSError:
        return False
    return shallow.returncode == 0 and shallow.stdout.strip() == "false"


def named_commits() -> dict[str, set[str]]:
    return {path.relative_to(ROOT).as_posix(): set(COMMIT.findall(_text(path))) for path in DOC_FILES}


def test_every_named_commit_is_in_the_history():
    if not _full_history():
        pytest.skip("not a git checkout with full history: named commits cannot be resolved")
    unknown = {(doc, c) for doc, commits in named_commits().items() for c in commits
               if _git("cat-file", "-e", f"{c}^{{commit}}").returncode != 0}
    assert not unknown, f"docs name commits this repository does not have: {sorted(unknown)}"


def _sections(text: str) -> list[tuple[str, str]]:
    parts = re.split(r"^(#{2,3} .+)$", text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def _measured_rows(body: str) -> list[str]:
    """Table rows holding a figure that was measured (not a header, not marked unmeasured)."""
    rows = [ln for ln in body.splitlines() if ln.startswith("|") and not re.match(r"^\|[-:| ]+\|$", ln)]
    return [ln for ln in rows[1:] if re.search(r"\d", ln) and "not measured" not in ln]


def test_every_measured_table_names_its_commit():
    sections = _sections(_text(BENCH))
    assert len(sections) > 5
    missing = [head for head, body in sections
               if head != "## Deterministic figures" and _measured_rows(body) and not COMMIT.search(body)]
    assert not missing, f"benchmarks.md sections with measured figures but no commit: {missing}"


# --- modules -------------------------------------------------------------------------------

def _module_table() -> str:
    return _text(ARCH).split("| module | holds |", 1)[1].split("\n\n", 1)[0]


def test_architecture_names_every_module_and_only_real_ones():
    pkg = ROOT / "src" / "pgolf"
    modules = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py") if p.name != "__init__.py"}
    named = {n for n in re.findall(r"`([\w/]+\.py)`", _module_table()) if not n.startswith(("tests/", "bench/"))}
    assert not modules - named, f"modules docs/architecture.md does not name: {sorted(modules - named)}"
    assert not named - modules, f"docs/architecture.md names modules that do not exist: {sorted(named - modules)}"


def test_architecture_names_every_preset():
    presets = {p.stem for p in (ROOT / "src" / "pgolf" / "presets").glob("*.toml")}
    row = next(ln for ln in _module_table().splitlines() if ln.startswith("| `presets/*.toml`"))
    named = set(re.findall(r"`(\w+)`", row))
    assert presets <= named, sorted(presets - named)


# --- cli.md enums --------------------------------------------------------------------------

def _literal_values(section: str, name: str) -> set[str]:
    from pgolf.config_tree import Config
    cls = type(getattr(Config(), section))
    hint = typing.get_type_hints(cls)[name]
    assert typing.get_origin(hint) is typing.Literal, f"{section}.{name} is not a Literal field"
    assert name in {f.name for f in dataclasses.fields(cls)}
    return set(typing.get_args(hint))


def cli_enums() -> dict[tuple[str, str], set[str]]:
    text = _text(DOCS / "cli.md")
    bullet = text.split("**Types and enums.**", 1)[1].split("\n- **", 1)[0]
    found = re.findall(r"`(\w+)\.(\w+)`\s+((?:[\w]+\s+\|\s+)+[\w]+)", bullet)
    return {(s, n): {v.strip() for v in vals.split("|")} for s, n, vals in found}


def test_cli_doc_lists_each_enum_with_exactly_its_values():
    enums = cli_enums()
    assert len(enums) >= 10
    wrong = {f"{s}.{n}": (sorted(v), sorted(_literal_values(s, n))) for (s, n), v in enums.items()
             if v != _literal_values(s, n)}
    assert not wrong, f"docs/cli.md value lists (doc, code) that differ: {wrong}"


# --- citations -----------------------------------------------------------------------------

# Files and issues outside the repository. Public record / pull-request numbers of the
# challenge ("record #1855", "#1729") are public facts and stay allowed.
OUTSIDE = re.compile(r"(?i:\bissues? #?\d)|\bDESIGN\b|\bSTYLE\.md|\.\./shared/docs|\.\./shared/data README")


def test_no_doc_cites_a_file_or_issue_outside_the_repository():
    hits = [f"{path.relative_to(ROOT)}:{i}: {m.group(0)}" for path in DOC_FILES
            for i, line in enumerate(_text(path).splitlines(), 1) for m in OUTSIDE.finditer(line)]
    assert not hits, "\n".join(hits)


# --- names the docs cite -------------------------------------------------------------------

def _defines(text: str, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b|^{name}\s*[:=]", text, flags=re.M) is not None


def _resolves(dotted: str) -> bool:
    import importlib
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def cited_problems() -> list[str]:
    tests = {p.relative_to(ROOT).as_posix(): _text(p) for p in (ROOT / "tests").rglob("*.py")}
    by_name: dict[str, list[str]] = {}
    for rel in tests:
        by_name.setdefault(rel.rsplit("/", 1)[-1], []).append(rel)
    out = []
    for path in DOC_FILES:
        where = path.relative_to(ROOT).as_posix()
        for token in set(re.findall(r"`([^`\s]+)`", _text(path))):
            file, _, name = token.partition("::")
            base = file.rsplit("/", 1)[-1]
            if file.endswith(".py") and (file.startswith("tests/") or base.startswith("test_")):
                files = ([file] if file in tests else []) if file.startswith("tests/") else by_name.get(base, [])
                if not files:
                    out.append(f"{where}: no test file {file}")
                elif name and not any(_defines(tests[f], name) for f in files):
                    out.append(f"{where}: {file} defines no {name}")
            elif re.fullmatch(r"test_\w+", token) and not any(_defines(t, token) for t in tests.values()):
                out.append(f"{where}: no test named {token}")
            elif re.fullmatch(r"pgolf(\.\w+)+", token) and not _resolves(token):
                out.append(f"{where}: {token} does not resolve")
    return sorted(out)


def test_every_test_and_pgolf_name_a_doc_cites_exists():
    problems = cited_problems()
    assert not problems, "\n".join(problems)


# --- figures of the shared data (recomputed when ../shared/data is beside the checkout) ----

SHARED_DATA = ROOT / ".." / "shared" / "data"


def _shared(rel: str) -> Path:
    path = SHARED_DATA / rel
    if not path.is_file():
        pytest.skip(f"shared data absent: {path.resolve()}")
    return path


def _doc_numbers(pattern: str) -> tuple[str, ...]:
    found = re.findall(pattern, _text(BENCH))
    assert len(found) == 1, f"benchmarks.md: expected one match of {pattern!r}, found {found}"
    return found[0]


@pytest.mark.slow  # reads the 7 M-token train shard
def test_unigram_figures_are_the_unigram_of_the_sample():
    from pgolf.data.corpus import unigram_bpb
    from pgolf.data.shards import load_shard
    from pgolf.data.tokenizer import build_byte_tables, load_tokenizer
    tables = build_byte_tables(load_tokenizer(str(_shared("tokenizers/fineweb_1024_bpe.model")), 1024), 1024)
    train = load_shard(str(_shared("datasets/fineweb_legal_sp1024/fineweb_train_000000.bin")))
    val = load_shard(str(_shared("datasets/fineweb_legal_sp1024/fineweb_val_000000.bin")))
    on_65k, on_16k = _doc_numbers(r"gives ([\d.]+) on the same 65,536 validation tokens\s+and ([\d.]+) on the first 16,384")
    assert (float(on_65k), float(on_16k)) == tuple(round(unigram_bpb(train, val[:n + 1], tables), 5)
                                                   for n in (65536, 16384))


def test_whole_batch_byte_figures_are_the_sidecar_sums():
    # The windows record_1855's plain eval scores per rank (32-window batches, partial one
    # dropped; tests/eval/test_caseops_val_bytes.py holds the eval to these sums).
    from pgolf.data.shards import load_shard
    counts = load_shard(str(_shared("datasets/fineweb_legal_sp8192_caseops/fineweb_val_bytes_000000.bin")))
    counts = counts.astype("int64")

    def charged(world: int) -> int:
        total = 0
        for rank in range(world):
            lo = 305 * rank // world
            kept = (305 * (rank + 1) // world - lo) // 32 * 32
            total += int(counts[lo * 2048 + 1:(lo + kept) * 2048 + 1].sum())
        return total

    one, eight = _doc_numbers(r"charges ([\d,]+) bytes on 1\s+process and ([\d,]+) on 8")
    assert (int(one.replace(",", "")), int(eight.replace(",", ""))) == (charged(1), charged(8))
