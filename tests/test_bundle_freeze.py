"""bundle.freeze specializes source text to one frozen config: the frozen text computes what the
original computes under that config, without the branches the config never takes, and leaves alone
every test it cannot prove (a field code may change, a name not surely a config, a call it would drop)."""

import ast
import re

import pytest

from pgolf.bundle.fields import ANY_FIELD, exempt_fields
from pgolf.bundle.freeze import Freezer, freeze_source
from pgolf.bundle.rules import BundleError
from pgolf.config_tree import Config


def make_cfg(**fields) -> Config:
    """A default Config with `section__field=value` set."""
    cfg = Config()
    for key, value in fields.items():
        section, name = key.split("__")
        assert hasattr(getattr(cfg, section), name), key
        setattr(getattr(cfg, section), name, value)
    return cfg


def freeze(src: str, cfg: Config, *others: str) -> str:
    """`src` frozen to `cfg`; `others` is more shipped code (what may change a field)."""
    return freeze_source(src, Freezer(cfg, [ast.parse(s) for s in (src, *others)]))


def run(src: str, name: str, *args):
    scope = {"Config": Config}
    exec(compile(src, "<frozen>", "exec"), scope)
    return scope[name](*args)


# Each branch a config decides has a marker (ARCH_, QUANT_, ... strings); a branch on `x` (X_)
# stays wherever the branch holding it stays.
CHAINS = '''
NOTE = "!"


def tag(fn):
    fn.label = "TAGGED"
    return fn


def chain(cfg: Config, x):
    m = cfg.model
    out = []
    if m.arch == "record":
        out.append("ARCH_RECORD")
    elif m.num_layers > 10:
        # why_deep: a comment heading a kept block stays with it
        out.append("ARCH_DEEP")
    elif m.num_layers in (9, 10) and not m.tie_embeddings:
        out.append("ARCH_MID")
    else:
        # why_other
        out.append("ARCH_OTHER")
    if (cfg.quant.lqer_rank > 0
            or cfg.quant.compressor == "brotli"):
        out.append("QUANT_ON")
        if m.tie_embeddings:
            # a string whose lines must keep their indentation once the block moves left
            note = """QUANT_TIED
      kept    as is
  and this
"""
            out.append(note + NOTE)
            if x > 1:
                out.append("X_BIG")
        else:
            out.append("QUANT_UNTIED")
    elif x < 0:
        out.append("X_NEG")
    else:
        out.append("QUANT_OFF")
    soft = "SOFT_ON" if m.logit_softcap > 0 and m.num_layers >= 9 else "SOFT_OFF"
    return out + [soft, x * (2 if m.tie_embeddings or m.arch != "baseline" else 3)]


def nested(cfg: Config, x):
    q = cfg.quant
    if q.lqer_rank > 0:
        if cfg.model.num_layers > 10:
            if x:
                return "X_TRUE"
            return "NEST_DEEP_RANK"
        else:
            return "NEST_RANK"
    elif not (q.compressor != "brotli"):
        return "NEST_BROTLI"
    else:
        return "NEST_NONE"


def deco(cfg: Config, x):
    if cfg.model.tie_embeddings:
        @tag
        def inner():
            return "DECO_TIED"
    else:
        @tag
        def inner():
            return "DECO_UNTIED"
    return inner.label + inner() + str(x)


class Spec:
    cfg: Config

    def __init__(self, cfg):
        self.cfg = cfg

    def mode(self, x):
        c, n = self.cfg, 2
        if c.model.arch == "record" or c.quant.lqer_rank:
            return ["SPEC_RICH", x * n]
        else:
            return ["SPEC_PLAIN", x]


def spec(cfg: Config, x):
    return Spec(cfg).mode(x)
'''

CONFIGS = [
    make_cfg(),
    make_cfg(model__arch="record", model__logit_softcap=0.0),
    make_cfg(model__num_layers=11, quant__lqer_rank=4),
    make_cfg(model__tie_embeddings=False, quant__compressor="brotli"),
    make_cfg(model__num_layers=12, model__tie_embeddings=False, quant__lqer_rank=2),
    make_cfg(model__num_layers=3, quant__lqer_rank=1, model__logit_softcap=0.0),
]
FUNCTIONS = ["chain", "nested", "deco", "spec"]
INPUTS = [-1, 0, 1, 2, 5]
MARKERS = set(re.findall(r'"((?:ARCH|QUANT|SOFT|NEST|DECO|SPEC)_[A-Z_]+)', CHAINS))


def outputs(src: str, cfg: Config) -> dict:
    return {(fn, x): run(src, fn, cfg, x) for fn in FUNCTIONS for x in INPUTS}


def test_frozen_source_computes_what_the_original_computes():
    taken_by_some = set()
    for cfg in CONFIGS:
        frozen = freeze(CHAINS, cfg)
        want = outputs(CHAINS, cfg)
        assert outputs(frozen, cfg) == want
        taken = {m for m in MARKERS if m in repr(want)}
        taken_by_some |= taken
        # The branches it takes stay, with the comments heading them; the others are gone.
        assert {m for m in MARKERS if m in frozen} == taken
        for x_branch, enclosing in (("X_BIG", "QUANT_TIED"), ("X_NEG", "QUANT_OFF"), ("X_TRUE", "NEST_DEEP_RANK")):
            assert (x_branch in frozen) == (enclosing in frozen)
        assert ("# why_deep" in frozen) == ("ARCH_DEEP" in frozen)
        assert ("# why_other" in frozen) == ("ARCH_OTHER" in frozen)
        assert Freezer(cfg, [ast.parse(frozen)]).decisions(ast.parse(frozen)) == []
    assert taken_by_some == MARKERS  # each branch is taken by some config


def test_freezing_is_idempotent_and_keeps_other_text_as_it_was():
    cfg = make_cfg(quant__lqer_rank=1)  # tie_embeddings: the QUANT_TIED block moves two levels left
    frozen = freeze(CHAINS, cfg)
    assert freeze(frozen, cfg) == frozen
    assert frozen.split("def chain")[0] == CHAINS.split("def chain")[0]
    assert "class Spec:\n    cfg: Config\n" in frozen
    assert '\n    note = """QUANT_TIED\n      kept    as is\n  and this\n"""\n' in frozen


# (undecided, decided twin): the first must come back unchanged, the second differs only in the
# fact the first breaks, and freezing it cuts the test. Under CFG (tie_embeddings False).
CFG = make_cfg(model__tie_embeddings=False, model__num_layers=11)
UNDECIDED = {
    "no-annotation": ('''
def f(cfg):
    if cfg.model.tie_embeddings:
        return 1
    return 2
''', "def f(cfg):", "def f(cfg: Config):"),
    "annotated-param-reassigned": ('''
def f(cfg: Config, other):
    if cfg.model.tie_embeddings:
        return 1
    cfg = other
    return 2
''', "    cfg = other", "    c = other"),
    "param-also-bound-once-to-a-config": ('''
def f(m, cfg: Config):
    if m.num_layers > 3:
        return 1
    m = cfg.model
    return m
''', "def f(m, cfg", "def f(x, cfg"),
    "bound-in-a-nested-function-only": ('''
def f(cfg: Config, other):
    m = other
    def g():
        m = cfg.model
        return m
    if m.num_layers > 3:
        return 1
    return g
''', "    m = other\n", "    m = cfg.model\n"),
    "lambda-parameter-shadows-cfg": ('''
def f(cfg: Config, items):
    pick = lambda cfg: 1 if cfg.model.tie_embeddings else 2
    return pick(items)
''', "lambda cfg:", "lambda c:"),
    "nested-function-parameter-shadows-cfg": ('''
def f(cfg: Config):
    def g(cfg):
        if cfg.model.tie_embeddings:
            return 1
        return 2
    return g
''', "def g(cfg):", "def g(c):"),
    "module-level": ('''
cfg: Config = Config()
if cfg.model.tie_embeddings:
    X = 1
''', None, '''
def f(cfg: Config):
    if cfg.model.tie_embeddings:
        X = 1
    return X
'''),
    "call-before-the-decisive-operand": ('''
def f(cfg: Config, g):
    if g() and cfg.model.tie_embeddings:
        return 1
    return 2
''', "g() and cfg.model.tie_embeddings", "cfg.model.tie_embeddings and g()"),
    "walrus-before-the-decisive-operand": ('''
def f(cfg: Config, g):
    if (n := g) and cfg.model.tie_embeddings:
        return 1
    return n
''', "(n := g) and cfg.model.tie_embeddings", "cfg.model.tie_embeddings and (n := g)"),
    "call-before-the-decisive-operand-of-an-IfExp": ('''
def f(cfg: Config, g):
    return 1 if g() or cfg.model.num_layers > 3 else 2
''', "g() or cfg.model.num_layers > 3", "cfg.model.num_layers > 3 or g()"),
    "one-line-if": ('''
def f(cfg: Config):
    if cfg.model.tie_embeddings: return 1
    return 2
''', ": return 1", ":\n        return 1"),
    "one-line-if-after-a-multi-line-header": ('''
def f(cfg: Config):
    if (cfg.model.tie_embeddings or
            cfg.model.num_layers > 20): return 1
    return 2
''', "): return 1", "):\n        return 1"),
    "one-line-else": ('''
def f(cfg: Config):
    if cfg.model.tie_embeddings:
        return 1
    else: return 2
''', "else: return 2", "else:\n        return 2"),
    "runtime-field-run.seed": ('''
def f(cfg: Config):
    if cfg.run.seed == 1337:
        return 1
    return 2
''', "run.seed", "run.iterations"),
    "runtime-field-data.path": ('''
def f(cfg: Config):
    return 1 if cfg.data.path == "" else 2
''', "data.path", "data.sampling"),
    "local-bound-twice": ('''
def f(x):
    auto = None
    if x:
        auto = x
    if auto is not None:
        return 1
    return 2
''', "        auto = x", "        other = x"),
    "local-bound-in-a-branch": ('''
def f(x):
    if x:
        auto = None
    return 1 if auto is None else 2
''', "    if x:\n        auto = None", "    auto = None\n    if x:\n        pass"),
    "local-read-before-it-is-bound": ('''
def f():
    try:
        r = 1 if auto is None else 2
    except NameError:
        r = 3
    auto = None
    return r
''', None, '''
def f():
    auto = None
    try:
        r = 1 if auto is None else 2
    except NameError:
        r = 3
    return r
'''),
    "local-rebound-by-a-nested-nonlocal": ('''
def f(x):
    auto = None
    def g():
        nonlocal auto
        auto = x
    g()
    return 1 if auto is not None else 2
''', "        nonlocal auto\n        auto = x", "        other = x"),
    "local-list-display-appended-to": ('''
def f(x):
    out = []
    out.append(x)
    return 1 if out else 2
''', "    out = []\n    out.append(x)\n", "    out = ()\n"),
    "local-list-inside-a-tuple": ('''
def f(x):
    pair = (1, [])
    pair[1].append(x)
    return 1 if pair == (1, ()) else 2
''', "pair = (1, [])", "pair = (1, ())"),
    "local-bound-by-a-match-case": ('''
def f(x):
    auto = None
    match x:
        case [auto]:
            pass
    return 1 if auto is None else 2
''', "case [auto]", "case [other]"),
    "module-name-bound-twice": ('''
KINDS = ("baseline", "record")
if len(KINDS) > 5:
    KINDS = ("other",)


def f(cfg: Config):
    return 1 if cfg.model.arch in KINDS else 2
''', "    KINDS = (", "    OTHER = ("),
    "module-name-a-function-declares-global": ('''
KINDS = ("baseline", "record")


def reset():
    global KINDS
    KINDS = ()


def f(cfg: Config):
    return 1 if cfg.model.arch in KINDS else 2
''', "    global KINDS\n    KINDS = ()", "    kinds = ()"),
    "module-name-bound-to-a-list": ('''
KINDS = ["baseline", "record"]


def f(cfg: Config):
    return 1 if cfg.model.arch in KINDS else 2
''', 'KINDS = ["baseline", "record"]', 'KINDS = ("baseline", "record")'),
    "getattr-of-a-field-the-section-lacks": ('''
def f(cfg: Config):
    return 1 if getattr(cfg.model, "no_such_field", True) else 2
''', "no_such_field", "tie_embeddings"),
    "getattr-defined-by-the-code": ('''
def getattr(obj, name, default=None):
    return default


def f(cfg: Config):
    return 1 if getattr(cfg.model, "tie_embeddings", True) else 2
''', "def getattr(obj", "def other_getattr(obj"),
    "section-not-a-field": ('''
def f(cfg: Config):
    if cfg.model:
        return 1
    return 2
''', "cfg.model:", "cfg.model.compile:"),
}


@pytest.mark.parametrize("case", sorted(UNDECIDED))
def test_tests_it_cannot_prove_are_left_alone(case):
    src, bad, good = UNDECIDED[case]
    assert freeze(src, CFG) == src
    twin = good if bad is None else src.replace(bad, good)
    assert twin != src
    assert freeze(twin, CFG) != twin


# (a field test, code elsewhere that may change that field, the same code changing another field)
CHANGED_ELSEWHERE = {
    "replace-keyword": ("dataclasses.replace(m, tie_embeddings=False)", "dataclasses.replace(m, compile=True)"),
    "attribute-store": ("m.tie_embeddings = False", "m.compile = True"),
    "augmented-store": ("m.tie_embeddings |= True", "m.compile |= True"),
    "setattr-with-a-literal-name": ('setattr(m, "tie_embeddings", False)', 'setattr(m, "compile", True)'),
    # A config its constructor makes holds what the call passes.
    "constructor-keyword": ("ModelConfig(tie_embeddings=False)", "ModelConfig(compile=True)"),
    "constructor-positional": ("ModelConfig('record', 1024, 9, 64, 8, 4, 3.0, False)", "ModelConfig('record', 1024, 9)"),
    "constructor-spread": ("ModelConfig(*m)", "QuantConfig(*m)"),
    "constructor-spread-keywords": ("ModelConfig(**m)", "ModelConfig(compile=m)"),
}
FIELD_TEST = '''
def f(cfg: Config):
    if cfg.model.tie_embeddings:
        return 1
    return 2
'''


@pytest.mark.parametrize("case", sorted(CHANGED_ELSEWHERE))
def test_a_field_some_shipped_code_changes_is_never_decided(case):
    changes, other = CHANGED_ELSEWHERE[case]
    assert freeze(FIELD_TEST, CFG, f"def g(m):\n    {changes}\n") == FIELD_TEST
    assert freeze(FIELD_TEST, CFG, f"def g(m):\n    {other}\n") != FIELD_TEST
    assert {"tie_embeddings", ANY_FIELD} & exempt_fields([ast.parse(changes)])


def test_setattr_with_a_computed_name_is_refused():
    for code in ("setattr(obj, name, 1)", "setattr(obj, *pair)", "setattr(obj, f'{x}', 1)"):
        with pytest.raises(BundleError, match="setattr with a computed name"):
            exempt_fields([ast.parse(f"def g(obj, name, pair, x):\n    {code}\n")])
        with pytest.raises(BundleError):
            Freezer(CFG, [ast.parse(FIELD_TEST), ast.parse(code)])
    assert "seed" in exempt_fields([ast.parse('setattr(obj, "seed", 1)')])
    assert "num_layers" in exempt_fields([ast.parse('setattr(obj, "num_layers", 1)')])
    assert "num_layers" not in exempt_fields([ast.parse('getattr(obj, "num_layers")')])
    assert "num_layers" in exempt_fields([ast.parse('delattr(obj, "num_layers")')])
    with pytest.raises(BundleError, match="delattr with a computed name"):
        exempt_fields([ast.parse("delattr(obj, name)")])


EMPTIED = '''
def only(cfg: Config, out):
    if cfg.quant.lqer_rank > 0:
        out.append("LQER")


def siblings(cfg: Config, out):
    for i in range(2):
        if cfg.quant.lqer_rank > 0:
            out.append("RANK_A")
        if cfg.quant.lqer_rank > 1:
            out.append("RANK_B")
    return out


def in_else(cfg: Config, x):
    if x:
        return 1
    else:
        if cfg.quant.lqer_rank > 0:
            return "RANK_C"
    return 2


def after_elif(cfg: Config, x):
    if x:
        return 1
    elif cfg.quant.lqer_rank > 0:
        return "RANK_D"
    return 2
'''


def test_a_block_left_empty_gets_pass():
    cfg = make_cfg(quant__lqer_rank=0)
    frozen = freeze(EMPTIED, cfg)
    compile(frozen, "<frozen>", "exec")
    assert not re.search("LQER|RANK_", frozen)
    out = []
    assert run(frozen, "only", cfg, out) is None and out == []
    assert run(frozen, "siblings", cfg, []) == []
    assert [run(frozen, fn, cfg, x) for fn in ("in_else", "after_elif") for x in (0, 1)] == [2, 1, 2, 1]
    assert re.search(r"def only\(cfg: Config, out\):\n    pass\n", frozen)
    assert re.search(r"for i in range\(2\):\n        pass\n    return out", frozen)


def test_a_taken_elif_becomes_else_and_a_cut_if_hands_its_test_to_the_elif():
    src = '''
def f(cfg: Config, x):
    out = []
    if x > 1:
        out.append("X")
    elif cfg.model.tie_embeddings:
        out.append("TIED")
    elif x:
        out.append("X1")
    else:
        out.append("REST")
    return out


def g(cfg: Config, x):
    if cfg.model.tie_embeddings:
        return "TIED"
    elif x > 1:
        return "X"
    else:
        return "REST"
'''
    for tied in (True, False):
        cfg = make_cfg(model__tie_embeddings=tied)
        frozen = freeze(src, cfg)
        for fn in ("f", "g"):
            assert [run(frozen, fn, cfg, x) for x in (0, 1, 2)] == [run(src, fn, cfg, x) for x in (0, 1, 2)]
        assert ("TIED" in frozen) == tied
        assert "tie_embeddings" not in frozen


def test_if_expression_after_non_ascii_text_is_spliced_at_the_right_place():
    src = '''
def f(cfg: Config):
    return "é→" + ("ÄÖ" if cfg.model.tie_embeddings else "NO_Ü") + "ü✓" + ("ß" if cfg.quant.lqer_rank else "NO_ẞ")
'''
    cfg = make_cfg()
    frozen = freeze(src, cfg)
    assert frozen.splitlines()[2] == '    return "é→" + (("ÄÖ")) + "ü✓" + (("NO_ẞ"))'
    assert run(frozen, "f", cfg) == run(src, "f", cfg) == "é→ÄÖü✓NO_ẞ"


def test_a_replace_with_spread_keywords_freezes_nothing():
    src = "def f(cfg: Config):\n    if cfg.model.tie_embeddings:\n        return 1\n    return 2\n"
    spread = "import dataclasses\n\n\ndef g(e, kw):\n    return dataclasses.replace(e, **kw)\n"
    trees = [ast.parse(src), ast.parse(spread)]
    assert freeze_source(src, Freezer(Config(), trees)) == src
    assert freeze_source(src, Freezer(Config(), trees[:1])) != src


LOCALS = '''
def f(cfg: Config, x):
    auto = x if cfg.model.tie_embeddings else None
    pair: tuple = (cfg.model.num_layers, "a")
    n, k = 3, cfg.model.num_layers
    out = [] if auto is not None else ["AUTO_NONE"]
    if pair[0] > 10 and n < k:
        out.append("DEEP")
    return out + ["TIED" if getattr(cfg.model, "tie_embeddings", True) else "UNTIED"]
'''


def test_a_local_bound_once_to_a_known_value_is_a_constant():
    for tied in (True, False):
        cfg = make_cfg(model__tie_embeddings=tied, model__num_layers=11)
        frozen = freeze(LOCALS, cfg)
        assert [run(frozen, "f", cfg, x) for x in (0, 1)] == [run(LOCALS, "f", cfg, x) for x in (0, 1)]
        assert ("[] if auto" in frozen) == tied and "DEEP" in frozen and "if pair" not in frozen
        assert "getattr" not in frozen and ("UNTIED" in frozen) != tied


def test_a_decided_test_computes_what_python_computes():
    # `or` / `and` give an operand, not its truth; [11] == (11,) is False, {1, 2} == {2, 1} is True.
    src = '''
def f(cfg: Config):
    if (cfg.model.num_layers or 5) == 1:
        return 1
    if (cfg.model.num_layers,) == [cfg.model.num_layers]:
        return 4
    if {cfg.model.num_layers, 1} != {1, cfg.model.num_layers}:
        return 5
    return 2 if (cfg.quant.lqer_rank and "x") == "x" else 3
'''
    for rank in (0, 4):
        cfg = make_cfg(model__num_layers=11, quant__lqer_rank=rank)
        frozen = freeze(src, cfg)
        assert "if" not in frozen.replace("def f", "")
        assert run(frozen, "f", cfg) == run(src, "f", cfg) == (2 if rank else 3)


def test_a_store_the_next_statement_overwrites_is_cut():
    src = '''
def f(cfg: Config, g):
    run = g if cfg.model.tie_embeddings else None
    run = len
    return run("abc")
'''
    cfg = make_cfg(model__tie_embeddings=False)
    frozen = freeze(src, cfg)
    assert "None" not in frozen and "    run = len\n" in frozen and run(frozen, "f", cfg, None) == 3


def test_a_store_nothing_reads_is_cut():
    from pgolf.bundle.edits import dead_stores_cut
    src = ("def f(g):\n    slot = None\n    other = g\n    kept = g()\n    if g:\n        a = 1\n        b = 2\n"
           "    return other + 1\n")
    assert dead_stores_cut(src, ast.parse(src)) == (
        "def f(g):\n    other = g\n    kept = g()\n    if g:\n        b = 2\n    return other + 1\n")
    for kept in ("def f(g):\n    slot = None\n    return lambda: slot\n",
                 "def f(g):\n    global slot\n    slot = None\n    return g\n"):
        assert dead_stores_cut(kept, ast.parse(kept)) == kept


# Each stays: the second value reads x, x is global, a nested function may read x while the
# second value is computed, the first value may have an effect, shares a line, is an attribute,
# is at module level.
KEPT_STORES = {
    "second-reads-it": "def f():\n    x = 1\n    x = x + 1\n    return x\n",
    "global": "def f(g):\n    global x\n    x = 1\n    x = g()\n",
    "closure": "def f():\n    def h():\n        return x\n    x = 1\n    x = h()\n    return x\n",
    "lambda": "def f():\n    h = lambda: x\n    x = 1\n    x = h()\n    return x\n",
    "call": "def f(g):\n    x = g()\n    x = 2\n    return x\n",
    "one-line": "def f(c):\n    if c: x = 1; x = 2\n    return x\n",
    "shared-line": "def f():\n    a = 1; x = 1\n    x = 2\n    return x, a\n",
    "attribute": "def f(self):\n    self.x = None\n    self.x = 2\n",
    "module-level": "x = 1\nx = 2\n",
}


@pytest.mark.parametrize("case", sorted(KEPT_STORES))
def test_a_store_something_may_read_before_it_is_overwritten_stays(case):
    from pgolf.bundle.edits import dead_stores_cut
    src = KEPT_STORES[case]
    assert dead_stores_cut(src, ast.parse(src)) == src
    twin = "def f(g):\n    x = 1\n    x = g()\n    return x\n"
    assert dead_stores_cut(twin, ast.parse(twin)) == "def f(g):\n    x = g()\n    return x\n"


OPERANDS = '''
def f(cfg: Config, x, g):
    m = cfg.model
    out = [m.num_layers > 3 and x, x or m.tie_embeddings, x or m.num_layers or g(), g() or m.tie_embeddings or x]
    out += [m.tie_embeddings or (x if x else "EMPTY") or g(), getattr(m, "tie_embeddings", 1) or x]
    out += [m.tie_embeddings or x and m.num_layers > 3 or g()]
    out += [not (x or m.tie_embeddings), [k for k in (0, 1, 2) if k > x or m.tie_embeddings]]
    assert x != 3 or m.tie_embeddings, "NEVER"
    if x and m.num_layers > 3:
        out.append("X_TEST")
    while x > 5 or m.tie_embeddings:
        x -= 1
    return out + [x]
'''


def test_operands_of_and_or_that_cannot_matter_are_cut():
    cfg = CFG  # tie_embeddings False, num_layers 11
    frozen = freeze(OPERANDS, cfg)
    calls = []
    for x in (0, 1, 7, 0.0):
        def g():
            calls.append(x)
            return "G"
        assert run(frozen, "f", cfg, x, g) == run(OPERANDS, "f", cfg, x, g)
    assert calls[::2] == calls[1::2]  # g called just as often, with the same x
    body = frozen.split("m = cfg.model\n")[1]
    assert "[(x), x or m.tie_embeddings, x or m.num_layers, g() or x]" in body
    assert '[(x if x else "EMPTY") or g(), getattr(m, "tie_embeddings", 1) or x]' in body
    assert "[(x and m.num_layers > 3) or g()]" in body  # (x and True) gives True, not x: kept
    assert "if (x):" in body and "while (x > 5):" in body and "[not ((x)), [k for k in (0, 1, 2) if (k > x)]]" in body
    assert 'assert (x != 3), "NEVER"' in body
    assert freeze(frozen, cfg) == frozen


RANGES = '''
def run(x):
    return f("auto", x) + f("auto", -x)


def f(mode, x):
    if mode not in ("auto", "fixed"):
        raise ValueError(mode)
    if mode == "auto":
        mode = "fixed" if x > 1 else "free"
    return [1 if mode == "fixed" else 2, g(x)]


def g(x):
    kind = "a"
    out = ["A" if kind == "a" else "B"]
    if x:
        kind = x
    out.append("A2" if kind == "a" else "B2")
    return out
'''


def test_a_name_is_known_between_its_bindings():
    frozen = freeze(RANGES, Config())
    for x in (0, 1, 2, 3.5):
        assert run(frozen, "run", x) == run(RANGES, "run", x)
    assert "raise" not in frozen and 'if mode == "auto"' not in frozen and '"B"' not in frozen
    assert '1 if mode == "fixed" else 2' in frozen and '"A2" if kind == "a" else "B2"' in frozen


# Known only between bindings: code that may run later (a nested function, a lambda, a
# generator expression) and a loop that binds it again must not see the first value.
LATER_READS = {
    "nested-function": "    def check():\n        return 1 if kind == 'a' else 2\n",
    "lambda": "    check = lambda: 1 if kind == 'a' else 2\n",
    "generator": "    check = (1 if kind == 'a' else 2 for _ in range(1)).__next__\n",
}


@pytest.mark.parametrize("case", sorted(LATER_READS))
def test_a_name_known_between_bindings_is_not_known_to_code_that_runs_later(case):
    src = f"def h(x):\n    kind = 'a'\n{LATER_READS[case]}    kind = x\n    return check()\n"
    frozen = freeze(src, Config())
    assert frozen == src and run(src, "h", "b") == 2
    twin = src.replace("    kind = x\n", "")
    assert freeze(twin, Config()) != twin


def test_a_name_bound_in_a_loop_or_in_the_test_is_not_known_there():
    loop = "def h(x):\n    kind = 'a'\n    out = []\n    for i in range(2):\n" \
           "        out.append(1 if kind == 'a' else 2)\n        kind = x\n    return out\n"
    walrus = "def h(x):\n    kind = 'a'\n    if (kind := x) and kind == 'a':\n        return 1\n    return 2\n"
    for src in (loop, walrus):
        assert freeze(src, Config()) == src


def test_a_module_level_constant_is_known_in_every_function():
    src = '''
BASE = ("baseline",)
KINDS = (*BASE, "record")


def f(cfg: Config):
    if cfg.model.arch not in KINDS:
        raise ValueError(cfg.model.arch)
    KINDS_LOCAL = KINDS
    return [1 if cfg.model.arch in KINDS_LOCAL else 2, g(list(BASE))]


def g(x):
    KINDS = x  # a local of the same name: not the module's
    return 3 if "baseline" in KINDS else 4
'''
    cfg = Config()
    frozen = freeze(src, cfg)
    assert "raise" not in frozen and "else 2" not in frozen and "3 if" in frozen
    assert run(frozen, "f", cfg) == run(src, "f", cfg) == [1, 3]
