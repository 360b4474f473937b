"""Config helpers: resolvers, validation of a composed config, and small accessors.

Validation runs before anything is built or written. Every error names the key, the bad
value and what is allowed, and maps to exit code 2.
"""

from __future__ import annotations

import math
import os

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .device import resolve_device
from .errors import ConfigError
from .loggers import check_loggers
from .schema import (
    LEGACY,
    REQUIRED_GROUPS,
    SCHEMA,
    check_value,
    component_class,
    model_call,
    option_label,
    options,
    own_model,
    resolve_loader,
)

# Groups whose keys mlprun reads itself (not a class's arguments): a key the schema does not
# declare is a typo or a key mlprun would ignore, and a key deleted with `~` is missing.
OWN_GROUPS = ("trainer", "eval")


def register_resolvers() -> None:
    """Resolvers used by configs/config.yaml (idempotent)."""
    if not OmegaConf.has_resolver("mlprun_unique"):
        # The process id makes the default run folder unique among runs started in one second.
        OmegaConf.register_new_resolver("mlprun_unique", lambda: f"{os.getpid()}", use_cache=True)
    if not OmegaConf.has_resolver("mlprun_output_subdir"):
        # hydra.output_subdir: .hydra for a single run, none (mlprun writes it) for a sweep job
        OmegaConf.register_new_resolver("mlprun_output_subdir", _output_subdir)


def _output_subdir() -> str | None:
    """hydra.output_subdir (see configs/config.yaml): .hydra for a single run, None for a sweep
    job (mlprun writes its .hydra/ once it holds the job folder's lock)."""
    try:
        mode = HydraConfig.get().mode
    except ValueError:  # no Hydra config yet
        return ".hydra"
    return None if mode == RunMode.MULTIRUN else ".hydra"


def select(cfg: DictConfig, key: str, default=None):
    return OmegaConf.select(cfg, key, default=default)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value of a composed mlprun config.

    Each key is checked against its entry in schema.SCHEMA; then the rules that tie keys
    together (warm-up against epochs, early stopping without a validation set, the loss against
    the class count, ...). Components are asked their kind by their class, never by a name."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as exc:  # an interpolation that cannot be resolved
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(key, message=f"{key}: {str(exc).splitlines()[0]}") from None
    _decode_interpolated(cfg)
    for group in REQUIRED_GROUPS:
        if not isinstance(cfg.get(group), DictConfig):
            raise ConfigError(group, cfg.get(group), f"a config group ({group}=<option>)")
    _unknown_keys(cfg)
    _deleted_keys(cfg)
    missing = _missing_keys(cfg)
    if missing:
        key = missing[0]
        group = key.partition(".")[0]
        example = f"{key}=path/to/..." if SCHEMA.get(key, LEGACY).path else f"{key}=<value>"
        raise ConfigError(
            key,
            "???",
            message=(
                f"{key} is required for {group}={option_label(cfg[group], group)}; "
                f"give it on the command line, e.g. {example}"
            ),
        )

    # groups of keys first: `trainer.early_stopping=5` is reported as such, not by its keys
    for key, spec in SCHEMA.items():
        if spec.mapping:
            check_value(cfg, key, spec)
    users_model = not own_model(cfg.model.get("_target_"))
    for key, spec in SCHEMA.items():
        if users_model and key.startswith("model.") and key != "model._target_":
            continue  # a model of the user's own gets its keys as they are
        check_value(cfg, key, spec)

    trainer, ds, sched = cfg.trainer, cfg.dataset, cfg.scheduler
    warmup = sched.get("warmup_epochs", 0)
    if sched.get("_target_") is not None:
        interval = sched.get("interval")
        if interval not in ("epoch", "step"):
            raise ConfigError("scheduler.interval", interval, "epoch, step")
        if warmup >= trainer.epochs:
            raise ConfigError("scheduler.warmup_epochs", warmup, f"fewer than trainer.epochs ({trainer.epochs})")
    if ds.get("n_val") == 0 and trainer.early_stopping.enabled:
        raise ConfigError("trainer.early_stopping.enabled", True, "false when dataset.n_val=0")
    if ds.get("val_fraction") == 0 and trainer.early_stopping.enabled:
        raise ConfigError(
            "trainer.early_stopping.enabled", True, "false when dataset.val_fraction=0 (there is no validation set)"
        )
    swa = trainer.get("swa")
    if swa is not None and swa.get("enabled"):
        swa_start_epoch(swa.start_epoch, int(trainer.epochs))

    # The rules below ask the classes and the dataset loader the config names (importing them,
    # and torch): every `_target_` must name something that can be built.
    for group in ("model", "optim", "scheduler", "loss"):
        if cfg[group].get("_target_") is not None:
            component_class(cfg[group], group)
    check_model(cfg.model)
    if warmup and sched.get("_target_") is not None and issubclass(component_class(sched, "scheduler"), _plateau()):
        raise ConfigError(
            "scheduler.warmup_epochs",
            warmup,
            "0 with scheduler=plateau (warm-up cannot be chained with ReduceLROnPlateau)",
        )
    facts = resolve_loader(ds).dataset_facts
    if facts.num_classes is not None:
        check_loss_fits(cfg.loss, facts.num_classes, option_label(ds, "dataset"))
    if not facts.images and OmegaConf.select(ds, "augment.enabled", default=False):
        raise ConfigError(
            "dataset.augment.enabled",
            True,
            message=f"dataset.augment.enabled=true needs an image dataset; "
            f"dataset={option_label(ds, 'dataset')} has no image shape (allowed: false)",
        )


def _set(cfg: DictConfig, key: str, value) -> None:
    """Set a (possibly new) dotted key of a composed config, struct or read-only as it may be."""
    with read_write(cfg), open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def _decode_interpolated(cfg: DictConfig) -> None:
    """A key whose value is an interpolation (`trainer.epochs=${oc.env:EPOCHS,3}`) takes the
    resolved value as the command line would type it: oc.env gives the string '3', which Hydra's
    own override grammar reads as the integer 3 (as `trainer.epochs=3` would be). A string the
    key allows as it is (a name) stays; a value that is no number stays a string and is refused
    by the key's check in one line."""
    parser = OverridesParser.create()
    for key, spec in SCHEMA.items():
        if spec.path or spec.mapping:
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if (
            not isinstance(parent, DictConfig)
            or leaf not in parent.keys()
            or not OmegaConf.is_interpolation(parent, leaf)
        ):
            continue
        value = parent[leaf]
        if not isinstance(value, str) or spec.check(value) is None:  # a string the key allows stays
            continue
        try:
            decoded = parser.parse_override(f"{leaf}={value}").value()
        except Exception:  # not a value Hydra's grammar reads: checked as the string it is
            continue
        if not isinstance(decoded, str):
            _set(cfg, key, decoded)


def _unknown_keys(cfg: DictConfig) -> None:
    """`+trainer.foo=3`: a key mlprun does not read is refused rather than silently ignored."""

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():
            full = f"{prefix}{key}"
            if full not in SCHEMA:
                siblings = [k[len(prefix) :] for k in SCHEMA if k.startswith(prefix) and "." not in k[len(prefix) :]]
                raise ConfigError(
                    full,
                    message=(
                        f"{full}: no such key in {prefix.rstrip('.')} (mlprun would ignore it); "
                        f"keys: {', '.join(siblings)}"
                    ),
                )
            if isinstance(node._get_node(key), DictConfig):
                walk(node[key], f"{full}.")

    for group in OWN_GROUPS:
        if isinstance(cfg.get(group), DictConfig):
            walk(cfg[group], f"{group}.")


def _option_node(cfg: DictConfig, group: str) -> DictConfig | None:
    """The option file a group's node came from (matched by `_target_`), as a config."""
    target = cfg[group].get("_target_")
    for opt in options(group).values():
        if opt.get("_target_") == target:
            return OmegaConf.create(opt)
    return None


def _deleted_keys(cfg: DictConfig) -> None:
    """Keys mlprun reads that a `~key` override (or an edited config) removed.

    A nullable key means the same absent or null (`~trainer.grad_clip`: no clipping), so it
    becomes null; any other key has no value to fall back on and is refused in one line."""
    for group in (*OWN_GROUPS, "dataset"):
        if not isinstance(cfg.get(group), DictConfig):
            continue
        option = _option_node(cfg, group)
        if option is None:
            continue

        def walk(opt: DictConfig, node: DictConfig, prefix: str) -> None:
            for key in opt.keys():
                full = f"{prefix}{key}"
                spec = SCHEMA.get(full)
                if spec is None:
                    continue
                if key not in node.keys():  # (`in` is false for a `???` value too)
                    if spec.nullable:
                        _set(cfg, full, None)
                        continue
                    default = opt._get_node(key)
                    example = (
                        f"{full}={opt[key]}"
                        if not isinstance(default, DictConfig)
                        and not OmegaConf.is_interpolation(opt, key)
                        and not OmegaConf.is_missing(opt, key)
                        else f"{full}=..."
                    )
                    raise ConfigError(
                        full,
                        message=(
                            f"{full} is required and cannot be deleted (~{full}); "
                            f"give it a value instead, e.g. {example} (allowed: {spec.allowed})"
                        ),
                    )
                if isinstance(opt._get_node(key), DictConfig) and isinstance(node._get_node(key), DictConfig):
                    walk(opt[key], node[key], f"{full}.")

        walk(option, cfg[group], f"{group}.")


def _missing_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys whose value is `???` (required, no default), in config order."""
    out = []

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():
            if OmegaConf.is_missing(node, key):
                out.append(f"{prefix}{key}")
            elif isinstance(node._get_node(key), DictConfig):
                walk(node[key], f"{prefix}{key}.")

    walk(cfg, "")
    return out


def check_model(node: DictConfig) -> None:
    """The model's class is a torch.nn.Module whose constructor takes the config's keys and gets
    every argument it needs (from the config, or the data's sizes mlprun passes by name)."""
    import torch  # lazily: see _plateau

    target = node.get("_target_")
    cls = component_class(node, "model")
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ConfigError("model._target_", target, "a torch.nn.Module class, e.g. mypkg.nets.Net")
    call = model_call(cls, target, node.keys())
    if call.unknown:
        key = call.unknown[0]
        raise ConfigError(
            f"model.{key}",
            message=(
                f"model.{key}: {target} takes no argument {key!r} "
                f"(it takes: {', '.join(call.parameters) or 'no keyword arguments'})"
            ),
        )
    if call.missing:
        key = call.missing[0]
        raise ConfigError(
            f"model.{key}",
            message=(
                f"model.{key} is required by {target}({key}=...); give it, e.g. +model.{key}=<value> "
                f"(mlprun itself passes only num_features, in_features, num_classes and out_features)"
            ),
        )


def _plateau() -> type:
    import torch  # lazily: a config is checked (and its errors shown) without torch's import

    return torch.optim.lr_scheduler.ReduceLROnPlateau


def check_loss_fits(loss_cfg: DictConfig, num_classes: int, dataset: str | None = None) -> None:
    """A loss that cannot fit the dataset is a configuration error (binary losses need 2 classes)."""
    import torch  # lazily: see _plateau

    binary = torch.nn.BCEWithLogitsLoss
    if num_classes != 2 and issubclass(component_class(loss_cfg, "loss"), binary):
        which = f"dataset={dataset}" if dataset else "the dataset"
        others = [
            name
            for name, opt in options("loss").items()
            if opt.get("_target_") and not issubclass(get_class(opt["_target_"]), binary)
        ]
        raise ConfigError(
            "loss",
            option_label(loss_cfg, "loss"),
            message=(
                f"loss={option_label(loss_cfg, 'loss')} needs a binary task but {which} has {num_classes} classes; "
                f"allowed for it: {', '.join(others)}"
            ),
        )


def swa_start_epoch(value, epochs: int) -> int:
    """`trainer.swa.start_epoch`: an epoch number (>= 1) or a fraction of trainer.epochs (< 1).

    A fraction f means: the first floor(f * epochs) epochs train normally, SWA starts after them.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError("trainer.swa.start_epoch", value, f"an epoch number in [1, {epochs}] or a fraction in [0, 1)")
    if value < 1:
        return int(math.floor(value * epochs)) + 1
    if value != int(value) or value > epochs:
        raise ConfigError(
            "trainer.swa.start_epoch",
            value,
            f"an epoch number in [1, {epochs}] (trainer.epochs) or a fraction in [0, 1)",
        )
    return int(value)


def preflight(cfg: DictConfig) -> None:
    """Cheap checks of the environment a valid config needs, before any run folder is made.

    The device must exist; the dataset's loader checks what it can without loading (files
    that cannot be downloaded are present, an image CSV names existing files with integer
    labels). Failures are runtime errors (exit 1).
    """
    resolve_device(cfg.trainer.device)
    check_loggers(cfg)  # each logger's class, and MLflow installed for logger=mlflow
    check = resolve_loader(cfg.dataset).dataset_facts.preflight
    if check is not None:
        check(cfg.dataset)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
