"""Build the optimizer, scheduler and loss from their config groups with hydra.utils.instantiate."""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LinearLR, OneCycleLR, ReduceLROnPlateau, SequentialLR

from .errors import ConfigError, first_line
from .schema import component_class, own_keys

log = logging.getLogger("mlprunner")

# monitors that improve upwards, whatever early_stopping.mode says
MAXIMISED = ("val/accuracy", "val/f1", "val/precision", "val/recall")


def monitor_mode(trainer_cfg: DictConfig, has_val: bool) -> str:
    """The direction ("min" or "max") the Trainer selects its monitored metric in: MAXIMISED's
    are maximised, other monitors follow trainer.early_stopping.mode; without a validation set
    the monitor is train/loss, minimised."""
    if not has_val:
        return "min"
    es = trainer_cfg.early_stopping
    return "max" if es.monitor in MAXIMISED else str(es.mode)


def class_node(cfg: DictConfig, group: str) -> DictConfig:
    """The component's node without mlprun's own keys (schema: own=True): what the class gets."""
    data = OmegaConf.to_container(cfg, resolve=True)
    own = own_keys(group)
    node = {k: v for k, v in data.items() if k not in own}
    if group == "scheduler" and "_target_" in node:
        # mlprun always passes the optimizer itself: a _target_ added to scheduler=none need not
        # say _partial_
        node["_partial_"] = True
    return OmegaConf.create(node)


def _instantiate(node, key: str, **kwargs):
    try:
        return instantiate(node, **kwargs)
    except Exception as exc:  # an unknown or ill-typed constructor argument
        cause = exc.__cause__ or exc
        raise ConfigError(key, message=f"{key}: {first_line(cause)}") from None


def _fused_steps(partial, device: torch.device) -> bool:
    """Whether the class's fused kernel runs on this device: torch checks it only at the first
    step (Adagrad's is CPU-only), so take one step on a throw-away parameter."""
    if device.type not in ("cpu", "cuda", "mps"):
        return False
    probe = torch.zeros(1, device=device, requires_grad=True)
    probe.grad = torch.zeros_like(probe)
    try:
        partial([probe], fused=True).step()
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """cfg.optim is a `_target_: torch.optim.X` with `_partial_: true`.

    Where the class has a fused implementation for this device, it is used (one kernel for the
    whole update); otherwise torch picks its foreach implementation. An implementation the user
    names (+optim.foreach=false for the plain for-loop, +optim.fused=...) is taken as given.
    """
    partial = _instantiate(cfg, "optim")
    cls = partial.func if hasattr(partial, "func") else partial
    params = inspect.signature(cls.__init__).parameters
    extra = {}
    named = {"fused", "foreach"} & set(partial.keywords)
    if "fused" in params and not named and _fused_steps(partial, device):
        extra["fused"] = True
    try:
        return partial(model.parameters(), **extra)
    except (RuntimeError, ValueError) as exc:
        if extra:  # fused not available for this dtype/device combination
            try:
                return partial(model.parameters())
            except (RuntimeError, ValueError, TypeError) as exc2:
                raise ConfigError("optim", message=f"optim: {exc2}") from None
        raise ConfigError("optim", message=f"optim: {exc}") from None
    except TypeError as exc:
        raise ConfigError("optim", message=f"optim: {exc}") from None


def length_keys(cfg: DictConfig) -> list[str]:
    """The scheduler's length arguments the config leaves null and build_scheduler sets from
    trainer.epochs (CosineAnnealingLR's T_max, OneCycleLR's total_steps)."""
    if cfg.get("_target_") is None:
        return []
    params = inspect.signature(component_class(cfg, "scheduler")).parameters
    return [key for key in ("T_max", "total_steps") if key in params and cfg.get(key) is None]


def build_scheduler(cfg: DictConfig, optimizer, epochs: int, steps_per_epoch: int, monitor_mode: str | None = None):
    """Return (scheduler or None, interval) where interval is 'epoch' or 'step'.

    No `_target_` (scheduler=none) is a constant learning rate. A length the class needs and
    the config leaves open (CosineAnnealingLR's T_max, OneCycleLR's total_steps) is the
    training after the warm-up, in the scheduler's units.

    monitor_mode: the direction of the metric the Trainer steps a ReduceLROnPlateau with
    (monitor_mode() above). The plateau follows it whatever scheduler.mode says: a plateau
    that minimises an accuracy cuts the lr while the model improves. A scheduler.mode that
    disagrees is reported in one line."""
    if cfg.get("_target_") is None:
        return None, "epoch"
    interval = cfg.interval
    warmup = int(cfg.get("warmup_epochs", 0) or 0)
    node = class_node(cfg, "scheduler")
    units = steps_per_epoch if interval == "step" else 1
    cls = component_class(cfg, "scheduler")
    kwargs = {key: max(1, (epochs - warmup) * units) for key in length_keys(cfg)}
    if monitor_mode is not None and isinstance(cls, type) and issubclass(cls, ReduceLROnPlateau):
        configured = node.get("mode", "min")
        if configured != monitor_mode:
            log.info(
                f"scheduler.mode={configured} -> {monitor_mode}: ReduceLROnPlateau steps on the metric the "
                f"trainer monitors, which is {'maximised' if monitor_mode == 'max' else 'minimised'}"
            )
        kwargs["mode"] = monitor_mode
    main = _instantiate(node, "scheduler")(optimizer, **kwargs)
    if not warmup:
        return main, interval
    ramp = LinearLR(optimizer, start_factor=float(cfg.warmup_start_factor), end_factor=1.0, total_iters=warmup * units)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup * units]), interval


def lr_note(cfg: DictConfig) -> str | None:
    """A line for the log when the scheduler sets the lr itself (OneCycleLR: from max_lr), so
    that optim.lr does not look like the lr the run trains with."""
    if cfg.get("_target_") is None:
        return None
    cls = component_class(cfg, "scheduler")
    if isinstance(cls, type) and issubclass(cls, OneCycleLR):
        peak = cfg.get("max_lr")
        return f"OneCycleLR: the lr rises to scheduler.max_lr={peak} and falls; optim.lr is not used"
    return None


def steps_on_metric(scheduler) -> bool:
    """ReduceLROnPlateau's step() takes the monitored metric; the others take nothing."""
    return isinstance(scheduler, ReduceLROnPlateau)


# losses of probabilities: softmax outputs against one-hot targets
ONE_HOT_PROBABILITY_LOSSES = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss)


class Loss:
    """Wraps a torch loss so every loss takes the model's logits and integer labels.

    What a loss needs is asked of the torch object:
    - BCEWithLogitsLoss: one output unit; labels as float 0/1.
    - NLLLoss: log_softmax of the logits first.
    - MSELoss, L1Loss, HuberLoss, SmoothL1Loss: softmax probabilities against one-hot targets.
    - KLDivLoss: log_softmax of the logits against one-hot targets (with reduction=batchmean,
      the cross-entropy: a one-hot target has no entropy).
    - MultiLabelMarginLoss: logits, and each sample's class as its one label (the rest -1).
    - MultiLabelSoftMarginLoss: logits against one-hot targets.
    - any other (CrossEntropyLoss, MultiMarginLoss): logits and class indices, as torch expects.
    """

    def __init__(self, cfg: DictConfig, num_classes: int):
        self.num_classes = num_classes
        self.fn = _instantiate(class_node(cfg, "loss"), "loss")
        self.binary = isinstance(self.fn, nn.BCEWithLogitsLoss)
        self.out_features = 1 if self.binary else num_classes

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fn = self.fn
        if self.binary:
            return fn(logits.squeeze(1), y.to(logits.dtype))
        if isinstance(fn, nn.NLLLoss):
            return fn(F.log_softmax(logits, dim=1), y)
        if isinstance(fn, ONE_HOT_PROBABILITY_LOSSES):
            return fn(logits.softmax(dim=1), self._one_hot(y, logits.dtype))
        if isinstance(fn, nn.KLDivLoss):
            return fn(F.log_softmax(logits, dim=1), self._one_hot(y, logits.dtype))
        if isinstance(fn, nn.MultiLabelSoftMarginLoss):
            return fn(logits, self._one_hot(y, logits.dtype))
        if isinstance(fn, nn.MultiLabelMarginLoss):
            # the labels of each sample come first, ended by -1: here the one class
            target = torch.full_like(logits, -1, dtype=torch.long)
            target[:, 0] = y
            return fn(logits, target)
        return fn(logits, y)

    def _one_hot(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).to(dtype)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return (logits.squeeze(1) > 0).long()
        return logits.argmax(dim=1)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        if self.binary:
            p = torch.sigmoid(logits.float())
            return torch.cat([1 - p, p], dim=1)
        return logits.float().softmax(dim=1)
