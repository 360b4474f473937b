"""One run end to end: validate -> build the pieces -> Trainer.fit() -> test -> report.

The run folder's lifecycle (results.json's status, the lock, wall time) is the RunRecord's
(record.py); the pieces come from build.py. Each step is a plain function so tests can call any
of them alone; `run()` chains them.
"""

from __future__ import annotations

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
from .errors import CheckpointError, MlprunError
from .evaluate import evaluate_test
from .models import count_parameters, summary_rows
from .plots import learning_curves
from .progress import Progress
from .provenance import as_markdown
from .record import RunRecord
from .results import print_closing, print_summary
from .sessions import group_choices, hparams_of, job_prefix, tensorboard_dir
from .tblog import TensorBoardLogger
from .train import StopFlag, Trainer

log = logging.getLogger("mlprunner")


def log_model_summary(model: torch.nn.Module, data: Data) -> None:
    lines = [f"model: {data.num_features} inputs -> {model.out_features} outputs"]
    for name, layer, n in summary_rows(model):
        lines.append(f"  {name:>4}  {layer:<60} {n:>10,}")
    lines.append(f"  total parameters: {count_parameters(model):,}")
    log.info("\n".join(lines))


@dataclass
class _Signals:
    """First SIGINT/SIGTERM: stop after the current step. Second: leave at once."""

    stop: StopFlag

    def install(self):
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.stop.requested:
            self.restore()  # a third signal gets Python's default behaviour
            raise KeyboardInterrupt
        self.stop.requested = True
        self.stop.signal_name = signal.Signals(signum).name
        log.warning(f"{self.stop.signal_name} received: stopping after this step (press Ctrl-C again to quit at once)")

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


def set_up_process(trainer_cfg: DictConfig) -> torch.device:
    """The device, torch's thread count and every random generator's seed."""
    device = resolve_device(trainer_cfg.device)
    if trainer_cfg.get("threads"):
        torch.set_num_threads(int(trainer_cfg.threads))
    seed_everything(int(trainer_cfg.seed), bool(trainer_cfg.deterministic))
    return device


def make_tensorboard(
    cfg: DictConfig,
    run_dir: Path,
    pieces: Pieces,
    device: torch.device,
    ckpt: dict | None,
    tb_dir: Path | None = None,
    overrides=(),
    prov: dict | None = None,
) -> TensorBoardLogger | None:
    """The run's TensorBoard logger (continuing after the checkpoint's epoch and step), or None.

    tb_dir: its folder (default `<run>/tensorboard`; a sweep job's is named by its swept values,
    see sessions.py)."""
    if not cfg.trainer.tensorboard.enabled:
        return None
    tb_dir = Path(tb_dir) if tb_dir is not None else run_dir / "tensorboard"
    if ckpt is None and tb_dir.is_dir():  # a fresh start: what an abandoned attempt logged goes
        for old in tb_dir.glob("events.out.tfevents.*"):
            old.unlink()
    tb = TensorBoardLogger(
        tb_dir,
        resume_epoch=int(ckpt["epoch"]) if ckpt else 0,
        resume_step=int(ckpt["step"]) if ckpt else 0,
        histograms=bool(cfg.trainer.tensorboard.histograms),
    )
    if ckpt is None:  # written when the writers open, after the first training step
        hparams = hparams_of(cfg, overrides, group_choices(run_dir))
        tb.when_open(lambda: tb.hparams(hparams))
        if prov:
            tb.when_open(lambda: tb.text("provenance", as_markdown(prov)))
    return tb


def restore(trainer: Trainer, ckpt: dict, path: Path) -> None:
    """Continue from a checkpoint: weights, optimizer, scheduler, counters and RNG state."""
    try:
        trainer.load_state(ckpt)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model/optimizer "
            f"(it is from a different model): "
            f"{str(exc).splitlines()[0][:200]}"
        ) from None
    restore_rng(ckpt["rng"])
    log.info(f"resuming from {path} after epoch {trainer.state.epoch} (step {trainer.state.step})")


def fit(trainer: Trainer, stop: StopFlag, progress: Progress):
    """Trainer.fit() with SIGINT/SIGTERM setting `stop` (the trainer's): stop after this step."""
    signals = _Signals(stop).install()
    try:
        return trainer.fit()
    finally:
        signals.restore()
        progress.close()


def test(cfg: DictConfig, run_dir: Path, trainer: Trainer, tb: TensorBoardLogger | None) -> dict:
    try:
        return evaluate_test(cfg, run_dir, trainer, tb)
    except MlprunError:
        if tb is not None:
            tb.close()
        raise


def close_tensorboard(cfg: DictConfig, tb: TensorBoardLogger, pieces: Pieces, results: dict, epoch: int) -> None:
    """The model graph and the HParams metrics of the finished run, then the writers are closed.

    The graph is traced here rather than at the start: tracing takes about half a second, which
    would otherwise lengthen the first epoch.
    """
    if cfg.trainer.tensorboard.graph:
        data, model = pieces.data, pieces.model
        example = data.train.x[:2] if hasattr(data.train, "x") else torch.zeros(2, data.num_features)
        tb.graph(model, example.to(next(model.parameters()).device))
    best_val = (results.get("best") or {}).get("val") or {}
    metrics = {
        "hparam/best_val_error": best_val.get("error"),
        "hparam/best_val_loss": best_val.get("loss"),
        "hparam/last_train_error": (results.get("last") or {}).get("train", {}).get("error"),
        "hparam/test_error": (results.get("test") or {}).get("error"),
    }
    tb.scalars({k: v for k, v in metrics.items() if v is not None}, epoch)
    tb.end_session("completed")
    tb.close()


def describe(record: RunRecord, cfg: DictConfig, pieces: Pieces, run_dir: Path, device: torch.device) -> None:
    """The run's size and data in results.json, and the same in the log."""
    data, model = pieces.data, pieces.model
    n_val = len(data.val) if data.val is not None else 0
    record.describe(count_parameters(model), {"name": cfg.dataset.name, "n_train": len(data.train), "n_val": n_val})
    log.info(f"run directory: {run_dir}")
    log.info(f"data: {data.describe()}; device: {device}")
    log_model_summary(model, data)


def tensorboard_folder(record: RunRecord, cfg: DictConfig, run_dir: Path, overrides, ckpt: dict | None) -> Path:
    """Where the run's TensorBoard events go: a resumed run continues in the folder it started in
    (results.json "tensorboard"), a new one gets its own (a sweep job's is named by its values)."""
    tb_dir = run_dir / record.data.get("tensorboard", "tensorboard")
    if ckpt is None:
        tb_dir = tensorboard_dir(run_dir, overrides)
    if cfg.trainer.tensorboard.enabled:
        record.data["tensorboard"] = os.path.relpath(tb_dir, run_dir)
    return tb_dir


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
    validate(cfg)
    check_memory(cfg, resolve_device(cfg.trainer.device))  # before anything is allocated or written
    started = time.perf_counter()
    run_dir = Path(run_dir)
    device = set_up_process(cfg.trainer)
    ckpt = checkpoint if checkpoint is not None or resume_from is None else load_checkpoint(resume_from)
    with RunRecord(run_dir, device, overrides, resumed_from=ckpt, started=started, restart=restart) as record:
        log.info(f"loading dataset={cfg.dataset.name} and building the model ...")
        with record.building():
            pieces = build(cfg, device)
        describe(record, cfg, pieces, run_dir, device)
        data, model = pieces.data, pieces.model

        batch_size = int(cfg.trainer.batch_size)
        progress = Progress(
            cfg.trainer.progress,
            int(cfg.trainer.epochs),
            data.train.num_batches(batch_size),
            batch_size,
            prefix=job_prefix(run_dir, overrides),
        )
        stop = StopFlag()
        tb_dir = tensorboard_folder(record, cfg, run_dir, overrides, ckpt)
        tb = make_tensorboard(cfg, run_dir, pieces, device, ckpt, tb_dir, overrides, record.data.get("provenance"))
        trainer = Trainer(
            cfg.trainer,
            run_dir,
            data,
            model,
            pieces.loss,
            pieces.optimizer,
            pieces.scheduler,
            pieces.interval,
            device,
            tb=tb,
            progress=progress,
            stop=stop,
            augment=pieces.augment,
            on_epoch_end=record.epoch_done,
            config=OmegaConf.to_container(cfg, resolve=True),
        )
        if pieces.augment is not None:
            log.info(f"augmentation: {pieces.augment} on each training batch")
        if ckpt is not None:
            restore(trainer, ckpt, resume_from)

        with record.training():
            state = fit(trainer, stop, progress)
        record.trained(state, trainer.swa_result)
        if cfg.get("eval") is not None and cfg.eval.test:
            with record.testing():
                record.data["test"] = test(cfg, run_dir, trainer, tb)
        if tb is not None:
            close_tensorboard(cfg, tb, pieces, record.data, state.epoch)
        learning_curves(
            state.history,
            run_dir / "learning_curves.png",
            title=f"{cfg.dataset.name} {list(cfg.model.hidden)} {cfg.model.activation}",
            best_epoch=state.best_epoch,
        )
    if cfg.trainer.progress != "none":
        print_summary(record.data)
        print_closing(record.data)
    return record.data
