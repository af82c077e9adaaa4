"""Why the `sync` ablation row stalls: how far synchronous and even/odd steps get towards the free
fixed point of a trained cifar10-cpu checkpoint, and how good the recipe's EP estimate (T=20, K=8,
beta=0.5) is under each schedule, in float64 on 64 training images.

For each schedule and step t it prints the largest one-step change max|s_{t+1} - s_t| and the
largest two-step change max|s_{t+2} - s_t| (a 2-cycle shows as a large one-step and a small
two-step change), the share of the 64 predictions that already agree with the settled ones, and
the cosine per weight of EP (T=20, K=8) against BPTT through 150 steps of the same schedule.
Usage: python benchmarks/recipe_pilots/sync_settling.py runs/ablation/sync/last.pt [more checkpoints]
"""

import sys

import torch
from common import cifar_splits, load_float64, weight_cosines

from ep_compile.data import preprocess
from ep_compile.dynamics import SCHEDULES, relax
from ep_compile.estimators import Phases, bptt, symmetric

CHECK = (5, 10, 20, 40, 100, 250)
torch.set_num_threads(1)
s = cifar_splits()


def settle(m, x, step_fn, steps=300):
    """States after every step of the free phase from the zero state, as a list."""
    out = []
    with torch.no_grad():
        relax(m, x, m.init_states(x.shape[0], x), steps + 2, step_fn=step_fn, callback=lambda t, st: out.append(st))
    return out


for path in sys.argv[1:]:
    ck, cfg, m = load_float64(path)
    x = preprocess(s.train.x[:64], cfg, torch.float64)  # (64, 3, 32, 32)
    y = s.train.y[:64]
    print(f"{path}: trained with schedule {cfg['schedule']}, epoch {ck['epoch']}")
    for name, step_fn in SCHEDULES.items():
        traj = settle(m, x, step_fn)
        final = m.logits(traj[-1]).argmax(1)
        for t in CHECK:
            one = max((a - b).abs().max().item() for a, b in zip(traj[t], traj[t - 1]))
            two = max((a - b).abs().max().item() for a, b in zip(traj[t + 1], traj[t - 1]))
            agree = (m.logits(traj[t - 1]).argmax(1) == final).double().mean().item()
            print(f"  {name:8s} t={t:3d}  one-step {one:.2e}  two-step {two:.2e}  predictions as settled {agree:.2f}")
        ref = bptt(m, x, y, Phases(T=150, K=60, bptt_steps=150), step_fn=step_fn)
        e = symmetric(m, x, y, Phases(T=20, K=8, beta=0.5), step_fn=step_fn)
        cos = weight_cosines(m, e.grads, ref.grads)
        print(f"  {name:8s} EP T20 K8 beta0.5 cos vs BPTT(150) per weight: " + " ".join(f"{c:.2f}" for c in cos))
