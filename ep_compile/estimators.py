"""Gradient estimators: one-sided, random-sign and symmetric EP, and BPTT, behind one signature.

    estimator(model, x, y, phases, *, masks=None, generator=None, step_fn=step) -> Estimate

Every estimator returns, per parameter of list(model.parameters()), an estimate of dL/dtheta where
L = mean over the batch of l(s_T, y): the loss gradient itself, so all are directly comparable and
plug into any torch optimizer through .grad (see set_grads).

EP, for every parameter at once (the paper's Phi-difference form, App. C and D.2.3):
    F(s, beta) = Phi(x, s) - beta * l(s, y)
    grad = d/dtheta [F(s_b, beta_b) - F(s_a, beta_a)] / (beta_a - beta_b)
  one-sided (Eq. 4):    (s_a, beta_a) = (s*, 0),          (s_b, beta_b) = (s^beta, beta)
  random-sign (Alg. 1): the same with beta -> +-beta, the sign drawn from a seeded generator
  symmetric (Eq. 12):   (s_a, beta_a) = (s^-beta, -beta), (s_b, beta_b) = (s^beta, beta)
The Phi part is -1/beta (dPhi/dtheta(s_b) - dPhi/dtheta(s_a)) (Eq. 34-35, 38-39); the loss part only
touches the read-out w_out: dl/dw_out at s^beta (Eq. 38) or the mean over s^+-beta (Eq. 39).
EP phases run under no_grad: memory does not grow with T or K.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .dynamics import relax, step
from .model import ConfigError, EPNet


@dataclass
class Phases:
    """Lengths of the phases and the nudging strength. bptt_steps truncates BPTT to the last k steps
    of the free phase (None: all T)."""

    T: int = 250
    K: int = 25
    beta: float = 1.0
    bptt_steps: int | None = None

    def __post_init__(self):
        for name in ("T", "K"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if self.bptt_steps is not None and not 1 <= self.bptt_steps <= self.T:
            raise ConfigError(f"bptt_steps must lie in [1, T={self.T}], got {self.bptt_steps!r}")
        self.beta = float(self.beta)

    def require_beta(self, estimator: str):
        if not self.beta > 0:
            raise ConfigError(f"estimator {estimator!r} nudges: beta must be > 0, got {self.beta!r}")


@dataclass
class Estimate:
    grads: list[torch.Tensor]  # dL/dtheta, aligned with list(model.parameters())
    s_free: list[torch.Tensor]  # the free fixed point s* [(B, *shape_n)]
    logits: torch.Tensor  # (B, n_classes) at s*
    loss: torch.Tensor  # (B,) loss at s*
    info: dict = field(default_factory=dict)


def ep_gradient(model: EPNet, x, y, s_a, beta_a: float, s_b, beta_b: float, masks=None):
    """d/dtheta [F(s_b, beta_b) - F(s_a, beta_a)] / (beta_a - beta_b), F = mean_batch(Phi - beta l).

    Differentiates only the small graph of Phi at two given states (no time unrolling)."""
    params = list(model.parameters())

    def F(s, beta):
        f = model.phi(x, [t.detach() for t in s], masks)
        if beta != 0:
            f = f - beta * model.loss([t.detach() for t in s], y, masks)
        return f.mean()

    with torch.enable_grad():
        diff = (F(s_b, beta_b) - F(s_a, beta_a)) / (beta_a - beta_b)
        grads = torch.autograd.grad(diff, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _free(model, x, phases, masks, step_fn):
    model.check_input(x)
    with torch.no_grad():
        s = relax(model, x, model.init_states(x.shape[0], x), phases.T, masks, step_fn=step_fn)
    return s


def _estimate(model, x, y, grads, s_free, masks, **info) -> Estimate:
    with torch.no_grad():
        logits, loss = model.logits(s_free, masks), model.loss(s_free, y, masks)
    return Estimate(grads, s_free, logits, loss, info)


def one_sided(model: EPNet, x, y, phases: Phases, *, masks=None, generator=None, step_fn=step, sign=1.0):
    """Two phases, nudging +beta (Eq. 3-4). `sign=-1` nudges with -beta instead."""
    phases.require_beta("one-sided")
    beta = sign * phases.beta
    s_free = _free(model, x, phases, masks, step_fn)
    with torch.no_grad():
        s_beta = relax(model, x, s_free, phases.K, masks, y, beta, step_fn=step_fn)
    grads = ep_gradient(model, x, y, s_free, 0.0, s_beta, beta, masks)
    return _estimate(model, x, y, grads, s_free, masks, beta=beta)


def random_sign(model: EPNet, x, y, phases: Phases, *, masks=None, generator=None, step_fn=step):
    """One-sided EP with the sign of beta drawn at random each iteration (Alg. 1)."""
    phases.require_beta("random-sign")
    draw = torch.randint(0, 2, (1,), generator=generator).item()
    return one_sided(model, x, y, phases, masks=masks, step_fn=step_fn, sign=1.0 if draw else -1.0)


def symmetric(model: EPNet, x, y, phases: Phases, *, masks=None, generator=None, step_fn=step):
    """Three phases: free, +beta and -beta, both nudged phases from s* (Alg. 2, Eq. 12)."""
    phases.require_beta("symmetric")
    b = phases.beta
    s_free = _free(model, x, phases, masks, step_fn)
    with torch.no_grad():
        s_pos = relax(model, x, s_free, phases.K, masks, y, b, step_fn=step_fn)
        s_neg = relax(model, x, s_free, phases.K, masks, y, -b, step_fn=step_fn)  # restart from s*
    grads = ep_gradient(model, x, y, s_neg, -b, s_pos, b, masks)
    return _estimate(model, x, y, grads, s_free, masks, beta=b)


def bptt(model: EPNet, x, y, phases: Phases, *, masks=None, generator=None, step_fn=step):
    """Backpropagation through the last `bptt_steps` (default all T) steps of the free phase."""
    model.check_input(x)
    k = phases.bptt_steps or phases.T
    params = list(model.parameters())
    with torch.no_grad():
        s = relax(model, x, model.init_states(x.shape[0], x), phases.T - k, masks, step_fn=step_fn)
    with torch.enable_grad():
        s_T = relax(model, x, s, k, masks, step_fn=step_fn)
        loss = model.loss(s_T, y, masks)
        grads = torch.autograd.grad(loss.mean(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    s_T = [t.detach() for t in s_T]
    return _estimate(model, x, y, grads, s_T, masks, bptt_steps=k)


ESTIMATORS = {
    "one-sided": one_sided,
    "random-sign": random_sign,
    "symmetric": symmetric,
    "bptt": bptt,
}


def get_estimator(name: str):
    if name not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {name!r}; valid: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def set_grads(model: EPNet, grads: list[torch.Tensor]) -> None:
    """Write an estimate into .grad so any torch optimizer can take the step."""
    for p, g in zip(model.parameters(), grads):
        p.grad = g.detach().to(p.dtype)
