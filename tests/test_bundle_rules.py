"""The package keeps the rules that make the single-file bundle possible (CONTRACT hard rules)."""

import pytest

from pgolf.bundle import bundle_package_modules, check_rules, check_sources

CLEAN_BASE = '''"""A module that only defines things."""

import math
import struct
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

BASE_SIZE = 2 ** 10
BASE_NAMES: tuple[str, ...] = ("a", "b")
BASE_TABLE = {k: len(k) for k in BASE_NAMES}
BASE_T = TypeVar("BASE_T")
BASE_HEADER = struct.Struct("<4sI")
BASE_ACT = lambda x: torch.relu(x) ** 2  # noqa: E731
BASE_DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


@dataclass
class BaseCfg:
    """Doc."""
    size: int = BASE_SIZE
    tags: list[str] = field(default_factory=list)


def base_scale(x: Any) -> float:
    return math.sqrt(x)
'''

CLEAN_USER = '''from pgolf.zz_base import BASE_SIZE, BaseCfg, base_scale

import math


def user_run() -> float:
    return base_scale(BaseCfg().size) + math.pi + BASE_SIZE
'''


def _violations(user_source: str, base_source: str = CLEAN_BASE) -> list[str]:
    return check_sources({"pgolf.zz_base": base_source, "pgolf.zz_user": user_source})


# Command-line entry points: never bundled, and they import subcommands lazily to start fast.
NOT_BUNDLED = ("pgolf.cli", "pgolf.__main__")


def test_package_obeys_bundle_rules() -> None:
    modules = [m for m in bundle_package_modules() if m not in NOT_BUNDLED]
    assert "pgolf.config" in modules and "pgolf.bundle.rules" in modules
    violations = check_rules(modules)
    assert not violations, "bundle rule violations:\n" + "\n".join(violations)


def test_package_modules_skip_init_files() -> None:
    modules = bundle_package_modules()
    assert modules == sorted(modules)
    assert not [m for m in modules if m.endswith("__init__") or m == "pgolf"]
    assert "pgolf.dist" in modules


def test_clean_synthetic_modules_pass() -> None:
    assert _violations(CLEAN_USER) == []


BAD_USER = {
    "relative": ("from .zz_base import base_scale\n", "relative import"),
    "alias": ("from pgolf.zz_base import base_scale as bs\n", "alias `base_scale as bs`"),
    "import_pgolf": ("import pgolf.zz_base\n", "`import pgolf.zz_base`"),
    "from_pgolf_pkg": ("from pgolf import zz_base\n", "`from pgolf import ...`"),
    "future": ("from __future__ import annotations\n", "from __future__"),
    "file": ("def user_here():\n    return __file__\n", "uses __file__"),
    "call_stmt": ("print('hi')\n", "top-level `Expr` statement"),
    "impure_assign": ("import os\n\nUSER_ENV = os.getenv('X')\n", "call of `os.getenv`"),
    "if_block": ("import typing\n\nif typing.TYPE_CHECKING:\n    USER_X = 1\n", "top-level `If`"),
    "try_import": ("try:\n    import zstandard\nexcept ImportError:\n    zstandard = None\n", "top-level `Try`"),
    "third_party": ("import zstandard\n", "top-level import of zstandard"),
    "third_party_from": ("from huggingface_hub import hf_hub_download\n", "top-level import of huggingface_hub"),
    "nested_pgolf": ("def user_f():\n    from pgolf.zz_base import base_scale\n    return base_scale\n",
                     "pgolf import inside a function"),
    "missing_name": ("from pgolf.zz_base import nope\n", "imports `nope` from pgolf.zz_base, but it does not define"),
    "reexport": ("from pgolf.zz_base import Any\n", "only re-exports it"),
    "missing_module": ("from pgolf.zz_nowhere import thing\n", "cannot read pgolf.zz_nowhere"),
    "distributed": ("import torch.distributed as tdist\n", "only pgolf.dist may"),
    "distributed_from": ("from torch import distributed\n", "only pgolf.dist may"),
    "star": ("from math import *\n", "star import"),
    "attr_assign": ("import os\n\nos.environ['X'] = '1'\n", "mutates an object"),
    "reserved": ("BUNDLED_PRESET = ''\n", "reserved for the generated bundle"),
    "same_line": ("import os; USER_A = 1\n", "shares a line"),
    "dup_in_module": ("def user_g():\n    pass\n\n\ndef user_g():\n    pass\n", "already defined at line 1"),
    "import_vs_def": ("from pgolf.zz_base import base_scale\n\n\ndef base_scale():\n    pass\n",
                      "imported from pgolf.zz_base and also defined here"),
    "binding_clash": ("import numpy as BASE_SIZE\n", "import binds `BASE_SIZE`"),
    "different_import": ("from numpy import Any\n", "`Any` is imported differently"),
}


@pytest.mark.parametrize("kind", sorted(BAD_USER))
def test_each_violation_is_reported(kind: str) -> None:
    source, expected = BAD_USER[kind]
    found = _violations(source)
    assert any(expected in v and "zz_user.py" in v for v in found), f"{kind}: expected {expected!r} in {found}"
    assert not any("zz_base.py:" in v and "zz_user" not in v for v in found), found


def test_duplicate_names_across_modules_name_both_files() -> None:
    found = _violations("def base_scale(x):\n    return x\n\n\nBaseCfg = 3\n")
    dups = [v for v in found if v.startswith("duplicate public top-level name")]
    assert len(dups) == 2, found
    assert any("`base_scale`" in v and "pgolf/zz_base.py:" in v and "pgolf/zz_user.py:1" in v for v in dups)
    assert any("`BaseCfg`" in v and "pgolf/zz_user.py:5" in v for v in dups)


def test_dist_module_may_import_torch_distributed() -> None:
    found = check_sources({"pgolf.dist": "import torch.distributed as tdist\n"})
    assert found == []


def test_violations_carry_file_and_line() -> None:
    found = _violations("import os\n\n\nUSER_X = os.getcwd()\n")
    assert found and found[0].startswith("pgolf/zz_user.py:4: ")
