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

The base every estimator module builds on (continual, spiking, holomorphic): `free_phase` (T steps
from zero or the residual stop), `nudged_states`, the rules in `RULES`, `param_grads` and
`make_estimate`; `phase_autocast` for the bf16 phases.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .config import VF_FORMS, Phases  # noqa: F401  (re-exported: the phases section lives in config)
from .dynamics import relax, relax_until, step
from .model import EPNet
from .registry import ENTRIES, ESTIMATORS, check_compatible, get_estimator, register  # noqa: F401  (re-exported)


@dataclass
class Estimate:
    grads: list[torch.Tensor]  # dL/dtheta, aligned with list(model.parameters())
    s_free: list[torch.Tensor]  # the free fixed point s* [(B, *shape_n)]
    logits: torch.Tensor  # (B, n_classes) at s*
    loss: torch.Tensor  # (B,) loss at s*
    info: dict = field(default_factory=dict)


def _F_diff(model: EPNet, x, y, s_a, beta_a, s_b, beta_b, masks, phi, loss=True):
    """[F(s_b, beta_b) - F(s_a, beta_a)] / (beta_a - beta_b), F = mean_batch(phi - beta l), as a graph
    in the parameters only (states detached). loss=False drops the beta l term (F = phi): the
    per-step increments of the continual estimators."""

    def F(s, beta):
        s = [t.detach() for t in s]
        f = phi(x, s, masks)
        if beta != 0 and loss:
            f = f - beta * model.loss(s, y, masks)
        return f.mean()

    return (F(s_b, beta_b) - F(s_a, beta_a)) / (beta_a - beta_b)


def param_grads(f, params):
    """df/dtheta for each of params, zeros where f does not depend on one (an estimate's form)."""
    g = torch.autograd.grad(f, params, allow_unused=True)
    return [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)]


def ep_gradient(model: EPNet, x, y, s_a, beta_a: float, s_b, beta_b: float, masks=None, s_star=None, loss=True):
    """EP (Eq. 4, 12): d/dtheta [F(s_b, beta_b) - F(s_a, beta_a)] / (beta_a - beta_b) with
    F = mean_batch(Phi - beta l). Differentiates only the small graph of Phi at two given states."""
    with torch.enable_grad():
        return param_grads(
            _F_diff(model, x, y, s_a, beta_a, s_b, beta_b, masks, model.phi, loss), list(model.parameters())
        )


def kp_vf_gradient(model: EPNet, x, y, s_a, beta_a: float, s_b, beta_b: float, masks=None, s_star=None, loss=True):
    """KP-VF (Eq. 43-45, 49): each of w^f and w^b gets its own EP-style estimate, computed with the
    pooling indices of its own convolution, and both receive their average. Biases, the first conv
    and the read-out get the plain estimate. With w^b = w^f this is exactly the symmetric EP estimate."""
    params = list(model.parameters())
    backs = [layer for layer in model.interactions() if layer.weight_b is not None]
    with torch.enable_grad():
        g = param_grads(_F_diff(model, x, y, s_a, beta_a, s_b, beta_b, masks, model.phi, loss), params)

        def phi_b(x_, s, m):  # sum over interactions of s^dst . P(w^b * s^src), per example (B,)
            layers = [x_] + model.apply_masks(s, m)
            return sum(layer.phi_b(layers[layer.src], layers[layer.dst]) for layer in backs)

        gb = param_grads(
            _F_diff(model, x, y, s_a, beta_a, s_b, beta_b, masks, phi_b, loss=False),
            [layer.weight_b for layer in backs],
        )
    index = {id(p): i for i, p in enumerate(params)}
    for layer, gbk in zip(backs, gb):
        i_f, i_b = index[id(layer.weight_f)], index[id(layer.weight_b)]
        avg = 0.5 * (g[i_f] + gbk)
        g[i_f], g[i_b] = avg, avg.clone()
    return g


def vf_gradient(
    model: EPNet, x, y, s_a, beta_a: float, s_b, beta_b: float, masks=None, s_star=None, loss=True, form="linearized"
):
    """Vector Field (Eq. 10, 41-42, 48): -dF/dtheta(x, s*)^T . (s_b - s_a) / (beta_b - beta_a).
    Forward weights: (change of the post-synaptic state) x (pre-synaptic state at s*); backward
    weights: (post-synaptic state at s*) x (change of the pre-synaptic state). Read-out as in Eq. 42.

    form="linearized" (Eq. 41-42 as printed): the backward term is unpooled with the indices of
    w^b * s*^{n-1}, i.e. the vector field linearised at s*.
    form="paper-code" (the code behind Table 2): each phase's term s*^n . P(w^b * s^{n-1}_phase) is
    differentiated at that phase's own pre-synaptic state, so it unpools with that phase's own
    max-pool winners. The two forms agree unless a backward pool winner changes between phases."""
    params = list(model.parameters())
    star = model.apply_masks([t.detach() for t in s_star], masks)
    delta = model.apply_masks([(b - a).detach() / (beta_b - beta_a) for a, b in zip(s_a, s_b)], masks)
    if form == "paper-code":  # the pre-synaptic states of the two phases themselves
        pre_a = model.apply_masks([t.detach() for t in s_a], masks)
        pre_b = model.apply_masks([t.detach() for t in s_b], masks)
    layers = [x] + star
    with torch.enable_grad():
        g = 0
        for layer in model.interactions():  # each links s^a = s^src to s^b = s^dst
            a, b = layer.src, layer.dst
            g = g + layer.phi(layers[a], delta[b - 1]).sum()  # forward: delta s^b . P(w^f * s*^a)
            if layer.weight_b is None:
                continue
            if form == "paper-code":  # [s*^b . P(w^b * s_+^a) - s*^b . P(w^b * s_-^a)] / dbeta
                diff = layer.phi_b(pre_b[a - 1], layers[b]) - layer.phi_b(pre_a[a - 1], layers[b])
                g = g + diff.sum() / (beta_b - beta_a)
            else:  # <w~^b * P^-1(s*^b), delta s^a>, indices of w^b * s*^a
                ctx = layer.feedback_ctx(layers[a], layer(layers[a])[1])
                g = g + (layer.feedback(layers[b], ctx) * delta[a - 1]).sum()
        f = -g / x.shape[0]
        if loss:
            lb = model.loss([t.detach() for t in s_b], y, masks).mean() * beta_b
            la = model.loss([t.detach() for t in s_a], y, masks).mean() * beta_a if beta_a != 0 else 0
            f = f + (lb - la) / (beta_b - beta_a)
        return param_grads(f, params)


RULES = {"ep": ep_gradient, "vf": vf_gradient, "kp-vf": kp_vf_gradient}


def phase_autocast(phases: Phases, x, nudged: bool = False):
    """bfloat16 autocast for a phase: every phase with --amp bf16, the free phase alone with
    bf16-free (the nudged phases, and BPTT's unrolled steps, carry the estimate: float32)."""
    if phases.amp == "bf16" or (phases.amp == "bf16-free" and not nudged):
        return torch.autocast(x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def free_phase(model, x, phases, masks, step_fn):
    """The free phase from s = 0: T steps, or fewer with the residual stop. Info: steps used."""
    model.check_input(x)
    with torch.no_grad(), phase_autocast(phases, x):
        s0 = model.init_states(x.shape[0], x)
        if phases.tol > 0:
            s, steps, _ = relax_until(model, x, s0, phases.T, phases.tol, phases.check_every, masks, step_fn=step_fn)
        else:
            s, steps = relax(model, x, s0, phases.T, masks, step_fn=step_fn), phases.T
    return [t.to(x.dtype) for t in s], steps


def make_estimate(model, x, y, grads, s_free, masks, **info) -> Estimate:
    """The Estimate of grads, with the logits and loss at the free fixed point s_free."""
    with torch.no_grad():
        logits, loss = model.logits(s_free, masks), model.loss(s_free, y, masks)
    return Estimate(grads, s_free, logits, loss, info)


def nudged_states(
    model: EPNet,
    x,
    y,
    s_free,
    K: int,
    beta: float,
    two_sided: bool,
    masks=None,
    step_fn=step,
    callback=None,
    fused=False,
):
    """The nudged phases from s*: s^beta, and s^-beta (restarted from s*, Alg. 2) when two-sided.
    fused: both phases as one batch of 2B, beta = (+beta, ..., -beta, ...) per example."""
    if fused and two_sided and callback is None:
        B = x.shape[0]

        def cat(ts):
            return None if ts is None else [None if t is None else torch.cat([t, t]) for t in ts]

        with torch.no_grad():
            betas = torch.cat([x.new_full((B,), beta), x.new_full((B,), -beta)])
            s = relax(model, torch.cat([x, x]), cat(s_free), K, cat(masks), torch.cat([y, y]), betas, step_fn=step_fn)
        return [t[:B] for t in s], [t[B:] for t in s]
    with torch.no_grad():
        cb = None if callback is None else (lambda t, s: callback(t, "pos", s))
        s_pos = relax(model, x, s_free, K, masks, y, beta, step_fn=step_fn, callback=cb)
        s_neg = None
        if two_sided:
            cb = None if callback is None else (lambda t, s: callback(t, "neg", s))
            s_neg = relax(model, x, s_free, K, masks, y, -beta, step_fn=step_fn, callback=cb)
    return s_pos, s_neg


def rule_gradient(name: str, model: EPNet, x, y, s_free, s_pos, s_neg, beta: float, masks=None, vf_form="linearized"):
    """The estimate of estimator `name` from the states of its phases."""
    rule, two_sided = SPECS[name][:2]
    kw = {"form": vf_form} if rule == "vf" else {}
    if two_sided:
        return RULES[rule](model, x, y, s_neg, -beta, s_pos, beta, masks, s_star=s_free, **kw)
    return RULES[rule](model, x, y, s_free, 0.0, s_pos, beta, masks, s_star=s_free, **kw)


def _make(name: str):
    rule, two_sided, random = SPECS[name]

    def estimator(
        model: EPNet, x, y, phases: Phases, *, masks=None, generator=None, step_fn=step, apply_update=None, sign=1.0
    ):
        check_compatible(name, model)
        phases.require_beta(name)
        if random:  # Alg. 1: the sign of beta drawn from the (seeded) generator, on its device, once
            dev = x.device if generator is None else generator.device  # before any phase is queued
            sign = 1.0 if torch.randint(0, 2, (1,), generator=generator, device=dev).item() else -1.0
        beta = sign * phases.beta
        s_free, steps = free_phase(model, x, phases, masks, step_fn)
        with phase_autocast(phases, x, nudged=True):
            s_pos, s_neg = nudged_states(
                model, x, y, s_free, phases.K, beta, two_sided, masks, step_fn, fused=phases.fused
            )
        s_pos = [t.to(x.dtype) for t in s_pos]
        s_neg = None if s_neg is None else [t.to(x.dtype) for t in s_neg]
        grads = rule_gradient(name, model, x, y, s_free, s_pos, s_neg, beta, masks, phases.vf_form)
        return make_estimate(model, x, y, grads, s_free, masks, beta=beta, free_steps=steps)

    estimator.__name__ = name.replace("-", "_")
    estimator.__doc__ = f"{name}: rule {rule!r}, {'three' if two_sided else 'two'} phases" + (
        ", random sign of beta" if random else ""
    )
    return estimator


# name -> (rule, two-sided, random sign)
SPECS = {
    "one-sided": ("ep", False, False),  # Eq. 4
    "random-sign": ("ep", False, True),  # Alg. 1
    "symmetric": ("ep", True, False),  # Eq. 12, Alg. 2
    "vf": ("vf", True, False),  # Eq. 41-42
    "vf-one-sided": ("vf", False, False),  # Eq. 10
    "kp-vf": ("kp-vf", True, False),  # Eq. 43-45
    "kp-vf-one-sided": ("kp-vf", False, False),
}


def bptt(model: EPNet, x, y, phases: Phases, *, masks=None, generator=None, step_fn=step, apply_update=None):
    """Backpropagation through the last `bptt_steps` (default all T) steps of the free phase."""
    model.check_input(x)
    k = phases.bptt_steps or phases.T
    params = list(model.parameters())
    with torch.no_grad(), phase_autocast(phases, x):
        s = relax(model, x, model.init_states(x.shape[0], x), phases.T - k, masks, step_fn=step_fn)
    s = [t.to(x.dtype) for t in s]
    with torch.enable_grad():
        with phase_autocast(phases, x, nudged=True):
            s_T = relax(model, x, s, k, masks, step_fn=step_fn)
        s_T = [t.to(x.dtype) for t in s_T]
        loss = model.loss(s_T, y, masks)
        grads = torch.autograd.grad(loss.mean(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    s_T = [t.detach() for t in s_T]
    return make_estimate(model, x, y, grads, s_T, masks, bptt_steps=k)


for _name, (_rule, _two, _rand) in SPECS.items():
    register(
        _name,
        _make(_name),
        rule=_rule,
        two_sided=_two,
        random_sign=_rand,
        needs_asymmetric=_rule in ("vf", "kp-vf"),
        gradcheck="per-step",
    )
register("bptt", bptt, unrolled=True)
one_sided, random_sign, symmetric = (ESTIMATORS[n] for n in ("one-sided", "random-sign", "symmetric"))
vf, vf_one_sided, kp_vf, kp_vf_one_sided = (ESTIMATORS[n] for n in ("vf", "vf-one-sided", "kp-vf", "kp-vf-one-sided"))


def set_grads(model: EPNet, grads: list[torch.Tensor]) -> None:
    """Write an estimate into .grad so any torch optimizer can take the step."""
    for p, g in zip(model.parameters(), grads):
        p.grad = g.detach().to(p.dtype)
