"""Seconds per CIFAR-10 epoch of the paper's recipe against the `cifar10-cpu` recipe, on the same
narrow net (32-64-128-256), side by side in one process on real CIFAR-10 batches (RESULTS.md
section 0, the speed-up in time to accuracy).

    python benchmarks/paper_recipe.py --iterations 100 --threads 2
    python benchmarks/paper_recipe.py --iterations 5 --threads 1          # a quick look

paper: symmetric EP, T=250, K=25, synchronous, beta=1, SGD with the paper's layer-wise learning rates,
batch 128, hard sigmoid of slope 1/2, inputs / (3 std), random crop and flip. recipe: the cifar10-cpu
preset (even/odd, T=20, K=8, beta=0.5, AdamW, batch 64, slope-1 hard sigmoid, no augmentation). One
iteration = Trainer.iteration (the training loop's: the estimate on one batch and the update); the two alternate in blocks so that a
change in the machine's load hits both. Prints a table, writes JSON.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
from cli import add_cifar_root_arg  # noqa: E402

from ep_compile.config import RunConfig  # noqa: E402
from ep_compile.data import make_splits  # noqa: E402
from ep_compile.presets import PRESETS  # noqa: E402
from ep_compile.trainer import Trainer  # noqa: E402

NARROW = {"channels": [32, 64, 128, 256], "paddings": [1, 1, 1, 0]}
RECIPES = {
    "paper (T=250, K=25, sync, SGD)": RunConfig.from_dict({**PRESETS["ce-symmetric"], **NARROW, "compile": True}),
    "cifar10-cpu (T=20, K=8, even/odd, AdamW)": RunConfig.from_dict(PRESETS["cifar10-cpu"]),
}


class Runner:
    """One recipe's Trainer (model, optimizer, estimator, compiled step) and a timer of its
    iterations: Trainer.iteration, the training loop's own, on the loop's own batches."""

    def __init__(self, config, splits, accelerator):
        self.c = config
        self.trainer = Trainer(config, accelerator, splits, log=lambda *a: None)
        self.order = torch.arange(len(splits.train.y))  # the training set in order, batch after batch
        self.per_epoch = len(splits.train.y) // config.optim.batch_size
        self.i, self.seconds, self.first = 0, [], None

    def iterate(self):
        x, y, masks, gen = self.trainer.batch(0, self.i % self.per_epoch, self.order)
        t = time.perf_counter()
        self.trainer.iteration(x, y, masks, gen)
        dt = time.perf_counter() - t
        if self.first is None:
            self.first = dt  # includes torch.compile's first call: reported apart
        else:
            self.seconds.append(dt)
        self.i += 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cifar_root_arg(p)
    p.add_argument("--iterations", type=int, default=100, help="timed iterations of each recipe (after a warm-up one)")
    p.add_argument("--block", type=int, default=5, help="iterations of one recipe before switching to the other")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "paper_recipe.json"), help="write results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = make_splits("cifar10", args.data_root, val_size=0)
    runs = {}
    accelerator = Accelerator(cpu=True)
    for name, c in RECIPES.items():
        c.data.mean, c.data.std = splits.mean, splits.std
        runs[name] = Runner(c, splits, accelerator)
    for r in runs.values():
        r.iterate()  # warm-up (compile)
    while any(len(r.seconds) < args.iterations for r in runs.values()):
        for r in runs.values():
            for _ in range(min(args.block, args.iterations - len(r.seconds))):
                r.iterate()
    rows = []
    n_train = len(splits.train.y)
    for name, r in runs.items():
        per_it = sorted(r.seconds)[len(r.seconds) // 2]
        its = n_train // r.c["batch_size"]
        rows.append(
            {
                "recipe": name,
                "iterations": len(r.seconds),
                "median_s_per_iteration": per_it,
                "mean_s_per_iteration": sum(r.seconds) / len(r.seconds),
                "iterations_per_epoch": its,
                "s_per_epoch": per_it * its,
                "first_iteration_s": r.first,
                "batch": r.c["batch_size"],
            }
        )
    ratio = rows[0]["s_per_epoch"] / rows[1]["s_per_epoch"]
    print(f"| recipe | batch | s / iteration (median of {args.iterations}) | s / epoch ({n_train} images) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['batch']} | {r['median_s_per_iteration']:.3f} | {r['s_per_epoch']:.0f} |")
    print(f"paper / recipe seconds per epoch: {ratio:.1f}x ({args.threads} thread(s))")
    Path(args.json).write_text(
        json.dumps({"threads": args.threads, "rows": rows, "paper_over_recipe": ratio}, indent=1)
    )


if __name__ == "__main__":
    main()
