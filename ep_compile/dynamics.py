"""The dynamics s_{t+1} = sigma(dPhi/ds(x, s_t) - beta * dl/ds(s_t)), two ways, and the phases.

The nudge sits inside the activation (Eq. 3 and 19, as in the paper's own code). With the hard
sigmoid clamp(u/2) this keeps the estimator unbiased: in the linear region the map is the gradient
of Phi/2 nudged by beta/2, so (1/beta) * Delta dPhi/dtheta estimates the loss gradient. Putting the
nudge after the activation (as Eq. 32/36 print it) doubles the effective beta on the weights.

  step           the fast path: explicit conv + pool forward, max-unpool + transposed conv feedback,
                 linear and transposed linear (App. D.2, Eq. 32/36); no autograd.
  step_autograd  the reference: sigma of the autograd gradient of Phi - beta * l (Eq. 1, 3, 7).
Both update every layer synchronously from s_t. Dropout masks multiply the states wherever they
enter Phi or the loss, so the dropped units' drive is zero.
"""

from __future__ import annotations

import math

import torch

from .model import ConfigError, EPNet


def preactivations(model: EPNet, x, states, masks=None, y=None, beta=None, parity=None, fwd=None):
    """u_n = dPhi/ds^n - beta dl/ds^n for every layer (explicit form) and the pooling contexts.

    x: (B, C, H, W); states: [(B, *shape_n)]; beta: None (free phase), a float, a 0-d tensor, or a
    (B,) tensor (one beta per example: the +beta and -beta phases run as one batch). parity c
    computes only the states of colour class c (model.colours: the even / odd layers of a chain; the
    others come back as None). u_n sums the forward term of every interaction into s^n and the
    feedback of every interaction out of it (the next chain layer, then the skips). fwd: a list with
    one entry per interaction (model.interactions()), None or its (P(w * s^src), ctx) from the same
    source state; the entries computed here are written into it, for the next colour class.
    Returns ([u_n (B, *shape_n)], [ctx_i]) where ctx_i holds interaction i's max-pool indices.
    """
    dropped = model.apply_masks(states, masks)
    layers = [x] + dropped
    fwd = [None] * len(model.all_specs) if fwd is None else fwd
    for i, syn in enumerate(model.interactions()):  # [(P(w_i * s^src), ctx)]
        if fwd[i] is None:
            fwd[i] = syn(layers[syn.src])
    outs, skip_outs = fwd[: len(model.layers)], fwd[len(model.layers) :]
    n_states = len(states)
    only = None if parity is None else model.colours[parity]
    us = []
    for n in range(n_states):
        if only is not None and n not in only:
            us.append(None)
            continue
        u = outs[n][0]  # bottom-up drive
        if n + 1 < n_states:  # top-down drive through the next layer's adjoint (w^b if it has one)
            nxt = model.layers[n + 1]
            u = u + nxt.feedback(dropped[n + 1], nxt.feedback_ctx(dropped[n], outs[n + 1][1]))
        for sk, (v, ctx) in zip(model.skips, skip_outs):
            if sk.dst == n + 1:  # a skip's forward term into s^n
                u = u + v
            elif sk.src == n + 1:  # a skip's feedback from the state it drives
                u = u + sk.feedback(dropped[sk.dst - 1], sk.feedback_ctx(dropped[n], ctx))
        if beta is not None and n == n_states - 1:
            b = beta.view(-1, *[1] * (u.dim() - 1)) if isinstance(beta, torch.Tensor) and beta.dim() == 1 else beta
            u = u - b * model.dloss_ds(states, y, masks)
        if masks is not None and masks[n] is not None:
            u = u * masks[n]
        us.append(u)
    return us, [o[1] for o in outs + skip_outs]


def step(model: EPNet, x, states, masks=None, y=None, beta=None) -> list[torch.Tensor]:
    """One synchronous step of the explicit dynamics (no autograd needed)."""
    us, _ = preactivations(model, x, states, masks, y, beta)
    return [model.sigma(u, n) for n, u in enumerate(us)]


def step_evenodd(model: EPNet, x, states, masks=None, y=None, beta=None) -> list[torch.Tensor]:
    """Asynchronous step: the colour classes of the state graph in turn, each from the freshest
    states (as in Scellier et al. 2023). On a chain: the layers with even list index (s^1, s^3, ...)
    from s_t, then the odd ones from the fresh even layers. A skip between two states of the same
    parity adds a class (model.colours, a greedy colouring): states of one class share no
    interaction. Same fixed points as `step`; it usually gets there in fewer steps. A class
    recomputes only the forward terms whose source state an earlier class of the step changed (a
    chain: the odd layers' in the second half), bit for bit what recomputing all of them gives."""
    fwd = [None] * len(model.all_specs)  # forward terms, reused while their source is unchanged
    for c, cls in enumerate(model.colours):
        us, _ = preactivations(model, x, states, masks, y, beta, parity=c, fwd=fwd)
        states = [s if u is None else model.sigma(u, n) for n, (u, s) in enumerate(zip(us, states))]
        fwd = [None if syn.src - 1 in cls else f for syn, f in zip(model.interactions(), fwd)]
    return states


SCHEDULES = {"sync": step, "evenodd": step_evenodd}


def drive_autograd(model: EPNet, x, states, masks=None, y=None, beta=None) -> list[torch.Tensor]:
    """The reference drive d/ds [Phi(x, s) - beta * l(s, y)] by autograd of Phi (Eq. 3, 7); for an
    asymmetric model, of the per-layer Phi~_n (Eq. 46-47)."""
    with torch.enable_grad():
        s = [t.detach().requires_grad_(True) for t in states]
        f = (model.phi_tilde if model.cfg.asymmetric else model.phi)(x, s, masks).sum()
        if beta is not None:
            f = f - beta * model.loss(s, y, masks).sum()
        return list(torch.autograd.grad(f, s))


def step_autograd(model: EPNet, x, states, masks=None, y=None, beta=None) -> list[torch.Tensor]:
    """One step of the reference dynamics: s_{t+1} = sigma(drive_autograd(s_t))."""
    return [model.sigma(g, n) for n, g in enumerate(drive_autograd(model, x, states, masks, y, beta))]


def relax(model: EPNet, x, states, steps: int, masks=None, y=None, beta=None, step_fn=step, callback=None):
    """Run `steps` steps from `states`; beta=None is the free phase. callback(t, states) after each
    step t = 1..steps. Runs under whatever grad mode the caller set (no_grad for EP phases, so memory
    is flat in steps; grad enabled for BPTT)."""
    if beta is not None:
        beta = torch.as_tensor(beta, dtype=x.dtype, device=x.device)  # one compiled graph for all betas
    for t in range(1, steps + 1):
        states = step_fn(model, x, states, masks, y, beta)
        if callback is not None:
            callback(t, states)
    return states


def relax_until(
    model: EPNet,
    x,
    states,
    max_steps: int,
    tol: float,
    check_every: int = 1,
    masks=None,
    y=None,
    beta=None,
    step_fn=step,
):
    """Run until the largest state change of one step, max_n |s_{t+1} - s_t|, falls below tol, or
    max_steps. The change is measured every check_every steps only, so the loop synchronises with
    the device that rarely (tol <= 0: once, after the last step; callers that need no residual run
    `relax`, which never reads the device). Returns (states, steps run, last measured change)."""
    if beta is not None:
        beta = torch.as_tensor(beta, dtype=x.dtype, device=x.device)
    if tol <= 0:  # no stop to decide: all max_steps steps, the last one's change read once at the end
        states = relax(model, x, states, max_steps - 1, masks, y, beta, step_fn)
        new = step_fn(model, x, states, masks, y, beta)
        return new, max_steps, largest_change(new, states).item()
    t, res = 0, float("inf")
    while t < max_steps:
        for _ in range(min(check_every, max_steps - t) - 1):
            states = step_fn(model, x, states, masks, y, beta)
            t += 1
        new = step_fn(model, x, states, masks, y, beta)
        t += 1
        res = largest_change(new, states).item()  # one read of the device
        states = new
        if res < tol:
            break
    return states, t, res


def largest_change(new, old) -> torch.Tensor:
    """max_n |new_n - old_n| over every state layer, as a 0-d tensor on the states' device."""
    return torch.stack([(a - b).abs().max() for a, b in zip(new, old)]).max()


def residual(model: EPNet, x, states, masks=None, y=None, beta=None, step_fn=step) -> torch.Tensor:
    """Largest absolute state change of one more step: max_n |s_{t+1} - s_t| (0-d tensor)."""
    new = step_fn(
        model, x, states, masks, y, None if beta is None else torch.as_tensor(beta, dtype=x.dtype, device=x.device)
    )
    return largest_change(new, states)


def regions(model: EPNet, x, states, masks=None, y=None, beta=None):
    """Per unit, which piece of the activation it sits on (-1 below, 0 linear, 1 saturated) and the
    max-pool winners: what the theorem tests watch for between s* and s^beta."""
    us, ctx = preactivations(model, x, states, masks, y, beta)
    return pieces(model, us), [c for c in ctx if c is not None]


def pieces(model: EPNet, us) -> list[torch.Tensor]:
    """The piece of its clamp each unit of the drives `us` sits on: -1 (lo), 0 (slope * u), 1 (hi)."""
    out = []
    for (slope, lo, hi), u in zip(model.acts, us):
        out.append(
            torch.zeros_like(u, dtype=torch.long)
            if lo == -math.inf
            else torch.where(u <= 0, -1, torch.where(u * slope >= hi, 1, 0))
        )
    return out


def count_changes(model: EPNet, x, s_a, s_b, masks=None, y=None, beta_a=None, beta_b=None) -> dict:
    """How many units changed activation region, and how many pooling windows changed winner,
    between two states (e.g. s* and s^beta)."""
    ra, pa = regions(model, x, s_a, masks, y, beta_a)
    rb, pb = regions(model, x, s_b, masks, y, beta_b)
    return {
        "clamp_region_changes": int(sum((a != b).sum() for a, b in zip(ra, rb))),
        "pool_winner_changes": int(sum((a != b).sum() for a, b in zip(pa, pb))) if pa else 0,
    }


_COMPILED: dict = {}


def make_step(compile: bool = False, schedule: str = "sync", mode: str | None = None):
    """The step function the phases run: eager, or compiled once (this is the one place
    torch.compile is applied). Each phase calls it T or K times, so compiling the step, not the
    unrolled loop, keeps compile time to seconds; dynamic=False compiles once per batch shape.
    mode="reduce-overhead" adds CUDA graphs on a GPU."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    fn = SCHEDULES[schedule]
    if not compile:
        return fn
    key = (schedule, mode)
    # one graph per model, batch shape, phase kind (free / nudged / with autograd) and memory format:
    # a process that builds several models (benchmarks, tests) needs more than dynamo's default of 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
    return _COMPILED[key]


def schedule_of(step_fn) -> str:
    """'sync' or 'evenodd': the schedule of a step function from SCHEDULES or make_step (paths that
    run their own step, e.g. holomorphic EP's complex phases, follow it)."""
    for (schedule, _), fn in _COMPILED.items():
        if fn is step_fn:
            return schedule
    return "evenodd" if step_fn is step_evenodd else "sync"


@torch.no_grad()
def settle(model: EPNet, x, phases, step_fn=step):
    """Inference with the rate network: the free fixed point from zero in the model's own precision,
    T steps or fewer with the residual stop (phases.tol). Returns (states, steps, report={}), the
    form of registry.Entry.infer."""
    s0 = model.init_states(x.shape[0], x)
    if phases.tol <= 0:  # all T steps: nothing to read from the device
        return relax(model, x, s0, phases.T, step_fn=step_fn), phases.T, {}
    s, n, _ = relax_until(model, x, s0, phases.T, phases.tol, phases.check_every, step_fn=step_fn)
    return s, n, {}
