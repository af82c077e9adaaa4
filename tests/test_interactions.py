"""Interactions beyond the chain: skip interactions, strided convs, per-state clipped activations.

The chain nets are the special case: every output of tests/chain_outputs.py equals the saved one
(bit for bit on the machine kind that wrote it, to 1e-12 elsewhere). A net with skips is checked in
float64 against the equations: the explicit drive equals autograd of Phi (Eq. 7 summed over every
interaction), EP against BPTT shows error slopes ~1 (one-sided) and ~2 (symmetric) in beta.
"""

from __future__ import annotations

import math

import pytest
import torch
from chain_outputs import PATH, all_outputs

import ep_compile as ep
from ep_compile.dynamics import drive_autograd, preactivations
from ep_compile.machine import describe
from ep_compile.model import ConfigError, colour_classes


def test_chain_nets_reproduce_their_saved_outputs():
    saved = torch.load(PATH, weights_only=False)
    now = all_outputs()
    same_machine = {k: saved["machine"][k] for k in ("cpu_family_model", "torch")} == {
        k: describe()[k] for k in ("cpu_family_model", "torch")
    }
    assert now.keys() == saved["outputs"].keys()
    for net, outs in saved["outputs"].items():
        assert now[net].keys() == outs.keys(), net
        for key, tensors in outs.items():
            for a, b in zip(now[net][key], tensors):
                if same_machine:
                    assert torch.equal(a, b), (net, key)
                else:
                    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"{net} {key}")


SKIP_NET = dict(  # states 1 (4,8,8) 2 (6,4,4) 3 (5,4,4) 4 (7,); skips 0->2 (stride), 1->3 (max), 1->4, 2->4
    in_shape=(2, 8, 8),
    channels=[4, 6, 5],
    paddings=[1, 1, 1],
    pools=["none", "stride", "none"],
    fc=[7],
    skips=["0:2", "1:3:k3:max", "1:4", "2:4"],
)


def skip_model(**over) -> ep.EPNet:
    torch.manual_seed(0)
    model = ep.EPNet(ep.model_config({**SKIP_NET, **over}, n_classes=3)).double()
    for p in model.parameters():
        p.data.mul_(1.5)
    return model


def batch(model, n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *model.cfg.in_shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("over", [{}, {"asymmetric": True}, {"loss": "mse"}, {"activations": ["relu6"] * 4}])
def test_drive_of_every_interaction_equals_autograd_of_phi(over):
    model = skip_model(**over)
    x, y = batch(model)
    s = [torch.rand(5, *sh, dtype=torch.float64) for sh in model.state_shapes]
    for beta in (None, 0.7):
        us, _ = preactivations(model, x, s, y=y, beta=beta)
        ref = drive_autograd(model, x, s, y=y, beta=beta)
        for u, r in zip(us, ref):
            torch.testing.assert_close(u, r, rtol=1e-12, atol=1e-12)


def test_phi_is_the_sum_over_interactions_written_from_eq7():
    """Phi = sum over interactions of s^dst . P(w * s^src), computed here with plain torch ops."""
    model = skip_model()
    x, _ = batch(model)
    s = [torch.rand(5, *sh, dtype=torch.float64) for sh in model.state_shapes]
    F = torch.nn.functional
    L = [x] + s
    c1, c2, c3, f1 = model.layers
    k02, k13, k14, k24 = model.skips
    ref = (L[1] * F.conv2d(L[0], c1.conv.weight, c1.conv.bias, padding=1)).sum((1, 2, 3))
    ref += (L[2] * F.conv2d(L[1], c2.conv.weight, c2.conv.bias, stride=2, padding=1)).sum((1, 2, 3))
    ref += (L[3] * F.conv2d(L[2], c3.conv.weight, c3.conv.bias, padding=1)).sum((1, 2, 3))
    ref += (L[4] * F.linear(L[3].flatten(1), f1.lin.weight, f1.lin.bias)).sum(1)
    ref += (L[2] * F.conv2d(L[0], k02.conv.weight, stride=2)).sum((1, 2, 3))
    ref += (L[3] * F.max_pool2d(F.conv2d(L[1], k13.conv.weight, padding=1), 2)).sum((1, 2, 3))
    ref += (L[4] * F.linear(L[1].flatten(1), k14.lin.weight)).sum(1)
    ref += (L[4] * F.linear(L[2].flatten(1), k24.lin.weight)).sum(1)
    torch.testing.assert_close(model.phi(x, s), ref, rtol=1e-12, atol=1e-12)
    assert all(sk.conv.bias is None if hasattr(sk, "conv") else sk.lin.bias is None for sk in model.skips)


def _bptt_grad(model, x, y, T):
    phases = ep.Phases(T=T, K=T, beta=0.1)
    return ep.get_estimator("bptt")(model, x, y, phases).grads


def test_ep_matches_bptt_with_slopes_one_and_two_in_beta():
    """At a settled fixed point, |EP - dL/dtheta| ~ beta (one-sided) and ~ beta^2 (symmetric); betas
    small enough that no unit changes its clamp piece or pool winner between s* and s^beta."""
    model = skip_model()
    for p in model.parameters():
        p.data.mul_(0.5)  # a contracting net: settles to 1e-15 in T steps
    x, y = batch(model)
    T = 200
    ref = torch.cat([g.flatten() for g in _bptt_grad(model, x, y, T)])
    slopes = {}
    for name in ("one-sided", "symmetric"):
        errs = []
        for beta in (2e-3, 1e-3):
            est = ep.get_estimator(name)(model, x, y, ep.Phases(T=T, K=T, beta=beta))
            errs.append((torch.cat([g.flatten() for g in est.grads]) - ref).norm().item())
        slopes[name] = math.log(errs[0] / errs[1]) / math.log(2)
        assert errs[1] < 1e-2 * ref.norm().item(), (name, errs)
    assert 0.8 < slopes["one-sided"] < 1.2, slopes
    assert 1.8 < slopes["symmetric"] < 2.2, slopes


def test_colouring_of_hopfield_resnet13_graph_and_chain():
    edges = [(0, 1), (1, 2), (0, 2), (2, 3), (2, 4), (3, 4), (4, 5), (4, 6), (5, 6), (6, 7), (6, 8), (7, 8), (8, 9)]
    classes = colour_classes(9, edges)
    assert classes == [[0, 2, 4, 6, 8], [1, 5], [3, 7]]
    for a, b in edges:
        if a > 0:
            assert not any(a - 1 in c and b - 1 in c for c in classes)
    assert colour_classes(5, [(n, n + 1) for n in range(5)]) == [[0, 2, 4], [1, 3]]


def test_evenodd_on_a_skip_net_reaches_the_synchronous_fixed_point():
    """Four colour classes here (1->3, 1->4, 2->4 link every pair); small weights: one fixed point."""
    model = skip_model()
    assert model.colours == [[0], [1], [2], [3]]
    for p in model.parameters():
        p.data.mul_(0.3)
    x, _ = batch(model)
    s0 = model.init_states(5, x)
    a = ep.relax(model, x, s0, 200, step_fn=ep.make_step(schedule="sync"))
    b = ep.relax(model, x, s0, 200, step_fn=ep.make_step(schedule="evenodd"))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "name,form",
    [("relu6", (1.0, 0.0, 6.0)), ("clipped-relu-2.5", (1.0, 0.0, 2.5)), ("hard-sigmoid", (0.5, 0.0, 1.0))],
)
def test_clipped_activations(name, form):
    model = skip_model(activation=name)
    assert model.acts == [form] * 4
    u = torch.linspace(-3, 9, 25, dtype=torch.float64)
    torch.testing.assert_close(model.sigma(u, 0), (u * form[0]).clamp(form[1], form[2]))


@pytest.mark.parametrize(
    "over,msg",
    [
        ({"skips": ["0:1"]}, "a chain layer links them"),
        ({"skips": ["2:9"]}, "needs 0 <= SRC < DST - 1"),
        ({"skips": ["0:2", "0:2"]}, "given twice"),
        ({"skips": ["0:2:k2"]}, "the kernel must be odd"),
        ({"skips": ["0-2"]}, "expected SRC:DST"),
        ({"skips": ["0:3:k3:none"]}, "gives"),
        ({"activation": "clipped-relu-0"}, "ceiling"),
        ({"activations": ["relu6"]}, "4 state layers"),
        ({"init_gains": [1.0]}, "8 interactions"),
    ],
)
def test_bad_graphs_are_refused_in_one_line(over, msg):
    with pytest.raises(ConfigError, match=msg):
        ep.model_config({**SKIP_NET, **over}, n_classes=3)


def test_init_gains_scale_each_interaction():
    gains = [0.5, 1.0, 2.0, 1.0, 3.0, 1.0, 1.0, 0.25]
    a, b = skip_model(), skip_model(init_gains=gains)
    for la, lb, g in zip(a.interactions(), b.interactions(), gains):
        torch.testing.assert_close(lb.weight_f, la.weight_f * g)


def test_export_and_spiking_refuse_what_they_cannot_run_in_one_line():
    from ep_compile.config import check_spiking

    meta = {p.key: p.value for p in ep.build_onnx(skip_model()).metadata_props}
    assert meta["ep_compile.format_version"] == "3"  # a graph net exports (onnxruntime: tests/test_onnx.py)
    with pytest.raises(ConfigError, match="'holo-sigmoid' .* has no ONNX / C\\+\\+ runtime form"):
        ep.build_onnx(skip_model(activation="holo-sigmoid"))
    with pytest.raises(ConfigError, match="binary spikes decode rates in"):
        check_spiking(skip_model(activation="relu6"))
    check_spiking(skip_model())  # hard sigmoid on every state: the spiking form applies


@pytest.mark.parametrize("name", ["symmetric", "one-sided", "random-sign", "holomorphic", "spiking-symmetric"])
def test_symmetric_estimators_run_on_a_skip_net(name):
    model = skip_model()
    x, y = batch(model)
    est = ep.get_estimator(name)(model, x, y, ep.Phases(T=10, K=4, beta=0.2), generator=torch.Generator())
    assert all(torch.isfinite(g).all() for g in est.grads)
    names = dict(ep.layer_groups(model))
    if name == "spiking-symmetric":  # 10 steps of binary spikes: some skips see no rate change yet
        return
    for skip in ("skip0_2", "skip1_3", "skip1_4", "skip2_4"):  # every skip weight gets an estimate
        assert est.grads[names[skip][0]].abs().sum() > 0, (name, skip)


@pytest.mark.parametrize("name", ["kp-vf", "kp-vf-one-sided"])
def test_kp_vf_on_a_skip_net_with_wb_equal_wf_gives_ep(name):
    """With every w^b set to w^f, KP-VF is symmetric EP (one-sided EP for its one-sided form), and
    each skip's w^b gets the same average as its w^f."""
    model = skip_model(asymmetric=True)
    for layer in model.interactions():
        if layer.weight_b is not None:
            layer.weight_b.data.copy_(layer.weight_f.data)
    sym = skip_model()
    sym.load_state_dict({k: v for k, v in model.state_dict().items() if "weight_b" not in k})
    x, y = batch(model)
    phases = ep.Phases(T=30, K=10, beta=0.05)
    est = ep.get_estimator(name)(model, x, y, phases)
    ref_name = {"kp-vf": "symmetric", "kp-vf-one-sided": "one-sided"}[name]
    ref = ep.get_estimator(ref_name)(sym, x, y, phases)
    groups, ref_groups = dict(ep.layer_groups(model)), dict(ep.layer_groups(sym))
    for g, idx in ref_groups.items():
        for i, j in zip(groups[g], idx):
            torch.testing.assert_close(est.grads[i], ref.grads[j], rtol=1e-9, atol=1e-12, msg=f"{name} {g}")
    for g in ("skip1_3_b", "skip1_4_b", "skip2_4_b"):
        torch.testing.assert_close(est.grads[groups[g][0]], est.grads[groups[g[:-2]][0]])


def test_vf_on_a_skip_net_is_eq_41_42_written_out():
    """VF (linearized, Eq. 41-42) on the skips: w^f of skip a->b gets -<delta s^b, d/dw P(w * s*^a)>,
    w^b gets -<P^-1(s*^b) through w^b, delta s^a>; checked against autograd of those inner products."""
    model = skip_model(asymmetric=True)
    x, y = batch(model)
    phases = ep.Phases(T=30, K=10, beta=0.05)
    est = ep.get_estimator("vf")(model, x, y, phases)
    with torch.no_grad():
        s_free = ep.relax(model, x, model.init_states(5, x), 30)
        s_pos = ep.relax(model, x, s_free, 10, y=y, beta=0.05)
        s_neg = ep.relax(model, x, s_free, 10, y=y, beta=-0.05)
    L = [x] + s_free
    delta = [(p - n) / 0.1 for p, n in zip(s_pos, s_neg)]
    groups = dict(ep.layer_groups(model))
    params = list(model.parameters())
    for sk in model.skips:
        w = sk.weight_f
        fwd = (sk(L[sk.src])[0] * delta[sk.dst - 1]).sum() / 5
        (g,) = torch.autograd.grad(-fwd, w)
        torch.testing.assert_close(est.grads[groups[f"skip{sk.src}_{sk.dst}"][0]], g, rtol=1e-9, atol=1e-12)
        if sk.weight_b is None:
            continue
        ctx = sk.feedback_ctx(L[sk.src], sk(L[sk.src])[1])
        back = (sk.feedback(L[sk.dst], ctx) * delta[sk.src - 1]).sum() / 5
        (gb,) = torch.autograd.grad(-back, sk.weight_b)
        i = groups[f"skip{sk.src}_{sk.dst}_b"][0]
        assert params[i] is sk.weight_b
        torch.testing.assert_close(est.grads[i], gb, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "preset",
    ["cifar10-hopfield-resnet13", "cifar10-hopfield-vgg5", "cifar100-hopfield-resnet13", "cifar100-hopfield-vgg5"],
)
def test_field_presets_parse_and_run_two_iterations(preset):
    """The presets' own net, estimator and optimizer; phases shortened to 3 / 2 steps, batch 2."""
    from ep_compile.config import RunConfig
    from ep_compile.optim import make_optimizer
    from ep_compile.presets import PRESETS

    cfg = RunConfig.from_dict(PRESETS[preset])
    n_classes = 100 if preset.startswith("cifar100") else 10
    model = ep.EPNet(ep.model_config(cfg.model.to_dict(), n_classes=n_classes))
    if "resnet13" in preset:
        assert [(s.src, s.dst) for s in model.skip_specs] == [(0, 2), (2, 4), (4, 6), (6, 8)]
        assert model.state_shapes[1] == (128, 16, 16) and model.state_shapes[-1] == (n_classes,)
        assert len(model.colours) == 3  # the triangles 2-3-4, 4-5-6, 6-7-8
    opt = make_optimizer(model, cfg.optim)
    phases = ep.Phases(T=3, K=2, beta=cfg.phases.beta, schedule=cfg.phases.schedule)
    step_fn = ep.make_step(schedule=cfg.phases.schedule)
    g = torch.Generator().manual_seed(0)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        x, y = torch.rand(2, 3, 32, 32, generator=g), torch.randint(0, n_classes, (2,), generator=g)
        est = ep.entry(cfg.estimator).fn(model, x, y, phases, step_fn=step_fn)
        ep.set_grads(model, est.grads)
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    "cont,shot,asym",
    [
        ("c-ep", "one-sided", False),
        ("c-ep-symmetric", "symmetric", False),
        ("c-kpvf", "kp-vf-one-sided", True),
        ("c-kpvf-symmetric", "kp-vf", True),
    ],
)
def test_time_local_rules_on_a_skip_net_telescope_to_their_one_shot_forms(cont, shot, asym):
    """At a tiny continual rate the weights stay put, so the time-local increments of C-EP and
    C-KPVF add up exactly to the one-shot estimate, skips' weights included."""
    model = skip_model(asymmetric=asym)
    x, y = batch(model)
    ph = ep.Phases(T=40, K=10, beta=0.05, lr=1e-12)
    a = torch.cat([t.flatten() for t in ep.get_estimator(cont)(model, x, y, ph).grads])
    b = torch.cat([t.flatten() for t in ep.get_estimator(shot)(model, x, y, ph).grads])
    assert (a - b).norm() < 1e-6 * b.norm(), (cont, ((a - b).norm() / b.norm()).item())


@pytest.mark.parametrize("cont,shot", [("c-vf", "vf-one-sided"), ("c-vf-symmetric", "vf")])
def test_continual_vf_on_a_skip_net_follows_its_one_shot_form(cont, shot):
    """C-VF's increments pair each post-synaptic change with the pre-synaptic state of the same step,
    so at a tiny rate they reach the one-shot VF estimate up to the pre-synaptic state's change along
    the phase, O(beta): the gap shrinks with beta, skips' forward and backward weights included."""
    model = skip_model(asymmetric=True)
    x, y = batch(model)
    errs = []
    for beta in (0.02, 0.01):
        ph = ep.Phases(T=80, K=25, beta=beta, lr=1e-10)
        a = torch.cat([t.flatten() for t in ep.get_estimator(cont)(model, x, y, ph).grads])
        b = torch.cat([t.flatten() for t in ep.get_estimator(shot)(model, x, y, ph).grads])
        errs.append(((a - b).norm() / b.norm()).item())
    assert errs[1] < 2e-3 and errs[1] < 0.7 * errs[0], (cont, errs)
    skip_grads = ep.get_estimator(cont)(model, x, y, ph).grads[-sum(1 for _ in model.skips.parameters()) :]
    assert all(g.abs().sum() > 0 for g in skip_grads)  # the skips' weights get increments


def test_memory_estimate_counts_the_skip_weights():
    """The estimate made before anything is allocated reads every interaction, skips included."""
    from ep_compile.config import RunConfig, memory_estimate

    chain = RunConfig.from_dict({**SKIP_NET, "skips": [], "n_classes": 3})
    skips = RunConfig.from_dict({**SKIP_NET, "n_classes": 3})
    extra = sum(p.numel() for p in skip_model().skips.parameters())
    assert memory_estimate(skips) - memory_estimate(chain) == 4 * 6 * extra
