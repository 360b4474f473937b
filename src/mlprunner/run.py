"""One run end to end: validate -> build the pieces -> Trainer.fit() -> results.

Each step is a plain function so tests can call any of them alone; `run()` chains them.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .augment import build_augment
from .checkpoint import load_checkpoint, restore_rng
from .components import Loss, build_optimizer, build_scheduler
from .config import check_loss_fits, validate
from .data import Data, load_data
from .device import resolve_device, seed_everything
from .errors import CheckpointError, ConfigError, DivergenceError, Interrupted, MlprunError
from .evaluate import evaluate_test
from .models import count_parameters, summary_rows
from .plots import learning_curves
from .profiling import process_start_time
from .progress import Progress
from .results import ResultsFile, print_summary, read_results
from .tblog import TensorBoardLogger
from .train import StopFlag, Trainer

try:
    import fcntl
except ImportError:  # not POSIX: run folders are not locked
    fcntl = None

log = logging.getLogger("mlprunner")


def build_model(cfg: DictConfig, data: Data, loss: Loss, device: torch.device) -> torch.nn.Module:
    model = instantiate(cfg.model, in_features=data.num_features, out_features=loss.out_features)
    return model.to(device)


def hparams_of(cfg: DictConfig) -> dict:
    """A flat dict of the hyper-parameters that define the run (for TensorBoard's HParams)."""
    keys = {
        "dataset": "dataset.name", "model.hidden": "model.hidden", "model.activation": "model.activation",
        "model.dropout": "model.dropout", "model.batchnorm": "model.batchnorm",
        "optim": "optim._target_", "optim.lr": "optim.lr", "optim.weight_decay": "optim.weight_decay",
        "optim.momentum": "optim.momentum", "scheduler": "scheduler.name", "loss": "loss.name",
        "trainer.batch_size": "trainer.batch_size", "trainer.epochs": "trainer.epochs",
        "trainer.seed": "trainer.seed",
    }
    out = {}
    for name, key in keys.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if not isinstance(value, (int, float, str, bool)):
            value = str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
        if name == "optim":
            value = value.rsplit(".", 1)[-1]
        out[name] = value
    return out


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
        log.warning(f"{self.stop.signal_name} received: stopping after this step "
                    f"(press Ctrl-C again to quit at once)")

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


def resume_command(run_dir: Path) -> str:
    return f"mlprun resume={shlex.quote(str(Path(run_dir).resolve()))}"


def _saved_epoch(run_dir: Path):
    """The epoch of the run's checkpoints/last.pt (what a resume continues from), or 0."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not path.is_file():
        return 0
    try:
        return int(load_checkpoint(path)["epoch"])
    except MlprunError:
        return "?"


_LOCKS: dict = {}


def _lock_run_dir(run_dir: Path):
    """Hold an advisory lock on the run folder so a second process cannot train into it at once.

    The lock lasts until this process ends (the kernel drops it even on SIGKILL) or starts
    another run.
    """
    if fcntl is None:
        return None
    key = str(run_dir.resolve())
    if key in _LOCKS:  # this process holds it already (resume takes it before run() does)
        return _LOCKS[key]
    for other in list(_LOCKS):  # one run at a time per process: earlier runs here are over
        _LOCKS.pop(other).close()
    fh = open(run_dir / ".mlprun.lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise MlprunError(f"{run_dir} is in use by another running mlprun process; "
                          f"wait for it to finish or stop it first") from None
    _LOCKS[key] = fh
    return fh


def _import_torch_dynamo() -> None:
    import torch._dynamo  # noqa: F401  (what the first torch.optim optimizer would import)


def run(cfg: DictConfig, run_dir: Path, resume_from: Path | None = None, overrides=()) -> dict:
    """Train (or continue) the run described by `cfg` in `run_dir`; return results.json's dict."""
    validate(cfg)
    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    device = resolve_device(cfg.trainer.device)
    if cfg.trainer.get("threads"):
        torch.set_num_threads(int(cfg.trainer.threads))
    seed_everything(int(cfg.trainer.seed), bool(cfg.trainer.deterministic))

    ckpt = load_checkpoint(resume_from) if resume_from is not None else None
    prior = read_results(run_dir) if ckpt is not None else None
    run_dir.mkdir(parents=True, exist_ok=True)
    _lock_run_dir(run_dir)
    results = ResultsFile(run_dir, {
        "device": str(device), "n_params": None, "overrides": list(overrides),
        "run_dir": str(run_dir.resolve()),
    })
    if prior:
        results.data.update({k: v for k, v in prior.items() if k not in ("status", "reason", "run_dir")})
        results.data["overrides"] = list(prior.get("overrides", []))
    if ckpt is not None:
        results.data["resumed"] = list((prior or {}).get("resumed", [])) + [
            {"from_epoch": int(ckpt["epoch"]), "step": int(ckpt["step"]), "overrides": list(overrides),
             "at": time.strftime("%Y-%m-%dT%H:%M:%S")}]
    wall_before = float(results.data.get("wall_s") or 0.0)  # earlier processes of this run

    def elapsed() -> float:
        return wall_before + time.perf_counter() - t_start

    try:
        # torch.optim imports torch._dynamo when the first optimizer is built (1.1-1.3 s here);
        # importing it while the data loads takes ~0.1 s off the start-up (measured)
        warm = None if "torch._dynamo" in sys.modules else _import_torch_dynamo
        data = load_data(cfg.dataset, device, meanwhile=warm)
        check_loss_fits(cfg.loss.name, data.num_classes)
        loss = Loss(cfg.loss, data.num_classes)
        model = build_model(cfg, data, loss, device)
        optimizer = build_optimizer(cfg.optim, model, device)
        scheduler, interval = build_scheduler(cfg.scheduler, optimizer, int(cfg.trainer.epochs),
                                              data.train.num_batches(int(cfg.trainer.batch_size)))
        augment = build_augment(cfg.dataset, data)  # None unless dataset.augment.enabled
    except ConfigError:
        raise
    except MlprunError as exc:
        results.update(status="failed", reason=str(exc))
        raise
    results.data["n_params"] = count_parameters(model)
    results.data["dataset"] = {"name": cfg.dataset.name, "n_train": len(data.train),
                               "n_val": len(data.val) if data.val is not None else 0}
    log.info(f"run directory: {run_dir}")
    log.info(f"data: {data.describe()}; device: {device}")
    log_model_summary(model, data)

    progress = Progress(cfg.trainer.progress, int(cfg.trainer.epochs),
                        data.train.num_batches(int(cfg.trainer.batch_size)), int(cfg.trainer.batch_size))
    stop = StopFlag()
    trainer = Trainer(cfg, run_dir, data, model, loss, optimizer, scheduler, interval, device,
                      progress=progress, stop=stop, augment=augment)
    if augment is not None:
        log.info(f"augmentation: {augment} on each training batch")
    if ckpt is not None:
        try:
            trainer.load_state(ckpt)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint {resume_from} does not fit this model/optimizer "
                f"(it is from a different model): "
                f"{str(exc).splitlines()[0][:200]}") from None
        restore_rng(ckpt["rng"])
        log.info(f"resuming from {resume_from} after epoch {trainer.state.epoch} (step {trainer.state.step})")

    tb = None
    if cfg.trainer.tensorboard.enabled:
        tb = TensorBoardLogger(run_dir / "tensorboard", resume_epoch=trainer.state.epoch,
                               resume_step=trainer.state.step,
                               histograms=bool(cfg.trainer.tensorboard.histograms))
        if ckpt is None:  # written when the writers open, after the first training step
            tb.when_open(lambda: tb.hparams(hparams_of(cfg), [
                "hparam/best_val_error", "hparam/best_val_loss", "hparam/test_error", "hparam/last_train_error"]))
            if cfg.trainer.tensorboard.graph:
                example = data.train.x[:2] if hasattr(data.train, "x") else torch.zeros(2, data.num_features, device=device)
                tb.when_open(lambda: tb.graph(model, example))
        trainer.tb = tb

    startup_logged = []

    def on_epoch_end(tr: Trainer):
        results.update(status="running", wall_s=elapsed(),
                       **results.from_history(tr.state.history, tr.state.best_epoch))
        if tr.first_step_at is not None and not startup_logged:
            started = process_start_time()  # this process's start -> the end of its first step
            if started is not None:
                results.update(startup_s=round(tr.first_step_at - started, 3))
            startup_logged.append(True)

    trainer.on_epoch_end = on_epoch_end
    results.update(status="running", reason=None)
    signals = _Signals(stop).install()
    try:
        state = trainer.fit()
    except Interrupted as exc:
        results.update(status="interrupted", reason=str(exc),
                       wall_s=elapsed())
        raise Interrupted(f"{exc}; last checkpoint after epoch {_saved_epoch(run_dir)}; "
                          f"continue with: {resume_command(run_dir)}") from None
    except KeyboardInterrupt:
        results.update(status="interrupted", reason="interrupted at once by a second signal",
                       wall_s=elapsed())
        raise Interrupted(f"interrupted at once by a second signal; last checkpoint after epoch "
                          f"{_saved_epoch(run_dir)}; continue with: {resume_command(run_dir)}") from None
    except DivergenceError as exc:
        results.update(status="failed", reason=str(exc), wall_s=elapsed())
        raise
    except Exception as exc:
        results.update(status="failed", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                       wall_s=elapsed())
        raise
    finally:
        signals.restore()
        progress.close()

    final = results.from_history(state.history, state.best_epoch)
    results.data.update(final)
    results.data["stopped_early"] = state.stopped_early
    if trainer.swa_result is not None:
        results.data["swa"] = trainer.swa_result
    if cfg.get("eval") is not None and cfg.eval.test:
        try:
            results.data["test"] = evaluate_test(cfg, run_dir, trainer, tb)
        except MlprunError as exc:  # training is done and saved; only the test evaluation failed
            results.update(status="failed", reason=f"test evaluation: {exc}",
                           wall_s=elapsed())
            if tb is not None:
                tb.close()
            raise
    if tb is not None:
        best_val = (final.get("best") or {}).get("val") or {}
        metrics = {"hparam/best_val_error": best_val.get("error"), "hparam/best_val_loss": best_val.get("loss"),
                   "hparam/last_train_error": (final.get("last") or {}).get("train", {}).get("error"),
                   "hparam/test_error": (results.data.get("test") or {}).get("error")}
        tb.scalars({k: v for k, v in metrics.items() if v is not None}, state.epoch)
        tb.close()
    learning_curves(state.history, run_dir / "learning_curves.png",
                    title=f"{cfg.dataset.name} {list(cfg.model.hidden)} {cfg.model.activation}")
    results.update(status="completed", reason=None, wall_s=elapsed())
    if cfg.trainer.progress != "none":
        print_summary(results.data)
    return results.data
