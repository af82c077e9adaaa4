"""The two forms of VF's backward-weight update (Eq. 41-42 linearised at s*, and the form of the
code behind the paper's Table 2) against a hand computation with explicit loops."""

import itertools

import pytest
import torch

from ep_compile.estimators import Phases, vf_gradient
from ep_compile.model import ConfigError, EPNet, ModelConfig, layer_groups


def hand_phi_b_grad(w, pre, post, padding):
    """d/dw sum_{c,i,j} post[c,i,j] * max over the 2x2 window (i,j) of (w * pre)[c], per example
    summed: for each window the gradient is the input patch at the winning position."""
    B, cin, H, W = pre.shape
    cout, _, k, _ = w.shape
    xp = torch.nn.functional.pad(pre, (padding,) * 4)
    Hc, Wc = H + 2 * padding - k + 1, W + 2 * padding - k + 1
    g = torch.zeros_like(w)
    for b, c in itertools.product(range(B), range(cout)):
        conv = torch.zeros(Hc, Wc, dtype=w.dtype)
        for a, d in itertools.product(range(Hc), range(Wc)):
            conv[a, d] = (w[c] * xp[b, :, a : a + k, d : d + k]).sum()
        for i, j in itertools.product(range(Hc // 2), range(Wc // 2)):
            win = [(2 * i + u, 2 * j + v) for u in range(2) for v in range(2)]
            a, d = max(win, key=lambda ad: conv[ad].item())
            g[c] += post[b, c, i, j] * xp[b, :, a : a + k, d : d + k]
    return g


@pytest.fixture
def setup():
    torch.manual_seed(3)
    cfg = ModelConfig(
        in_shape=(1, 6, 6), channels=[2, 3], paddings=[1, 1], pools=["max", "max"], asymmetric=True, loss="ce"
    )
    model = EPNet(cfg).double()
    B = 2
    x = torch.rand(B, 1, 6, 6, dtype=torch.float64)
    y = torch.tensor([1, 4])
    shapes = model.state_shapes
    s_star = [torch.rand(B, *s, dtype=torch.float64) for s in shapes]
    # s^+-beta: s* moved enough that some backward max-pool winners change
    s_pos = [s + 0.3 * torch.randn_like(s) for s in s_star]
    s_neg = [s - 0.3 * torch.randn_like(s) for s in s_star]
    return model, x, y, s_star, s_pos, s_neg


def test_paper_code_form_equals_hand_computation(setup):
    model, x, y, s_star, s_pos, s_neg = setup
    beta = 0.25
    names = dict(layer_groups(model))
    params = list(model.parameters())
    layer = model.layers[1]
    g = vf_gradient(model, x, y, s_neg, -beta, s_pos, beta, s_star=s_star, form="paper-code")
    # backward weight of conv2: -(1/B) [d(s*^2 . P(w^b * s^{1,+})) - d(s*^2 . P(w^b * s^{1,-}))] / (2 beta)
    hand = hand_phi_b_grad(layer.weight_b.detach(), s_pos[0], s_star[1], 1) - hand_phi_b_grad(
        layer.weight_b.detach(), s_neg[0], s_star[1], 1
    )
    hand = -hand / (2 * beta) / x.shape[0]
    got = g[names["conv2_b"][0]]
    assert torch.allclose(got, hand, atol=1e-12), (got - hand).abs().max()
    # the linearised form uses s*'s winners: different here (winners changed), same forward weights
    lin = vf_gradient(model, x, y, s_neg, -beta, s_pos, beta, s_star=s_star, form="linearized")
    assert (lin[names["conv2_b"][0]] - got).norm() > 1e-3 * got.norm()
    for i in names["conv1"] + names["conv2"] + names["readout"]:
        assert torch.allclose(lin[i], g[i], atol=1e-14)
    assert params[names["conv2_b"][0]] is layer.weight_b


def test_forms_agree_when_no_winner_changes(setup):
    """With s^+-beta = s* + tiny moves no pool winner changes and the forms coincide."""
    model, x, y, s_star, _, _ = setup
    eps = 1e-7
    s_pos = [s + eps * torch.randn_like(s) for s in s_star]
    s_neg = [s - eps * torch.randn_like(s) for s in s_star]
    a = vf_gradient(model, x, y, s_neg, -eps, s_pos, eps, s_star=s_star, form="paper-code")
    b = vf_gradient(model, x, y, s_neg, -eps, s_pos, eps, s_star=s_star, form="linearized")
    for ga, gb in zip(a, b):
        assert torch.allclose(ga, gb, rtol=1e-6, atol=1e-9)


def test_unknown_vf_form_is_refused():
    with pytest.raises(ConfigError, match="paper-code"):
        Phases(vf_form="papercode")
