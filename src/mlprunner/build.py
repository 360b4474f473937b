"""The pieces of a run, built from its config: data, loss, model, optimizer, scheduler, augment.

`build()` is the one place that turns a validated config into objects; the run, evaluation
(its model part), the benchmark and the tests all use it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from .augment import build_augment
from .components import Loss, build_optimizer, build_scheduler
from .config import check_loss_fits
from .data import Data, load_data


@dataclass
class Pieces:
    data: Data
    loss: Loss
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None  # a torch LR scheduler, or None
    interval: str  # when the scheduler steps: "epoch" or "step"
    augment: object | None  # a batch transform (dataset.augment), or None


def build_model(model_cfg: DictConfig, num_features: int, loss: Loss, device: torch.device) -> torch.nn.Module:
    """The model of `model_cfg` shaped for the data (inputs) and the loss (outputs), on `device`."""
    model = instantiate(model_cfg, in_features=num_features, out_features=loss.out_features)
    return model.to(device)


def _import_torch_dynamo() -> None:
    import torch._dynamo  # noqa: F401  (what the first torch.optim optimizer would import)


def build(cfg: DictConfig, device: torch.device, data: Data | None = None) -> Pieces:
    """Every piece a run trains with, from a validated config.

    data: the run's data when the caller has loaded it already (a stacked group's jobs share
    one copy; loading draws nothing from the global random generator, so the model's
    initialisation is the same either way)."""
    # torch.optim imports torch._dynamo when the first optimizer is built (over a second);
    # importing it while the data loads hides most of that from the start-up
    warm = None if "torch._dynamo" in sys.modules else _import_torch_dynamo
    if data is None:
        data = load_data(cfg.dataset, device, meanwhile=warm)
    check_loss_fits(cfg.loss, data.num_classes)
    loss = Loss(cfg.loss, data.num_classes)
    model = build_model(cfg.model, data.num_features, loss, device)
    optimizer = build_optimizer(cfg.optim, model, device)
    scheduler, interval = build_scheduler(
        cfg.scheduler, optimizer, int(cfg.trainer.epochs), data.train.num_batches(int(cfg.trainer.batch_size))
    )
    augment = build_augment(cfg.dataset, data)  # None unless dataset.augment.enabled
    return Pieces(data, loss, model, optimizer, scheduler, interval, augment)
