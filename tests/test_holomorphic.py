"""Holomorphic EP: N = 2 is the symmetric estimate, the error against BPTT falls as |beta|^N, the
CLI paths (gradcheck, training) accept it and refuse what it cannot honour."""

import math

import pytest
import torch
from conftest import small_cfg

from ep_compile.dynamics import count_changes, step_evenodd
from ep_compile.estimators import ESTIMATORS, Phases, bptt, nudged_states, symmetric
from ep_compile.holomorphic import holomorphic, nudges
from ep_compile.model import ConfigError, EPNet

T, K = 150, 60


def rel(a, b):
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return ((a - b).norm() / b.norm()).item()


def setup(seed=0, **kw):
    torch.manual_seed(seed)
    model = EPNet(small_cfg(**kw)).double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (4,))
    return model, x, y


def test_nudges_cover_the_circle():
    for N in (2, 3, 4, 5, 8):
        pts, ws = nudges(N, 0.5)
        assert sum(ws) == N  # every point of the circle counted once (conjugates by the weight 2)
        assert all(abs(abs(p) - 0.5) < 1e-15 for p in pts)
    assert nudges(2, 1.0)[0] == [1 + 0j, -1 + 0j]


def test_registered_with_the_common_signature():
    assert ESTIMATORS["holomorphic"] is holomorphic
    model, x, y = setup()
    est = ESTIMATORS["holomorphic"](model, x, y, Phases(T=10, K=5, beta=0.5, hep_points=3), generator=None)
    assert len(est.grads) == len(list(model.parameters()))
    assert all(g.dtype == torch.float64 and torch.isfinite(g).all() for g in est.grads)
    assert est.info["hep_points"] == 3


def test_n2_equals_symmetric_when_everything_is_holomorphic():
    """holo-sigmoid and average pooling: nothing is frozen, so N = 2 runs the symmetric estimate's
    two phases exactly, at any beta."""
    model, x, y = setup(activation="holo-sigmoid", pools=["avg", "avg"])
    for beta in (1.0, 0.3):
        sym = symmetric(model, x, y, Phases(T=T, K=K, beta=beta)).grads
        hol = holomorphic(model, x, y, Phases(T=T, K=K, beta=beta, hep_points=2)).grads
        assert rel(hol, sym) < 1e-11, beta


@pytest.mark.parametrize("schedule", ["sync", "evenodd"])
def test_n2_equals_symmetric_with_max_pool_and_hard_sigmoid_where_nothing_flips(schedule):
    """Max pool and hard sigmoid: the winners and pieces of s* are kept; where the real nudged phases
    change none of them, N = 2 equals the symmetric estimate to rounding."""
    step_fn = step_evenodd if schedule == "evenodd" else None
    kw = {} if step_fn is None else {"step_fn": step_fn}
    model, x, y = setup(seed=1)
    beta = 1e-3
    est = symmetric(model, x, y, Phases(T=T, K=K, beta=beta), **kw)
    s_pos, s_neg = nudged_states(model, x, y, est.s_free, K, beta, True, **kw)
    for s, b in ((s_pos, beta), (s_neg, -beta)):  # the precondition, measured
        ch = count_changes(model, x, est.s_free, s, None, y, None, b)
        assert ch == {"clamp_region_changes": 0, "pool_winner_changes": 0}, ch
    hol = holomorphic(model, x, y, Phases(T=T, K=K, beta=beta, hep_points=2), **kw).grads
    assert rel(hol, est.grads) < 1e-8


@pytest.mark.parametrize("kw", [{}, {"activation": "holo-sigmoid"}, {"loss": "mse", "pools": ["avg", "max"]}])
def test_error_against_bptt_falls_as_beta_to_the_n(kw):
    """Max pool + hard sigmoid (winners and pieces from s*), holo-sigmoid, squared error: halving
    |beta| divides the error against BPTT(K) by about 2^N."""
    model, x, y = setup(**kw)
    ref = bptt(model, x, y, Phases(T=T, K=K, bptt_steps=K)).grads
    for N in (2, 3, 4):
        e1 = rel(holomorphic(model, x, y, Phases(T=T, K=K, beta=0.8, hep_points=N)).grads, ref)
        e2 = rel(holomorphic(model, x, y, Phases(T=T, K=K, beta=0.4, hep_points=N)).grads, ref)
        slope = math.log2(e1 / e2)
        assert N - 0.4 < slope < N + 0.6, (N, e1, e2, slope)
    # more points, smaller bias: ~(|beta| / R)^N, R the radius within which G(beta) stays holomorphic
    # (measured at |beta| = 1 with squared error, R ~ 2: N = 4 gives 7e-2, N = 8 5e-3)
    e4 = rel(holomorphic(model, x, y, Phases(T=T, K=K, beta=0.5, hep_points=4)).grads, ref)
    e8 = rel(holomorphic(model, x, y, Phases(T=T, K=K, beta=0.5, hep_points=8)).grads, ref)
    assert e8 < 1e-4 and e8 < e4 / 30, (e4, e8)


def test_beats_symmetric_at_large_beta_on_the_papers_net_kind():
    model, x, y = setup()
    ref = bptt(model, x, y, Phases(T=T, K=K, bptt_steps=K)).grads
    sym = rel(symmetric(model, x, y, Phases(T=T, K=K, beta=1.0)).grads, ref)
    hol = rel(holomorphic(model, x, y, Phases(T=T, K=K, beta=1.0, hep_points=4)).grads, ref)
    assert hol < 1e-3 and hol < sym / 50, (hol, sym)  # measured: 2.6e-4 vs ~0.1


def test_refusals():
    model, x, y = setup()
    with pytest.raises(ConfigError, match="--hep-points 1"):
        Phases(hep_points=1)
    with pytest.raises(ConfigError, match="fused"):
        holomorphic(model, x, y, Phases(T=5, K=2, fused=True))
    asym = EPNet(small_cfg(asymmetric=True)).double()
    with pytest.raises(ConfigError, match="symmetric weights"):
        holomorphic(asym, x, y, Phases(T=5, K=2))


def test_holo_sigmoid_has_no_onnx_form():
    from ep_compile.onnx_export import build_onnx

    with pytest.raises(ConfigError, match="holo-sigmoid"):
        build_onnx(EPNet(small_cfg(activation="holo-sigmoid")))


def test_gradcheck_rows(tmp_path):
    import json

    from ep_compile.gradcheck import main

    out = tmp_path / "gc.json"
    args = ["--T", "120", "--K", "50", "--betas", "0.5", "--estimators", "symmetric", "holomorphic"]
    assert main(args + ["--hep-points", "2", "4", "--json", str(out)]) == 0
    rows = {(r["estimator"], r["layer"]): r["rel_error"] for r in json.loads(out.read_text())["results"]}
    assert rows[("holomorphic-N4", "all")] < rows[("holomorphic-N2", "all")] / 20
    assert main(args + ["--hep-points", "1"]) == 2


@pytest.mark.slow
def test_holomorphic_learns_digits(tmp_path):
    """The digits ConvNet trained with holomorphic EP (N = 4, |beta| = 1): >= 95% test accuracy."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "hep"
    subprocess.run(
        [sys.executable, str(root / "experiments/cifar.py"), "--preset", "digits-ce-holomorphic"]
        + ["--no-compile", "--cpu", "--out", str(out)],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)},
        capture_output=True,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 1 - rows[-1]["test_error"] >= 0.95, rows[-1]
    assert json.loads((out / "config.json").read_text())["hep_points"] == 4
