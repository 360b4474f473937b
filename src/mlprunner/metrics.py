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


def auroc(probs: torch.Tensor, y: torch.Tensor) -> float | None:
    """Macro one-vs-rest area under the ROC curve of (N, C) class probabilities: per class, the
    chance that a sample of it scores higher than one of another class (ties count half), the
    Mann-Whitney statistic; averaged over the classes that occur and not all samples are of.
    None when no class qualifies. (As torchmetrics' multiclass_auroc, average="macro"; its import
    costs seconds, the test evaluation's own time.)"""
    probs, y = probs.double().cpu(), y.cpu()
    areas = []
    for c in range(probs.shape[1]):
        positive = y == c
        n_pos = int(positive.sum())
        n_neg = y.numel() - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        # 1-based ranks of the scores, tied scores sharing the mean of their ranks
        _, group, counts = torch.unique(probs[:, c], return_inverse=True, return_counts=True)
        ranks = (counts.cumsum(0) - (counts - 1) / 2.0)[group]
        areas.append((float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return sum(areas) / len(areas) if areas else None


# the test metrics every logger gets (results.json's test block holds more): MLflow's test/<name>,
# TensorBoard's <Name>/test (evaluate.py)
TEST_SCALARS = ("error", "accuracy", "f1", "precision", "recall", "auroc", "loss")
