"""Build the optimizer, scheduler and loss from their config groups with hydra.utils.instantiate."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .config import LOSS_META, SCHEDULER_META
from .errors import ConfigError


def _strip(cfg: DictConfig, meta) -> DictConfig:
    data = OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.create({k: v for k, v in data.items() if k not in meta})


def _instantiate(node, key: str, **kwargs):
    try:
        return instantiate(node, **kwargs)
    except Exception as exc:  # an unknown or ill-typed constructor argument
        cause = exc.__cause__ or exc
        raise ConfigError(key, message=f"{key}: {str(cause).splitlines()[0]}") from None


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
    whole update); otherwise torch picks its foreach implementation.
    """
    partial = _instantiate(cfg, "optim")
    cls = partial.func if hasattr(partial, "func") else partial
    params = inspect.signature(cls.__init__).parameters
    extra = {}
    if "fused" in params and "fused" not in partial.keywords and _fused_steps(partial, device):
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


def build_scheduler(cfg: DictConfig, optimizer, epochs: int, steps_per_epoch: int):
    """Return (scheduler or None, interval) where interval is 'epoch' or 'step'."""
    if cfg.name == "none":
        return None, "epoch"
    interval = cfg.interval
    warmup = int(cfg.get("warmup_epochs", 0) or 0)
    node = _strip(cfg, SCHEDULER_META)
    units = steps_per_epoch if interval == "step" else 1
    kwargs = {}
    if cfg.name == "cosine" and node.get("T_max") is None:
        kwargs["T_max"] = max(1, (epochs - warmup) * units)
    if cfg.name == "onecycle":
        kwargs["total_steps"] = max(1, (epochs - warmup) * units)
    if cfg.name == "plateau":
        node.pop("mode", None)
        kwargs["mode"] = cfg.get("mode", "min")
    main = _instantiate(node, "scheduler")(optimizer, **kwargs)
    if not warmup:
        return main, interval
    from torch.optim.lr_scheduler import LinearLR, SequentialLR

    ramp = LinearLR(optimizer, start_factor=float(cfg.warmup_start_factor), end_factor=1.0,
                    total_iters=warmup * units)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup * units]), interval


class Loss:
    """Wraps a torch loss so every loss takes the model's logits and integer labels.

    - cross_entropy, multi_margin: logits and class indices, as torch expects.
    - nll: log_softmax of the logits first.
    - bce_with_logits: one output unit; labels as float 0/1.
    - mse, l1: softmax probabilities against one-hot targets.
    """

    def __init__(self, cfg: DictConfig, num_classes: int):
        self.name = cfg.name
        self.num_classes = num_classes
        self.fn = _instantiate(_strip(cfg, LOSS_META), "loss")
        self.out_features = 1 if self.name == "bce_with_logits" else num_classes

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.name == "bce_with_logits":
            return self.fn(logits.squeeze(1), y.to(logits.dtype))
        if self.name == "nll":
            return self.fn(F.log_softmax(logits, dim=1), y)
        if self.name in ("mse", "l1"):
            target = F.one_hot(y, self.num_classes).to(logits.dtype)
            return self.fn(logits.softmax(dim=1), target)
        return self.fn(logits, y)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        if self.name == "bce_with_logits":
            return (logits.squeeze(1) > 0).long()
        return logits.argmax(dim=1)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        if self.name == "bce_with_logits":
            p = torch.sigmoid(logits.float())
            return torch.cat([1 - p, p], dim=1)
        return logits.float().softmax(dim=1)
