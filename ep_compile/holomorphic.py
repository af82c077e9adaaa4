"""Holomorphic EP (Laborieux and Zenke, NeurIPS 2022): the loss gradient at finite nudging.

Let F(s, beta) = Phi(x, s) - beta l(s, y) and G(beta) = dF/dtheta at the nudged fixed point s_beta.
When the dynamics are holomorphic in the states, G is holomorphic in beta and -dL/dtheta = G'(0)
is a contour integral (Cauchy): on N nudges beta_k = |beta| e^{2 pi i k / N} on a circle,

    grad = -(1/N) sum_k Re[ G(beta_k) / beta_k ]                                   (hEP, Eq. 9-10)

whose error is the aliased Taylor term of order N + 1: O(|beta|^N). N = 2 (beta, -beta) is the
symmetric estimate (Eq. 12). theta is real, so G(conj b) = conj G(b): only k = 0 .. N // 2 are run
(as one batch of M x B states), each non-real point counted twice.

What is holomorphic here. Conv, transposed conv and linear maps are (real weights act on the real and
imaginary parts alike); so are the squared error and the softmax cross-entropy. The rest is taken
from the free fixed point s*, which the real free phase reaches first:
  max pool    the winners of P(w * s*) (real), fixed through every nudged phase, also to unpool;
  avg pool    linear, nothing to fix: the safe choice;
  hard sigmoid  each unit keeps the piece it sits on at s* (0, slope * u or 1): the nudged map is the
              holomorphic continuation of that piece;
  holo-sigmoid  analytic (model.holo_sigmoid), nothing to fix.
BPTT through the real dynamics differentiates exactly these pieces at s*, so the estimate converges
to the gradient as |beta|^N even where the real nudged dynamics would change a winner or a piece.
The states of a phase, the winners and the pieces are local to each neuron: nothing here needs a
global signal beyond the nudge.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .dynamics import pieces, preactivations, schedule_of, step
from .estimators import Estimate, Phases, free_phase, make_estimate, param_grads
from .model import ConfigError, EPNet, real_linear
from .registry import register


def nudges(N: int, beta: float) -> tuple[list[complex], list[float]]:
    """The points beta_k = beta e^{2 pi i k / N} for k = 0 .. N // 2 and their weights (1 for a real
    point, 2 for a point that stands for itself and its conjugate)."""
    pts, ws = [], []
    for k in range(N // 2 + 1):
        b = beta * complex(math.cos(2 * math.pi * k / N), math.sin(2 * math.pi * k / N))
        real = k == 0 or 2 * k == N
        pts.append(complex(b.real, 0.0) if real else b)
        ws.append(1.0 if real else 2.0)
    return pts, ws


class Frozen:
    """What the nudged phases keep from s*: the max-pool winners of every layer's forward drive and,
    for the hard sigmoid, each unit's piece (-1: 0, 0: slope * u, 1: 1)."""

    def __init__(self, model: EPNet, x, s_free, masks):
        us, ctx = preactivations(model, x, s_free, masks)
        self.idx = ctx  # [(B, C, H', W') flat winner indices, or None]
        if model.cfg.activation == "holo-sigmoid":
            self.pieces = None
        else:
            self.pieces = pieces(model, us)

    def repeat(self, M: int) -> Frozen:
        new = object.__new__(Frozen)
        new.idx = [None if i is None else i.repeat(M, *[1] * (i.dim() - 1)) for i in self.idx]
        new.pieces = None if self.pieces is None else [p.repeat(M, *[1] * (p.dim() - 1)) for p in self.pieces]
        return new


def _onehot(model: EPNet, y, like) -> torch.Tensor:
    return F.one_hot(y, model.cfg.n_classes).to(like.real.dtype)


def _loss(model: EPNet, states, y, masks) -> torch.Tensor:
    """l(s, y) per example (B,), holomorphic: 1/2 sum (s - y)^2 (no conjugate) or logsumexp(z) - z_y."""
    z = model.logits(states, masks)
    if model.readout is None:
        return 0.5 * (z - _onehot(model, y, z)).pow(2).sum(dim=1)
    m = z.real.max(dim=1, keepdim=True).values.detach()
    lse = m.squeeze(1) + torch.log(torch.exp(z - m).sum(dim=1))
    return lse - z.gather(1, y.view(-1, 1)).squeeze(1)


def _dloss_ds(model: EPNet, states, y, masks) -> torch.Tensor:
    z = model.logits(states, masks)
    if model.readout is None:
        return z - _onehot(model, y, z)
    m = z.real.max(dim=1, keepdim=True).values
    e = torch.exp(z - m)
    err = e / e.sum(dim=1, keepdim=True) - _onehot(model, y, z)  # softmax - y
    return real_linear(lambda t: t @ model.readout.weight, err).view_as(states[-1])


def _sigma(model: EPNet, u: torch.Tensor, piece, n: int) -> torch.Tensor:
    """State n's activation continued to complex u: its linear piece where s* sat on it, else the
    constant of the piece (lo or hi)."""
    if piece is None:
        return model.sigma(u, n)  # holo-sigmoid
    slope, lo, hi = model.acts[n]
    if lo == -math.inf:  # the identity: one piece
        return slope * u
    return torch.where(piece == 0, slope * u, torch.where(piece > 0, hi, lo).to(u.dtype))


def complex_step(model: EPNet, x, states, frozen: Frozen, masks, y, beta, parity=None):
    """One step of the continued dynamics for complex states (M B, *shape_n) and a complex beta
    per example (M B,): the states of colour class `parity` (None: all) updated from `states`."""
    dropped = model.apply_masks(states, masks)
    layers = [x] + dropped
    n_states, out = len(states), list(states)
    n_chain = len(model.layers)
    only = None if parity is None else model.colours[parity]
    for n in range(n_states):
        if only is not None and n not in only:
            continue
        u = model.layers[n](layers[n], winners=frozen.idx[n])[0]
        if n + 1 < n_states:
            u = u + model.layers[n + 1].feedback(dropped[n + 1], frozen.idx[n + 1])
        for j, sk in enumerate(model.skips):
            if sk.dst == n + 1:
                u = u + sk(layers[sk.src], winners=frozen.idx[n_chain + j])[0]
            elif sk.src == n + 1:
                u = u + sk.feedback(dropped[sk.dst - 1], frozen.idx[n_chain + j])
        if n == n_states - 1:
            u = u - beta.view(-1, *[1] * (u.dim() - 1)) * _dloss_ds(model, states, y, masks)
        if masks is not None and masks[n] is not None:
            u = u * masks[n]
        out[n] = _sigma(model, u, None if frozen.pieces is None else frozen.pieces[n], n)
    return out


def _phi(model: EPNet, x, states, frozen: Frozen, masks) -> torch.Tensor:
    """Phi(x, s) per example (M B,) with the fixed pooling: sum_n s^n . P(w_n * s^{n-1})."""
    layers = [x] + model.apply_masks(states, masks)
    return sum(
        layer.phi(layers[layer.src], layers[layer.dst], frozen.idx[i]) for i, layer in enumerate(model.interactions())
    )


def nudged_phases(model: EPNet, x, y, s_free, K: int, points: list[complex], masks=None, evenodd=False):
    """The nudged states for every point, from s*, as one batch: [(M B, *shape_n)] complex, plus the
    frozen winners/pieces and the repeated inputs the estimate needs."""
    M, B = len(points), x.shape[0]
    frozen = Frozen(model, x, s_free, masks).repeat(M)
    cdt = torch.complex128 if x.dtype == torch.float64 else torch.complex64

    def rep(t):
        return None if t is None else t.repeat(M, *[1] * (t.dim() - 1))

    xs, ys = rep(x).to(cdt), rep(y)
    ms = None if masks is None else [rep(m) for m in masks]
    beta = torch.tensor(points, dtype=cdt, device=x.device).repeat_interleave(B)  # (M B,)
    s = [rep(t).to(cdt) for t in s_free]
    with torch.no_grad():
        for _ in range(K):
            if evenodd:  # the colour classes in turn, as dynamics.step_evenodd
                for c in range(len(model.colours)):
                    s = complex_step(model, xs, s, frozen, ms, ys, beta, parity=c)
            else:
                s = complex_step(model, xs, s, frozen, ms, ys, beta)
    return s, frozen, xs, ys, ms, beta


def holomorphic(
    model: EPNet, x, y, phases: Phases, *, masks=None, generator=None, step_fn=step, apply_update=None
) -> Estimate:
    """Holomorphic EP with phases.hep_points nudges of modulus phases.beta (see the module docstring)."""
    if model.cfg.asymmetric:
        raise ConfigError("estimator 'holomorphic' assumes symmetric weights but the model is asymmetric")
    phases.require_beta("holomorphic")
    if phases.fused or phases.amp:
        raise ConfigError("estimator 'holomorphic' runs its own batched complex phases: drop --fused / --amp")
    N, B = phases.hep_points, x.shape[0]
    points, weights = nudges(N, phases.beta)
    s_free, steps = free_phase(model, x, phases, masks, step_fn)
    s, frozen, xs, ys, ms, beta = nudged_phases(
        model, x, y, s_free, phases.K, points, masks, evenodd=schedule_of(step_fn) == "evenodd"
    )
    s = [t.detach() for t in s]
    w = torch.tensor(weights, dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        Fk = _phi(model, xs, s, frozen, ms) - beta * _loss(model, s, ys, ms)  # (M B,) F(s_k, beta_k)
        per_point = (Fk / beta).view(len(points), B).mean(dim=1).real  # (M,) Re[F_k / beta_k]
        grads = param_grads(-(w * per_point).sum() / N, list(model.parameters()))
    return make_estimate(model, x, y, grads, s_free, masks, beta=phases.beta, free_steps=steps, hep_points=N)


register("holomorphic", holomorphic, two_sided=True, complex_nudge=True, gradcheck="final")
