"""Nothing lost when a run fails late or dies early: a failing --overwrite leaves the old run byte for
byte as it was (in-process failure and SIGKILL before the first checkpoint), a run killed before its
first checkpoint starts again without --overwrite, and metrics.jsonl never runs ahead of last.pt."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "experiments" / "cifar.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SMALL = ["--no-compile", "--cpu", "--T", "6", "--K", "2", "--train-subset", "128", "--epochs", "1"]

sys.path.insert(0, str(ROOT / "experiments"))
import cifar  # noqa: E402

from ep_compile import trainer  # noqa: E402


def snapshot(folder: Path) -> dict:
    """Every file's bytes but the lock's (it holds the PID of the last process that took it)."""
    return {
        p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def script(*args):
    return subprocess.run([sys.executable, SCRIPT, *SMALL, *args], env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture()
def old_run(tmp_path):
    out = tmp_path / "run"
    assert cifar.main(SMALL + ["--out", str(out)]) == 0
    return out


def test_failing_overwrite_leaves_the_old_run(old_run, monkeypatch):
    before = snapshot(old_run)

    def boom(self, *a, **k):
        raise RuntimeError("failure inside the first iteration")

    monkeypatch.setattr(trainer.Trainer, "train_step", boom)
    with pytest.raises(RuntimeError, match="first iteration"):
        cifar.main(SMALL + ["--out", str(old_run), "--overwrite", "--seed", "3"])
    assert snapshot(old_run) == before
    assert not (old_run / trainer.ASIDE).exists()


def test_overwrite_killed_before_its_first_checkpoint_gives_the_folder_back(old_run):
    before = snapshot(old_run)
    p = script("--out", str(old_run), "--overwrite", "--seed", "3", "--simulate-crash-at-step", "1")
    assert p.returncode == -9, p.stderr[-2000:]
    assert (old_run / trainer.ASIDE).is_dir() and not (old_run / "last.pt").exists()
    p = script("--out", str(old_run))  # a fresh start without --overwrite: the old run is put back, then refused
    err = [line for line in p.stderr.splitlines() if line.startswith("cifar.py: error")]
    assert p.returncode == 2 and len(err) == 1 and "already holds a run" in err[0], p.stderr[-2000:]
    assert "the old run is back" in p.stdout
    assert snapshot(old_run) == before


def test_successful_overwrite_replaces_the_old_run(old_run):
    old = torch.load(old_run / "last.pt", weights_only=True)["config"]["seed"]
    assert cifar.main(SMALL + ["--out", str(old_run), "--overwrite", "--seed", "3"]) == 0
    ck = torch.load(old_run / "last.pt", weights_only=True)
    assert (old, ck["config"]["seed"]) == (0, 3) and not (old_run / trainer.ASIDE).exists()
    assert json.loads((old_run / "config.json").read_text())["seed"] == 3


def test_run_killed_before_its_first_checkpoint_starts_again(tmp_path):
    out = tmp_path / "run"
    p = script("--out", str(out), "--simulate-crash-at-step", "1")
    assert p.returncode == -9 and not (out / "last.pt").exists() and (out / "config.json").exists()
    (out / ".last.pt.tmp99999").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves it
    p = script("--out", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "holds no checkpoint" in p.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and not list(out.glob(".*.tmp*"))


def test_metrics_never_ahead_of_last_checkpoint(tmp_path, monkeypatch):
    """A checkpoint write that fails (a full disk) leaves metrics.jsonl at the previous checkpoint."""
    out = tmp_path / "run"
    real = trainer.atomic_save

    def full_disk(obj, path):
        if Path(path).name == "last.pt" and obj["epoch"] == 2:
            raise OSError(28, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(trainer, "atomic_save", full_disk)
    with pytest.raises(OSError):
        cifar.main(SMALL + ["--out", str(out), "--epochs", "2"])
    rows = (out / "metrics.jsonl").read_text().splitlines()
    held = torch.load(out / "last.pt", weights_only=True)["metrics"]
    assert [json.loads(r) for r in rows] == held and len(held) == 1


def test_resume_refuses_an_edited_config(old_run, capsys):
    cfg = json.loads((old_run / "config.json").read_text())
    (old_run / "config.json").write_text(json.dumps({**cfg, "beta": 0.25}, indent=1))
    before = snapshot(old_run)
    assert cifar.main(["--resume", str(old_run), "--cpu", "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json does not describe" in err[0] and "beta" in err[0], err
    assert snapshot(old_run) == before


def test_checkpoint_write_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    """A write that fails mid-file (a full disk) removes its temp file; the old checkpoint stays."""
    from ep_compile import checkpoint

    target = tmp_path / "last.pt"
    checkpoint.atomic_save({"a": 1}, target)
    before = target.read_bytes()

    def full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(OSError):
        checkpoint.atomic_save({"a": 2}, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_unwritable_cache_is_a_warning_not_a_failure(tmp_path, capsys):
    """The data is decoded either way: a cache that cannot be written costs the next start a decode."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_bad_inputs import _archive, _png

    root = _archive(
        tmp_path,
        "a.tar.gz",
        {f"c/{s}/{c}/{i}.png": _png(32) for s in ("train", "test") for c in "ab" for i in range(4)},
    )
    args = [
        "--preset",
        "ce-symmetric",
        "--no-compile",
        "--cpu",
        "--epochs",
        "1",
        "--T",
        "3",
        "--K",
        "1",
        "--batch-size",
        "4",
    ]
    rc = cifar.main(args + ["--data-root", str(root), "--cache-dir", "/proc/ep-cache", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0 and "cannot write the cache /proc/ep-cache" in out, out[-2000:]
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cifar10-x.tmp99999999").write_bytes(b"a dead process's half-written cache")
    rc = cifar.main(
        args + ["--data-root", str(root), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run2")]
    )
    assert rc == 0 and not list((tmp_path / "cache").glob("*.tmp*"))
