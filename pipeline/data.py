"""Datasets as device-resident tensors, with a registry.

Every dataset is loaded once into float tensors (normalised) and integer labels; a
validation split is carved from the training set with a fixed seed; augmentation, where a
dataset has one, runs on whole batches on the compute device. Nothing is downloaded: file
based datasets are read from the directory the user names, in torchvision's on-disk layout.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.specs import DataSpec
from tracking.registries import Registry


@dataclass
class Dataset:
    """Train/validation/test tensors on one device.

    ``x_*`` are normalised float tensors shaped ``[N, C, *spatial]``; ``augment`` (or None)
    maps a batch and a generator to an augmented batch of the same shape.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: str | torch.device) -> Dataset:
        moved = {k: getattr(self, k).to(device) for k in
                 ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return Dataset(self.name, num_classes=self.num_classes, augment=self.augment, **moved)


@dataclass
class _Raw:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    augment: str | None = None      # "crop_flip" (CIFAR), "crop" (SVHN) or None


@dataclass(frozen=True)
class _Loader:
    """How a registered dataset is read: ``read(data_dir)``; ``from_files`` if it is read
    from ``data.data_dir`` (then a missing folder fails before any compute)."""

    read: Callable[[Path | None], _Raw]
    from_files: bool = False

    @classmethod
    def generated(cls, read: Callable[[Path | None], _Raw]) -> _Loader:
        return cls(read)

    @classmethod
    def files(cls, read: Callable[[Path], _Raw]) -> _Loader:
        return cls(read, from_files=True)


DATASETS: Registry[_Loader] = Registry("dataset")


def check_dataset(spec: DataSpec) -> None:
    """Fail fast (before any compute) on an unknown dataset or a missing data directory."""
    if spec.factory:
        return      # a data factory: checked when the config is loaded (pipeline.factories)
    if DATASETS.get(spec.name, field="data.name").from_files:
        if not spec.data_dir:
            raise ValueError(f"data.data_dir is empty: dataset {spec.name!r} is read from files; "
                             "set data.data_dir to the folder holding them (nothing is downloaded)")
        if not Path(spec.data_dir).expanduser().is_dir():
            raise FileNotFoundError(f"data.data_dir={spec.data_dir!r} does not exist "
                                    f"(dataset {spec.name!r})")


_CACHE: dict[tuple, Dataset] = {}


def load_dataset(spec: DataSpec, device: str | torch.device = "cpu") -> Dataset:
    """Load (once per process) the dataset of ``spec`` onto ``device``."""
    if spec.factory:
        key = ("factory", spec.spec_hash(), spec.code_dir, str(device))
        if key not in _CACHE:
            from pipeline.factories import factory_dataset

            _CACHE[key] = factory_dataset(spec, device)
        return _CACHE[key]
    check_dataset(spec)
    key = (spec.name, spec.val_fraction, spec.split_seed, spec.train_subset, spec.data_dir,
           str(device))
    if key in _CACHE:
        return _CACHE[key]
    raw = DATASETS.get(spec.name).read(Path(spec.data_dir).expanduser() if spec.data_dir else None)
    x, y = raw.x_train, raw.y_train
    if spec.train_subset:
        x, y = x[: spec.train_subset], y[: spec.train_subset]
    mean, std = _channel_stats(x)
    norm = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    perm = np.random.default_rng(spec.split_seed).permutation(len(x))
    n_val = int(round(spec.val_fraction * len(x)))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    xt = norm(x)
    ds = Dataset(
        name=spec.name,
        x_train=xt[train_idx], y_train=torch.from_numpy(y[train_idx].astype(np.int64)),
        x_val=xt[val_idx], y_val=torch.from_numpy(y[val_idx].astype(np.int64)),
        x_test=norm(raw.x_test), y_test=torch.from_numpy(raw.y_test.astype(np.int64)),
        num_classes=raw.num_classes,
        augment=_augmentation(raw.augment,
                              pad_value=torch.from_numpy((-mean / std).astype(np.float32))),
    ).to(device)
    _CACHE[key] = ds
    return ds


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, dtype=np.float64).reshape(shape)
    std = x.std(axis=axes, dtype=np.float64).reshape(shape)
    return mean, np.maximum(std, 1e-8)


# --- augmentation ------------------------------------------------------------------------

def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True,
                     pad_value: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop with ``pad`` pixels of padding and horizontal flip, on a whole batch.

    ``pad_value`` is the per-channel value of a black pixel after normalisation, so the
    padding is black in pixel space (as in the paper's code, which pads before normalising).
    Random numbers come from ``generator`` on the CPU so results do not depend on the device.
    """
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    if pad_value is not None:
        border = torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype)
        border = torch.nn.functional.pad(border, (pad, pad, pad, pad)) == 0
        padded = torch.where(border, pad_value.to(x.device, x.dtype).view(1, c, 1, 1), padded)
    off = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    rows = off[0][:, None] + torch.arange(h, device=x.device)[None]          # [n, h]
    cols = off[1][:, None] + torch.arange(w, device=x.device)[None]          # [n, w]
    if flip:
        do_flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        cols = torch.where(do_flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # [n, h, w, c]
    return out.permute(0, 3, 1, 2).contiguous()


def _augmentation(kind: str | None, pad_value: torch.Tensor):
    if kind is None:
        return None
    flip = kind == "crop_flip"
    pv = pad_value.reshape(-1)

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_crop_flip(x, generator, pad=4, flip=flip, pad_value=pv)

    return augment


# --- built-in datasets -------------------------------------------------------------------

@DATASETS.register("mnist1d")
@_Loader.generated
def _mnist1d(_: Path | None) -> _Raw:
    """MNIST-1D generated procedurally with its fixed default seed (no download)."""
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    return _Raw(data["x"][:, None, :], data["y"], data["x_test"][:, None, :], data["y_test"], 10)


@DATASETS.register("digits")
@_Loader.generated
def _digits(_: Path | None) -> _Raw:
    """scikit-learn's 8x8 digits (1,797 images): tiny, for tests."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images[:, None].astype(np.float32) / 16.0
    perm = np.random.default_rng(1234).permutation(len(x))
    test, train = perm[:360], perm[360:]
    return _Raw(x[train], d.target[train], x[test], d.target[test], 10)


def _require(path: Path, dataset: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {dataset!r}: expected file {path} (torchvision's on-disk layout; "
            "nothing is downloaded: put the dataset there or fix data.data_dir)")
    return path


def _cifar(root: Path, folder: str, train_files: list[str], test_file: str, label_key: bytes,
           num_classes: int, name: str) -> _Raw:
    def read(fname):
        # Note: CIFAR's python format is a pickle; it is read only from the user's own data dir.
        with open(_require(root / folder / fname, name), "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return x, np.asarray(d[label_key])

    parts = [read(f) for f in train_files]
    xte, yte = read(test_file)
    xtr = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    ytr = np.concatenate([p[1] for p in parts])
    return _Raw(xtr, ytr, xte.astype(np.float32) / 255.0, yte, num_classes, "crop_flip")


@DATASETS.register("cifar10")
@_Loader.files
def _cifar10(root: Path) -> _Raw:
    return _cifar(root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                  "test_batch", b"labels", 10, "cifar10")


@DATASETS.register("cifar100")
@_Loader.files
def _cifar100(root: Path) -> _Raw:
    return _cifar(root, "cifar-100-python", ["train"], "test", b"fine_labels", 100, "cifar100")


@DATASETS.register("svhn")
@_Loader.files
def _svhn(root: Path) -> _Raw:
    from scipy.io import loadmat

    def read(fname):
        m = loadmat(_require(root / fname, "svhn"))
        x = np.transpose(m["X"], (3, 2, 0, 1)).astype(np.float32) / 255.0
        y = m["y"].astype(np.int64).reshape(-1)
        return x, np.where(y == 10, 0, y)   # SVHN stores digit 0 as label 10

    xtr, ytr = read("train_32x32.mat")
    xte, yte = read("test_32x32.mat")
    return _Raw(xtr, ytr, xte, yte, 10, "crop")


def _idx(path: Path, dataset: str) -> np.ndarray:
    p = path if path.exists() else path.with_name(path.name + ".gz")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(_require(p, dataset), "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _mnist_like(root: Path, folder: str, name: str) -> _Raw:
    raw = root / folder / "raw"
    xtr = _idx(raw / "train-images-idx3-ubyte", name)[:, None].astype(np.float32) / 255.0
    ytr = _idx(raw / "train-labels-idx1-ubyte", name)
    xte = _idx(raw / "t10k-images-idx3-ubyte", name)[:, None].astype(np.float32) / 255.0
    yte = _idx(raw / "t10k-labels-idx1-ubyte", name)
    return _Raw(xtr, ytr, xte, yte, 10)


@DATASETS.register("mnist")
@_Loader.files
def _mnist(root: Path) -> _Raw:
    return _mnist_like(root, "MNIST", "mnist")


@DATASETS.register("fashion_mnist")
@_Loader.files
def _fashion(root: Path) -> _Raw:
    return _mnist_like(root, "FashionMNIST", "fashion_mnist")
