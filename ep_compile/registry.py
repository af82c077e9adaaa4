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
    unrolled: bool = False  # backpropagation through the unrolled free phase (BPTT): no beta, no --tol
    complex_nudge: bool = False  # nudges on a circle of complex beta (holomorphic EP): --hep-points, no --amp
    rate_form: str | None = None  # a spiking estimator: the rate estimator it is the spiking form of

    @property
    def takes_vf_form(self) -> bool:
        """--vf-form (the linearized or the paper code's VF): the one-shot VF rules."""
        return self.rule == "vf" and not (self.time_local or self.spiking)


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


def spiking_form(name: str) -> str | None:
    """The spiking estimator whose rate form is `name` (or `name` itself if it is spiking), else None."""
    if name in ENTRIES and ENTRIES[name].spiking:
        return name
    return next((n for n, e in ENTRIES.items() if e.rate_form == name), None)


def get_estimator(name: str) -> Callable:
    return entry(name).fn


def check_compatible(name: str, model) -> None:
    """The weights an estimator's rule assumes against the model's: the EP rule needs w^b = w^f (a
    symmetric model); VF and KP-VF need separate backward weights (needs_asymmetric)."""
    e = entry(name)
    if e.rule == "ep" and model.cfg.asymmetric:
        raise ConfigError(
            f"estimator {name!r} assumes symmetric weights but the model is asymmetric; "
            "use vf, kp-vf (or their -one-sided forms) or bptt"
        )
    if e.needs_asymmetric and not model.cfg.asymmetric:
        raise ConfigError(
            f"estimator {name!r} needs an asymmetric model (separate backward weights: "
            "asymmetric=True, --asymmetric); a symmetric model uses one-sided, random-sign or symmetric"
        )
