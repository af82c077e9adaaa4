"""Fewer steps for the same fixed point: steps to a tolerance for the plain (synchronous) iteration,
the residual stop and the asynchronous even/odd schedule, and digits training runs with each.

    python benchmarks/steps.py                      # prints tables, writes benchmarks/steps.json
    python benchmarks/steps.py --skip-training      # only the steps-to-tolerance table
    python benchmarks/steps.py --skip-training --graph-nets --json benchmarks/steps_graph.json
                                                    # nets with skip interactions (colouring schedule)

Residual = the largest state change of one step, max |s_{t+1} - s_t| (what --tol stops on).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ep_compile.data import make_splits, normalize  # noqa: E402
from ep_compile.dynamics import relax_until, step, step_evenodd  # noqa: E402
from ep_compile.machine import describe  # noqa: E402
from ep_compile.model import EPNet, model_config  # noqa: E402
from ep_compile.presets import PRESETS  # noqa: E402


def steps_to(model, x, fn, tol, max_steps):
    with torch.no_grad():
        _, n, res = relax_until(model, x, model.init_states(x.shape[0], x), max_steps, tol, 1, step_fn=fn)
    return n if res < tol else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5], help="residual tolerances")
    p.add_argument("--max-steps", type=int, default=1000, help="give up after this many steps")
    p.add_argument("--skip-training", action="store_true", help="no digits training runs")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "steps.json"), help="write results here")
    p.add_argument(
        "--graph-nets", action="store_true", help="nets with skip interactions instead (even/odd = colouring)"
    )
    args = p.parse_args(argv)
    torch.manual_seed(0)
    sp = make_splits("digits", log=lambda m: None)
    digits = normalize(sp.test.x[:64], sp.mean, sp.std, 3.0)
    if args.graph_nets:
        r13 = {k: PRESETS["cifar10-hopfield-resnet13"][k] for k in ("paddings", "pools", "skips", "activations")}
        r13["init_gains"] = PRESETS["cifar10-hopfield-resnet13"]["init_gains"]
        cases = {
            "Hopfield-ResNet13 16-...-64 (init), batch 16": (
                EPNet(model_config({**r13, "channels": [16, 16, 32, 32, 64, 64, 64, 64], "loss": "mse"})),
                torch.randn(16, 3, 32, 32) * 0.3,
            ),
            "digits net + skips 0:2, 1:3 (init), 64 digits": (
                EPNet(model_config("digits", fc=[32], skips=["0:2:k3:max", "1:3"])),
                digits,
            ),
        }
    else:
        cases = {
            "paper CIFAR-10 net (init), batch 16": (EPNet(model_config("cifar10")), torch.randn(16, 3, 32, 32) * 0.3)
        }
        cases["digits net (init), 64 real digits"] = (EPNet(model_config("digits")), digits)
    rows = []
    for name, (model, x) in cases.items():
        for tol in args.tols:
            sync, eo = (
                steps_to(model, x, step, tol, args.max_steps),
                steps_to(model, x, step_evenodd, tol, args.max_steps),
            )
            rows.append(
                {
                    "case": name,
                    "tol": tol,
                    "sync_steps": sync,
                    "evenodd_steps": eo,
                    "colour_classes": len(model.colours),
                }
            )
    print(f"{'case':<46} {'tol':>7} {'sync steps':>10} {'even/odd steps':>14} {'classes':>7}")
    for r in rows:
        print(
            f"{r['case']:<46} {r['tol']:>7.0e} {str(r['sync_steps']):>10} {str(r['evenodd_steps']):>14}"
            f" {r['colour_classes']:>7}"
        )
    results = {"steps_to_tolerance": rows, "machine": describe()}
    if not args.skip_training:
        runs = {
            "plain T=30": [],
            "residual stop T=60 tol=1e-3": ["--T", "60", "--tol", "1e-3", "--check-every", "1"],
            "even/odd T=15": ["--schedule", "evenodd", "--T", "15"],
        }
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        train = []
        for label, extra in runs.items():
            out = ROOT / "runs" / "steps" / label.replace(" ", "_").replace("/", "")
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "experiments" / "cifar.py"),
                    "--no-compile",
                    "--cpu",
                    "--out",
                    str(out),
                    *extra,
                ],
                check=True,
                env=env,
                capture_output=True,
            )
            last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
            train.append(
                {
                    "run": label,
                    "test_accuracy": 1 - last["test_error"],
                    "eval_free_steps": last["eval_free_steps"],
                    "epoch_seconds": last["epoch_seconds"],
                }
            )
        print(f"\n{'digits training (symmetric EP)':<32} {'test acc':>9} {'eval steps':>10} {'s/epoch':>8}")
        for r in train:
            print(
                f"{r['run']:<32} {100 * r['test_accuracy']:>8.2f}% {r['eval_free_steps']:>10.1f} {r['epoch_seconds']:>8.2f}"
            )
        results["digits_training"] = train
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
