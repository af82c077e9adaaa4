"""Why a row stays at chance: how the units of a trained cifar10-cpu checkpoint sit after its own
free phase (T steps of its schedule from the zero state), on 250 test images (every 40th: the test
set is stored by class), in float64.

Per layer it prints the share of units clamped at 0, clamped at 1 and in the linear part of the
activation, and the weight norm; then the read-out's logit spread and the share of images given
each class. A layer whose units are all clamped passes no signal: its logits cannot depend on the
input, and a nudge at the read-out reaches the layers below only if it un-clamps one of them.
Usage: python benchmarks/recipe_pilots/saturation.py runs/ablation/paper-lrs/last.pt [more checkpoints]
"""

import sys

import torch
from common import cifar_splits, load_float64

from ep_compile.data import preprocess
from ep_compile.dynamics import SCHEDULES, relax

torch.set_num_threads(1)
s = cifar_splits()

for path in sys.argv[1:]:
    ck, cfg, m = load_float64(path)
    x = preprocess(s.test.x[::40], cfg, torch.float64)  # (250, 3, 32, 32)
    with torch.no_grad():
        states = relax(m, x, m.init_states(x.shape[0], x), cfg["T"], step_fn=SCHEDULES[cfg["schedule"]])
        logits = m.logits(states)  # (250, 10)
    print(f"{path}: epoch {ck['epoch']}, {cfg['optimizer']} lrs {cfg['lrs']}, T={cfg['T']} {cfg['schedule']}")
    weights = [(n, p) for n, p in m.named_parameters() if n.endswith("weight")]
    for i, (st, (name, w)) in enumerate(zip(states, weights)):  # state i is the output of weight i
        zero = (st <= 0).double().mean().item()
        one = (st >= 1).double().mean().item()
        print(
            f"  state {i} {tuple(st.shape[1:])}: at 0 {zero:.3f}  at 1 {one:.3f}  linear {1 - zero - one:.3f}"
            f"  |{name}| {w.norm().item():.2f}"
        )
    counts = torch.bincount(logits.argmax(1), minlength=10).double() / x.shape[0]
    print(
        f"  logits std over images {logits.std(0).mean().item():.3e}; share per class "
        + " ".join(f"{c:.2f}" for c in counts)
    )
