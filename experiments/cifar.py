"""Train a convergent ConvNet by Equilibrium Propagation (or BPTT) on CIFAR-10, Fashion-MNIST or digits.

How to launch (the same script on one CPU, one GPU or many):
    python experiments/cifar.py                                  # embedded default: digits, 30-60 s on 2 CPU cores
    python experiments/cifar.py --list-presets                   # Table 1 rows and small presets
    accelerate launch experiments/cifar.py --preset ce-symmetric --data-root ../shared/data/cifar10-jpeg.tar.gz
    accelerate launch --multi_gpu --num_processes 2 experiments/cifar.py --cpu ...   # 2 CPU processes (gloo)
    python experiments/cifar.py --eval-only --resume runs/ce-symmetric

EP sets .grad by hand, so DDP's backward hooks never fire: each process estimates the gradient on its
slice of the global batch and one flattened all-reduce per step averages the estimates. Every random
draw (crop, flip, dropout mask, sign of beta) comes from a generator seeded by (seed, epoch, step) for
the global batch, so 1 and N processes, and a resumed run, see the same numbers.
"""

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ep_compile.data import DATASETS, augment, make_splits, preprocess
from ep_compile.dynamics import make_step, relax_until
from ep_compile.estimators import ESTIMATORS, Phases, get_estimator, set_grads
from ep_compile.model import ConfigError
from ep_compile.registry import entry
from ep_compile.spiking import SpikeConfig, SpikeState, check_spiking, spike_report, spiking_phase
from ep_compile.training import (
    alignment_angles,
    atomic_save,
    check_values,
    checkpoint_payload,
    epoch_order,
    flatten,
    kill_point,
    load_checkpoint,
    make_optimizer,
    model_from_config,
    plot_alignment,
    plot_curves,
    set_epoch_lr,
    step_generator,
    unflatten,
    wd_compensate,
)

# ----------------------------------------------------------------------------- presets (data)

PAPER = dict(  # App. E.1 and Table 3
    dataset="cifar10",
    in_shape=[3, 32, 32],
    channels=[128, 256, 512, 512],
    kernels=3,
    paddings=[1, 1, 1, 0],
    pools=["max"] * 4,
    fc=[],
    n_classes=10,
    activation="hard-sigmoid",
    dropout=[],
    T=250,
    batch_size=128,
    lrs=[0.25, 0.15, 0.1, 0.08, 0.05],
    momentum=0.9,
    weight_decay=3e-4,
    lr_min=1e-5,
    decay_epochs=100,
    epochs=120,
    augment=True,
)
SQUARED, CROSS_ENT = dict(loss="mse", K=30, beta=0.5), dict(loss="ce", K=25, beta=1.0)
DIGITS = dict(  # seconds per epoch on a laptop CPU; no download
    dataset="digits",
    in_shape=[1, 8, 8],
    channels=[32, 64],
    kernels=3,
    paddings=[1, 1],
    pools=["max"] * 2,
    fc=[],
    n_classes=10,
    activation="hard-sigmoid",
    dropout=[],
    T=30,
    K=10,
    beta=0.5,
    batch_size=64,
    lrs=[0.2, 0.1, 0.05],
    momentum=0.9,
    weight_decay=3e-4,
    lr_min=1e-4,
    decay_epochs=15,
    epochs=15,
    augment=False,
    loss="ce",
)
MLP1 = dict(  # 784-512-10, squared error, plain SGD: momentum accumulates over the K in-phase updates
    dataset="fashion-mnist",
    in_shape=[1, 28, 28],
    channels=[],
    kernels=[],
    paddings=[],
    pools=[],
    fc=[512],
    n_classes=10,
    activation="hard-sigmoid",
    dropout=[],
    loss="mse",
    T=40,
    K=15,
    beta=0.2,
    batch_size=32,
    lrs=[0.05, 0.02],
    momentum=0.0,
    weight_decay=0.0,
    lr_min=1e-4,
    decay_epochs=10,
    epochs=10,
    augment=False,
)
MLP2 = {**MLP1, "fc": [512, 512], "T": 100, "K": 20, "beta": 0.5, "lrs": [0.05, 0.02, 0.01]}
DIGITS_DATA = dict(dataset="digits", in_shape=[1, 8, 8], epochs=15, decay_epochs=15)
PRESETS = {
    # Table 1, squared error (output layer inside the dynamics)
    "mse-one-sided": {**PAPER, **SQUARED, "estimator": "one-sided"},
    "mse-random-sign": {**PAPER, **SQUARED, "estimator": "random-sign"},
    "mse-symmetric": {**PAPER, **SQUARED, "estimator": "symmetric"},
    "mse-bptt": {**PAPER, **SQUARED, "estimator": "bptt", "bptt_steps": SQUARED["K"]},
    # Table 1, cross-entropy (softmax read-out)
    "ce-symmetric": {**PAPER, **CROSS_ENT, "estimator": "symmetric"},
    "ce-symmetric-dropout": {**PAPER, **CROSS_ENT, "estimator": "symmetric", "dropout": [0, 0, 0, 0.1]},
    # the paper's BPTT backpropagates through the last K steps of the free phase (bptt_steps=K)
    "ce-bptt": {**PAPER, **CROSS_ENT, "estimator": "bptt", "bptt_steps": CROSS_ENT["K"]},
    "ce-bptt-dropout": {
        **PAPER,
        **CROSS_ENT,
        "estimator": "bptt",
        "bptt_steps": CROSS_ENT["K"],
        "dropout": [0, 0, 0, 0.1],
    },
    # Table 2, distinct forward and backward weights (App. D.3), cross-entropy
    "ce-vf": {**PAPER, **CROSS_ENT, "asymmetric": True, "estimator": "vf"},
    "ce-kpvf": {**PAPER, **CROSS_ENT, "asymmetric": True, "estimator": "kp-vf"},
    "ce-bptt-asym": {**PAPER, **CROSS_ENT, "asymmetric": True, "estimator": "bptt", "bptt_steps": CROSS_ENT["K"]},
    # CIFAR-10 on two CPU cores (RESULTS.md section 0): the paper's family narrowed to 32-64-128-256,
    # even/odd updates with T=20, K=8, AdamW, per-step cosine over 8 epochs (~55 min on two cores),
    # full training set, test every epoch. T=10, K=4 plateaued at ~40%: its estimate drifts from the
    # gradient of the settled net once trained
    "cifar10-cpu": {
        **PAPER,
        **CROSS_ENT,
        "estimator": "symmetric",
        "channels": [32, 64, 128, 256],
        "activation": "hard-sigmoid-1",
        "augment": False,
        "schedule": "evenodd",
        "T": 20,
        "K": 8,
        "beta": 0.5,
        "batch_size": 64,
        "optimizer": "adam",
        "lrs": [1e-3, 1e-3, 5e-4, 5e-4, 5e-4],
        "warmup_epochs": 0.1,
        "lr_per_step": True,
        "epochs": 16,  # the cosine of 17 epochs, stopped after 16: 1 h 54 min on two cores
        "decay_epochs": 17,
        "val_size": 0,
        "checkpoint_every": 200,
        "compile": True,
        "channels_last": True,
    },
    # small presets for CPUs and tests
    "digits-ce-symmetric": {**DIGITS, "estimator": "symmetric"},
    "digits-mse-symmetric": {**DIGITS, "loss": "mse", "estimator": "symmetric"},
    "digits-ce-bptt": {**DIGITS, "estimator": "bptt"},
    "digits-ce-kpvf": {**DIGITS, "asymmetric": True, "estimator": "kp-vf"},
    "digits-ce-vf": {**DIGITS, "asymmetric": True, "estimator": "vf"},
    # holomorphic EP (Laborieux & Zenke 2022): four complex nudges of modulus 1 (holomorphic.py)
    "digits-ce-holomorphic": {**DIGITS, "estimator": "holomorphic", "beta": 1.0, "hep_points": 4},
    # time-local EP (Ernoult et al. 2020): the MLPs 784-512-10 and 784-512-512-10 on Fashion-MNIST
    "fashion-cep-784-512-10": {**MLP1, "estimator": "c-ep"},
    "fashion-cvf-784-512-10": {**MLP1, "estimator": "c-vf", "asymmetric": True},
    "fashion-ckpvf-784-512-10": {**MLP1, "estimator": "c-kpvf", "asymmetric": True},
    "fashion-ep-784-512-10": {**MLP1, "estimator": "symmetric"},
    "fashion-cep-784-512-512-10": {**MLP2, "estimator": "c-ep"},
    "fashion-cvf-784-512-512-10": {**MLP2, "estimator": "c-vf", "asymmetric": True},
    # ... the same rules on digits (seconds) and on the digits ConvNet
    "digits-cep-mlp": {**MLP1, **DIGITS_DATA, "estimator": "c-ep", "lrs": [0.1, 0.05]},
    "digits-cvf-mlp": {**MLP1, **DIGITS_DATA, "estimator": "c-vf", "asymmetric": True},
    "digits-cep-conv": {**DIGITS, "estimator": "c-ep", "momentum": 0.0},
    "digits-cvf-conv": {**DIGITS, "estimator": "c-vf", "asymmetric": True, "momentum": 0.0},
    # spiking EP: binary spikes through sigma-delta encoders, max pooling as in the rate net (98.3%)
    "digits-spiking": {
        **DIGITS,
        "neuron": "spiking",
        "estimator": "spiking-symmetric",
        "T": 60,
        "K": 20,
        "lrs": [0.5, 0.25, 0.1],
        "std_scale": 1.0,
    },
    "fashion-spiking-conv": {
        **DIGITS,
        "dataset": "fashion-mnist",
        "in_shape": [1, 28, 28],
        "neuron": "spiking",
        "estimator": "spiking-symmetric",
        "pools": ["avg", "avg"],
        "channels": [32, 64],
        "T": 60,
        "K": 20,
        "batch_size": 128,
        "epochs": 10,
        "decay_epochs": 10,
        "lrs": [0.5, 0.25, 0.1],
        "std_scale": 1.0,
    },
    "fashion-ce-symmetric": {
        **DIGITS,
        "estimator": "symmetric",
        "dataset": "fashion-mnist",
        "in_shape": [1, 28, 28],
        "paddings": [1, 1],
        "channels": [32, 64],
        "T": 40,
        "K": 12,
        "batch_size": 128,
        "augment": False,
    },
}
RUN_DEFAULTS = dict(
    asymmetric=False,
    bptt_steps=None,
    seed=0,
    val_size=None,
    train_subset=None,
    test_subset=None,
    data_root=None,
    cache_dir=None,
    std_scale=3.0,
    checkpoint_every=0,
    compile=False,
    eval_batch_size=500,
    dtype="float32",
    out=None,
    schedule="sync",
    tol=0.0,
    check_every=10,
    fused=False,
    amp=None,
    channels_last=False,
    compile_mode=None,
    wd_compensation=False,
    neuron="rate",
    spike={},
    optimizer="sgd",
    warmup_epochs=0.0,
    lr_per_step=False,
    eval_every=0.0,
    vf_form="linearized",
    hep_points=4,
    stop_at_accuracy=0.0,  # 0: train every epoch
    max_hours=0.0,  # 0: no wall-clock budget
)


DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Diverged(RuntimeError):
    pass


# ----------------------------------------------------------------------------- training


def time_to_accuracy(history, levels=(0.5, 0.6, 0.65, 0.7)) -> dict:
    """Wall seconds at the first evaluation whose test accuracy reached each level (None: never)."""
    out = {}
    for level in levels:
        hit = [r["wall_seconds"] for r in history if "wall_seconds" in r and 1 - r["test_error"] >= level]
        out[f"{round(100 * level)}%"] = hit[0] if hit else None
    return out


def set_threads(requested: int, world: int) -> str:
    """Threads per process on the CPU: --threads if given; under `accelerate launch`, which sets
    OMP_NUM_THREADS=1 unless told otherwise, the cores this process may use divided by the local
    processes; otherwise torch's default (OMP_NUM_THREADS or all cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if requested:
        why = "--threads"
    elif "ACCELERATE_DYNAMO_BACKEND" in os.environ:  # started by accelerate launch
        requested, why = max(1, cores // local), f"{cores} cores / {local} local processes"
    else:
        return f"threads per process: {torch.get_num_threads()} (torch default)"
    torch.set_num_threads(requested)
    return f"threads per process: {requested} ({why})"


def training_function(config, args):
    out = Path(config["out"])
    use_cpu = args.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(cpu=use_cpu, log_with="tensorboard" if args.with_tracking else None, project_dir=str(out))
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    log = accelerator.print
    if device.type == "cpu":
        log(set_threads(args.threads, world))
    if config["dtype"] not in DTYPES:
        raise ConfigError(f"unknown dtype {config['dtype']!r}; valid: {', '.join(DTYPES)}")
    dtype = DTYPES[config["dtype"]]

    # --- data (uint8 in memory; every process holds it, each computes on its slice of the batch)
    splits = make_splits(
        config["dataset"],
        config["data_root"],
        config["val_size"],
        config["train_subset"],
        config["test_subset"],
        config["seed"],
        config["cache_dir"],
        log=log,
    )
    config.setdefault("mean", splits.mean)
    config.setdefault("std", splits.std)
    config.setdefault("classes", splits.train.classes)
    n_train, B = len(splits.train.y), config["batch_size"]
    if B > n_train:
        raise ConfigError(f"--batch-size {B} is larger than the training set ({n_train} examples)")
    if B % world:
        raise ConfigError(f"--batch-size {B} must be divisible by the number of processes ({world})")
    if tuple(splits.train.x.shape[1:]) != tuple(config["in_shape"]):
        raise ConfigError(
            f"{config['dataset']} images are {tuple(splits.train.x.shape[1:])}, the model "
            f"expects in_shape {tuple(config['in_shape'])}"
        )

    def prep(x_uint8):
        x = preprocess(x_uint8, config, dtype)  # the contract export writes into the ONNX metadata
        return x.contiguous(memory_format=torch.channels_last) if config["channels_last"] else x

    # --- model, optimizer, estimator
    torch.manual_seed(config["seed"])
    model = model_from_config(config).to(device=device, dtype=dtype)
    optimizer = make_optimizer(model, config)
    estimator = get_estimator(config["estimator"])
    spiking = config["neuron"] == "spiking"
    if spiking:
        check_spiking(model)
    phases = Phases(
        spiking=SpikeConfig(**config["spike"]) if spiking else None,
        T=config["T"],
        K=config["K"],
        beta=config["beta"],
        bptt_steps=config["bptt_steps"],
        tol=config["tol"],
        check_every=config["check_every"],
        fused=config["fused"],
        amp=config["amp"],
        vf_form=config["vf_form"],
        hep_points=config.get("hep_points", 4),
    )
    if config["estimator"] != "bptt":
        phases.require_beta(config["estimator"])
    step_fn = make_step(config["compile"], config["schedule"], config["compile_mode"])
    fmt = torch.channels_last if config["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt)
    start_epoch, start_step, best_val, history, carry = 0, 0, None, [], [0.0, 0.0, 0.0]
    wall_offset = 0.0  # wall seconds of training (and evaluation) before this process started
    if args.resume:
        ck = load_checkpoint(args.resume)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        start_epoch, start_step, best_val, history = ck["epoch"], ck["step"], ck["best_val_error"], ck["metrics"]
        carry = ck.get("epoch_stats", carry)
        wall_offset = ck.get("wall_seconds", 0.0)
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed from {args.resume}: epoch {start_epoch}, step {start_step}")

    spike_stats, train_spikes = [], []

    @torch.no_grad()
    def evaluate(ds):
        """Test error of the free fixed point over a whole split (gathered across processes), and the
        mean number of free-phase steps used (T, or fewer with --tol)."""
        if len(ds.y) == 0:
            return None, 0
        loader = accelerator.prepare(DataLoader(TensorDataset(ds.x, ds.y), batch_size=config["eval_batch_size"]))
        model.eval()
        wrong, steps = [], []
        for xb, yb in loader:
            x = prep(xb).to(device)
            if spiking:  # the spiking network's own decoded free phase
                st = spiking_phase(model, x, SpikeState.zeros(model, x), phases.T, phases.spiking, phases.spiking.t0)
                s, n = st.rates, phases.T
                spike_stats.append(spike_report(model, st, x.shape[0], phases.T)["spikes_per_neuron"])
            else:
                s0 = model.init_states(x.shape[0], x)
                s, n, _ = relax_until(model, x, s0, phases.T, phases.tol, phases.check_every, step_fn=step_fn)
            pred = model.logits(s).argmax(1)
            wrong.append(accelerator.gather_for_metrics(pred != yb.to(device)))
            steps.append(n)
        model.train()
        return torch.cat(wrong).float().mean().item(), sum(steps) / len(steps)

    if args.eval_only:
        if not args.resume:
            raise ConfigError("--eval-only needs --resume DIR (the run to evaluate)")
        err, steps = evaluate(splits.test)
        log(
            f"test error {100 * err:.2f}% (accuracy {100 * (1 - err):.2f}%) on {len(splits.test.y)} images, "
            f"{steps:g} free-phase steps (T={phases.T}, tol={phases.tol:g})"
        )
        return {"test_error": err, "free_steps": steps}

    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        for stale in out.glob(".*.tmp*"):  # temp files of a write that a kill interrupted
            stale.unlink()
        (out / "config.json").write_text(json.dumps(config, indent=1))
        # metrics.jsonl always mirrors the checkpoint's history: rows written after the last
        # checkpoint (lost work) disappear instead of being duplicated by the resumed run
        tmp = out / ".metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
        os.replace(tmp, out / "metrics.jsonl")
    wall0 = time.time() - wall_offset

    def log_row(row):
        history.append(row)
        log(json.dumps(row))
        if accelerator.is_main_process:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            kill_point("metrics-row-written")  # testing hook: the row is written, the checkpoint not yet

    if args.with_tracking:
        accelerator.init_trackers("ep_compile", {k: str(v) for k, v in config.items()})

    def save(epoch, step, stats, name="last.pt"):
        if accelerator.is_main_process:
            payload = checkpoint_payload(model, optimizer, config, epoch, step, best_val, history)
            payload["epoch_stats"] = stats
            payload["wall_seconds"] = time.time() - wall0
            atomic_save(payload, out / name)
        accelerator.wait_for_everyone()

    def update(grads, where):
        """Average the estimate over processes (one flattened all-reduce), check it, take the step."""
        flat = flatten(grads)
        if world > 1:
            flat = accelerator.reduce(flat, reduction="mean")
        if not torch.isfinite(flat).all():
            raise Diverged(f"non-finite gradient estimate or loss at {where}")
        set_grads(model, unflatten(flat, grads))
        optimizer.step()
        if not torch.isfinite(flatten([p.detach() for p in model.parameters()])).all():
            raise Diverged(f"non-finite weights after the update at {where}")

    continual = entry(config["estimator"]).time_local
    group_of = [i for i, g in enumerate(optimizer.param_groups) for _ in g["params"]]

    def compensate(grads, k, K):
        return wd_compensate(grads, optimizer, k, K, group_of) if config["wd_compensation"] else grads

    steps_per_epoch = n_train // B  # drop the last partial batch: one shape, one compiled graph
    # --eval-every f: also evaluate on the test set every f epochs inside an epoch (time to accuracy)
    eval_steps = round(config["eval_every"] * steps_per_epoch) if 0 < config["eval_every"] < 1 else 0
    lo, hi = rank * B // world, (rank + 1) * B // world
    done_steps = 0
    for epoch in range(start_epoch, config["epochs"]):
        lr = set_epoch_lr(optimizer, epoch, config)
        order = epoch_order(config["seed"], epoch, n_train)
        stats = carry if epoch == start_epoch else [0.0, 0.0, 0.0]  # wrong, loss sum, count (local)
        t0 = time.time()
        bar = tqdm(
            total=steps_per_epoch,
            initial=start_step if epoch == start_epoch else 0,
            disable=not accelerator.is_local_main_process,
            mininterval=2.0,
            desc=f"epoch {epoch + 1}/{config['epochs']}",
        )
        for step in range(start_step if epoch == start_epoch else 0, steps_per_epoch):
            if config["lr_per_step"]:
                lr = set_epoch_lr(optimizer, epoch + step / steps_per_epoch, config)
            idx = order[step * B : (step + 1) * B]
            gen = step_generator(config["seed"], epoch, step)
            xb = augment(splits.train.x[idx], gen) if config["augment"] else splits.train.x[idx]
            x, y = prep(xb), splits.train.y[idx]  # (B, C, H, W), (B,) for the global batch
            masks = model.dropout_masks(B, x, gen)
            x, y = x[lo:hi].to(device), y[lo:hi].to(device)
            masks = None if masks is None else [None if m is None else m[lo:hi].to(device) for m in masks]
            where = f"epoch {epoch + 1}, batch {step + 1}"
            if continual:  # C-EP & co. update the weights at every nudged step, through `update`
                est = estimator(
                    model,
                    x,
                    y,
                    phases,
                    masks=masks,
                    generator=gen,
                    step_fn=step_fn,
                    apply_update=lambda g, k, K, where=where: update(compensate(g, k, K), where),
                )
            else:
                est = estimator(model, x, y, phases, masks=masks, generator=gen, step_fn=step_fn)
                update(est.grads, where)
            wrong = (est.logits.argmax(1) != y).sum().item()
            loss_sum = est.loss.sum().item()
            if "spikes_iteration" in est.info:
                train_spikes.append(est.info["spikes_iteration"])
            if not math.isfinite(loss_sum):
                raise Diverged(f"non-finite loss at {where}")
            stats = [stats[0] + wrong, stats[1] + loss_sum, stats[2] + len(y)]
            bar.update(1)
            bar.set_postfix(err=f"{stats[0] / max(stats[2], 1):.3f}", lr=f"{lr:.3g}")
            done_steps += 1
            evaluate_now = eval_steps and (step + 1) % eval_steps == 0 and step + 1 <= steps_per_epoch - eval_steps // 2
            if evaluate_now:  # a test-only row inside the epoch, checkpointed with it
                test_err, _ = evaluate(splits.test)
                log_row(
                    {
                        "epoch": round(epoch + (step + 1) / steps_per_epoch, 4),
                        "test_error": test_err,
                        "lr": lr,
                        "wall_seconds": time.time() - wall0,
                        "partial": True,
                    }
                )
            every = config["checkpoint_every"]
            if evaluate_now or (every and (step + 1) % every == 0 and step + 1 < steps_per_epoch):
                save(epoch, step + 1, stats)
            if args.simulate_crash_at_step and done_steps == args.simulate_crash_at_step:
                os.kill(os.getpid(), signal.SIGKILL)  # testing: a real kill, mid-epoch
        bar.close()
        start_step = 0
        tot = accelerator.reduce(torch.tensor(stats, dtype=torch.float64, device=device), reduction="sum")
        (val_err, _), (test_err, eval_free) = evaluate(splits.val), evaluate(splits.test)
        row = {
            "epoch": epoch + 1,
            "train_error": (tot[0] / tot[2]).item(),
            "train_loss": (tot[1] / tot[2]).item(),
            "val_error": val_err,
            "test_error": test_err,
            "lr": lr,
            "epoch_seconds": time.time() - t0,
            "eval_free_steps": eval_free,
            "wall_seconds": time.time() - wall0,
        }
        angles = alignment_angles(model)
        if angles:
            row["alignment_deg"] = angles
        if spiking and train_spikes:  # what neuromorphic hardware would pay
            row["spikes_per_neuron_inference"] = sum(spike_stats) / len(spike_stats)
            row["spikes_per_neuron_iteration"] = sum(r["spikes_per_neuron"] for r in train_spikes) / len(train_spikes)
            row["events_per_rate_mac"] = sum(r["events_per_rate_mac"] for r in train_spikes) / len(train_spikes)
            spike_stats.clear()
            train_spikes.clear()
        log_row(row)
        if args.with_tracking:
            accelerator.log({k: v for k, v in row.items() if isinstance(v, float)}, step=epoch + 1)
        score = val_err if val_err is not None else row["train_error"]
        if best_val is None or score < best_val:
            best_val = score
            save(epoch + 1, 0, [0.0, 0.0, 0.0], "best.pt")
        save(epoch + 1, 0, [0.0, 0.0, 0.0])
        if config.get("stop_at_accuracy") and 1 - test_err >= config["stop_at_accuracy"]:
            log(f"test accuracy {100 * (1 - test_err):.2f}% >= --stop-at-accuracy: stopping after epoch {epoch + 1}")
            break
        spent = time.time() - wall0
        if config.get("max_hours") and spent + (time.time() - t0) > 3600 * config["max_hours"]:
            log(f"another epoch would end past --max-hours {config['max_hours']:g}: stopping after epoch {epoch + 1}")
            break

    final = flatten([p.detach() for p in model.parameters()])
    if world > 1:  # every process must hold the same weights
        allw = accelerator.gather(final[None])
        diff = (allw - allw[0]).abs().max().item()
        if accelerator.is_main_process:
            (out / "ranks.json").write_text(json.dumps({"processes": world, "max_abs_weight_diff": diff}))
    if accelerator.is_main_process and history:
        plot_curves(history, out / "curves.png", f"{config['estimator']} on {config['dataset']}")
        if "alignment_deg" in history[-1]:
            plot_alignment(history, out / "alignment.png", f"{config['estimator']}: angle between w^f and w^b")
    accelerator.wait_for_everyone()  # no rank tears its process group down while another still talks to it
    accelerator.end_training()  # finishes trackers and destroys the process group: no gloo thread alive at exit
    reached = time_to_accuracy(history)
    if accelerator.is_main_process and history:
        (out / "time_to_accuracy.json").write_text(json.dumps(reached, indent=1))
    log(
        "time to test accuracy: "
        + ", ".join(f"{k}: {'not reached' if v is None else f'{v:.0f} s'}" for k, v in reached.items())
    )
    full = [r for r in history if not r.get("partial")]
    last = full[-1] if full else {}
    if last:
        log(
            f"final test accuracy {100 * (1 - last['test_error']):.2f}% (test error {100 * last['test_error']:.2f}%), "
            f"best validation error {100 * best_val:.2f}%; run folder {out}"
        )
    return last


# ----------------------------------------------------------------------------- command line

CONFIG_FLAGS = {  # flag -> (config key, type, help)
    "--dataset": ("dataset", str, f"data set: {', '.join(DATASETS)}"),
    "--data-root": ("data_root", str, "local data: torchvision folder, ImageFolder tree or .tar.gz of one"),
    "--cache-dir": ("cache_dir", str, "where decoded data sets are cached (default ~/.cache/ep_compile)"),
    "--estimator": ("estimator", str, f"gradient estimator: {', '.join(ESTIMATORS)}"),
    "--loss": ("loss", str, "mse (output layer in the dynamics) or ce (softmax read-out)"),
    "--epochs": ("epochs", int, "number of epochs"),
    "--batch-size": ("batch_size", int, "global batch size (split across processes)"),
    "--T": ("T", int, "free-phase steps"),
    "--K": ("K", int, "nudged-phase steps"),
    "--beta": ("beta", float, "nudging strength"),
    "--bptt-steps": ("bptt_steps", int, "truncate BPTT to the last k free steps (default: all T)"),
    "--lrs": ("lrs", float, "layer-wise initial learning rates, bottom to top (read-out last)"),
    "--momentum": ("momentum", float, "SGD momentum"),
    "--optimizer": ("optimizer", str, "sgd (SGD with momentum, the paper's) or adam (AdamW: scale-free steps)"),
    "--warmup-epochs": ("warmup_epochs", float, "linear learning-rate warm-up from lr/10 over this many epochs"),
    "--eval-every": ("eval_every", float, "also evaluate the test set every f epochs inside an epoch (e.g. 0.5)"),
    "--vf-form": (
        "vf_form",
        str,
        "vf backward weights: linearized (Eq. 41-42) or paper-code (each phase's own pool winners)",
    ),
    "--hep-points": ("hep_points", int, "holomorphic: number N of complex nudges on the circle |beta|"),
    "--init-gain": ("init_gain", float, "multiply PyTorch's default init of every synapse weight by this"),
    "--weight-decay": ("weight_decay", float, "weight decay (all layers)"),
    "--lr-min": ("lr_min", float, "final learning rate of the cosine schedule"),
    "--decay-epochs": ("decay_epochs", int, "cosine annealing length in epochs"),
    "--channels": ("channels", int, "conv output channels, e.g. 128 256 512 512"),
    "--kernels": ("kernels", int, "conv kernel sizes, one per conv layer"),
    "--paddings": ("paddings", int, "conv paddings, one per conv layer"),
    "--pools": ("pools", str, "pooling after each conv: max, avg or none"),
    "--fc": ("fc", int, "hidden fully connected layer sizes"),
    "--activation": ("activation", str, "hard-sigmoid (slope 1/2, Eq. 51), hard-sigmoid-1 (Eq. 50) or holo-sigmoid"),
    "--dropout": ("dropout", float, "dropout probability per hidden state layer"),
    "--std-scale": ("std_scale", float, "inputs are divided by std_scale * std (3 as in the paper's code)"),
    "--val-size": ("val_size", int, "validation examples held out of the training set"),
    "--train-subset": ("train_subset", int, "train on the first N examples only"),
    "--test-subset": ("test_subset", int, "evaluate on the first N test examples only"),
    "--seed": ("seed", int, "seed for weights, data order, augmentation, dropout and random signs"),
    "--out": ("out", str, "run folder for checkpoints, metrics.jsonl, config.json, curves.png"),
    "--checkpoint-every": ("checkpoint_every", int, "also checkpoint every N steps within an epoch (0: per epoch)"),
    "--eval-batch-size": ("eval_batch_size", int, "batch size of the evaluation passes"),
    "--dtype": ("dtype", str, "float32, or float64 for checks that need rounding out of the way"),
    "--schedule": ("schedule", str, "sync (all layers from s_t) or evenodd (asynchronous, fewer steps)"),
    "--tol": ("tol", float, "stop the free phase once no state changes by more than tol in a step (0: run T)"),
    "--check-every": ("check_every", int, "measure the state change every N steps (fewer host syncs)"),
    "--amp": ("amp", str, "bf16: run the phases under bfloat16 autocast (estimate taken in float32)"),
    "--compile-mode": ("compile_mode", str, "torch.compile mode, e.g. reduce-overhead (CUDA graphs on a GPU)"),
    "--stop-at-accuracy": ("stop_at_accuracy", float, "stop after the first epoch whose test accuracy reaches this"),
    "--max-hours": ("max_hours", float, "stop after the last epoch that ends within this many hours of training"),
}
LIST_KEYS = {"lrs", "channels", "kernels", "paddings", "pools", "fc", "dropout"}


def build_config(args) -> dict:
    if args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}; valid: {', '.join(PRESETS)}")
    config = {**RUN_DEFAULTS, **PRESETS[args.preset], "preset": args.preset}
    for key, _, _ in CONFIG_FLAGS.values():
        v = getattr(args, key)
        if v is not None:
            config[key] = v
    if args.compile is not None:
        config["compile"] = args.compile
    for flag in ("asymmetric", "fused", "channels_last", "wd_compensation", "lr_per_step"):
        if getattr(args, flag):
            config[flag] = True
    if args.no_augment and args.augment:
        raise ConfigError("--augment and --no-augment contradict each other: give one")
    if args.no_augment or args.augment:
        config["augment"] = bool(args.augment)
    if args.neuron is not None:
        config["neuron"] = args.neuron
    spike = dict(config.get("spike", {}))
    for key in ("quantizer", "schedule", "t0", "nudge_t0", "lam", "kappa"):
        v = getattr(args, f"spike_{key}")
        if v is not None:
            spike[key] = v
    if spike and config["neuron"] != "spiking":
        raise ConfigError(f"spike options {sorted(spike)} need --neuron spiking")
    config["spike"] = spike
    SpikeConfig(**spike)  # unknown quantizer / schedule names fail here, naming the valid ones
    if config["neuron"] == "spiking":
        spiking_names = {"symmetric": "spiking-symmetric", "c-ep": "spiking-c-ep"}
        if config["estimator"] not in (*spiking_names, *spiking_names.values()):
            raise ConfigError(f"--neuron spiking supports estimators symmetric and c-ep, not {config['estimator']!r}")
        config["estimator"] = spiking_names.get(config["estimator"], config["estimator"])
    elif config["estimator"].startswith("spiking-"):
        raise ConfigError(f"estimator {config['estimator']!r} needs --neuron spiking")
    if config["out"] is None:
        config["out"] = f"runs/{args.preset}"
    if config["estimator"] not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {config['estimator']!r}; valid: {', '.join(ESTIMATORS)}")
    check_values(config)
    if config["dtype"] not in DTYPES:
        raise ConfigError(f"unknown dtype {config['dtype']!r}; valid: {', '.join(DTYPES)}")
    if config["dataset"] not in DATASETS:
        raise ConfigError(f"unknown dataset {config['dataset']!r}; valid: {', '.join(DATASETS)}")
    from ep_compile.estimators import check_compatible

    model = model_from_config(config)
    check_compatible(config["estimator"], model)  # clear messages for bad combinations
    if config["neuron"] == "spiking":
        check_spiking(model)
    check_honoured(config, {key for key, _, _ in CONFIG_FLAGS.values() if getattr(args, key) is not None})
    return config


def check_honoured(config: dict, given: set) -> None:
    """Refuse, in one line, every setting the chosen path would silently ignore."""
    est = config["estimator"]
    spiking, bptt_est = config["neuron"] == "spiking", est == "bptt"
    e = entry(est)
    time_local = e.time_local
    fusable = e.two_sided and e.rule is not None and not (e.time_local or e.spiking)  # symmetric, vf, kp-vf
    ignored = []
    if spiking:  # the spiking phases run their own eager loop with a decoder schedule
        ignored += [f for f, on in (("--compile", config["compile"]), ("--fused", config["fused"])) if on]
        ignored += [f"--schedule {config['schedule']}"] if config["schedule"] != "sync" else []
        ignored += [f"--tol {config['tol']}"] if config["tol"] > 0 else []
        ignored += [f"--amp {config['amp']}"] if config["amp"] else []
        ignored += ["--channels-last"] if config["channels_last"] else []
    if config["fused"] and not fusable and not spiking:
        ignored.append("--fused (only two-phase estimators: symmetric, vf, kp-vf)")
    if config["tol"] > 0 and bptt_est:
        ignored.append(f"--tol {config['tol']} (BPTT unrolls all T steps)")
    if config["amp"] and time_local and not spiking:
        ignored.append(f"--amp {config['amp']} (time-local estimators run their nudged steps in full precision)")
    if config["vf_form"] != "linearized" and est not in ("vf", "vf-one-sided"):
        ignored.append(f"--vf-form {config['vf_form']} (only vf and vf-one-sided)")
    if "hep_points" in given and est != "holomorphic":
        ignored.append("--hep-points (only --estimator holomorphic)")
    if config["amp"] and est == "holomorphic":
        ignored.append(f"--amp {config['amp']} (holomorphic runs its complex phases in full precision)")
    if config["wd_compensation"] and not time_local:
        ignored.append("--wd-compensation (only time-local estimators)")
    if "bptt_steps" in given and not bptt_est:
        ignored.append("--bptt-steps (only --estimator bptt)")
    if ignored:
        what = f"--neuron spiking with estimator {est!r}" if spiking else f"estimator {est!r}"
        raise ConfigError(f"{what} would ignore {', '.join(ignored)}: drop it or change the estimator")


RESUME_MAY_CHANGE = {
    "epochs",
    "checkpoint_every",
    "eval_batch_size",
    "stop_at_accuracy",
    "max_hours",
}  # applied, said so


def resume_config(args) -> dict:
    """The checkpoint's own config; --resume FILE continues in that file's folder. Flags that would
    change the run are refused unless they repeat the stored value; the few that may change are
    applied and reported."""
    path = Path(args.resume)
    config = load_checkpoint(path)["config"]
    config["out"] = str(path if path.is_dir() else path.parent)
    for flag, (key, _, _) in CONFIG_FLAGS.items():
        v = getattr(args, key)
        if v is None or v == config.get(key):
            continue
        if key == "out":
            raise ConfigError(f"--resume {path} continues in {config['out']}; drop --out {v}")
        if key not in RESUME_MAY_CHANGE:
            raise ConfigError(
                f"--resume continues the stored run, which has {key}={config.get(key)!r}; {flag} {v!r} would "
                f"change it (may change: {', '.join('--' + k.replace('_', '-') for k in sorted(RESUME_MAY_CHANGE))})"
            )
        print(f"cifar.py: resuming with {key}={v!r} (was {config.get(key)!r})", file=sys.stderr)
        config[key] = v
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a convergent ConvNet by EP or BPTT.")
    parser.add_argument("--preset", default="digits-ce-symmetric", help="hyper-parameter preset (see --list-presets)")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    for flag, (key, typ, hlp) in CONFIG_FLAGS.items():
        parser.add_argument(flag, dest=key, type=typ, nargs="+" if key in LIST_KEYS else None, default=None, help=hlp)
    parser.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    parser.add_argument("--augment", action="store_true", help="random crop and flip (the paper's augmentation)")
    parser.add_argument("--asymmetric", action="store_true", help="separate backward weights (for vf, kp-vf, bptt)")
    parser.add_argument(
        "--lr-per-step", action="store_true", help="move the learning-rate schedule every step, not every epoch"
    )
    parser.add_argument("--fused", action="store_true", help="run the +beta and -beta phases as one batch of 2B")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster convs)")
    parser.add_argument(
        "--wd-compensation", action="store_true", help="continual estimators: divide increment k by (1 - lr wd)^(K-1-k)"
    )
    parser.add_argument(
        "--neuron",
        choices=("rate", "spiking"),
        default=None,
        help="rate units, or binary spikes through sigma-delta encoders (symmetric / c-ep only)",
    )
    parser.add_argument("--spike-quantizer", default=None, help="spiking: sigma-delta (deterministic) or stochastic")
    parser.add_argument("--spike-schedule", default=None, help="spiking decoder step size: harmonic, constant, power")
    parser.add_argument(
        "--spike-t0", type=float, default=None, help="spiking: harmonic/power offset t0 of the free phase"
    )
    parser.add_argument("--spike-nudge-t0", type=float, default=None, help="spiking: t0 of the nudged phases")
    parser.add_argument("--spike-lam", type=float, default=None, help="spiking: step of the constant schedule")
    parser.add_argument("--spike-kappa", type=float, default=None, help="spiking: exponent of the power schedule")
    parser.add_argument("--compile", dest="compile", action="store_true", default=None, help="torch.compile the step")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="run the step eagerly")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads per process (0: cores / local processes under accelerate)"
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    parser.add_argument("--resume", default=None, help="continue (or evaluate) the run in this folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="start a fresh run in a folder that already holds one (replaces it)"
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint on the test set")
    parser.add_argument("--with-tracking", action="store_true", help="also log to TensorBoard through accelerate")
    parser.add_argument(
        "--simulate-crash-at-step",
        type=int,
        default=0,
        help="testing: SIGKILL this process after N optimizer steps, to check exact resume",
    )
    args = parser.parse_args(argv)
    if args.list_presets:
        for name, preset in PRESETS.items():
            p = {**RUN_DEFAULTS, **preset}
            print(
                f"{name:<22} {p['dataset']:<14} loss={p['loss']:<4} estimator={p['estimator']:<12} "
                f"T={p['T']} K={p['K']} beta={p['beta']} epochs={p['epochs']} dropout={p['dropout'] or 0}"
            )
        return 0
    try:
        if args.threads < 0:
            raise ConfigError(f"--threads must be >= 0 (0: automatic), got {args.threads}")
        if args.resume:
            config = resume_config(args)
        else:
            config = build_config(args)
            out = Path(config["out"])
            if not args.overwrite and any((out / f).exists() for f in ("last.pt", "best.pt", "metrics.jsonl")):
                raise ConfigError(
                    f"run folder {out} already holds a run: continue it with --resume {out}, "
                    "start over with --overwrite, or pick another --out"
                )
        training_function(config, args)
    except ConfigError as e:
        print(f"cifar.py: error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        last = Path(config["out"]) / "last.pt"
        where = f"the last good checkpoint {last} is intact" if last.exists() else "no checkpoint was written yet"
        print(f"cifar.py: diverged: {e}; {where}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # one of several processes: everything is written and the process group destroyed; skip the
        # interpreter's teardown, where a rank was seen to die with "terminate called without an
        # active exception" (SIGABRT) about once in 40 launches under load
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
