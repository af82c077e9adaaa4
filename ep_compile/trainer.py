"""The training loop of every estimator and of BPTT, on one or many processes through accelerate:
`Trainer(cfg, accelerator, splits).fit()`.

EP sets .grad by hand, so DDP's backward hooks never fire: each process estimates the gradient on its
slice of the global batch and one flattened all-reduce per step averages the estimates. Every random
draw (crop, flip, dropout mask, sign of beta) comes from a generator seeded by (seed, epoch, step) for
the global batch, so 1 and N processes, and a resumed run, see the same numbers. A run folder holds
last.pt / best.pt (written atomically), config.json and metrics.jsonl, which always mirrors the
checkpoint's history: a kill at any instant loses only the work since the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from .checkpoint import (
    atomic_save,
    check_contents,
    checkpoint_payload,
    epoch_order,
    load_checkpoint,
    step_generator,
)
from .config import DTYPES
from .data import augment, preprocess, preprocessing_meta
from .dynamics import make_step, settle
from .estimators import set_grads
from .faults import crash_after, kill_point
from .machine import describe, native_bf16
from .model import ConfigError, EPNet
from .optim import end_of_iteration, make_optimizer, set_epoch_lr, wd_compensate
from .registry import entry
from .reports import alignment_angles, plot_alignment, plot_curves, time_to_accuracy


def flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, like) -> list[torch.Tensor]:
    out, i = [], 0
    for t in like:
        out.append(flat[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


class Diverged(RuntimeError):
    """A non-finite estimate, loss or weight: the run stops, its last checkpoint stays as it was."""


CHECKPOINTS = ("last.pt", "best.pt")  # a folder holding either holds a run; without one it is a fresh start
ASIDE = ".replaced"  # an --overwrite moves the old run here until the new one has written its first checkpoint


def holds_checkpoint(out: Path) -> bool:
    return any((out / f).exists() for f in CHECKPOINTS)


def check_fresh_folder(out: Path) -> None:
    """A fresh run may not start in a folder that holds a checkpointed run (partial files of a run
    that died before its first checkpoint are no run: they are replaced)."""
    if holds_checkpoint(out) or (out / ASIDE).is_dir():
        raise ConfigError(
            f"run folder {out} already holds a run: continue it with --resume {out}, "
            "start over with --overwrite, or pick another --out"
        )


def _run_files(out: Path) -> list[Path]:
    """Everything in a run folder but its lock and the moved-aside old run."""
    return [p for p in out.iterdir() if p.name not in (".lock", ASIDE)]


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def restore_aside(out: Path, log=print) -> bool:
    """If an --overwrite moved an old run aside and the new run never wrote a checkpoint (it failed
    or was killed first), put the old run back byte for byte; if the new run did checkpoint, drop
    the old one. Call with the folder's lock held. Returns whether the old run was restored."""
    aside = out / ASIDE
    if not aside.is_dir():
        return False
    if (out / "last.pt").exists():  # the new run got as far as a checkpoint: the old one is replaced
        _remove(aside)
        return False
    for p in _run_files(out):
        _remove(p)
    for p in aside.iterdir():
        os.replace(p, out / p.name)
    aside.rmdir()
    log(f"run folder {out}: the run that --overwrite was replacing wrote no checkpoint; the old run is back")
    return True


def lock_run_folder(out: Path):
    """Hold an exclusive lock on out/.lock for the life of this process (the OS drops it when the
    process dies, so a kill never leaves a lock that blocks). A second writer is refused in one line
    naming the holder's PID. Returns the open file that holds the lock."""
    import fcntl

    f = open(out / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        for _ in range(20):  # the holder writes its PID just after it takes the lock
            f.seek(0)
            holder = f.read().strip()
            if holder:
                break
            time.sleep(0.05)
        f.close()
        holder = holder or "unknown"
        raise ConfigError(
            f"run folder {out} is in use by another run (PID {holder}); wait for it or pick another --out"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def settle_folder(out: Path, log=print) -> None:
    """Before a start reads the folder: an --overwrite that a kill interrupted is settled under the
    folder's lock (restore_aside), so the start sees the old run, or the new one's checkpoint."""
    if (out / ASIDE).is_dir():
        lock = lock_run_folder(out)
        try:
            restore_aside(out, log)
        finally:
            lock.close()


class Trainer:
    """One run: model, optimizer, estimator and phases from `cfg`, data from `splits`, processes and
    devices from `accelerator`; resumes from `resume` (a run folder or .pt file) when given."""

    def __init__(self, cfg, accelerator, splits, resume=None, log=print):
        self.cfg, self.acc, self.splits, self.log = cfg, accelerator, splits, log
        self.device, self.world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
        self.dtype = DTYPES[cfg.run.dtype]
        self.B = cfg.optim.batch_size
        self.lo, self.hi = rank * self.B // self.world, (rank + 1) * self.B // self.world  # this process's slice
        torch.manual_seed(cfg.run.seed)
        fmt = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
        self.model = EPNet(cfg.model).to(device=self.device, dtype=self.dtype).to(memory_format=fmt)
        self.optimizer = make_optimizer(self.model, cfg.optim)
        self.entry = entry(cfg.estimator)  # the estimator and how it iterates and infers (registry.py)
        self.infer = self.entry.infer or settle
        self.end_iteration = end_of_iteration(self.optimizer)
        self.phases = cfg.make_phases()
        if self.phases.amp and self.device.type == "cpu" and not native_bf16():  # no gain, only rounding
            self.log(f"--amp {self.phases.amp}: this CPU has no native bf16 (AVX512_BF16 / AMX); running float32")
            self.phases = dataclasses.replace(self.phases, amp=None)
        self.prep_meta = preprocessing_meta(cfg.data, cfg.model.in_shape)  # the contract export writes
        self.step_fn = make_step(cfg.run.compile, cfg.phases.schedule, cfg.run.compile_mode)
        self.group_of = [i for i, g in enumerate(self.optimizer.param_groups) for _ in g["params"]]
        self.epoch, self.step, self.best, self.history = 0, 0, None, []
        self.stats = [0.0, 0.0, 0.0]  # this epoch so far on this process: wrong, loss sum, count
        self.wall_offset = 0.0  # wall seconds of training (and evaluation) before this process started
        self.reported = []  # this epoch's report dicts of the iterations and inferences (spikes, ...)
        self.first_step_seconds = None  # the first training iteration of this process (compiles the step)
        if resume:
            ck = load_checkpoint(resume)
            check_contents(ck, self.model, self.optimizer, resume)
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.epoch, self.step, self.best, self.history = (
                ck["epoch"],
                ck["step"],
                ck["best_val_error"],
                ck["metrics"],
            )
            self.stats = ck.get("epoch_stats", self.stats)
            self.wall_offset = ck.get("wall_seconds", 0.0)
            torch.set_rng_state(ck["torch_rng"])
            log(f"resumed from {resume}: epoch {self.epoch}, step {self.step}")

    # ------------------------------------------------------------------ one batch
    def prep(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = preprocess(x_uint8, self.prep_meta, self.dtype)  # the contract export writes into the ONNX metadata
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.run.channels_last else x

    @torch.no_grad()
    def free_phase(self, x: torch.Tensor):
        """The settled state of the free phase for inference and the steps it took, from the estimator's
        inference (registry.Entry.infer; the rate network's fixed point by default)."""
        states, steps, report = self.infer(self.model, x, self.phases, self.step_fn)
        if report:
            self.reported.append(report)
        return states, steps

    @torch.no_grad()
    def evaluate(self, ds):
        """Error of the free fixed point over a whole split (gathered across processes), and the mean
        number of free-phase steps used (T, or fewer with --tol)."""
        if len(ds.y) == 0:
            return None, 0
        loader = self.acc.prepare(DataLoader(TensorDataset(ds.x, ds.y), batch_size=self.cfg.run.eval_batch_size))
        self.model.eval()
        wrong, steps = [], []
        for xb, yb in loader:
            s, n = self.free_phase(self.prep(xb.to(self.device, non_blocking=True)))  # uint8 copied, prepared there
            wrong.append(self.acc.gather_for_metrics(self.model.logits(s).argmax(1) != yb.to(self.device)))
            steps.append(n)
        self.model.train()
        return torch.cat(wrong).float().mean().item(), sum(steps) / len(steps)

    def update(self, grads) -> None:
        """Average the estimate over processes (one flattened all-reduce) and take the step. Whether
        the estimate and the new weights are finite is kept on the device (`self.ok`) and read once
        per iteration with the statistics (`train_step`): no host sync here."""
        flat = flatten(grads)
        if self.world > 1:
            flat = self.acc.reduce(flat, reduction="mean")
        self.ok[0] &= torch.isfinite(flat).all()
        set_grads(self.model, unflatten(flat, grads))
        self.optimizer.step()
        self.ok[1] &= torch.isfinite(flatten([p.detach() for p in self.model.parameters()])).all()

    def host_batch(self, epoch: int, step: int, order: torch.Tensor):
        """The host data pipeline: this process's slice of global batch `step` as uint8 images
        (cropped and flipped for the global batch by the step's host generator) and int64 labels,
        on the host, and that generator."""
        cfg, B = self.cfg, self.B
        idx = order[step * B : (step + 1) * B]
        gen = step_generator(cfg.run.seed, epoch, step)
        xb = augment(self.splits.train.x[idx], gen) if cfg.data.augment else self.splits.train.x[idx]
        return xb[self.lo : self.hi], self.splits.train.y[idx][self.lo : self.hi], gen  # (B/world, C, H, W)

    def batch(self, epoch: int, step: int, order: torch.Tensor):
        """This process's slice of global batch `step` on the device, its dropout masks and the
        generator of its other draws (dropout masks, random signs, spikes). That generator lives on
        the device and draws the masks for the global batch there, sliced to this process, so 1 and N
        processes see the same numbers; on the CPU it is the host pipeline's own generator."""
        xb, yb, gen = self.host_batch(epoch, step, order)
        x = self.prep(xb.to(self.device, non_blocking=True))  # (B/world, C, H, W)
        y = yb.to(self.device, non_blocking=True)  # (B/world,)
        if self.device.type != "cpu":
            gen = step_generator(self.cfg.run.seed, epoch, step, self.device)
        masks = self.model.dropout_masks(self.B, x, gen)  # for the global batch, sliced to this process
        masks = None if masks is None else [None if m is None else m[self.lo : self.hi] for m in masks]
        return x, y, masks, gen

    def iteration(self, x: torch.Tensor, y: torch.Tensor, masks=None, generator=None):
        """One training iteration on a prepared batch (this process's slice): the estimate and the
        all-reduced update, at every nudged step for the time-local estimators, then the optimizer's
        end-of-iteration hook. Returns the Estimate; whether the estimate and the new weights are
        finite stays on the device in self.ok. The loop, the benchmarks and the pilots call this."""
        self.ok = torch.ones(3, dtype=torch.bool, device=self.device)  # estimate, weights, loss finite
        kw = dict(masks=masks, generator=generator, step_fn=self.step_fn)
        est = self.entry.iterate(self.model, x, y, self.phases, self.apply, **kw)
        self.end_iteration()  # adam-phase: its statistics move once per iteration
        return est

    def apply(self, grads, k: int, K: int) -> None:
        """Increment k of K of an iteration's estimate (K=1: the whole estimate), with the weight decay
        compensated for the time-local rules when asked (--wd-compensation)."""
        if self.cfg.optim.wd_compensation:
            grads = wd_compensate(grads, self.optimizer, k, K, self.group_of)
        self.update(grads)

    def train_step(self, epoch: int, step: int, order: torch.Tensor) -> list[float]:
        """Estimate on this process's slice of global batch `step` and update the weights (at every
        nudged step for the time-local estimators). Returns the epoch's statistics so far (wrong,
        loss sum, count), read from the device once, with the finiteness flags."""
        x, y, masks, gen = self.batch(epoch, step, order)
        est = self.iteration(x, y, masks, gen)
        loss_sum = est.loss.detach().sum().to(torch.float64)
        self.ok[2] &= torch.isfinite(loss_sum)
        if "report" in est.info:
            self.reported.append(est.info["report"])
        wrong = (est.logits.argmax(1) != y).sum().to(torch.float64)
        self.stats = self.device_stats() + torch.stack([wrong, loss_sum, loss_sum.new_tensor(float(len(y)))])
        host = torch.cat([self.stats, self.ok.to(torch.float64)]).tolist()  # the iteration's one read
        for ok, what in zip(host[3:], ("gradient estimate or loss", "weights after the update", "loss")):
            if not ok:
                raise Diverged(f"non-finite {what} at epoch {epoch + 1}, batch {step + 1}")
        return host[:3]

    def device_stats(self) -> torch.Tensor:
        """The epoch's statistics so far as a float64 tensor on the device (a checkpoint stores a list)."""
        if isinstance(self.stats, torch.Tensor):
            return self.stats
        return torch.tensor(self.stats, dtype=torch.float64, device=self.device)

    # ------------------------------------------------------------------ run folder
    def open_run(self, out: Path, fresh: bool = False, overwrite: bool = False) -> None:
        """Take the run folder: its lock (one writer per run folder), an interrupted --overwrite
        settled (restore_aside), stale temp files removed, config.json written (after validation
        and the data load succeeded), metrics.jsonl cut back to the checkpoint's history. fresh: a
        new run, refused (under the lock, so two starts cannot both pass) when the folder holds a
        checkpointed run, unless overwrite; then the old run is moved aside and removed only once
        this one has written its first checkpoint (abandon_run puts it back)."""
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        if self.acc.is_main_process:
            self.lock = lock_run_folder(out)
            restore_aside(out, self.log)
            if fresh:
                if not overwrite:
                    check_fresh_folder(out)
                if holds_checkpoint(out):  # --overwrite: the old run waits aside until this one has checkpointed
                    (out / ASIDE).mkdir()
                    for p in _run_files(out):
                        os.replace(p, out / ASIDE / p.name)
                    self.log(f"run folder {out}: the old run is kept aside until this one writes its first checkpoint")
                elif _run_files(out):
                    self.log(
                        f"run folder {out} holds no checkpoint (a run that stopped before its first): starting afresh"
                    )
                    for p in _run_files(out):
                        _remove(p)
            for stale in out.glob(".*.tmp*"):  # temp files of a write that a kill interrupted
                stale.unlink()
            (out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))
            with open(out / "machines.jsonl", "a") as f:  # one line per start: a resumed run may move
                f.write(json.dumps({"epoch": self.epoch, "step": self.step, **describe()}) + "\n")
            tmp = out / ".metrics.jsonl.tmp"
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
            os.replace(tmp, out / "metrics.jsonl")
        self.written = len(self.history)  # rows of metrics.jsonl: never more than the checkpoint holds
        self.wall0 = time.time() - self.wall_offset

    def abandon_run(self) -> None:
        """A run that fails before its first checkpoint under --overwrite: the old run goes back."""
        if self.acc.is_main_process and getattr(self, "out", None) is not None:
            restore_aside(self.out, self.log)

    def log_row(self, row: dict) -> None:
        """Keep and print a row; metrics.jsonl gets it once a checkpoint holding it is on disk (save)."""
        self.history.append(row)
        self.log(json.dumps(row))

    def save(self, epoch: int, step: int, stats, name: str = "last.pt") -> None:
        if self.acc.is_main_process:
            payload = checkpoint_payload(
                self.model, self.optimizer, self.cfg.to_dict(), epoch, step, self.best, self.history
            )
            payload["model_config"] = self.cfg.model.to_dict()
            payload["epoch_stats"] = stats
            payload["wall_seconds"] = time.time() - self.wall0
            atomic_save(payload, self.out / name)
            if name == "last.pt":
                aside = self.out / ASIDE
                if aside.is_dir():  # the first checkpoint of an --overwrite: the old run is replaced
                    _remove(aside)
                if len(self.history) > self.written:  # rows behind the checkpoint, never ahead of it
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write("".join(json.dumps(r) + "\n" for r in self.history[self.written :]))
                    self.written = len(self.history)
                    kill_point("metrics-row-written")  # testing hook: checkpoint and row both written
        self.acc.wait_for_everyone()

    # ------------------------------------------------------------------ epochs
    def fit(self, crash_at_step: int = 0, tracking: bool = False) -> None:
        """Train from the current position to the last epoch (or --stop-at-accuracy / --max-hours);
        evaluate every epoch (and every --eval-every), checkpoint every epoch (and every
        --checkpoint-every steps)."""
        cfg, n_train = self.cfg, len(self.splits.train.y)
        per_epoch = n_train // self.B  # drop the last partial batch: one shape, one compiled graph
        eval_steps = round(cfg.run.eval_every * per_epoch) if 0 < cfg.run.eval_every < 1 else 0
        done = 0
        for epoch in range(self.epoch, cfg.optim.epochs):
            first = self.step if epoch == self.epoch else 0
            if first == 0:
                self.stats = [0.0, 0.0, 0.0]
            lr = set_epoch_lr(self.optimizer, epoch, cfg.optim)
            order, t0 = epoch_order(cfg.run.seed, epoch, n_train), time.time()
            main = self.acc.is_local_main_process
            bar = tqdm(
                total=per_epoch,
                initial=first,
                disable=not main,
                mininterval=2.0,
                desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
            )
            for step in range(first, per_epoch):
                if cfg.optim.lr_per_step:
                    lr = set_epoch_lr(self.optimizer, epoch + step / per_epoch, cfg.optim)
                t_step = time.time()
                wrong, _, count = self.train_step(epoch, step, order)
                if done == 0:  # the first call compiles the step: its time is reported apart
                    self.first_step_seconds = time.time() - t_step
                    if cfg.run.compile:
                        bar.set_description(
                            f"epoch {epoch + 1}/{cfg.optim.epochs} (compiled in {self.first_step_seconds:.0f} s)"
                        )
                bar.update(1)
                bar.set_postfix(err=f"{wrong / max(count, 1):.3f}", lr=f"{lr:.3g}")
                done += 1
                now = eval_steps and (step + 1) % eval_steps == 0 and step + 1 <= per_epoch - eval_steps // 2
                if now:  # a test-only row inside the epoch, checkpointed with it
                    test_err, _ = self.evaluate(self.splits.test)
                    ep = round(epoch + (step + 1) / per_epoch, 4)
                    self.log_row(
                        {
                            "epoch": ep,
                            "test_error": test_err,
                            "lr": lr,
                            "wall_seconds": time.time() - self.wall0,
                            "partial": True,
                        }
                    )
                every = cfg.run.checkpoint_every
                if now or (every and (step + 1) % every == 0 and step + 1 < per_epoch):
                    self.save(epoch, step + 1, self.device_stats().tolist())
                crash_after(done, crash_at_step)  # fault injection (faults.py): off unless asked for
            bar.close()
            row = self.end_epoch(epoch, lr, t0)
            if tracking:
                self.acc.log({k: v for k, v in row.items() if isinstance(v, float)}, step=epoch + 1)
            if cfg.run.stop_at_accuracy and 1 - row["test_error"] >= cfg.run.stop_at_accuracy:
                self.log(
                    f"test accuracy {100 * (1 - row['test_error']):.2f}% >= --stop-at-accuracy: stopping after epoch {epoch + 1}"
                )
                break
            if cfg.run.max_hours and time.time() - self.wall0 + (time.time() - t0) > 3600 * cfg.run.max_hours:
                self.log(
                    f"another epoch would end past --max-hours {cfg.run.max_hours:g}: stopping after epoch {epoch + 1}"
                )
                break

    def end_epoch(self, epoch: int, lr: float, t0: float) -> dict:
        """Evaluate, log the epoch's row, checkpoint (best.pt on validation error, else train error)."""
        tot = self.acc.reduce(self.device_stats(), reduction="sum")
        (val_err, _), (test_err, eval_free) = self.evaluate(self.splits.val), self.evaluate(self.splits.test)
        row = {
            "epoch": epoch + 1,
            "train_error": (tot[0] / tot[2]).item(),
            "train_loss": (tot[1] / tot[2]).item(),
            "val_error": val_err,
            "test_error": test_err,
            "lr": lr,
            "epoch_seconds": time.time() - t0,
            "eval_free_steps": eval_free,
            "wall_seconds": time.time() - self.wall0,
        }
        if self.first_step_seconds is not None:  # the first row of this process: its first iteration
            row["first_step_seconds"], self.first_step_seconds = self.first_step_seconds, None
        angles = alignment_angles(self.model)
        if angles:
            row["alignment_deg"] = angles
        for key in dict.fromkeys(k for r in self.reported for k in r):  # the epoch's means of what was reported
            vals = [r[key] for r in self.reported if key in r]
            row[key] = sum(vals) / len(vals)
        self.reported.clear()
        self.log_row(row)
        score = val_err if val_err is not None else row["train_error"]
        if self.best is None or score < self.best:
            self.best = score
            self.save(epoch + 1, 0, [0.0, 0.0, 0.0], "best.pt")
        self.save(epoch + 1, 0, [0.0, 0.0, 0.0])
        self.epoch, self.step = epoch + 1, 0
        return row

    def finish(self) -> dict:
        """Check the processes agree, plot, write time_to_accuracy.json; the last full epoch's row."""
        out, main = self.out, self.acc.is_main_process
        if self.world > 1:  # every process must hold the same weights
            allw = self.acc.gather(flatten([p.detach() for p in self.model.parameters()])[None])
            if main:
                diff = (allw - allw[0]).abs().max().item()
                (out / "ranks.json").write_text(json.dumps({"processes": self.world, "max_abs_weight_diff": diff}))
        if main and self.history:
            plot_curves(self.history, out / "curves.png", f"{self.cfg.estimator} on {self.cfg.data.dataset}")
            if "alignment_deg" in self.history[-1]:
                plot_alignment(self.history, out / "alignment.png", f"{self.cfg.estimator}: angle between w^f and w^b")
        reached = time_to_accuracy(self.history)
        if main and self.history:
            (out / "time_to_accuracy.json").write_text(json.dumps(reached, indent=1))
        self.log(
            "time to test accuracy: "
            + ", ".join(f"{k}: {'not reached' if v is None else f'{v:.0f} s'}" for k, v in reached.items())
        )
        full = [r for r in self.history if not r.get("partial")]
        if full:  # best.pt is chosen on the validation error, or on the train error without a split
            key = "val_error" if full[-1].get("val_error") is not None else "train_error"
            what = "validation" if key == "val_error" else "train (no validation split)"
            best = min(full, key=lambda r: r[key])  # the first epoch of the lowest error: best.pt's
            self.log(
                f"final test accuracy {100 * (1 - full[-1]['test_error']):.2f}% (test error {100 * full[-1]['test_error']:.2f}%), "
                f"best {what} error {100 * self.best:.2f}%; run folder {out}"
            )
            self.log(
                f"export/to_onnx.py {out} takes best.pt: epoch {best['epoch']}, {what} accuracy "
                f"{100 * (1 - best[key]):.2f}%, test accuracy {100 * (1 - best['test_error']):.2f}% "
                f"(last.pt holds the final epoch)"
            )
        return full[-1] if full else {}
