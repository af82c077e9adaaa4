"""The explicit dynamics (App. D.2) equal sigma of the autograd gradient of Phi (Eq. 7)."""

import itertools

import pytest
import torch
from conftest import small_cfg

from ep_compile.dynamics import drive_autograd, preactivations, relax, residual, step, step_autograd
from ep_compile.model import EPNet, ModelConfig

CASES = [
    # (pools, paddings, fc, in_shape): max/avg/no pooling, odd conv sizes, conv->fc->out
    (["max", "max"], [1, 0], [], (1, 8, 8)),
    (["avg", "avg"], [1, 1], [5], (2, 9, 9)),
    (["none", "max"], [0, 1], [5, 3], (1, 7, 7)),
    (["max", "none"], [1, 0], [], (3, 10, 10)),
]


@pytest.mark.parametrize("case,loss,dropout", list(itertools.product(CASES, ["ce", "mse"], [False, True])))
def test_explicit_equals_autograd_of_phi(f64, case, loss, dropout):
    pools, pads, fc, in_shape = case
    n_hidden = 2 + len(fc)
    cfg = ModelConfig(
        in_shape=in_shape,
        channels=[3, 4],
        paddings=pads,
        pools=pools,
        fc=fc,
        loss=loss,
        n_classes=5,
        dropout=[0.3] * n_hidden if dropout else [],
    )
    torch.manual_seed(0)
    model = EPNet(cfg)
    B = 3
    x = torch.rand(B, *in_shape)
    y = torch.randint(0, 5, (B,))
    states = [torch.rand(B, *s) * 1.5 - 0.25 for s in model.state_shapes]  # some outside [0, 1] too
    masks = model.dropout_masks(B, x)
    assert (masks is not None) == dropout
    for beta in (None, 0.7, -0.3):
        us, _ = preactivations(model, x, states, masks, y, beta)
        ref = drive_autograd(model, x, states, masks, y, beta)
        for u, r in zip(us, ref):
            assert u.shape == r.shape
            torch.testing.assert_close(u, r, rtol=0, atol=1e-10)
            assert u.abs().max() > 1e-3  # a real drive, not two zeros
        for a, b in zip(step(model, x, states, masks, y, beta), step_autograd(model, x, states, masks, y, beta)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("activation,slope", [("hard-sigmoid", 0.5), ("hard-sigmoid-1", 1.0)])
def test_activation(activation, slope):
    model = EPNet(small_cfg(activation=activation))
    u = torch.linspace(-3, 3, 61)
    torch.testing.assert_close(model.sigma(u, 0), (u * slope).clamp(0, 1))


def test_batch_of_one_and_free_phase_converges(f64):
    torch.manual_seed(1)
    model = EPNet(small_cfg())
    x = torch.rand(1, 1, 8, 8)
    s = relax(model, x, model.init_states(1, x), 200)
    assert residual(model, x, s) < 1e-12
    assert all(t.shape[0] == 1 for t in s)


def test_dropped_units_stay_zero_through_every_phase(f64):
    torch.manual_seed(2)
    model = EPNet(small_cfg(dropout=[0.5, 0.0]))
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 4, (4,))
    masks = model.dropout_masks(4, x, torch.Generator().manual_seed(0))
    assert masks[1] is None
    dropped = masks[0] == 0
    assert 0 < dropped.double().mean() < 1
    kept = masks[0][~dropped]
    torch.testing.assert_close(kept, torch.full_like(kept, 2.0))  # 1 / (1 - p)
    # per-example masks differ across the batch
    assert not torch.equal(masks[0][0], masks[0][1])
    seen = []
    s = relax(model, x, model.init_states(4, x), 30, masks, callback=lambda t, s: seen.append(s[0]))
    relax(model, x, s, 10, masks, y, 0.5, callback=lambda t, s: seen.append(s[0]))
    relax(model, x, s, 10, masks, y, -0.5, callback=lambda t, s: seen.append(s[0]))
    assert all((t[dropped] == 0).all() for t in seen)
    assert any((t[~dropped] > 0).any() for t in seen)
    again = model.dropout_masks(4, x, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], masks[0])
