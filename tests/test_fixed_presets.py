"""A `_fixed` preset is its record preset with pgolf's fixes switched on, and its header names
every one: the fields that differ are exactly the `#   section.field = value` lines."""

import dataclasses
import re
from importlib import resources

import pytest

from pgolf.config import resolve_config


def _differences(a, b) -> dict[str, object]:
    out = {}
    for sec in dataclasses.fields(a):
        x, y = getattr(a, sec.name), getattr(b, sec.name)
        if dataclasses.is_dataclass(x):
            out.update({f"{sec.name}.{f.name}": getattr(y, f.name) for f in dataclasses.fields(x)
                        if getattr(x, f.name) != getattr(y, f.name)})
    return out


@pytest.mark.parametrize("record", ["record_1855"])
def test_fixed_preset_changes_exactly_what_its_header_names(record):
    text = resources.files("pgolf").joinpath(f"presets/{record}_fixed.toml").read_text()
    named = dict(re.findall(r"(?m)^#\s+(\w+\.\w+) = (\S+)", text))
    rec, _ = resolve_config(preset=record, env={})
    fixed, _ = resolve_config(preset=f"{record}_fixed", env={})
    diff = _differences(rec, fixed)
    assert set(diff) == set(named)
    for field, value in named.items():
        assert str(diff[field]).lower() == value.strip('"').lower(), field

