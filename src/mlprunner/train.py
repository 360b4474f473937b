"""The training loop: one readable `Trainer.fit()`.

Fast path: the training split is a tensor on the device, batched by indexing with a per-epoch
seeded permutation. Nothing in a step waits for the device: losses and metric statistics are
accumulated on it and read once per log interval and once per epoch.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from .checkpoint import BackgroundWriter, capture_rng, save_checkpoint
from .components import Loss, monitor_mode, steps_on_metric
from .cudagraph import GraphedSteps, checkpoint_optimizer_state, fallback_reason
from .data import Data
from .errors import DivergenceError, Interrupted
from .metrics import accuracy_error_f1, precision_recall
from .models import min_train_batch
from .profiling import make_profiler
from .progress import fmt_pct
from .swa import SWA

log = logging.getLogger("mlprunner")

BETTER = {"min": lambda new, best, d: new < best - d, "max": lambda new, best, d: new > best + d}
TIE_BROKEN_BY_LOSS = ("val/error", "val/accuracy")  # counts of mistakes: equal values are common


def epoch_seed(seed: int, epoch: int) -> int:
    """The data order of epoch `epoch` is a pure function of the seed, so resume reproduces it."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1)


class Metrics:
    """Loss, accuracy (micro) and macro F1 of a split, accumulated on the device.

    A step adds its predictions to one (C, C) confusion matrix and its loss to a device scalar,
    so nothing in a step waits for the device; `compute()` reads them once per epoch. A captured
    step (cudagraph.py) keeps its predictions for the epoch and counts them at its end.
    """

    def __init__(self, num_classes: int, device):
        device = torch.device(device)
        self.num_classes = int(num_classes)
        self.confusion = torch.zeros(self.num_classes * self.num_classes, dtype=torch.long, device=device)
        self._ones = torch.ones(0, dtype=torch.long, device=device)
        acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        self.loss_sum = torch.zeros((), dtype=acc_dtype, device=device)
        self.count = 0

    def update(self, loss: torch.Tensor, preds: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[0]
        self.add_loss(loss, n)
        self.count += n
        self.add_predictions(preds, y)

    def add_loss(self, loss: torch.Tensor, n: int) -> None:
        """The loss sum alone (a captured step adds its loss here; the host counts its samples)."""
        self.loss_sum.add_(loss.detach(), alpha=n)

    def add_predictions(self, preds: torch.Tensor, y: torch.Tensor) -> None:
        """Predictions and true classes into the confusion matrix, for any number of samples."""
        n = y.shape[0]
        if self._ones.shape[0] < n:
            self._ones = torch.ones(n, dtype=torch.long, device=self.confusion.device)
        # row = true class, column = predicted class; accumulate=True is deterministic on CUDA
        self.confusion.index_put_((y * self.num_classes + preds,), self._ones[:n], accumulate=True)

    def compute(self) -> dict:
        cm = self.confusion.view(self.num_classes, self.num_classes)
        cm = cm.cpu()
        acc, error, f1 = accuracy_error_f1(cm)
        precision, recall = precision_recall(cm)  # macro, as f1 (lecture 004's three scores)
        loss = float(self.loss_sum) / max(self.count, 1)
        out = {"loss": loss, "accuracy": acc, "error": error, "f1": f1, "precision": precision, "recall": recall}
        self.reset()
        return out

    def reset(self) -> None:
        self.confusion.zero_()
        self.loss_sum.zero_()
        self.count = 0


@dataclass
class StopFlag:
    """Set by the SIGINT/SIGTERM handler; the loop stops after the current step."""

    requested: bool = False
    signal_name: str = ""
    signals: int = 0  # signals that came (run.request_stop sets `requested` without one)


def diverged_hint(optimizer: torch.optim.Optimizer) -> str:
    """What to try after a divergence: a learning rate below the one that diverged."""
    return f"try a lower learning rate than optim.lr={float(optimizer.defaults['lr']):g} or set trainer.grad_clip"


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps so far
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # early-stopping counter
    history: list = field(default_factory=list)
    stopped_early: bool = False


def still_stopped(saved: dict, es_cfg) -> bool:
    """Whether a saved early stop still holds under the current config (resume may raise the
    patience or disable early stopping)."""
    return (
        bool(saved.get("stopped", False))
        and bool(es_cfg.enabled)
        and int(saved.get("bad_epochs", 0)) >= max(int(es_cfg.patience), 1)
    )


@contextlib.contextmanager
def young_gc_only():
    """Python's automatic garbage collection paused while training; `fit()` collects the young
    generations itself (`gc.collect(1)`) once per epoch.

    Training steps free their tensors by reference counting and leave no cyclic garbage, so the
    automatic collector would only add pauses, and full collections over the many objects torch
    and Hydra keep alive are slow (docs/performance.md, Garbage collection). Same idea as
    torchtitan's manual GC. The previous setting comes back on exit.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Trainer:
    """Trains the built pieces of a run under `settings` (the config's `trainer` node).

    `config`: the run's whole resolved config as plain values, stored in every checkpoint so a
    checkpoint describes its own run; the Trainer itself reads nothing from it.
    """

    def __init__(
        self,
        settings: DictConfig,
        run_dir: Path,
        data: Data,
        model: torch.nn.Module,
        loss: Loss,
        optimizer,
        scheduler,
        interval: str,
        device: torch.device,
        logger=None,
        progress=None,
        stop: StopFlag | None = None,
        augment=None,
        on_epoch_end=None,
        config: dict | None = None,
    ):
        self.t = settings
        self.run_dir = Path(run_dir)
        self.data = data
        self.model = model
        self.step_model = torch.compile(model) if self.t.compile else model
        self.loss = loss
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.interval = interval
        self.device = device
        self.logger = logger  # loggers.Loggers: TensorBoard, metrics.csv, MLflow (the `logger` group)
        self.progress = progress
        self.stop = stop or StopFlag()
        self.augment = augment
        self.on_epoch_end = on_epoch_end
        self.state = TrainState()
        self.config = config or {}
        self.monitor = self.t.early_stopping.monitor if data.val is not None else "train/loss"
        self.mode = monitor_mode(self.t, data.val is not None)
        self.train_metrics = Metrics(data.num_classes, device)
        self.val_metrics = Metrics(data.num_classes, device)
        self.profiler = make_profiler(bool(self.t.get("profile", False)), self.run_dir, device)
        self.first_step_at = None  # time.time() when the first training step of this process ended
        precision = self.t.precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" and device.type == "cuda" else None
        self.ckpt_dir = self.run_dir / "checkpoints"
        # best.pt/last.pt (and, through after_checkpoint, results.json) are written while the
        # next epoch trains
        self.writer = BackgroundWriter()
        self.swa = None  # stochastic weight averaging (trainer.swa), see swa.py
        if self.t.get("swa") is not None and self.t.swa.enabled:
            self.swa = SWA(self.t.swa, model, optimizer, int(self.t.epochs))
        self.swa_result = None
        self.graph_reason = fallback_reason(
            self.t.get("cuda_graph", "auto"),
            device,
            train_split=data.train,
            optimizer=optimizer,
            scaler=self.scaler,
            step_scheduler=scheduler is not None and interval == "step",
            augment=augment,
            swa=self.swa,
            compiled=bool(self.t.compile),
            profile=bool(self.t.get("profile")),
        )
        self.graphed = None  # GraphedSteps, made at the first epoch (after a resume's load_state)
        self.min_batch = min_train_batch(model)
        if data.train.num_batches(int(self.t.batch_size), self.min_batch) < data.train.num_batches(
            int(self.t.batch_size)
        ):
            log.info(
                f"BatchNorm: the last training batch would hold 1 sample ({len(data.train)} samples, "
                f"trainer.batch_size={int(self.t.batch_size)}); it is left out of each epoch"
            )

    def _set_up_graph(self) -> None:
        """The CUDA-graph runner when the step can be graphed, and one log line on whether it
        is, and if not, why (on CUDA, or when asked for explicitly)."""
        setting = self.t.get("cuda_graph", "auto")
        if self.graph_reason is None:
            self.graphed = GraphedSteps(
                self.step_model,
                self.loss,
                self.optimizer,
                self.train_metrics,
                self.data.train,
                self.t.grad_clip,
                self.autocast_dtype,
                self.device,
            )
            log.info("CUDA graph: each training step is captured once and replayed per batch (trainer.cuda_graph)")
        elif setting is True or (setting == "auto" and self.device.type == "cuda"):
            log.info(f"CUDA graph off: {self.graph_reason}; training steps run eagerly")

    # ------------------------------------------------------------------ state for checkpoints
    def checkpoint_state(self) -> dict:
        s = self.state
        return {
            "model": self.model.state_dict(),
            "optimizer": checkpoint_optimizer_state(self.optimizer),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": s.epoch,
            "step": s.step,
            "rng": capture_rng(),
            "config": self.config,
            "metrics": s.history[-1] if s.history else {},
            "history": s.history,
            "best": {"value": s.best_value, "epoch": s.best_epoch, "monitor": self.monitor, "mode": self.mode},
            "early_stopping": {"bad_epochs": s.bad_epochs, "stopped": s.stopped_early},
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "data": {
                "num_features": self.data.num_features,
                "num_classes": self.data.num_classes,
                "class_names": self.data.class_names,
                "image_shape": list(self.data.image_shape) if self.data.image_shape else None,
                "mean": self.data.mean,
                "std": self.data.std,
            },
        }

    def load_state(self, ckpt: dict) -> None:
        """Restore everything a checkpoint holds (model/optimizer already shaped by the config)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        best = ckpt.get("best") or {}
        es = ckpt.get("early_stopping") or {}
        self.state = TrainState(
            epoch=int(ckpt["epoch"]),
            step=int(ckpt["step"]),
            best_value=best.get("value"),
            best_epoch=best.get("epoch"),
            bad_epochs=int(es.get("bad_epochs", 0)),
            history=list(ckpt.get("history", [])),
            stopped_early=still_stopped(es, self.t.early_stopping),
        )
        if self.swa is not None and ckpt.get("swa") is not None:
            self.swa.load_state_dict(ckpt["swa"])

    def after_checkpoint(self, write) -> None:
        """Run `write()` in the background once the checkpoints saved so far are on disk."""
        self.writer.submit(write)

    # ------------------------------------------------------------------ one epoch
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_epoch(self, epoch: int) -> dict:
        self.step_model.train()
        train = self.data.train
        bs = int(self.t.batch_size)
        if self.t.get("overfit_batches"):  # debug=overfit: the same batches in the same order each epoch
            order = torch.arange(len(train))
        else:
            g = torch.Generator().manual_seed(epoch_seed(self.t.seed, epoch))
            order = torch.randperm(len(train), generator=g)
        if self.device.type == "cuda":
            order = order.pin_memory()  # so the copy below does not wait for the device
        order = order.to(self.device, non_blocking=True)
        log_every = int(self.t.log_every_n_steps)
        window = torch.zeros(log_every, device=self.device)
        k = 0  # steps in the current log window
        steps = train.num_batches(bs, self.min_batch)
        if self.progress:
            self.progress.start_epoch(epoch)
        prof = self.profiler  # trainer.profile: per-phase laps (no-ops when off)
        prof.begin_epoch(epoch)
        if self.graphed is not None:
            losses = self._graphed_steps(order, bs)
        else:
            losses = self._eager_steps(epoch, order, bs)
        progress = self.progress
        for i, loss in enumerate(losses, start=1):
            self.state.step += 1
            if progress:
                progress.step(i)  # the live bar redraws by time, from this
            window[k] = loss
            k += 1
            if k == log_every or i == steps:
                self._flush_window(window[:k], epoch, i, steps)
                k = 0
            if self.first_step_at is None:
                self._mark_first_step()
            prof.lap("logging")
            prof.end_step()
            if self.stop.requested:
                raise Interrupted(f"stopped by {self.stop.signal_name or 'signal'} during epoch {epoch}")
        prof.end_epoch()
        if self.graphed is not None:
            self.graphed.end_epoch()
        return self.train_metrics.compute()

    def _graphed_steps(self, order: torch.Tensor, bs: int):
        """The epoch's steps through CUDA graphs (cudagraph.py); yields each step's loss."""
        graphed = self.graphed
        graphed.begin_epoch(order)
        n = len(self.data.train)
        for start in range(0, n, bs):
            if n - start < self.min_batch:
                return
            yield graphed.step(min(bs, n - start))

    def _eager_steps(self, epoch: int, order: torch.Tensor, bs: int):
        """The epoch's steps, one kernel launch at a time; yields each step's loss."""
        model, opt, loss_fn, prof = self.step_model, self.optimizer, self.loss, self.profiler
        grad_clip = self.t.grad_clip
        in_swa = self.swa is not None and self.swa.active(epoch)
        if in_swa:
            self.swa.begin_epoch(epoch)  # SWALR takes over the learning rate from here on
        step_sched = self.scheduler is not None and self.interval == "step" and not in_swa
        for xb, yb in self.data.train.batches(bs, order, self.min_batch):
            if self.augment is not None:
                xb = self.augment(xb)
            prof.lap("data")
            with self._autocast():
                logits = model(xb)
                loss = loss_fn(logits, yb)
            prof.lap("forward")
            opt.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            prof.lap("backward")
            if grad_clip:
                if self.scaler is not None:
                    self.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
            if self.scaler is not None:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            if step_sched:
                self.scheduler.step()
            prof.lap("optimizer")
            self.train_metrics.update(loss, loss_fn.predict(logits.detach()), yb)
            prof.lap("metrics")
            yield loss.detach()

    def _mark_first_step(self) -> None:
        """Remember when the first step of this process finished (results.json `startup_s`)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once per process
        self.first_step_at = time.time()

    def _flush_window(self, losses: torch.Tensor, epoch: int, i: int, steps: int) -> None:
        """One host sync per log interval: check finiteness, log, refresh the display."""
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            # the window holds steps i-n+1 .. i of this epoch (global steps state.step-n+1 ..)
            n, j = losses.shape[0], int((~finite).nonzero()[0])
            raise DivergenceError(
                f"loss became non-finite at epoch {epoch}, step {i - n + 1 + j} of {steps} "
                f"(global step {self.state.step - n + 1 + j}); {diverged_hint(self.optimizer)}"
            )
        mean = float(losses.mean())
        if self.logger is not None:
            self.logger.step(
                self.state.step, {"Loss/train_step": mean, "LR/step": self.optimizer.param_groups[0]["lr"]}
            )
        if self.progress:
            self.progress.update(i, mean)

    @torch.no_grad()
    def evaluate(self, split, metrics: Metrics | None = None, model=None) -> dict:
        model = model or self.step_model
        model.eval()
        metrics = metrics or Metrics(self.data.num_classes, self.device)
        for xb, yb in split.batches(int(self.t.eval_batch_size)):
            with self._autocast():
                logits = model(xb)
                loss = self.loss(logits, yb)
            metrics.update(loss.float(), self.loss.predict(logits), yb)
        return metrics.compute()

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainState:
        with young_gc_only():
            try:
                state = self._fit()
            except KeyboardInterrupt:  # a second signal: leave at once, dropping the write in flight
                self.writer.abandon()
                raise
            except BaseException:
                try:
                    self.writer.wait(raise_error=False)  # the checkpoint in flight lands; this error wins
                except KeyboardInterrupt:
                    self.writer.abandon()
                    raise
                raise
            finally:
                self.writer.close()
            self.writer.wait()
            return state

    def _fit(self) -> TrainState:
        s = self.state
        self._set_up_graph()
        epochs = int(self.t.epochs)
        for epoch in range(s.epoch + 1, epochs + 1):
            if s.stopped_early:
                break
            t0 = time.perf_counter()
            train_m = self.train_epoch(epoch)
            self.end_epoch(epoch, train_m, t0)
            if self.stop.requested and epoch < epochs and not s.stopped_early:
                # the signal came during validation/logging/checkpointing: last.pt is this epoch's
                raise Interrupted(f"stopped by {self.stop.signal_name or 'signal'} after epoch {epoch}")
        if self.swa is not None:
            self.swa_result = self.finish_swa()
        return s

    def end_epoch(self, epoch: int, train_m: dict, t0: float) -> None:
        """What follows an epoch's training steps (train_m: their metrics; t0: when the epoch
        began): the divergence check, validation, the scheduler's epoch step, best and early
        stopping, the loggers, the checkpoints, the epoch line and on_epoch_end. A stacked
        group (stacked.py) calls it for each of its jobs."""
        s, es = self.state, self.t.early_stopping
        in_swa = self.swa is not None and self.swa.active(epoch)
        if in_swa:
            self.swa.end_epoch(epoch)  # add this epoch's weights to the average, SWALR step
        if not math.isfinite(train_m["loss"]):
            raise DivergenceError(f"loss became non-finite during epoch {epoch}; {diverged_hint(self.optimizer)}")
        t_val = time.perf_counter()
        val_m = self.evaluate(self.data.val, self.val_metrics) if self.data.val is not None else None
        t_train_eval = time.perf_counter()
        self.profiler.add("validation", t_train_eval - t_val)
        # trainer.eval_train: the training split scored as validation is (eval mode, the epoch's
        # final weights), where train/ is the mean over the epoch's steps (dropout on, weights
        # moving): the curve that shows overfitting as lecture 003's exercise 1 plots it
        train_eval_m = None
        if self.t.get("eval_train"):
            train_eval_m = self.evaluate(self.data.train)
            self.profiler.add("train_eval", time.perf_counter() - t_train_eval)  # not validation's time
        lr = self.optimizer.param_groups[0]["lr"]
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "train": train_m, "val": val_m, "lr": lr, "time_s": seconds}
        flat = {f"train/{k}": v for k, v in train_m.items()}
        if train_eval_m is not None:
            record["train_eval"] = train_eval_m
            flat.update({f"train_eval/{k}": v for k, v in train_eval_m.items()})
        if val_m is not None:
            flat.update({f"val/{k}": v for k, v in val_m.items()})
        flat["lr"] = lr
        value = flat[self.monitor]
        if self.scheduler is not None and self.interval == "epoch" and not in_swa:
            if steps_on_metric(self.scheduler):
                self.scheduler.step(value)
            else:
                self.scheduler.step()
        # without a validation set there is nothing to select on: best is the last epoch
        improved = (
            self.data.val is None or s.best_value is None or BETTER[self.mode](value, s.best_value, float(es.min_delta))
        )
        # an equal error with a lower loss becomes best.pt, but is no progress for early stopping:
        # patience keeps counting, as it does for a loss that creeps down at a constant error
        tie = not improved and self._ties_with_lower_loss(value, val_m)
        s.epoch = epoch
        s.history.append(record)
        if improved:
            s.best_value, s.best_epoch, s.bad_epochs = value, epoch, 0
        else:
            if tie:
                s.best_epoch = epoch
            s.bad_epochs += 1
            # patience = the epochs without improvement that stop training, as Keras and Lightning
            # count it (patience 0 stops at the first such epoch, as 1 does)
            if es.enabled and s.bad_epochs >= max(int(es.patience), 1):
                s.stopped_early = True
        logged = {**flat, "time_s": seconds}
        if self.logger is not None:
            self.logger.epoch(epoch, s.step, logged, self.model)
        paths = []
        if (improved or tie) and self.t.checkpoint.save_best:
            paths.append(self.ckpt_dir / "best.pt")
        if self.t.checkpoint.save_last:
            paths.append(self.ckpt_dir / "last.pt")
        if paths:
            self.writer.save_checkpoint(paths, self.checkpoint_state())
        if self.logger is not None:  # what cannot be taken back is logged once the checkpoint is saved
            self.after_checkpoint(lambda e=epoch, n=s.step, m=logged: self.logger.epoch_saved(e, n, m))
        if self.progress:
            self.progress.end_epoch(epoch, flat, seconds, len(self.data.train))
            if s.stopped_early:
                for line in self._early_stop_lines(epoch):
                    self.progress.message(line)
        if self.on_epoch_end is not None:
            self.on_epoch_end(self)
        gc.collect(1)  # this epoch's cyclic garbage from the epoch-end bookkeeping (see young_gc_only)
        if self.profiler.enabled:
            self.profiler.add("epoch_end", time.perf_counter() - t0 - seconds)
            self.profiler.write()

    def _early_stop_lines(self, epoch: int) -> list[str]:
        """Why the run stopped, within 80 columns for any monitor and 3-digit epochs; a fraction
        (error, accuracy, ...) in percent as the epoch lines show it. Patience counts from the
        last improvement, which is not the best epoch when a tie moved it (_ties_with_lower_loss)."""
        s = self.state
        value = f"{s.best_value:.4g}" if self.monitor.endswith("loss") else fmt_pct(s.best_value)
        since = epoch - s.bad_epochs
        epochs = f"{s.bad_epochs} epoch{'s' * (s.bad_epochs != 1)}"
        if s.best_epoch == since:
            return [f"early stop: {self.monitor} no better than {value} for {epochs} (best: epoch {since})"]
        return [
            f"early stop: {self.monitor} no better than {value} for {epochs} (since epoch {since})",
            f"best epoch: {s.best_epoch} (the same {self.monitor} as epoch {since}, a lower val loss)",
        ]

    def _ties_with_lower_loss(self, value: float, val_m: dict | None) -> bool:
        """A count-based monitor (val/error, val/accuracy) equal to the best one, with a lower
        validation loss: the same number of mistakes made with more confidence where right.
        (XOR reaches 0% error epochs before its loss settles; the first such epoch would stay best.)"""
        s = self.state
        if self.monitor not in TIE_BROKEN_BY_LOSS or val_m is None or value != s.best_value:
            return False
        best = next((h for h in s.history if h["epoch"] == s.best_epoch), None)
        return best is not None and best.get("val") is not None and val_m["loss"] < best["val"]["loss"]

    def finish_swa(self) -> dict | None:
        """BatchNorm statistics for the averaged weights, its validation metrics, checkpoints/swa.pt."""
        swa = self.swa
        if swa.n_averaged == 0:
            return None
        swa.finish(self.data.train, int(self.t.eval_batch_size))
        val = self.evaluate(self.data.val, model=swa.averaged) if self.data.val is not None else None
        state = self.checkpoint_state()
        state["model"] = swa.averaged_state()
        state["swa_final"] = {"start_epoch": swa.start, "n_averaged": swa.n_averaged}
        save_checkpoint(self.ckpt_dir / "swa.pt", state)
        if self.progress:
            score = f": val error {100 * val['error']:.2f}% (loss {val['loss']:.4f})" if val else ""
            # within 80 columns: "SWA of 5 epochs from 16: val error 4.86% (loss 0.1568); swa.pt"
            self.progress.message(f"SWA of {swa.n_averaged} epoch(s) from {swa.start}{score}; swa.pt")
        return {
            "start_epoch": swa.start,
            "n_averaged": swa.n_averaged,
            "val": val,
            "checkpoint": str(self.ckpt_dir / "swa.pt"),
        }
