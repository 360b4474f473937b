"""Logging for a run that continues without Hydra's job machinery (`resume=`).

A fresh run's logging is Hydra's job logging, configured by the packaged
configs/hydra/job_logging/mlprun.yaml. A resumed run applies that same file with
`logging.config.dictConfig`, with Hydra's two interpolations (the run folder and the job name)
filled in, so both write the same console lines and the same `<run dir>/mlprun.log`.
"""

from __future__ import annotations

import logging
import logging.config
import re
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf

JOB_LOGGING = "hydra/job_logging/mlprun.yaml"
JOB_NAME = "mlprun"  # hydra.job.name in configs/config.yaml


def configure_logging(run_dir: Path) -> None:
    """Apply mlprun's job-logging config for `run_dir`, unless logging is set up already."""
    if logging.getLogger("mlprunner").handlers:  # Hydra (or an earlier call) did it
        return
    node = OmegaConf.create(resources.files("mlprunner.configs").joinpath(JOB_LOGGING).read_text())
    hydra = {"runtime": {"output_dir": str(Path(run_dir))}, "job": {"name": JOB_NAME}}
    root = OmegaConf.create({"hydra": hydra, "logging": node})
    logging.config.dictConfig(OmegaConf.to_container(root.logging, resolve=True))


class ShortJoblibLine(logging.Filter):
    """Hydra's joblib launcher announces each batch with every joblib setting in one line of ~190
    columns ("Joblib.Parallel(n_jobs=2,backend=loky,...,mmap_mode=r) is launching 2 jobs"): the
    console's Hydra logging (configs/hydra/hydra_logging/mlprun.yaml) says what matters in one
    that fits 80 columns."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith("Joblib.Parallel("):
            workers = re.search(r"n_jobs=(-?\d+)", text)
            jobs = re.search(r"is launching (\d+) jobs", text)
            if workers and jobs:
                record.msg = f"joblib: launching {jobs.group(1)} jobs on n_jobs={workers.group(1)} worker processes"
                record.args = ()
        return True
