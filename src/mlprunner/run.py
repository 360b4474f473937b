"""One run end to end: validate -> build the pieces -> Trainer.fit() -> test -> report.

The run folder's lifecycle (results.json's status, the lock, wall time) is the RunRecord's
(record.py); the pieces come from build.py. Each step is a plain function so tests can call any
of them alone; `run()` chains them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .build import Pieces, build
from .checkpoint import load_checkpoint, restore_rng
from .config import check_memory, validate
from .data import Data
from .device import resolve_device, seed_everything
from .errors import CheckpointError, Interrupted, LoggerIncomplete, first_line
from .evaluate import embed, evaluate_test, load_evaluated
from .limits import limit_data, overfitting
from .loggers import Loggers, RunInfo, make_loggers, with_logger
from .models import config_title, count_parameters, min_train_batch, summary_rows
from .plots import learning_curves
from .progress import Progress, erase_bars, prefixed_lines
from .record import RunRecord
from .results import job_line, print_closing, print_summary
from .sessions import job_prefix
from .train import StopFlag, Trainer

log = logging.getLogger("mlprunner")


def log_model_summary(model: torch.nn.Module, data: Data, outputs: int, prefix: str = "") -> None:
    """The model's layers, in 79 columns with the job's prefix (a job beside others) in front."""
    plural = "s" * (outputs != 1)
    lines = [f"model: {data.num_features} input{'s' * (data.num_features != 1)} -> {outputs} output{plural}"]
    width = max(60 - len(prefix), 24)  # the layer column (BatchNorm1d's repr: 94 characters)
    for name, layer, n in summary_rows(model):
        layer = layer if len(layer) <= width else layer[: width - 1] + "…"
        lines.append(f"  {name:>4}  {layer:<{width}} {n:>10,}")
    lines.append(f"  total parameters: {count_parameters(model):,}")
    log.info("\n".join(lines))


@dataclass
class _Signals:
    """First SIGINT/SIGTERM: stop after the current step. Second: leave at once."""

    stop: StopFlag
    when: str = "after this step"
    # called with the signal's name on the first signal (a sweep's parent tells its workers)
    listeners: list = dataclasses.field(default_factory=list)

    def install(self):
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.stop.signals += 1
        if self.stop.signals > 1:
            self.restore()  # a third signal gets Python's default behaviour
            raise KeyboardInterrupt
        if self.stop.requested:  # already stopping (request_stop): this signal is the first
            return
        self.stop.requested = True
        self.stop.signal_name = signal.Signals(signum).name
        erase_bars()  # the warning on a line of its own, not glued to the epoch's bar
        log.warning(f"{self.stop.signal_name} received: stopping {self.when} (press Ctrl-C again to quit at once)")
        for listener in self.listeners:
            listener(self.stop.signal_name)

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


# A SIGINT/SIGTERM outside training (start-up: composing the config, making the run folder,
# loading the data; after training: the test evaluation, the plots): noted here from the start of
# the process (install_startup_signals), acted on at the next point where stopping leaves a clean
# state (stop_if_signalled).
STARTUP = StopFlag()
STARTUP_LISTENERS: list = []  # when_signalled's
_INSTALLED_IN: int | None = None  # the process whose STARTUP handlers are installed
_TRAINING: list[StopFlag] = []  # the stop flag of the fit() running now (request_stop)


def when_signalled(listener) -> None:
    """Call `listener(signal name)` when STARTUP's handler notes a signal (install_startup_signals);
    it replaces an earlier one (that sweep of this process is over)."""
    STARTUP_LISTENERS[:] = [listener]


def install_startup_signals(early: list[str] | None = None) -> None:
    """`mlprun`'s first act: a SIGINT or SIGTERM from now on stops the run before it trains
    (no folder, or a results.json that says interrupted, with the command that continues it)
    instead of killing it silently (SIGTERM) or with a traceback (SIGINT); a second one leaves at
    once. fit() installs its own handlers while training and puts these back after.
    early: the names of signals noted before (while torch was imported, see __main__)."""
    global _INSTALLED_IN
    _Signals(STARTUP, when="as soon as it is safe", listeners=STARTUP_LISTENERS).install()
    _INSTALLED_IN = os.getpid()
    if early:
        STARTUP.requested, STARTUP.signal_name, STARTUP.signals = True, early[0], 1


def request_stop(signal_name: str, why: str) -> None:
    """What a first SIGINT/SIGTERM does, asked from another thread (a sweep's worker told that
    its sweep was stopped): the running fit() stops after its step, a run starting up before it
    trains."""
    flag = _TRAINING[-1] if _TRAINING else STARTUP
    if not flag.requested:
        flag.requested, flag.signal_name = True, signal_name
        erase_bars()
        log.warning(f"{why}: stopping as soon as it is safe")


def install_worker_signals() -> None:
    """install_startup_signals in a sweep's worker process (joblib's), once: a Ctrl-C that reaches
    it between two jobs is noted instead of killing the worker (the sweep would lose it and
    stop with joblib's error, without its summary)."""
    if _INSTALLED_IN != os.getpid():
        install_startup_signals()


def stop_if_signalled(what: str) -> None:
    """Interrupted (exit 130) if a signal came outside training; `what`: where it stops and what
    was written."""
    if STARTUP.requested:
        raise Interrupted(f"stopped by {STARTUP.signal_name or 'a signal'} {what}")


def set_up_process(trainer_cfg: DictConfig) -> torch.device:
    """The device, torch's thread count and every random generator's seed."""
    device = resolve_device(trainer_cfg.device)
    if trainer_cfg.get("threads"):
        torch.set_num_threads(int(trainer_cfg.threads))
    seed_everything(int(trainer_cfg.seed), bool(trainer_cfg.deterministic))
    return device


def restore(trainer: Trainer, ckpt: dict, path: Path) -> None:
    """Continue from a checkpoint: weights, optimizer, scheduler, counters and RNG state. The
    caller has said which checkpoint, once (the console and mlprun.log)."""
    try:
        trainer.load_state(ckpt)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model/optimizer "
            f"(it is from a different model): "
            f"{first_line(exc, 200)}"
        ) from None
    restore_rng(ckpt["rng"])


def fit(trainer: Trainer, stop: StopFlag, progress: Progress):
    """Trainer.fit() with SIGINT/SIGTERM setting `stop` (the trainer's): stop after this step."""
    signals = _Signals(stop).install()
    _TRAINING.append(stop)
    try:
        stop_if_signalled("during start-up, before training")  # a signal before these handlers
        state = trainer.fit()
        if stop.requested:  # during the last epoch's validation or checkpoint: training is done and
            # saved, and the run stops before its test evaluation (stop_if_signalled); a next signal is the second
            STARTUP.requested, STARTUP.signal_name = True, stop.signal_name
            STARTUP.signals = max(STARTUP.signals, stop.signals)
        return state
    finally:
        _TRAINING.remove(stop)
        signals.restore()
        progress.close()


def test(cfg: DictConfig, run_dir: Path, trainer: Trainer, loggers: Loggers) -> dict:
    """The test-set metrics (TensorBoard's figures and scalars are written by evaluate_test)."""
    metrics = evaluate_test(cfg, run_dir, trainer, loggers.tensorboard)
    loggers.test(trainer.state.epoch, metrics)  # step: the epochs trained, as TensorBoard's test scalars
    return metrics


def make_trainer(cls, cfg, run_dir, pieces, device, record, loggers, progress, stop):
    """A Trainer (or stacked.Member) over the built pieces; each finished epoch goes to `record`."""
    return cls(
        cfg.trainer,
        run_dir,
        pieces.data,
        pieces.model,
        pieces.loss,
        pieces.optimizer,
        pieces.scheduler,
        pieces.interval,
        device,
        logger=loggers,
        progress=progress,
        stop=stop,
        augment=pieces.augment,
        on_epoch_end=record.epoch_done,
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def test_and_plot(cfg: DictConfig, run_dir: Path, trainer: Trainer, record: RunRecord, loggers: Loggers) -> None:
    """After training (a solo run's or a stacked group member's): the test evaluation when
    eval.test, into results.json, and learning_curves.png."""
    if cfg.get("eval") is not None and cfg.eval.test:
        with record.testing():
            record.data["test"] = test(cfg, run_dir, trainer, loggers)
    elif cfg.trainer.tensorboard.get("embedding") and trainer.data.val is not None and loggers.tensorboard:
        # the test set stays untouched: the Projector shows validation samples of the evaluated model
        try:
            load_evaluated(cfg, run_dir, trainer, purpose="Projector")
        except CheckpointError as exc:  # a TensorBoard extra never fails a finished run
            log.warning(f"no TensorBoard embedding: {first_line(exc)}")
        else:
            embed(cfg, trainer, trainer.data.val, "val", loggers.tensorboard, trainer.state.epoch)
    learning_curves(
        trainer.state.history,
        run_dir / "learning_curves.png",
        title=f"{cfg.dataset.name} {config_title(cfg.model)}",
        best_epoch=trainer.state.best_epoch,
    )


def limited(cfg: DictConfig, pieces: Pieces) -> Pieces:
    """The pieces with the data cut to trainer.limit_*_batches / overfit_batches (debug presets);
    overfitting trains without augmentation."""
    data = limit_data(pieces.data, cfg.trainer)
    if data is pieces.data:
        return pieces
    log.info(f"debug: training on {len(data.train)} samples per epoch (trainer.limit_*/overfit_batches)")
    return dataclasses.replace(pieces, data=data, augment=None if overfitting(cfg.trainer) else pieces.augment)


def describe(
    record: RunRecord, cfg: DictConfig, pieces: Pieces, run_dir: Path, device: torch.device, prefix: str = ""
) -> None:
    """The run's size and data in results.json, and the same in the log (prefix: the job's, a job
    beside others)."""
    data, model = pieces.data, pieces.model
    n_val = len(data.val) if data.val is not None else 0
    record.describe(count_parameters(model), {"name": cfg.dataset.name, "n_train": len(data.train), "n_val": n_val})
    log.info(f"run directory: {run_dir}")
    log.info(f"data: {data.describe()}; device: {device}")
    log_model_summary(model, data, pieces.loss.out_features, prefix)  # build_model checked the model gives these


def run(
    cfg: DictConfig,
    run_dir: Path,
    resume_from: Path | None = None,
    overrides=(),
    checkpoint: dict | None = None,
    restart: bool = False,
) -> dict:
    """Train (or continue) the run described by `cfg` in `run_dir`; return results.json's dict.

    resume_from: the checkpoint to continue from; `checkpoint`, its contents when the caller has
    read it already; restart: start a run that never checkpointed again in its own folder
    (otherwise a new run refuses a folder that holds a run).
    """
    # a job beside others (joblib): its lines interleave with theirs, so each starts with its name
    with prefixed_lines(job_prefix(run_dir, overrides)):
        return _run(cfg, run_dir, resume_from, overrides, checkpoint, restart)


def _run(cfg, run_dir, resume_from, overrides, checkpoint, restart) -> dict:
    validate(with_logger(cfg))
    check_memory(cfg, resolve_device(cfg.trainer.device))  # before anything is allocated or written
    started = time.perf_counter()
    run_dir = Path(run_dir)
    device = set_up_process(cfg.trainer)
    ckpt = checkpoint if checkpoint is not None or resume_from is None else load_checkpoint(resume_from)
    loggers, info = Loggers(), None
    try:
        with RunRecord(run_dir, device, overrides, resumed_from=ckpt, started=started, restart=restart) as record:
            log.info(f"loading dataset={cfg.dataset.name} and building the model ...")
            with record.building():
                pieces = limited(cfg, build(cfg, device))
            prefix = job_prefix(run_dir, overrides)  # a job beside others (joblib): its lines interleave
            describe(record, cfg, pieces, run_dir, device, prefix)
            data = pieces.data

            batch_size = int(cfg.trainer.batch_size)
            # a job beside others prints lines: live bars of several processes on one terminal erase
            # each other's lines
            mode = "plain" if prefix and cfg.trainer.progress != "none" else cfg.trainer.progress
            progress = Progress(
                mode,
                int(cfg.trainer.epochs),
                data.train.num_batches(batch_size, min_train_batch(pieces.model)),
                batch_size,
                prefix=prefix,
                val=data.val is not None,
            )
            stop = StopFlag()
            info = RunInfo(cfg, run_dir, record.data, ckpt, list(overrides), pieces)
            with record.building():
                loggers = make_loggers(info)
            trainer = make_trainer(Trainer, cfg, run_dir, pieces, device, record, loggers, progress, stop)
            if pieces.augment is not None:
                log.info(f"augmentation: {pieces.augment} on each training batch")
            if trainer.swa is not None:
                log.info(trainer.swa.describe(int(cfg.trainer.epochs)))
            if ckpt is not None:
                restore(trainer, ckpt, resume_from)

            with record.training():
                state = fit(trainer, stop, progress)
            record.trained(state, trainer.swa_result)
            stop_if_signalled("after training, before the test evaluation and plots")
            test_and_plot(cfg, run_dir, trainer, record, loggers)
            stop_if_signalled("after training, before the run's results were complete")
    except BaseException as exc:
        loggers.abort("interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed")
        raise
    incomplete = None
    try:
        loggers.finish(info)  # after results.json says completed (MLflow keeps a copy of it)
    except LoggerIncomplete as exc:  # the run is done: its summary first, then the error (exit 1)
        incomplete = exc
    if cfg.trainer.progress != "none" and progress.prefix:  # beside other jobs: one line, not a table
        log.info(job_line(progress.prefix, record.data))
    elif cfg.trainer.progress != "none":
        print_summary(record.data)
        print_closing(record.data)
    if incomplete is not None:
        raise incomplete
    return record.data
