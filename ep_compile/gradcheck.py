"""The gradient check of the paper (Eq. 6, Fig. 2, App. G): EP step by step vs truncated BPTT.

    python -m ep_compile.gradcheck --arch digits-small --data digits --T 200 --K 30 \\
        --betas 0.1 0.01 0.001 --estimators one-sided symmetric --dtype float64 --json gc.json

For t = 1..K, the EP estimate after t nudged steps (Eq. 6) is compared with BPTT truncated to the last
t steps of the free phase (Eq. 22). The report gives, per estimator, beta and layer, the relative error
||g_est - g_bptt|| / ||g_bptt|| of the final (t = K) estimate and the fraction of weights whose sign
agrees, plus how many units changed activation region or pool winner between s* and s^+-beta: those
add first-order errors at large beta that no estimator cancels, so a user can tell them from a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .config import DTYPES, Phases, RunOptions, add_flags
from .continual import sgd_restored
from .dynamics import count_changes, relax, step
from .estimators import ESTIMATORS, SPECS, get_estimator, nudged_states, rule_gradient
from .holomorphic import holomorphic
from .model import ConfigError, EPNet, layer_groups, model_config
from .registry import ENTRIES, GRADCHECK_MODES, check_compatible, entry

# the estimators gradcheck compares with BPTT (the reference): those whose registry entry declares a
# gradcheck mode (registry.GRADCHECK_MODES), in registration order
GRADCHECK_ESTIMATORS = tuple(n for n, e in ENTRIES.items() if e.gradcheck in GRADCHECK_MODES)


def bptt_per_step(model: EPNet, x, y, T: int, K: int, masks=None, step_fn=step):
    """[grad_BPTT(t) for t = 1..K] (App. A): the loss gradient through the last t free steps, by one
    backward sweep of one-step vector-Jacobian products. Also returns s_{T-K..T}."""
    params, n = list(model.parameters()), len(model.state_shapes)
    with torch.no_grad():
        traj = [relax(model, x, model.init_states(x.shape[0], x), T - K, masks, step_fn=step_fn)]
        for _ in range(K):
            traj.append(step_fn(model, x, traj[-1], masks))
    with torch.enable_grad():
        s_T = [t.detach().requires_grad_(True) for t in traj[-1]]
        g = torch.autograd.grad(model.loss(s_T, y, masks).mean(), s_T + params, allow_unused=True)
    adj = [torch.zeros_like(s) if a is None else a for s, a in zip(s_T, g[:n])]  # dL/ds_T
    direct = [torch.zeros_like(p) if d is None else d for p, d in zip(params, g[n:])]  # read-out
    acc, out = [torch.zeros_like(p) for p in params], []
    for t in range(1, K + 1):
        with torch.enable_grad():
            s_prev = [s.detach().requires_grad_(True) for s in traj[K - t]]
            new = step_fn(model, x, s_prev, masks)
            g = torch.autograd.grad(new, s_prev + params, grad_outputs=adj, allow_unused=True)
        adj = [torch.zeros_like(s) if a is None else a for s, a in zip(s_prev, g[:n])]
        acc = [a if d is None else a + d for a, d in zip(acc, g[n:])]
        out.append([a + d for a, d in zip(acc, direct)])
    return out, traj


def ep_per_step(
    model: EPNet, x, y, s_free, K: int, beta: float, name: str, masks=None, step_fn=step, vf_form="linearized"
):
    """[estimate of EP estimator `name` after t nudged steps, t = 1..K] (Eq. 6); beta may be negative
    for one-sided forms. Also returns the final nudged states [s^beta_K, s^-beta_K (two-sided)]."""
    check_compatible(name, model)
    seen = {"pos": [], "neg": []}
    s_pos, s_neg = nudged_states(
        model, x, y, s_free, K, beta, SPECS[name][1], masks, step_fn, callback=lambda t, which, s: seen[which].append(s)
    )
    negs = seen["neg"] or [None] * K
    ests = [rule_gradient(name, model, x, y, s_free, p, n, beta, masks, vf_form) for p, n in zip(seen["pos"], negs)]
    return ests, [s for s in (s_pos, s_neg) if s is not None]


def continual_per_step(model: EPNet, x, y, T: int, K: int, beta: float, name: str, lr: float):
    """Running sums of a continual estimator's increments after each nudged step (the C-EP form of
    Eq. 6), taking real SGD steps of size lr; the weights are put back afterwards."""
    params = list(model.parameters())
    acc, per = [torch.zeros_like(p) for p in params], []
    with sgd_restored(params, lr) as sgd:

        def update(g, k, K_):
            nonlocal acc
            sgd(g, k, K_)
            acc = [a + gi for a, gi in zip(acc, g)]
            per.append(acc)

        ESTIMATORS[name](model, x, y, Phases(T=T, K=K, beta=beta), apply_update=update)
    return per


def compare(model: EPNet, est, ref) -> list[dict]:
    """Per layer (and 'all'): relative error and sign agreement of est vs ref."""
    rows = []
    for name, idx in layer_groups(model) + [("all", list(range(len(ref))))]:
        a = torch.cat([est[i].flatten() for i in idx])
        b = torch.cat([ref[i].flatten() for i in idx])
        rows.append(
            {
                "layer": name,
                "rel_error": ((a - b).norm() / b.norm().clamp_min(1e-300)).item(),
                "sign_agreement": (a.sign() == b.sign()).double().mean().item(),
            }
        )
    return rows


def load_batch(data: str, in_shape, batch: int, n_classes: int, dtype, generator, data_root=None):
    """A batch (x, y): uniform random inputs in [0, 1], real scikit-learn digits (8x8 grey), or real
    CIFAR-10 / Fashion-MNIST test images (torchvision or --data-root), normalised as training does."""
    if data == "random":
        x = torch.rand((batch, *in_shape), generator=generator, dtype=dtype)
        return x, torch.randint(0, n_classes, (batch,), generator=generator)
    if data == "digits":
        from sklearn.datasets import load_digits

        if tuple(in_shape) != (1, 8, 8):
            raise ConfigError(f"--data digits gives (1, 8, 8) images; the model expects {tuple(in_shape)}")
        d = load_digits()
        idx = torch.randperm(len(d.target), generator=generator)[:batch]
        x = torch.tensor(d.images, dtype=dtype)[idx].unsqueeze(1) / 16.0
        return x, torch.tensor(d.target)[idx]
    if data in ("cifar10", "fashion-mnist"):
        from .data import make_splits, normalize

        sp = make_splits(data, data_root, val_size=0, test_subset=batch, seed=int(generator.initial_seed()) % 1000)
        if tuple(sp.test.x.shape[1:]) != tuple(in_shape):
            raise ConfigError(
                f"--data {data} gives {tuple(sp.test.x.shape[1:])} images; the model expects {tuple(in_shape)}"
            )
        return normalize(sp.test.x, sp.mean, sp.std, 3.0, dtype), sp.test.y
    raise ConfigError(f"unknown --data {data!r}; valid: random, digits, cifar10, fashion-mnist")


def run(args) -> dict:
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    if args.batch < 1:
        raise ConfigError(f"--batch {args.batch}: expected an integer >= 1")
    phases = Phases(T=args.T, K=args.K, vf_form=args.vf_form)  # the phases section's own checks
    phases.check_lengths()  # BPTT is truncated to the last K free steps
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path and (Path(path).is_dir() or not Path(path).parent.is_dir()):
            raise ConfigError(f"{flag} {path}: expected a file path in an existing folder")
    cfg = model_config(args.arch, loss=args.loss, asymmetric=True if args.asymmetric else None)
    model = EPNet(cfg).to(dtype)
    gen = torch.Generator().manual_seed(args.seed)
    x, y = load_batch(args.data, cfg.in_shape, args.batch, cfg.n_classes, dtype, gen, args.data_root)
    for name in args.estimators:
        get_estimator(name)  # unknown names fail with the list of valid ones
        if name not in GRADCHECK_ESTIMATORS:
            raise ConfigError(f"gradcheck compares EP estimators ({', '.join(GRADCHECK_ESTIMATORS)}), not {name!r}")
        check_compatible(name, model)
    for b in args.betas:
        Phases(T=args.T, K=args.K, beta=b).require_beta("gradcheck")
    for N in args.hep_points:
        Phases(hep_points=N)  # validates N
    model.check_input(x)
    t0 = time.time()

    def progress(what: str) -> None:  # long checks say where they are (stderr: stdout keeps the table)
        print(f"gradcheck [{time.time() - t0:6.1f} s] {what}", file=sys.stderr, flush=True)

    progress(f"BPTT reference: {args.T} free steps, then {args.K} truncated steps backpropagated one by one")
    ref_steps, traj = bptt_per_step(model, x, y, args.T, args.K)
    s_free = traj[-1]
    results, changes, curves = [], [], {}  # curves: beta -> {label: [estimate after t nudged steps]}
    for beta in args.betas:
        for name in args.estimators:
            progress(f"{name}, beta={beta:g}")
            mode = entry(name).gradcheck  # how this estimator is compared (registry.GRADCHECK_MODES)
            if mode == "continual":
                per = continual_per_step(model, x, y, args.T, args.K, beta, name, args.continual_lr)
                for row in compare(model, per[-1], ref_steps[-1]):
                    results.append({"estimator": name, "beta": beta, **row})
                if not entry(name).two_sided:  # one phase: the running sum after t steps vs BPTT(t)
                    results[-1]["rel_error_per_step"] = [
                        compare(model, e, r)[-1]["rel_error"] for e, r in zip(per, ref_steps)
                    ]
                continue
            if mode == "final":  # holomorphic EP: final estimate only, one row per number of points
                for N in args.hep_points:
                    est = holomorphic(model, x, y, Phases(T=args.T, K=args.K, beta=beta, hep_points=N))
                    for row in compare(model, est.grads, ref_steps[-1]):
                        results.append({"estimator": f"holomorphic-N{N}", "beta": beta, **row})
                continue
            kind, b = name, beta
            if entry(name).random_sign:  # one phase, its sign drawn here
                kind, b = "one-sided", beta * (1 if torch.randint(0, 2, (1,), generator=gen).item() else -1)
            ests, nudged = ep_per_step(model, x, y, s_free, args.K, b, kind, vf_form=args.vf_form)
            label = f"{name} ({'+' if b > 0 else '-'}beta)" if entry(name).random_sign else name
            curves.setdefault(beta, {})[label] = ests
            for row in compare(model, ests[-1], ref_steps[-1]):
                results.append({"estimator": name, "beta": beta, **row})
            per_t = [compare(model, e, r)[-1]["rel_error"] for e, r in zip(ests, ref_steps)]
            results[-1]["rel_error_per_step"] = per_t
            for s, sgn in zip(nudged, (1, -1)):
                changes.append(
                    {"estimator": name, "beta": sgn * b, **count_changes(model, x, s_free, s, None, y, None, sgn * b)}
                )
    report = {"config": {**vars(args), "model": cfg.to_dict()}, "results": results, "changes": changes}
    _print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        one = "kp-vf-one-sided" if cfg.asymmetric else "one-sided"
        for beta in args.betas:  # Fig. 2 for every beta: the one-sided pair, every requested rule, BPTT
            rest = dict(curves.get(beta, {}))
            plus = rest.pop(one, None)  # a requested one-sided row is the '+beta' curve: not run again
            if plus is None:
                plus = ep_per_step(model, x, y, s_free, args.K, beta, one)[0]
            minus = ep_per_step(model, x, y, s_free, args.K, -beta, one)[0]
            c = {f"{one} +beta": plus, f"{one} -beta": minus, **rest, "BPTT": ref_steps}
            path = args.plot if len(args.betas) == 1 else _beta_path(args.plot, beta)
            plot(model, c, beta, path, args.seed)
            print(f"wrote {path}")
    return report


def _beta_path(path: str, beta: float) -> str:
    stem, dot, ext = path.rpartition(".")
    return f"{stem}_beta{beta:g}.{ext}" if dot else f"{path}_beta{beta:g}"


def _print(report):
    print(f"{'estimator':<12} {'beta':>9} {'layer':<8} {'rel_error':>10} {'sign_agree':>10}")
    for r in report["results"]:
        print(
            f"{r['estimator']:<12} {r['beta']:>9.3g} {r['layer']:<8} {r['rel_error']:>10.3e} {r['sign_agreement']:>10.4f}"
        )
    print("units that changed activation region / pool winner between s* and s^beta:")
    for c in report["changes"]:
        print(
            f"  {c['estimator']:<12} beta={c['beta']:+.3g}: {c['clamp_region_changes']} region, "
            f"{c['pool_winner_changes']} pool winner"
        )


def plot(model: EPNet, curves: dict, beta: float, path: str, seed: int, per_layer: int = 3):
    """Fig. 2 / Fig. 8: for a few weights of each layer, the estimates over t = 1..K. The weights are
    drawn from `seed` alone among those BPTT moves, so the figures of several betas show the same
    weights; every curve has its own colour, line style and marker (placed at staggered steps), so a
    curve lying on another one stays visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = layer_groups(model)
    fig, axes = plt.subplots(len(groups), per_layer, figsize=(3.2 * per_layer, 2.4 * len(groups)), squeeze=False)
    palette = ["k", "tab:gray", "tab:green", "tab:blue", "tab:purple", "tab:cyan", "tab:olive", "tab:orange"]
    markers = "ovs^D<>p"
    others = [k for k in curves if k != "BPTT"]
    styles = {
        k: dict(color=palette[i % len(palette)], ls="--" if "one-sided" in k else "-", lw=1.2, marker=markers[i % 8])
        for i, k in enumerate(others)
    }
    styles["BPTT"] = dict(color="r", ls="-", lw=2.0, marker=None, alpha=0.6)
    gen = torch.Generator().manual_seed(seed)
    for row, (name, idx) in enumerate(groups):
        w = list(model.parameters())[idx[0]]  # the layer's weight tensor
        live = curves["BPTT"][-1][idx[0]].flatten().nonzero().flatten()  # weights BPTT moves
        pool = live if live.numel() >= per_layer else torch.arange(w.numel())
        picks = pool[torch.randperm(pool.numel(), generator=gen)[:per_layer]]
        for col, k in enumerate(picks.tolist()):
            ax = axes[row][col]
            for i, (label, seq) in enumerate(curves.items()):
                vals = [-g[idx[0]].flatten()[k].item() for g in seq]  # -dL/dw, as the paper plots
                every = max(len(curves), len(vals) // 6)  # each curve's markers at its own steps
                ax.plot(
                    range(1, len(vals) + 1), vals, ms=3.5, markevery=(i % every, every), label=label, **styles[label]
                )
            ax.set_title(f"{name} w[{k}]", fontsize=8, pad=12)  # room for the axis offset (x1e-5 ...)
            ax.tick_params(labelsize=6)
            ax.yaxis.get_offset_text().set_fontsize(6)
            if row == len(groups) - 1:
                ax.set_xlabel("t (nudged steps)", fontsize=7)
        axes[row][0].set_ylabel("-dL/dw", fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=7, frameon=False)
    fig.suptitle(f"EP (beta={beta:g}) vs BPTT over the nudged phase (Eq. 6)", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ep_compile.gradcheck", description=__doc__.split("\n")[0])
    p.add_argument(
        "--arch", default="digits-small", help="architecture name (model.ARCHITECTURES), JSON file or JSON string"
    )
    p.add_argument("--loss", choices=("ce", "mse"), default=None, help="override the output mode of the architecture")
    p.add_argument("--asymmetric", action="store_true", help="separate backward weights (for vf, kp-vf)")
    p.add_argument(
        "--data", default="random", help="random, digits (scikit-learn), cifar10 or fashion-mnist (real test images)"
    )
    p.add_argument(
        "--data-root", default=None, help="local CIFAR-10 / Fashion-MNIST (folder or .tar.gz), as for training"
    )
    p.add_argument("--batch", type=int, default=8, help="batch size")
    add_flags(p, Phases, ("T", "K"), K=" (and BPTT truncation)")
    p.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.01], help="nudging strengths (> 0)")
    p.add_argument(
        "--estimators",
        nargs="+",
        default=["one-sided", "random-sign", "symmetric"],
        help=f"EP estimators to check: {', '.join(GRADCHECK_ESTIMATORS)}",
    )
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float64", help="floating point precision")
    p.add_argument(
        "--continual-lr", type=float, default=1e-8, help="SGD step of the continual estimators (c-ep, c-vf, ...)"
    )
    add_flags(p, RunOptions, ("seed",))
    add_flags(p, Phases, ("vf_form",))
    p.add_argument(
        "--hep-points", type=int, nargs="+", default=[4], help="holomorphic: numbers of nudges N on the circle"
    )
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--plot", default=None, help="draw the Fig. 2 curves into this PNG")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except ConfigError as e:
        print(f"gradcheck: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
