"""Datasets as tensors: every split that fits in memory is one float tensor on the device.

`load_data(cfg.dataset, device)` calls the loader that `dataset._target_` names (a function
of this module marked with `@loader`) and returns a `Data` with the train and validation
splits and a `load_test()` that reads the test set only when asked. Images are flattened,
scaled to [0, 1] and normalised with the dataset's mean/std once, at load time, so a training
step is just an index into a tensor.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader

from .errors import ConfigError, DatasetError, first_line
from .schema import check_channel_stats, resolve_loader

log = logging.getLogger("mlprunner")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm")

# A streamed image folder's mean/std (dataset.mean/std null) come from at most this many training
# images (a seeded sample): decoding more costs start-up time and moves the statistics by less
# than their sampling error. README's dataset section names the cap.
STREAM_STATS_MAX_IMAGES = 10000

# Pillow's 16-bit grayscale modes (16-bit PNG, TIFF and PGM files). Their pixels run 0..65535;
# "I" too where it comes from such a file (some Pillow versions open 16-bit PNGs as "I", and
# Pillow scales a PGM's maxval to 65535).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class DataSizes:
    """A dataset's sizes as its config tells them, before any file is read (None: not known)."""

    pool: int | None  # examples the train/validation split is drawn from (before dataset.subset)
    other: int | None  # examples held besides the pool: the test set (loaded at the end of a run)
    features: int | None  # inputs per example


@dataclass(frozen=True)
class LoaderFacts:
    """What validation may know of a dataset before reading it."""

    num_classes: int | None  # None: known only from the files
    images: bool  # flat images with a (C, H, W) shape (augmentation needs one)
    preflight: Callable[[DictConfig], None] | None  # cheap checks before the run folder is made
    sizes: Callable[[DictConfig], DataSizes] | None = None  # for the split and memory checks
    channels: Callable[[DictConfig], int] | None = None  # image channels: dataset.mean/std's length
    # whether the config gives a test set (Data.load_test is not None); None: the loader always
    # has one, or tells only once it has loaded (eval.test is then checked after training)
    has_test: Callable[[DictConfig], bool] | None = None


def loader(
    num_classes: int | None = None,
    images: bool = True,
    preflight=None,
    sizes=None,
    channels=None,
    has_test=None,
):
    """Mark `fn(dataset_cfg, device) -> Data` as a dataset loader a `dataset._target_` may name."""

    def mark(fn):
        fn.dataset_facts = LoaderFacts(num_classes, images, preflight, sizes, channels, has_test)
        return fn

    return mark


def _one_channel(ds: DictConfig) -> int:
    return 1


def _image_channels(ds: DictConfig) -> int:
    return 1 if ds.get("grayscale", True) else 3


def _image_features(ds: DictConfig) -> int:
    size = list(ds.image_size)
    return _image_channels(ds) * int(size[0]) * int(size[1])


def num_batches(n: int, batch_size: int, min_size: int = 1) -> int:
    """Batches of `batch_size` over `n` samples, a last one smaller than `min_size` left out."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest and rest >= min_size else 0)


@dataclass
class Split:
    """An in-memory split: features (N, F) float32 and integer labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device) -> Split:
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None, min_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) batches by indexing; `order` is a permutation on the same device. A last
        batch smaller than `min_size` is left out (see models.min_train_batch)."""
        n = len(self)
        for start in range(0, n, batch_size):
            if n - start < min_size:
                return
            if order is None:
                yield self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)

    def num_batches(self, batch_size: int, min_size: int = 1) -> int:
        return num_batches(len(self), batch_size, min_size)


class StreamSplit:
    """A split too large for memory: a torch Dataset read through a DataLoader."""

    def __init__(self, dataset, device, mean, std, num_workers: int = 2):
        self.dataset = dataset
        self.device = torch.device(device)
        self.mean = mean
        self.std = std
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def num_batches(self, batch_size: int, min_size: int = 1) -> int:
        return num_batches(len(self), batch_size, min_size)

    def batches(self, batch_size: int, order: torch.Tensor | None = None, min_size: int = 1):
        sampler = None if order is None else order.cpu().tolist()
        loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for xb, yb in loader:
            if len(yb) < min_size:  # only the last batch can be short
                return
            xb = xb.to(self.device, non_blocking=True).flatten(1).float().div_(255.0)
            yield _normalize(xb, self.mean, self.std), yb.to(self.device, non_blocking=True)


@dataclass
class Data:
    train: Split | StreamSplit
    val: Split | StreamSplit | None
    num_features: int
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, int, int] | None  # (C, H, W) for image datasets
    mean: list[float] | None = None
    std: list[float] | None = None
    load_test: Callable[[], Split | StreamSplit] | None = None
    info: dict = field(default_factory=dict)

    def describe(self) -> str:
        n_val = len(self.val) if self.val is not None else 0
        return (
            f"{self.info.get('name', '?')}: {len(self.train)} train / {n_val} val, "
            f"{self.num_features} features, {self.num_classes} classes"
        )


def sample_images(data: Data, n: int = 64) -> torch.Tensor | None:
    """The first `n` training images as (N, C, H, W) in [0, 1] on the CPU, as they were read
    (normalisation undone, no augmentation), for TensorBoard's image grid; None when the data are
    no images."""
    if data.image_shape is None or len(data.train) == 0:
        return None
    x, _ = next(iter(data.train.batches(min(n, len(data.train)))))
    return as_images(data, x)


def as_images(data: Data, x: torch.Tensor) -> torch.Tensor:
    """Flat input rows (N, C*H*W) of an image dataset as images (N, C, H, W) in [0, 1] on the CPU,
    the normalisation undone."""
    x = x.detach().float().cpu().view(x.shape[0], *data.image_shape)
    if data.mean is not None and data.std is not None:
        c = data.image_shape[0]
        x = x * torch.tensor(data.std).view(1, c, 1, 1) + torch.tensor(data.mean).view(1, c, 1, 1)
    return x.clamp_(0.0, 1.0)


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalise a flat (N, C*H*W) or (N, F) batch with per-channel mean/std."""
    if mean is None or std is None:
        return x
    c = len(mean)
    if c == 1:
        return x.sub_(mean[0]).div_(std[0])
    n = x.shape[0]
    v = x.view(n, c, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, c, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, c, 1)
    return v.sub_(m).div_(s).view(n, -1)


def _channel_stats(x: torch.Tensor, channels: int) -> tuple[list[float], list[float]]:
    v = x.view(x.shape[0], channels, -1).transpose(0, 1).reshape(channels, -1).double()
    mean = v.mean(dim=1)
    std = v.std(dim=1).clamp_min(1e-8)
    return [float(m) for m in mean], [float(s) for s in std]


def check_feature_stats(ds: DictConfig, features: int, dataset: str) -> None:
    """dataset.mean/std of non-image data (both or neither, one length: check_channel_stats)
    hold one value per input feature."""
    check_channel_stats(ds)
    mean = ds.get("mean")
    if mean is not None and len(mean) != features:
        raise ConfigError(
            "dataset.mean", list(mean), f"a list of {features} value(s), one per input feature of {dataset}"
        )


def check_split(n: int, val_fraction: float, subset) -> tuple[int, int]:
    """(train, validation) sizes of a split of `n` examples cut to `subset`; ConfigError (naming
    dataset.subset when it is the cause) when no training example is left."""
    total = min(int(subset), n) if subset is not None else n
    n_val = int(round(total * float(val_fraction)))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if total - n_val < 1:
        if subset is not None and subset < n:
            raise ConfigError(
                "dataset.subset",
                subset,
                message=f"dataset.subset={subset} is too small to split: dataset.val_fraction={val_fraction} "
                f"leaves no training example; allowed: a subset of at least {2 if val_fraction > 0 else 1}",
            )
        raise ConfigError(
            "dataset.val_fraction",
            val_fraction,
            message=f"dataset.val_fraction={val_fraction} leaves no training example "
            f"out of {total}; allowed: a fraction that keeps at least one",
        )
    return total - n_val, n_val


def _split_indices(n: int, val_fraction: float, seed: int, subset: int | None):
    """A seeded permutation of range(n), optionally cut to `subset`, split into train/val."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    if subset is not None:
        perm = perm[: min(int(subset), n)]
    _, n_val = check_split(n, val_fraction, subset)
    return perm[n_val:], perm[:n_val]


def _unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (a new tensor); float features pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _finish(
    cfg: DictConfig,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    channels: int,
    image_shape,
    class_names,
    device,
    load_test_raw,
    info,
) -> Data:
    """Split official-train tensors (flat; uint8 pixels or float in [0,1]), normalise, move to
    the device. uint8 images are split first and converted after, so the whole file is never
    copied as float (less memory traffic and a lower loading peak; docs/performance.md)."""
    train_idx, val_idx = _split_indices(len(y_all), cfg.val_fraction, cfg.split_seed, cfg.get("subset"))
    x_train, y_train = _unit_float(x_all[train_idx]), y_all[train_idx]
    x_val, y_val = _unit_float(x_all[val_idx]), y_all[val_idx]
    mean = std = None
    if cfg.get("normalize", False):
        check_channel_stats(cfg, channels)  # validation checked it when the loader tells its channels
        if cfg.get("mean") is not None:
            mean, std = [float(v) for v in cfg.mean], [float(v) for v in cfg.std]
        else:
            mean, std = _channel_stats(x_train, channels)
        # in place: indexing with train_idx/val_idx made fresh copies (no extra 4 bytes/pixel)
        x_train = _normalize(x_train, mean, std)
        x_val = _normalize(x_val, mean, std)

    def load_test() -> Split:
        x, y = load_test_raw()
        return Split(_normalize(_unit_float(x), mean, std), y).to(device)

    val = Split(x_val, y_val).to(device) if len(y_val) else None
    return Data(
        train=Split(x_train.contiguous(), y_train).to(device),
        val=val,
        num_features=x_all.shape[1],
        num_classes=len(class_names),
        class_names=list(class_names),
        image_shape=image_shape,
        mean=mean,
        std=std,
        load_test=load_test if load_test_raw is not None else None,
        info=info,
    )


# --------------------------------------------------------------------------- torchvision MNIST family

# torchvision's folder name for each MNIST-family dataset: <root>/<folder>/raw/*-ubyte
MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
MNIST_CLASSES = {  # the class names torchvision's MNIST/FashionMNIST carry
    "mnist": [
        "0 - zero",
        "1 - one",
        "2 - two",
        "3 - three",
        "4 - four",
        "5 - five",
        "6 - six",
        "7 - seven",
        "8 - eight",
        "9 - nine",
    ],
    "fashion_mnist": [
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
    ],
}


def read_idx_pair(folder: Path, train: bool):
    """Read MNIST-format `*-ubyte` image and label files directly (no torchvision import).

    Returns (uint8 images (N, 28, 28), int64 labels (N,)), or None when the uncompressed files
    are missing or do not look right, so the caller falls back to torchvision (download, errors).
    Reading them here avoids importing torchvision (and torch._dynamo with it) before the first
    step; that import costs more than the read.
    """
    prefix = "train" if train else "t10k"
    images, labels = folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte"

    def read(path: Path) -> bytearray:  # one writable copy of the file, for torch.frombuffer
        with open(path, "rb") as fh:
            buf = bytearray(path.stat().st_size)
            fh.readinto(buf)
        return buf

    try:
        xb, yb = read(images), read(labels)
    except OSError:
        return None
    if len(xb) < 16 or len(yb) < 8:
        return None
    magic_x, n, rows, cols = (int.from_bytes(xb[i : i + 4], "big") for i in range(0, 16, 4))
    magic_y, m = (int.from_bytes(yb[i : i + 4], "big") for i in range(0, 8, 4))
    if (
        (magic_x, magic_y, rows, cols) != (2051, 2049, 28, 28)
        or n != m
        or len(xb) != 16 + n * rows * cols
        or len(yb) != 8 + n
    ):
        return None
    x = torch.frombuffer(xb, dtype=torch.uint8, offset=16).view(n, rows, cols)
    y = torch.frombuffer(yb, dtype=torch.uint8, offset=8).long()
    return x, y


# Files torchvision's MNIST/FashionMNIST need in <root>/<class>/raw/ when nothing is downloaded.
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _root_problem(root: Path, folder: Path) -> str | None:
    """What keeps the dataset folder from being read or made, named (the root, or a folder on
    the way, is a file; a folder or file cannot be read), or None. Said instead of advice to
    delete files that are not the problem."""
    for p in (root, *reversed(folder.relative_to(root).parents), folder):
        p = root / p if not p.is_absolute() else p
        if p.exists() and not p.is_dir():
            if p == root:
                return f"dataset.root={p} is a file, not a folder (MLPRUN_DATA or dataset.root must name a folder)"
            return f"{p} is a file where a folder is expected"
        if p.is_dir() and not os.access(p, os.R_OK | os.X_OK):
            return f"{p}: permission denied (the folder cannot be read)"
    for p in folder.glob("*") if folder.is_dir() else ():
        if p.is_file() and not os.access(p, os.R_OK):
            return f"{p}: permission denied (the file cannot be read)"
    return None


def _mnist_files_present(kind: str):
    def check(ds: DictConfig) -> None:
        sub = MNIST_FOLDERS[kind]
        root = Path(str(ds.root)).expanduser()
        problem = _root_problem(root, root / sub / "raw")
        if problem:
            raise DatasetError(f"{sub}: {problem}; set MLPRUN_DATA or dataset.root to a folder holding {sub}/raw/")
        if ds.get("download", False):
            return
        folder = root / sub / "raw"
        absent = [f for f in _MNIST_FILES if not (folder / f).is_file()]
        if absent:
            raise DatasetError(
                f"{sub} not found: looked in {folder} (dataset.root={root}) and {absent[0]} "
                f"is missing; dataset.download=false, so put the uncompressed *-ubyte files there, "
                f"or set MLPRUN_DATA or dataset.root to a folder holding {sub}/raw/, "
                f"or allow dataset.download=true with internet access"
            )

    return check


def _mnist_sizes(ds: DictConfig) -> DataSizes:
    return DataSizes(60000, 10000, 28 * 28)


@loader(num_classes=10, preflight=_mnist_files_present("mnist"), sizes=_mnist_sizes, channels=_one_channel)
def load_mnist(cfg: DictConfig, device) -> Data:
    return _torchvision_mnist(cfg, device, "mnist")


@loader(num_classes=10, preflight=_mnist_files_present("fashion_mnist"), sizes=_mnist_sizes, channels=_one_channel)
def load_fashion_mnist(cfg: DictConfig, device) -> Data:
    return _torchvision_mnist(cfg, device, "fashion_mnist")


def _torchvision_mnist(cfg: DictConfig, device, kind: str) -> Data:
    name = MNIST_FOLDERS[kind]
    root = Path(str(cfg.root)).expanduser()

    def read(train: bool):
        folder = root / name / "raw"
        fast = read_idx_pair(folder, train)
        if fast is not None:
            data, targets = fast
            return data.reshape(data.shape[0], -1), targets  # uint8: _finish scales after the split
        import torchvision

        cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[kind]
        try:
            ds = cls(str(root), train=train, download=bool(cfg.download))
        except RuntimeError as exc:
            if "not found" in str(exc).lower():
                raise DatasetError(
                    f"{cls.__name__} not found: looked in {folder} (dataset.root={root}); "
                    f"{'the download failed or was not possible; ' if cfg.download else ''}"
                    f"put the *-ubyte files there, set MLPRUN_DATA or dataset.root to a folder "
                    f"holding {cls.__name__}/raw/, or allow dataset.download=true with internet"
                ) from None
            if "error downloading" in str(exc).lower():
                raise DatasetError(
                    f"{cls.__name__} not found in {folder} (dataset.root={root}) and the download "
                    f"failed (no internet?): put the *-ubyte files there, or set MLPRUN_DATA or "
                    f"dataset.root to a folder holding {cls.__name__}/raw/"
                ) from None
            raise DatasetError(
                f"{cls.__name__} files in {folder} are truncated or malformed "
                f"({first_line(exc)}): "
                f"delete them and download again, or set dataset.root"
            ) from None
        except (OSError, ValueError, AssertionError, IndexError) as exc:
            problem = _root_problem(root, folder)
            if problem:  # not the files' content: no advice to delete them
                raise DatasetError(
                    f"{cls.__name__}: {problem}; set MLPRUN_DATA or dataset.root to a folder holding "
                    f"{cls.__name__}/raw/"
                ) from None
            msg = first_line(exc)
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and "ubyte" not in msg:
                msg = f"download failed ({msg})"
            raise DatasetError(
                f"{cls.__name__} in {folder} could not be read: {msg}; the files may be truncated "
                f"or malformed: delete them and download again, or set dataset.root"
            ) from None
        data, targets = ds.data, ds.targets
        if data.ndim != 3 or data.shape[0] != targets.shape[0] or data.shape[1:] != (28, 28):
            raise DatasetError(
                f"{cls.__name__} files in {folder} are malformed: "
                f"images {tuple(data.shape)}, labels {tuple(targets.shape)}"
            )
        return data.reshape(data.shape[0], -1), targets.long()

    x, y = read(train=True)
    classes = list(MNIST_CLASSES[kind])
    return _finish(
        cfg, x, y, 1, (1, 28, 28), classes, device, lambda: read(train=False), {"name": cfg.name, "root": str(root)}
    )


# --------------------------------------------------------------------------- scikit-learn digits


DIGITS_EXAMPLES = 1797  # scikit-learn's bundled digits


def _digits_sizes(ds: DictConfig) -> DataSizes:
    n_test = int(round(DIGITS_EXAMPLES * float(ds.test_fraction)))
    return DataSizes(DIGITS_EXAMPLES - n_test, n_test, 64)


@loader(num_classes=10, sizes=_digits_sizes, channels=_one_channel)
def load_digits(cfg: DictConfig, device) -> Data:
    from sklearn.datasets import load_digits  # lazy: scikit-learn's import costs ~1 s, only for digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).reshape(len(bunch.images), -1).div_(16.0)
    y = torch.tensor(bunch.target, dtype=torch.long)
    # the test split has its own seed, so a sweep over split_seed scores every job on the same
    # untouched images; a run saved without test_seed drew it with split_seed + 1
    test_seed = cfg.get("test_seed")
    g = torch.Generator().manual_seed(int(cfg.split_seed) + 1 if test_seed is None else int(test_seed))
    perm = torch.randperm(len(y), generator=g)
    n_test = int(round(len(y) * float(cfg.test_fraction)))
    test_idx, rest = perm[:n_test], perm[n_test:]

    def load_test():
        return x[test_idx].clone(), y[test_idx].clone()

    return _finish(
        cfg, x[rest], y[rest], 1, (1, 8, 8), [str(i) for i in range(10)], device, load_test, {"name": "digits"}
    )


# --------------------------------------------------------------------------- seed 001's XOR


def make_xor(n: int, noise: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Points in {0,1}^2 plus Gaussian noise; label 1 when exactly one coordinate is 1."""
    x = torch.randint(0, 2, (n, 2), generator=generator).float()
    y = (x.sum(dim=1) == 1).long()
    x += noise * torch.randn(x.shape, generator=generator)
    return x, y


def _xor_sizes(ds: DictConfig) -> DataSizes:
    return DataSizes(None, int(ds.n_train) + int(ds.n_val) + int(ds.n_test), 2)  # generated: no split


@loader(num_classes=2, images=False, sizes=_xor_sizes)
def load_xor(cfg: DictConfig, device) -> Data:
    g = torch.Generator().manual_seed(int(cfg.split_seed))
    x_tr, y_tr = make_xor(int(cfg.n_train), float(cfg.noise), g)
    x_va, y_va = make_xor(int(cfg.n_val), float(cfg.noise), g)
    x_te, y_te = make_xor(int(cfg.n_test), float(cfg.noise), g)
    mean = std = None
    if cfg.get("normalize", False):
        # per feature (a feature is a "channel" of one value): given, or from the training points;
        # Data.mean/std go into the checkpoint, so mlprun-eval normalises the test points alike
        check_feature_stats(cfg, 2, "dataset=xor")
        if cfg.get("mean") is not None:
            mean, std = [float(v) for v in cfg.mean], [float(v) for v in cfg.std]
        else:
            mean, std = _channel_stats(x_tr, 2)
        x_tr, x_va, x_te = (_normalize(x, mean, std) for x in (x_tr, x_va, x_te))
    return Data(
        train=Split(x_tr, y_tr).to(device),
        val=Split(x_va, y_va).to(device) if len(y_va) else None,
        num_features=2,
        num_classes=2,
        class_names=["0", "1"],
        image_shape=None,
        mean=mean,
        std=std,
        load_test=lambda: Split(x_te, y_te).to(device),
        info={"name": "xor"},
    )


# --------------------------------------------------------------------------- image files


def _eight_bit(img: Image.Image, path: Path) -> Image.Image:
    """A 16-bit grayscale image as 8-bit "L", scaled by its range (65535 -> 255): Pillow's
    convert() would clip every value above 255 to white. Other modes pass as they are (Pillow
    opens 16-bit RGB(A) PNGs as 8-bit RGB(A) itself); floating-point pixels have no range to
    scale by and are refused."""
    if img.mode == "F":
        raise DatasetError(
            f"image file {path}: mode F (32-bit floating-point pixels) has no fixed range to scale to "
            f"0..255; allowed: 8- or 16-bit integer images (save it as an 8- or 16-bit PNG)"
        )
    if img.mode not in SIXTEEN_BIT_MODES:
        return img
    a = np.asarray(img)
    if img.mode == "I" and a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
        raise DatasetError(
            f"image file {path}: mode I (32-bit integer) pixels {int(a.min())}..{int(a.max())} are outside "
            f"0..65535, the 16-bit range mlprun scales to 0..255; allowed: 8- or 16-bit images"
        )
    return Image.fromarray(np.rint(a / 257.0).astype(np.uint8))  # 65535 / 257 = 255


def load_image(path: Path, image_size, grayscale: bool) -> torch.Tensor:
    """Decode one image file to a uint8 (C, H, W) tensor resized to image_size (H, W)."""
    try:
        with Image.open(path) as img:
            img = _eight_bit(img, path).convert("L" if grayscale else "RGB")
            h, w = int(image_size[0]), int(image_size[1])
            if img.size != (w, h):
                img = img.resize((w, h), Image.BILINEAR)
            t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as exc:  # a crafted or huge image: refused undecoded
        raise DatasetError(f"image file {path} is too large to decode ({first_line(exc)}); resize it first") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"image file {path} cannot be decoded: {first_line(exc)}") from None
    c = 1 if grayscale else 3
    return t.view(h, w, c).permute(2, 0, 1).contiguous()


def _stack_images(paths, image_size, grayscale) -> torch.Tensor:
    if not paths:
        return torch.zeros(0, (1 if grayscale else 3) * int(image_size[0]) * int(image_size[1]))
    imgs = torch.stack([load_image(p, image_size, grayscale) for p in paths])
    return imgs.reshape(len(paths), -1).float().div_(255.0)


def read_image_csv(
    csv_path: Path, image_dir: Path, key: str = "dataset.csv", num_classes: int | None = None
) -> tuple[list[Path], list[int]]:
    """Rows of `relative image path, integer label`; a first row that is a header is skipped.

    key: the config key that names the CSV (errors name it). num_classes: the training data's
    class count, for a test CSV: a label the model has no output for is refused at its row."""
    if not csv_path.is_file():
        raise DatasetError(f"{key}: file not found: {csv_path}")
    paths, labels = [], []
    try:
        raw = csv_path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{key}: cannot read {csv_path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"{csv_path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); {key} must be a "
            f"UTF-8 CSV of 'image path,label' rows"
        ) from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise DatasetError(f"{csv_path}:{line}: a NUL byte: not a CSV of 'image path,label' rows (a binary file?)")
    with io.StringIO(text, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 2:
                raise DatasetError(f"{csv_path}:{lineno}: expected 'image path,label', got {row!r}")
            name, label = row[0].strip(), row[1].strip()
            try:
                value = int(label)
            except ValueError:
                if lineno == 1 and not paths:  # header row
                    continue
                raise DatasetError(f"{csv_path}:{lineno}: label {label!r} is not an integer") from None
            if value < 0:
                raise DatasetError(f"{csv_path}:{lineno}: label {value} is negative")
            if num_classes is not None and value >= num_classes:
                raise DatasetError(
                    f"{csv_path}:{lineno}: label {value} but the training data has {num_classes} classes "
                    f"(0..{num_classes - 1})"
                )
            path = image_dir / name
            if not path.is_file():
                raise DatasetError(f"{csv_path}:{lineno}: image file not found: {path}")
            paths.append(path)
            labels.append(value)
    if not paths:
        raise DatasetError(f"{csv_path}: no image rows")
    return paths, labels


def _has_test_csv(ds: DictConfig) -> bool:
    """Whether an image CSV dataset has a test set: the one rule of load_image_csv and validation."""
    return bool(ds.get("test_csv"))


def _read_test_csv(ds: DictConfig, num_classes: int) -> tuple[list[Path], list[int]]:
    """dataset.test_csv's rows (paths relative to dataset.image_dir, default the test CSV's
    folder), each label one the model has an output for."""
    test_csv = Path(str(ds.test_csv)).expanduser()
    image_dir = Path(str(ds.image_dir)).expanduser() if ds.get("image_dir") else test_csv.parent
    return read_image_csv(test_csv, image_dir, "dataset.test_csv", num_classes)


def _image_csv_readable(ds: DictConfig) -> None:
    csv_path = Path(str(ds.csv)).expanduser()
    image_dir = Path(str(ds.image_dir)).expanduser() if ds.get("image_dir") else csv_path.parent
    if ds.get("image_dir") and not image_dir.is_dir():
        raise DatasetError(f"dataset.image_dir: folder not found: {image_dir}")
    paths, labels = read_image_csv(csv_path, image_dir)
    names = _check_classes(ds, labels, csv_path)
    check_split(len(paths), float(ds.val_fraction), ds.get("subset"))
    if _has_test_csv(ds):  # read now, not found wrong after training
        _read_test_csv(ds, len(names))


def _check_classes(ds: DictConfig, labels: list[int], csv_path: Path) -> list[str]:
    """The class names of an image CSV's labels: at least two classes, and a name for each."""
    num_classes = max(labels) + 1
    if len(set(labels)) < 2:
        raise ConfigError(
            "dataset.csv",
            str(csv_path),
            message=f"dataset.csv={csv_path}: every row has label {labels[0]}; a classifier needs at least "
            f"two classes (labels 0, 1, ...)",
        )
    names = list(ds.class_names) if ds.get("class_names") else [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        raise ConfigError(
            "dataset.class_names", names, f"at least {num_classes} names (labels go up to {num_classes - 1})"
        )
    return names


@loader(
    preflight=_image_csv_readable,
    sizes=lambda ds: DataSizes(None, None, _image_features(ds)),
    channels=_image_channels,
    has_test=_has_test_csv,
)
def load_image_csv(cfg: DictConfig, device) -> Data:
    csv_path = Path(str(cfg.csv)).expanduser()
    image_dir = Path(str(cfg.image_dir)).expanduser() if cfg.get("image_dir") else csv_path.parent
    paths, labels = read_image_csv(csv_path, image_dir)
    size, gray = list(cfg.image_size), bool(cfg.grayscale)
    x = _stack_images(paths, size, gray)
    y = torch.tensor(labels, dtype=torch.long)
    names = _check_classes(cfg, labels, csv_path)
    channels = 1 if gray else 3
    load_test = None
    if _has_test_csv(cfg):

        def load_test():
            tp, tl = _read_test_csv(cfg, len(names))
            return _stack_images(tp, size, gray), torch.tensor(tl, dtype=torch.long)

    return _finish(
        cfg,
        x,
        y,
        channels,
        (channels, size[0], size[1]),
        names,
        device,
        load_test,
        {"name": "image_csv", "csv": str(csv_path)},
    )


class _FolderImages(torch.utils.data.Dataset):
    def __init__(self, samples, image_size, grayscale):
        self.samples, self.image_size, self.grayscale = samples, image_size, grayscale

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return load_image(Path(path), self.image_size, self.grayscale), label


def _image_folder_dataset(folder: Path):
    """torchvision's ImageFolder over image files, ignoring hidden folders (.hydra, .git, ...)."""
    from torchvision.datasets import ImageFolder  # lazy: torchvision.datasets costs ~1 s, only image folders

    class _VisibleImageFolder(ImageFolder):
        def find_classes(self, directory):
            classes = visible_subfolders(directory)
            if not classes:
                raise FileNotFoundError(f"no class subfolders in {directory}")
            return classes, {c: i for i, c in enumerate(classes)}

    return _VisibleImageFolder(str(folder), is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTENSIONS))


def _image_folder_present(ds: DictConfig) -> None:
    image_dir = Path(str(ds.image_dir)).expanduser()
    if not image_dir.is_dir():
        raise DatasetError(
            f"dataset.image_dir: folder not found: {image_dir} (expected one subfolder of images per class)"
        )
    names = _two_classes(image_dir, "dataset.image_dir")
    if _has_test_dir(ds):  # looked at now, not found wrong after training
        _check_test_dir(Path(str(ds.test_dir)).expanduser(), names)


def _has_test_dir(ds: DictConfig) -> bool:
    """Whether an image folder dataset has a test set: the one rule of load_image_folder and validation."""
    return bool(ds.get("test_dir"))


def visible_subfolders(folder) -> list[str]:
    """An image folder's class subfolders, sorted, hidden ones (.hydra, .git, ...) left out."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _class_folders(folder: Path, key: str) -> list[str]:
    """visible_subfolders, or one DatasetError line naming `key` when the folder cannot be read."""
    try:
        return visible_subfolders(folder)
    except OSError as exc:
        raise DatasetError(f"{key}: cannot read {folder}: {exc.strerror or exc}") from None


def _check_test_dir(test_dir: Path, names: list[str]) -> None:
    """dataset.test_dir exists and holds the training folder's class subfolders (`names`), each
    with an image: the labels the model was trained on, so the test labels mean the same."""
    if not test_dir.is_dir():
        raise DatasetError(
            f"dataset.test_dir: folder not found: {test_dir} (expected the class subfolders of dataset.image_dir)"
        )
    classes = _class_folders(test_dir, "dataset.test_dir")
    if classes != names:
        raise DatasetError(f"dataset.test_dir={test_dir}: classes {classes} differ from the training folder's {names}")
    for name in classes:  # ImageFolder refuses a class without an image file (walked as it walks)
        walk = os.walk(test_dir / name, followlinks=True)
        if not any(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in walk for f in files):
            raise DatasetError(
                f"dataset.test_dir={test_dir}: class folder {name}/ holds no image file ({', '.join(IMAGE_EXTENSIONS)})"
            )


def _two_classes(folder: Path, key: str) -> list[str]:
    """The class subfolders of `folder`; fewer than two train no classifier: refused."""
    classes = _class_folders(folder, key)
    if len(classes) < 2:
        found = f"only one, {classes[0]}/" if classes else "none"
        raise ConfigError(
            key,
            str(folder),
            message=f"{key}={folder}: a classifier needs at least two class subfolders (one per class); found {found}",
        )
    return classes


def _open_image_folder(folder: Path, key: str):
    """torchvision's ImageFolder over `folder` (the config key `key`), or one DatasetError line."""
    if not folder.is_dir():
        raise DatasetError(f"{key}: folder not found: {folder}")
    try:
        return _image_folder_dataset(folder)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"{key}={folder}: {first_line(exc)}") from None


@loader(
    preflight=_image_folder_present,
    sizes=lambda ds: DataSizes(None, None, _image_features(ds)),
    channels=_image_channels,
    has_test=_has_test_dir,
)
def load_image_folder(cfg: DictConfig, device) -> Data:
    image_dir = Path(str(cfg.image_dir)).expanduser()
    folder = _open_image_folder(image_dir, "dataset.image_dir")
    size, gray = list(cfg.image_size), bool(cfg.grayscale)
    channels = 1 if gray else 3
    _two_classes(image_dir, "dataset.image_dir")
    names = list(folder.classes)
    n = len(folder.samples)
    est_mb = n * channels * size[0] * size[1] * 4 / 2**20
    info = {"name": "image_folder", "image_dir": str(image_dir)}

    def load_test_raw():
        test_dir = Path(str(cfg.test_dir)).expanduser()
        _check_test_dir(test_dir, names)
        test = _open_image_folder(test_dir, "dataset.test_dir")
        return _stack_images([Path(p) for p, _ in test.samples], size, gray), torch.tensor(
            [t for _, t in test.samples], dtype=torch.long
        )

    load_test = load_test_raw if _has_test_dir(cfg) else None
    if est_mb <= float(cfg.in_memory_max_mb):
        x = _stack_images([Path(p) for p, _ in folder.samples], size, gray)
        y = torch.tensor([t for _, t in folder.samples], dtype=torch.long)
        return _finish(cfg, x, y, channels, (channels, size[0], size[1]), names, device, load_test, info)

    # Too large for memory: stream through a DataLoader, normalised per batch on the device.
    train_idx, val_idx = _split_indices(n, cfg.val_fraction, cfg.split_seed, cfg.get("subset"))
    samples = folder.samples
    mean = std = None
    workers = int(cfg.get("num_workers", 2))
    if cfg.get("normalize", False):
        check_channel_stats(cfg, channels)
        if cfg.get("mean") is not None:
            mean, std = [float(v) for v in cfg.mean], [float(v) for v in cfg.std]
        else:
            mean, std = _streamed_stats(samples, train_idx, size, gray, int(cfg.split_seed), workers)
    train = StreamSplit(_FolderImages([samples[i] for i in train_idx], size, gray), device, mean, std, workers)
    val = (
        StreamSplit(_FolderImages([samples[i] for i in val_idx], size, gray), device, mean, std, workers)
        if len(val_idx)
        else None
    )

    def load_test_stream():
        x, y = load_test_raw()
        return Split(_normalize(x, mean, std), y).to(device)

    return Data(
        train=train,
        val=val,
        num_features=channels * size[0] * size[1],
        num_classes=len(names),
        class_names=names,
        image_shape=(channels, size[0], size[1]),
        mean=mean,
        std=std,
        load_test=load_test_stream if load_test else None,
        info={**info, "streamed": True},
    )


def _streamed_stats(
    samples, train_idx: torch.Tensor, size, gray: bool, seed: int, workers: int, cap: int = STREAM_STATS_MAX_IMAGES
):
    """Per-channel mean/std of a streamed folder's training split, as the in-memory path computes
    them (pixels scaled to [0, 1], unbiased std): from every training image, or from a sample of
    `cap` drawn with dataset.split_seed, decoded by load_image as training decodes them. Sums
    run in float64 over batches, so the images are never held at once."""
    n = len(train_idx)
    pick = train_idx
    if n > cap:
        g = torch.Generator().manual_seed(seed)
        pick = train_idx[torch.randperm(n, generator=g)[:cap]]
    channels = 1 if gray else 3
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    images = _FolderImages([samples[i] for i in pick.tolist()], size, gray)
    for xb, _ in torch.utils.data.DataLoader(images, batch_size=256, num_workers=workers):
        v = xb.view(xb.shape[0], channels, -1).double().div_(255.0)
        total += v.sum(dim=(0, 2))
        squares += v.square().sum(dim=(0, 2))
        count += v.shape[0] * v.shape[2]
    mean = total / count
    var = (squares - count * mean.square()) / max(count - 1, 1)
    std = var.clamp_min(0).sqrt().clamp_min(1e-8)
    if len(pick) < n:
        log.info(
            f"dataset.mean/std: computed from {len(pick)} of {n} training images "
            f"(a sample drawn with dataset.split_seed; at most {cap})"
        )
    else:
        log.info(f"dataset.mean/std: computed from all {n} training images")
    return [float(m) for m in mean], [float(s) for s in std]


def load_data(cfg: DictConfig, device, meanwhile: Callable[[], object] | None = None) -> Data:
    """Build the dataset whose loader cfg._target_ names (already validated) on `device`.

    `meanwhile`, if given, runs in this thread while the data loads in a helper thread: file
    reads and tensor operations release the GIL, so other start-up work overlaps them. An error
    of the loader is raised here, in the caller's thread."""
    load = resolve_loader(cfg)
    if meanwhile is None:
        return load(cfg, torch.device(device))
    box: dict = {}

    def work():
        try:
            box["data"] = load(cfg, torch.device(device))
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    # daemon: an interrupted start-up does not wait for a download to finish
    worker = threading.Thread(target=work, name="mlprun-load-data", daemon=True)
    worker.start()
    meanwhile()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["data"]
