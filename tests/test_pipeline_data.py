"""Datasets: every registered dataset's shapes, split and normalisation; file layouts; errors;
augmentation. File-based datasets are read from tiny files that ``helpers.write_tiny``
writes in torchvision's on-disk layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import write_tiny

import pipeline.data as data_mod
from pipeline.data import DATASETS, load_dataset, random_crop_flip
from pipeline.specs import DataSpec

torch.set_num_threads(1)

FILE_DATASETS = ["cifar10", "cifar100", "svhn", "mnist", "fashion_mnist"]
BUILTIN = {"mnist1d": ((1, 40), 4000, 1000), "digits": ((1, 8, 8), 1437, 360)}


def test_every_dataset_has_a_test_case():
    assert set(DATASETS.names()) == set(FILE_DATASETS) | set(BUILTIN)


def _check_split(ds, n_total: int, val_fraction: float) -> None:
    n_val = round(val_fraction * n_total)
    assert len(ds.x_val) == len(ds.y_val) == n_val
    assert len(ds.x_train) == len(ds.y_train) == n_total - n_val
    assert ds.x_train.dtype == ds.x_val.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert 0 <= int(y.min()) and int(y.max()) < ds.num_classes


def _match_rows(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """For each row of ``got``, the index of its (near-exact) equal row in ``expected``."""
    dist = torch.cdist(got.flatten(1).double(), expected.flatten(1).double())
    best = dist.argmin(1)
    assert torch.all(dist[torch.arange(len(got)), best] < 1e-3), (
        "a row has no equal in the raw data")
    return best


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_dataset_shapes_and_split(name):
    shape, n_train, n_test = BUILTIN[name]
    ds = load_dataset(DataSpec(name=name))
    assert ds.input_shape == shape and ds.num_classes == 10
    assert tuple(ds.x_test.shape) == (n_test, *shape) and len(ds.y_test) == n_test
    _check_split(ds, n_train, 0.1)
    # the raw rows are distinct (checked here), so validation and training rows must be too
    union = torch.cat([ds.x_train, ds.x_val]).flatten(1)
    assert len(torch.unique(union, dim=0)) == n_train, "validation overlaps training"
    # normalised with the training set's statistics
    assert abs(float(union.mean())) < 1e-3 and abs(float(union.std()) - 1) < 1e-2


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_file_dataset_loads_normalised_and_split(name, tmp_path):
    raw = write_tiny(name, tmp_path)
    spec = DataSpec(name=name, data_dir=str(tmp_path), val_fraction=0.1)
    ds = load_dataset(spec)
    n = len(raw["x_train"])
    assert ds.input_shape == raw["x_train"].shape[1:]
    assert ds.num_classes == raw["num_classes"]
    _check_split(ds, n, 0.1)
    axes = (0, 2, 3)
    mean = raw["x_train"].mean(axis=axes, keepdims=True)
    std = raw["x_train"].std(axis=axes, keepdims=True)
    expected = torch.from_numpy((raw["x_train"] - mean) / std)
    # every training/validation row is a distinct raw training row, with its label
    idx = _match_rows(torch.cat([ds.x_train, ds.x_val]), expected)
    assert len(set(idx.tolist())) == n, "validation overlaps training (or rows are lost)"
    assert torch.equal(torch.cat([ds.y_train, ds.y_val]),
                       torch.from_numpy(raw["y_train"][idx.numpy()]))
    # the test set: same order, normalised with the training statistics, labels mapped
    # (SVHN 10 -> 0)
    exp_test = torch.from_numpy((raw["x_test"] - mean) / std).float()
    assert torch.allclose(ds.x_test, exp_test, atol=1e-5)
    assert torch.equal(ds.y_test, torch.from_numpy(raw["y_test"].astype(np.int64)))
    union = torch.cat([ds.x_train, ds.x_val]).double()
    assert torch.allclose(union.mean(dim=axes),
                          torch.zeros(union.shape[1], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(union.std(dim=axes, unbiased=False),
                          torch.ones(union.shape[1], dtype=torch.float64), atol=1e-4)


def test_split_is_deterministic_and_seeded(monkeypatch):
    spec = DataSpec(name="digits")
    a = load_dataset(spec)
    monkeypatch.setattr(data_mod, "_CACHE", {})            # force a fresh load
    b = load_dataset(spec)
    assert a is not b
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    c = load_dataset(spec.replace(split_seed=1))
    assert not torch.equal(a.x_val, c.x_val)
    # another seed only moves examples between the splits
    rows = lambda d: torch.cat([d.x_train, d.x_val]).flatten(1)  # noqa: E731
    assert torch.equal(torch.unique(rows(a), dim=0), torch.unique(rows(c), dim=0))


def test_train_subset_takes_the_first_examples():
    full, sub = load_dataset(DataSpec(name="digits", val_fraction=0.0)), \
        load_dataset(DataSpec(name="digits", val_fraction=0.0, train_subset=100))
    assert len(sub.x_train) == 100 and len(sub.x_val) == 0
    # normalised over the subset, so compare labels (and the test set is untouched)
    assert torch.equal(sub.y_train, full.y_train[:100])
    assert len(sub.x_test) == len(full.x_test)


# --- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FILE_DATASETS)
def test_missing_data_dir_is_a_clear_error(name, tmp_path):
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset(DataSpec(name=name))
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_dataset(DataSpec(name=name, data_dir=str(missing)))


@pytest.mark.parametrize("name, expected", [
    ("cifar10", "cifar-10-batches-py/data_batch_1"),
    ("cifar100", "cifar-100-python/train"),
    ("svhn", "train_32x32.mat"),
    ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
    ("fashion_mnist", "FashionMNIST/raw/train-images-idx3-ubyte"),
])
def test_missing_file_names_the_expected_path(name, expected, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / expected)):
        load_dataset(DataSpec(name=name, data_dir=str(tmp_path)))


def test_unknown_dataset_names_the_field():
    with pytest.raises(ValueError, match="data.name"):
        load_dataset(DataSpec(name="imagenet"))


# --- augmentation --------------------------------------------------------------------------

def test_crop_preserves_shape_and_pads_with_the_pad_value():
    n, c, h, w = 64, 3, 8, 8
    x = torch.full((n, c, h, w), 5.0)
    pad_value = torch.tensor([-1.0, -2.0, -3.0])
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=4, pad_value=pad_value)
    assert out.shape == x.shape
    is_pad = out != 5.0
    # a padding pixel is the pad value in every channel at once (a black pixel)
    assert torch.equal(is_pad[:, 0], is_pad[:, 1]) and torch.equal(is_pad[:, 0], is_pad[:, 2])
    for ch in range(c):
        assert torch.all(out[:, ch][is_pad[:, ch]] == pad_value[ch])
    shifted = is_pad[:, 0].flatten(1).any(1)
    assert shifted.float().mean() > 0.5          # most crops are shifted (8 of 9 offsets per axis)
    # the kept image is one contiguous block of at least (h-4) x (w-4) pixels
    for i in range(n):
        keep = ~is_pad[i, 0]
        r, col = keep.any(1).nonzero().flatten(), keep.any(0).nonzero().flatten()
        assert len(r) >= h - 4 and len(col) >= w - 4
        assert keep[r.min():r.max() + 1, col.min():col.max() + 1].all()
        assert int(keep.sum()) == len(r) * len(col)


def test_crop_flip_is_deterministic_for_a_generator_and_flips():
    x = torch.randn(64, 3, 8, 8)
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    c = random_crop_flip(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # with no padding the crop is the image itself, so only flips remain
    out = random_crop_flip(x, torch.Generator().manual_seed(3), pad=0)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same | flipped)
    assert 10 < int(flipped.sum()) < 54, "flips should happen about half of the time"
    none = random_crop_flip(x, torch.Generator().manual_seed(3), pad=0, flip=False)
    assert torch.equal(none, x)


def test_cifar_augmentation_pads_black(tmp_path):
    raw = write_tiny("cifar10", tmp_path)
    ds = load_dataset(DataSpec(name="cifar10", data_dir=str(tmp_path)))
    assert ds.augment is not None
    mean = raw["x_train"].mean(axis=(0, 2, 3))
    std = raw["x_train"].std(axis=(0, 2, 3))
    black = torch.from_numpy(-mean / std).float()                 # pixel value 0, normalised
    x = torch.full((200, 3, 32, 32), 7.0)                         # no real pixel is 7
    out = ds.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    pad = out[:, 0] != 7.0
    assert pad.any()
    for ch in range(3):
        assert torch.allclose(out[:, ch][pad], black[ch].expand(int(pad.sum())))
    # non-augmented datasets have no augmentation
    assert load_dataset(DataSpec(name="digits")).augment is None


def test_svhn_augmentation_does_not_flip(tmp_path):
    write_tiny("svhn", tmp_path)
    ds = load_dataset(DataSpec(name="svhn", data_dir=str(tmp_path)))
    x = torch.arange(32.0).expand(50, 3, 32, 32).clone() + 100    # columns increase left to right
    out = ds.augment(x, torch.Generator().manual_seed(0))
    inside = out[:, 0, 16]                                         # a middle row, always image
    real = inside >= 100
    for row, keep in zip(inside, real, strict=True):
        assert torch.all(row[keep].diff() > 0)                     # never reversed
