"""What a run reports besides its metrics rows: the alignment angle of forward and backward weights
(Eq. 52), the time to each test accuracy, and the curves (Fig. 4/5 and Fig. 7 style PNGs).
"""

from __future__ import annotations

import math
from pathlib import Path


def alignment_angles(model) -> dict:
    """Angle in degrees between forward and backward weights per layer (Eq. 52), for models that
    have separate backward weights; {} otherwise."""
    out = {}
    for n, layer in enumerate(getattr(model, "layers", [])):
        wb = getattr(layer, "weight_b", None)
        if wb is None:
            continue
        wf = layer.weight_f
        cos = (wf * wb).sum() / (wf.norm() * wb.norm()).clamp_min(1e-30)
        out[f"layer{n + 1}"] = math.degrees(math.acos(max(-1.0, min(1.0, cos.item()))))
    return out


def time_to_accuracy(history, levels=(0.5, 0.6, 0.65, 0.7)) -> dict:
    """Wall seconds at the first evaluation whose test accuracy reached each level (None: never)."""
    out = {}
    for level in levels:
        hit = [r["wall_seconds"] for r in history if "wall_seconds" in r and 1 - r["test_error"] >= level]
        out[f"{round(100 * level)}%"] = hit[0] if hit else None
    return out


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(5, 3.5))


def _save(plt, fig, ax, path: Path, ylabel: str, title: str, epochs) -> None:
    """Axis labels, legend and a readable epoch axis: integer ticks, and half an epoch of margin so a
    one-epoch run shows its points rather than an axis of 0.96-1.04."""
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if epochs:
        ax.set_xlim(min(min(epochs), 1) - 0.5, max(epochs) + 0.5)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(metrics: list[dict], path: Path, title: str = "") -> None:
    """Train (blue, dashed, circles), validation (green, dotted, squares) and test error (red, solid,
    triangles) over epochs, Fig. 4/5 style. Rows written inside an epoch (--eval-every) add test
    points only."""
    plt, fig, ax = _axes()
    full = [m for m in metrics if not m.get("partial")]
    ep = [m["epoch"] for m in full]
    ax.plot(ep, [100 * m["train_error"] for m in full], color="tab:blue", ls="--", marker="o", ms=4, label="train")
    if full and all(m.get("val_error") is not None for m in full):
        ax.plot(
            ep, [100 * m["val_error"] for m in full], color="tab:green", ls=":", marker="s", ms=4, label="validation"
        )
    test_ep = [m["epoch"] for m in metrics]
    ax.plot(test_ep, [100 * m["test_error"] for m in metrics], color="tab:red", ls="-", marker="^", ms=4, label="test")
    _save(plt, fig, ax, path, "error (%)", title, test_ep)


def plot_alignment(metrics: list[dict], path: Path, title: str = "") -> None:
    """Angle between forward and backward weights per layer over epochs (Eq. 52, Fig. 7 style)."""
    plt, fig, ax = _axes()
    rows = [m for m in metrics if "alignment_deg" in m]
    markers = "os^vD<>p"
    for i, name in enumerate(rows[-1]["alignment_deg"]):
        vals = [m["alignment_deg"][name] for m in rows]
        ax.plot([m["epoch"] for m in rows], vals, marker=markers[i % len(markers)], ms=4, label=name)
    _save(plt, fig, ax, path, "angle (degrees)", title, [m["epoch"] for m in rows])
