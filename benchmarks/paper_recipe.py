"""Seconds per CIFAR-10 epoch of the paper's recipe against the `cifar10-cpu` recipe, on the same
narrow net (32-64-128-256), side by side in one process on real CIFAR-10 batches (RESULTS.md
section 0, the speed-up in time to accuracy).

    python benchmarks/paper_recipe.py --iterations 100 --threads 2
    python benchmarks/paper_recipe.py --iterations 5 --threads 1          # a quick look

paper: symmetric EP, T=250, K=25, synchronous, beta=1, SGD with the paper's layer-wise learning rates,
batch 128, hard sigmoid of slope 1/2, inputs / (3 std), random crop and flip. recipe: the cifar10-cpu
preset (even/odd, T=20, K=8, beta=0.5, AdamW, batch 64, slope-1 hard sigmoid, no augmentation). One
iteration = the estimator on one batch and the optimizer step; the two alternate in blocks so that a
change in the machine's load hits both. Prints a table, writes JSON.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
from cli import add_cifar_root_arg  # noqa: E402

from ep_compile.config import RunConfig  # noqa: E402
from ep_compile.data import augment, make_splits, preprocess  # noqa: E402
from ep_compile.dynamics import make_step  # noqa: E402
from ep_compile.estimators import Phases, get_estimator, set_grads  # noqa: E402
from ep_compile.presets import PRESETS  # noqa: E402
from ep_compile.training import make_optimizer, model_from_config, step_generator  # noqa: E402

NARROW = {"channels": [32, 64, 128, 256], "paddings": [1, 1, 1, 0]}
RECIPES = {
    "paper (T=250, K=25, sync, SGD)": RunConfig.from_dict({**PRESETS["ce-symmetric"], **NARROW, "compile": True}),
    "cifar10-cpu (T=20, K=8, even/odd, AdamW)": RunConfig.from_dict(PRESETS["cifar10-cpu"]),
}


class Runner:
    """One recipe's model, optimizer, estimator and step, and a timer of its iterations."""

    def __init__(self, config, splits):
        self.c, self.splits = config, splits
        torch.manual_seed(0)
        fmt = torch.channels_last if config["channels_last"] else torch.contiguous_format
        self.model = model_from_config(config).to(memory_format=fmt)
        self.opt = make_optimizer(self.model, config)
        self.est = get_estimator(config["estimator"])
        self.phases = Phases(T=config["T"], K=config["K"], beta=config["beta"])
        self.step_fn = make_step(config["compile"], config["schedule"])
        self.i, self.seconds, self.first = 0, [], None

    def iterate(self):
        B = self.c["batch_size"]
        idx = torch.arange(self.i * B, (self.i + 1) * B) % len(self.splits.train.y)
        gen = step_generator(0, 0, self.i)
        xb = self.splits.train.x[idx]
        xb = augment(xb, gen) if self.c["augment"] else xb
        x = preprocess(xb, self.c)
        x = x.contiguous(memory_format=torch.channels_last) if self.c["channels_last"] else x
        t = time.perf_counter()
        e = self.est(self.model, x, self.splits.train.y[idx], self.phases, generator=gen, step_fn=self.step_fn)
        set_grads(self.model, e.grads)
        self.opt.step()
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
    for name, c in RECIPES.items():
        c.mean, c.std = splits.mean, splits.std
        runs[name] = Runner(c, splits)
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
