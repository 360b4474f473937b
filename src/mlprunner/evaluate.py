"""Evaluation on the official test set, with a 95% Wilson confidence interval."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .results import wilson_interval

log = logging.getLogger("mlprunner")


@torch.no_grad()
def test_metrics(model, loss, split, num_classes: int, batch_size: int = 1000) -> dict:
    """Error, accuracy, loss, n, Wilson 95% CI and per-class error of `model` on `split`."""
    model.eval()
    preds, losses = [], []
    for xb, yb in split.batches(batch_size):
        logits = model(xb)
        losses.append(loss(logits.float(), yb) * yb.shape[0])
        preds.append(loss.predict(logits))
    pred = torch.cat(preds).cpu()
    y = split.y.cpu()
    n = int(y.shape[0])
    errors = int((pred != y).sum())
    confusion = torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, num_classes)
    per_class = confusion.sum(1)
    per_class_error = [float(1 - confusion[c, c] / per_class[c]) if per_class[c] else None for c in range(num_classes)]
    lo, hi = wilson_interval(errors, n)
    return {
        "error": errors / n if n else None, "accuracy": 1 - errors / n if n else None, "n": n,
        "errors": errors, "ci95": [lo, hi], "loss": float(torch.stack(losses).sum()) / max(n, 1),
        "per_class_error": per_class_error, "confusion": confusion.tolist(),
    }


def evaluate_test(cfg, run_dir: Path, trainer, tb=None) -> dict:
    """Load the best (or last) checkpoint into the trainer's model and score it on the test set."""
    data = trainer.data
    if data.load_test is None:
        from .errors import ConfigError

        raise ConfigError("eval.test", True, message=f"eval.test=true but dataset={cfg.dataset.name} "
                                                   "has no test set configured")
    which = cfg.eval.checkpoint
    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    epoch = trainer.state.epoch
    if path.is_file():
        ckpt = load_checkpoint(path)
        trainer.model.load_state_dict(ckpt["model"])
        epoch = int(ckpt["epoch"])
    split = data.load_test()
    m = test_metrics(trainer.model, trainer.loss, split, data.num_classes, int(cfg.trainer.eval_batch_size))
    m["epoch"] = epoch
    m["checkpoint"] = which
    lo, hi = m["ci95"]
    log.info(f"test error {100 * m['error']:.2f}% (95% CI {100 * lo:.2f}-{100 * hi:.2f}%, n={m['n']}) "
             f"[{which} checkpoint, epoch {epoch}]")
    if tb is not None:
        tb.scalars({"Error/test": m["error"], "Accuracy/test": m["accuracy"], "Loss/test": m["loss"]}, epoch)
    return m
