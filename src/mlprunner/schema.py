"""The config schema: every key mlprun reads, its type, range or allowed values, in one table.

`SCHEMA` is what validation checks (before anything is built or written), what the "allowed:"
part of every per-key error says, and which keys of a component group belong to mlprun rather
than to the class its `_target_` names (`own=True`: never passed to the class). The option
lists live in the configs folder: the config groups are the groups of configs/config.yaml's
defaults list, and a component is named only by its option file's `_target_`.

Adding a dataset, optimizer, scheduler or loss: one YAML file in its group (plus, for a dataset,
its loader function in data.py); adding an activation: one entry in `ACTIVATIONS` below.
Importing this module imports no torch and none of mlprun's heavier modules, so the command
line can use it before a run starts; `component_class` and `resolve_loader` import what a
`_target_` names, when asked.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from inspect import Parameter, signature

from hydra.utils import get_class, get_method
from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError, first_line

INF = math.inf

# model.activation: the name a config uses -> the torch.nn class models.MLP puts after each layer
ACTIVATIONS = {
    "relu": "ReLU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "leaky_relu": "LeakyReLU",
    "elu": "ELU",
    "gelu": "GELU",
    "silu": "SiLU",
}
MONITORS = ("val/error", "val/loss", "val/accuracy", "val/f1", "val/precision", "val/recall")


# --------------------------------------------------------------------------- kinds of keys


def _plain(value):
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value)
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _end(x) -> str:
    """A range's end as typed: integers whole (2**63 - 1, not 9.22337e+18), others short."""
    return str(x) if _is_int(x) else f"{x:g}"


def _range_text(low, high, low_inc, high_inc) -> str:
    # inf and nan are never numbers a key takes (_is_number), so an infinite end is open
    lo = ("[" if low_inc and low != -INF else "(") + (_end(low) if low != -INF else "-inf")
    hi = (_end(high) if high != INF else "inf") + ("]" if high_inc and high != INF else ")")
    return f"a number in {lo}, {hi}"


def _word(value) -> str:
    return (
        {True: "true", False: "false", None: "null"}.get(value, str(value))
        if isinstance(value, (bool, type(None)))
        else str(value)
    )


@dataclass(frozen=True)
class Spec:
    """One key: `check(value)` returns None when the value is allowed, else the allowed text."""

    test: Callable[[object], bool]
    allowed: str
    nullable: bool = False
    own: bool = False  # a key of mlprun inside a component group, not a class argument
    path: bool = False  # a file or folder name (its `???` asks for a path)
    mapping: bool = False  # a node of keys, checked before the keys in it
    extra: Callable[[object], str | None] | None = None  # a second check with its own text

    def check(self, value) -> str | None:
        if value is None and self.nullable:
            return None
        if not self.test(value):
            return self.allowed
        return self.extra(value) if self.extra is not None else None


def number(low=-INF, high=INF, low_inc=True, high_inc=True, *, nullable=False, allowed=None, own=False) -> Spec:
    def test(v):
        return _is_number(v) and (v > low or (low_inc and v == low)) and (v < high or (high_inc and v == high))

    return Spec(test, allowed or _range_text(low, high, low_inc, high_inc), nullable=nullable, own=own)


def integer(low=-INF, high=INF, *, nullable=False, allowed=None, own=False) -> Spec:
    def test(v):
        return _is_int(v) and low <= v <= high

    text = allowed or _range_text(low, high, True, True).replace("a number", "an integer")
    return Spec(test, text, nullable=nullable, own=own)


def choice(*values, own=False) -> Spec:
    # type and value must both match: 1 is not true, 'true' is not true
    def test(v):
        return any(type(v) is type(c) and v == c for c in values)

    return Spec(test, ", ".join(_word(c) for c in values), own=own)


def boolean() -> Spec:
    return Spec(lambda v: isinstance(v, bool), "true or false")


def text(allowed="a string", *, nullable=False) -> Spec:
    return Spec(lambda v: isinstance(v, str) and v != "", allowed, nullable=nullable)


def path(*, nullable=False) -> Spec:
    # Hydra parses dataset.root=2024 as an int: a folder name all the same
    return Spec(
        lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v) != "",
        "a file or folder path",
        nullable=nullable,
        path=True,
    )


def mapping(key: str, switch: bool = False) -> Spec:
    """A group of keys; `switch`: it is turned on and off by its `enabled` key (the message says so:
    trainer.swa=true means trainer.swa.enabled=true)."""
    example = f"; on and off: {key}.enabled=true|false" if switch else ""
    return Spec(
        lambda v: isinstance(v, (DictConfig, dict)),
        f"a group of keys ({key}.<key>=...), not a single value{example}",
        mapping=True,
    )


def listing(item: Callable[[object], bool], allowed: str, *, nullable=False, length=None, extra=None) -> Spec:
    def test(v):
        return isinstance(v, (ListConfig, list)) and (length is None or len(v) == length) and all(item(x) for x in v)

    return Spec(test, allowed, nullable=nullable, extra=extra)


def target() -> Spec:
    return text("a dotted class or function name, e.g. torch.optim.Adam")


# Keys of older configs (checkpoints and .hydra/config.yaml of runs made before components
# were named by `_target_` alone): accepted and ignored.
LEGACY = Spec(lambda v: True, "anything (ignored)", nullable=True, own=True)


def _hidden_widths(v) -> str | None:
    return "widths between 1 and 65536" if any(w > 65536 for w in v) else None


def _positive(v) -> str | None:
    return "positive numbers" if any(x <= 0 for x in v) else None


def _device(v) -> bool:
    return isinstance(v, str) and (v in ("auto", "cpu", "mps", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()))


def _non_empty_numbers(v) -> bool:
    # finite: a nan or inf mean/std turns every input into nan or 0 (a run that diverges or learns nothing)
    return isinstance(v, (ListConfig, list)) and len(v) > 0 and all(_is_number(x) for x in v)


_channels = Spec(_non_empty_numbers, "null or a list of finite numbers, one per channel", nullable=True)


def check_channel_stats(ds, channels: int | None = None, dataset: str = "") -> None:
    """dataset.mean and dataset.std (each already a valid list or null, SCHEMA): both lists or
    both null, of one length, and, when the loader tells its image channels (`channels`), one
    value per channel. Checked by validation before the run folder is made, and again by the
    loaders in data.py (a loader of the user's own may know its channels only from its files)."""
    mean, std = ds.get("mean"), ds.get("std")
    if (mean is None) != (std is None):
        given, other = ("dataset.mean", "dataset.std") if std is None else ("dataset.std", "dataset.mean")
        raise ConfigError(other, None, message=f"{other} is null but {given} is set; allowed: both lists, or both null")
    if mean is None:
        return
    if len(mean) != len(std):
        raise ConfigError(
            "dataset.std",
            list(std),
            message=f"dataset.std has {len(std)} value(s) but dataset.mean has {len(mean)}; allowed: one per channel",
        )
    if channels is not None and len(mean) != channels:
        of = f" of {dataset}" if dataset else ""
        raise ConfigError("dataset.mean", list(mean), f"a list of {channels} value(s), one per image channel{of}")


# --------------------------------------------------------------------------- the table

SCHEMA: dict[str, Spec] = {
    "resume": path(nullable=True),
    # ---- dataset: `_target_` is its loader in data.py; `name` labels it in results and plots
    "dataset._target_": text("a dataset loader, e.g. mlprunner.data.load_mnist"),
    "dataset.name": text(),
    "dataset.root": path(),
    "dataset.download": boolean(),
    "dataset.csv": path(),
    "dataset.image_dir": path(nullable=True),
    "dataset.test_csv": path(nullable=True),
    "dataset.test_dir": path(nullable=True),
    "dataset.val_fraction": number(0.0, 1.0, True, False),
    "dataset.test_fraction": number(0.0, 1.0, False, False),
    "dataset.subset": integer(1, nullable=True),
    "dataset.split_seed": integer(0, 2**63 - 1),
    "dataset.test_seed": integer(0, 2**63 - 1, nullable=True),
    "dataset.n_train": integer(1),
    "dataset.n_val": integer(0),
    "dataset.n_test": integer(1),
    "dataset.noise": number(0.0),
    "dataset.image_size": listing(
        lambda x: _is_int(x) and x >= 1, "two positive integers (height, width), e.g. [28,28]", length=2
    ),
    "dataset.grayscale": boolean(),
    "dataset.normalize": boolean(),
    "dataset.mean": _channels,
    "dataset.std": Spec(_channels.test, _channels.allowed, nullable=True, extra=_positive),
    "dataset.class_names": listing(
        lambda x: isinstance(x, (str, int)) and not isinstance(x, bool), "null or a list of class names", nullable=True
    ),
    "dataset.in_memory_max_mb": number(0.0),
    "dataset.num_workers": integer(0),
    "dataset.augment": mapping("dataset.augment", switch=True),
    "dataset.augment.enabled": boolean(),
    "dataset.augment.max_shift": number(0.0, allowed="a number >= 0"),
    "dataset.augment.max_rotate": number(0.0, allowed="a number >= 0"),
    "dataset.augment.max_scale": number(0.0, 1.0, True, False),
    # ---- model
    # The keys below are models.MLP's, checked only when `_target_` is one of mlprun's own models;
    # a model of the user's own (any torch.nn.Module class) gets its keys as they are.
    "model._target_": target(),
    "model.hidden": listing(
        lambda x: _is_int(x) and x >= 1, "a list of positive integers, e.g. [500,300] or []", extra=_hidden_widths
    ),
    "model.activation": choice(*ACTIVATIONS),
    "model.dropout": number(0.0, 1.0, True, False),
    "model.input_dropout": number(0.0, 1.0, True, False),
    "model.batchnorm": boolean(),
    # ---- optim: torch.optim classes, instantiated with `_partial_` and given the parameters
    "optim._target_": target(),
    "optim._partial_": choice(True),
    "optim.lr": number(0.0, INF, False, True),
    "optim.weight_decay": number(0.0),
    "optim.momentum": number(0.0, 1.0, True, False),
    "optim.nesterov": boolean(),
    "optim.betas": listing(
        lambda x: _is_number(x) and 0 <= x < 1, "two numbers in [0, 1), e.g. [0.9,0.999]", nullable=True, length=2
    ),
    "optim.eps": number(0.0, INF, False, True),
    "optim.rho": number(0.0, 1.0),
    "optim.alpha": number(0.0, 1.0),
    "optim.lambd": number(0.0),  # ASGD's decay term
    "optim.t0": number(0.0),  # ASGD: the step at which averaging starts
    "optim.lr_decay": number(0.0),  # Adagrad's, given with +optim.lr_decay
    "optim.initial_accumulator_value": number(0.0),  # Adagrad's
    "optim.momentum_decay": number(0.0),  # NAdam's
    # ---- scheduler: no `_target_` (scheduler=none) means a constant learning rate
    "scheduler._target_": target(),
    "scheduler._partial_": choice(True),
    "scheduler.name": LEGACY,
    "scheduler.interval": choice("epoch", "step", own=True),
    "scheduler.warmup_epochs": integer(0, own=True),
    "scheduler.warmup_start_factor": number(0.0, 1.0, False, True, own=True),
    "scheduler.T_max": integer(1, nullable=True),
    "scheduler.eta_min": number(0.0),
    "scheduler.gamma": number(0.0, INF, False, True),
    "scheduler.step_size": integer(1),
    "scheduler.milestones": listing(lambda x: _is_int(x) and x > 0, "a list of positive epoch numbers"),
    "scheduler.max_lr": number(0.0, INF, False, True, nullable=True),
    "scheduler.pct_start": number(0.0, 1.0),
    "scheduler.anneal_strategy": choice("cos", "linear"),
    "scheduler.mode": choice("min", "max"),
    "scheduler.factor": number(0.0, 1.0, False, False),
    "scheduler.patience": integer(0),
    "scheduler.threshold": number(0.0),
    # ---- loss: torch.nn losses; what each needs from the logits is asked of the class
    "loss._target_": target(),
    "loss.name": LEGACY,
    "loss.label_smoothing": number(0.0, 1.0),
    "loss.margin": number(),
    "loss.p": choice(1, 2),
    "loss.delta": number(0.0, INF, False),
    # a per-sample loss cannot be backpropagated as is, and a summed one grows with the batch:
    # train (batch size) and val (eval batch size) losses would not compare
    "loss.reduction": Spec(
        choice("mean", "batchmean").test, "mean (batchmean for KLDivLoss): mlprun averages over each batch"
    ),
    # ---- trainer
    "trainer.epochs": integer(1),
    "trainer.batch_size": integer(1),
    "trainer.eval_batch_size": integer(1),
    "trainer.eval_train": boolean(),
    "trainer.device": Spec(_device, "auto, cpu, cuda, cuda:N, mps"),
    "trainer.seed": integer(0, 2**63 - 1),
    "trainer.deterministic": boolean(),
    "trainer.threads": integer(1, 1024, nullable=True),
    "trainer.grad_clip": number(0.0, INF, False, True, nullable=True),
    "trainer.memory_fraction": number(
        0.0,
        INF,
        False,
        False,
        nullable=True,
        allowed="null (no memory check) or a number > 0, the fraction of the available memory a run may need",
    ),
    "trainer.log_every_n_steps": integer(1),
    "trainer.precision": choice("fp32", "bf16", "fp16"),
    "trainer.compile": boolean(),
    "trainer.cuda_graph": choice("auto", True, False),
    "trainer.profile": boolean(),
    "trainer.progress": choice("auto", "rich", "plain", "none"),
    # debug presets (configs/debug): null = every batch
    "trainer.limit_train_batches": integer(1, nullable=True, allowed="null (every batch) or an integer >= 1"),
    "trainer.limit_val_batches": integer(1, nullable=True, allowed="null (every batch) or an integer >= 1"),
    "trainer.limit_test_batches": integer(1, nullable=True, allowed="null (every batch) or an integer >= 1"),
    "trainer.overfit_batches": integer(1, nullable=True, allowed="null (off) or an integer >= 1"),
    "trainer.tensorboard": mapping("trainer.tensorboard", switch=True),
    "trainer.tensorboard.enabled": boolean(),
    "trainer.tensorboard.histograms": boolean(),
    "trainer.tensorboard.graph": boolean(),
    "trainer.tensorboard.images": boolean(),
    "trainer.tensorboard.embedding": integer(0),
    "trainer.early_stopping": mapping("trainer.early_stopping", switch=True),
    "trainer.early_stopping.enabled": boolean(),
    "trainer.early_stopping.monitor": choice(*MONITORS),
    "trainer.early_stopping.mode": choice("min", "max"),
    "trainer.early_stopping.patience": integer(0),
    "trainer.early_stopping.min_delta": number(0.0),
    "trainer.checkpoint": mapping("trainer.checkpoint"),
    "trainer.checkpoint.save_last": boolean(),
    "trainer.checkpoint.save_best": boolean(),
    "trainer.swa": mapping("trainer.swa", switch=True),
    "trainer.swa.enabled": boolean(),
    # whole epoch numbers up to trainer.epochs are checked with the other keys (config.validate)
    "trainer.swa.start_epoch": number(0.0, allowed="an epoch number in [1, trainer.epochs] or a fraction in [0, 1)"),
    "trainer.swa.lr": number(
        0.0, INF, False, True, nullable=True, allowed="null (keep the optimizer's lr) or a number > 0"
    ),
    "trainer.swa.anneal_epochs": integer(0, allowed="an integer >= 0"),
    "trainer.swa.anneal_strategy": choice("cos", "linear"),
    # ---- logger: each entry names a mlprunner.loggers.Logger class (configs/logger)
    "logger.tensorboard": mapping("logger.tensorboard"),
    "logger.tensorboard._target_": target(),
    "logger.csv": mapping("logger.csv"),
    "logger.csv._target_": target(),
    "logger.csv.filename": text("a file name, e.g. metrics.csv"),
    "logger.mlflow": mapping("logger.mlflow"),
    "logger.mlflow._target_": target(),
    "logger.mlflow.tracking_uri": text(
        "null (MLflow's default) or a tracking URI, e.g. sqlite:///mlflow.db", nullable=True
    ),
    "logger.mlflow.experiment_name": text("null (the dataset's name) or a name", nullable=True),
    "logger.mlflow.run_name": text("null (the job's name) or a name", nullable=True),
    "logger.mlflow.log_artifacts": boolean(),
    # ---- eval
    "eval.test": boolean(),
    "eval.checkpoint": choice("best", "last"),
}


def declared(key: str) -> bool:
    return key in SCHEMA


def own_keys(group: str) -> set[str]:
    """Keys of a component group that mlprun reads itself and never passes to the class."""
    return {k.partition(".")[2] for k, s in SCHEMA.items() if k.startswith(group + ".") and s.own}


def check_value(cfg: DictConfig, key: str, spec: Spec) -> None:
    absent = object()
    value = OmegaConf.select(cfg, key, default=absent)
    if value is absent:
        return
    allowed = spec.check(value)
    if allowed is not None:
        raise ConfigError(key, _plain(value), allowed)


# --------------------------------------------------------------------------- the configs folder


def _configs():
    return resources.files("mlprunner.configs")


@cache
def _defaults() -> tuple[tuple[str, bool], ...]:
    """(group, optional) for each config group in configs/config.yaml's defaults list (optional: it
    may select no option, `optional <group>` or a null default)."""
    primary = OmegaConf.create(_configs().joinpath("config.yaml").read_text())
    out = []
    for entry in primary.get("defaults", []):
        if not isinstance(entry, DictConfig):
            continue  # _self_
        for key in entry.keys():
            # `- experiment: null` selects nothing unless asked: as optional as `optional x`
            optional = key.startswith("optional ") or entry[key] is None
            group = key.removeprefix("optional ")
            if not group.startswith("override ") and "/" not in group:
                out.append((group, optional))
    return tuple(out)


# Every config group, in the order of the defaults list; REQUIRED ones every config must hold.
GROUPS: tuple[str, ...] = tuple(g for g, _ in _defaults())
REQUIRED_GROUPS: tuple[str, ...] = tuple(g for g, optional in _defaults() if not optional)


@cache
def options(group: str) -> dict[str, dict]:
    """{option name: its YAML as a dict, unresolved} for each configs/<group>/*.yaml."""
    folder = _configs().joinpath(group)
    out = {}
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".yaml"):
            node = OmegaConf.create(item.read_text() or "{}")
            out[item.name[: -len(".yaml")]] = OmegaConf.to_container(node) if isinstance(node, DictConfig) else {}
    return out


def option_label(node, group: str) -> str:
    """The option a component node came from, for messages and TensorBoard's hparams.

    Found by its `_target_` among the group's option files (scheduler=none has none); a
    dataset is labelled by its `name`. A class of the user's own is named by its class name."""
    if group == "dataset" and node.get("name"):
        return str(node.get("name"))
    tgt = node.get("_target_")
    for name, opt in options(group).items():
        if opt.get("_target_") == tgt:
            return name
    return str(tgt).rpartition(".")[2] if tgt else "none"


def dataset_target(ds) -> str | None:
    """The loader a dataset node names; a config saved before datasets had `_target_` names
    its dataset by `name` alone, which the option file of that name translates."""
    tgt = ds.get("_target_")
    if tgt is None and ds.get("name") is not None:
        tgt = next((o.get("_target_") for o in options("dataset").values() if o.get("name") == ds.get("name")), None)
    return tgt


def resolve_loader(ds):
    """The loader function of a dataset node (one marked by data.loader); ConfigError otherwise."""
    tgt = dataset_target(ds)
    try:
        with _hydra_quiet():
            fn = get_method(tgt) if isinstance(tgt, str) else None
    except Exception:  # not importable: refused below, in one line
        fn = None
    if getattr(fn, "dataset_facts", None) is None:
        known = sorted({str(o.get("_target_")) for o in options("dataset").values() if o.get("_target_")})
        raise ConfigError(
            "dataset._target_", tgt if tgt is not None else ds.get("name"), f"a dataset loader: {', '.join(known)}"
        )
    return fn


# --------------------------------------------------------------------------- models

OWN_MODELS = "mlprunner.models"  # the module of mlprun's own models
# What mlprun gives a model's constructor when it names the parameter: the data's features and
# classes, and the outputs the loss needs (1 for a binary loss). A constructor with **kwargs
# gets num_features and num_classes.
SIZE_ARGUMENTS = ("num_features", "in_features", "num_classes", "out_features")
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def own_model(target) -> bool:
    """Whether a model `_target_` names one of mlprun's own models (its keys are the schema's)."""
    return isinstance(target, str) and target.rpartition(".")[0] == OWN_MODELS


def mlp_keys() -> tuple[str, ...]:
    """The keys of mlprun's MLP config (model.hidden, ...), without `_target_`."""
    return tuple(k.partition(".")[2] for k in SCHEMA if k.startswith("model.") and k != "model._target_")


@dataclass(frozen=True)
class ModelCall:
    """How a model class is called: the size arguments mlprun passes, the MLP keys of the config
    that a model of the user's own does not take (left out), the keys it does not take at all
    and the parameters it needs that nothing gives."""

    sizes: tuple[str, ...]
    left_out: tuple[str, ...]
    unknown: tuple[str, ...]
    missing: tuple[str, ...]
    parameters: tuple[str, ...]


def model_call(cls: type, target: str, keys) -> ModelCall:
    """Read from the constructor's signature (inspect.signature) how `cls` is built from the
    config keys `keys` of a model node."""
    keys = [str(k) for k in keys if str(k) not in HYDRA_KEYS]
    try:
        params = signature(cls).parameters
    except (TypeError, ValueError):  # no readable signature: pass the keys, nothing else
        return ModelCall((), (), (), (), ())
    kinds = (Parameter.POSITIONAL_OR_KEYWORD, Parameter.KEYWORD_ONLY)
    names = [n for n, p in params.items() if p.kind in kinds]
    var_kw = any(p.kind is Parameter.VAR_KEYWORD for p in params.values())
    sizes = tuple(
        n for n in SIZE_ARGUMENTS if n not in keys and (n in names or (var_kw and n in ("num_features", "num_classes")))
    )
    left_out = () if own_model(target) else tuple(k for k in keys if k in mlp_keys() and k not in names)
    unknown = () if var_kw else tuple(k for k in keys if k not in names and k not in left_out)
    missing = tuple(n for n in names if params[n].default is Parameter.empty and n not in keys and n not in sizes)
    return ModelCall(sizes, left_out, unknown, missing, tuple(names))


def model_arguments(model_cfg: DictConfig, num_features: int, num_classes: int, out_features: int):
    """How to instantiate a model node: (the node without the MLP keys its class does not take,
    the data sizes its constructor asks for by name, the ModelCall read from its signature)."""
    target = str(model_cfg.get("_target_"))
    call = model_call(component_class(model_cfg, "model"), target, model_cfg.keys())
    sizes = {"num_features": num_features, "in_features": num_features}
    sizes |= {"num_classes": num_classes, "out_features": out_features}
    node = {k: v for k, v in OmegaConf.to_container(model_cfg, resolve=True).items() if k not in call.left_out}
    return node, {name: sizes[name] for name in call.sizes}, call


@contextlib.contextmanager
def _hydra_quiet():
    """hydra.utils.get_class/get_method log a three-line error of their own before raising;
    mlprun reports the failure in one line."""
    logger = logging.getLogger("hydra.utils")
    was, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = was


def component_class(node: DictConfig, group: str) -> type:
    """The class a component node's `_target_` names (imported); ConfigError when it cannot be."""
    try:
        with _hydra_quiet():
            return get_class(str(node._target_))
    except Exception as exc:  # not importable, or not a class
        cause = exc.__cause__ or exc
        target = str(node.get("_target_"))
        raise ConfigError(
            f"{group}._target_",
            target,
            message=f"{group}._target_={target!r}: {_missing_class(target, group) or first_line(cause)}",
        ) from None


# the base class a component group's _target_ derives from (by name: schema imports no torch),
# so the classes a bad _target_'s module offers are the ones that group can use
_KINDS = {"optim": ("Optimizer",), "loss": ("_Loss",), "scheduler": ("LRScheduler", "ReduceLROnPlateau")}


def _missing_class(target: str, group: str | None = None) -> str | None:
    """'module mynets has no class Nett; did you mean mynets.Net?' when the module imports and
    only the name is wrong (Hydra says "No module named 'mynets.Nett'"). The classes offered are
    those of `group`'s kind (torch.optim's optimizers, not its base class), in any case."""
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except Exception:  # the module itself is the problem: Hydra's message says so
        return None
    if module is None or hasattr(module, name):
        return None
    kind = _KINDS.get(group or "")
    classes = sorted(
        (
            n
            for n, v in vars(module).items()
            if isinstance(v, type)
            and not n.startswith("_")
            and (kind is None or any(b.__name__ in kind for b in v.__mro__[1:]))
        ),
        key=str.lower,
    )
    same = [c for c in classes if c.lower() == name.lower()]  # torch.optim.sgd -> SGD
    close = same or difflib.get_close_matches(name, classes, n=2, cutoff=0.6)
    shown = ", ".join(classes[:30]) + (f", ... ({len(classes)} in all)" if len(classes) > 30 else "")
    hint = (
        f"did you mean {' or '.join(f'{module_name}.{c}' for c in close)}?"
        if close
        else f"its classes: {shown or 'none'}"
    )
    return f"module {module_name} has no class {name}; {hint}"


def suggest_option(group: str, given: str) -> str | None:
    """The option of `group` a user meant by `given`: its name in another case (optim=RMSProp),
    the name of its class (optim=AdamW, scheduler=ReduceLROnPlateau, loss=NLLLoss), or the
    closest name; None when nothing is close."""
    opts = options(group)
    low = given.lower()
    by_name = {name.lower(): name for name in opts}
    by_class: dict[str, str] = {}
    for name, node in opts.items():  # sorted: sgd before sgd_momentum for torch.optim.SGD
        target = node.get("_target_") if isinstance(node, dict) else None
        if isinstance(target, str):
            cls = target.rpartition(".")[2].lower()
            by_class.setdefault(cls, name)
            for suffix in ("loss", "lr"):  # NLL for NLLLoss, CosineAnnealing for CosineAnnealingLR
                if cls.endswith(suffix) and len(cls) > len(suffix):
                    by_class.setdefault(cls[: -len(suffix)], name)
    if low in by_name:
        return by_name[low]
    if low in by_class:
        return by_class[low]
    # a near miss of an option's name only: classes that merely look alike are other classes
    # (HuberLoss is no MSELoss, CosineAnnealingWarmRestarts no CosineAnnealingLR)
    close = difflib.get_close_matches(low, list(by_name), n=1, cutoff=0.6)
    return by_name[close[0]] if close else None
