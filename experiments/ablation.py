"""What each lever of the `cifar10-cpu` recipe buys: the recipe with one lever switched back to the
paper's choice, timed to 60% test accuracy on the full CIFAR-10 test set (RESULTS.md section 0).

    python experiments/ablation.py --data-root ../shared/data/cifar10-jpeg.tar.gz --rows sync
    python experiments/ablation.py --rows paper-lrs --hours 1.0           # a row not expected to get there
    python experiments/ablation.py --report-only                          # the table from finished runs

Every row is `experiments/cifar.py --preset cifar10-cpu` plus the flags below, run the way the recipe
itself was timed (`accelerate launch --multi_gpu --num_processes 2`, one thread per process, nothing
else on the machine), stopped at 60% (--stop-at-accuracy) or when the next epoch would end past
--hours (a lower bound then: "not reached in X h, best Y%"). The `recipe` row defaults to that timed
run (results/cifar10-cpu/, run 3 of RESULTS.md section 0) unless runs/ablation/recipe exists.
`--procs 1 --jobs 2` runs two rows side by side at one thread each instead (their times then compare
with each other, not with run 3). Runs go to runs/ablation/<row>; an interrupted run resumes.
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
RECIPE_RUN = ROOT / "results" / "cifar10-cpu" / "adam-hs1-noaug-T20K8-16ep.metrics.jsonl"
# row -> (flags on top of the recipe, the paper's choice it restores)
LEVERS = {
    "recipe": ("", "nothing: the recipe itself"),
    "seed-1": ("--seed 1", "nothing: the recipe with seed 1, the noise floor of this table"),
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


def command(row, args):
    """The command line of one row: a fresh run with the lever's flags, or the resume of its folder."""
    out = Path(args.out) / row
    script = str(ROOT / "experiments" / "cifar.py")
    launch = [sys.executable, script]
    if args.procs > 1:  # gloo on the CPU: --multi_gpu is what starts N processes (README, accelerate)
        launch = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(args.procs),
            script,
        ]
    if (out / "last.pt").exists():
        cmd = [*launch, "--resume", str(out), "--cpu", "--max-hours", str(args.hours)]  # --hours may change
    else:
        cmd = [
            *launch,
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
    return cmd


def run_one(row, args):
    out = Path(args.out) / row
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = command(row, args)
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with open(out / "stdout.log", "a") as log:
        p = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return row, f"exit {p.returncode} after {time.time() - t:.0f} s"


def report(args):
    lines = [
        "| row (lever switched back) | time to 60% | epochs to 60% | best test acc. % | epochs run | s / epoch (median) |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for row, (_, what) in LEVERS.items():
        f = Path(args.out) / row / "metrics.jsonl"
        if row == "recipe" and not f.exists():
            f, what = RECIPE_RUN, f"{what}, run 3 of section 0"
        if not f.exists():
            continue
        ms = [json.loads(line) for line in f.read_text().splitlines()]
        full = [m for m in ms if not m.get("partial")]
        if not full:
            continue
        first = next((m for m in ms if 1 - m["test_error"] >= TARGET), None)
        hit, epochs_to = (first["wall_seconds"], first["epoch"]) if first else (None, None)
        best = max(100 * (1 - m["test_error"]) for m in ms)
        secs = sorted(m["epoch_seconds"] for m in full)[len(full) // 2]
        when = f"{hit:.0f} s" if hit is not None else f"not reached in {full[-1]['wall_seconds']:.0f} s (lower bound)"
        rows.append(
            {
                "row": row,
                "lever": what,
                "seconds_to_60": hit,
                "best_accuracy": best,
                "epochs_to_60": epochs_to,
                "epochs": len(full),
                "epoch_seconds": secs,
                "wall_seconds": full[-1]["wall_seconds"],
            }
        )
        lines.append(f"| {row} ({what}) | {when} | {epochs_to or '-'} | {best:.1f} | {len(full)} | {secs:.0f} |")
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
    p.add_argument("--procs", type=int, default=2, help="processes per run (one thread each), as the recipe was timed")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
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
