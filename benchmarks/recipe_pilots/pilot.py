"""Recipe pilots for cifar10-cpu (RESULTS.md section 1): a short EP training loop on a CIFAR-10
subset (10,000 train / 2,000 test images by default, one thread), printing test accuracy every
1/evals epoch. Each flag is one lever: --opt sgd|adam, --gain (init gain), --xs (input std scale),
--act, --T/--K/--sched, --B, --est (symmetric, bptt ...). Example:
    python benchmarks/recipe_pilots/pilot.py --opt adam --lrs 1e-3 1e-3 5e-4 5e-4 5e-4 --wd 0 --T 10 --K 4
"""

import argparse
import json
import math
import time

import torch

from ep_compile.checkpoint import step_generator
from ep_compile.data import augment, make_splits, normalize
from ep_compile.dynamics import make_step, relax
from ep_compile.estimators import Phases, get_estimator, set_grads
from ep_compile.model import EPNet, model_config
from ep_compile.registry import entry

p = argparse.ArgumentParser()
p.add_argument("--ch", type=int, nargs="+", default=[32, 64, 128, 256])
p.add_argument("--pads", type=int, nargs="+", default=[1, 1, 1, 0])
p.add_argument("--gain", type=float, default=1.0)
p.add_argument("--bias", type=float, default=0.0)
p.add_argument("--opt", default="sgd")
p.add_argument("--lrs", type=float, nargs="+", default=[0.25, 0.15, 0.1, 0.08, 0.05])
p.add_argument("--mom", type=float, default=0.9)
p.add_argument("--wd", type=float, default=3e-4)
p.add_argument("--T", type=int, default=20)
p.add_argument("--K", type=int, default=6)
p.add_argument("--beta", type=float, default=0.5)
p.add_argument("--sched", default="evenodd")
p.add_argument("--B", type=int, default=64)
p.add_argument("--xs", type=float, default=3.0)
p.add_argument("--n", type=int, default=10000)
p.add_argument("--ntest", type=int, default=2000)
p.add_argument("--epochs", type=float, default=2)
p.add_argument("--est", default="symmetric")
p.add_argument("--aug", type=int, default=1)
p.add_argument("--evals", type=int, default=2)
p.add_argument("--warm", type=int, default=0)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--Teval", type=int, default=0)
p.add_argument("--tag", default="")
p.add_argument("--act", default="hard-sigmoid")
p.add_argument("--pool", default="max")
a = p.parse_args()
torch.set_num_threads(a.threads)
s = make_splits("cifar10", "../shared/data/cifar10-jpeg.tar.gz", 0, a.n, a.ntest, 0, None, log=lambda *x: None)
torch.manual_seed(0)
m = EPNet(model_config("cifar10", channels=a.ch, paddings=a.pads, pools=[a.pool] * len(a.ch), activation=a.act))
with torch.no_grad():
    for l in m.layers:
        l.weight_f.mul_(a.gain)
        l.conv.bias.fill_(a.bias) if a.bias else None
m = m.to(memory_format=torch.channels_last)
groups = [list(l.parameters()) for l in m.layers] + [list(m.readout.parameters())]
if a.opt == "sgd":
    opt = torch.optim.SGD([{"params": g, "lr": lr} for g, lr in zip(groups, a.lrs)], momentum=a.mom, weight_decay=a.wd)
else:
    opt = torch.optim.AdamW([{"params": g, "lr": lr} for g, lr in zip(groups, a.lrs)], weight_decay=a.wd)
for g in opt.param_groups:
    g["lr0"] = g["lr"]
est = get_estimator(a.est)
ph = Phases(T=a.T, K=a.K, beta=a.beta, bptt_steps=a.K if entry(a.est).unrolled else None)
f = make_step(True, a.sched)
prep = lambda xb: normalize(xb, s.mean, s.std, a.xs, torch.float32).contiguous(memory_format=torch.channels_last)


def evaluate():
    wrong = 0
    with torch.no_grad():
        for i in range(0, len(s.test.y), 500):
            x = prep(s.test.x[i : i + 500])
            st = relax(m, x, m.init_states(x.shape[0], x), a.Teval or a.T, step_fn=f)
            wrong += (m.logits(st).argmax(1) != s.test.y[i : i + 500]).sum().item()
    return 1 - wrong / len(s.test.y)


n = len(s.train.y)
spe = n // a.B
total = int(a.epochs * spe)
t0 = time.time()
ev_every = spe // a.evals
stats = [0, 0]
for it in range(total):
    ep, st_ = divmod(it, spe)
    if st_ == 0:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(ep))
    frac = it / total
    scale = min(1.0, (it + 1) / a.warm) if a.warm else 1.0
    for g in opt.param_groups:
        g["lr"] = g["lr0"] * scale * (0.5 * (1 + math.cos(math.pi * frac)))
    idx = order[st_ * a.B : (st_ + 1) * a.B]
    gen = step_generator(0, ep, st_)
    xb = augment(s.train.x[idx], gen) if a.aug else s.train.x[idx]
    x, y = prep(xb), s.train.y[idx]
    e = est(m, x, y, ph, generator=gen, step_fn=f)
    set_grads(m, e.grads)
    opt.step()
    stats[0] += (e.logits.argmax(1) != y).sum().item()
    stats[1] += len(y)
    if (it + 1) % ev_every == 0 or it + 1 == total:
        acc = evaluate()
        print(
            json.dumps(
                {
                    "tag": a.tag,
                    "epoch": round((it + 1) / spe, 2),
                    "train_err": round(stats[0] / stats[1], 4),
                    "test_acc": round(acc, 4),
                    "time": round(time.time() - t0, 1),
                }
            ),
            flush=True,
        )
        stats = [0, 0]
