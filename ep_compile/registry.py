"""The estimator registry: every gradient estimator under its name, with what it can do. Each
estimator module registers its own estimators when imported (estimators, continual, spiking,
holomorphic; `ep_compile/__init__.py` imports them all), and callers read the capabilities here
instead of testing names. This module imports no estimator module: the import graph has no cycle.

Every estimator has one signature:
    fn(model, x, y, phases, *, masks=None, generator=None, step_fn=..., apply_update=None) -> Estimate
(`apply_update` is used by the time-local ones and accepted, unused, by the others).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .model import ConfigError, closest


@dataclass(frozen=True)
class Entry:
    fn: Callable
    rule: str | None = None  # "ep", "vf", "kp-vf"; None for BPTT and holomorphic EP
    two_sided: bool = False  # a +beta and a -beta phase (Eq. 12)
    random_sign: bool = False  # one phase of random sign (Alg. 1)
    needs_asymmetric: bool = False  # distinct forward and backward weights
    time_local: bool = False  # weights move at every nudged step (C-EP, C-VF)
    spiking: bool = False  # binary spikes through sigma-delta encoders


ESTIMATORS: dict[str, Callable] = {}  # name -> estimator, in registration order
ENTRIES: dict[str, Entry] = {}


def register(name: str, fn: Callable, **capabilities) -> Callable:
    if name in ENTRIES:
        raise ValueError(f"estimator {name!r} is registered twice")
    ENTRIES[name] = Entry(fn, **capabilities)
    ESTIMATORS[name] = fn
    return fn


def entry(name: str) -> Entry:
    if name not in ENTRIES:
        hit = closest(name, ENTRIES)
        hint = f"did you mean {hit!r}? " if hit else ""
        raise ConfigError(f"unknown estimator {name!r}; {hint}valid: {', '.join(ENTRIES)}")
    return ENTRIES[name]


def get_estimator(name: str) -> Callable:
    return entry(name).fn
