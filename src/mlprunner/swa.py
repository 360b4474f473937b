"""Stochastic weight averaging (seed 004) with torch.optim.swa_utils.

From `start` (the first SWA epoch, 1-based) on, the trainer's own scheduler stops and SWALR
anneals the learning rate to `trainer.swa.lr`; after each of those epochs the weights are
added to an AveragedModel. At the end, BatchNorm statistics are recomputed for the averaged
weights (update_bn) when the model has BatchNorm, and the averaged model is what is evaluated
and saved (checkpoints/swa.pt). Its state (average, count, SWALR position) is part of every
checkpoint, so a resumed run averages exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from .config import swa_start_epoch
from .models import has_batchnorm

PLAIN = (int, float, str, bool, list, type(None))


class SWA:
    def __init__(self, cfg, model: torch.nn.Module, optimizer, epochs: int):
        self.model = model
        self.optimizer = optimizer
        # the values were checked by config.validate, before the run folder was made
        self.start = swa_start_epoch(cfg.start_epoch, epochs)
        lr = cfg.get("lr")
        self.lr = None if lr is None else float(lr)
        self.anneal_epochs = int(cfg.get("anneal_epochs", 0))
        self.anneal_strategy = str(cfg.get("anneal_strategy") or "cos")  # runs before the key: cos
        self.averaged = AveragedModel(model)
        self.scheduler: SWALR | None = None

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    def describe(self, epochs: int) -> str:
        """The plan, for the log: 'SWA: epochs 16-20 averaged, SWALR to lr 0.0005 (cos, 2 epochs)'."""
        if self.start >= epochs:  # the average of one epoch is that epoch's weights
            return f"SWA: only epoch {epochs} averaged (nothing to average): set trainer.swa.start_epoch lower"
        target = f"to lr {self.lr:g}" if self.lr is not None else "keeps the lr"
        return (
            f"SWA: epochs {self.start}-{epochs} averaged, SWALR {target} "
            f"({self.anneal_strategy}, {self.anneal_epochs} epochs)"
        )

    def active(self, epoch: int) -> bool:
        return epoch >= self.start

    def _make_scheduler(self) -> SWALR:
        # null: the learning rate at the start of SWA (kept in the optimizer's state on resume)
        swa_lr = self.lr if self.lr is not None else [g.get("swa_lr", g["lr"]) for g in self.optimizer.param_groups]
        # Creating SWALR at its step 0 leaves the current learning rate unchanged.
        return SWALR(
            self.optimizer, swa_lr=swa_lr, anneal_epochs=self.anneal_epochs, anneal_strategy=self.anneal_strategy
        )

    def begin_epoch(self, epoch: int) -> None:
        if self.active(epoch) and self.scheduler is None:
            self.scheduler = self._make_scheduler()

    def end_epoch(self, epoch: int) -> None:
        if self.active(epoch):
            self.averaged.update_parameters(self.model)
            self.scheduler.step()

    def finish(self, train_split, batch_size: int) -> None:
        """Recompute BatchNorm running statistics for the averaged weights (one pass, no grads)."""
        if has_batchnorm(self.averaged) and self.n_averaged:
            update_bn((xb for xb, _ in train_split.batches(batch_size, min_size=2)), self.averaged)

    def averaged_state(self) -> dict:
        """The averaged weights with the plain model's keys (loadable into a fresh MLP)."""
        return self.averaged.module.state_dict()

    # checkpoints: tensors and plain values only
    def state_dict(self) -> dict:
        sched = None
        if self.scheduler is not None:
            # plain values only: some torch versions keep SWALR's annealing function in its
            # state_dict(), which a weights_only load refuses (the new scheduler rebuilds it)
            sched = {k: v for k, v in self.scheduler.state_dict().items() if isinstance(v, PLAIN)}
        return {
            "model": self.averaged.state_dict(),
            "start_epoch": self.start,
            "scheduler": sched,
            "n_averaged": self.n_averaged,
        }

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state["model"])
        if self.n_averaged:  # averaging has begun: keep its start even if trainer.epochs changed
            self.start = int(state["start_epoch"])
        if state.get("scheduler") is not None:
            self.scheduler = self._make_scheduler()
            saved = dict(state["scheduler"])
            if "step_count" in saved:  # checkpoints written before the state_dict() form
                saved = {"_step_count": saved["step_count"], "last_epoch": saved["last_epoch"]}
            self.scheduler.load_state_dict({**self.scheduler.state_dict(), **saved})
