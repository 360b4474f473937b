"""Multirun jobs: each job is a normal run; a finished job is skipped and an interrupted one
resumed when the same sweep is run again; a failing job is recorded and the others go on."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger("mlprunner")
_failed_jobs: list[str] = []


def run_sweep_job(cfg: DictConfig, run_dir: Path, overrides: list[str]):
    from .cli import describe_exception
    from .results import read_results
    from .run import run

    prior = read_results(run_dir)
    resume_from = None
    if prior and prior.get("status") == "completed":
        log.info(f"job {run_dir.name} ({' '.join(overrides)}) already completed: skipped")
        return ((prior.get("best") or {}).get("val") or {}).get("error")
    last = run_dir / "checkpoints" / "last.pt"
    if prior and prior.get("status") in ("interrupted", "running") and last.is_file():
        resume_from = last
    try:
        results = run(cfg, run_dir, resume_from=resume_from, overrides=overrides)
    except BaseException as exc:
        code, message = describe_exception(exc)
        log.error(f"job {run_dir.name} ({' '.join(overrides)}) failed: {message}")
        _failed_jobs.append(str(run_dir))
        if isinstance(exc, KeyboardInterrupt) or code == 130:
            raise
        return float("inf")
    return ((results.get("best") or {}).get("val") or {}).get("error")


def sweep_exit_code() -> int:
    return 1 if _failed_jobs else 0
