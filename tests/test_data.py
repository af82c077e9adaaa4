"""Data sources (ImageFolder tree, .tar.gz archive with caching, IDX files, digits), splits, augmentation."""

import gzip
import os
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ep_compile.data import augment, load_source, make_splits, normalize
from ep_compile.model import ConfigError


def write_tree(root: Path, n=3, classes=("cat", "dog")):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i:04d}.png"
                )


def test_image_folder_and_archive_give_the_same_tensors_and_cache(tmp_path):
    write_tree(tmp_path / "tree")
    tr, te = load_source("cifar10", str(tmp_path / "tree"), tmp_path / "cache", log=lambda m: None)
    assert tr.x.shape == (6, 3, 32, 32) and tr.x.dtype == torch.uint8 and te.x.shape == (6, 3, 32, 32)
    assert tr.classes == ["cat", "dog"] and tr.y.tolist() == [0, 0, 0, 1, 1, 1]
    arc = tmp_path / "tree.tar.gz"
    with tarfile.open(arc, "w:gz") as t:
        t.add(tmp_path / "tree", arcname="cifar")
    msgs = []
    tr2, te2 = load_source("cifar10", str(arc), tmp_path / "cache", log=msgs.append)
    assert torch.equal(tr.x, tr2.x) and torch.equal(te.y, te2.y)
    assert "decoding" in msgs[0] and str(tmp_path / "cache") in msgs[0]
    tr3, _ = load_source("cifar10", str(arc), tmp_path / "cache", log=msgs.append)
    assert "cached tensors" in msgs[-1] and torch.equal(tr3.x, tr.x)


def _idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_fashion_idx_files(tmp_path):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 5), ("t10k", 3)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    tr, te = load_source("fashion-mnist", str(tmp_path))
    assert tr.x.shape == (5, 1, 28, 28) and te.y.shape == (3,)


def test_debian_fashion_mnist_if_installed():
    root = Path("/usr/share/datasets/fashion-mnist")
    if not root.exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    tr, te = load_source("fashion-mnist", str(root))
    assert tr.x.shape == (60000, 1, 28, 28) and te.x.shape == (10000, 1, 28, 28)
    assert tr.y.bincount().tolist() == [6000] * 10


def test_splits_are_disjoint_and_deterministic():
    s = make_splits("digits", val_size=100, train_subset=500, test_subset=50, seed=3)
    assert len(s.train.y) == 500 and len(s.val.y) == 100 and len(s.test.y) == 50
    s2 = make_splits("digits", val_size=100, train_subset=500, test_subset=50, seed=3)
    assert torch.equal(s.train.x, s2.train.x) and torch.equal(s.val.y, s2.val.y)
    full = make_splits("digits", val_size=100, seed=3)
    assert len(full.train.y) + len(full.val.y) == 1438 and len(full.test.y) == 359  # a partition of train
    assert torch.equal(full.train.x[:500], s.train.x)  # the subset is a prefix of the same order
    with pytest.raises(ConfigError, match="--val-size 5000 must lie in"):
        make_splits("digits", val_size=5000)


def test_augment_is_seeded_crop_and_flip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(0), pad=2)
    b = augment(x, torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(a, b) and a.shape == x.shape
    outs = {bytes(augment(x, torch.Generator().manual_seed(s), pad=2).numpy()) for s in range(10)}
    assert len(outs) > 1
    z = normalize(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), [0.5], [0.25], 3.0)
    torch.testing.assert_close(z, torch.full((1, 1, 2, 2), 0.5 / 0.75))


def test_real_cifar_archive_layout_if_present():
    """The shared CIFAR-10 JPEG archive: only list members (decoding all 60k JPEGs is left to runs)."""
    arc = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
    if not arc.exists():
        pytest.skip("no ../shared/data/cifar10-jpeg.tar.gz")
    from ep_compile.data import _split_of

    counts = {}
    with tarfile.open(arc, "r:gz") as t:
        for m in t:
            key = _split_of(Path(m.name).parts) if m.isfile() else None
            if key:
                counts[key[0]] = counts.get(key[0], 0) + 1
    assert counts == {"train": 50000, "test": 10000}


def write_cifar100(tmp_path, per_class=(2, 1), seed=0):
    """A small archive in CIFAR-100's own python format (no CIFAR-100 ships offline here): 100
    classes, `per_class` train / test images each, random pixels, the real keys and layout."""
    import io as _io
    import pickle
    import tarfile as _tarfile

    import numpy as np

    rng = np.random.default_rng(seed)
    names = [f"class_{i:02d}" for i in range(100)]
    members = {"meta": {"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]}}
    for split, n in zip(("train", "test"), per_class):
        labels = [c for c in range(100) for _ in range(n)]
        members[split] = {
            "filenames": [f"{i}.png" for i in range(len(labels))],
            "fine_labels": labels,
            "coarse_labels": [c // 5 for c in labels],
            "data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
        }
    path = tmp_path / "cifar-100-python.tar.gz"
    with _tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            raw = pickle.dumps(obj, protocol=2)
            info = _tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(raw)
            tar.addfile(info, _io.BytesIO(raw))
    return path, members


def test_cifar100_python_format(tmp_path):
    from ep_compile.data import load_source

    path, members = write_cifar100(tmp_path)
    train, test = load_source("cifar100", str(path), tmp_path / "cache", log=lambda *a: None)
    assert train.x.shape == (200, 3, 32, 32) and test.x.shape == (100, 3, 32, 32) and len(train.classes) == 100
    first = members["train"]["data"][0].reshape(3, 32, 32)  # R, G, B planes of 32 x 32, row-major
    assert torch.equal(train.x[0], torch.from_numpy(first)) and train.y.tolist() == members["train"]["fine_labels"]
    assert train.classes[7] == "class_07"


def test_cifar100_batch_that_runs_code_is_refused(tmp_path):
    import io as _io
    import pickle
    import tarfile as _tarfile

    from ep_compile.data import load_source
    from ep_compile.model import ConfigError

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "cifar-100-python.tar.gz"
    with _tarfile.open(path, "w:gz") as tar:
        for name in ("train", "test", "meta"):
            raw = pickle.dumps({"data": Evil()})
            info = _tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(raw)
            tar.addfile(info, _io.BytesIO(raw))
    with pytest.raises(ConfigError, match="not plain data"):
        load_source("cifar100", str(path), tmp_path / "cache", log=lambda *a: None)
    assert not (tmp_path / "pwned").exists()
