"""Time-local EP: the weights change at every step of the nudged phase (C-EP, C-VF; Ernoult et al.
2020, "Equilibrium Propagation with Continual Weight Updates").

At nudged step k, s_{k+1} = step(s_k) with the current weights, then every weight moves by the
increment of its rule between s_k and s_{k+1}, scaled by eta / beta, before step k + 1 runs:
  c-ep     eta/beta * (dPhi/dtheta(s_{k+1}) - dPhi/dtheta(s_k))           (symmetric weights)
  c-vf     eta/beta * (post_{k+1} - post_k) x pre_k, per forward and backward weight
  c-kpvf   the KP-VF increment: each weight's own EP increment, averaged over w^f and w^b
The -symmetric forms run a +beta phase, then a -beta phase from s*, each increment divided by
2 beta with the phase's sign. For eta -> 0 the increments of c-ep telescope to the EP estimate
(one-sided: Eq. 4; symmetric: Eq. 12). The read-out w_out sits outside the dynamics and has no
increment to telescope: it moves by dl/dw_out at the state of each phase's last step (halved for the
two phases of the symmetric form), as Eq. 38/39 prescribe, which is still local in time.

Same signature as every estimator, plus `apply_update(grads, k, K)`: the training loop's optimizer
step (all-reduced across processes), called at every nudged step with the increment in loss-gradient
units (so SGD with learning rate eta applies +eta/beta * Delta dPhi/dtheta). Without it, the
estimator takes plain SGD steps of size phases.lr and puts the weights back afterwards: it then only
measures, as gradcheck does. Estimate.grads is the sum of the increments (loss-gradient units).
"""

from __future__ import annotations

import contextlib

import torch

from .dynamics import step
from .registry import check_compatible, register

# name -> (rule, two-sided)
CONTINUAL = {
    "c-ep": ("ep", False),
    "c-ep-symmetric": ("ep", True),
    "c-vf": ("vf", False),
    "c-vf-symmetric": ("vf", True),
    "c-kpvf": ("kp-vf", False),
    "c-kpvf-symmetric": ("kp-vf", True),
}


def readout_gradient(model, y, s, masks, weight: float) -> list[torch.Tensor]:
    """weight * dl/dw_out at state s for the read-out parameters, zeros for the others."""
    params = list(model.parameters())
    if model.readout is None:
        return [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        loss = model.loss([t.detach() for t in s], y, masks).mean() * weight
        g = torch.autograd.grad(loss, list(model.readout.parameters()))
    ro = {id(p): gi for p, gi in zip(model.readout.parameters(), g)}
    return [ro.get(id(p), torch.zeros_like(p)) for p in params]


@contextlib.contextmanager
def sgd_restored(params, lr: float):
    """Plain SGD steps of size lr, sgd(grads, k, K), whose weights are put back on exit: measuring a
    time-local estimator without training (gradcheck, or no update callback)."""
    saved = [p.detach().clone() for p in params]

    def sgd(g, k, K):
        with torch.no_grad():
            for p, gi in zip(params, g):
                p.sub_(lr * gi)

    try:
        yield sgd
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)


@contextlib.contextmanager
def updates(params, apply_update, lr: float):
    """The caller's update callback, or, when there is none, SGD steps of size lr undone on exit."""
    if apply_update is not None:
        yield apply_update
        return
    with sgd_restored(params, lr) as sgd:
        yield sgd


def time_local_phase(
    model, y, s, K: int, advance, increment, update, readout_weight: float, masks=None, rates=None, total=None
):
    """The one time-local loop (C-EP, C-VF, C-KPVF, spiking C-EP): K nudged steps s_{k+1} =
    advance(s_k, k), each followed by update(increment(s_k, s_{k+1}), k, K), the weights moving
    before the next step; the last increment adds the read-out's loss gradient at s_K (times
    readout_weight). rates(s): the decoded state list of a state (identity for rate networks).
    Returns `total` (None: zeros) plus every increment, and s_K."""
    rates = rates or (lambda st: st)
    for k in range(K):
        with torch.no_grad():
            new = advance(s, k)
        g = increment(s, new)
        if k == K - 1:
            g = [a + r for a, r in zip(g, readout_gradient(model, y, rates(new), masks, readout_weight))]
        update(g, k, K)
        total = g if total is None else [t + gi for t, gi in zip(total, g)]
        s = new
    return total, s


def continual_estimator(name: str):
    from .estimators import RULES, free_phase, make_estimate

    rule, two_sided = CONTINUAL[name]

    def estimator(model, x, y, phases, *, masks=None, generator=None, step_fn=step, apply_update=None):
        check_compatible(name, model)
        phases.require_beta(name)
        params = list(model.parameters())
        s_free, steps = free_phase(model, x, phases, masks, step_fn)
        total = [torch.zeros_like(p) for p in params]
        with updates(params, apply_update, phases.lr) as update:
            for sign in (1.0, -1.0) if two_sided else (1.0,):
                beta = sign * phases.beta
                denom = 2 * beta if two_sided else beta
                b = torch.as_tensor(beta, dtype=x.dtype, device=x.device)
                # -(1/denom) [rule between s_k and s_{k+1}], no loss term: F = Phi
                total, _ = time_local_phase(
                    model,
                    y,
                    s_free,
                    phases.K,
                    lambda s, k, b=b: step_fn(model, x, s, masks, y, b),
                    lambda s, new, d=denom: RULES[rule](model, x, y, s, 0.0, new, d, masks, s_star=s, loss=False),
                    update,
                    0.5 if two_sided else 1.0,
                    masks,
                    total=total,
                )
        est = make_estimate(model, x, y, total, s_free, masks, beta=phases.beta, free_steps=steps)
        est.info["applied"] = apply_update is not None
        return est

    estimator.__name__ = name.replace("-", "_")
    estimator.__doc__ = f"{name}: continual weight updates during the nudged phase, rule {rule!r}"
    return estimator


for _name, (_rule, _two) in CONTINUAL.items():
    register(
        _name,
        continual_estimator(_name),
        rule=_rule,
        two_sided=_two,
        needs_asymmetric=_rule != "ep",
        time_local=True,
        gradcheck="continual",
    )
