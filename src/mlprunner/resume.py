"""`mlprun resume=<run dir | checkpoint | latest> [safe overrides]`: continue a run in place.

The run continues in its own directory with the configuration saved in its checkpoint (Hydra is
bypassed: no new timestamped folder). Only overrides that cannot change what was learned so far
are accepted. A run killed before its first checkpoint restarts from epoch 1 in the same folder
with the configuration Hydra saved in `.hydra/config.yaml`.
"""

from __future__ import annotations

import difflib
import logging
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import check_config_targets, load_checkpoint, temp_files_of_atomic_writes
from .components import length_keys
from .config import validate, with_added_keys
from .errors import CheckpointError, ConfigError, first_line
from .loggers import with_logger
from .logsetup import configure_logging
from .record import lock_run_dir
from .results import read_results, short_path
from .run import run
from .runs import (
    CHECKPOINT_DIR,
    SAVED_CONFIG,
    checkpoint_file,
    locate_for_resume,
    merge_overrides,
    recorded_model_target,
)
from .schema import GROUPS, SCHEMA, declared
from .sessions import NOT_HPARAMS
from .train import still_stopped

log = logging.getLogger("mlprunner")

# Keys (or key prefixes ending in '.') that may change when a run is continued.
SAFE_KEYS = (
    "trainer.epochs",
    "trainer.early_stopping.",
    "trainer.log_every_n_steps",
    "trainer.progress",
    "trainer.tensorboard.",
    "trainer.checkpoint.",
    "trainer.threads",
    "trainer.memory_fraction",
    "trainer.profile",
    "trainer.eval_batch_size",
    "trainer.eval_train",
    "trainer.device",
    "trainer.cuda_graph",
    "eval.",
    "dataset.root",
    "dataset.download",
)


def is_safe(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in SAFE_KEYS)


def allowed_text() -> str:
    return ", ".join(k.rstrip(".") + (".*" if k.endswith(".") else "") for k in SAFE_KEYS)


def parse_overrides(args: list[str]) -> list[str]:
    out = []
    for a in args:
        if a.startswith("resume="):
            continue
        if a.startswith("-"):
            raise ConfigError(
                a, message=f"{a}: flags cannot be combined with resume= (resume continues one run; see mlprun --help)"
            )
        if a.startswith("~"):
            raise ConfigError(
                a, message=f"{a}: keys cannot be deleted when resuming; allowed with resume=: {allowed_text()}"
            )
        key, eq, _ = a.lstrip("+").partition("=")
        if not eq:
            raise ConfigError(a, message=f"cannot parse override '{a}': expected key=value")
        if key in GROUPS:  # optim=sgd: another component, not a misspelt key
            raise ConfigError(key, message=f"{a}: the config group {key} cannot change when resuming ({why(key)})")
        close = [] if declared(key) else difflib.get_close_matches(key, [k for k in SCHEMA if "._" not in k], 2, 0.75)
        if close:  # a typo, as a fresh run reports it
            raise ConfigError(
                key,
                message=(
                    f"{key}: no such config key; did you mean {' or '.join(close)}? "
                    f"(allowed with resume=: {allowed_text()})"
                ),
            )
        if not is_safe(key):
            raise ConfigError(key, message=f"{key} cannot change when resuming ({why(key)})")
        out.append(a.lstrip("+"))
    return out


def why(key: str) -> str:
    """Why `key` keeps its value on resume, and what may change."""
    if key == "logger" or key.startswith("logger."):
        reason = "a run keeps the loggers it started with, so each has its whole history"
    elif key == "hydra.run.dir" or key.startswith("hydra.sweep."):
        reason = "a run stays in its folder, and resume= names it"
    elif key.startswith("hydra."):
        reason = "a run goes on with the Hydra settings it started with"
    else:
        reason = "it would change the model, data or optimizer of a run already trained"
    return f"{reason}; allowed with resume=: {allowed_text()}"


def check_resumable(state: dict, path: Path) -> None:
    """The keys resume needs, with the right types (a forged or foreign dict fails here, in one line)."""
    problems = []
    for key, kind in (
        ("epoch", int),
        ("step", int),
        ("model", dict),
        ("optimizer", dict),
        ("rng", dict),
        ("config", dict),
    ):
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            problems.append(key)
    rng = state.get("rng") if isinstance(state.get("rng"), dict) else {}
    if not (
        isinstance(rng.get("torch"), torch.Tensor)
        and isinstance(rng.get("numpy"), dict)
        and isinstance(rng.get("python"), dict)
    ):
        problems.append("rng")
    if problems:
        raise CheckpointError(f"{path} cannot be resumed: missing or malformed {', '.join(sorted(set(problems)))}")
    if state["epoch"] < 0 or state["step"] < 0:
        raise CheckpointError(f"{path} cannot be resumed: negative epoch or step")


_ABSENT = object()


def _leaves(node, prefix: str = "") -> dict:
    """{dotted key: value} of a config's leaves (lists are values)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _saved_leaves(path: Path) -> dict:
    """The leaves of a run folder's .hydra/config.yaml, resolved where they resolve (an
    interpolation that does not, e.g. an unset environment variable, is left out)."""
    cfg = OmegaConf.load(path)
    try:
        return _leaves(OmegaConf.to_container(cfg, resolve=True))
    except Exception:  # resolve leaf by leaf
        out = {}
        for key in _leaves(OmegaConf.to_container(cfg, resolve=False)):
            try:
                out[key] = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}), resolve=True)[
                    "v"
                ]
            except Exception:
                continue
        return out


def _same(a, b) -> bool:
    if a == b:
        return True
    # hydra.job.chdir=true: the run saw a relative path made absolute (config.launch_relative_paths)
    return isinstance(a, str) and isinstance(b, str) and not Path(b).is_absolute() and a.endswith("/" + b.lstrip("./"))


def check_checkpoint_of(ckpt: dict, path: Path, run_dir: Path) -> None:
    """A checkpoint is continued only in the run folder it was trained in: its config must agree
    with the folder's .hydra/config.yaml, except keys a resume may change (SAFE_KEYS) and keys
    left out of folder names (threads, progress, TensorBoard, data location, ...).
    CheckpointError (exit 1) otherwise, before anything in the folder changes."""
    saved = Path(run_dir) / SAVED_CONFIG
    if not saved.is_file() or not isinstance(ckpt.get("config"), dict):
        return  # a run started from Python has no .hydra/: nothing to compare with
    try:
        theirs = _saved_leaves(saved)
    except Exception as exc:
        raise CheckpointError(f"cannot read {saved}: {first_line(exc)}") from None
    ours = _leaves(ckpt["config"])
    differ = [
        key
        for key in sorted(ours.keys() | theirs.keys())
        if not (key == "resume" or is_safe(key) or NOT_HPARAMS.match(key))
        and not _same(ours.get(key, _ABSENT), theirs.get(key, _ABSENT))
    ]
    if differ:
        key = differ[0]

        def shown(value):
            return "(absent)" if value is _ABSENT else repr(value)

        more = f" (and {len(differ) - 1} more key(s))" if len(differ) > 1 else ""
        raise CheckpointError(
            f"{path} was not trained in {run_dir}: its {key}={shown(ours.get(key, _ABSENT))} but {saved} has "
            f"{key}={shown(theirs.get(key, _ABSENT))}{more}; nothing was changed (a checkpoint continues only in "
            f"the folder it was trained in)"
        )


def _remove_stale_temps(run_dir: Path) -> None:
    """Temp files of atomic writes a killed process left behind in the run folder and its
    checkpoints (checkpoints, results.json, metrics.csv, the PNGs)."""
    for folder in (run_dir, run_dir / CHECKPOINT_DIR):
        for tmp in temp_files_of_atomic_writes(folder):
            tmp.unlink(missing_ok=True)


def _restart(run_dir: Path, overrides: list[str]) -> int:
    """A run killed before its first checkpoint: start it again, in place, from its saved config."""
    cfg_path = run_dir / SAVED_CONFIG
    try:
        cfg = OmegaConf.load(cfg_path)
    except Exception as exc:
        raise CheckpointError(f"cannot read {cfg_path}: {first_line(exc)}") from None
    cfg = with_logger(with_added_keys(cfg))  # saved before the logger group
    cfg.resume = None
    try:  # the saved file first, so its own bad value is not blamed on the command line
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.value, message=f"{cfg_path}: {exc}") from None
    cfg = merge_overrides(cfg, overrides, strict=True)
    validate(cfg)
    check_config_targets(OmegaConf.to_container(cfg, resolve=True), cfg_path, recorded_model_target(run_dir))
    prior = read_results(run_dir, strict=True) or {}
    trained = int(prior.get("epochs_completed") or 0)
    folder = run_dir / "checkpoints"
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: a file, where the run keeps its checkpoints folder: move it away")
    if prior.get("status") == "completed" or trained > 0:
        # e.g. trainer.checkpoint.save_last=false: never wipe a run that has trained epochs
        best = checkpoint_file(run_dir, "best")
        hint = f"; resume from another checkpoint, e.g. resume={best}" if best.is_file() else ""
        raise CheckpointError(
            f"{run_dir} has {trained} trained epochs but no checkpoints/last.pt "
            f"(trainer.checkpoint.save_last=false?){hint}"
        )
    lock_run_dir(run_dir)
    # Nothing from the first attempt survived a checkpoint: its partial logs would only overlap.
    for sub in ("tensorboard", "checkpoints"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    configure_logging(run_dir)
    print(
        f"mlprun: {short_path(run_dir)} stopped before its first checkpoint; restarting it from epoch 1 in place",
        flush=True,
    )
    run(cfg, run_dir, overrides=list(prior.get("overrides", [])) + overrides, restart=True)
    return 0


def check_continuable(ckpt: dict, path: Path, cfg: DictConfig, prior: dict) -> None:
    """What a resume may not do even with safe keys: go back to an earlier checkpoint of a run
    that has trained further (its later epochs would be overwritten), lengthen a schedule whose
    length was set from trainer.epochs (the saved scheduler keeps the old length: OneCycleLR
    fails, cosine restarts from 0), or judge `best` by another metric than the one that chose
    best.pt. ConfigError (exit 2), before anything is written."""
    done, trained = int(ckpt["epoch"]), int(prior.get("epochs_completed") or 0)
    if trained > done:
        lost = f"epoch {trained}" if trained == done + 1 else f"epochs {done + 1}-{trained}"
        raise ConfigError(
            "resume",
            str(path),
            message=(
                f"resume={path}: the run has trained {trained} epochs, this checkpoint is from epoch {done}; "
                f"continuing from it would overwrite {lost} (last.pt, results.json, TensorBoard); "
                f"resume the run folder to continue after epoch {trained}, or evaluate it: mlprun-eval {path}"
            ),
        )
    saved = OmegaConf.create(ckpt["config"])
    before, after = int(saved.trainer.epochs), int(cfg.trainer.epochs)
    key = next(iter(length_keys(cfg.scheduler)), None) if cfg.get("scheduler") is not None else None
    if before != after and key is not None:
        raise ConfigError(
            "trainer.epochs",
            after,
            message=(
                f"trainer.epochs cannot change when resuming this run ({before} -> {after}): its scheduler "
                f"({cfg.scheduler._target_.rsplit('.', 1)[-1]}) has scheduler.{key} set from trainer.epochs={before}, "
                "so the saved schedule would end or restart early; start a new run to train longer"
            ),
        )
    for name in ("monitor", "mode"):
        old, new = saved.trainer.early_stopping.get(name), cfg.trainer.early_stopping.get(name)
        if old != new:
            raise ConfigError(
                f"trainer.early_stopping.{name}",
                new,
                message=(
                    f"trainer.early_stopping.{name} cannot change when resuming ({old} -> {new}): best.pt and "
                    f"the best epoch were chosen by {name}={old}"
                ),
            )


def check_best(run_dir: Path, resumed_from: Path) -> None:
    """The run's best.pt must load: training on cannot make the best epoch's weights again, and
    mlprun-eval, mlprun-predict and the test read them. CheckpointError (exit 1)."""
    best = checkpoint_file(run_dir, "best")
    if best.is_file() and best.resolve() != resumed_from.resolve():
        try:
            load_checkpoint(best)
        except CheckpointError as exc:
            raise CheckpointError(
                f"{exc}; resuming cannot rebuild the best epoch's weights: move it away to continue without them"
            ) from None


def resume_main(args: list[str]) -> int:
    arg = [a for a in args if a.startswith("resume=")][-1].split("=", 1)[1]
    overrides = parse_overrides(args)
    run_dir, ckpt_path = locate_for_resume(arg)
    if ckpt_path is None:
        return _restart(run_dir, overrides)
    ckpt = load_checkpoint(ckpt_path)
    check_resumable(ckpt, ckpt_path)
    check_config_targets(ckpt["config"], ckpt_path, recorded_model_target(run_dir))
    if run_dir is None:
        raise ConfigError(
            "resume",
            arg,
            message=(
                f"resume={arg}: a checkpoint is resumed in its run folder, so it must be "
                f"<run dir>/checkpoints/<name>.pt; give the run folder instead"
            ),
        )
    check_checkpoint_of(ckpt, ckpt_path, run_dir)
    cfg = with_logger(merge_overrides(with_added_keys(OmegaConf.create(ckpt["config"])), overrides, strict=True))
    cfg.resume = None
    validate(cfg)
    prior = read_results(run_dir, strict=True) or {}
    epochs = int(cfg.trainer.epochs)
    done = int(ckpt["epoch"])
    check_continuable(ckpt, ckpt_path, cfg, prior)
    check_best(run_dir, ckpt_path)
    # Early stopping is re-judged with the (possibly overridden) patience, as Trainer.load_state does.
    stopped = still_stopped(ckpt.get("early_stopping") or {}, cfg.trainer.early_stopping)
    if prior.get("status") == "completed" and prior.get("epochs_completed") == done and (done >= epochs or stopped):
        why = (
            f"stopped early after epoch {done}"
            if stopped and done < epochs
            else f"completed all {done} epoch{'s' * (done != 1)}"
        )
        hint = (
            "raise trainer.early_stopping.patience or disable it"
            if stopped and done < epochs
            else "raise trainer.epochs"
        )
        print(f"mlprun: run {short_path(run_dir)} already {why}; nothing to do ({hint} to train longer)", flush=True)
        return 0
    lock_run_dir(run_dir)  # refuse before writing anything if another process trains here
    _remove_stale_temps(run_dir)
    configure_logging(run_dir)
    if done >= epochs or stopped:
        print(
            f"mlprun: {short_path(run_dir)} has all {done} epochs in {ckpt_path.name}; finishing the run "
            f"(results, plots) without training",
            flush=True,
        )
    else:
        log.info(
            f"mlprun: resuming {short_path(run_dir)} from {ckpt_path.name} after epoch {done} of {epochs} "
            f"(step {int(ckpt['step'])})"
        )
    run(cfg, run_dir, resume_from=ckpt_path, overrides=overrides, checkpoint=ckpt)
    return 0
