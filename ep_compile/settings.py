"""A setting: a dataclass field with its help, its flag and its check, written once where the section
that owns it is defined (ModelConfig in model.py; Phases, SpikeConfig and the run sections in
config.py). The command line, the stored configs and the checks are all generated from these fields.

    channels: list = setting([32, 64], "conv output channels", check=(lambda v: v >= 1, "integers >= 1"))

A check is (test of one value, what the message says is expected); list settings test every item.
A failing value raises one ConfigError naming the flag and the value: `--T 0: expected an integer >= 1`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import field


class ConfigError(ValueError):
    """A model or run configuration that cannot work; the message names the bad value."""


def closest(name: str, valid) -> str | None:
    """The valid name closest to a misspelt one ('did you mean'), or None when nothing is close."""
    hit = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return hit[0] if hit else None


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def setting(default, help: str, *, check=None, flag: str | None = "", many: bool = False, type=None, stored=True):
    """A field with its help and check. flag: '' gives --name-with-dashes, None no flag of its own.
    many: a list flag (nargs='+') of `type`. stored=False: a runtime field, not a run setting (no flag,
    not in a stored config)."""
    meta = {"help": help, "check": check, "flag": flag if stored else None, "many": many, "type": type}
    meta["stored"] = stored
    if isinstance(default, (list, dict)):
        copy = list if isinstance(default, list) else dict
        return field(default_factory=lambda: copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a setting: --T, --batch-size, ..."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def check_fields(section) -> None:
    """Every setting of a section in its range: one ConfigError naming the flag and the value."""
    for f in dataclasses.fields(section):
        rule = f.metadata.get("check")
        v = getattr(section, f.name)
        if rule is None or v is None:
            continue
        ok, expected = rule
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and ok(x) for x in values):
            raise ConfigError(f"{flag_of(f)} {' '.join(str(x) for x in values)}: expected {expected}")


def check_name(f_name: str, value, valid) -> None:
    """A name from a name table (valid): refused with the closest valid one and the list."""
    if value not in valid:
        hit = closest(str(value), valid)
        hint = f"did you mean {hit!r}? " if hit else ""
        raise ConfigError(f"unknown {f_name} {value!r}; {hint}valid: {', '.join(valid)}")


INT_GE1 = (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
INTS_GE1 = (INT_GE1[0], "integers >= 1")
INT_GE0 = (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
FINITE = (finite, "a finite number")
FINITE_GE0 = (lambda v: finite(v) and v >= 0, "a finite number >= 0")
FINITE_GT0 = (lambda v: finite(v) and v > 0, "a finite number > 0")
