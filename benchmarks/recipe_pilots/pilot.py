"""Recipe pilots for cifar10-cpu (RESULTS.md section 1): a short EP training run on a CIFAR-10 subset
(10,000 train / 2,000 test images by default, one thread), printing the test accuracy every 1/evals
epoch. Every setting is a flag of cifar.py (the run's sections, config.py) over the cifar10-cpu preset;
the loop is the trainer's own (Trainer.batch, Trainer.iteration, Trainer.evaluate), with the pilot's
one schedule: a cosine over the pilot's own length, after a warm-up of --warm iterations. Example:
    python benchmarks/recipe_pilots/pilot.py --optimizer sgd --lrs 0.25 0.15 0.1 0.08 0.05 --T 20 --K 6
(The table of RESULTS.md section 1 was measured with this script's first form, which wrote its own
loop on the same settings: git log -- benchmarks/recipe_pilots/pilot.py.)
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from ep_compile.config import RunConfig  # noqa: E402
from ep_compile.data import make_splits  # noqa: E402
from ep_compile.trainer import Trainer  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--preset", default="cifar10-cpu")
RunConfig.add_args(p)
p.add_argument("--pilot-epochs", type=float, default=2, help="length of the pilot in epochs of the subset")
p.add_argument("--evals", type=int, default=2, help="test evaluations per epoch")
p.add_argument("--warm", type=int, default=0, help="linear warm-up over this many iterations")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--tag", default="")
a = p.parse_args()
a.train_subset, a.test_subset = a.train_subset or 10000, a.test_subset or 2000
a.data_root = a.data_root or str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
a.out = a.out or "/tmp/ep_compile-pilot"  # nothing is written there: the pilot keeps no run folder
torch.set_num_threads(a.threads)
cfg = RunConfig.from_args(a)
d = cfg.data
s = make_splits(
    d.dataset, d.data_root, 0, d.train_subset, d.test_subset, cfg.run.seed, d.cache_dir, log=lambda *x: None
)
d.mean, d.std, d.classes = s.mean, s.std, s.train.classes
trainer = Trainer(cfg, Accelerator(cpu=True), s, log=lambda *x: None)
lr0 = [g["lr"] for g in trainer.optimizer.param_groups]
spe = len(s.train.y) // cfg.optim.batch_size
total, ev_every = int(a.pilot_epochs * spe), spe // a.evals
t0, wrong, seen = time.time(), 0, 0
for it in range(total):
    ep, step = divmod(it, spe)
    if step == 0:
        order = torch.randperm(len(s.train.y), generator=torch.Generator().manual_seed(ep))
    scale = min(1.0, (it + 1) / a.warm) if a.warm else 1.0
    for g, lr in zip(trainer.optimizer.param_groups, lr0):
        g["lr"] = lr * scale * 0.5 * (1 + math.cos(math.pi * it / total))
    x, y, masks, gen = trainer.batch(ep, step, order)
    est = trainer.iteration(x, y, masks, gen)
    wrong, seen = wrong + (est.logits.argmax(1) != y).sum().item(), seen + len(y)
    if (it + 1) % ev_every == 0 or it + 1 == total:
        err, _ = trainer.evaluate(s.test)
        row = {"tag": a.tag, "epoch": round((it + 1) / spe, 2), "train_err": round(wrong / seen, 4)}
        print(json.dumps({**row, "test_acc": round(1 - err, 4), "time": round(time.time() - t0, 1)}), flush=True)
        wrong, seen = 0, 0
