"""hydra/sweeper=mlprun_optuna: Hydra's Optuna sweeper, with a study in which no trial completed
ending like any sweep whose jobs all failed, and trials a signal stopped continued with the
study. (Hydra instantiates sweepers from the `hydra_plugins` package only, hence here.)"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper

from mlprunner.errors import ConfigError, Interrupted, SweepStopped
from mlprunner.messages import missing_extra_base
from mlprunner.record import in_use_elsewhere
from mlprunner.sweep import forget_launch_marks, no_trial_completed, sweep_stopped_by

try:
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError as missing:  # without the sweep extra: hydra/sweeper=mlprun_optuna names it
    OptunaSweeperImpl, OptunaSweeper = missing_extra_base(object, missing), missing_extra_base(Sweeper, missing)

log = logging.getLogger("mlprunner")


class _StopAwareLauncher:
    """The sweeper's launcher, ending the study once a signal stopped its sweep (joblib's workers
    return then: the running trials interrupted, the queued ones not started): raised before the
    plugin tells the batch's trials, so they stay RUNNING and the study's next launch continues
    them (_retry_interrupted_trials) instead of the plugin telling them FAIL and asking for more."""

    def __init__(self, launcher, sweep_dir: Path):
        self.launcher, self.sweep_dir = launcher, sweep_dir

    def launch(self, job_overrides, initial_job_idx):
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        stopped = sweep_stopped_by(self.sweep_dir)
        if stopped:
            forget_launch_marks(self.sweep_dir)  # no summary reads them: the study is left here
            raise SweepStopped(Interrupted(f"the Optuna study was {stopped}"), str(self.sweep_dir))
        return returns

    def __getattr__(self, name):
        return getattr(self.launcher, name)


class MlprunOptunaSweeperImpl(OptunaSweeperImpl):
    def sweep(self, arguments: list[str]) -> None:
        self._check_objective(arguments)
        self._retry_interrupted_trials()
        self.launcher = _StopAwareLauncher(self.launcher, Path(str(self.config.hydra.sweep.dir)))
        # The plugin asks the study for its best trial after the last batch; with every trial
        # failed that raises, so Hydra would skip the callbacks' on_multirun_end (mlprun's
        # summary) and mlprun would exit on a ValueError instead of "N job(s) failed". Every
        # trial is already told to the study as FAIL and has its results.json; only the best
        # trial (optimization_results.yaml) is missing, and there is none.
        asked_before = self._trial_count()
        try:
            super().sweep(arguments)
        except (SweepStopped, Interrupted):
            raise  # the asked trials stay RUNNING: the study's next launch continues them
        except ValueError as exc:
            if not no_trial_completed(exc) or self._completed_trials():
                self._fail_running_trials(since=asked_before)
                raise
            log.warning("no trial of the Optuna study has completed: no best parameters (no optimization_results.yaml)")
        except Exception:
            # e.g. a key no configuration has (optim.lrr=...) ends the sweep in its first trial,
            # before it trains: the trial is told FAIL, so continuing the study with the corrected
            # command does not take it for a trial a signal stopped and run its parameters again
            self._fail_running_trials(since=asked_before)
            raise

    def _check_objective(self, arguments: list[str]) -> None:
        """The study minimises each trial's best validation error: without a validation split
        (dataset.val_fraction=0 or dataset.n_val=0) no trial has one, and every trial would train
        for nothing. Refused before the first trial (the test set is never the objective)."""
        parsed = OverridesParser.create().parse_overrides(arguments)
        swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
        swept |= {str(k) for k in (self.params or {})} | {str(k) for k in (self.search_space or {})}
        ds = self.config.dataset
        for key in ("val_fraction", "n_val"):
            if ds.get(key) == 0 and f"dataset.{key}" not in swept:
                raise ConfigError(
                    f"dataset.{key}",
                    0,
                    "more than 0 with hydra/sweeper=mlprun_optuna: the study minimises the validation error",
                )

    def _retry_interrupted_trials(self) -> None:
        """A trial a signal stopped (Ctrl-C: mlprun left the study with the trial asked but never
        told) stays RUNNING in the kept study. When the same command continues the study and no
        process trains in the sweep folder, each such trial is told FAIL and its parameters are
        enqueued: the first new trial is the same job, which resumes from its checkpoints/last.pt."""
        study = self._study()
        if study is None:
            return
        stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not stale:
            return
        folder = Path(str(self.config.hydra.sweep.dir))
        if any(in_use_elsewhere(lock.parent) for lock in folder.glob("**/.mlprun.lock")):
            log.warning(
                f"{len(stale)} trial(s) still running in {folder}: another launch trains there; left as they are"
            )
            return
        for trial in stale:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            with warnings.catch_warnings():  # enqueue_trial is "experimental" in Optuna 2.x, stable in 3.x
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.enqueue_trial(trial.params)
            log.info(
                f"trial {trial.number} was stopped before it ended: it runs again as a new trial, from its checkpoint"
            )

    def _study(self) -> optuna.Study | None:
        """The study kept in storage; None for an in-memory study or none made yet."""
        if self.storage is None:
            return None
        try:
            return optuna.load_study(study_name=self.study_name, storage=self.storage)
        except Exception:  # no study yet: a first launch
            return None

    def _trial_count(self) -> int:
        study = self._study()
        return len(study.get_trials(deepcopy=False)) if study is not None else 0

    def _fail_running_trials(self, since: int) -> None:
        """Tell FAIL the trials this launch asked (numbers from `since`) that are still RUNNING."""
        study = self._study()
        if study is None:
            return
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.number >= since:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

    def _completed_trials(self) -> int:
        """Completed trials in the study kept in storage; 0 for an in-memory study (the
        message said there is none)."""
        study = self._study()
        if study is None:  # cannot tell: the message is Optuna's own for this case
            return 0
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


class MlprunOptunaSweeper(OptunaSweeper):
    """configs/hydra/sweeper/mlprun_optuna.yaml's _target_."""

    def __init__(self, *args, **kwargs) -> None:
        # the plugin's __init__ only builds its Impl from the same arguments
        self.sweeper = MlprunOptunaSweeperImpl(*args, **kwargs)
