"""hydra/launcher=slurm: Hydra's submitit SLURM launcher, with mlprun's submission and waiting.

Hydra instantiates launchers only from the `hydra_plugins` package, so the class lives here;
what it does is in `mlprunner.cluster` (see there).
"""

from hydra.core.utils import JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

from mlprunner.cluster import claimed_in_job, launch_on_slurm


class MlprunSlurmLauncher(SlurmLauncher):
    """submitit_slurm, except launch(): completed combinations are not submitted, invalid ones
    are reported without a job, the job ids and logs are printed, and the sweep waits on SLURM's
    own job states (requeues included) instead of submitit's result files."""

    def __init__(
        self,
        poll_s: float = 2.0,
        pending_warn_s: float = 60.0,
        cancel_on_interrupt: bool = False,
        unreachable_s: float = 300.0,
        **params,
    ):
        super().__init__(**params)
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
        job FAILED."""
        if not claimed_in_job(self, sweep_overrides, job_num, singleton_state):
            return None
        ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        if ret.status == JobStatus.FAILED:
            raise ret._return_value
        return ret

    def launch(self, job_overrides, initial_job_idx):
        return launch_on_slurm(self, job_overrides, initial_job_idx, **self.watch)
