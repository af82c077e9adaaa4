"""Saved outputs of chain nets, the reference the interaction graph must reproduce bit for bit.

    python tests/chain_outputs.py write    # once, with the code before skip interactions existed
    (tests/test_interactions.py compares against tests/data/chain_outputs.pt)

For a few chain nets (conv with max / avg / no pooling, dense, mse and ce, symmetric and
asymmetric), in float64 and one thread: the free states of both schedules, and the estimate of
every registered estimator the net admits (seeded generator, the trainer's apply_update summing).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import ep_compile as ep
from ep_compile.machine import describe

PATH = Path(__file__).parent / "data" / "chain_outputs.pt"

NETS = {
    "conv-max-ce": dict(in_shape=(1, 8, 8), channels=[4, 6], paddings=[1, 1], pools=["max"] * 2),
    "conv-avg-fc-mse": dict(
        in_shape=(1, 8, 8), channels=[4, 6], paddings=[1, 0], pools=["avg", "none"], fc=[7], loss="mse"
    ),
    "conv-max-asym-ce": dict(
        in_shape=(1, 8, 8), channels=[4, 6], paddings=[1, 1], pools=["max"] * 2, asymmetric=True, fc=[5]
    ),
    "mlp-ce-hs1": dict(in_shape=(1, 8, 8), channels=[], paddings=[], pools=[], fc=[9, 7], activation="hard-sigmoid-1"),
}


def outputs(name: str) -> dict:
    """Every output of net `name`: free states per schedule, then each admitted estimator's grads."""
    torch.manual_seed(0)
    model = ep.EPNet(ep.model_config(NETS[name], n_classes=5)).double()
    for p in model.parameters():  # larger weights than the default init: states off the clamp edges
        p.data.mul_(2.0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, *model.cfg.in_shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    out = {}
    for schedule in ("sync", "evenodd"):
        step_fn = ep.make_step(schedule=schedule)
        s = ep.relax(model, x, model.init_states(6, x), 12, step_fn=step_fn)
        out[f"free/{schedule}"] = [t.clone() for t in s]
        for est_name, entry in ep.ENTRIES.items():
            phases = ep.Phases(T=12, K=4, beta=0.3, hep_points=4)
            try:
                ep.registry.check_compatible(est_name, model)
                phases.require_beta(est_name)
            except ep.ConfigError:
                continue
            total = [torch.zeros_like(p) for p in model.parameters()]

            def apply_update(grads, k, K, total=total):
                for a, b in zip(total, grads):
                    a.add_(b)

            state = {k: v.clone() for k, v in model.state_dict().items()}
            gen = torch.Generator().manual_seed(2)
            try:
                est = entry.iterate(model, x, y, phases, apply_update, generator=gen, step_fn=step_fn)
            except ep.ConfigError:
                continue
            model.load_state_dict(state)
            out[f"est/{schedule}/{est_name}"] = [t.clone() for t in total] + [est.logits.clone()]
    return out


def all_outputs() -> dict:
    torch.set_num_threads(1)
    return {name: outputs(name) for name in NETS}


if __name__ == "__main__":
    if sys.argv[1:] != ["write"]:
        sys.exit("usage: python tests/chain_outputs.py write")
    if PATH.exists():
        sys.exit(f"{PATH} exists; delete it first to rewrite the reference")
    torch.save({"machine": describe(), "outputs": all_outputs()}, PATH)
    print(f"wrote {PATH}")
