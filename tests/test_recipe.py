"""The CPU CIFAR-10 recipe's pieces: its preset runs, the learning-rate schedule with warm-up,
AdamW, the init gain, test evaluations inside an epoch and the time-to-accuracy summary."""

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import small_cfg, train

from ep_compile.config import OptimConfig, RunConfig
from ep_compile.model import ConfigError, EPNet
from ep_compile.optim import lr_at, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 0.0, 10, warmup_epochs=1) == pytest.approx(0.1)
    assert lr_at(0.5, 1.0, 0.0, 10, warmup_epochs=1) == pytest.approx(0.55)
    assert lr_at(1.0, 1.0, 0.0, 10, warmup_epochs=1) == pytest.approx((1 + math.cos(math.pi / 10)) / 2)
    assert lr_at(5, 1.0, 0.0, 10) == pytest.approx(0.5)
    assert lr_at(20, 1.0, 1e-3, 10) == pytest.approx(1e-3)


def test_adam_optimizer_and_bad_name():
    torch.manual_seed(0)
    m = EPNet(small_cfg())
    opt = make_optimizer(m, OptimConfig(lrs=[1e-3] * 3, momentum=0.9, weight_decay=0.0, optimizer="adam"))
    assert isinstance(opt, torch.optim.AdamW) and [g["lr"] for g in opt.param_groups] == [1e-3] * 3
    with pytest.raises(ConfigError, match="unknown optimizer 'lbfgs'"):
        make_optimizer(m, OptimConfig(lrs=[1e-3] * 3, momentum=0.9, weight_decay=0.0, optimizer="lbfgs"))


def test_init_gain_scales_every_synapse_weight():
    torch.manual_seed(0)
    a = EPNet(small_cfg(asymmetric=True))
    torch.manual_seed(0)
    b = EPNet(small_cfg(asymmetric=True, init_gain=2.5))
    for la, lb in zip(a.layers, b.layers):
        torch.testing.assert_close(lb.weight_f, 2.5 * la.weight_f)
        if la.weight_b is not None:
            torch.testing.assert_close(lb.weight_b, 2.5 * la.weight_b)
    with pytest.raises(ConfigError, match="--init-gain"):
        small_cfg(init_gain=-1.0)


def test_eval_every_rows_and_time_to_accuracy(tmp_path):
    rows = train(
        tmp_path / "r",
        "--epochs",
        "2",
        "--eval-every",
        "0.5",
        "--optimizer",
        "adam",
        "--lrs",
        "1e-3",
        "1e-3",
        "5e-4",
        "--lr-per-step",
        "--warmup-epochs",
        "0.2",
    )
    assert [r["epoch"] for r in rows] == pytest.approx([0.5, 1, 1.5, 2], abs=0.01)
    assert [bool(r.get("partial")) for r in rows] == [True, False, True, False]
    walls = [r["wall_seconds"] for r in rows]
    assert walls == sorted(walls) and walls[0] > 0
    reached = json.loads((tmp_path / "r" / "time_to_accuracy.json").read_text())
    assert set(reached) == {"50%", "60%", "65%", "70%"}
    first60 = next(r["wall_seconds"] for r in rows if 1 - r["test_error"] >= 0.6)
    assert reached["60%"] == first60


@pytest.mark.skipif(not CIFAR.exists(), reason="no ../shared/data/cifar10-jpeg.tar.gz")
def test_cifar10_cpu_preset_runs_two_iterations(tmp_path):
    rows = train(
        tmp_path / "c",
        "--preset",
        "cifar10-cpu",
        "--data-root",
        str(CIFAR),
        "--train-subset",
        "128",
        "--test-subset",
        "100",
        "--epochs",
        "1",
    )
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["channels"] == [32, 64, 128, 256] and cfg["schedule"] == "evenodd" and cfg["optimizer"] == "adam"
    assert cfg["batch_size"] == 64 and cfg["val_size"] == 0  # 128 images: two iterations
    assert [r["epoch"] for r in rows] == [1] and "wall_seconds" in rows[0]
    assert all(0 <= r["test_error"] <= 1 for r in rows)


def test_every_preset_is_listed_and_builds(capsys, monkeypatch, tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import cifar

    assert cifar.main(["--list-presets"]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = [line[2:].split()[0] for line in out if line[:2] in ("* ", "  ") and line[2:3] != " "]
    assert listed == list(cifar.PRESETS)
    assert [line[2:].split()[0] for line in out if line.startswith("* ")][0] == "digits-ce-symmetric"  # marked
    built = {}
    monkeypatch.setattr(cifar, "training_function", lambda config, args: built.setdefault(config.run.preset, config))
    for name in cifar.PRESETS:
        assert cifar.main(["--preset", name, "--out", str(tmp_path / name)]) == 0, name
        assert built[name].estimator
    full = {n: RunConfig.from_dict(p) for n, p in cifar.PRESETS.items()}
    bptt_rows = [n for n, c in full.items() if c.estimator == "bptt" and c.phases.T == 250]
    assert bptt_rows and all(full[n].phases.bptt_steps == full[n].phases.K for n in bptt_rows)


def test_fresh_run_refuses_an_existing_run_folder(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "r"
    train(out, "--epochs", "1")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    cmd = [sys.executable, str(ROOT / "experiments" / "cifar.py"), "--epochs", "1", "--out", str(out), "--no-compile"]
    p = subprocess.run(cmd, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2 and "already holds a run" in p.stderr and str(out) in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert {q.name: q.read_bytes() for q in out.iterdir() if q.is_file()} == before
    rows = train(out, "--epochs", "1", "--overwrite")
    assert [r["epoch"] for r in rows] == [1]  # replaced, not appended


KINDS = {  # name -> (argv, two-phase, time-local, bptt, vf, spiking, holomorphic)
    "symmetric": (["--preset", "digits-ce-symmetric"], True, False, False, False, False, False),
    "one-sided": (
        ["--preset", "digits-ce-symmetric", "--estimator", "one-sided"],
        *(False, False, False, False, False, False),
    ),
    "bptt": (["--preset", "digits-ce-bptt"], False, False, True, False, False, False),
    "c-ep": (["--preset", "digits-cep-conv", "--estimator", "c-ep"], False, True, False, False, False, False),
    "vf": (["--preset", "digits-ce-vf"], True, False, False, True, False, False),
    "spiking": (["--preset", "digits-spiking"], True, False, False, False, True, False),
    "spiking-c-ep": (["--preset", "digits-spiking", "--estimator", "c-ep"], True, True, False, False, True, False),
    "holomorphic": (["--preset", "digits-ce-holomorphic"], False, False, False, False, False, True),
}
FLAGS = {  # flag argv -> predicate(two, local, bptt, vf, spiking, holomorphic): is it honoured?
    "--compile": lambda two, local, bp, vf, spk, holo: not spk,
    "--channels-last": lambda two, local, bp, vf, spk, holo: not spk,
    "--schedule evenodd": lambda two, local, bp, vf, spk, holo: not spk,
    "--tol 1e-3": lambda two, local, bp, vf, spk, holo: not spk and not bp,
    "--amp bf16": lambda two, local, bp, vf, spk, holo: not spk and not local and not holo,
    "--amp bf16-free": lambda two, local, bp, vf, spk, holo: not spk and not local and not holo,
    "--fused": lambda two, local, bp, vf, spk, holo: two and not spk,
    "--hep-points 8": lambda two, local, bp, vf, spk, holo: holo,
    "--vf-form paper-code": lambda two, local, bp, vf, spk, holo: vf,
    "--wd-compensation": lambda two, local, bp, vf, spk, holo: local,
    "--bptt-steps 5": lambda two, local, bp, vf, spk, holo: bp,
}


def test_no_flag_is_silently_ignored(capsys, monkeypatch):
    """Every (neuron mode / estimator, flag) pair is honoured (the config carries it) or refused with
    one line naming the flag."""
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import cifar

    seen = {}
    monkeypatch.setattr(cifar, "training_function", lambda config, args: seen.update(config=config))
    for kind, (argv, *traits) in KINDS.items():
        for flag, honoured in FLAGS.items():
            seen.clear()
            rc = cifar.main(argv + flag.split() + ["--out", "/nonexistent/ep_compile_test"])
            err = capsys.readouterr().err
            if honoured(*traits):
                assert rc == 0 and seen, (kind, flag, err)
            else:
                assert rc == 2 and not seen, (kind, flag)
                assert flag.split()[0] in err and len(err.strip().splitlines()) == 1, (kind, flag, err)


def test_resume_refuses_changes_applies_epochs_and_uses_the_files_folder(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import cifar

    out = tmp_path / "r"
    train(out, "--epochs", "1")
    (out / ".last.pt.tmp999").write_bytes(b"partial")
    before = (out / "last.pt").read_bytes()
    assert cifar.main(["--resume", str(out), "--lrs", "0.5", "0.5", "0.5", "--cpu", "--no-compile"]) == 2
    err = capsys.readouterr().err
    assert "--lrs [0.5, 0.5, 0.5] would change it" in err and len(err.strip().splitlines()) == 1
    assert cifar.main(["--resume", str(out / "last.pt"), "--out", str(tmp_path / "x"), "--cpu"]) == 2
    assert "drop --out" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before
    # a file means its folder; --epochs may change and is reported; stale temp files are removed
    assert cifar.main(["--resume", str(out / "last.pt"), "--epochs", "2", "--cpu", "--no-compile"]) == 0
    assert "resuming with epochs=2 (was 1)" in capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and not (out / ".last.pt.tmp999").exists()


@pytest.mark.slow
def test_accelerate_launch_without_config_matches_plain_python(tmp_path):
    """`accelerate launch` (no config file, one process) against plain python on digits: the same
    metrics, and the launcher's one-thread default replaced by the idle cores of the process."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf"), ACCELERATE_CONFIG_FILE=str(tmp_path / "none.yaml"))
    script = str(ROOT / "experiments" / "cifar.py")
    common = ["--epochs", "2", "--no-compile", "--cpu", "--dtype", "float64"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    a = subprocess.run(
        launcher + [script, *common, "--out", str(tmp_path / "a")], env=env, capture_output=True, text=True
    )
    b = subprocess.run(
        [sys.executable, script, *common, "--out", str(tmp_path / "b")], env=env, capture_output=True, text=True
    )
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
    cores = len(os.sched_getaffinity(0))
    import re

    said = re.search(
        rf"threads per process: (\d+) \((\d+) idle of {cores} cores \([0-9.]+ idle now\) / 1 local", a.stdout + a.stderr
    )
    assert said and said[1] == said[2] and 1 <= int(said[1]) <= cores, a.stdout + a.stderr
    ra = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(ra, rb, strict=True):
        for key in ("train_error", "train_loss", "val_error", "test_error"):
            assert x[key] == pytest.approx(y[key], abs=1e-9), key


def test_stop_at_accuracy_and_max_hours_end_a_run_early(tmp_path, capsys, monkeypatch):
    """--stop-at-accuracy ends after the first epoch at the target; --max-hours after the last epoch
    that fits the budget (the ablation runs of experiments/ablation.py use both)."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import cifar

    base = ["--no-compile", "--cpu", "--epochs", "6", "--T", "10", "--K", "4"]
    assert cifar.main(base + ["--out", str(tmp_path / "a"), "--stop-at-accuracy", "0.5"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) < 6 and 1 - rows[-1]["test_error"] >= 0.5 and all(1 - r["test_error"] < 0.5 for r in rows[:-1])
    assert cifar.main(base + ["--out", str(tmp_path / "b"), "--max-hours", "1e-6"]) == 0
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 1
    assert "stopping after epoch 1" in capsys.readouterr().out


def test_ablation_rows_launch_like_the_recipe_and_report_time_to_60(tmp_path, monkeypatch):
    """experiments/ablation.py: a row is the recipe plus its lever's flags under two processes (as
    the recipe was timed) or a resume of its folder; the report takes the first epoch at 60% and
    labels a row that never got there as a lower bound."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import ablation

    args = argparse.Namespace(out=str(tmp_path), data_root="D", hours=1.0, procs=2)
    cmd = ablation.command("sync", args)
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[cmd.index("--preset") + 1] == "cifar10-cpu" and cmd[-2:] == ["--schedule", "sync"]
    assert cmd[cmd.index("--max-hours") + 1] == "1.0" and cmd[cmd.index("--stop-at-accuracy") + 1] == "0.6"
    args.procs = 1
    (tmp_path / "beta-1").mkdir()
    (tmp_path / "beta-1" / "last.pt").write_bytes(b"")
    cmd = ablation.command("beta-1", args)
    assert "--multi_gpu" not in cmd and cmd[-3:] == ["--cpu", "--max-hours", "1.0"]  # a resume takes --hours
    assert cmd[cmd.index("--resume") + 1] == str(tmp_path / "beta-1")

    def write(row, accs):
        rows = [
            {"epoch": i + 1, "test_error": 1 - a, "wall_seconds": 100.0 * (i + 1), "epoch_seconds": 100.0}
            for i, a in enumerate(accs)
        ]
        (tmp_path / row).mkdir(exist_ok=True)
        (tmp_path / row / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("sync", [0.4, 0.55, 0.61, 0.65])
    write("beta-1", [0.3, 0.5])
    ablation.main(["--report-only", "--out", str(tmp_path)])
    rows = {r["row"]: r for r in json.loads((tmp_path / "summary.json").read_text())["rows"]}
    assert rows["sync"]["seconds_to_60"] == 300.0 and rows["sync"]["epochs_to_60"] == 3
    assert rows["beta-1"]["seconds_to_60"] is None and rows["beta-1"]["best_accuracy"] == pytest.approx(50.0)
    assert "not reached in 200 s (lower bound)" in (tmp_path / "table.md").read_text()
