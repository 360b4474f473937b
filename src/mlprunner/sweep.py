"""Multirun jobs: each job is a normal run in its own folder under the sweep folder.

Re-running the same sweep into the same folder skips jobs that completed, resumes jobs that were
interrupted (from their last checkpoint) and retries jobs that failed (from scratch). A failing
job is recorded in its results.json (status "failed" plus a one-line reason) and the other jobs
go on. Jobs may run in other processes (joblib, submitit), so the outcome of the sweep is read
back from the job folders by the parent process at the end (`hydra_callbacks.SweepSummary`):
a job failed in this invocation when its results.json was written during it and says failed.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from .checkpoint import atomic_write_json
from .errors import EXIT_INTERRUPTED, MlprunError
from .messages import describe_exception
from .progress import fmt_pct
from .results import read_results
from .run import run
from .runs import checkpoint_file

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
    if "submitit" in target:
        cpus = launcher.get("cpus_per_task")
        if cpus:
            return int(cpus)
        return 1 if "LocalLauncher" in target else None
    return None


def best_val_error(results: dict | None):
    return (((results or {}).get("best") or {}).get("val") or {}).get("error")


def record_failure(run_dir: Path, overrides: list[str], message: str) -> None:
    """Make sure results.json says failed with the reason (run() may not have written it)."""
    data = read_results(run_dir) or {
        "epochs_completed": 0,
        "best": None,
        "last": None,
        "overrides": list(overrides),
        "run_dir": str(run_dir.resolve()),
    }
    data["status"] = "failed"
    data["reason"] = message
    data.setdefault("overrides", list(overrides))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "results.json", data)


def _clear_attempt(run_dir: Path) -> None:
    """Remove what a failed (or never checkpointed) attempt left, so a retry starts clean."""
    for name in ("tensorboard", "checkpoints"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("results.json", "learning_curves.png", "confusion_matrix.png"):
        (run_dir / name).unlink(missing_ok=True)


def run_sweep_job(cfg: DictConfig, run_dir: Path, overrides: list[str]):
    """Run one job of a multirun; return its objective (best validation error) or None if it failed."""
    run_dir = Path(run_dir)
    label = f"job {run_dir.name}"
    prior = read_results(run_dir)
    status = (prior or {}).get("status")
    if status == "completed":
        log.info(f"{label} already completed (best val error {fmt_pct(best_val_error(prior))}): skipped")
        return best_val_error(prior)
    last = checkpoint_file(run_dir, "last")
    resume_from = None
    if status in ("interrupted", "running", "cancelled", "lost") and last.is_file():
        resume_from = last
        log.info(f"{label} was {status}: resuming from {last}")
    elif prior is not None or (run_dir / "checkpoints").exists() or (run_dir / "tensorboard").exists():
        log.info(f"{label} was {status or 'started'} before: starting it again from scratch")
        _clear_attempt(run_dir)

    if cfg.trainer.get("threads") is None:
        try:
            threads = launcher_threads(HydraConfig.get().launcher)
        except ValueError:  # no Hydra config (called directly)
            threads = None
        if threads:
            with open_dict(cfg):
                OmegaConf.set_readonly(cfg, False)
                cfg.trainer.threads = threads
            log.info(f"{label}: {threads} torch thread(s)")
    try:
        results = run(cfg, run_dir, resume_from=resume_from, overrides=overrides)
    except SystemExit:
        # submitit's SIGUSR2 handler (SLURM time limit or preemption) has saved the job for a
        # requeue and leaves with SystemExit: the run is interrupted, not failed, and the
        # requeued job resumes it from checkpoints/last.pt.
        _record_requeue(run_dir)
        raise
    except BaseException as exc:
        code, message = describe_exception(exc)
        if isinstance(exc, KeyboardInterrupt) or code == EXIT_INTERRUPTED:
            raise
        log.error(f"{label} ({' '.join(overrides)}) failed: {message}")
        record_failure(run_dir, overrides, message)
        if in_slurm_job():  # the SLURM job's own state says FAILED too (sacct, squeue -t all)
            raise MlprunError(f"{label} failed: {message}") from None
        # None: Optuna marks the trial failed (not a value); other sweepers ignore it.
        return None
    return best_val_error(results)


def in_slurm_job() -> bool:
    """Inside a job SLURM started (not an allocation's login shell: submitit sets its folder)."""
    return bool(os.environ.get("SLURM_JOB_ID")) and bool(os.environ.get("SUBMITIT_FOLDER"))


def _record_requeue(run_dir: Path) -> None:
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
    """An identity of every results.json under `folder` as it is now. Every write of results.json
    replaces the file (atomic rename), so one written later has another stamp."""
    return {str(p.resolve()): _stamp(p) for p in Path(folder).glob("**/results.json")}


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
