"""bundle.freeze beyond config-typed names: a parameter every caller passes the same frozen value,
and `self.x` that __init__ sets once to one, are decided too; anything less certain is left alone."""

import ast

import pytest

from pgolf.bundle.freeze import Freezer, freeze_source
from pgolf.config_tree import Config

CALLER = '''
def run(cfg: Config):
    return helper(1, mode=cfg.schedule.warmdown_mode) + Loader(cfg.data.packing).next()
'''

HELPER = '''
def helper(x: int, mode: str = "auto"):
    if mode == "frac":
        return x + 10
    return x


class Loader:
    def __init__(self, packing: str):
        self.packing = packing

    def next(self):
        return 100 if self.packing == "stream" else 200
'''


def _frozen(cfg: Config, *extra: str) -> str:
    trees = [ast.parse(CALLER), ast.parse(HELPER), *map(ast.parse, extra)]
    return freeze_source(HELPER, Freezer(cfg, trees))


def _call(helper_src: str, cfg: Config) -> int:
    scope: dict = {"Config": Config}
    exec(compile(HELPER if helper_src is None else helper_src, "h", "exec"), scope)
    exec(compile(CALLER, "c", "exec"), scope)
    return scope["run"](cfg)


def _cfg(mode: str, packing: str) -> Config:
    cfg = Config()
    cfg.schedule.warmdown_mode, cfg.data.packing = mode, packing
    return cfg


def test_a_value_every_caller_passes_is_decided_and_computes_the_same():
    for mode, packing in (("frac", "stream"), ("auto", "rows")):
        cfg = _cfg(mode, packing)
        frozen = _frozen(cfg)
        assert frozen != HELPER and ("x + 10" in frozen) == (mode == "frac")
        assert ("100" in frozen) == (packing == "stream") and ("200" in frozen) == (packing != "stream")
        assert _call(frozen, cfg) == _call(HELPER, cfg)


def test_callers_that_disagree_leave_the_parameter_alone():
    other = "def other():\n    return helper(2, mode='iters') + Loader('rows').next()\n"
    frozen = _frozen(_cfg("frac", "stream"), other)
    assert "x + 10" in frozen and "return x\n" in frozen and "100 if" in frozen


def test_a_function_or_class_used_as_a_value_keeps_its_parameters():
    passed = "def other(f=helper, c=Loader):\n    return f, c\n"
    assert _frozen(_cfg("frac", "stream"), passed) == HELPER


def test_an_annotation_is_not_a_use():
    noted = "def other(h: Loader) -> Loader:\n    return h\n"
    assert "self.packing" not in _frozen(_cfg("frac", "stream"), noted).split("def next")[1]


def test_an_attribute_set_anywhere_else_is_not_frozen():
    store = "def reset(obj):\n    obj.packing = 'rows'\n"
    frozen = _frozen(_cfg("frac", "stream"), store)
    assert "100 if self.packing" in frozen and "if mode" not in frozen


def test_a_decorated_function_keeps_its_parameters():
    decorated = HELPER.replace("def helper(", "@some.register\ndef helper(")
    frozen = freeze_source(decorated, Freezer(_cfg("frac", "stream"), [ast.parse(CALLER), ast.parse(decorated)]))
    assert "if mode == 'frac'" in frozen.replace('"', "'")


def test_an_attribute_a_method_sets_again_is_not_frozen():
    again = HELPER + "\n    def switch(self):\n        self.packing = 'rows'\n"
    frozen = freeze_source(again, Freezer(_cfg("frac", "stream"), [ast.parse(CALLER), ast.parse(again)]))
    assert "100 if self.packing" in frozen and "if mode" not in frozen


def test_statements_after_a_return_raise_continue_or_break_are_cut():
    from pgolf.bundle.freeze import dead_tails_cut
    src = '''def f(xs):
    out = []
    for x in xs:
        if x < 0:
            continue
            out.append("never")
        if x > 9:
            break
            out.append("never")
        out.append(x)
    try:
        return out
        out.append("never")
    finally:
        out.append("always")


def g():
    raise ValueError("x")

    @decorated
    def never():
        pass
'''
    cut = dead_tails_cut(src, ast.parse(src))
    assert "never" not in cut and "@decorated" not in cut and 'out.append("always")' in cut
    scope: dict = {}
    exec(compile(cut, "c", "exec"), scope)
    assert scope["f"]([1, -1, 2, 10, 3]) == [1, 2, "always"]
    one_line = "def h():\n    return 1; x = 2\n"
    assert dead_tails_cut(one_line, ast.parse(one_line)) == one_line


def test_a_constructor_setting_several_attributes_in_one_assignment_freezes_each():
    pairs = HELPER.replace("self.packing = packing", "self.packing, self.n = packing, 3")
    swapped = HELPER.replace("self.packing = packing", "self.n, self.packing = packing, 3")
    starred = HELPER.replace("self.packing = packing", "self.packing, *self.rest = packing, 3")
    cfg = _cfg("frac", "stream")
    for src, frozen_to in ((pairs, "100"), (swapped, "200"), (starred, None)):
        frozen = freeze_source(src, Freezer(cfg, [ast.parse(CALLER), ast.parse(src)]))
        assert ("if self.packing" not in frozen) == (frozen_to is not None)
        if frozen_to:
            assert f"return ({frozen_to})" in frozen and _call(frozen, cfg) == _call(src, cfg)


def test_a_method_under_a_pass_through_decorator_still_knows_self():
    cfg = _cfg("frac", "stream")
    for deco, known in (("@torch.no_grad()", True), ("@property", True), ("@functools.cache", False),
                        ("@staticmethod", False)):
        src = HELPER.replace("    def next(self):", f"    {deco}\n    def next(self):")
        frozen = freeze_source(src, Freezer(cfg, [ast.parse(CALLER), ast.parse(src)]))
        assert ("if self.packing" not in frozen) == known, deco


def test_a_list_every_caller_passes_is_not_a_constant():
    src = "def grow(out):\n    out.append(1)\n    return 1 if out else 2\n"
    for arg, frozen_as_is in (("[]", True), ("()", False)):
        caller = f"def run():\n    return grow({arg})\n"
        frozen = freeze_source(src, Freezer(Config(), [ast.parse(caller), ast.parse(src)]))
        assert (frozen == src) == frozen_as_is


def test_a_list_a_constructor_stores_is_not_a_constant():
    src = HELPER.replace("self.packing = packing", "self.packing = []").replace("self.packing ==", "not self.packing or 0 ==")
    for store, frozen_as_is in (("[]", True), ("()", False)):
        text = src.replace("self.packing = []", f"self.packing = {store}")
        frozen = freeze_source(text, Freezer(Config(), [ast.parse(CALLER), ast.parse(text)]))
        assert ("100 if" in frozen) == frozen_as_is


# Code that makes a Loader other than by `Loader(...)`, or sets its attribute other than by `self.x = `.
OTHER_MAKERS = {
    "a-subclass-constructor": "class Fast(Loader):\n    def __init__(self):\n        super().__init__('rows')\n",
    "a-classmethod": "class Loader2:\n    pass\n",  # placeholder, replaced below
    "type-of-an-instance": "def clone(obj):\n    return type(obj)('rows')\n",
    "dunder-class": "def clone(obj):\n    return obj.__class__('rows')\n",
}


def test_a_class_made_or_changed_other_than_by_its_constructor_is_not_frozen():
    cfg = _cfg("frac", "stream")
    for case, extra in OTHER_MAKERS.items():
        src = HELPER
        if case == "a-classmethod":
            src, extra = HELPER + "\n    @classmethod\n    def rows(cls):\n        return cls('rows')\n", ""
        trees = [ast.parse(CALLER), ast.parse(src)] + ([ast.parse(extra)] if extra else [])
        frozen = freeze_source(src, Freezer(cfg, trees))
        assert "100 if self.packing" in frozen and "if mode" not in frozen, case
    assert "if self.packing" not in freeze_source(HELPER, Freezer(cfg, [ast.parse(CALLER), ast.parse(HELPER)]))


def test_an_attribute_a_framework_base_class_has_is_not_frozen():
    src = HELPER.replace("class Loader:", "class Loader(nn.Module):")
    trees = [ast.parse(CALLER), ast.parse(src)]
    cfg = _cfg("frac", "stream")
    for resolver, frozen_attr in ((None, False), (lambda base: None, False), (lambda base: {"packing", "train"}, False),
                                  (lambda base: {"train", "training"}, True)):
        frozen = freeze_source(src, Freezer(cfg, trees, resolver))
        assert ("if self.packing" not in frozen) == frozen_attr


def test_an_attribute_setattr_sets_is_not_frozen():
    box = "class Box:\n    def __init__(self, kind):\n        self.kind = kind\n\n    def get(self):\n" \
          "        return 1 if self.kind == 'a' else 2\n\n\ndef make():\n    return Box('a').get()\n"
    for other, frozen_attr in (("setattr(obj, 'kind', 'b')", False), ("setattr(obj, 'other', 'b')", True),
                               ("delattr(obj, 'kind')", False)):
        frozen = freeze_source(box, Freezer(Config(), [ast.parse(box), ast.parse(f"def g(obj):\n    {other}\n")]))
        assert ("if self.kind" not in frozen) == frozen_attr, other


def test_a_store_in_another_class_is_its_own_but_one_that_may_reach_the_object_counts():
    cfg = _cfg("frac", "stream")
    cases = {
        "another class's own attribute": ("class Other:\n    def __init__(self):\n        self.packing = 'rows'\n", True),
        "a nested function's self": ("class Other:\n    def go(self, obj):\n        def inner(self):\n"
                                     "            self.packing = 'rows'\n        inner(obj)\n", False),
        "a self the method rebinds": ("class Other:\n    def go(self, obj):\n        self = obj\n"
                                      "        self.packing = 'rows'\n", False),
        "a base class's method": (None, False),
    }
    for case, (extra, frozen_attr) in cases.items():
        src = HELPER
        if extra is None:
            src = HELPER.replace("class Loader:", "class Base:\n    def reset(self):\n        self.packing = 'rows'\n\n\n"
                                                  "class Loader(Base):")
            extra = ""
        trees = [ast.parse(CALLER), ast.parse(src)] + ([ast.parse(extra)] if extra else [])
        frozen = freeze_source(src, Freezer(cfg, trees))
        assert ("if self.packing" not in frozen) == frozen_attr, case


def test_a_config_a_constructor_stores_or_every_caller_passes_is_a_config():
    src = '''
def run(cfg: Config):
    return helper(cfg.model, 1) + Net(cfg.model).get()


def helper(mcfg, x):
    return x if mcfg.tie_embeddings else -x


class Net:
    def __init__(self, mcfg):
        self.cfg = mcfg

    def get(self):
        return 10 if self.cfg.num_layers > 10 else 20
'''
    cfg = Config()
    cfg.model.tie_embeddings, cfg.model.num_layers = False, 11
    frozen = freeze_source(src, Freezer(cfg, [ast.parse(src)]))
    assert "if mcfg" not in frozen and "if self.cfg" not in frozen and "(-x)" in frozen and "(10)" in frozen
    # Another caller passing something else, another store of `cfg`: neither is known.
    other = "def other(q):\n    return helper(q, 2) + Net(q).get()\n"
    frozen = freeze_source(src, Freezer(cfg, [ast.parse(src), ast.parse(other)]))
    assert "if mcfg" in frozen and "if self.cfg" in frozen
    for twice in ("def other(q):\n    return helper(Config().quant, 2)\n", "def other(net):\n    net.cfg = None\n"):
        frozen = freeze_source(src, Freezer(cfg, [ast.parse(src), ast.parse(twice)]))
        assert ("if mcfg" in frozen) == twice.startswith("def other(q)") and ("if self.cfg" in frozen) != (
            "helper" in twice)


def test_a_call_through_a_local_alias_is_a_call_of_its_function():
    aliased = CALLER.replace("    return helper(1,", "    go = helper\n    return go(1,")
    cfg = _cfg("frac", "stream")
    assert "if mode" not in freeze_source(HELPER, Freezer(cfg, [ast.parse(aliased), ast.parse(HELPER)]))
    # The alias used other than by a call, called from a nested scope, or naming a local.
    for bad in (aliased.replace("+ Loader", "+ len([go]) + Loader"),
                aliased.replace("+ Loader", "+ (lambda: go(2, mode='iters'))() + Loader"),
                aliased.replace("    go = helper\n", "    helper = len\n    go = helper\n")):
        frozen = freeze_source(HELPER, Freezer(cfg, [ast.parse(bad), ast.parse(HELPER)]))
        assert "if mode" in frozen, bad


INSTANCES = '''
class Box:
    pass


class Sized:
    def __len__(self):
        return 0


def make(x):
    b, s = Box(), Sized()
    return [1 if b is not None else 2, 3 if b else 4, 5 if s is not None else 6, 7 if s else 8, 9 if b == x else 10,
            11 if b == Box() else 12]
'''


def test_a_new_instance_of_a_class_of_the_code_is_not_none():
    frozen = freeze_source(INSTANCES, Freezer(Config(), [ast.parse(INSTANCES)]))
    assert "return [(1), (3), (5), 7 if s else 8, 9 if b == x else 10,\n            11 if b == Box() else 12]" in frozen
    scope: dict = {}
    exec(compile(frozen, "f", "exec"), scope)
    assert scope["make"](None) == [1, 3, 5, 8, 10, 12]


# What makes a call of a class something else than a plain new instance, or its truth unknown.
NOT_PLAIN = {
    "__new__": "class Box:\n    def __new__(cls):\n        return None\n",
    "external-base": "class Box(Base):\n    pass\n",
    "decorated": "@dataclasses.dataclass\nclass Box:\n    pass\n",
    "metaclass": "class Box(metaclass=Meta):\n    pass\n",
    "defined-twice": "class Box:\n    pass\n\n\nBox = other\n",
}


def test_a_class_that_may_make_something_else_is_not_known():
    for case, box in NOT_PLAIN.items():
        src = INSTANCES.replace("class Box:\n    pass\n", box)
        frozen = freeze_source(src, Freezer(Config(), [ast.parse(src)]))
        assert "1 if b is not None" in frozen and "3 if b" in frozen, case
    for elsewhere in ("def f(obj):\n    obj.__class__ = Sized\n", "def f():\n    Box.__len__ = len\n"):
        frozen = freeze_source(INSTANCES, Freezer(Config(), [ast.parse(INSTANCES), ast.parse(elsewhere)]))
        assert "1 if b is not None" in frozen, elsewhere


STREAM = '''
class Stream:
    pass


class Loader:
    def __init__(self, files):
        self.files = files
        self.stream = None
        self.stream = Stream()

    def state(self):
        return 1 if self.stream is not None else 2


def run():
    return Loader([]).state()
'''


def test_a_constructor_store_the_next_statement_overwrites_is_cut():
    frozen = freeze_source(STREAM, Freezer(Config(), [ast.parse(STREAM)]))
    assert "self.stream = None" not in frozen
    frozen = freeze_source(frozen, Freezer(Config(), [ast.parse(frozen)]))  # bundle.specialize's next round
    assert "return (1)" in frozen


# Something might read the first value, or storing is more than a store: both stay.
OVERWRITTEN_BUT_KEPT = {
    "second-value-gets-self": ("Stream()", "Stream(self)"),
    "second-value-reads-it": ("Stream()", "Stream(self.stream)"),
    "method-call-before": ("        self.files = files\n", "        self.files = files\n        self.setup()\n"),
    "super-before": ("        self.files = files\n", "        super().__init__()\n        self.files = files\n"),
    "self-passed-before": ("        self.files = files\n", "        register(self)\n"),
    "lambda-before": ("        self.files = files\n", "        self.hook = lambda: self.stream\n"),
    "setattr-defined": ("class Loader:\n", "class Loader:\n    def __setattr__(self, k, v):\n        pass\n\n"),
    "class-level-name": ("class Loader:\n", "class Loader:\n    stream = property(lambda self: 1)\n\n"),
    "subclassed": ("\n\ndef run", "\n\nclass Sub(Loader):\n    pass\n\n\ndef run"),
    "external-base": ("class Loader:", "class Loader(Base):"),
}


@pytest.mark.parametrize("case", sorted(OVERWRITTEN_BUT_KEPT))
def test_a_constructor_store_something_may_read_or_that_does_more_stays(case):
    old, new = OVERWRITTEN_BUT_KEPT[case]
    src = STREAM.replace(old, new)
    assert src != STREAM
    frozen = freeze_source(src, Freezer(Config(), [ast.parse(src)], lambda base: set()))
    assert "self.stream = None" in frozen


def test_a_call_in_a_default_or_a_class_header_is_a_call():
    for other in ("def other(v=helper(2, mode='iters')):\n    return v\n",
                  "class Other(base(helper(2, mode='iters'))):\n    pass\n",
                  "@register(helper(2, mode='iters'))\ndef other():\n    pass\n"):
        assert "if mode" in _frozen(_cfg("frac", "stream"), other), other


METHOD = '''
class Net:
    def go(self, mode, x):
        return x + 10 if mode == "frac" else x


def run(cfg: Config):
    n = Net()
    return n.go(cfg.schedule.warmdown_mode, 1) + n.go("frac", x=2)
'''


def test_a_method_every_call_passes_the_same_value_is_frozen():
    cfg = _cfg("frac", "stream")
    frozen = freeze_source(METHOD, Freezer(cfg, [ast.parse(METHOD)], lambda base: set()))
    assert "return (x + 10)" in frozen
    # Used other than by obj.go(...), called unbound, defined twice, or a framework's name: not frozen.
    for extra, resolver in (("def other(n):\n    return n.go\n", None),
                            ("def other(n):\n    return getattr(n, 'go')(1, 2)\n", None),
                            ("def other(n):\n    return Net.go('frac', 'iters', x=2)\n", None),
                            ("class Other:\n    def go(self, a, b):\n        return a\n", None),
                            ("", lambda base: {"go"})):
        src = METHOD.replace("class Net:", "class Net(Base):") if resolver else METHOD
        frozen = freeze_source(src, Freezer(cfg, [ast.parse(src), ast.parse(extra)], resolver or (lambda base: set())))
        assert "x + 10 if mode" in frozen, extra
    for deco in ("@staticmethod", "@functools.cache"):
        src = METHOD.replace("    def go(", f"    {deco}\n    def go(")
        assert "x + 10 if mode" in freeze_source(src, Freezer(cfg, [ast.parse(src)])), deco
    protocol = METHOD.replace("go", "write")  # file-like: print(file=net) calls net.write(text)
    assert "x + 10 if mode" in freeze_source(protocol, Freezer(cfg, [ast.parse(protocol)], lambda base: set()))
    other_call = METHOD + "\n\ndef more(n):\n    return n.go('iters', 3)\n"
    assert "x + 10 if mode" in freeze_source(other_call, Freezer(cfg, [ast.parse(other_call)]))
