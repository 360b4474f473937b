"""hydra/launcher=stacked: the compatible jobs of a sweep trained together as one batched model.

Hydra instantiates launchers only from the `hydra_plugins` package, so the class lives here;
what a group does is in `mlprunner.stacked` (see there). Its own package, not the SLURM
launcher's, since that one needs the optional submitit plugin.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import OmegaConf, open_dict

from mlprunner.config import launch_relative_paths
from mlprunner.errors import Interrupted, SweepStopped
from mlprunner.record import holding_locks
from mlprunner.stacked import Job, check_max_models, log_alone, plan_groups, run_group
from mlprunner.sweep import hydra_files, prepare_sweep_job, run_sweep_job

log = logging.getLogger("mlprunner")


class StackedLauncher(BasicLauncher):
    """Hydra's basic launcher (one process, jobs in sweep order), except that compatible jobs
    (mlprunner.stacked.group_key) train together, up to max_models per group. A group of one
    is the basic launcher's job exactly; on the CPU with cpu=sequential every job is."""

    def __init__(self, max_models: int = 16, cpu: str = "stacked") -> None:
        super().__init__()
        self.max_models = check_max_models(max_models)
        self.cpu = str(cpu)

    def launch(self, job_overrides, initial_job_idx):
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides):
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = initial_job_idx + idx
            configs.append(sweep_config)
        jobs_cfg = [OmegaConf.masked_copy(c, [k for k in c.keys() if k != "hydra"]) for c in configs]
        max_models = self.max_models
        if self.cpu == "sequential" and str(jobs_cfg[0].trainer.device) in ("cpu", "auto") and not _has_accelerator():
            log.info("stacked launcher: on the CPU the jobs train one at a time (hydra.launcher.cpu=sequential)")
            max_models = 1
        groups = plan_groups(jobs_cfg, max_models)
        log.info(
            f"Launching {len(job_overrides)} jobs locally in {len(groups)} group(s) of up to {max_models} "
            f"(sizes {', '.join(str(len(g)) for g in groups)})"
        )
        if max_models > 1:
            log_alone(jobs_cfg)
        returns: list[JobReturn | None] = [None] * len(configs)
        for group in groups:
            for i in group:
                log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}")
            try:
                if len(group) == 1:
                    i = group[0]
                    returns[i] = self._run_job(configs[i], self.task_function)
                    ret = returns[i]
                    if ret.status == JobStatus.FAILED and isinstance(
                        ret._return_value, (Interrupted, KeyboardInterrupt)
                    ):
                        raise ret._return_value
                else:
                    with holding_locks():
                        self._run_group([configs[i] for i in group], [returns, group])
            except (Interrupted, KeyboardInterrupt) as exc:
                # a signal stops the sweep, not only this group: the rest of it waits for the rerun
                # the command that continues the sweep is said once, by mlprun (cli.sweep_stopped)
                reason = str(exc).split("; continue with:")[0].split("; rerunning this sweep command")[0]
                reason = reason or "interrupted"
                raise SweepStopped(Interrupted(reason), str(self.config.hydra.sweep.dir)) from None
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _run_job(self, sweep_config, task_function) -> JobReturn:
        return _run_job(self.hydra_context, sweep_config, task_function)

    def _run_group(self, configs, where) -> None:
        run_group_jobs(self.hydra_context, configs, where)


def _run_job(hydra_context, sweep_config, task_function) -> JobReturn:
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def run_group_jobs(hydra_context, configs, where) -> None:
    """One stacked group, in whichever process trains it (this launcher's, or a SLURM job of
    hydra/launcher=slurm with max_models > 1): Hydra's run_job for each job (its folder, .hydra/,
    its log file) with a task that only prepares it (sweep.prepare_sweep_job: skip, resume or
    start afresh), then the group's training. where = (returns, indices): each job's JobReturn
    goes to returns[indices[k]]."""
    returns, indices = where
    prepared: list[tuple[int, Job]] = []
    same: list[tuple[int, int]] = []  # (job, the prepared job whose folder it names)
    for k, sweep_config in enumerate(configs):
        holder = {}

        def prepare(cfg, holder=holder):
            hc = HydraConfig.get()
            run_dir = Path(hc.runtime.output_dir)
            saved = hydra_files(cfg)  # as composed, before any change (cli.hydra_app does the same)
            if hc.job.chdir:
                launch_relative_paths(cfg, Path(hc.runtime.cwd))
            train, value, ckpt = prepare_sweep_job(run_dir, saved)
            if not train:
                return value  # the objective of a completed job, or None
            holder["job"] = Job(cfg, run_dir, list(hc.overrides.task), value, checkpoint=ckpt)
            return None

        ret = _run_job(hydra_context, sweep_config, prepare)
        returns[indices[k]] = ret
        if ret.status == JobStatus.FAILED and isinstance(ret._return_value, (Interrupted, KeyboardInterrupt)):
            raise ret._return_value  # a signal before the group trained: the sweep stops
        if holder.get("job") is not None:
            job = holder["job"]
            first = next((i for i, other in prepared if other.run_dir == job.run_dir), None)
            if first is not None:  # overrides that differ only in keys left out of folder names
                log.warning(
                    f"#{sweep_config.hydra.job.num} names the folder of #{configs[indices.index(first)].hydra.job.num} "
                    f"({job.run_dir.name}): one run per folder, it is trained once"
                )
                same.append((indices[k], first))
                continue
            job.hydra = sweep_config
            prepared.append((indices[k], job))
    if not prepared:
        return

    def solo(job: Job):
        HydraConfig.instance().set_config(job.hydra)
        return run_sweep_job(job.cfg, job.run_dir, job.overrides)

    if len(prepared) == 1:
        values = [solo(prepared[0][1])]
    else:
        values = run_group([job for _, job in prepared], solo)
    for (i, _job), value in zip(prepared, values):
        returns[i].return_value = value
    for i, first in same:
        returns[i].return_value = returns[first].return_value


def _has_accelerator() -> bool:
    import torch  # lazy: only asked when the launcher runs on the CPU

    return torch.cuda.is_available() or torch.backends.mps.is_available()
