"""Exact continuation: atomic checkpoints read with weights_only=True, what a checkpoint must hold,
and the per-step random generators.

Randomness is stateless per step: every (seed, epoch, step) gets its own generator for augmentation,
dropout masks and random signs, drawn for the *global* batch and sliced per process. So 1 and N
processes see the same numbers, and a resumed run continues bit for bit. A kill at any instant
inside a checkpoint write leaves the previous checkpoint intact (faults.py marks the instants).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .faults import kill_point
from .model import ConfigError

CHECKPOINT_VERSION = 1


def step_generator(seed: int, epoch: int, step: int, device="cpu") -> torch.Generator:
    """The generator of global batch `step` of `epoch`, on `device`: every process and a resumed run
    draw the same numbers from it (the host one for the data pipeline, the device one for dropout
    masks, random signs and spikes, so no draw crosses the bus)."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + step)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


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
