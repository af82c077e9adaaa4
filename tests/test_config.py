"""Bad input gets a clear error naming the bad value."""

from pathlib import Path

import pytest
import torch
from conftest import small_cfg

from ep_compile import gradcheck
from ep_compile.estimators import Phases, get_estimator, symmetric
from ep_compile.model import ARCHITECTURES, ConfigError, EPNet, ModelConfig, model_config


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(paddings=[1]), "paddings has 1 entries for 2 conv layers"),
        (dict(pools=["max", "max", "max"]), "pools has 3 entries for 2 conv layers"),
        (dict(pools=["max", "median"]), "unknown pool 'median'; valid: max, avg, none"),
        (dict(activation="relu"), "unknown activation 'relu'; did you mean 'relu6'"),
        (dict(loss="hinge"), "unknown loss 'hinge'"),
        (dict(in_shape=(1, 3, 3), paddings=[0, 0]), "leaves no pixels"),
        (dict(dropout=[0.1]), "dropout has 1 entries for 2 hidden"),
        (dict(dropout=[1.0, 0.0]), r"--dropout 1.0 0.0: expected probabilities in \[0, 1\)"),
    ],
)
def test_bad_model_config(kw, match):
    with pytest.raises(ConfigError, match=match):
        small_cfg(**kw)


@pytest.mark.parametrize(
    "kw,match", [(dict(T=0), "--T 0: expected an integer >= 1"), (dict(K=-2), "--K -2: expected an integer >= 1")]
)
def test_bad_phases(kw, match):
    with pytest.raises(ConfigError, match=match):
        Phases(**kw)


@pytest.mark.parametrize("beta", [0.0, -0.5])
def test_nudging_needs_positive_beta(beta):
    model = EPNet(small_cfg())
    with pytest.raises(ConfigError, match=f"beta must be > 0, got {beta}"):
        symmetric(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), Phases(T=2, K=2, beta=beta))


def test_input_shape_must_fit_first_layer():
    model = EPNet(small_cfg())
    with pytest.raises(
        ConfigError, match=r"input of shape \(2, 3, 8, 8\) does not fit the first layer: expected \(B, 1, 8, 8\)"
    ):
        symmetric(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), Phases(T=2, K=2, beta=0.1))


def test_unknown_estimator_lists_valid_ones():
    with pytest.raises(
        ConfigError,
        match="unknown estimator 'two-sided'; did you mean 'one-sided'\\? valid: one-sided, random-sign, symmetric, vf, vf-one-sided, kp-vf, kp-vf-one-sided, bptt",
    ):
        get_estimator("two-sided")


def test_presets_build_and_paper_net_shapes():
    cfg = model_config("cifar10")
    assert cfg.channels == [128, 256, 512, 512] and cfg.paddings == [1, 1, 1, 0]
    assert cfg.state_shapes() == [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 1, 1)]
    mse = model_config("cifar10", loss="mse")
    assert mse.state_shapes()[-1] == (10,)
    for name in ARCHITECTURES:
        EPNet(model_config(name))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_gradcheck_cli_bad_input_exits_2(capsys):
    assert gradcheck.main(["--betas", "0", "--T", "3", "--K", "2"]) == 2
    assert "beta must be > 0, got 0.0" in capsys.readouterr().err
    assert gradcheck.main(["--estimators", "nope", "--T", "3", "--K", "2"]) == 2
    assert "unknown estimator 'nope'; valid:" in capsys.readouterr().err
    assert gradcheck.main(["--arch", "mnist", "--data", "digits", "--T", "3", "--K", "2"]) == 2
    assert "--data digits gives (1, 8, 8) images" in capsys.readouterr().err


def import_graph() -> dict[str, set[str]]:
    """module -> the ep_compile modules it imports (module level and in functions)."""
    import ast

    pkg = Path(__file__).resolve().parents[1] / "ep_compile"
    edges = {}
    for f in pkg.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        edges[f.stem] = deps
    return edges


def floors(edges) -> dict[str, int]:
    """A module's floor: 0 if it imports nothing of the package, else 1 + the highest floor it imports."""
    out = {}

    def floor(m):
        if m not in out:
            out[m] = 1 + max((floor(d) for d in edges.get(m, ())), default=-1)
        return out[m]

    for m in edges:
        floor(m)
    return out


def test_import_graph_of_the_package_has_no_cycle():
    """Module-level and in-function relative imports of ep_compile/ form no cycle: the estimator
    modules register themselves into registry.py, which imports none of them."""
    edges = import_graph()
    done, stack = set(), []

    def visit(m):
        assert m not in stack, f"import cycle: {' -> '.join(stack[stack.index(m) :] + [m])}"
        if m in done:
            return
        stack.append(m)
        for d in edges.get(m, ()):
            visit(d)
        stack.pop()
        done.add(m)

    for m in edges:
        visit(m)
    assert "registry" in edges and edges["registry"] <= {"model"}
    from ep_compile.registry import ENTRIES

    assert ENTRIES["c-ep"].time_local and ENTRIES["spiking-c-ep"].spiking and ENTRIES["kp-vf"].needs_asymmetric


def test_layer_specs_drive_layers_metadata_and_mac_count():
    """One description per layer: the paper's net, counted by hand (App. E.1: 3x3 convs, paddings
    1-1-1-0, 2x2 max pools), and the ONNX metadata read from the same specs."""
    from ep_compile.onnx_export import layer_info

    model = EPNet(model_config("cifar10"))
    fwd = 32 * 32 * 128 * 27 + 16 * 16 * 256 * 1152 + 8 * 8 * 512 * 2304 + 2 * 2 * 512 * 4608
    feedback = 16 * 16 * 256 * 1152 + 8 * 8 * 512 * 2304 + 2 * 2 * 512 * 4608  # layer 1 feeds back to no state
    assert model.macs_per_step() == fwd + feedback == 324_403_200
    assert [s.conv_shape for s in model.specs] == [(128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 2, 2)]
    assert model.state_shapes == [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 1, 1)]
    info = layer_info(model)
    assert [d["conv_shape"] for d in info] == [list(s.conv_shape) for s in model.specs]
    assert all(tuple(layer.conv_hw) == s.conv_shape[1:] for layer, s in zip(model.layers, model.specs))
    mlp = EPNet(ModelConfig(in_shape=(1, 28, 28), channels=[], kernels=[], paddings=[], pools=[], fc=[512], loss="mse"))
    assert [s.kind for s in mlp.specs] == ["dense", "dense"] and mlp.macs_per_step() == 784 * 512 + 2 * 512 * 10


def test_run_config_presets_flags_and_stored_configs():
    """Every preset is a valid RunConfig; every setting with a flag is on the command line once; a
    stored config with an unknown key is refused by name."""
    import argparse

    from ep_compile.config import RunConfig, flag_fields
    from ep_compile.presets import PRESETS

    for name, preset in PRESETS.items():
        RunConfig.from_dict({**preset, "preset": name}).validate()
    parser = argparse.ArgumentParser()
    RunConfig.add_args(parser)
    flags = {a.dest for a in parser._actions}
    fields = {f.name if name != "spike" else f"spike_{f.name}" for name, f in flag_fields()}
    assert fields <= flags and {"compile", "augment"} <= flags
    with pytest.raises(ConfigError, match="bogus"):
        RunConfig.from_dict({"bogus": 1})
    cfg = RunConfig()  # typed sections, no dict emulation; the flat stored form round-trips
    assert cfg.phases.T == 250 and not hasattr(cfg, "__getitem__") and not hasattr(cfg, "T")
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_config_and_registry_sit_low_and_nothing_imports_the_trainer():
    """The floors of the package (docs/design.md): registry and config just above the model, data and
    checkpoints; no module of the package imports the trainer (only the experiment scripts do); and
    design.md's module table lists every module with the floor the imports give it."""
    import re

    edges = import_graph()
    fl = floors(edges)
    assert fl["registry"] == fl["model"] + 1 and fl["config"] == fl["model"] + 2, fl
    assert not [m for m, deps in edges.items() if "trainer" in deps]
    design = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)\.py` \| (\d+) \|", design, flags=re.M))
    assert {m: int(f) for m, f in rows.items()} == fl
