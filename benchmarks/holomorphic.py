"""Holomorphic EP: its bias against BPTT as |beta| grows, and its cost per iteration against
symmetric EP. Prints two tables, writes JSON and a figure.

    python benchmarks/holomorphic.py --out benchmarks/holomorphic   # .json and .png

bias  float64, the digits ConvNet (conv 3x3 + 2x2 max pool, hard sigmoid, softmax read-out) at its
      PyTorch init, 16 real digits: relative error ||g - g_BPTT|| / ||g_BPTT|| of one-sided,
      symmetric and holomorphic N = 2, 4, 8 for |beta| from 0.01 to 1 (T = 150, K = 60; the
      reference is BPTT through the same last K steps).
cost  float32, one thread, seconds per training iteration (free phase + nudged phases + estimate),
      median of --repeats, symmetric and holomorphic N = 2, 4, 8 side by side, on the digits net
      (batch 64, T = 30, K = 10, the digits presets) and the cifar10-cpu net (batch 32, T = 20, K = 8).
"""

import argparse
import json
import statistics
import time

import torch

from ep_compile.data import load_source, preprocess
from ep_compile.dynamics import make_step
from ep_compile.estimators import ESTIMATORS, Phases, bptt
from ep_compile.model import EPNet, model_config
from ep_compile.registry import ENTRIES

BETAS = [0.01, 0.03, 0.1, 0.3, 0.5, 1.0]
ROWS = [("one-sided", 2), ("symmetric", 2), ("holomorphic", 2), ("holomorphic", 4), ("holomorphic", 8)]


def rel(a, b):
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return ((a - b).norm() / b.norm()).item()


def bias_table():
    torch.manual_seed(0)
    model = EPNet(model_config("digits")).double()
    _, test = load_source("digits")
    meta = {"mean": [0.3], "std": [0.37], "std_scale": 3.0}
    x, y = preprocess(test.x[:16], meta, torch.float64), test.y[:16]
    T, K = 150, 60
    ref = bptt(model, x, y, Phases(T=T, K=K, bptt_steps=K)).grads
    out = {}
    for name, N in ROWS:
        key = f"{name} N={N}" if ENTRIES[name].complex_nudge else name
        out[key] = [
            rel(ESTIMATORS[name](model, x, y, Phases(T=T, K=K, beta=b, hep_points=N)).grads, ref) for b in BETAS
        ]
    print(f"{'rel. error vs BPTT':<20}" + "".join(f"{b:>10g}" for b in BETAS))
    for k, v in out.items():
        print(f"{k:<20}" + "".join(f"{e:>10.2e}" for e in v))
    return out


def cost_table(repeats):
    torch.set_num_threads(1)
    setups = {
        "digits (batch 64, T=30, K=10)": (model_config("digits"), 64, 30, 10),
        "cifar10-cpu (batch 32, T=20, K=8)": (
            model_config("cifar10", channels=[32, 64, 128, 256], activation="hard-sigmoid-1"),
            32,
            20,
            8,
        ),
    }
    out = {}
    step_fn = make_step(False, "evenodd")
    for label, (cfg, B, T, K) in setups.items():
        torch.manual_seed(0)
        model = EPNet(cfg)
        x = torch.rand(B, *cfg.in_shape) * 0.3
        y = torch.randint(0, cfg.n_classes, (B,))
        row = {}
        for name, N in [("symmetric", 2), ("holomorphic", 2), ("holomorphic", 4), ("holomorphic", 8)]:
            ph = Phases(T=T, K=K, beta=1.0, hep_points=N)
            ESTIMATORS[name](model, x, y, ph, step_fn=step_fn)  # warm up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                ESTIMATORS[name](model, x, y, ph, step_fn=step_fn)
                times.append(time.perf_counter() - t0)
            row[f"{name} N={N}" if ENTRIES[name].complex_nudge else name] = statistics.median(times)
        out[label] = row
        base = row["symmetric"]
        print(f"\n{label}: s per iteration (ratio to symmetric), one thread, even/odd schedule")
        for k, v in row.items():
            print(f"  {k:<18} {v:8.4f} s  x{v / base:.2f}")
    return out


def plot(bias, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k, v in bias.items():
        ax.loglog(BETAS, v, marker="o", label=k)
    ax.set_xlabel("|beta|")
    ax.set_ylabel("||g - g_BPTT|| / ||g_BPTT||")
    ax.set_title("Bias of the estimate, digits ConvNet (float64)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/holomorphic", help="writes OUT.json and OUT.png")
    p.add_argument("--repeats", type=int, default=5, help="timed iterations per estimator (median)")
    args = p.parse_args()
    bias = bias_table()
    cost = cost_table(args.repeats)
    with open(args.out + ".json", "w") as f:
        json.dump({"betas": BETAS, "bias": bias, "seconds_per_iteration": cost}, f, indent=1)
    plot(bias, args.out + ".png")


if __name__ == "__main__":
    main()
