"""hydra/launcher=slurm: Hydra's submitit SLURM launcher, with mlprun's submission and waiting.

Hydra instantiates launchers only from the `hydra_plugins` package, so the class lives here;
what it does is in `mlprunner.cluster` (see there). With max_models > 1 (hydra/launcher=slurm_stacked)
a SLURM job trains a stacked group, as hydra/launcher=stacked does (hydra_plugins.mlprun_stacked).
"""

from hydra.core.utils import JobStatus
from hydra.plugins.launcher import Launcher

from hydra_plugins.mlprun_stacked import run_group_jobs
from mlprunner.cluster import (
    claimed_group_in_job,
    claimed_in_job,
    failed_members,
    launch_on_slurm,
    requeued_group,
    timed_out_group,
)
from mlprunner.errors import MlprunError
from mlprunner.messages import missing_extra_base
from mlprunner.record import holding_locks
from mlprunner.stacked import check_max_models
from mlprunner.sweep import out_of_requeues

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError as missing:  # without the sweep extra: hydra/launcher=slurm names it
    SlurmLauncher = missing_extra_base(Launcher, missing)


class MlprunSlurmLauncher(SlurmLauncher):
    """submitit_slurm, except launch(): completed combinations are not submitted, invalid ones
    are reported without a job, the job ids and logs are printed, and the sweep waits on SLURM's
    own job states (requeues included) instead of submitit's result files. max_models > 1: the
    compatible combinations are grouped (stacked.plan_groups) and each group is one SLURM job."""

    def __init__(
        self,
        poll_s: float = 2.0,
        pending_warn_s: float = 60.0,
        cancel_on_interrupt: bool = False,
        unreachable_s: float = 300.0,
        max_models: int = 1,
        **params,
    ):
        super().__init__(**params)
        self.max_models = check_max_models(max_models)
        self.watch = {
            "poll_s": poll_s,
            "pending_warn_s": pending_warn_s,
            "cancel_on_interrupt": cancel_on_interrupt,
            "unreachable_s": unreachable_s,
        }

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state):
        """In the SLURM job: a run folder another running process holds is left untouched (the
        job ends at once, reported "in use"); Hydra's run_job keeps a job's exception in its
        JobReturn: raise it, so a failed run (recorded in its results.json) also ends its SLURM
        job FAILED. A stacked group (job_num a list: cluster._task_args) trains in _call_group."""
        if isinstance(job_num, (list, tuple)):
            return self._call_group(sweep_overrides, list(job_num), singleton_state)
        if not claimed_in_job(self, sweep_overrides, job_num, singleton_state):
            return None
        ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        if ret.status == JobStatus.FAILED:
            raise ret._return_value
        return ret

    def _call_group(self, group_overrides, job_nums, singleton_state):
        """One SLURM job for a stacked group: each member's folder lock (a member in use is left
        untouched), then the group trains as hydra/launcher=stacked trains it; a failed member
        (recorded in its results.json, the others go on) ends the SLURM job FAILED. Requeued
        (SIGUSR2: submitit's checkpoint() resubmits these same arguments), every unfinished
        member resumes from its own checkpoints/last.pt."""
        import submitit  # lazy: a heavy import, only in the SLURM job

        with holding_locks():  # every member's lock stays held while the group trains
            configs = claimed_group_in_job(
                self, group_overrides, job_nums, singleton_state, str(submitit.JobEnvironment().job_id)
            )
            returns = [None] * len(configs)
            try:
                run_group_jobs(self.hydra_context, configs, (returns, list(range(len(configs)))))
            except SystemExit:
                requeued_group(configs)
                raise
            except RuntimeError as exc:
                if out_of_requeues(exc):  # the time limit with no requeue left: interrupted, not failed
                    timed_out_group(configs)
                raise
        failed = failed_members(configs)
        if failed:
            raise MlprunError(f"{len(failed)} of {len(configs)} job(s) of the group failed: {'; '.join(failed)}")
        return returns

    def launch(self, job_overrides, initial_job_idx):
        return launch_on_slurm(self, job_overrides, initial_job_idx, **self.watch)
