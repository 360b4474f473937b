"""The pieces of a run, built from its config: data, loss, model, optimizer, scheduler, augment.

`build()` is the one place that turns a validated config into objects; the run, evaluation
(its model part), the benchmark and the tests all use it.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from .augment import build_augment
from .components import Loss, build_optimizer, build_scheduler, lr_note, monitor_mode
from .config import check_loss_fits
from .data import Data, load_data
from .errors import ConfigError, first_line
from .models import min_train_batch
from .schema import model_arguments

log = logging.getLogger("mlprunner")


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
    """The model of `model_cfg` shaped for the data (inputs) and the loss (outputs), on `device`.

    Any torch.nn.Module class: the data's sizes are passed to the parameters of its constructor
    that ask for them by name (schema.SIZE_ARGUMENTS), the config's keys as they are (the MLP's
    keys left out for a class that does not take them); one forward pass of a dummy batch then
    checks it gives the outputs the loss needs."""
    target = str(model_cfg.get("_target_"))
    node, sizes, call = model_arguments(model_cfg, num_features, loss.num_classes, loss.out_features)
    if call.left_out:
        log.info(
            f"model: {', '.join('model.' + k for k in call.left_out)} (the MLP's keys) are not arguments "
            f"of {target}; left out"
        )
    try:
        model = instantiate(node, **sizes)
    except Exception as exc:  # the user's constructor failed: one line, naming the class
        cause = exc.__cause__ or exc
        raise ConfigError(
            "model._target_", message=f"model._target_={target!r}: {type(cause).__name__}: {first_line(cause)}"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError("model._target_", target, "a torch.nn.Module class, e.g. mypkg.nets.Net")
    model = model.to(device)
    check_outputs(model, target, num_features, loss, device)
    return model


def check_outputs(model: torch.nn.Module, target: str, num_features: int, loss: Loss, device: torch.device) -> None:
    """A forward pass of a dummy batch of 2 examples must give (2, loss.out_features) logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, num_features, device=device))
    except Exception as exc:
        first = first_line(str(exc))  # a text: "" when empty (the type's name is said before it)
        raise ConfigError(
            "model._target_",
            message=(
                f"model._target_={target!r}: a forward pass of a batch of shape (2, {num_features}) "
                f"failed: {type(exc).__name__}: {first[:200]}"
            ),
        ) from None
    finally:
        model.train(was_training)
    want = (2, loss.out_features)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        need = (
            "1 output per example (a binary loss)"
            if loss.binary
            else f"{loss.out_features} outputs per example, one per class"
        )
        raise ConfigError(
            "model._target_",
            message=(
                f"model._target_={target!r} gives {got} for a batch of shape (2, {num_features}); "
                f"the data have {loss.num_classes} classes, so it must give {want}: {need} "
                f"(take num_classes or out_features in the constructor and mlprun passes it)"
            ),
        )


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
        cfg.scheduler,
        optimizer,
        int(cfg.trainer.epochs),
        data.train.num_batches(int(cfg.trainer.batch_size), min_train_batch(model)),
        monitor_mode=monitor_mode(cfg.trainer, data.val is not None),  # a plateau steps on the trainer's monitor
    )
    note = lr_note(cfg.scheduler)
    if note:
        log.info(note)
    augment = build_augment(cfg.dataset, data)  # None unless dataset.augment.enabled
    return Pieces(data, loss, model, optimizer, scheduler, interval, augment)
