"""One home per concept: each run default written once, each check once (the library object and the
command line answer a bad value with the same message), the estimators' capabilities declared in the
registry and read there, and a trainer that knows no variant."""

import dataclasses
import re
import sys
from pathlib import Path

import pytest

from ep_compile import config, gradcheck, registry
from ep_compile.config import SECTIONS, Phases, RunConfig, SpikeConfig
from ep_compile.model import ARCHITECTURES, ConfigError, ModelConfig
from ep_compile.presets import PRESETS
from ep_compile.settings import default_of

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ep_compile"


def defaults() -> dict:
    """Every stored setting's one default, by its flat name."""
    out = {}
    for cls in [*SECTIONS.values(), RunConfig]:
        for f in dataclasses.fields(cls):
            if f.metadata.get("stored", True) and f.name not in SECTIONS and f.name != "spike":
                assert f.name not in out, f"{f.name} is a setting of two sections"
                out[f.name] = default_of(f)
    return out


def same(a, b) -> bool:
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return norm(a) == norm(b)


def test_each_run_default_is_written_once():
    """One section owns each setting; no preset or architecture restates a default; the tools
    (gradcheck) take their defaults from the sections; and no library module reads a setting with a
    fallback of its own (`cfg.get("x", default)`) or through dict emulation (`cfg["x"]`)."""
    from ep_compile import presets

    d = defaults()
    assert {"T", "K", "beta", "channels", "lrs", "dataset", "seed", "estimator"} <= set(d)
    bases = [
        v
        for k, v in vars(presets).items()
        if k.isupper() and isinstance(v, dict) and k not in ("PRESETS", "DESCRIPTIONS")
    ]
    for name, preset in PRESETS.items():  # a default comes back only to undo a base's override (DIGITS' beta)
        restated = [k for k, v in preset.items() if k in d and same(v, d[k])]
        undo = [k for k in restated if any(k in b and not same(b[k], d[k]) for b in bases)]
        assert restated == undo, f"preset {name} restates the defaults of {sorted(set(restated) - set(undo))}"
    for name, arch in ARCHITECTURES.items():
        restated = [k for k, v in arch.items() if same(v, d[k])]
        assert not restated, f"architecture {name} restates the defaults of {restated}"
    parser = gradcheck.build_parser()
    for dest in ("T", "K", "seed", "vf_form"):
        assert parser.get_default(dest) == d[dest], dest
    assert Phases().T == d["T"] and ModelConfig().channels == d["channels"] and RunConfig().phases.K == d["K"]
    fallback = re.compile(r"\b(cfg|config)(\.get\(\"\w+\", |\[\")")
    files = [*PKG.glob("*.py"), ROOT / "experiments" / "cifar.py"]
    hits = [f"{p.name}: {line.strip()}" for p in files for line in p.read_text().splitlines() if fallback.search(line)]
    assert not hits, hits


BAD = [  # (library constructor, keyword, value, the command line's flags)
    (Phases, "T", 0, ["--T", "0"]),
    (Phases, "check_every", -3, ["--check-every", "-3"]),
    (Phases, "hep_points", 1, ["--estimator", "holomorphic", "--hep-points", "1"]),
    (ModelConfig, "dropout", [1.5, 0.0], ["--dropout", "1.5", "0"]),
    (ModelConfig, "init_gain", -1.0, ["--init-gain", "-1"]),
    (SpikeConfig, "lam", 2.0, ["--neuron", "spiking", "--spike-lam", "2"]),
    (config.OptimConfig, "momentum", 1.5, ["--momentum", "1.5"]),
    (config.DataConfig, "train_subset", 0, ["--train-subset", "0"]),
]


@pytest.mark.parametrize("cls,key,value,argv", BAD, ids=[f"{c.__name__}.{k}" for c, k, _, _ in BAD])
def test_each_check_exists_once(cls, key, value, argv, capsys):
    """A bad value gets the same message from the section (library use) and from cifar.py."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import cifar

    with pytest.raises(ConfigError) as lib:
        cls(**{key: value})
    assert cifar.main(argv + ["--out", "/nonexistent/ep_compile_test"]) == 2
    assert capsys.readouterr().err.strip() == f"cifar.py: error: {lib.value}"


def test_phase_lengths_are_checked_in_one_place(capsys):
    """K <= T: the same check (Phases.check_lengths) for a run and for gradcheck."""
    with pytest.raises(ConfigError) as lib:
        Phases(T=5, K=9).check_lengths()
    assert gradcheck.main(["--T", "5", "--K", "9"]) == 2
    assert capsys.readouterr().err.strip() == f"gradcheck: error: {lib.value}"


def test_the_registry_declares_what_each_estimator_honours_and_how_it_is_checked():
    """Every entry's honoured settings are among the optional ones, each optional setting has its
    'in use' test in config, and gradcheck covers exactly the entries that declare a mode."""
    assert set(config.IN_USE) == set(registry.OPTIONAL)
    for name, e in registry.ENTRIES.items():
        assert e.honours <= set(registry.OPTIONAL), name
        assert (e.gradcheck is None) == (e.unrolled or e.spiking), name
    assert set(gradcheck.GRADCHECK_ESTIMATORS) == {n for n, e in registry.ENTRIES.items() if e.gradcheck}
    assert registry.entry("bptt").honours >= {"bptt_steps"} and "tol" not in registry.entry("bptt").honours
    assert "amp" not in registry.entry("c-ep").honours and "hep_points" in registry.entry("holomorphic").honours


def test_the_trainer_knows_no_variant():
    """The loop reads no capability flag, neuron model or optimizer attribute: the iteration
    (registry.Entry.iterate), the inference (Entry.infer) and the optimizer's end-of-iteration hook
    (optim.end_of_iteration) come from their owners."""
    src = (PKG / "trainer.py").read_text()
    for word in ("time_local", "spiking", "neuron", "hasattr(", "complex_nudge", "unrolled", "optimizer.end_iteration"):
        assert word not in src, word
