"""The optimizer section's objects: one learning rate per synapse layer (Table 3), SGD with momentum
(the paper's), AdamW, and PhaseAdamW for the time-local estimators; the learning-rate schedule
(warm-up, cosine annealing) and the weight-decay compensation of the continual rules. Read from a
config's optimizer section (config.OptimConfig), typed: `make_optimizer(model, cfg.optim)`.
"""

from __future__ import annotations

import math

import torch

from .model import ConfigError, EPNet


def param_groups(model: EPNet) -> list[list[torch.nn.Parameter]]:
    """One group per chain layer, bottom to top (a skip interaction joins the group of the chain
    layer into the state it drives: one rate per state); the read-out is the last group."""
    groups = [list(layer.parameters()) for layer in model.layers]
    for sk in model.skips:
        groups[sk.dst - 1] += list(sk.parameters())
    if model.readout is not None:
        groups.append(list(model.readout.parameters()))
    return groups


OPTIMIZERS = ("sgd", "adam", "adam-phase")


class PhaseAdamW(torch.optim.Optimizer):
    """AdamW whose statistics move once per iteration, so that time-local updates telescope.

    Per-step AdamW normalises each in-phase increment of C-EP on its own, so the K steps of a phase
    no longer add up to the EP estimate, however small the rate. Here m and v are updated from the
    iteration's summed estimate G in `end_iteration()`; every `step()` in between moves the weights
    linearly in its increment g, by -lr (1 - b1) g / (sqrt(v^_{t-1}) + eps) / (1 - b1^t), and
    `end_iteration()` adds the momentum part -lr b1 m_{t-1} / (...) and the decoupled decay. The sum
    is AdamW's step with G, with v taken before G: one step() per iteration (standard EP) and K
    step()s whose increments add up to G (C-EP with frozen states) give the same weights. An
    increment larger than that RMS (a unit silent until now, v ~ 0) moves its weight by at most
    lr (1 - b1) / (1 - b1^t) per step. The first iteration has no v yet: its increments are only
    summed and applied at its end."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1 = group["betas"][0]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p), acc=torch.zeros_like(p))
                st["acc"].add_(p.grad)
                t = st["t"] + 1
                if t > 1:  # v of the iterations before this one; at most one AdamW-sized step
                    p.add_((p.grad / st["denom"]).clamp_(-1, 1), alpha=-group["lr"] * (1 - b1) / (1 - b1**t))

    @torch.no_grad()
    def end_iteration(self):
        """Fold the iteration's summed increments into m and v; apply the momentum part and decay.
        Keeps sqrt(v^_t) + eps for the next iteration's steps (it does not change within one)."""
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                t, G, m, v = st["t"] + 1, st["acc"], st["m"], st["v"]
                if t > 1:  # the momentum part, with v before G
                    p.addcdiv_(m, st["denom"], value=-group["lr"] * b1 / (1 - b1**t))
                m.mul_(b1).add_(G, alpha=1 - b1)
                v.mul_(b2).addcmul_(G, G, value=1 - b2)
                st["denom"] = (v / (1 - b2**t)).sqrt_().add_(group["eps"])
                if t == 1:  # no v before: the whole AdamW step with G
                    p.addcdiv_(m, st["denom"], value=-group["lr"] / (1 - b1))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                st["t"], st["acc"] = t, G.zero_()


def end_of_iteration(optimizer):
    """What the optimizer does once per iteration, after the iteration's steps: PhaseAdamW folds the
    summed increments into its statistics; a no-op for the others."""
    return optimizer.end_iteration if isinstance(optimizer, PhaseAdamW) else (lambda: None)


def make_optimizer(model: EPNet, optim) -> torch.optim.Optimizer:
    """One learning rate per layer (Table 3). 'sgd': SGD with momentum and weight decay, the paper's
    choice. 'adam': AdamW (decoupled weight decay), which divides each update by the running scale
    of its gradient: at PyTorch's default init the top states of a deep EP ConvNet are ~1e-3, so
    the estimates are tiny and SGD waits for many steps before anything moves (RESULTS.md).
    'adam-phase': PhaseAdamW, for the time-local estimators (their increments telescope)."""
    groups = param_groups(model)
    lrs = list(optim.lrs)
    if len(lrs) != len(groups):
        raise ConfigError(
            f"--lrs has {len(lrs)} learning rates for {len(groups)} layers "
            f"({len(model.layers)} synapse layers{' + read-out' if model.readout is not None else ''})"
        )
    kind = optim.optimizer
    params = [{"params": g, "lr": lr, "initial_lr": lr} for g, lr in zip(groups, lrs)]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lrs[0], momentum=optim.momentum, weight_decay=optim.weight_decay)
    if kind == "adam":
        return torch.optim.AdamW(params, lr=lrs[0], weight_decay=optim.weight_decay)
    if kind == "adam-phase":
        return PhaseAdamW(params, lr=lrs[0], weight_decay=optim.weight_decay)
    raise ConfigError(f"unknown optimizer {kind!r}; valid: {', '.join(OPTIMIZERS)}")


def lr_at(epoch: float, lr0: float, lr_min: float, decay_epochs: int, warmup_epochs: float = 0.0) -> float:
    """Linear warm-up from lr0/10 over warmup_epochs, then cosine annealing from lr0 to lr_min over
    decay_epochs (counted from 0), then flat at lr_min (Table 3). epoch may be fractional."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return lr0 * (0.1 + 0.9 * epoch / warmup_epochs)
    if decay_epochs <= 0:
        return lr0
    e = min(epoch, decay_epochs)
    return lr_min + (lr0 - lr_min) * (1 + math.cos(math.pi * e / decay_epochs)) / 2


def set_epoch_lr(optimizer, epoch: float, optim) -> float:
    """Set every group's learning rate for (fractional) epoch; returns the first group's."""
    for g in optimizer.param_groups:
        g["lr"] = lr_at(epoch, g["initial_lr"], optim.lr_min, optim.decay_epochs, optim.warmup_epochs)
    return optimizer.param_groups[0]["lr"]


def wd_compensate(grads, optimizer, k: int, K: int, group_of: list[int]) -> list[torch.Tensor]:
    """Continual estimators meet the optimizer's weight decay K times per iteration: dividing
    increment k by (1 - lr wd)^(K-1-k) makes the K decayed increments add up to the undecayed
    estimate. group_of[i]: the optimizer group of parameter i (SGD without momentum)."""
    out = []
    for g, gi in zip(grads, group_of):
        group = optimizer.param_groups[gi]
        out.append(g / (1 - group["lr"] * group["weight_decay"]) ** (K - 1 - k))
    return out
