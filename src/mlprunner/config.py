"""Config helpers: resolvers, validation of a composed config, and small accessors.

Validation runs before anything is built or written. Every error names the key, the bad
value and what is allowed, and maps to exit code 2.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
import warnings
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .components import MAXIMISED, Loss, build_scheduler, class_node
from .data import check_feature_stats, check_split
from .device import resolve_device
from .errors import ConfigError, first_line
from .loggers import check_loggers
from .schema import (
    GROUPS,
    LEGACY,
    REQUIRED_GROUPS,
    SCHEMA,
    check_channel_stats,
    check_value,
    component_class,
    model_arguments,
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


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value of a composed mlprun config.

    Each key is checked against its entry in schema.SCHEMA; then the rules that tie keys
    together (warm-up against epochs, early stopping without a validation set, the loss against
    the class count, ...). Components are asked their kind by their class, never by a name."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as exc:  # an interpolation that cannot be resolved
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(key, message=f"{key}: {first_line(exc)}") from None
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

    sched = cfg.scheduler
    # scheduler=none builds nothing to read its keys (an old run's scheduler.name is read as before)
    unread = [f"scheduler.{k}" for k in sched.keys() if SCHEMA.get(f"scheduler.{k}") is not LEGACY]
    if sched.get("_target_") is None and unread:
        key = unread[0]
        raise ConfigError(
            key,
            message=(
                f"{key}: scheduler=none keeps the lr constant and reads no keys; choose a scheduler "
                f"first, e.g. scheduler=cosine (options: mlprun --help)"
            ),
        )
    if sched.get("_target_") is not None and "interval" not in sched:  # scheduler=none plus a _target_
        raise ConfigError(
            "scheduler.interval",
            message=(
                f"scheduler.interval is needed with scheduler._target_={sched._target_}: "
                f"+scheduler.interval=epoch (it steps after each epoch) or +scheduler.interval=step "
                f"(after each batch, as CyclicLR and OneCycleLR expect)"
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
    es = trainer.early_stopping
    if es.get("mode") == "max" and es.monitor not in MAXIMISED:
        # selecting the largest error or loss would keep the worst epoch as best.pt
        raise ConfigError(
            "trainer.early_stopping.mode",
            "max",
            f"min with monitor={es.monitor} (it improves downwards; {' and '.join(MAXIMISED)} are maximised "
            "whatever mode says)",
        )
    check_channel_stats(ds)  # both or neither, one length (the channels: below, with the loader)
    swa = trainer.get("swa")
    if swa is not None and swa.get("enabled"):
        swa_start_epoch(swa.start_epoch, int(trainer.epochs))

    # The rules below ask the classes and the dataset loader the config names (importing them,
    # and torch): every `_target_` must name something that can be built.
    for group in ("model", "optim", "scheduler", "loss"):
        if cfg[group].get("_target_") is not None:
            component_class(cfg[group], group)
    check_model(cfg.model)
    if (
        warmup
        and sched.get("_target_") is not None
        and issubclass(component_class(sched, "scheduler"), torch.optim.lr_scheduler.ReduceLROnPlateau)
    ):
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
    if facts.channels is not None and ds.get("normalize", False):  # the loader uses mean/std only then
        check_channel_stats(ds, facts.channels(ds), f"dataset={option_label(ds, 'dataset')}")
    sizes = facts.sizes(ds) if facts.sizes is not None else None
    if not facts.images and sizes is not None and sizes.features and ds.get("normalize", False):
        check_feature_stats(ds, sizes.features, f"dataset={option_label(ds, 'dataset')}")
    _test_set_given(cfg, facts)
    if sizes is not None and sizes.pool is not None and ds.get("val_fraction") is not None:
        check_split(sizes.pool, float(ds.val_fraction), ds.get("subset"))
    check_buildable(cfg)


def _test_set_given(cfg: DictConfig, facts) -> None:
    """eval.test=true needs a test set; a dataset whose loader tells from its config whether it
    has one (the rule its Data.load_test follows) is refused here, before a run trains for nothing."""
    if not OmegaConf.select(cfg, "eval.test", default=False) or facts.has_test is None:
        return
    ds = cfg.dataset
    if facts.has_test(ds):
        return
    keys = [f"dataset.{k}=..." for k in ("test_csv", "test_dir") if k in ds]
    raise ConfigError(
        "eval.test",
        True,
        message=f"eval.test=true but dataset={option_label(ds, 'dataset')} has no test set configured; "
        f"allowed: eval.test=false" + "".join(f", or {k}" for k in keys),
    )


def _constructor_error(group: str, node, cls, exc: BaseException) -> ConfigError:
    """A component class's constructor refused its arguments: one line naming the key.

    The key is the argument the error names (a missing one, an unknown one, a null one the
    class needs a value for, or one whose name the message mentions), else the group."""
    cause = exc.__cause__ or exc  # hydra's InstantiationException wraps the class's own error
    detail = first_line(cause)
    label = str(node.get("_target_") or getattr(cls, "__name__", cls))
    m = re.search(r"missing \d+ required (?:positional |keyword-only )?arguments?: '([^']+)'", detail)
    if m:
        key = f"{group}.{m.group(1)}"
        return ConfigError(key, message=f"{key} is required by {label}; give it a value: {key}=<value>")
    m = re.search(r"got an unexpected keyword argument '([^']+)'", detail)
    if m:
        key = f"{group}.{m.group(1)}"
        return ConfigError(key, message=f"{key}: no such argument of {label}; remove it (~{key})")
    keys = [k for k in node.keys() if not str(k).startswith("_")]
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    for k in keys:
        p = params.get(k)
        if node.get(k) is None and p is not None and p.default is not None:
            key = f"{group}.{k}"
            return ConfigError(key, message=f"{key}=null: {label} needs a value ({detail}); give it one: {key}=<value>")
    k = _named_key(node, detail)
    if k is not None:
        value = OmegaConf.to_container(node[k]) if OmegaConf.is_list(node._get_node(k)) else node[k]
        key = f"{group}.{k}"
        return ConfigError(key, value, message=f"{key}={_word(value)}: {detail} ({label})")
    return ConfigError(group, message=f"{group}._target_={label} refused its arguments: {detail}")


def _named_key(node, detail: str) -> str | None:
    """The argument of the config node an error message names first (as `lr`, `label smoothing`
    or `beta` for betas), or None."""
    found = []
    for k in (str(k) for k in node.keys() if not str(k).startswith("_")):
        for form in {k, k.replace("_", " "), k.rstrip("s")}:
            hit = re.search(rf"(?<![A-Za-z0-9_]){re.escape(form)}(?![A-Za-z0-9_])", detail, re.IGNORECASE)
            if hit:
                found.append((hit.start(), -len(form), k))
    return min(found)[2] if found else None


def _word(value) -> str:
    return {True: "true", False: "false"}[value] if isinstance(value, bool) else "null" if value is None else str(value)


def _meta_model(cfg: DictConfig, features: int, outputs: int):
    """The model of cfg.model on the meta device: its shapes and parameter count, no memory."""
    cls = component_class(cfg.model, "model")
    try:
        with torch.device("meta"):
            node, sizes, _ = model_arguments(cfg.model, features, outputs, outputs)
            return instantiate(node, **sizes)
    except Exception as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, (TypeError, ValueError)):  # the class refused its arguments
            raise _constructor_error("model", cfg.model, cls, exc) from None
        return None  # a class of the user's that cannot be built on the meta device: not checked


def check_buildable(cfg: DictConfig) -> None:
    """Build each component once on stand-ins, before anything is written: the loss, the model on
    the meta device (no memory), the optimizer on a throw-away parameter and the scheduler on that
    optimizer. What a constructor refuses (nesterov without momentum, onecycle without max_lr,
    multi_margin's p, plateau's mode, ...) is a one-line ConfigError naming the key."""
    facts = resolve_loader(cfg.dataset).dataset_facts
    loss_cls = component_class(cfg.loss, "loss")
    classes = facts.num_classes or 2
    try:
        instantiate(class_node(cfg.loss, "loss"))
        loss = Loss(cfg.loss, classes)
    except Exception as exc:
        raise _constructor_error("loss", cfg.loss, loss_cls, exc) from None
    try:
        with warnings.catch_warnings():  # torch's broadcasting warning of a loss that refuses below
            warnings.simplefilter("ignore")
            loss(torch.zeros(2, loss.out_features), torch.tensor([0, 1]))  # some arguments are read only here
    except Exception as exc:
        if _named_key(cfg.loss, first_line(exc)) is None:  # the loss cannot take logits and class labels
            label = option_label(cfg.loss, "loss")
            given = f"loss={label}" if label in options("loss") else f"loss._target_={cfg.loss.get('_target_')}"
            raise ConfigError(
                "loss",
                label,
                message=(
                    f"{given} cannot score the model's outputs against class labels ({first_line(exc)}); "
                    f"the losses mlprun feeds: {', '.join(options('loss'))}"
                ),
            ) from None
        raise _constructor_error("loss", cfg.loss, loss_cls, exc) from None
    sizes = facts.sizes(cfg.dataset) if facts.sizes is not None else None
    features = sizes.features if sizes is not None and sizes.features else 1
    _meta_model(cfg, features, 2)
    optim_cls = component_class(cfg.optim, "optim")
    try:  # a class that is no optimizer has no step(): what it refuses is said below
        closure = inspect.signature(optim_cls.step).parameters.get("closure")
    except (AttributeError, TypeError, ValueError):
        closure = None
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ConfigError(
            "optim._target_",
            message=(
                f"optim._target_={cfg.optim._target_}: its step() needs a closure that recomputes the loss "
                f"(several forward passes per batch), which mlprun's one-pass training step does not give; "
                f"allowed: an optimizer whose step() takes no closure, e.g. optim=adam or another option "
                f"of the group ({', '.join(options('optim'))})"
            ),
        )
    probe = torch.zeros(2, requires_grad=True)
    try:
        optimizer = instantiate(cfg.optim)([probe])
    except Exception as exc:
        raise _constructor_error("optim", cfg.optim, optim_cls, exc) from None
    if cfg.scheduler.get("_target_") is None:
        return
    sched_cls = component_class(cfg.scheduler, "scheduler")
    try:
        build_scheduler(cfg.scheduler, optimizer, int(cfg.trainer.epochs), 1)
    except Exception as exc:
        raise _constructor_error("scheduler", class_node(cfg.scheduler, "scheduler"), sched_cls, exc) from None


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
                # this option's own keys (a dataset's loader reads only some of the schema's)
                names = [str(k) for k in node.keys() if f"{prefix}{k}" in SCHEMA and not str(k).startswith("_")]
                close = difflib.get_close_matches(str(key), names, n=2, cutoff=0.6)
                hint = (
                    f"did you mean {' or '.join(prefix + c for c in close)}?" if close else f"keys: {', '.join(names)}"
                )
                raise ConfigError(
                    full, message=f"{full}: no such key in {prefix.rstrip('.')} (mlprun would ignore it); {hint}"
                )
            if isinstance(node._get_node(key), DictConfig):
                walk(node[key], f"{full}.")

    for group in OWN_GROUPS:
        if isinstance(cfg.get(group), DictConfig):
            walk(cfg[group], f"{group}.")
    # mlprun's own loaders read only the keys the schema declares (a loader of the user's may read any)
    if isinstance(cfg.get("dataset"), DictConfig) and str(cfg.dataset.get("_target_", "")).startswith(OWN_LOADERS):
        walk(cfg.dataset, "dataset.")
    known = set(GROUPS) | {key.partition(".")[0] for key in SCHEMA}
    for key in cfg.keys():
        if key not in known and not _interpolated(cfg, str(key)):
            raise ConfigError(
                key,
                message=(
                    f"{key}: no such top-level key (mlprun would ignore it); a value of your own is "
                    f"read only where an interpolation names it, e.g. optim.lr='${{{key}}}'; "
                    f"groups: {', '.join(g for g in GROUPS if g in cfg)}"
                ),
            )
    for preset in ("experiment", "debug"):  # presets set keys everywhere: `# @package _global_`
        node = cfg.get(preset)
        if isinstance(node, DictConfig) and len(node) > 0:
            inner = f"{preset}.{next(iter(node.keys()))}"
            raise ConfigError(
                inner,
                message=(
                    f"{inner}: the {preset} file's keys landed under `{preset}:`, where mlprun reads nothing; "
                    f"make `# @package _global_` its first line (as in mlprun's configs/{preset}/)"
                ),
            )


OWN_LOADERS = "mlprunner.data."


def _interpolated(cfg: DictConfig, key: str) -> bool:
    """Whether an interpolation anywhere in `cfg` names the top-level `key` (`${key}`, `${key.x}`)."""
    pattern = re.compile(r"\$\{[^}]*(?<![\w.])" + re.escape(key) + r"(?![\w])")
    return bool(pattern.search(OmegaConf.to_yaml(cfg, resolve=False)))


def _option_node(cfg: DictConfig, group: str) -> DictConfig | None:
    """The option file a group's node came from (matched by `_target_`), as a config."""
    target = cfg[group].get("_target_")
    for opt in options(group).values():
        if opt.get("_target_") == target:
            return OmegaConf.create(opt)
    return None


def with_added_keys(cfg: DictConfig) -> DictConfig:
    """A config an earlier mlprun saved (a checkpoint's, a run folder's .hydra/config.yaml) with
    the keys of mlprun's own groups added since at their defaults, which is what that run did
    (trainer.swa.anneal_strategy=cos, trainer.tensorboard.images), so it resumes and evaluates;
    a key the saved config has keeps its value. (A key a user deletes with ~key is refused by
    validate: this runs on saved configs only.)"""
    for group in OWN_GROUPS:
        if not isinstance(cfg.get(group), DictConfig):
            continue
        option = _option_node(cfg, group)
        if option is not None:
            _set(cfg, group, OmegaConf.merge(option, cfg[group]))
    return cfg


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


def check_loss_fits(loss_cfg: DictConfig, num_classes: int, dataset: str | None = None) -> None:
    """A loss that cannot fit the dataset is a configuration error (binary losses need 2 classes)."""
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


def _optimizer_state_ratio(cfg: DictConfig) -> float:
    """Optimizer state per parameter, asked of the optimizer itself: one step on a probe
    parameter, then its state tensors of the parameter's size are counted (SGD with momentum 1,
    Adam 2, Adam with amsgrad 3, plain SGD 0)."""
    probe = torch.zeros(64, requires_grad=True)
    probe.grad = torch.zeros_like(probe)
    optimizer = instantiate(cfg.optim)([probe])
    for group in optimizer.param_groups:  # the state's size does not depend on the lr; a huge one
        group["lr"] = 0.0  # (optim.lr=1e38) would overflow float32 in this probe step
    optimizer.step()
    state = optimizer.state.get(probe, {})
    return sum(t.numel() for t in state.values() if torch.is_tensor(t) and t.numel() == probe.numel()) / 64


def available_memory(device: torch.device) -> int | None:
    """Bytes this process may still allocate on `device`: free GPU memory (torch.cuda.mem_get_info),
    or for the CPU the smaller of MemAvailable (/proc/meminfo) and the cgroup's limit less its use;
    None where neither can be read (then there is no check)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    found = []
    try:
        import psutil  # lazily and optional: /proc/meminfo gives the same on Linux

        found.append(int(psutil.virtual_memory().available))
    except ImportError:
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        found.append(int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(max(0, int(limit) - int(used)))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def estimate_memory(cfg: DictConfig) -> dict[str, int]:
    """Bytes a run of `cfg` holds at once, by part: parameters, gradients, optimizer state (asked
    of the optimizer), SWA's averaged copy, the checkpoint snapshot (CPU copies of the model and
    optimizer state), activations of the largest batch, and the data held in memory."""
    facts = resolve_loader(cfg.dataset).dataset_facts
    sizes = facts.sizes(cfg.dataset) if facts.sizes is not None else None
    features = sizes.features if sizes is not None and sizes.features else 1
    model = _meta_model(cfg, features, facts.num_classes or 2)
    # a lazy layer's (LazyLinear) parameters have no size before the first forward: not counted
    params = model.parameters() if model is not None else ()
    n_params = sum(p.numel() for p in params if not torch.nn.parameter.is_lazy(p))
    ratio = _optimizer_state_ratio(cfg)
    widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)] if model is not None else []
    units = features + sum(widths)  # every layer's output, the input included
    parts = {
        "parameters": 4 * n_params,
        "gradients": 4 * n_params,
        "optimizer state": int(4 * n_params * ratio),
        "checkpoint snapshot": int(4 * n_params * (1 + ratio)),
        # training keeps each output and its gradient (and a mask); evaluation only the outputs
        "activations": 4 * units * max(3 * int(cfg.trainer.batch_size), int(cfg.trainer.eval_batch_size)),
    }
    swa = cfg.trainer.get("swa")
    if swa is not None and swa.get("enabled"):
        parts["SWA average"] = 4 * n_params
    if sizes is not None and (sizes.pool is not None or sizes.other is not None):
        subset = cfg.dataset.get("subset")
        pool = min(int(subset), sizes.pool) if subset is not None and sizes.pool is not None else sizes.pool or 0
        parts["data"] = 4 * (features + 1) * (pool + (sizes.other or 0))
    return parts


def check_memory(cfg: DictConfig, device: torch.device) -> None:
    """Refuse (one line naming the keys) a run whose estimated memory exceeds
    trainer.memory_fraction of what `device` has available; null skips the check."""
    fraction = cfg.trainer.get("memory_fraction")
    if fraction is None:
        return
    available = available_memory(device)
    if available is None:
        return
    parts = estimate_memory(cfg)
    if device.type != "cpu":  # the checkpoint's copies are made in the host's memory
        parts.pop("checkpoint snapshot")
    need = sum(parts.values())
    if need <= float(fraction) * available:
        return
    # the key that asks for most of it: the model's size (its parameters and all that scales with
    # them), the batch size (activations) or the data
    by_key: dict[str, int] = {}
    data_key = next((f"dataset.{k}" for k in ("subset", "n_train") if k in cfg.dataset), "dataset")
    for part, n in parts.items():
        key = {"data": data_key, "activations": "trainer.batch_size"}.get(part, "model.hidden")
        by_key[key] = by_key.get(key, 0) + n
    keys = max(by_key, key=by_key.get)
    value = OmegaConf.select(cfg, keys)
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    detail = ", ".join(f"{name} {_gb(n)}" for name, n in sorted(parts.items(), key=lambda kv: -kv[1]) if n >= 1e6)
    raise ConfigError(
        keys,
        value,
        message=(
            f"{keys}={_word(value)} needs about {_gb(need)} of memory "
            f"({detail}; optim={option_label(cfg.optim, 'optim')}) "
            f"but {device} has {_gb(available)} available (trainer.memory_fraction={fraction} of it); "
            f"allowed: a smaller model.hidden, trainer.batch_size or dataset.subset, "
            f"or trainer.memory_fraction=null to skip this check"
        ),
    )


def preflight(cfg: DictConfig) -> None:
    """Cheap checks of the environment a valid config needs, before any run folder is made.

    The device must exist and have the memory the run needs (check_memory); the dataset's
    loader checks what it can without loading (files that cannot be downloaded are present, an
    image CSV names existing files with integer labels). Failures are runtime errors (exit 1), a
    run too large for memory a config error (exit 2).
    """
    check_memory(cfg, resolve_device(cfg.trainer.device))
    check_loggers(cfg)  # each logger's class, and MLflow installed for logger=mlflow
    check = resolve_loader(cfg.dataset).dataset_facts.preflight
    if check is not None:
        check(cfg.dataset)


def launch_relative_paths(cfg: DictConfig, launch_dir: Path) -> None:
    """hydra.job.chdir=true: a relative path (dataset.root's default ./data, a relative
    MLPRUN_DATA, dataset.csv, ...) names a place in the folder mlprun was started in, not in the
    run folder Hydra changed to."""
    for key, spec in SCHEMA.items():
        if not spec.path:
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or leaf not in parent.keys() or OmegaConf.is_missing(parent, leaf):
            continue
        value = parent[leaf]
        if value is None or Path(str(value)).expanduser().is_absolute():
            continue
        with read_write(cfg), open_dict(cfg):
            OmegaConf.update(cfg, key, str(launch_dir / Path(str(value))), merge=False)
