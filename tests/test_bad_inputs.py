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
    (["--init-gain", "-1"], "--init-gain -1.0"),
    (["--amp", "fp8"], "--amp fp8"),
    (["--estimator", "vf", "--asymmetric", "--vf-form", "bogus"], "'bogus'"),
    (["--estimator", "holomorphic", "--hep-points", "1"], "--hep-points 1"),
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


MORE = [  # (arguments, needle): values in range one by one, combinations the path would ignore, huge runs
    (["--T", "-5"], "--T -5"),
    (["--K", "-1"], "--K -1"),
    (["--beta", "inf"], "--beta inf"),
    (["--momentum", "-0.1"], "--momentum -0.1"),
    (["--lr-min", "nan"], "--lr-min nan"),
    (["--std-scale", "nan"], "--std-scale nan"),
    (["--warmup-epochs", "nan"], "--warmup-epochs nan"),
    (["--eval-every", "nan"], "--eval-every nan"),
    (["--stop-at-accuracy", "2"], "--stop-at-accuracy 2"),
    (["--max-hours", "-1"], "--max-hours -1"),
    (["--tol", "inf"], "--tol inf"),
    (["--check-every", "-3"], "--check-every -3"),
    (["--estimator", "bptt", "--bptt-steps", "0"], "--bptt-steps 0"),
    (["--estimator", "bptt", "--bptt-steps", "99"], "--bptt-steps 99"),
    (["--threads", "-5"], "--threads"),
    (["--decay-epochs", "-3"], "--decay-epochs -3"),
    (["--val-size", "100000"], "--val-size 100000"),
    (["--train-subset", "-3"], "--train-subset -3"),
    (["--spike-t0", "3"], "--neuron spiking"),
    (["--estimator", "bptt", "--fused"], "--fused"),
    (["--estimator", "bptt", "--tol", "0.1"], "--tol 0.1"),
    (["--vf-form", "paper-code"], "--vf-form paper-code"),
    (["--hep-points", "4"], "--hep-points"),
    (["--wd-compensation"], "--wd-compensation"),
    (["--bptt-steps", "3"], "--bptt-steps"),
    (["--seed", str(2**70)], f"--seed {2**70}"),
    (["--seed", "-1"], "--seed -1"),
    (["--channels", "100000", "100000"], "GiB"),
    (["--fc", "10000000"], "GiB"),
    (["--init-gain", "1000"], "1000"),
    (["--dropout", "0.1"], "dropout has 1"),
    (["--kernels", "3", "3", "3"], "kernels has 3"),
    (["--neuron", "lif"], "'lif'"),
    (["--estimator", "spiking-symmetric"], "needs --neuron spiking"),
    (["--estimator", "c-ep", "--amp", "bf16"], "--amp bf16"),
    (["--augment", "--no-augment"], "contradict"),
    (["--epochs", "0", "--batch-size", "0"], "--epochs 0"),  # the first in the section's order
]


@pytest.mark.parametrize("args,needle", MORE, ids=[" ".join(a)[:40] for a, _ in MORE])
def test_more_bad_flags(run_dir, capsys, args, needle):
    test_bad_flag(run_dir, capsys, args, needle)


def _one_line(capsys, rc, needle, prefix):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(prefix) and needle in err[0], (rc, err)


def test_bad_out_paths(tmp_path, capsys):
    """--out that cannot hold a run: refused before the data load, nothing created."""
    (tmp_path / "file").write_text("x")
    cases = [
        ("", "--out ''"),
        (str(tmp_path / "file"), "is a file"),
        (str(tmp_path / "file" / "sub"), "no folder can be made"),
        (str(tmp_path / ("n" * 300)), "over 255 bytes"),
        ("/proc/ep-run", "cannot write"),
        ("/sys/ep-run/deeper", "cannot write"),
    ]
    for out, needle in cases:
        before = sorted(tmp_path.iterdir())
        _one_line(capsys, cifar.main(FAST + ["--out", out]), needle, "cifar.py: error:")
        assert sorted(tmp_path.iterdir()) == before, out


def test_bad_class_sets(run_dir, tmp_path, capsys):
    """One class only, a test class that training never saw, a cache folder that is a file."""
    one = {f"c/{s}/a/{i}.png": _png(32) for s in ("train", "test") for i in range(2)}
    unseen = {**{f"c/{s}/{c}/{i}.png": _png(32) for s in ("train", "test") for c in "ab" for i in range(2)}}
    unseen["c/test/z/0.png"] = _png(32)
    (tmp_path / "cachefile").write_text("x")
    good = _archive(
        tmp_path,
        "good.tar.gz",
        {f"c/{s}/{c}/{i}.png": _png(32) for s in ("train", "test") for c in "ab" for i in range(2)},
    )
    before = snapshot(run_dir)
    for root, cache, needle in [
        (_archive(tmp_path, "one.tar.gz", one), tmp_path / "cache", "1 class"),
        (_archive(tmp_path, "unseen.tar.gz", unseen), tmp_path / "cache", "'z'"),
        (good, tmp_path / "cachefile", "is a file"),
    ]:
        args = FAST + ["--preset", "ce-symmetric", "--data-root", str(root), "--cache-dir", str(cache)]
        _one_line(capsys, cifar.main(args + ["--out", str(run_dir), "--overwrite"]), needle, "cifar.py: error:")
    assert snapshot(run_dir) == before


def _crafted(run_dir: Path, tmp: Path, name: str, edit) -> Path:
    """A folder holding run_dir's last.pt with one edit (no config.json, so only the checkpoint speaks)."""
    import torch

    ck = torch.load(run_dir / "last.pt", weights_only=True)
    edit(ck)
    (tmp / name).mkdir()
    torch.save(ck, tmp / name / "last.pt")
    return tmp / name


def _drop_weight(ck):
    ck["model"].pop(next(iter(ck["model"])))


def _reshape_weight(ck):
    import torch

    k = next(iter(ck["model"]))
    ck["model"][k] = torch.zeros(3, 3)


def _extra_weight(ck):
    import torch

    ck["model"]["synapses.9.conv.weight"] = torch.zeros(1)


def _foreign_optimizer(ck):
    ck["optimizer"]["param_groups"] = ck["optimizer"]["param_groups"][:1]


CONTENTS = [  # (edit of last.pt, what the error names, whether export reads that part: weights, not the optimizer)
    (_drop_weight, "has no weight", True),
    (_reshape_weight, "the config builds", True),
    (_extra_weight, "does not build", True),
    (lambda ck: ck.pop("optimizer"), "lacks optimizer", False),
    (_foreign_optimizer, "parameter groups", False),
]


USES = [
    (u, e, n) for e, n, exported in CONTENTS for u in ("resume", "eval-only", "export") if u != "export" or exported
]


@pytest.mark.parametrize("use,edit,needle", USES, ids=[f"{u}-{n}" for u, _, n in USES])
def test_checkpoint_with_wrong_contents(run_dir, tmp_path, capsys, use, edit, needle):
    folder = _crafted(run_dir, tmp_path, "crafted", edit)
    before = snapshot(folder)
    if use == "export":
        rc = to_onnx.main([str(folder / "last.pt"), "--out", str(tmp_path / "m.onnx")])
        prefix = "to_onnx.py: error:"
        assert not (tmp_path / "m.onnx").exists()
    else:
        rc = cifar.main(["--resume", str(folder), "--cpu"] + (["--eval-only"] if use == "eval-only" else []))
        prefix = "cifar.py: error:"
    _one_line(capsys, rc, needle, prefix)
    assert snapshot(folder) == before


def test_resume_refusals(run_dir, tmp_path, capsys):
    """--overwrite with --resume; a last.pt copied in from another run (config.json disagrees)."""
    before = snapshot(run_dir)
    _one_line(capsys, cifar.main(["--resume", str(run_dir), "--overwrite", "--cpu"]), "give one", "cifar.py: error:")
    other = tmp_path / "other"
    assert cifar.main(FAST + ["--T", "7", "--out", str(other)]) == 0
    capsys.readouterr()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_bytes((run_dir / "config.json").read_bytes())
    (foreign / "last.pt").write_bytes((other / "last.pt").read_bytes())
    kept = snapshot(foreign)
    _one_line(capsys, cifar.main(["--resume", str(foreign), "--cpu"]), "does not describe", "cifar.py: error:")
    assert snapshot(foreign) == kept and snapshot(run_dir) == before


sys.path.insert(0, str(ROOT / "export"))
import to_onnx  # noqa: E402


def test_bad_export_arguments(run_dir, tmp_path, capsys):
    import torch

    ck = torch.load(run_dir / "last.pt", weights_only=True)
    ck.pop("config")
    torch.save(ck, tmp_path / "noconfig.pt")
    (tmp_path / "adir").mkdir()
    for args, needle in [
        ([str(run_dir), "--T", "-5", "--out", str(tmp_path / "m.onnx")], "--T -5"),
        ([str(run_dir), "--T", "0", "--out", str(tmp_path / "m.onnx")], "--T 0"),
        ([str(run_dir), "--out", str(tmp_path / "adir")], "is a folder"),
        ([str(run_dir), "--out", str(tmp_path / "missing" / "m.onnx")], "does not exist"),
        ([str(tmp_path / "noconfig.pt"), "--out", str(tmp_path / "m.onnx")], "no run config"),
    ]:
        _one_line(capsys, to_onnx.main(args), needle, "to_onnx.py: error:")
        assert not (tmp_path / "m.onnx").exists()


GRADCHECK = [
    (["--arch", "bogus"], "'bogus'"),
    (["--arch", '{"in_shape": "abc"}'], "wrong type"),
    (["--arch", "/no/such/arch.json"], "arch.json"),
    (["--arch", "[1, 2]"], "unknown architecture"),
    (["--arch", "{not json"], "not JSON"),
    (["--json", "/no/such/dir/r.json"], "--json /no/such/dir/r.json"),
    (["--json", "/tmp"], "--json /tmp"),
    (["--batch", "0"], "--batch 0"),
    (["--T", "0"], "--T 0"),
    (["--K", "0"], "--K 0"),
]


@pytest.mark.parametrize("args,needle", GRADCHECK, ids=[" ".join(a) for a, _ in GRADCHECK])
def test_bad_gradcheck_arguments(capsys, args, needle):
    from ep_compile import gradcheck

    _one_line(capsys, gradcheck.main(["--T", "4", "--K", "2", *args]), needle, "gradcheck: error:")
