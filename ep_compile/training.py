"""Training-loop pieces shared by experiments/: model and optimizer from a config, the paper's
learning-rate schedule, per-step random generators, gradient all-reduce, atomic checkpoints.

Randomness is stateless per step: every (seed, epoch, step) gets its own generator for augmentation,
dropout masks and random signs, drawn for the *global* batch and sliced per process. So 1 and N
processes see the same numbers, and a resumed run continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch

from .faults import kill_point
from .model import ConfigError, EPNet, ModelConfig

CHECKPOINT_VERSION = 1
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))  # the model's part of a run config


def model_from_config(config) -> EPNet:
    """The model of a run config (a RunConfig or the dict stored in a checkpoint)."""
    return EPNet(ModelConfig.from_dict({k: config[k] for k in MODEL_KEYS if k in config}))


def param_groups(model: EPNet) -> list[list[torch.nn.Parameter]]:
    """One group per synapse layer, bottom to top; the read-out is the last group."""
    groups = [list(layer.parameters()) for layer in model.layers]
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


def make_optimizer(model: EPNet, config: dict) -> torch.optim.Optimizer:
    """One learning rate per layer (Table 3). 'sgd': SGD with momentum and weight decay, the paper's
    choice. 'adam': AdamW (decoupled weight decay), which divides each update by the running scale
    of its gradient: at PyTorch's default init the top states of a deep EP ConvNet are ~1e-3, so
    the estimates are tiny and SGD waits for many steps before anything moves (RESULTS.md).
    'adam-phase': PhaseAdamW, for the time-local estimators (their increments telescope)."""
    groups = param_groups(model)
    lrs = list(config["lrs"])
    if len(lrs) != len(groups):
        raise ConfigError(
            f"--lrs has {len(lrs)} learning rates for {len(groups)} layers "
            f"({len(model.layers)} synapse layers{' + read-out' if model.readout is not None else ''})"
        )
    kind = config.get("optimizer", "sgd")
    params = [{"params": g, "lr": lr, "initial_lr": lr} for g, lr in zip(groups, lrs)]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lrs[0], momentum=config["momentum"], weight_decay=config["weight_decay"])
    if kind == "adam":
        return torch.optim.AdamW(params, lr=lrs[0], weight_decay=config["weight_decay"])
    if kind == "adam-phase":
        return PhaseAdamW(params, lr=lrs[0], weight_decay=config["weight_decay"])
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


def set_epoch_lr(optimizer, epoch: float, config: dict) -> float:
    """Set every group's learning rate for (fractional) epoch; returns the first group's."""
    for g in optimizer.param_groups:
        g["lr"] = lr_at(
            epoch, g["initial_lr"], config["lr_min"], config["decay_epochs"], config.get("warmup_epochs", 0.0)
        )
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


def step_generator(seed: int, epoch: int, step: int, device="cpu") -> torch.Generator:
    """The generator of global batch `step` of `epoch`, on `device`: every process and a resumed run
    draw the same numbers from it (the host one for the data pipeline, the device one for dropout
    masks, random signs and spikes, so no draw crosses the bus)."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + step)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, like) -> list[torch.Tensor]:
    out, i = [], 0
    for t in like:
        out.append(flat[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


def alignment_angles(model) -> dict:
    """Angle in degrees between forward and backward weights per layer (Eq. 52), for models that
    have separate backward weights; {} otherwise."""
    out = {}
    for n, layer in enumerate(getattr(model, "layers", [])):
        wb = getattr(layer, "weight_b", None)
        if wb is None:
            continue
        wf = layer.weight_f
        cos = (wf * wb).sum() / (wf.norm() * wb.norm()).clamp_min(1e-30)
        out[f"layer{n + 1}"] = math.degrees(math.acos(max(-1.0, min(1.0, cos.item()))))
    return out


# ----------------------------------------------------------------------------- checkpoints


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a kill mid-write leaves the
    previous checkpoint intact (and the temp file, which the next start removes)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            kill_point("checkpoint-written")
            f.flush()
            os.fsync(f.fileno())
        kill_point("checkpoint-synced")
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt: no half-written temp file stays behind
        tmp.unlink(missing_ok=True)
        raise
    kill_point("checkpoint-replaced")


def load_checkpoint(path: str | Path) -> dict:
    """Load DIR/last.pt (or a .pt file) with weights_only=True: a checkpoint cannot run code."""
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt"
    if not p.exists():
        raise ConfigError(f"no checkpoint at {p}: give a run directory holding last.pt, or a .pt file")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"checkpoint {p} is corrupt or not a checkpoint ({type(e).__name__}: {str(e)[:120]})"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != "ep_compile-checkpoint":
        raise ConfigError(f"{p} is not an ep_compile checkpoint")
    if ck.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"checkpoint {p} has version {ck.get('version')}, this code reads {CHECKPOINT_VERSION}")
    return ck


CHECKPOINT_KEYS = ("config", "model", "optimizer", "epoch", "step", "best_val_error", "metrics", "torch_rng")


def check_contents(ck: dict, model, optimizer=None, path="checkpoint") -> None:
    """The checkpoint holds what this config builds: every key, every weight with its shape, and
    (when an optimizer is given) an optimizer state of the same groups and parameter shapes. One
    ConfigError naming the first difference, before anything is loaded into the model."""
    required = CHECKPOINT_KEYS if optimizer is not None else ("model",)  # export reads the weights only
    missing = [k for k in required if k not in ck]
    if missing:
        raise ConfigError(f"checkpoint {path} lacks {', '.join(missing)}: it was not written by a training run")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = ck["model"]
    if not isinstance(got, dict) or not all(isinstance(v, torch.Tensor) for v in got.values()):
        raise ConfigError(f"checkpoint {path}: its model entry is not a dict of tensors")
    for k in sorted(set(want) | set(got)):
        if k not in got:
            raise ConfigError(f"checkpoint {path} has no weight {k!r} (another architecture?)")
        if k not in want:
            raise ConfigError(
                f"checkpoint {path} has a weight {k!r} this config does not build (another architecture?)"
            )
        if tuple(got[k].shape) != want[k]:
            raise ConfigError(f"checkpoint {path}: weight {k!r} is {tuple(got[k].shape)}, the config builds {want[k]}")
    if optimizer is None:
        return
    st = ck["optimizer"]
    groups = st.get("param_groups") if isinstance(st, dict) else None
    mine = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != [len(g["params"]) for g in mine]:
        raise ConfigError(
            f"checkpoint {path}: its optimizer state has other parameter groups than this config's optimizer"
        )
    shapes = [tuple(q.shape) for g in optimizer.param_groups for q in g["params"]]
    ids = [i for g in groups for i in g["params"]]
    for i, shape in zip(ids, shapes):
        for name, v in st.get("state", {}).get(i, {}).items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) != shape:
                raise ConfigError(
                    f"checkpoint {path}: optimizer state {name!r} is {tuple(v.shape)} for a weight of {shape}"
                )


def checkpoint_payload(model, optimizer, config: dict, epoch: int, step: int, best_val, metrics_so_far) -> dict:
    """Everything needed to continue exactly: weights (from the uncompiled module), optimizer state,
    config, position in the data (epoch, step in epoch), the global torch RNG state."""
    return {
        "format": "ep_compile-checkpoint",
        "version": CHECKPOINT_VERSION,
        "config": json.loads(json.dumps(config)),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "best_val_error": best_val,
        "metrics": metrics_so_far,
        "torch_rng": torch.get_rng_state(),
    }


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(5, 3.5))


def _save(plt, fig, ax, path: Path, ylabel: str, title: str, epochs) -> None:
    """Axis labels, legend and a readable epoch axis: integer ticks, and half an epoch of margin so a
    one-epoch run shows its points rather than an axis of 0.96-1.04."""
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if epochs:
        ax.set_xlim(min(min(epochs), 1) - 0.5, max(epochs) + 0.5)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(metrics: list[dict], path: Path, title: str = "") -> None:
    """Train (blue, dashed, circles), validation (green, dotted, squares) and test error (red, solid,
    triangles) over epochs, Fig. 4/5 style. Rows written inside an epoch (--eval-every) add test
    points only."""
    plt, fig, ax = _axes()
    full = [m for m in metrics if not m.get("partial")]
    ep = [m["epoch"] for m in full]
    ax.plot(ep, [100 * m["train_error"] for m in full], color="tab:blue", ls="--", marker="o", ms=4, label="train")
    if full and all(m.get("val_error") is not None for m in full):
        ax.plot(
            ep, [100 * m["val_error"] for m in full], color="tab:green", ls=":", marker="s", ms=4, label="validation"
        )
    test_ep = [m["epoch"] for m in metrics]
    ax.plot(test_ep, [100 * m["test_error"] for m in metrics], color="tab:red", ls="-", marker="^", ms=4, label="test")
    _save(plt, fig, ax, path, "error (%)", title, test_ep)


def plot_alignment(metrics: list[dict], path: Path, title: str = "") -> None:
    """Angle between forward and backward weights per layer over epochs (Eq. 52, Fig. 7 style)."""
    plt, fig, ax = _axes()
    rows = [m for m in metrics if "alignment_deg" in m]
    markers = "os^vD<>p"
    for i, name in enumerate(rows[-1]["alignment_deg"]):
        vals = [m["alignment_deg"][name] for m in rows]
        ax.plot([m["epoch"] for m in rows], vals, marker=markers[i % len(markers)], ms=4, label=name)
    _save(plt, fig, ax, path, "angle (degrees)", title, [m["epoch"] for m in rows])
