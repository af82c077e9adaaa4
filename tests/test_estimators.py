"""Estimators against BPTT, BPTT against finite differences, and the theorem (Eq. 6, 13-14)."""

import math

import pytest
import torch
from conftest import small_cfg

from ep_compile.dynamics import count_changes, relax, residual
from ep_compile.estimators import ESTIMATORS, Phases, bptt, one_sided, random_sign, set_grads, symmetric
from ep_compile.gradcheck import bptt_per_step, ep_per_step
from ep_compile.model import EPNet


def flat(gs):
    return torch.cat([g.flatten() for g in gs])


def rel(a, b):
    return ((flat(a) - flat(b)).norm() / flat(b).norm()).item()


def setup(loss="ce", seed=0, batch=4, **kw):
    torch.manual_seed(seed)
    model = EPNet(small_cfg(loss=loss, **kw))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (batch,), generator=g)
    return model, x, y


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_bptt_matches_finite_differences(f64, loss):
    """BPTT through T explicit steps == central differences of the loss after T steps."""
    model, x, y = setup(loss, seed=1, batch=2, channels=[2, 3], fc=[4])
    T = 12
    est = bptt(model, x, y, Phases(T=T, K=1, beta=1.0))

    def loss_after_T():
        with torch.no_grad():
            s = relax(model, x, model.init_states(2, x), T)
            return model.loss(s, y).mean().item()

    gen = torch.Generator().manual_seed(0)
    eps, checked = 1e-6, 0
    for p, g in zip(model.parameters(), est.grads):
        flat_p = p.data.view(-1)
        for i in torch.randperm(flat_p.numel(), generator=gen)[:6].tolist():
            old = flat_p[i].item()
            flat_p[i] = old + eps
            up = loss_after_T()
            flat_p[i] = old - eps
            down = loss_after_T()
            flat_p[i] = old
            fd = (up - down) / (2 * eps)
            assert abs(fd - g.view(-1)[i].item()) <= 1e-7 + 1e-5 * abs(fd), (p.shape, i, fd, g.view(-1)[i].item())
            checked += abs(fd) > 1e-8
    assert checked >= 10  # the comparison saw real, non-zero gradients


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_theorem_bias_orders(f64, loss):
    """Converged conv net, float64: symmetric error ~ beta^2, one-sided ~ beta, both < 1% at small beta."""
    model, x, y = setup(loss)
    T, K = 300, 120
    ref = bptt(model, x, y, Phases(T=T, K=K, beta=1.0)).grads
    assert flat(ref).norm() > 1e-6
    s_free = relax(model, x, model.init_states(4, x), T)
    assert residual(model, x, s_free) < 1e-13  # converged free phase, as the theorem assumes
    betas = [1e-3, 5e-4, 2.5e-4, 1.25e-4]
    err_one, err_sym = [], []
    for b in betas:
        ph = Phases(T=T, K=K, beta=b)
        err_one.append(rel(one_sided(model, x, y, ph).grads, ref))
        err_sym.append(rel(symmetric(model, x, y, ph).grads, ref))
        s_b = relax(model, x, s_free, K, None, y, b)
        assert count_changes(model, x, s_free, s_b, None, y, None, b) == {
            "clamp_region_changes": 0,
            "pool_winner_changes": 0,
        }

    def slope(errs):
        lx, ly = [math.log(b) for b in betas], [math.log(e) for e in errs]
        mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
        return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)

    assert 0.9 < slope(err_one) < 1.1, err_one
    assert 1.8 < slope(err_sym) < 2.2, err_sym
    assert err_one[-1] < 1e-2 and err_sym[-1] < 1e-2
    assert err_sym[-1] < err_one[-1] / 10


@pytest.mark.parametrize("kind", ["one-sided", "symmetric"])
def test_step_by_step_ep_equals_truncated_bptt(f64, kind):
    """Eq. 6: for t = 1..K the EP estimate after t nudged steps matches BPTT truncated to t steps."""
    model, x, y = setup("ce", seed=5, fc=[5])
    T, K, beta = 250, 20, 1e-5
    ref_steps, traj = bptt_per_step(model, x, y, T, K)
    ests, _ = ep_per_step(model, x, y, traj[-1], K, beta, kind)
    errs = [rel(e, r) for e, r in zip(ests, ref_steps)]
    assert max(errs) < 1e-3, errs
    # the estimates really move with t (the check is not trivially comparing constants)
    assert rel(ref_steps[0], ref_steps[-1]) > 1e-2
    # the last step equals the bptt estimator truncated to K steps
    trunc = bptt(model, x, y, Phases(T=T, K=K, beta=1.0, bptt_steps=K)).grads
    assert rel(ref_steps[-1], trunc) < 1e-10


def test_random_sign_reproducible_from_seed(f64):
    model, x, y = setup("ce")
    ph = Phases(T=40, K=10, beta=0.2)
    signs = []
    for seed in range(8):
        a = random_sign(model, x, y, ph, generator=torch.Generator().manual_seed(seed))
        b = random_sign(model, x, y, ph, generator=torch.Generator().manual_seed(seed))
        assert a.info["beta"] == b.info["beta"]
        for ga, gb in zip(a.grads, b.grads):
            assert torch.equal(ga, gb)
        signs.append(a.info["beta"] > 0)
    assert any(signs) and not all(signs)  # both signs occur
    neg = one_sided(model, x, y, ph, sign=-1.0)
    pick = next(s for s in range(8) if not signs[s])
    again = random_sign(model, x, y, ph, generator=torch.Generator().manual_seed(pick))
    assert rel(again.grads, neg.grads) == 0.0


def test_dropout_estimate_uses_one_mask(f64):
    """With dropout, the symmetric estimate equals the one built by hand from phases run with the
    same mask; a different mask gives a different estimate."""
    model, x, y = setup("ce", dropout=[0.3, 0.2])
    masks = model.dropout_masks(4, x, torch.Generator().manual_seed(1))
    ph = Phases(T=60, K=15, beta=0.1)
    est = symmetric(model, x, y, ph, masks=masks)
    s = relax(model, x, model.init_states(4, x), 60, masks)
    sp = relax(model, x, s, 15, masks, y, 0.1)
    sn = relax(model, x, s, 15, masks, y, -0.1)
    from ep_compile.estimators import ep_gradient

    assert rel(est.grads, ep_gradient(model, x, y, sn, -0.1, sp, 0.1, masks)) < 1e-12
    other = symmetric(model, x, y, ph, masks=model.dropout_masks(4, x, torch.Generator().manual_seed(2)))
    assert rel(other.grads, est.grads) > 1e-3


def test_ep_phases_build_no_graph_and_set_grads():
    model, x, y = setup("ce")
    est = symmetric(model, x, y, Phases(T=10, K=4, beta=0.5))
    assert all(not s.requires_grad for s in est.s_free)
    assert all(not g.requires_grad for g in est.grads)
    set_grads(model, est.grads)
    for p, g in zip(model.parameters(), est.grads):
        assert p.grad is not None and torch.equal(p.grad, g)
    assert set(ESTIMATORS) >= {"one-sided", "random-sign", "symmetric", "bptt"}
