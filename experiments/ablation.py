"""What each lever of the `cifar10-cpu` recipe buys: the recipe with one lever switched back to the
paper's choice, timed to 60% test accuracy on the full CIFAR-10 test set (RESULTS.md section 0).

    python experiments/ablation.py --data-root ../shared/data/cifar10-jpeg.tar.gz --jobs 2
    python experiments/ablation.py --rows recipe paper-lrs --jobs 2     # some rows
    python experiments/ablation.py --report-only                        # the table from finished runs

Every row is `experiments/cifar.py --preset cifar10-cpu` plus the flags below, one thread per run
(--jobs runs side by side), stopped at 60% (--stop-at-accuracy) or when the next epoch would end past
--hours (a lower bound then: "not reached in X h, best Y%"). Runs go to runs/ablation/<row>; an
interrupted run resumes.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
from cli import add_cifar_root_arg  # noqa: E402

TARGET = 0.60
# row -> (flags on top of the recipe, the paper's choice it restores)
LEVERS = {
    "recipe": ("", "nothing: the recipe itself"),
    "sync": ("--schedule sync", "synchronous updates of all layers (even/odd off)"),
    "paper-T-K": ("--schedule sync --T 250 --K 25", "the paper's T=250, K=25, synchronous"),
    "paper-lrs": (
        "--optimizer sgd --lrs 0.25 0.15 0.1 0.08 0.05 --momentum 0.9 --weight-decay 3e-4 --warmup-epochs 0",
        "SGD with momentum and the paper's layer-wise learning rates",
    ),
    "slope-half": ("--activation hard-sigmoid", "the paper's hard sigmoid of slope 1/2 (Eq. 51)"),
    "augment": ("--augment", "random crop and flip"),
    "beta-1": ("--beta 1.0", "the paper's beta=1 for cross-entropy"),
    "batch-128": ("--batch-size 128", "the paper's batch of 128"),
}


def run_one(row, args):
    out = Path(args.out) / row
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "experiments" / "cifar.py")
    if (out / "last.pt").exists():
        cmd = [sys.executable, script, "--resume", str(out), "--cpu"]
    else:
        cmd = [
            sys.executable,
            script,
            "--preset",
            "cifar10-cpu",
            "--cpu",
            "--data-root",
            args.data_root,
            "--out",
            str(out),
            "--stop-at-accuracy",
            str(TARGET),
            "--max-hours",
            str(args.hours),
            *LEVERS[row][0].split(),
        ]
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with open(out / "stdout.log", "a") as log:
        p = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return row, f"exit {p.returncode} after {time.time() - t:.0f} s"


def report(args):
    lines = [
        "| row (lever switched back) | time to 60% | best test acc. % | epochs | s / epoch (median) |",
        "|---|---|---|---|---|",
    ]
    rows = []
    for row, (_, what) in LEVERS.items():
        f = Path(args.out) / row / "metrics.jsonl"
        if not f.exists():
            continue
        ms = [json.loads(line) for line in f.read_text().splitlines()]
        full = [m for m in ms if not m.get("partial")]
        if not full:
            continue
        hit = next((m["wall_seconds"] for m in ms if 1 - m["test_error"] >= TARGET), None)
        best = max(100 * (1 - m["test_error"]) for m in ms)
        secs = sorted(m["epoch_seconds"] for m in full)[len(full) // 2]
        when = (
            f"{hit:.0f} s"
            if hit is not None
            else f"not reached in {full[-1]['wall_seconds'] / 3600:.1f} h (lower bound)"
        )
        rows.append(
            {
                "row": row,
                "lever": what,
                "seconds_to_60": hit,
                "best_accuracy": best,
                "epochs": len(full),
                "epoch_seconds": secs,
                "wall_seconds": full[-1]["wall_seconds"],
            }
        )
        lines.append(f"| {row} ({what}) | {when} | {best:.1f} | {len(full)} | {secs:.0f} |")
    table = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps({"target": TARGET, "levers": LEVERS, "rows": rows}, indent=1))
    print(table)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cifar_root_arg(p)
    p.add_argument("--out", default=str(ROOT / "runs" / "ablation"), help="folder of the runs and the table")
    p.add_argument("--rows", nargs="+", default=None, choices=list(LEVERS), help="only these rows")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each on one thread)")
    p.add_argument("--hours", type=float, default=2.4, help="wall-clock budget of each run")
    p.add_argument("--report-only", action="store_true", help="only build the table from finished runs")
    args = p.parse_args(argv)
    if not args.report_only:
        todo = args.rows or list(LEVERS)
        with ThreadPoolExecutor(args.jobs) as pool:
            for row, status in pool.map(lambda r: run_one(r, args), todo):
                print(f"{row}: {status}", flush=True)
    report(args)


if __name__ == "__main__":
    main()
