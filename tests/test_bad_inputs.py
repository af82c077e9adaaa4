"""Bad input to experiments/cifar.py: every case exits 2 with one line naming the bad value, and a run
folder that already exists is left byte for byte as it was (nothing is validated after writing)."""

import gzip
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import cifar  # noqa: E402

FAST = ["--no-compile", "--cpu", "--epochs", "1", "--train-subset", "128", "--T", "5", "--K", "2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "run"
    assert cifar.main(FAST + ["--out", str(out)]) == 0
    return out


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _archive(tmp: Path, name: str, members: dict, truncate: int = 0) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    (tmp / name).write_bytes(raw[: len(raw) - truncate] if truncate else raw)
    return tmp / name


def _png(size: int) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(b, format="PNG")
    return b.getvalue()


def files(tmp: Path) -> dict:
    """Bad files on disk, by name: each a --data-root (or --resume) that must be refused cleanly."""
    good = {f"cifar/{s}/{c}/{i}.png": _png(32) for s in ("train", "test") for c in ("a", "b") for i in range(2)}
    mixed = {**good, "cifar/train/a/9.png": _png(16)}
    corrupt = {**good, "cifar/train/b/7.png": b"\x89PNG\r\n\x1a\n-not-really"}
    made = {
        "truncated.tar.gz": _archive(tmp, "truncated.tar.gz", good, truncate=200),
        "notgzip.tar.gz": tmp / "notgzip.tar.gz",
        "mixed.tar.gz": _archive(tmp, "mixed.tar.gz", mixed),
        "corrupt_png.tar.gz": _archive(tmp, "corrupt_png.tar.gz", corrupt),
        "empty_dir": tmp / "empty_dir",
        "idx": tmp / "idx",
    }
    made["notgzip.tar.gz"].write_bytes(b"this is not an archive" * 10)
    made["empty_dir"].mkdir(exist_ok=True)
    idx = made["idx"]
    idx.mkdir(exist_ok=True)
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        (idx / name).write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    return made


CLI = [  # (arguments, text the one-line error must contain)
    (["--preset", "nope"], "'nope'"),
    (["--dataset", "mnist3d"], "'mnist3d'"),
    (["--estimator", "magic"], "'magic'"),
    (["--loss", "hinge"], "'hinge'"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--batch-size", "-4"], "--batch-size -4"),
    (["--batch-size", "5000"], "--batch-size 5000"),
    (["--eval-batch-size", "0"], "--eval-batch-size 0"),
    (["--epochs", "0"], "--epochs 0"),
    (["--epochs", "-1"], "--epochs -1"),
    (["--T", "0"], "--T 0"),
    (["--K", "0"], "--K 0"),
    (["--T", "5", "--K", "9"], "--K 9"),
    (["--beta", "0"], "got 0.0"),
    (["--beta", "nan"], "--beta nan"),
    (["--tol", "nan"], "--tol nan"),
    (["--tol", "-1"], "--tol -1"),
    (["--checkpoint-every", "-1"], "--checkpoint-every -1"),
    (["--lrs", "0.1"], "--lrs has 1"),
    (["--lrs", "-0.1", "0.1", "0.1"], "--lrs -0.1 0.1 0.1"),
    (["--momentum", "1.5"], "--momentum 1.5"),
    (["--weight-decay", "-1"], "--weight-decay -1"),
    (["--kernels", "0", "0"], "--kernels 0 0"),
    (["--paddings", "-1", "1"], "--paddings -1 1"),
    (["--channels", "0", "32"], "--channels 0 32"),
    (["--dropout", "1.5", "0"], "--dropout 1.5 0"),
    (["--pools", "max", "foo"], "'foo'"),
    (["--activation", "relu"], "'relu'"),
    (["--schedule", "weird"], "'weird'"),
    (["--optimizer", "lamb"], "'lamb'"),
    (["--dtype", "float16"], "'float16'"),
    (["--val-size", "-5"], "--val-size -5"),
    (["--train-subset", "0"], "--train-subset 0"),
    (["--test-subset", "-1"], "--test-subset -1"),
    (["--warmup-epochs", "-1"], "--warmup-epochs -1"),
    (["--eval-every", "-0.5"], "--eval-every -0.5"),
    (["--decay-epochs", "-1"], "--decay-epochs -1"),
    (["--lr-min", "-1"], "--lr-min -1"),
    (["--std-scale", "0"], "--std-scale 0"),
    (["--init-gain", "-1"], "got -1.0"),
    (["--amp", "fp8"], "'fp8'"),
    (["--estimator", "vf", "--asymmetric", "--vf-form", "bogus"], "'bogus'"),
    (["--estimator", "holomorphic", "--hep-points", "1"], "got 1"),
    (["--check-every", "0"], "--check-every 0"),
    (["--spike-quantizer", "sigma-delta"], "--neuron spiking"),
    (["--threads", "-1"], "--threads"),
    (["--data-root", "/does/not/exist"], "/does/not/exist"),
]


@pytest.mark.parametrize("args,needle", CLI, ids=[" ".join(a) for a, _ in CLI])
def test_bad_flag(run_dir, capsys, args, needle):
    before = snapshot(run_dir)
    rc = cifar.main(FAST + args + ["--out", str(run_dir), "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("cifar.py: error:") and needle in err[0], (rc, err)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    "name", ["truncated.tar.gz", "notgzip.tar.gz", "mixed.tar.gz", "corrupt_png.tar.gz", "empty_dir", "idx"]
)
def test_bad_data_file(run_dir, tmp_path, capsys, name):
    path = files(tmp_path)[name]
    preset = "fashion-ce-symmetric" if name == "idx" else "ce-symmetric"
    before = snapshot(run_dir)
    rc = cifar.main(
        FAST
        + [
            "--preset",
            preset,
            "--data-root",
            str(path),
            "--out",
            str(run_dir),
            "--overwrite",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("cifar.py: error:") and path.name in err[0], (rc, err)
    assert snapshot(run_dir) == before


def test_bad_resume_targets(run_dir, tmp_path, capsys):
    before = snapshot(run_dir)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "last.pt").write_bytes(b"\x80\x02garbage" * 10)
    for target, needle in [
        (tmp_path / "nothing", "nothing"),
        (run_dir / "config.json", "config.json"),
        (tmp_path / "corrupt", "corrupt"),
    ]:
        rc = cifar.main(["--resume", str(target), "--cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (target, err)
    rc = cifar.main(["--resume", str(run_dir), "--T", "7", "--cpu"])  # would change the run
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--T" in err[0], err
    assert snapshot(run_dir) == before
