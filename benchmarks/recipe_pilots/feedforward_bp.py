"""Reference for the pilots: the same conv stack run feed-forward (no feedback, no dynamics) and
trained by ordinary backprop with Adam on the 10,000-image subset, with ReLU or the slope-1/2 hard
sigmoid. Usage: python benchmarks/recipe_pilots/feedforward_bp.py {relu|hs} STD_SCALE LR
"""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from ep_compile.checkpoint import step_generator
from ep_compile.data import augment, make_splits, normalize

torch.set_num_threads(1)
torch.manual_seed(0)
s = make_splits("cifar10", "../shared/data/cifar10-jpeg.tar.gz", 0, 10000, 2000, 0, None, log=lambda *x: None)
act = sys.argv[1]
xs = float(sys.argv[2])
lr = float(sys.argv[3])
ch = [32, 64, 128]
layers = []
c = 3
for co in ch:
    layers += [nn.Conv2d(c, co, 3, padding=1)]
    c = co
ro = nn.Linear(128 * 16, 10)
params = [p for l in layers for p in l.parameters()] + list(ro.parameters())
opt = torch.optim.Adam(params, lr=lr)


def f(x):
    for l in layers:
        x = F.max_pool2d(l(x), 2)
        x = F.relu(x) if act == "relu" else (x * 0.5).clamp(0, 1)
    return ro(x.flatten(1))


prep = lambda xb: normalize(xb, s.mean, s.std, xs, torch.float32)
n = len(s.train.y)
B = 64
for ep in range(2):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(ep))
    for st in range(n // B):
        idx = order[st * B : (st + 1) * B]
        x = prep(augment(s.train.x[idx], step_generator(0, ep, st)))
        y = s.train.y[idx]
        loss = F.cross_entropy(f(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (f(prep(s.test.x)).argmax(1) == s.test.y).float().mean().item()
    print(act, xs, lr, "epoch", ep + 1, "acc", acc, flush=True)
