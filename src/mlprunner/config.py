"""Config helpers: resolvers, validation of a composed config, and small accessors.

Validation runs before anything is built or written. Every error names the key, the bad
value and what is allowed, and maps to exit code 2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from .data import MNIST_FOLDERS, read_image_csv
from .device import resolve_device
from .errors import ConfigError, DatasetError

ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "elu", "gelu", "silu")
DATASETS = ("mnist", "fashion_mnist", "digits", "xor", "image_csv", "image_folder")
LOSSES = ("cross_entropy", "nll", "bce_with_logits", "mse", "l1", "multi_margin")
SCHEDULERS = ("none", "step", "multistep", "exponential", "cosine", "plateau", "onecycle")
MONITORS = ("val/error", "val/loss", "val/accuracy", "val/f1")
PRECISIONS = ("fp32", "bf16", "fp16")
PROGRESS = ("auto", "rich", "plain", "none")
# Classes of the datasets whose class count is known from the name alone, so a loss that cannot
# fit them is refused before any data is read or any folder is written.
CLASS_COUNTS = {"mnist": 10, "fashion_mnist": 10, "digits": 10, "xor": 2}
# Keys that must hold true/false.
_BOOLS = (
    "trainer.deterministic", "trainer.compile", "trainer.profile",
    "trainer.tensorboard.enabled", "trainer.tensorboard.histograms", "trainer.tensorboard.graph",
    "trainer.early_stopping.enabled", "trainer.checkpoint.save_last", "trainer.checkpoint.save_best",
    "trainer.swa.enabled", "model.batchnorm", "optim.nesterov", "dataset.download", "dataset.normalize",
    "dataset.grayscale", "dataset.augment.enabled", "eval.test",
)
# Nodes that must stay mappings (e.g. `trainer.early_stopping=5` would replace one by a number).
_MAPPINGS = (
    "trainer.tensorboard", "trainer.early_stopping", "trainer.checkpoint", "trainer.swa",
    "dataset.augment",
)
# Keys of the scheduler and loss groups that belong to mlprun, not to the torch class.
SCHEDULER_META = ("name", "interval", "warmup_epochs", "warmup_start_factor")
LOSS_META = ("name",)
# Keys that hold numbers of a given kind: (key, type, low, high, low_inclusive, high_inclusive)
_NUMBERS = [
    ("optim.lr", float, 0.0, math.inf, False, True),
    ("optim.weight_decay", float, 0.0, math.inf, True, True),
    ("optim.momentum", float, 0.0, 1.0, True, False),
    ("optim.eps", float, 0.0, math.inf, False, True),
    ("optim.rho", float, 0.0, 1.0, True, True),
    ("optim.alpha", float, 0.0, 1.0, True, True),
    ("model.dropout", float, 0.0, 1.0, True, False),
    ("model.input_dropout", float, 0.0, 1.0, True, False),
    ("trainer.epochs", int, 1, math.inf, True, True),
    ("trainer.batch_size", int, 1, math.inf, True, True),
    ("trainer.eval_batch_size", int, 1, math.inf, True, True),
    ("trainer.seed", int, 0, 2**63 - 1, True, True),
    ("trainer.log_every_n_steps", int, 1, math.inf, True, True),
    ("trainer.grad_clip", float, 0.0, math.inf, False, True),
    ("trainer.threads", int, 1, 1024, True, True),
    ("trainer.early_stopping.patience", int, 0, math.inf, True, True),
    ("trainer.early_stopping.min_delta", float, 0.0, math.inf, True, True),
    ("dataset.val_fraction", float, 0.0, 1.0, True, False),
    ("dataset.test_fraction", float, 0.0, 1.0, False, False),
    ("dataset.subset", int, 1, math.inf, True, True),
    ("dataset.split_seed", int, 0, 2**63 - 1, True, True),
    ("dataset.n_train", int, 1, math.inf, True, True),
    ("dataset.n_val", int, 0, math.inf, True, True),
    ("dataset.n_test", int, 1, math.inf, True, True),
    ("dataset.noise", float, 0.0, math.inf, True, True),
    ("scheduler.warmup_epochs", int, 0, math.inf, True, True),
    ("scheduler.warmup_start_factor", float, 0.0, 1.0, False, True),
    ("scheduler.gamma", float, 0.0, math.inf, False, True),
    ("scheduler.step_size", int, 1, math.inf, True, True),
    ("scheduler.max_lr", float, 0.0, math.inf, False, True),
    ("loss.label_smoothing", float, 0.0, 1.0, True, True),
]


def register_resolvers() -> None:
    """Resolvers used by configs/config.yaml (idempotent)."""
    if not OmegaConf.has_resolver("mlprun_unique"):
        # The process id makes the default run folder unique among runs started in one second.
        OmegaConf.register_new_resolver("mlprun_unique", lambda: f"{os.getpid()}", use_cache=True)


def _range_text(low, high, low_inc, high_inc) -> str:
    lo = ("[" if low_inc else "(") + (f"{low:g}" if low != -math.inf else "-inf")
    hi = (f"{high:g}" if high != math.inf else "inf") + ("]" if high_inc else ")")
    return f"a number in {lo}, {hi}"


def _check_number(cfg: DictConfig, key: str, kind, low, high, low_inc, high_inc) -> None:
    if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
        return
    value = OmegaConf.select(cfg, key)
    if value is None and key in (
        "trainer.grad_clip", "trainer.threads", "dataset.subset", "scheduler.max_lr",
    ):
        return
    allowed = _range_text(low, high, low_inc, high_inc)
    if kind is int:
        allowed = allowed.replace("a number", "an integer")
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise ConfigError(key, value, allowed)
    inside = (value > low or (low_inc and value == low)) and (value < high or (high_inc and value == high))
    if not inside:
        raise ConfigError(key, value, allowed)


def _check_choice(cfg: DictConfig, key: str, choices: Sequence[str]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in choices:
        raise ConfigError(key, value, ", ".join(choices))


def select(cfg: DictConfig, key: str, default=None):
    return OmegaConf.select(cfg, key, default=default)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value of a composed mlprun config."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as exc:  # an interpolation that cannot be resolved
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(key, message=f"{key}: {str(exc).splitlines()[0]}") from None
    for group in ("dataset", "model", "optim", "scheduler", "loss", "trainer"):
        if not isinstance(cfg.get(group), DictConfig):
            raise ConfigError(group, cfg.get(group), f"a config group ({group}=<option>)")
    missing = []
    for key in ("dataset.csv", "dataset.image_dir"):
        node, _, leaf = key.partition(".")
        if leaf in cfg[node].keys() and OmegaConf.is_missing(cfg[node], leaf):
            missing.append(key)
    if missing:
        raise ConfigError(missing[0], "???", message=(
            f"{missing[0]} is required for dataset={cfg.dataset.name}; "
            f"give it on the command line, e.g. {missing[0]}=path/to/..."))

    for key in _MAPPINGS:
        node = OmegaConf.select(cfg, key, default="__absent__")
        if node != "__absent__" and not isinstance(node, DictConfig):
            raise ConfigError(key, _plain(node), f"a group of keys ({key}.<key>=...), not a single value")
    for key in _BOOLS:
        value = OmegaConf.select(cfg, key, default="__absent__")
        if value != "__absent__" and not isinstance(value, bool):
            raise ConfigError(key, _plain(value), "true or false")

    _check_choice(cfg, "dataset.name", DATASETS)
    _check_choice(cfg, "model.activation", ACTIVATIONS)
    _check_choice(cfg, "loss.name", LOSSES)
    _check_choice(cfg, "scheduler.name", SCHEDULERS)
    _check_choice(cfg, "trainer.precision", PRECISIONS)
    _check_choice(cfg, "trainer.progress", PROGRESS)
    _check_choice(cfg, "trainer.early_stopping.monitor", MONITORS)
    _check_choice(cfg, "trainer.early_stopping.mode", ("min", "max"))
    _check_choice(cfg, "eval.checkpoint", ("best", "last"))
    for spec in _NUMBERS:
        _check_number(cfg, *spec)

    hidden = cfg.model.hidden
    if not isinstance(hidden, (ListConfig, list)) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in hidden
    ):
        raise ConfigError("model.hidden", _plain(hidden), "a list of positive integers, e.g. [500,300] or []")
    if any(w > 65536 for w in hidden):
        raise ConfigError("model.hidden", _plain(hidden), "widths between 1 and 65536")

    device = str(cfg.trainer.device)
    if not (device in ("auto", "cpu", "mps", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError("trainer.device", device, "auto, cpu, cuda, cuda:N, mps")

    if cfg.scheduler.name != "none":
        interval = cfg.scheduler.get("interval")
        if interval not in ("epoch", "step"):
            raise ConfigError("scheduler.interval", interval, "epoch, step")
        if cfg.scheduler.name == "plateau" and cfg.scheduler.get("warmup_epochs", 0):
            raise ConfigError("scheduler.warmup_epochs", cfg.scheduler.warmup_epochs,
                              "0 with scheduler=plateau (warm-up cannot be chained with ReduceLROnPlateau)")
        if cfg.scheduler.get("warmup_epochs", 0) >= cfg.trainer.epochs:
            raise ConfigError("scheduler.warmup_epochs", cfg.scheduler.warmup_epochs,
                              f"fewer than trainer.epochs ({cfg.trainer.epochs})")
        if cfg.scheduler.name == "multistep":
            ms = cfg.scheduler.get("milestones")
            if not isinstance(ms, (ListConfig, list)) or not all(isinstance(m, int) and m > 0 for m in ms):
                raise ConfigError("scheduler.milestones", _plain(ms), "a list of positive epoch numbers")

    if cfg.dataset.name == "xor" and cfg.dataset.n_val == 0 and cfg.trainer.early_stopping.enabled:
        raise ConfigError("trainer.early_stopping.enabled", True, "false when dataset.n_val=0")
    betas = OmegaConf.select(cfg, "optim.betas")
    if betas is not None and (
        not isinstance(betas, (ListConfig, list)) or len(betas) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
    ):
        raise ConfigError("optim.betas", _plain(betas), "two numbers in [0, 1), e.g. [0.9,0.999]")
    if cfg.dataset.name in CLASS_COUNTS:
        check_loss_fits(cfg.loss.name, CLASS_COUNTS[cfg.dataset.name], cfg.dataset.name)
    val_fraction = cfg.dataset.get("val_fraction")
    if val_fraction == 0 and cfg.trainer.early_stopping.enabled:
        raise ConfigError("trainer.early_stopping.enabled", True,
                          "false when dataset.val_fraction=0 (there is no validation set)")
    for key in ("dataset.mean", "dataset.std"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (
            not isinstance(value, (ListConfig, list)) or len(value) == 0
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise ConfigError(key, _plain(value), "null or a list of numbers, one per channel")
    std = OmegaConf.select(cfg, "dataset.std")
    if std is not None and any(v <= 0 for v in std):
        raise ConfigError("dataset.std", _plain(std), "positive numbers")


def check_loss_fits(loss_name: str, num_classes: int, dataset: str | None = None) -> None:
    """A loss that cannot fit the dataset is a configuration error."""
    if loss_name == "bce_with_logits" and num_classes != 2:
        which = f"dataset={dataset}" if dataset else "the dataset"
        raise ConfigError("loss", loss_name, message=(
            f"loss=bce_with_logits needs a binary task but {which} has {num_classes} classes; "
            "allowed for it: cross_entropy, nll, mse, l1, multi_margin"))


# Files torchvision's MNIST/FashionMNIST need in <root>/<class>/raw/ when nothing is downloaded.
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def preflight(cfg: DictConfig) -> None:
    """Cheap checks of the environment a valid config needs, before any run folder is made.

    The device must exist; dataset files that cannot be downloaded must be present; an image
    CSV must name existing files with integer labels. Failures are runtime errors (exit 1).
    """
    resolve_device(cfg.trainer.device)
    ds = cfg.dataset
    if ds.name in ("mnist", "fashion_mnist") and not ds.get("download", False):
        sub = MNIST_FOLDERS[ds.name]
        root = Path(str(ds.root)).expanduser()
        folder = root / sub / "raw"
        absent = [f for f in _MNIST_FILES if not (folder / f).is_file()]
        if absent:
            raise DatasetError(
                f"{sub} not found: looked in {folder} (dataset.root={root}) and {absent[0]} "
                f"is missing; dataset.download=false, so put the uncompressed *-ubyte files there, "
                f"or set MLPRUN_DATA or dataset.root to a folder holding {sub}/raw/, "
                f"or allow dataset.download=true with internet access")
    elif ds.name == "image_csv":
        csv_path = Path(str(ds.csv)).expanduser()
        image_dir = Path(str(ds.image_dir)).expanduser() if ds.get("image_dir") else csv_path.parent
        if ds.get("image_dir") and not image_dir.is_dir():
            raise DatasetError(f"dataset.image_dir: folder not found: {image_dir}")
        read_image_csv(csv_path, image_dir)
    elif ds.name == "image_folder":
        image_dir = Path(str(ds.image_dir)).expanduser()
        if not image_dir.is_dir():
            raise DatasetError(f"dataset.image_dir: folder not found: {image_dir} "
                               "(expected one subfolder of images per class)")


def _plain(value):
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value)
    return value


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
