"""Multirun jobs: each job is a normal run in its own folder under the sweep folder.

Re-running the same sweep into the same folder skips jobs that completed, resumes jobs that were
interrupted (from their last checkpoint) and retries jobs that failed (from scratch). A failing
job is recorded in its results.json (status "failed" plus a one-line reason) and the other jobs
go on. Jobs may run in other processes (joblib, submitit), so the outcome of the sweep is read
back from the job folders by the parent process at the end (`hydra_callbacks.SweepSummary`):
a job failed in this invocation when its results.json was written during it and says failed.
A job whose folder another running process holds (an older sweep's job still training there)
writes nothing into that folder: it leaves a marker in the sweep folder's `.mlprun_in_use/`
instead, and the summary reports it "in use".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from .checkpoint import atomic_write_json, atomic_write_text, load_checkpoint
from .errors import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    CheckpointError,
    Interrupted,
    LoggerIncomplete,
    MlprunError,
    RunInUse,
    SweepStopped,
)
from .messages import describe_exception
from .progress import fmt_pct
from .record import lock_run_dir
from .results import read_results, short_path
from .resume import check_checkpoint_of
from .run import STARTUP, install_worker_signals, request_stop, run, stop_if_signalled
from .runs import MARKS, SAVED_CONFIG, checkpoint_file
from .sessions import BASIC_SWEEPER, hydra_sweep_dir

log = logging.getLogger("mlprunner")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def launcher_threads(launcher: DictConfig | None, n_cores: int | None = None) -> int | None:
    """torch threads per job so that parallel jobs share the cores instead of oversubscribing.

    joblib: n_jobs jobs at once -> max(1, cores // n_jobs) (n_jobs < 0 counts like joblib:
    -1 = all cores). submitit: cpus_per_task when set, else 1 for local jobs (all start at
    once). The basic launcher runs one job at a time: None (torch's default).
    """
    if launcher is None:
        return None
    n_cores = n_cores or cores()
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs") or 1
        n_jobs = int(n_jobs)
        if n_jobs < 0:
            n_jobs = max(1, n_cores + 1 + n_jobs)
        return max(1, n_cores // max(1, n_jobs))
    if "submitit" in target or target.endswith("MlprunSlurmLauncher"):  # mlprun's is submitit_slurm's subclass
        cpus = launcher.get("cpus_per_task")
        if cpus:
            return int(cpus)
        return 1 if "LocalLauncher" in target else None
    return None


def sweep_threads() -> int | None:
    """launcher_threads for the launcher of the sweep this process runs a job of (None outside
    one, e.g. when called directly without Hydra)."""
    try:
        return launcher_threads(HydraConfig.get().launcher)
    except ValueError:  # no Hydra config
        return None


def best_val_error(results: dict | None):
    return (((results or {}).get("best") or {}).get("val") or {}).get("error")


def record_failure(run_dir: Path, overrides: list[str], message: str, invalid: bool = False) -> None:
    """Make sure results.json says failed with the reason (run() may not have written it);
    invalid: refused for its values (exit code 2 alone), which a rerun does not change."""
    record_end(run_dir, overrides, "failed", message, invalid_config=True if invalid else None)


def record_job_failure(run_dir: Path, overrides: list[str], exc: BaseException) -> bool:
    """A sweep job (any launcher) that raised `exc`, not a signal: False when another process
    trains in its folder (skipped and marked "in use"; its results.json is not ours to write),
    else True once results.json says failed, with why (invalid_config for a refused value)."""
    code, message = describe_exception(exc)
    label = f"job {Path(run_dir).name}"
    if isinstance(exc, RunInUse):
        log.warning(f"{label} skipped, in use: {message}")
        mark_job(_sweep_folder(run_dir), run_dir, "in use", message)
        return False
    log.error(f"{label} ({' '.join(overrides)}) failed: {message}")
    record_failure(run_dir, overrides, message, invalid=code == EXIT_CONFIG)
    return True


def record_end(run_dir: Path, overrides, status: str, reason: str, **fields) -> None:
    """results.json of a job that ended without saying so itself (failed before run() wrote
    it, cancelled, lost): its status and reason, over what the folder has."""
    data = read_results(run_dir) or {
        "epochs_completed": 0,
        "best": None,
        "last": None,
        "overrides": list(overrides),
        "run_dir": str(run_dir.resolve()),
    }
    data["status"] = status
    data["reason"] = reason
    data.setdefault("overrides", list(overrides))
    data.pop("invalid_config", None)  # an earlier attempt's
    data.update({k: v for k, v in fields.items() if v is not None})
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "results.json", data)


def _clear_attempt(run_dir: Path) -> None:
    """Remove what a failed (or never checkpointed) attempt left, so a retry starts clean."""
    for name in ("tensorboard", "checkpoints"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("results.json", "learning_curves.png", "confusion_matrix.png"):
        (run_dir / name).unlink(missing_ok=True)


MULTIRUN_YAML = "multirun.yaml"
_KEPT_YAML = ".multirun.yaml.kept"  # the sweep folder's first multirun.yaml while a rerun runs
_KEEPING: list[Path] = []  # the sweep folders of this process whose multirun.yaml is kept aside


def keep_multirun_yaml(sweep_dir: Path) -> None:
    """Before a sweep starts in `sweep_dir` (SweepSummary.on_multirun_start): Hydra's sweeper
    writes multirun.yaml over the one an earlier sweep into this folder left. Keep a copy, which
    restore_multirun_yaml puts back when the sweep ends (a copy a killed sweep left is put back
    first)."""
    sweep_dir = Path(sweep_dir)
    restore_multirun_yaml(sweep_dir)
    first = sweep_dir / MULTIRUN_YAML
    if first.is_file():
        tmp = sweep_dir / f"{_KEPT_YAML}.{os.getpid()}.tmp"
        shutil.copy2(first, tmp)
        os.replace(tmp, sweep_dir / _KEPT_YAML)
        _KEEPING.append(sweep_dir)


OPTUNA_LOGGER = "hydra_plugins.hydra_optuna_sweeper._impl"


class FailedTrialLine(logging.Filter):
    """Drops the Optuna sweeper's `Failed experiment: Return value must be float-castable. Got
    'None'.` after a failed trial: the job returned None because it failed (run_sweep_job), and
    its own line has said why; the trial is told FAIL all the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Return value must be float-castable. Got 'None'" not in record.getMessage()


def quiet_failed_trials() -> None:
    """Install FailedTrialLine on the Optuna sweeper's logger (once)."""
    optuna_log = logging.getLogger(OPTUNA_LOGGER)
    if not any(isinstance(f, FailedTrialLine) for f in optuna_log.filters):
        optuna_log.addFilter(FailedTrialLine())


def write_multirun_yaml(config: DictConfig, sweep_dir: Path) -> None:
    """Hydra's basic sweeper saves the sweep's config as multirun.yaml; the Optuna sweeper does
    not, and without it a job cannot tell its swept keys (sessions.swept_keys: TensorBoard run
    names, the sweep table, the line prefixes) from the others. Written here, after
    keep_multirun_yaml, for any other sweeper, as the basic sweeper writes it."""
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        atomic_write_text(Path(sweep_dir) / MULTIRUN_YAML, OmegaConf.to_yaml(config))


def restore_multirun_yaml(sweep_dir: Path) -> None:
    """The sweep folder's multirun.yaml is its first sweep's again; a rerun's own, when it
    differs, stays beside it as multirun.<n>.yaml (n = 2, 3, ...), never written over."""
    sweep_dir = Path(sweep_dir)
    kept, current = sweep_dir / _KEPT_YAML, sweep_dir / MULTIRUN_YAML
    if not kept.is_file():
        return
    if current.is_file() and current.read_bytes() != kept.read_bytes():
        n = 2
        while (sweep_dir / f"multirun.{n}.yaml").exists():
            n += 1
        os.replace(current, sweep_dir / f"multirun.{n}.yaml")
    os.replace(kept, current)
    with contextlib.suppress(ValueError):
        _KEEPING.remove(sweep_dir)


_STARTED: dict[Path, set[str] | None] = {}  # sweep folders of this process: their entries before it
_MADE_FROM: dict[Path, Path] = {}  # sweep folder: the highest of its folders that did not exist before it


def note_sweep_start(sweep_dir: Path) -> None:
    """Before the sweep makes or writes its folder (SweepSummary.on_multirun_start): what is in
    it, for forget_refused_sweeps; and this launch's SWEEP_ID, which its jobs inherit."""
    sweep_dir = Path(sweep_dir)
    _STARTED[sweep_dir] = set(os.listdir(sweep_dir)) if sweep_dir.is_dir() else None
    top = sweep_dir.absolute()
    while not top.parent.exists():  # runs/multirun/<date>/ of a first sweep today: made with it
        top = top.parent
    _MADE_FROM[sweep_dir] = top
    os.environ[SWEEP_ID] = f"{os.getpid()}-{time.time_ns()}"


def started_sweep() -> Path | None:
    """The sweep folder this process started last (note_sweep_start), if any."""
    return next(reversed(_STARTED), None)


_MADE_RUN_DIRS: set[Path] = set()  # run folders this process's start made (RunGuard)


def note_run_made(run_dir: Path) -> None:
    _MADE_RUN_DIRS.add(Path(run_dir).resolve())


def forget_refused_run(run_dir: Path) -> None:
    """A single run refused after Hydra made its folder (a check that needs the data): the
    folder goes when this start made it and holds only what the start wrote (.hydra/, mlprun.log,
    the lock), so a refused start leaves no run folder."""
    run_dir = Path(run_dir).resolve()
    if run_dir not in _MADE_RUN_DIRS or not run_dir.is_dir():
        return
    if {p.name for p in run_dir.iterdir()} - {SAVED_CONFIG.parent.name, "mlprun.log", ".mlprun.lock"}:
        return
    stop_logging_into(run_dir)
    shutil.rmtree(run_dir / SAVED_CONFIG.parent, ignore_errors=True)
    for name in ("mlprun.log", ".mlprun.lock"):
        (run_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()
        run_dir.parent.rmdir()  # runs/<date>/ when this was its only run


def forget_refused_sweeps() -> None:
    """mlprun's way out of a sweep refused with a config error (exit 2)."""
    for sweep_dir, before in list(_STARTED.items()):
        forget_refused_sweep(sweep_dir, before)


def forget_refused_sweep(sweep_dir: Path, before: set[str] | None) -> None:
    """A sweep refused before any job started (a misspelt key, an unknown option): the folder is
    as it was. `before`: its entries when the sweep started (None: this sweep made it). The
    multirun.yaml the sweeper wrote for the refused sweep goes; the earlier one, if any, stays."""
    sweep_dir = Path(sweep_dir)
    with contextlib.suppress(OSError):
        new = set(os.listdir(sweep_dir)) - (before or set()) - {MULTIRUN_YAML, _KEPT_YAML, MARKS}
        if new:  # a job started: what it wrote is the sweep's record
            return
        kept = sweep_dir / _KEPT_YAML
        if kept.is_file():
            os.replace(kept, sweep_dir / MULTIRUN_YAML)
            with contextlib.suppress(ValueError):
                _KEEPING.remove(sweep_dir)
        elif before is None or MULTIRUN_YAML not in before:
            (sweep_dir / MULTIRUN_YAML).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (sweep_dir / MARKS).rmdir()
        if before is None:
            sweep_dir.rmdir()  # only if empty
            made = sweep_dir.absolute()
            while made != _MADE_FROM.get(sweep_dir, made):  # its parents the sweep made, if empty
                made = made.parent
                made.rmdir()


def restore_kept_multirun_yaml() -> None:
    """mlprun's way out of a sweep that ended without on_multirun_end (interrupted, failed)."""
    for sweep_dir in list(_KEEPING):
        with contextlib.suppress(OSError):
            restore_multirun_yaml(sweep_dir)


def _sweep_folder(run_dir: Path) -> Path:
    try:
        return hydra_sweep_dir()
    except ValueError:  # no Hydra config (called directly)
        return run_dir.parent


# Which launch of a sweep a job belongs to: set by the sweep's process when it starts
# (note_sweep_start) and inherited by its jobs' processes (joblib's workers, SLURM jobs), so two
# launches into one folder at once each read only their own jobs' markers.
SWEEP_ID = "MLPRUN_SWEEP_ID"


def job_marker(sweep_dir: Path, run_dir: Path) -> Path:
    try:
        name = str(Path(run_dir).resolve().relative_to(Path(sweep_dir).resolve()))
    except ValueError:
        name = Path(run_dir).name
    launch = os.environ.get(SWEEP_ID)
    return Path(sweep_dir) / MARKS / (name.replace(os.sep, "%") + (f"@{launch}" if launch else "") + ".json")


def _new_marks(sweep_dir: Path, before: dict[str, tuple]):
    """(marker, its contents) of the markers written since `before` by this launch's jobs (or by
    a job that knew no launch)."""
    for marker in (Path(sweep_dir) / MARKS).glob("*.json"):
        if _stamp(marker) != before.get(str(marker.resolve())):
            data = _read_json(marker)
            if data.get("sweep") in (None, os.environ.get(SWEEP_ID)):
                yield marker, data


def claim_run_dir(run_dir: Path, sweep_dir: Path | None = None) -> bool:
    """Take the run folder's lock before anything is written into it. False when another
    running process holds it: then the folder is left byte for byte (the job logs stop writing
    into it) and a marker in the sweep folder tells the sweep's summary that this job was
    skipped as "in use"."""
    run_dir = Path(run_dir)
    try:
        # a folder that does not exist yet is made and locked here too: a second launch of the
        # sweep may be about to start this job as well
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_run_dir(run_dir)
        return True
    except RunInUse as exc:
        stop_logging_into(run_dir)
        reason = f"{exc}; nothing was written there: rerun the sweep once it has finished"
        log.warning(f"job {run_dir.name} skipped, in use: {reason}")
        mark_job(sweep_dir or _sweep_folder(run_dir), run_dir, "in use", reason)
        return False


def stop_logging_into(run_dir: Path) -> None:
    """Close the log handlers that write into `run_dir` (Hydra's job log file, `mlprun.log`): a
    job that leaves its folder as it is (completed, in use, refused) logs to the console only."""
    for logger in (logging.getLogger(), log):
        for handler in list(logger.handlers):
            path = Path(getattr(handler, "baseFilename", "/")).resolve()
            if isinstance(handler, logging.FileHandler) and Path(run_dir).resolve() in path.parents:
                logger.removeHandler(handler)
                handler.close()


def hydra_files(cfg: DictConfig) -> dict[str, str]:
    """{name: text} of the .hydra/ files Hydra writes for a job (config.yaml, hydra.yaml,
    overrides.yaml), as Hydra would write them. Taken before anything changes the job's config
    (hydra.job.chdir's absolute paths, the launcher's thread count)."""
    hydra_cfg = HydraConfig.instance().cfg
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }


def write_hydra_files(run_dir: Path, files: dict[str, str]) -> None:
    """A sweep job's .hydra/ (Hydra's output_subdir is null for sweep jobs, see configs/config.yaml):
    written only once the job holds its folder's lock and starts afresh, so a completed job's
    folder or one another process trains in is never rewritten."""
    folder = Path(run_dir) / SAVED_CONFIG.parent
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():  # config.yaml is what a resume reads back: never half written
        atomic_write_text(folder / name, text)


def mark_job(sweep_dir: Path, run_dir: Path, status: str, reason: str) -> None:
    """Tell the sweep's summary (SweepSummary, possibly another process) how a job ended when
    its folder cannot say it."""
    marker = job_marker(sweep_dir, run_dir)
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        marker,
        {
            "run_dir": str(Path(run_dir).resolve()),
            "status": status,
            "reason": reason,
            "sweep": os.environ.get(SWEEP_ID),
        },
    )


def marked_since(sweep_dir: Path, before: dict[str, tuple]) -> dict[str, tuple[str, str]]:
    """{run folder: (status, reason)} of the jobs marked since `before` (results_stamps at the
    start of the sweep, which also stamps the markers)."""
    found = {}
    for _, data in _new_marks(sweep_dir, before):
        if data.get("run_dir"):
            status = str(data.get("status") or "in use")
            found[str(Path(data["run_dir"]).resolve())] = (status, str(data.get("reason") or status))
    return found


def in_use_since(sweep_dir: Path, before: dict[str, tuple]) -> dict[str, str]:
    """{run folder: reason} of the jobs that found their folder in use since `before`."""
    return {d: reason for d, (status, reason) in marked_since(sweep_dir, before).items() if status == "in use"}


def clear_marks(sweep_dir: Path, before: dict[str, tuple]) -> None:
    """Remove the markers written since `before` (they have been read), and the folder if empty."""
    for marker, _ in list(_new_marks(sweep_dir, before)):
        marker.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (Path(sweep_dir) / MARKS).rmdir()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def prepare_sweep_job(run_dir: Path, saved: dict[str, str] | None = None) -> tuple[bool, object, dict | None]:
    """What a sweep job's folder asks for: (False, objective, None) for a job that completed
    before (skipped); (False, None, None) for a folder another process holds or a checkpoint
    refused; else (True, the checkpoint to resume from or None to start afresh, its contents):
    what a failed attempt left is removed.

    saved: the job's .hydra/ files (hydra_files), written when the job starts afresh; a completed
    job's folder is left byte for byte, a resumed job keeps the .hydra/ it started with."""
    label = f"job {run_dir.name}"
    if jobs_in_workers():
        sweep_dir = _sweep_folder(run_dir)
        if STARTUP.requested:  # a signal reached this worker between two jobs
            _hand_stop_to_sweep(sweep_dir, STARTUP.signal_name or "a signal")
        stopped = sweep_stop_reason(sweep_dir)
        if stopped:  # a signal stopped the sweep: its queued jobs do not start
            forget_unstarted_job(run_dir)
            mark_job(sweep_dir, run_dir, "not started", f"{stopped}; nothing was written there")
            log.warning(f"{label} not started: {stopped}")
            return False, None, None
    stop_if_signalled(f"before {label} started (nothing was written there); rerun this sweep command to continue")
    if not claim_run_dir(run_dir):
        return False, None, None
    prior = read_results(run_dir)
    status = (prior or {}).get("status")
    if status == "completed":
        stop_logging_into(run_dir)  # not even a line in its mlprun.log
        log.info(f"{label} already completed (best val error {fmt_pct(best_val_error(prior))}): skipped")
        return False, best_val_error(prior), None
    last = checkpoint_file(run_dir, "last")
    resume_from = ckpt = None
    if status in ("interrupted", "running", "cancelled", "lost") and last.is_file():
        try:
            ckpt = load_checkpoint(last)
        except MlprunError:
            ckpt = None  # run() reports it: the job fails, and the next rerun starts it again
        if ckpt is not None:
            try:
                check_checkpoint_of(ckpt, last, run_dir)
            except CheckpointError as exc:  # left as it is: a retry from scratch would delete it
                stop_logging_into(run_dir)
                log.error(f"{label} refused: {exc}")
                mark_job(_sweep_folder(run_dir), run_dir, "refused", str(exc))
                return False, None, None
        resume_from = last
        where = f" after epoch {int(ckpt['epoch'])} (step {int(ckpt['step'])})" if ckpt is not None else ""
        log.info(f"{label} was {status}: resuming from {short_path(last)}{where}")
    elif prior is not None or (run_dir / "checkpoints").exists() or (run_dir / "tensorboard").exists():
        log.info(f"{label} was {status or 'started'} before: starting it again from scratch")
        _clear_attempt(run_dir)
    if saved and (resume_from is None or not (run_dir / SAVED_CONFIG).is_file()):
        write_hydra_files(run_dir, saved)
    return True, resume_from, ckpt


def run_sweep_job(cfg: DictConfig, run_dir: Path, overrides: list[str], saved: dict[str, str] | None = None):
    """Run one job of a multirun; return its objective (best validation error) or None if it
    failed or its folder is in use by another running process (then nothing is written there).

    saved: the job's .hydra/ files (prepare_sweep_job)."""
    run_dir = Path(run_dir)
    if jobs_in_workers():
        install_worker_signals()
    train, resume_from, ckpt = prepare_sweep_job(run_dir, saved)
    if not train:
        return resume_from  # the objective of a completed job, or None (folder in use, refused)
    if jobs_in_workers():
        watch_for_stop(_sweep_folder(run_dir), run_dir)
    try:
        return _train_sweep_job(cfg, run_dir, overrides, resume_from, ckpt)
    finally:
        _WATCHING["job"] = None


def _train_sweep_job(cfg: DictConfig, run_dir: Path, overrides: list[str], resume_from, ckpt):
    label = f"job {run_dir.name}"
    if cfg.trainer.get("threads") is None:
        threads = sweep_threads()
        if threads:
            with open_dict(cfg):
                OmegaConf.set_readonly(cfg, False)
                cfg.trainer.threads = threads
            log.info(f"{label}: {threads} torch thread(s)")
    try:
        results = run(cfg, run_dir, resume_from=resume_from, overrides=overrides, checkpoint=ckpt)
    except SystemExit:
        # submitit's SIGUSR2 handler (SLURM time limit or preemption) has saved the job for a
        # requeue and leaves with SystemExit: the run is interrupted, not failed, and the
        # requeued job resumes it from checkpoints/last.pt.
        record_requeue(run_dir)
        raise
    except BaseException as exc:
        if out_of_requeues(exc):
            # the same handler with no requeue left (hydra.launcher.max_num_timeout): still a time
            # limit, not a failure; a failed job would start again from scratch on the rerun
            record_time_limit(run_dir, overrides)
            raise
        code, message = describe_exception(exc)
        if isinstance(exc, KeyboardInterrupt) or code == EXIT_INTERRUPTED:
            if jobs_run_here():  # Hydra would record the job failed and start the next one
                said = message.split("; continue with:")[0]
                who = label if "=" in run_dir.name else f"{label} ({' '.join(overrides)})"  # named by them
                raise SweepStopped(Interrupted(f"{who}: {said}"), str(hydra_sweep_dir())) from None
            if jobs_in_workers():  # its results.json says interrupted; the queued jobs must not start
                found = re.search(r"\bSIG[A-Z]+\b", message)
                _hand_stop_to_sweep(_sweep_folder(run_dir), found.group(0) if found else "SIGINT")
                log.warning(f"{label} interrupted: {message.split('; continue with:')[0]}")
                return None  # the sweep's summary reports it (raising would skip the summary)
            raise
        if isinstance(exc, LoggerIncomplete):  # trained and recorded completed: not a failure to rerun
            log.error(f"{label}: {message}")
            return best_val_error(read_results(run_dir))
        if not record_job_failure(run_dir, overrides, exc):
            return None
        if in_slurm_job():  # the SLURM job's own state says FAILED too (sacct, squeue -t all)
            raise MlprunError(f"{label} failed: {message}") from None
        # None: Optuna marks the trial failed (not a value); other sweepers ignore it.
        return None
    return best_val_error(results)


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"

# what Optuna's storages say when a study has no best trial because no trial completed:
# RDBStorage (sqlite) and InMemoryStorage, Optuna 2.x and 3.x
NO_BEST_TRIAL = ("Record does not exist.", "No trials are completed yet.")


def no_trial_completed(exc: BaseException) -> bool:
    """Whether `exc` is the ValueError of `study.best_trial` (Hydra's Optuna sweeper asks for it
    after the last trial) in a study without a completed trial."""
    return isinstance(exc, ValueError) and str(exc) in NO_BEST_TRIAL


def jobs_run_here() -> bool:
    """The sweep's jobs run one after another in this process (Hydra's basic launcher): a signal
    that stops one job stops the sweep. (Other launchers run a job in a process of its own, which
    the signal stops: joblib's workers, a SLURM job.)"""
    return HydraConfig.get().launcher.get("_target_") == BASIC_LAUNCHER


def jobs_in_workers() -> bool:
    """The sweep's jobs run in worker processes on this machine (joblib's launcher), where a
    Ctrl-C reaches every job at once: a signal stops the whole sweep, not only the job it reached."""
    return str(HydraConfig.get().launcher.get("_target_")) == JOBLIB_LAUNCHER


def _stop_marker(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / MARKS / f".stopped@{os.environ.get(SWEEP_ID, '')}.json"


def stop_sweep(sweep_dir: Path, signal_name: str) -> None:
    """A signal stopped this launch of the sweep (its parent or one of its workers got it): no
    job of it starts from now on, and its summary ends with the command that continues it."""
    marker = _stop_marker(sweep_dir)
    if marker.is_file():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    data = {"reason": f"stopped by {signal_name}", "signal": signal_name, "sweep": os.environ.get(SWEEP_ID)}
    atomic_write_json(marker, data)


_WATCHING: dict = {}  # this worker's job now: {"sweep": its sweep folder, "job": its run folder}
_WATCHER: list[int] = []  # the process whose watcher thread runs


def watch_for_stop(sweep_dir: Path, run_dir: Path) -> None:
    """In a joblib worker: stop the job it runs (after its step, as a signal would) once its
    sweep has been stopped by a signal that did not reach this process (a SIGTERM to mlprun
    alone, `timeout`'s), checked every half second by a thread started once per worker."""
    _WATCHING.update(sweep=Path(sweep_dir), job=Path(run_dir))
    if _WATCHER != [os.getpid()]:
        _WATCHER[:] = [os.getpid()]
        threading.Thread(target=_watch, name="mlprun-sweep-stop", daemon=True).start()


def _watch() -> None:
    told = None
    while True:
        time.sleep(0.5)
        job = _WATCHING.get("job")
        if job is None or job == told:
            continue
        data = _read_json(_stop_marker(_WATCHING["sweep"]))
        if data:
            told = job
            request_stop(str(data.get("signal") or "SIGTERM"), f"job {job.name}: the sweep was {data.get('reason')}")


def forget_launch_marks(sweep_dir: Path) -> None:
    """Remove the markers this launch of the sweep wrote (a sweep that ends without its summary)."""
    for marker in (Path(sweep_dir) / MARKS).glob(f"*@{os.environ.get(SWEEP_ID)}.json"):
        marker.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (Path(sweep_dir) / MARKS).rmdir()


def _hand_stop_to_sweep(sweep_dir: Path, signal_name: str) -> None:
    """In a joblib worker: a signal that reached it stops the whole sweep (stop_sweep); the marker
    holds it from now on, for every worker, so this worker's own flag is cleared."""
    stop_sweep(sweep_dir, signal_name)
    STARTUP.requested = False


def sweep_stopped_by(sweep_dir: Path) -> str | None:
    """ "stopped by SIGINT" when a signal stopped this launch of the sweep: its marker (a worker
    or this process's handler wrote it) or this process's own start-up flag; else None."""
    return sweep_stop_reason(sweep_dir) or (f"stopped by {STARTUP.signal_name}" if STARTUP.requested else None)


def sweep_stop_reason(sweep_dir: Path | None) -> str | None:
    """ "stopped by SIGINT" once a signal stopped this launch of the sweep (stop_sweep), else None
    (also for no sweep: started_sweep() of a single run)."""
    if sweep_dir is None:
        return None
    marker = _stop_marker(sweep_dir)
    return str(_read_json(marker).get("reason") or "stopped by a signal") if marker.is_file() else None


def forget_unstarted_job(run_dir: Path) -> None:
    """A job that does not start leaves no trace: Hydra made its folder and opened its log file
    (empty) before the job could decide; both go when they hold nothing else."""
    stop_logging_into(run_dir)
    run_dir = Path(run_dir)
    log_file = run_dir / "mlprun.log"
    with contextlib.suppress(OSError):
        if log_file.is_file() and log_file.stat().st_size == 0:
            log_file.unlink()
        run_dir.rmdir()  # only if empty


def in_slurm_job() -> bool:
    """Inside a job SLURM started (not an allocation's login shell: submitit sets its folder)."""
    return bool(os.environ.get("SLURM_JOB_ID")) and bool(os.environ.get("SUBMITIT_FOLDER"))


def out_of_requeues(exc: BaseException) -> bool:
    """Whether `exc` is submitit's UncompletedJobError of a SLURM job at its time limit with no
    requeue left (hydra.launcher.max_num_timeout; checked by name: submitit is an optional extra)."""
    return type(exc).__name__ == "UncompletedJobError" and "timed-out too many times" in str(exc)


def record_time_limit(run_dir: Path, overrides) -> None:
    """A job (or group member) at its SLURM time limit with no requeue left (out_of_requeues):
    interrupted, not failed, so the rerun resumes it from last.pt instead of starting it again."""
    done = (read_results(run_dir) or {}).get("epochs_completed", 0)
    record_end(
        run_dir,
        overrides,
        "interrupted",
        f"SLURM time limit reached with no requeue left (hydra.launcher.max_num_timeout) after epoch {done}; "
        "rerun this sweep command to resume it from checkpoints/last.pt (a larger hydra.launcher.timeout_min "
        "or max_num_timeout lets one SLURM job go further)",
    )


def record_requeue(run_dir: Path) -> None:
    data = read_results(run_dir)
    if data is None or data.get("status") == "completed":
        return
    data["status"] = "interrupted"
    data["reason"] = (
        f"requeued by SLURM (time limit or preemption) after epoch {data.get('epochs_completed', 0)}; "
        f"the requeued job resumes from checkpoints/last.pt"
    )
    atomic_write_json(run_dir / "results.json", data)


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def results_stamps(folder: Path) -> dict[str, tuple]:
    """An identity of every results.json (and in-use marker) under `folder` as it is now. Every
    write of results.json replaces the file (atomic rename), so one written later has another
    stamp."""
    paths = [*Path(folder).glob("**/results.json"), *(Path(folder) / MARKS).glob("*.json")]
    return {str(p.resolve()): _stamp(p) for p in paths}


def failed_since(jobs: list[dict], before: dict[str, tuple]) -> list[str]:
    """The folders of `jobs` (report.collect's) whose results.json was written after `before`
    (results_stamps at the start of the sweep) and does not say completed (failed, interrupted,
    cancelled, lost, or still running): the jobs that did not complete in this sweep, not those
    an earlier sweep into the same folder left."""
    failed = []
    for job in jobs:
        path = (job["dir"] / "results.json").resolve()
        stamp = _stamp(path)
        if job["status"] != "completed" and stamp is not None and stamp != before.get(str(path)):
            failed.append(str(job["dir"].resolve()))
    return failed
