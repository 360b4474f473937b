"""The run record: one object owns the run folder's lifecycle and its results.json.

    with RunRecord(run_dir, device, overrides, resumed_from=ckpt) as record:
        with record.building(): ...     # a data/checkpoint failure -> failed
        with record.training(): ...     # running -> interrupted / failed
        with record.testing(): ...      # a test-set failure -> failed
    # leaving the block normally -> completed

Entering refuses a new run in a folder that holds one, makes the folder, takes its lock and
carries an earlier process's results forward (on resume); each phase turns the exceptions it
knows into the status and reason it records.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from pathlib import Path

from .checkpoint import load_checkpoint
from .errors import ConfigError, Interrupted, MlprunError, RunInUse, first_line
from .profiling import process_start_time
from .provenance import provenance
from .results import ResultsFile, read_results
from .runs import checkpoint_file, refuse_existing

try:
    import fcntl
except ImportError:  # not POSIX: run folders are not locked
    fcntl = None

_LOCKS: dict = {}
_HOLD = {"depth": 0}  # > 0: lock_run_dir keeps the locks it took earlier (see holding_locks)


@contextlib.contextmanager
def holding_locks():
    """Several runs in this process at once (a stacked group, stacked.py): every run folder
    locked meanwhile stays locked, instead of one run at a time."""
    _HOLD["depth"] += 1
    try:
        yield
    finally:
        _HOLD["depth"] -= 1


def lock_run_dir(run_dir: Path):
    """Hold an advisory lock on the run folder so a second process cannot train into it at once.

    The lock lasts until this process ends (the kernel drops it even on SIGKILL) or starts
    another run.
    """
    if fcntl is None:
        return None
    key = str(run_dir.resolve())
    if key in _LOCKS:  # this process holds it already (resume takes it before run() does)
        return _LOCKS[key]
    for other in list(_LOCKS) if not _HOLD["depth"] else ():  # one run at a time: earlier runs are over
        _LOCKS.pop(other).close()
    fh = open(run_dir / ".mlprun.lock", "a")  # "a": a lost race leaves the file as it was
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise RunInUse(
            f"{run_dir} is in use by another running mlprun process; wait for it to finish or stop it first"
        ) from None
    _LOCKS[key] = fh
    return fh


def in_use_elsewhere(run_dir: Path) -> bool:
    """Whether another process holds the run folder's lock (lock_run_dir) now; this process's
    probe takes nothing (the lock goes with the file it opened)."""
    lock = Path(run_dir) / ".mlprun.lock"
    if fcntl is None or not lock.is_file() or str(Path(run_dir).resolve()) in _LOCKS:
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
    return False


def interrupted_outside_record(run_dir: Path, overrides, exc: BaseException) -> BaseException:
    """A signal that ended a run before its RunRecord began (its folder made, results.json not
    written yet): the folder's results.json says interrupted, and the error names the command
    that continues it. Any other exception, or a folder this process does not hold, is returned
    as it is."""
    run_dir = Path(run_dir)
    held = str(run_dir.resolve()) in _LOCKS if run_dir.is_dir() else False
    if (
        not isinstance(exc, (KeyboardInterrupt, Interrupted))
        or not held
        or "continue with:" in str(exc)  # RunRecord has said it
        or (run_dir / "results.json").exists()
    ):
        return exc
    reason = "interrupted at once by a second signal" if isinstance(exc, KeyboardInterrupt) else str(exc)
    ResultsFile(
        run_dir,
        {"overrides": list(overrides), "run_dir": str(run_dir.resolve())},
    ).update(status="interrupted", reason=reason)
    return Interrupted(f"{reason}; nothing was trained; continue with: {resume_command(run_dir)}")


def resume_command(run_dir: Path) -> str:
    return f"mlprun resume={shlex.quote(str(Path(run_dir).resolve()))}"


def saved_epoch(run_dir: Path):
    """The epoch of the run's checkpoints/last.pt (what a resume continues from), or 0."""
    path = checkpoint_file(run_dir, "last")
    if not path.is_file():
        return 0
    try:
        return int(load_checkpoint(path)["epoch"])
    except MlprunError:
        return "?"


def how_to_continue(run_dir: Path) -> str:
    """'last checkpoint after epoch N; continue with: mlprun resume=...' (no checkpoint yet: the
    resumed run trains from the start)."""
    epoch = saved_epoch(run_dir)
    saved = f"last checkpoint after epoch {epoch}" if epoch else "no checkpoint yet (it trains from the start)"
    return f"{saved}; continue with: {resume_command(run_dir)}"


# What training makes stale (a resume that trains on: RunRecord.epoch_done): the earlier
# process's test and SWA results in results.json and the test's figure scored a model this run has
# since trained on; the end of the run scores it again (eval.test) or leaves none. TensorBoard's
# test tags go the same way (tblog.is_test_tag), MLflow's stay at their earlier step (loggers.MLflow.test).
STALE_AFTER_TRAINING = ("test", "swa")
STALE_FILES_AFTER_TRAINING = ("confusion_matrix.png",)
# what a restart (a run stopped before its first checkpoint, started again in its folder) keeps
# of its first attempt's results.json: where its loggers log, so they go on in the same places
KEPT_ON_RESTART = ("tensorboard", "mlflow")


def drop_stale_results(run_dir: Path, data: dict) -> None:
    """Forget what training makes stale (STALE_AFTER_TRAINING), in `data` and the run folder."""
    for key in STALE_AFTER_TRAINING:
        data.pop(key, None)
    for name in STALE_FILES_AFTER_TRAINING:
        (Path(run_dir) / name).unlink(missing_ok=True)


class RunRecord:
    """results.json of one run (in `data`), kept current from start to completion."""

    def __init__(
        self,
        run_dir: Path,
        device,
        overrides=(),
        resumed_from: dict | None = None,
        started: float | None = None,
        restart: bool = False,
    ):
        self.run_dir = Path(run_dir)
        self.restart = restart  # a run that never checkpointed, started again in its own folder
        self.device = device
        self.overrides = list(overrides)
        self.resumed_from = resumed_from  # the checkpoint a resumed run continues from
        self.started = time.perf_counter() if started is None else started
        self.results: ResultsFile | None = None
        self._startup_logged = False

    @property
    def data(self) -> dict:
        return self.results.data

    def __enter__(self) -> RunRecord:
        ckpt = self.resumed_from
        if ckpt is None and not self.restart:
            # A new run never writes into a run's folder, however it was started (Hydra's RunGuard
            # refuses earlier, before Hydra writes .hydra/; this holds without it too).
            refuse_existing(self.run_dir, hydra_files=False)
        prior = read_results(self.run_dir) if ckpt is not None or self.restart else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock_run_dir(self.run_dir)
        this_process = provenance(self.device)
        self.results = ResultsFile(
            self.run_dir,
            {
                "device": str(self.device),
                "n_params": None,
                "overrides": self.overrides,
                "run_dir": str(self.run_dir.resolve()),
                "provenance": this_process,
            },
        )
        if prior and ckpt is None:  # a restart
            self.data.update({k: prior[k] for k in KEPT_ON_RESTART if k in prior})
        elif prior:
            # what an earlier process ended with is this one's to say (invalid_config: sweep.record_failure)
            stale = ("status", "reason", "run_dir", "invalid_config")
            self.data.update({k: v for k, v in prior.items() if k not in stale})
            self.data["overrides"] = list(prior.get("overrides", []))
        if ckpt is not None:
            self.data["resumed"] = list((prior or {}).get("resumed", [])) + [
                {
                    "from_epoch": int(ckpt["epoch"]),
                    "step": int(ckpt["step"]),
                    "overrides": list(self.overrides),
                    "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "provenance": this_process,  # the run's own "provenance" stays its first process's
                }
            ]
        self.wall_before = float(self.data.get("wall_s") or 0.0)  # earlier processes of this run
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.results.update(status="completed", reason=None, wall_s=self.elapsed())
        elif isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, Interrupted) and self.data.get("status") != "interrupted"
        ):
            # a signal outside training (loading the data, the test evaluation, the plots):
            # recorded as training() records one, with the command that continues the run
            reason = "interrupted at once by a second signal" if isinstance(exc, KeyboardInterrupt) else str(exc)
            self.results.update(status="interrupted", reason=reason, wall_s=self.elapsed())
            raise Interrupted(f"{reason}; {how_to_continue(self.run_dir)}") from None
        if (
            isinstance(exc, Exception)
            and not isinstance(exc, ConfigError)
            and self.data.get("status") not in ("failed", "interrupted")
        ):
            # a crash outside the phases that record their own (plots, a logger's end, a bug of
            # ours): results.json still says failed and why, as the README promises of every run
            # whose folder exists; an invalid config is only reported, as building() does
            reason = str(exc) if isinstance(exc, MlprunError) else f"{type(exc).__name__}: {first_line(exc)}"
            self.results.update(status="failed", reason=reason, wall_s=self.elapsed())
        return False

    def elapsed(self) -> float:
        """Wall time of the run so far, earlier processes of a resumed run included."""
        return self.wall_before + time.perf_counter() - self.started

    # ------------------------------------------------------------------ phases
    @contextlib.contextmanager
    def building(self):
        """Building the pieces: a runtime failure (data, checkpoint) is recorded as failed; an
        invalid config is only reported."""
        try:
            yield
        except ConfigError:
            raise
        except MlprunError as exc:
            self.results.update(status="failed", reason=str(exc))
            raise

    @contextlib.contextmanager
    def training(self):
        """Trainer.fit(): status running; a signal leaves it interrupted (with the command that
        continues it), a divergence or crash failed."""
        self.results.update(status="running", reason=None)
        try:
            yield
        except Interrupted as exc:
            self.results.update(status="interrupted", reason=str(exc), wall_s=self.elapsed())
            raise Interrupted(f"{exc}; {how_to_continue(self.run_dir)}") from None
        except KeyboardInterrupt:
            self.results.update(
                status="interrupted", reason="interrupted at once by a second signal", wall_s=self.elapsed()
            )
            raise Interrupted(f"interrupted at once by a second signal; {how_to_continue(self.run_dir)}") from None
        except MlprunError as exc:  # divergence, a full disk, ...: its message says what and where
            self.results.update(status="failed", reason=str(exc), wall_s=self.elapsed())
            raise
        except Exception as exc:
            self.results.update(
                status="failed", reason=f"{type(exc).__name__}: {first_line(exc)}", wall_s=self.elapsed()
            )
            raise

    @contextlib.contextmanager
    def testing(self):
        """The test-set evaluation after training: training is done and saved, so a failure
        here is recorded as a failed test evaluation."""
        try:
            yield
        except MlprunError as exc:
            self.results.update(status="failed", reason=f"test evaluation: {exc}", wall_s=self.elapsed())
            raise

    # ------------------------------------------------------------------ contents
    def describe(self, n_params: int, dataset: dict) -> None:
        self.data["n_params"] = n_params
        self.data["dataset"] = dataset

    def epoch_done(self, trainer) -> None:
        """Trainer's on_epoch_end: the history so far, and the start-up time once per process."""
        fields = dict(
            status="running",
            wall_s=self.elapsed(),
            **self.results.from_history(list(trainer.state.history), trainer.state.best_epoch),
        )
        if trainer.first_step_at is not None and not self._startup_logged:
            started = process_start_time()  # this process's start -> the end of its first step
            if started is not None:
                fields["startup_s"] = round(trainer.first_step_at - started, 3)
            self._startup_logged = True

        def write() -> None:
            drop_stale_results(self.run_dir, self.data)  # an earlier process's test scored another model
            self.results.update(**fields)

        # after this epoch's checkpoints, so results.json never claims an epoch last.pt lacks
        trainer.after_checkpoint(write)

    def trained(self, state, swa_result: dict | None) -> None:
        """What fit() returned: final best/last blocks, early stopping, the SWA model's result."""
        self.data.update(self.results.from_history(state.history, state.best_epoch))
        self.data["stopped_early"] = state.stopped_early
        if swa_result is not None:
            self.data["swa"] = swa_result
