"""Hydra callbacks: check a run before Hydra writes anything, summarise a sweep at its end."""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .config import preflight, validate
from .errors import EXIT_CONFIG, ConfigError, Interrupted, RunInUse, RunRefused, SweepFailed, SweepStopped
from .record import lock_run_dir
from .report import SEED, ReportError, build_report, collect
from .run import stop_if_signalled, when_signalled
from .runs import refuse_existing, refuse_foreign_files, refuse_foreign_sweep_folder
from .sessions import swept_keys_of
from .sweep import (
    JOBLIB_LAUNCHER,
    clear_marks,
    failed_since,
    keep_multirun_yaml,
    marked_since,
    note_run_made,
    note_sweep_start,
    quiet_failed_trials,
    restore_multirun_yaml,
    results_stamps,
    stop_sweep,
    sweep_stopped_by,
    write_multirun_yaml,
)

log = logging.getLogger("mlprunner")


def job_config(config: DictConfig) -> DictConfig:
    """The task's config without Hydra's own node."""
    return OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])


def register_launchers() -> None:
    """Make mlprun's launchers (hydra/launcher=slurm, hydra/launcher=stacked) and its sweeper
    (hydra/sweeper=mlprun_optuna) known to Hydra before it instantiates them. Hydra finds
    plugins by walking the hydra_plugins package, which misses a package installed in editable
    mode, so they are registered by hand."""
    from hydra_plugins.mlprun_stacked import StackedLauncher  # lazy: it imports mlprunner.cli

    Plugins.instance().register(StackedLauncher)
    try:  # lazy and optional: the submitit plugin comes with the `sweep` extra only
        from hydra_plugins.mlprun_launcher import MlprunSlurmLauncher
    except ImportError:
        return
    Plugins.instance().register(MlprunSlurmLauncher)
    try:  # hydra/sweeper=mlprun_optuna; the Optuna plugin comes with the `sweep` extra too
        from hydra_plugins.mlprun_launcher.optuna_sweeper import MlprunOptunaSweeper
    except ImportError:
        return
    Plugins.instance().register(MlprunOptunaSweeper)


def make_output_folder(folder: Path, key: str) -> None:
    """mkdir -p, with a folder that cannot be made (read-only, under a file, /proc) refused as
    the key that named it (exit 2), not an unexpected OSError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            key, message=f"{key}={folder}: cannot make this folder ({exc.strerror or exc}); choose a writable one"
        ) from None


class RunGuard(Callback):
    """Validate the config and refuse to reuse a run's folder, before the run folder is made."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        # Hydra downgrades an Exception raised here to a warning and makes the run folder anyway,
        # so any refusal leaves as RunRefused (a BaseException) that `mlprun` reports.
        try:
            self._check(config)
            stop_if_signalled("before the run folder was made; nothing was written (run the command again)")
            self._claim(Path(str(config.hydra.run.dir)))
        except Exception as exc:
            raise RunRefused(exc) from exc

    @staticmethod
    def _claim(folder: Path) -> None:
        """Refuse a folder that holds someone's files; make the run folder and take its lock now,
        before Hydra writes .hydra/ into it, so a second process starting in the same folder is
        refused before it writes anything."""
        refuse_foreign_files(folder)
        made = not folder.exists()
        make_output_folder(folder, "hydra.run.dir")
        if made:
            note_run_made(folder)  # a refusal once the data is read removes it (cli)
        try:
            lock_run_dir(folder)
        except RunInUse:
            if made:
                with contextlib.suppress(OSError):
                    (folder / ".mlprun.lock").unlink()
                    folder.rmdir()
            raise

    @staticmethod
    def _check(config: DictConfig) -> None:
        job = job_config(config)
        validate(job)
        refuse_existing(Path(str(config.hydra.run.dir)))
        preflight(job)


def _check_sweep_values(config: DictConfig) -> None:
    """Each list or range of the command line has a value: range(0,0) would make a sweep of no job
    (Hydra launches none and the command 'succeeds'), range(0,2,0) fails in Python's range()."""
    task = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    for override in OverridesParser.create().parse_overrides(task):
        if not override.is_discrete_sweep():
            continue
        typed = override.input_line or f"{override.key_or_group}=..."
        try:
            values = list(override.sweep_string_iterator())
        except ValueError as exc:
            step = "range()'s step must not be 0" if "must not be zero" in str(exc) else str(exc)
            raise ConfigError(override.key_or_group, message=f"{typed}: {step}") from None
        if not values:
            raise ConfigError(
                override.key_or_group,
                message=f"{typed} gives no values, so the sweep would have no job (range(a,b) counts from a up to b-1)",
            )


def _check_sweep_dir(config: DictConfig, swept: list[str]) -> None:
    """hydra.sweep.dir must be one folder for the whole sweep: one that names a swept key
    (`sweeps/x_${optim.lr}`) would split the jobs over several folders, each summary seeing
    only some of them."""
    raw = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("dir"))
    for key in swept:
        if re.search(r"\$\{\s*" + re.escape(key) + r"\s*\}", raw):
            raise ConfigError(
                "hydra.sweep.dir",
                message=(
                    f"hydra.sweep.dir={raw} names the swept key {key}: each job would get a sweep folder of "
                    f"its own; leave {key} out of it (each job's folder inside is named by its values)"
                ),
            )


class SweepSummary(Callback):
    """In the parent process of a multirun: make the sweep folder first (Optuna keeps its sqlite
    study there), and at the end read every job's results.json back (jobs may have run in other
    processes), write summary.csv/summary.md/plots, print the table, and tell `mlprun` (SweepFailed)
    which jobs of this invocation did not complete (failed, interrupted, cancelled, lost, left
    running, in use by another process) so it exits non-zero."""

    def __init__(self):
        self.before: dict = {}  # results.json stamps when the sweep started (sweep.results_stamps)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        register_launchers()
        swept = swept_keys_of(config)
        try:
            _check_sweep_values(config)
            _check_sweep_dir(config, swept)
            folder = Path(str(config.hydra.sweep.dir))
            stop_if_signalled("before the sweep started; nothing was written")
            refuse_foreign_sweep_folder(folder)
            note_sweep_start(folder)
            make_output_folder(folder, "hydra.sweep.dir")
        except Exception as exc:
            raise RunRefused(exc) from exc
        self.before = results_stamps(folder)
        if config.hydra.launcher.get("_target_") == JOBLIB_LAUNCHER:
            # a SIGTERM to mlprun alone does not reach the workers: no queued job starts after it
            when_signalled(lambda name: stop_sweep(folder, name))
        keep_multirun_yaml(folder)  # the sweeper writes its own next; the first sweep's stays
        write_multirun_yaml(config, folder)  # a sweeper that writes none (Optuna's)
        quiet_failed_trials()
        # seeds of one configuration, or one configuration per dataset, may all be tested
        varied = [k for k in swept if k != SEED and not k.startswith("dataset")]
        if varied and OmegaConf.select(config, "eval.test", default=False):
            log.warning(
                f"eval.test=true while sweeping {', '.join(varied)}: choose by validation error (the "
                "table's order); the lowest test error of several configurations is an optimistic estimate"
            )

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        folder = Path(str(config.hydra.sweep.dir))
        restore_multirun_yaml(folder)
        # a signal stopped this sweep (joblib's workers; mlprun's own process: SweepStopped already)
        stopped = sweep_stopped_by(folder)
        with contextlib.suppress(OSError):  # submitit_local leaves an empty folder named `%j`
            (folder / ".submitit" / "%j").rmdir()
        marks = marked_since(folder, self.before)  # in use / not collected (SLURM stopped answering)
        uncollected = {d: reason for d, (status, reason) in marks.items() if status == "not collected"}
        try:
            jobs, keys = collect(folder)
        except ReportError as exc:
            log.warning(f"no sweep summary: {exc}")
            if uncollected:
                log.error(f"{len(uncollected)} job(s) not collected in this sweep")
                raise SweepFailed(list(uncollected)) from None
            return
        failed = failed_since(jobs, self.before)
        for job in jobs:  # whatever its results.json says now, the sweep did not see it end
            if str(job["dir"].resolve()) in uncollected:
                job["status"], job["reason"] = "not collected", uncollected[str(job["dir"].resolve())]
        failed += [d for d in uncollected if d not in failed]
        # in use, refused (a foreign checkpoint): the job left its folder as it was
        skipped = {d: (status, reason) for d, (status, reason) in marks.items() if status != "not collected"}
        for job in jobs:  # the job skipped itself; results.json is the older process's
            if str(job["dir"].resolve()) in skipped:
                if skipped[str(job["dir"].resolve())][0] != "not started":  # its results.json still holds
                    job["status"], job["reason"] = skipped[str(job["dir"].resolve())]
                if str(job["dir"].resolve()) not in failed:
                    failed.append(str(job["dir"].resolve()))
        failed += [d for d, (status, _) in marks.items() if status == "not started" and d not in failed]
        clear_marks(folder, self.before)
        try:
            build_report(folder, collected=(jobs, keys))
        except Exception as exc:  # the table is a report: never lose the jobs' outcome over it
            log.error(f"could not write the sweep summary in {folder}: {type(exc).__name__}: {exc}")
        if failed:
            counts: dict[str, int] = {}
            for job in jobs:
                if str(job["dir"].resolve()) in failed:
                    counts[job["status"]] = counts.get(job["status"], 0) + 1
            listed = {str(j["dir"].resolve()) for j in jobs}
            for status, _ in (v for d, v in marks.items() if d not in listed):  # no folder the report could list
                counts[status] = counts.get(status, 0) + 1
            what = ", ".join(f"{n} job(s) {status}" for status, n in sorted(counts.items()))
            if stopped:
                raise SweepStopped(Interrupted(f"{stopped}: {what}"), str(folder), summarised=True)  # exit 130
            refused = [j for j in jobs if str(j["dir"].resolve()) in failed and j.get("invalid_config")]
            if refused and len(refused) == len(failed):  # rerunning refuses them again: exit 2
                reasons = sorted({str(j.get("reason")) for j in refused})
                why = reasons[0] if len(reasons) == 1 else f"see {folder / 'summary.md'}"
                log.error(f"{len(refused)} job(s) refused for invalid values: {why}; fix them in the command")
                raise SweepFailed(failed, EXIT_CONFIG)
            # a sweep's jobs continue by rerunning the sweep into the same folder (completed ones
            # are skipped), not one `resume=` per job
            log.error(
                f"{what} in this sweep; see {folder / 'summary.md'}; rerun this sweep command to "
                "continue (completed jobs are skipped)"
            )
            raise SweepFailed(failed)  # mlprun exits 1
