"""Milliseconds per dynamics step of the cifar10-cpu net (32-64-128-256, even/odd, batch 64): float32,
bf16 autocast (the `--amp bf16` path: bf16 convolutions, float32 weights and estimate), and the bare
convolutions of one step (each layer's forward conv and the feedback's transposed conv, nothing
else: the floor), side by side in one process, eager and compiled; then one symmetric-EP iteration
(T=20, K=8) in float32, --amp bf16 and --amp bf16-free (the free phase in bf16, the nudged phases in
float32), each estimate's cosine with the float32 one on the same batch. Prints tables, writes JSON
with the machine.

    python benchmarks/bf16_steps.py --threads 2
    python benchmarks/bf16_steps.py --checkpoint runs/cifar10-cpu/last.pt --data-root cifar10-jpeg.tar.gz

Without --checkpoint the net is at its initialisation, without --data-root the batch is noise; the
JSON says which.
"""

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ep_compile.checkpoint import load_checkpoint  # noqa: E402
from ep_compile.config import RunConfig, model_from_config  # noqa: E402
from ep_compile.data import make_splits, preprocess, preprocessing_meta  # noqa: E402
from ep_compile.dynamics import make_step, preactivations, relax  # noqa: E402
from ep_compile.estimators import Phases, get_estimator  # noqa: E402
from ep_compile.machine import describe, native_bf16  # noqa: E402
from ep_compile.presets import PRESETS  # noqa: E402


def bare_convs(model, x, states, dtype):
    """The convolutions of one step alone: forward conv of every layer, transposed conv of every
    layer above the first (what the step cannot avoid)."""
    layers = [x] + states
    for n, layer in enumerate(model.layers):
        if not hasattr(layer, "conv"):
            continue
        w = layer.conv.weight.to(dtype)
        u = F.conv2d(layers[n].to(dtype), w, padding=layer.padding)
        if n > 0:
            F.conv_transpose2d(u, w, padding=layer.padding)


def step_recomputing(model, x, states, masks=None, y=None, beta=None):
    """The even/odd step as it was before the forward terms were reused across its colour classes:
    every class recomputes every interaction's forward term (the reference row of the table)."""
    for c in range(len(model.colours)):
        us, _ = preactivations(model, x, states, masks, y, beta, parity=c)
        states = [s if u is None else model.sigma(u, n) for n, (u, s) in enumerate(zip(us, states))]
    return states


def timed(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="a cifar10-cpu checkpoint (default: the net at init)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="steps per timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument("--data-root", default=None, help="CIFAR-10: the batch is its first test images (default: noise)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "bf16_steps.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ck = load_checkpoint(args.checkpoint) if args.checkpoint else None
    cfg = RunConfig.from_dict(ck["config"] if ck else PRESETS["cifar10-cpu"])  # the run's preprocessing too
    model = model_from_config(cfg)
    if ck:
        model.load_state_dict(ck["model"])
    model = model.to(memory_format=torch.channels_last)
    x, y = torch.randn(args.batch, 3, 32, 32) * 0.3, torch.randint(0, 10, (args.batch,))
    if args.data_root:
        test = make_splits("cifar10", data_root=args.data_root, val_size=0, seed=cfg.run.seed).test
        x, y = preprocess(test.x[: args.batch], preprocessing_meta(cfg.data, cfg.model.in_shape)), test.y[: args.batch]
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        s = relax(model, x, model.init_states(args.batch, x), 20, step_fn=make_step(False, "evenodd"))
    rows = []
    for compiled in (False,) if args.no_compile else (False, True):
        fn = make_step(compiled, "evenodd")
        for precision in ("fp32", "bf16"):
            cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
            with torch.no_grad(), cast:
                relax(model, x, s, 2, step_fn=fn)  # warm up / compile
                t = timed(lambda fn=fn: relax(model, x, s, args.steps, step_fn=fn), args.repeats) / args.steps
            rows.append({"path": "step", "compiled": compiled, "precision": precision, "ms_per_step": 1e3 * t})
        ref = torch.compile(step_recomputing, fullgraph=True, dynamic=False) if compiled else step_recomputing
        with torch.no_grad():
            relax(model, x, s, 2, step_fn=ref)
            t = timed(lambda ref=ref: relax(model, x, s, args.steps, step_fn=ref), args.repeats) / args.steps
        rows.append({"path": "step, recomputing", "compiled": compiled, "precision": "fp32", "ms_per_step": 1e3 * t})
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with torch.no_grad():
            bare_convs(model, x, s, dtype)
            t = timed(lambda dtype=dtype: [bare_convs(model, x, s, dtype) for _ in range(args.steps)], args.repeats)
        rows.append(
            {
                "path": "bare convolutions",
                "compiled": False,
                "precision": precision,
                "ms_per_step": 1e3 * t / args.steps,
            }
        )
    est, iters = get_estimator("symmetric"), []
    ph = dict(T=cfg.phases.T, K=cfg.phases.K, beta=cfg.phases.beta)
    fn = make_step(not args.no_compile, "evenodd")
    grads = {}
    for amp in (None, "bf16", "bf16-free"):
        est(model, x, y, Phases(T=2, K=2, beta=ph["beta"], amp=amp), step_fn=fn)  # warm up / compile
        t = timed(lambda amp=amp: grads.update({amp: est(model, x, y, Phases(**ph, amp=amp), step_fn=fn).grads}), 3)
        iters.append({"amp": amp or "fp32", "s_per_iteration": t})
    ref = torch.cat([g.flatten() for g in grads[None]])
    # the gradient of the T-step network's loss (BPTT through all T steps, float32): how far each
    # estimate is from what it estimates, next to how far bf16 moves it
    bp = get_estimator("bptt")(model, x, y, Phases(T=ph["T"], K=ph["K"]), step_fn=make_step(False, "evenodd"))
    true = torch.cat([g.flatten() for g in bp.grads])
    for r, amp in zip(iters, (None, "bf16", "bf16-free")):
        low = torch.cat([g.flatten() for g in grads[amp]])
        r["cosine_vs_bptt"] = torch.nn.functional.cosine_similarity(true, low, dim=0).item()
        r["cosine_vs_fp32"] = torch.nn.functional.cosine_similarity(ref, low, dim=0).item()
        r["rel_error_vs_fp32"] = ((low - ref).norm() / ref.norm()).item()
        r["speedup_vs_fp32"] = iters[0]["s_per_iteration"] / r["s_per_iteration"]
    cosine = iters[1]["cosine_vs_fp32"]
    print(
        f"== ms per step, cifar10-cpu net, batch {args.batch}, {args.threads} thread(s); native bf16: {native_bf16()}"
    )
    print(f"{'path':<18} {'compiled':<9} {'precision':<9} {'ms/step':>9}")
    for r in rows:
        print(f"{r['path']:<18} {str(r['compiled']):<9} {r['precision']:<9} {r['ms_per_step']:>9.2f}")
    print("('step, recomputing': every colour class recomputes every forward term, as before the reuse)")
    weights = args.checkpoint or "initialisation (no --checkpoint)"
    batch = f"the first {args.batch} CIFAR-10 test images" if args.data_root else "noise (no --data-root)"
    print(f"== one symmetric-EP iteration, T={ph['T']} K={ph['K']}, weights {weights}, batch: {batch}")
    print(f"{'amp':<10} {'s/iteration':>11} {'speed-up':>9} {'cosine vs fp32':>15} {'rel. error':>11} {'vs BPTT':>8}")
    for r in iters:
        print(
            f"{r['amp']:<10} {r['s_per_iteration']:>11.3f} {r['speedup_vs_fp32']:>8.2f}x "
            f"{r['cosine_vs_fp32']:>15.6f} {r['rel_error_vs_fp32']:>11.2e} {r['cosine_vs_bptt']:>8.4f}"
        )
    out = {"machine": describe(), "native_bf16": native_bf16(), "threads": args.threads, "batch": args.batch}
    out.update(rows=rows, iterations=iters, cosine_bf16_fp32=cosine, weights=weights, data=batch)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
