"""Speed and memory of every estimator, eager vs compiled, and of the explicit dynamics vs the
autograd-of-Phi reference (the paper's formulation). Prints tables, writes JSON.

    python benchmarks/bench.py                                   # paper's CIFAR-10 net, batch 16, T=250, K=25
    python benchmarks/bench.py --arch digits --batch 64 --T 30 --K 10 --json bench.json
    python benchmarks/bench.py --device cuda --batch 128         # adds achieved TFLOP/s

Sections:
  estimators  ms per dynamics step, samples x steps / s, s per training iteration, peak memory
  memory      EP vs BPTT peak memory for T = 25, 50, 100, 250 (fresh process per point on the CPU)
  reference   explicit (eager, compiled, channels_last) vs autograd-of-Phi per step and per iteration
Ratios are taken within one run, side by side; the machine is noisy, so each timing is the median
of --repeats.
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ep_compile.config import add_flags  # noqa: E402
from ep_compile.dynamics import make_step, relax, step_autograd  # noqa: E402
from ep_compile.estimators import ENTRIES, ESTIMATORS, Phases  # noqa: E402
from ep_compile.machine import describe  # noqa: E402
from ep_compile.model import EPNet, model_config  # noqa: E402

BENCH_ESTIMATORS = ["one-sided", "symmetric", "kp-vf", "c-ep", "spiking-symmetric", "bptt"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(args, estimator, channels_last=False):
    e = ENTRIES[estimator]
    torch.manual_seed(0)
    cfg = model_config(args.arch, loss=args.loss, asymmetric=e.needs_asymmetric or None)
    if e.spiking:  # spiking nets use average pooling (max-pool feedback mismatches)
        cfg = model_config(cfg.to_dict(), pools=["avg" if p == "max" else p for p in cfg.pools])
    model = EPNet(cfg).to(args.device)
    x = torch.randn(args.batch, *model.cfg.in_shape, device=args.device) * 0.3
    y = torch.randint(0, model.cfg.n_classes, (args.batch,), device=args.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x, y


def step_flops(model) -> int:
    """2 x the multiply-accumulates of one synchronous step per example (EPNet.macs_per_step)."""
    return 2 * model.macs_per_step()


def timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_mb(device):
    """Peak memory so far: CUDA's allocator peak, or the process's resident high-water mark. VmHWM
    belongs to the current address space; ru_maxrss would carry over the forking parent's peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(args, model, x, y, name, step_fn, amp=None):
    """(seconds per dynamics step, seconds per training iteration) of estimator `name`; amp='bf16'
    runs the phases under bfloat16 autocast (the estimate is taken in float32)."""
    est, gen = ESTIMATORS[name], torch.Generator().manual_seed(0)
    est(model, x, y, Phases(T=2, K=2, beta=0.5, amp=amp), step_fn=step_fn, generator=gen)  # compile / warm up
    cast = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with torch.no_grad(), cast:
        s = relax(model, x, model.init_states(args.batch, x), 3, step_fn=step_fn)
        per_step = (
            timed(lambda: relax(model, x, s, args.steps, step_fn=step_fn), args.device, args.repeats) / args.steps
        )
    ph = Phases(T=args.T, K=args.K, beta=0.5, amp=amp)
    info = {}
    it = timed(
        lambda: info.update(est(model, x, y, ph, step_fn=step_fn, generator=gen).info),
        args.device,
        max(1, args.repeats // 2),
    )
    return per_step, it, info


def bench_estimator(args, name, compiled, precision="fp32"):
    if name not in ESTIMATORS or (compiled and ENTRIES[name].spiking):  # the spiking step runs eagerly
        return None
    e = ENTRIES[name]
    if precision == "bf16" and (e.time_local or e.spiking or e.complex_nudge or e.unrolled):
        return None  # these run their phases in full precision (config.check_honoured refuses --amp)
    model, x, y = build(args, name, channels_last=args.channels_last)
    amp = "bf16" if precision == "bf16" else None
    per_step, it, info = measure(args, model, x, y, name, make_step(compiled), amp)
    spikes = info.get("spikes_iteration", {})
    return {
        "spikes_per_neuron_iteration": spikes.get("spikes_per_neuron"),
        "events_per_rate_mac": spikes.get("events_per_rate_mac"),
        "estimator": name,
        "compiled": compiled,
        "precision": precision,
        "ms_per_step": 1e3 * per_step,
        "samples_steps_per_s": args.batch / per_step,
        "s_per_iteration": it,
        "tflops": step_flops(model) * args.batch / per_step / 1e12,
    }


def memory_point(args, name, T):
    """Peak memory of one training iteration at T, in a fresh process on the CPU (ru_maxrss only
    grows, so each point needs its own process)."""
    if args.device.type == "cuda":
        model, x, y = build(args, name)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ESTIMATORS[name](model, x, y, Phases(T=T, K=args.K, beta=0.5))
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = [
        sys.executable,
        __file__,
        "--child-memory",
        name,
        str(T),
        "--arch",
        args.arch,
        "--batch",
        str(args.batch),
        "--K",
        str(args.K),
    ] + (["--loss", args.loss] if args.loss else [])
    env = {k: v for k, v in os.environ.items() if "TORCHINDUCTOR" not in k}  # compile state stays behind
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**env, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_mb"]


def child_memory(args, name, T):
    model, x, y = build(args, name)
    before = peak_mb(args.device)  # the process with model and data, before any iteration
    ESTIMATORS[name](model, x, y, Phases(T=T, K=args.K, beta=0.5))
    print(json.dumps({"extra_mb": peak_mb(args.device) - before, "total_mb": peak_mb(args.device)}))


def reference_vs_explicit(args):
    """Per step and per symmetric-EP training iteration: autograd-of-Phi (eager, as the paper's code
    runs it) vs the explicit path eager, compiled, and compiled + channels_last. The variants are timed
    in turns, --rounds times, and the medians reported, so drift on a busy machine hits all alike."""
    variants = [
        ("autograd-of-Phi (reference)", step_autograd, False),
        ("explicit eager", make_step(False), False),
        ("explicit compiled", make_step(True), False),
        ("explicit compiled + channels_last", make_step(True), True),
        ("autograd-of-Phi + channels_last", step_autograd, True),
    ]
    ph = Phases(T=args.T, K=args.K, beta=0.5)
    built = []
    for label, fn, cl in variants:
        model, x, y = build(args, "symmetric", channels_last=cl)
        ESTIMATORS["symmetric"](model, x, y, Phases(T=2, K=2, beta=0.5), step_fn=fn)  # warm up / compile
        with torch.no_grad():
            s = relax(model, x, model.init_states(args.batch, x), 3, step_fn=fn)
        built.append((label, fn, model, x, y, s))
    steps, iters = {v[0]: [] for v in variants}, {v[0]: [] for v in variants}
    for _ in range(args.rounds):
        for label, fn, model, x, y, s in built:
            with torch.no_grad():
                steps[label].append(
                    timed(lambda m=model, x=x, s=s, fn=fn: relax(m, x, s, args.steps, step_fn=fn), args.device, 1)
                    / args.steps
                )
            iters[label].append(
                timed(lambda m=model, x=x, y=y, fn=fn: ESTIMATORS["symmetric"](m, x, y, ph, step_fn=fn), args.device, 1)
            )
    rows = [
        {
            "variant": v[0],
            "ms_per_step": 1e3 * statistics.median(steps[v[0]]),
            "s_per_iteration": statistics.median(iters[v[0]]),
            "s_per_iteration_all": iters[v[0]],
        }
        for v in variants
    ]
    ref = rows[0]
    for r in rows:
        r["speedup_per_iteration_vs_reference"] = ref["s_per_iteration"] / r["s_per_iteration"]
        r["speedup_per_step_vs_reference"] = ref["ms_per_step"] / r["ms_per_step"]
    return rows


def epoch_time(args, mode=None):
    """One CIFAR-10 epoch at the paper's settings (ce-symmetric: batch 128, T=250, K=25), measured over
    a few training iterations with the fast options and projected to 50,000 / 128 iterations plus
    the test pass (10,000 images x T free steps). Labelled a projection."""
    args_b = argparse.Namespace(**{**vars(args), "batch": 128})
    model, x, y = build(args_b, "symmetric", channels_last=True)
    fn = make_step(True, mode=mode)
    ph = Phases(T=250, K=25, beta=1.0, fused=True)
    ESTIMATORS["symmetric"](model, x, y, Phases(T=2, K=2, beta=1.0, fused=True), step_fn=fn)
    it = timed(lambda: ESTIMATORS["symmetric"](model, x, y, ph, step_fn=fn), args.device, args.repeats)
    with torch.no_grad():
        ev = timed(lambda: relax(model, x, model.init_states(128, x), 250, step_fn=fn), args.device, args.repeats)
    total = it * (50000 // 128) + ev * (10000 / 128)
    return {
        "s_per_iteration_b128": it,
        "s_eval_batch_b128": ev,
        "projected_epoch_s": total,
        "compile_mode": mode or "default",
        "note": "projected from measured iterations: 390 training iterations + 79 evaluation batches",
    }


def table(rows, cols):
    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))


def fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return "n/a" if v is None else str(v)


def write_json(args, results):
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="cifar10", help="preset or JSON architecture (default: the paper's CIFAR-10 net)")
    p.add_argument("--loss", default=None, help="ce or mse (default: the preset's)")
    p.add_argument("--batch", type=int, default=16, help="batch size")
    add_flags(p, Phases, ("T", "K"))  # the phases section's defaults: the paper's T=250, K=25
    p.add_argument("--steps", type=int, default=20, help="steps timed for ms per step")
    p.add_argument("--repeats", type=int, default=3, help="timings per number (median)")
    p.add_argument("--rounds", type=int, default=3, help="turns of the reference table (variants timed in turn)")
    p.add_argument("--memory-T", type=int, nargs="+", default=[25, 50, 100, 250], help="T values of the memory table")
    p.add_argument(
        "--sections",
        nargs="+",
        default=["estimators", "memory", "reference"],
        help="what to run: estimators, memory, reference, epoch",
    )
    p.add_argument("--estimators", nargs="+", default=BENCH_ESTIMATORS, help="estimators of the first table")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--compile-modes",
        nargs="+",
        default=["default"],
        help="torch.compile modes of the epoch section, side by side (reduce-overhead: CUDA graphs on a GPU)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last in the estimator table")
    p.add_argument(
        "--precisions", nargs="+", default=["fp32"], choices=("fp32", "bf16"), help="precisions of the estimator table"
    )
    p.add_argument("--eager-only", action="store_true", help="skip the compiled rows (quick dry runs)")
    p.add_argument(
        "--compiled-estimators", nargs="+", default=None, help="compiled rows only for these (default: every one)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default="benchmarks/results.json", help="write the results here")
    p.add_argument("--child-memory", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_memory:
        return child_memory(args, args.child_memory[0], int(args.child_memory[1]))
    results = {
        "config": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": describe(),
    }
    if "estimators" in args.sections:
        rows = []
        compiles = [] if args.eager_only else [n for n in args.estimators if n in (args.compiled_estimators or [n])]
        # every eager row first, then the compiled ones: a run cut at its limit loses compiles, not rows
        runs = [(False, n, p) for n in args.estimators for p in args.precisions]
        for compiled, name, precision in runs + [(True, n, p) for n in compiles for p in args.precisions]:
            r = bench_estimator(args, name, compiled, precision)
            if r is None:
                continue
            if not compiled and precision == "fp32":  # one iteration at T in a fresh process (eager)
                r["peak_mb"] = memory_point(args, name, args.T)
            rows.append(r)
            print(json.dumps(r), flush=True)
            results["estimators"] = rows  # written row by row: a run cut at its time limit keeps its rows
            write_json(args, results)
        print(f"\n== estimators ({args.arch}, batch {args.batch}, T={args.T}, K={args.K}, {args.device})")
        table(
            rows,
            [
                "estimator",
                "compiled",
                "precision",
                "ms_per_step",
                "samples_steps_per_s",
                "s_per_iteration",
                "peak_mb",
                "tflops",
                "spikes_per_neuron_iteration",
                "events_per_rate_mac",
            ],
        )
        results["estimators"] = rows
    if "memory" in args.sections:
        rows = []
        for T in args.memory_T:
            rows.append(
                {
                    "T": T,
                    "ep_symmetric_mb": memory_point(args, "symmetric", T),
                    "bptt_mb": memory_point(args, "bptt", T),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            results["memory"] = {"rows": rows}  # row by row, as above
            write_json(args, results)
        print(f"\n== peak memory of one iteration (MiB above the model and data), batch {args.batch}")
        table(rows, ["T", "ep_symmetric_mb", "bptt_mb"])
        ep = [r["ep_symmetric_mb"] for r in rows]
        growth = ep[-1] / ep[0] - 1 if ep[0] > 0 else None
        results["memory"] = {"rows": rows, "ep_growth_first_to_last": growth}
        if growth is not None:
            print(f"EP growth from T={args.memory_T[0]} to T={args.memory_T[-1]}: {100 * growth:.1f}%")
    if "reference" in args.sections:
        rows = reference_vs_explicit(args)
        print(f"\n== explicit vs autograd-of-Phi (symmetric EP iteration, T={args.T}, K={args.K}, batch {args.batch})")
        table(
            rows,
            [
                "variant",
                "ms_per_step",
                "s_per_iteration",
                "speedup_per_step_vs_reference",
                "speedup_per_iteration_vs_reference",
            ],
        )
        results["reference"] = rows
    if "epoch" in args.sections:
        rows = []
        for mode in args.compile_modes:
            rows.append(epoch_time(args, None if mode == "default" else mode))
            results["epoch"] = rows
            write_json(args, results)
        print("\n== one CIFAR-10 epoch at the paper's settings (projected)")
        table(rows, ["compile_mode", "s_per_iteration_b128", "s_eval_batch_b128", "projected_epoch_s"])
    if args.json:
        write_json(args, results)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
