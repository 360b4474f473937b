"""Scores of a confusion matrix, shared by training's per-epoch metrics (train.Metrics, the
stacked and graphed steps) and the test evaluation (evaluate.py), so a score means one thing."""

from __future__ import annotations

import torch


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den in float32 with 0/0 = 0 (torchmetrics' convention, so the numbers match its)."""
    num, den = num.float(), den.float()
    return torch.where(den != 0, num / den, torch.zeros((), dtype=num.dtype, device=num.device))


def accuracy_f1(cm: torch.Tensor) -> tuple[float, float]:
    """Micro accuracy and macro F1 of a (C, C) confusion matrix (row = true, column = predicted).

    The same arithmetic as torchmetrics' multiclass accuracy (average="micro") and F1 score
    (average="macro"), in the same order and dtype: classes that never occur, neither as label
    nor as prediction, are left out of the macro mean.
    """
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    acc = _divide(tp.sum(), (tp + fn).sum())
    f1 = _divide(2.0 * tp, 2.0 * tp + 1.0 * fn + fp)
    weights = torch.ones_like(f1)
    weights[tp + fp + fn == 0] = 0.0
    macro = _divide(weights * f1, weights.sum(-1, keepdim=True)).sum(-1)
    return float(acc), float(macro)


def precision_recall(cm: torch.Tensor) -> tuple[float, float]:
    """Macro precision and recall of a (C, C) confusion matrix, as torchmetrics'
    MulticlassPrecision/MulticlassRecall (average="macro") compute them: a class's 0/0 is 0, and
    classes that never occur, neither as label nor as prediction, are left out of the mean."""
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    weights = torch.ones_like(tp, dtype=torch.float32)
    weights[tp + fp + fn == 0] = 0.0

    def macro(score: torch.Tensor) -> float:
        return float(_divide(weights * score, weights.sum(-1, keepdim=True)).sum(-1))

    return macro(_divide(tp, tp + fp)), macro(_divide(tp, tp + fn))
