"""The MLP: Linear layers of `hidden` widths, each followed by [BatchNorm] activation [Dropout]."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from . import schema

# the names are declared once, with the config schema; here they become torch.nn classes
ACTIVATIONS = {name: getattr(nn, cls) for name, cls in schema.ACTIVATIONS.items()}


class MLP(nn.Sequential):
    """in_features -> hidden[0] -> ... -> hidden[-1] -> out_features; `hidden=[]` is linear."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (500, 300),
        activation: str = "relu",
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        batchnorm: bool = False,
    ):
        layers: list[nn.Module] = []
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, int(h), bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(int(h)))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features


def config_title(model_cfg) -> str:
    """A short label of a model config for plot titles: `[500, 300] relu` for the MLP, the class
    name and its keys (`Net width=64`) for a model of the user's own."""
    if schema.own_model(model_cfg.get("_target_")) and "hidden" in model_cfg:
        return f"{list(model_cfg.hidden)} {model_cfg.get('activation', '')}".rstrip()
    keys = " ".join(f"{k}={model_cfg[k]}" for k in model_cfg if not str(k).startswith("_"))
    return f"{str(model_cfg.get('_target_')).rpartition('.')[2]} {keys}".rstrip()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary_rows(model: nn.Module) -> list[tuple[str, str, int]]:
    """(name, layer, parameters) for each leaf layer, for the start-of-run summary."""
    rows = []
    for name, module in model.named_modules():
        if len(list(module.children())) == 0:
            n = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append((name, repr(module), n))
    return rows


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def min_train_batch(model: nn.Module) -> int:
    """The smallest training batch the model can take: BatchNorm in training mode cannot
    normalise one sample ("Expected more than 1 value per channel"), so with BatchNorm a last
    batch of one sample is left out of the epoch (a different sample each shuffled epoch)."""
    return 2 if has_batchnorm(model) else 1
