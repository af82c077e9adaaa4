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
    gradcheck: str | None = None  # how gradcheck compares it with BPTT: see GRADCHECK_MODES (None: not)
    honours: frozenset = None  # the optional settings it reads (OPTIONAL); None: derived below
    infer: Callable | None = (
        None  # inference (model, x, phases, step_fn) -> (states, steps, report); None: the rate net's
    )

    def __post_init__(self):
        if self.gradcheck is not None and self.gradcheck not in GRADCHECK_MODES:
            raise ValueError(f"gradcheck mode {self.gradcheck!r}; valid: {', '.join(GRADCHECK_MODES)}")
        if self.honours is None:
            object.__setattr__(self, "honours", frozenset(k for k, reads in OPTIONAL.items() if reads(self)))

    def iterate(self, model, x, y, phases, apply_update: Callable, **kw):
        """One training iteration's estimate, applied through apply_update(grads, k, K): at each of
        the K nudged steps for the time-local rules (they move the weights inside the phase), once
        with the whole estimate (k=0, K=1) for the others. Returns the Estimate."""
        if self.time_local:
            return self.fn(model, x, y, phases, apply_update=apply_update, **kw)
        est = self.fn(model, x, y, phases, **kw)
        apply_update(est.grads, 0, 1)
        return est

    @property
    def takes_vf_form(self) -> bool:
        """--vf-form (the linearized or the paper code's VF): the one-shot VF rules."""
        return "vf_form" in self.honours


# the settings only some estimators read -> which ones do, from their capabilities (an entry may
# declare its own set instead); config.check_honoured refuses a setting the chosen one ignores
OPTIONAL = {
    "fused": lambda e: e.two_sided and e.rule is not None and not (e.time_local or e.spiking),
    "tol": lambda e: not (e.unrolled or e.spiking),
    "amp": lambda e: not (e.time_local or e.complex_nudge or e.spiking),
    "vf_form": lambda e: e.rule == "vf" and not (e.time_local or e.spiking),
    "hep_points": lambda e: e.complex_nudge,
    "wd_compensation": lambda e: e.time_local,
    "bptt_steps": lambda e: e.unrolled,
    "compile": lambda e: not e.spiking,  # the spiking phases run their own eager loop with a decoder
    "schedule": lambda e: not e.spiking,
    "channels_last": lambda e: not e.spiking,
}
GRADCHECK_MODES = {  # gradcheck.py: how an estimator is compared with truncated BPTT
    "per-step": "the estimate after each of the K nudged steps against BPTT through as many steps (Eq. 6)",
    "continual": "the running sum of a time-local rule's increments, with real SGD steps (C-EP form of Eq. 6)",
    "final": "the final estimate only (holomorphic EP: one row per number of complex nudges)",
}


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
