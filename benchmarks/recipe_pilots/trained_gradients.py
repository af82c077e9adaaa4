"""Gradient quality on a trained checkpoint: steps the even/odd free phase needs, how many units sit
in the linear region, and the cosine of EP (T, K, beta) and truncated BPTT against a long BPTT, per
weight, in float64; with `init` instead of a checkpoint, the cifar10-cpu net at PyTorch's default
init (seed 0), also printing the spread of its read-out logits.
Usage: python benchmarks/recipe_pilots/trained_gradients.py runs/RUN/last.pt | init
"""

import sys

import torch
from common import cifar_splits, load_float64, weight_cosines

from ep_compile.config import RunConfig, model_from_config
from ep_compile.data import preprocess
from ep_compile.dynamics import relax_until, step_evenodd
from ep_compile.estimators import Phases, bptt, symmetric
from ep_compile.presets import PRESETS

torch.set_num_threads(1)
s = cifar_splits()
if sys.argv[1] == "init":
    cfg = RunConfig.from_dict({**PRESETS["cifar10-cpu"], "mean": s.mean, "std": s.std}).to_dict()
    torch.manual_seed(0)
    ck = {"epoch": 0, "step": 0}
    m = model_from_config(cfg)
else:
    ck, cfg, m = load_float64(sys.argv[1])
m = m.double()
x = preprocess(s.train.x[:64], cfg, torch.float64)
y = s.train.y[:64]
with torch.no_grad():
    st, n, res = relax_until(m, x, m.init_states(64, x), 400, 1e-7, 1, step_fn=step_evenodd)
print("epoch", ck["epoch"], "step", ck["step"], "evenodd steps to 1e-7:", n, "res", res)
print("mean state / fraction linear", " ".join(f"{t.mean():.3f}/{((t > 0) & (t < 1)).float().mean():.2f}" for t in st))
print("read-out logits std", m.logits(st).std().item())
ref = bptt(m, x, y, Phases(T=150, K=60, bptt_steps=150), step_fn=step_evenodd)
for T, K, beta in [(10, 4, 0.5), (20, 8, 0.5), (60, 30, 0.5), (60, 30, 0.1), (10, 4, 0.2), (10, 8, 0.5)]:
    e = symmetric(m, x, y, Phases(T=T, K=K, beta=beta), step_fn=step_evenodd)
    cos = weight_cosines(m, e.grads, ref.grads)
    print(f"T{T} K{K} beta{beta} cos vs converged BPTT", " ".join(f"{c:.2f}" for c in cos), flush=True)
b = bptt(m, x, y, Phases(T=10, K=4, bptt_steps=4), step_fn=step_evenodd)
print("BPTT T10 trunc4 cos", " ".join(f"{c:.2f}" for c in weight_cosines(m, b.grads, ref.grads)))
