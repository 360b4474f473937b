"""Scores of a confusion matrix, shared by training's per-epoch metrics (train.Metrics, the
stacked and graphed steps) and the test evaluation (evaluate.py), so a score means one thing."""

from __future__ import annotations

import torch


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0/0 = 0 (torchmetrics' convention), in float64: counts divided in float32
    gave results.json errors such as 0.046000003814697266 for 23 of 500."""
    num, den = num.double(), den.double()
    return torch.where(den != 0, num / den, torch.zeros((), dtype=num.dtype, device=num.device))


def _counts(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tp, fp, fn, weights) per class of a (C, C) confusion matrix (row = true, column =
    predicted); weights 0 for a class that never occurs, neither as label nor as prediction,
    which torchmetrics leaves out of a macro mean."""
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    weights = torch.ones_like(tp, dtype=torch.float64)
    weights[tp + fp + fn == 0] = 0.0
    return tp, fp, fn, weights


def _macro(score: torch.Tensor, weights: torch.Tensor) -> float:
    return float(_divide(weights * score, weights.sum(-1, keepdim=True)).sum(-1))


def accuracy_error_f1(cm: torch.Tensor) -> tuple[float, float, float]:
    """Micro accuracy, error and macro F1 of a (C, C) confusion matrix (row = true, column =
    predicted). Accuracy and error are the counts' quotients (23 of 500 wrong: 0.046), F1 the
    arithmetic of torchmetrics' F1 score (average="macro") in float64."""
    tp, fp, fn, weights = _counts(cm)
    n, right = int(cm.sum()), int(tp.sum())
    acc, error = (right / n, (n - right) / n) if n else (0.0, 1.0)
    return acc, error, _macro(_divide(2.0 * tp, 2.0 * tp + 1.0 * fn + fp), weights)


def precision_recall(cm: torch.Tensor) -> tuple[float, float]:
    """Macro precision and recall of a (C, C) confusion matrix, as torchmetrics'
    MulticlassPrecision/MulticlassRecall (average="macro") compute them (a class's 0/0 is 0)."""
    tp, fp, fn, weights = _counts(cm)
    return _macro(_divide(tp, tp + fp), weights), _macro(_divide(tp, tp + fn), weights)


# the test metrics every logger gets (results.json's test block holds more): MLflow's test/<name>,
# TensorBoard's <Name>/test (evaluate.py)
TEST_SCALARS = ("error", "accuracy", "f1", "precision", "recall", "loss")
