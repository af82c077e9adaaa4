"""Data: whole data sets as uint8 tensors in memory, deterministic splits, batch augmentation.

Sources, all ending as the same `Dataset` (uint8 images (N, C, H, W), int64 labels):
  digits         scikit-learn's bundled 8x8 digits (no download)
  cifar10        torchvision's CIFAR10 (its normal download), or --data-root pointing at
                 a torchvision CIFAR-10 folder, an ImageFolder tree (train/<class>/*.jpg, test/...),
                 or a .tar.gz of such a tree (decoded once, cached as uint8 tensors)
  cifar100       torchvision's CIFAR100 (its normal download), or --data-root pointing at CIFAR-100's
                 own python format (a folder holding cifar-100-python/, or cifar-100-python.tar.gz,
                 read without unpickling code), an ImageFolder tree or a .tar.gz of one
  fashion-mnist  torchvision's FashionMNIST, or --data-root holding the IDX files
                 (Debian's dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist)
Decoding JPEGs is slow, so archives and trees are decoded once and cached ("it's faster to load
uint8 data"); the cache path is printed. Augmentation (random crop with zero padding + horizontal
flip) runs on whole batches from an explicit generator, so a run is reproducible and resumable.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import ConfigError

DATASETS = ("digits", "cifar10", "cifar100", "fashion-mnist")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class Dataset:
    x: torch.Tensor  # (N, C, H, W) uint8
    y: torch.Tensor  # (N,) int64
    classes: list[str]


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    mean: list[float]  # per channel, of the training images in [0, 1]
    std: list[float]


def default_cache_dir() -> Path:
    return Path(os.environ.get("EP_COMPILE_CACHE", Path.home() / ".cache" / "ep_compile"))


# ----------------------------------------------------------------------------- sources


def load_digits_set() -> tuple[Dataset, Dataset]:
    """scikit-learn's 1,797 real 8x8 digits; a fixed 80/20 train/test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(12345))
    n_test = len(y) // 5
    classes = [str(i) for i in range(10)]
    return Dataset(x[perm[n_test:]], y[perm[n_test:]], classes), Dataset(x[perm[:n_test]], y[perm[:n_test]], classes)


def _decode(raw: bytes, name: str) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(raw)).convert("RGB")
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... on bad files
        raise ConfigError(f"{name} is not a readable image ({type(e).__name__}: {e})") from None
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)  # (3, H, W) uint8


def _image_tree(entries, what: str) -> tuple[Dataset, Dataset]:
    """entries: iterable of (split, class, name, loader). Builds train/test sets with sorted class names;
    every image must decode and have the size of the first one."""
    groups: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for split, cls, name, load in entries:
        groups[split].setdefault(cls, []).append((name, load))
    if not groups["train"] or not groups["test"]:
        raise ConfigError(f"{what} holds no images in the layout train/<class>/*.jpg and test/<class>/*.jpg")
    classes = sorted(groups["train"])
    unseen = sorted(set(groups["test"]) - set(classes))
    if unseen:
        raise ConfigError(f"{what}: test class {unseen[0]!r} has no training images (classes must match across splits)")
    out, first = [], None
    for split in ("train", "test"):
        xs, ys = [], []
        for i, cls in enumerate(classes):
            for name, load in groups[split].get(cls, []):
                x = _decode(load(), f"{what}: {name}")
                if first is None:
                    first = (name, tuple(x.shape))
                elif tuple(x.shape) != first[1]:
                    raise ConfigError(
                        f"{what}: {name} is {x.shape[1]}x{x.shape[2]}, {first[0]} is {first[1][1]}x{first[1][2]}: "
                        "every image must have the same size"
                    )
                xs.append(x)
                ys.append(i)
        out.append(Dataset(torch.stack(xs), torch.tensor(ys), classes))
    return out[0], out[1]


def _split_of(parts) -> tuple[str, str] | None:
    """('train'|'test', class) from the last three parts of an image path, else None."""
    if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_EXT):
        return None
    split = parts[-3].lower()
    return (split, parts[-2]) if split in ("train", "test") else None


def load_image_archive(path: Path) -> tuple[Dataset, Dataset]:
    entries = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                key = _split_of(Path(m.name).parts) if m.isfile() else None
                if key:
                    data = tar.extractfile(m).read()
                    entries.append((*key, m.name, lambda d=data: d))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ConfigError(f"archive {path} is corrupt or truncated ({type(e).__name__}: {e})") from None
    return _image_tree(entries, f"archive {path}")


def load_image_folder(root: Path) -> tuple[Dataset, Dataset]:
    entries = []
    for p in sorted(root.rglob("*")):
        key = _split_of(p.relative_to(root).parts) if p.is_file() else None
        if key:
            entries.append((*key, str(p.relative_to(root)), p.read_bytes))
    return _image_tree(entries, f"folder {root}")


def _read_idx(path: Path) -> torch.Tensor:
    """An IDX file of uint8 (magic 0x00 0x00 0x08 ndim, big-endian dims, data), checked."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"{path} is corrupt or truncated ({type(e).__name__}: {e})") from None
    ndim = raw[3] if len(raw) >= 4 else 0
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= ndim <= 4 or len(raw) < 4 + 4 * ndim:
        raise ConfigError(f"{path} is not an IDX file of uint8 (magic 00 00 08 ndim, ndim 1..4)")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    if len(raw) - 4 - 4 * ndim != math.prod(dims):
        raise ConfigError(f"{path}: {len(raw) - 4 - 4 * ndim} data bytes for shape {dims}: truncated or corrupt")
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).view(*dims)


def load_fashion_idx(root: Path) -> tuple[Dataset, Dataset]:
    out = []
    for prefix in ("train", "t10k"):
        files = {}
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            cands = [root / f"{prefix}-{kind}{ext}" for ext in (".gz", "")]
            found = [c for c in cands if c.exists()]
            if not found:
                raise ConfigError(f"data root {root} has no {prefix}-{kind}[.gz] (Fashion-MNIST IDX files)")
            files[kind] = _read_idx(found[0])
        out.append(Dataset(files["images-idx3-ubyte"].unsqueeze(1), files["labels-idx1-ubyte"].long(), FASHION_CLASSES))
    return out[0], out[1]


def _torchvision_set(name: str, root: Path, download: bool) -> tuple[Dataset, Dataset]:
    import torchvision

    sets = torchvision.datasets
    cls = {"cifar10": sets.CIFAR10, "cifar100": sets.CIFAR100, "fashion-mnist": sets.FashionMNIST}[name]
    out = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download)
        except Exception as e:  # torchvision raises RuntimeError / URLError without network
            raise ConfigError(
                f"could not load {name} with torchvision from {root} ({type(e).__name__}: {e}); "
                "pass --data-root to a local copy"
            ) from None
        x = torch.as_tensor(ds.data)
        x = x.permute(0, 3, 1, 2) if x.dim() == 4 else x.unsqueeze(1)  # (N, C, H, W)
        out.append(Dataset(x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes)))
    return out[0], out[1]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's python batches (dicts, lists, numpy arrays) and refuses every other global,
    so a crafted file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise ConfigError(f"a CIFAR batch refers to {module}.{name}: not plain data, refused")


def _cifar_batch(raw: bytes, what: str) -> dict:
    try:
        d = _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{what} is not a CIFAR python batch ({type(e).__name__})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{what} is not a CIFAR python batch (no dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def load_cifar100_python(root: Path) -> tuple[Dataset, Dataset]:
    """CIFAR-100 in its own python format: train / test batches (data (N, 3072) uint8, R then G then
    B planes of 32x32; fine_labels) and meta (fine_label_names), from the folder or the .tar.gz."""
    import numpy as np

    files = {}
    if root.is_dir():
        for n in ("train", "test", "meta"):
            f = root / "cifar-100-python" / n
            if not f.is_file():
                raise ConfigError(f"{root}: cifar-100-python/{n} is missing")
            files[n] = f.read_bytes()
    else:
        try:
            with tarfile.open(root, "r:*") as tar:
                for m in tar.getmembers():
                    parts = Path(m.name).parts
                    if len(parts) == 2 and parts[0] == "cifar-100-python" and parts[1] in ("train", "test", "meta"):
                        files[parts[1]] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise ConfigError(f"{root}: not a readable .tar.gz ({type(e).__name__})") from None
        missing = sorted({"train", "test", "meta"} - set(files))
        if missing:
            raise ConfigError(f"{root}: cifar-100-python/{missing[0]} is missing from the archive")
    meta = _cifar_batch(files["meta"], f"{root}: meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("fine_label_names", [])]
    out = []
    for split in ("train", "test"):
        d = _cifar_batch(files[split], f"{root}: {split}")
        data, labels = d.get("data"), d.get("fine_labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ConfigError(f"{root}: {split} data is not (N, 3072) uint8")
        if labels is None or len(labels) != len(data):
            raise ConfigError(f"{root}: {split} has {len(data)} images and {len(labels or [])} fine_labels")
        x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        out.append(Dataset(x, torch.as_tensor(list(labels), dtype=torch.int64), classes))
    return out[0], out[1]


def _content_key(root: Path) -> str:
    """Cache key of a data root: an archive's bytes (hashed), or a folder's every image path, size and
    modification time, so that added, removed or replaced images make a new cache."""
    h = hashlib.sha1(str(root.resolve()).encode())
    if root.is_file():
        with open(root, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_source(name: str, data_root: str | None = None, cache_dir: Path | None = None, log=print):
    """(train, test) Datasets for a data set name and optional local root."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits_set()
    cache_dir = Path(cache_dir or default_cache_dir())
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ConfigError(f"--cache-dir {cache_dir}: is a file, not a folder")
    if data_root is None:
        return _torchvision_set(name, cache_dir / "torchvision", download=True)
    root = Path(data_root).expanduser()
    if not root.exists():
        raise ConfigError(f"data root {root} does not exist")
    if name == "fashion-mnist":
        if list(root.glob("*-idx?-ubyte*")):
            return load_fashion_idx(root)
        return _torchvision_set(name, root, download=False)
    if root.is_dir() and (root / "cifar-10-batches-py").exists():
        return _torchvision_set(name, root, download=False)
    if name == "cifar100" and (
        (root.is_dir() and (root / "cifar-100-python").is_dir()) or root.name.startswith("cifar-100-python.tar")
    ):
        return load_cifar100_python(root)
    # ImageFolder tree or archive: decode once, cache as uint8 tensors
    cache = cache_dir / f"{name}-{_content_key(root)}.pt"
    if cache.exists():
        try:
            d = torch.load(cache, weights_only=True)
            log(f"data: cached tensors {cache}")
            return Dataset(d["train_x"], d["train_y"], d["classes"]), Dataset(d["test_x"], d["test_y"], d["classes"])
        except Exception as e:  # a truncated or corrupt cache file: decode again
            log(f"data: warning: cache {cache} is unreadable ({type(e).__name__}); rebuilding it")
    log(f"data: decoding {root} once (cache: {cache})")
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz")):
        train, test = load_image_archive(root)
    elif root.is_dir():
        train, test = load_image_folder(root)
    else:
        raise ConfigError(f"data root {root} is neither a folder nor a .tar.gz archive")
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(cache.parent)
        d = {"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y, "classes": train.classes}
        torch.save(d, tmp)
        os.replace(tmp, cache)
    except OSError as e:  # the data is decoded: an unwritable cache only costs the next start its decode
        log(
            f"data: warning: cannot write the cache {cache} ({e.strerror or type(e).__name__}); --cache-dir DIR sets it"
        )
        if tmp.exists():
            tmp.unlink()
    return train, test


def remove_stale_temps(folder: Path) -> None:
    """Temp files (NAME.tmpPID) of cache writes whose process is gone: a kill mid-write leaves them."""
    for t in folder.glob("*.tmp*"):
        pid = t.suffix[4:]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            t.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- splits and batches


def check_classes(train: Dataset, test: Dataset, what) -> None:
    """At least two classes, and every label of both splits one of the training classes."""
    if len(train.classes) < 2:
        raise ConfigError(
            f"{what}: the training set has {len(train.classes)} class(es) {train.classes}; a classifier needs >= 2"
        )
    for split, ds in (("training", train), ("test", test)):
        if len(ds.y) and not 0 <= int(ds.y.min()) <= int(ds.y.max()) < len(train.classes):
            raise ConfigError(
                f"{what}: {split} labels span {int(ds.y.min())}..{int(ds.y.max())}, outside the {len(train.classes)} classes"
            )


def make_splits(
    name, data_root=None, val_size=None, train_subset=None, test_subset=None, seed=0, cache_dir=None, log=print
) -> Splits:
    """Train/validation/test. The validation set is held out of the training set by a seeded
    permutation (the best checkpoint is chosen on it, never on the test set)."""
    train, test = load_source(name, data_root, cache_dir, log)
    check_classes(train, test, data_root or name)
    n = len(train.y)
    val_size = (n // 10 if n < 20000 else 5000) if val_size is None else val_size
    if not 0 <= val_size < n:
        raise ConfigError(f"--val-size {val_size} must lie in [0, {n}) for {name}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset is not None:  # its range is checked where the setting lives (config.DataConfig)
        train_idx = train_idx[:train_subset]
    test_idx = torch.arange(len(test.y))
    if test_subset is not None:  # a seeded random subset: test sets are often stored class by class
        test_idx = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(seed + 1))[:test_subset]
    tr = Dataset(train.x[train_idx], train.y[train_idx], train.classes)
    xf = tr.x.double() / 255
    mean = xf.mean(dim=(0, 2, 3)).tolist()
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return Splits(
        tr,
        Dataset(train.x[val_idx], train.y[val_idx], train.classes),
        Dataset(test.x[test_idx], test.y[test_idx], test.classes),
        mean,
        std,
    )


RAW = {"dtype": "uint8", "range": [0, 255], "layout": "N x C x H x W"}
TRANSFORM = "x = (raw / 255 - mean[c]) / (std_scale * std[c])"


def preprocessing_meta(data, in_shape) -> dict:
    """The preprocessing contract stored with a trained model (ONNX metadata): what raw images look
    like and the whole transform to the model's input. Every data set here is stored as uint8 0..255
    (scikit-learn's digits, 0..16 at the source, are scaled by 255/16 and rounded: load_digits_set).
    data: a run's data section (config.DataConfig)."""
    return {
        "raw": RAW,
        "transform": TRANSFORM,
        "mean": data.mean,
        "std": data.std,
        "std_scale": data.std_scale,
        "input_shape": list(in_shape),
    }


def preprocess(raw: torch.Tensor, meta: dict, dtype=torch.float32) -> torch.Tensor:
    """Raw uint8 images (N, C, H, W), 0..255 -> the model's input, by the contract in `meta` (a
    run's `preprocessing_meta` or the ONNX `ep_compile.preprocessing` metadata): one function for training,
    export checks and inference code."""
    if raw.dtype != torch.uint8:
        raise ConfigError(
            f"preprocess expects raw uint8 images 0..255 (N, C, H, W), got dtype {raw.dtype}; "
            "scale other ranges to 0..255 first (digits: round(v * 255 / 16))"
        )
    shape = meta.get("input_shape") or meta.get("in_shape")
    if raw.dim() != 4 or (shape is not None and list(raw.shape[1:]) != list(shape)):
        raise ConfigError(
            f"preprocess expects (N, {', '.join(map(str, shape or ['C', 'H', 'W']))}), got {tuple(raw.shape)}"
        )
    return normalize(raw, meta["mean"], meta["std"], meta["std_scale"], dtype)


def normalize(x_uint8: torch.Tensor, mean, std, std_scale: float, dtype=torch.float32) -> torch.Tensor:
    """(x / 255 - mean) / (std_scale * std), channel-wise. std_scale = 3 follows the paper's code: it
    keeps inputs small so the hard sigmoid units start in their linear range."""
    m = torch.tensor(mean, dtype=dtype, device=x_uint8.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=x_uint8.device).view(1, -1, 1, 1) * std_scale
    return (x_uint8.to(dtype) / 255 - m) / s


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding + random horizontal flip of a uint8 batch (B, C, H, W)."""
    B, _, H, W = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator).tolist()
    out = torch.stack([padded[i, :, a : a + H, b : b + W] for i, (a, b) in enumerate(zip(dy, dx))])
    if flip:
        f = torch.rand(B, generator=generator) < 0.5
        out = torch.where(f.view(B, 1, 1, 1), out.flip(-1), out)
    return out
