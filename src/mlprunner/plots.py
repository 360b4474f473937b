"""PNG figures of a run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_bytes


def _plt():
    # lazy: matplotlib takes ~0.5 s to import and is needed only once a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_png(fig, path: Path, dpi: int = 100) -> Path:
    """Save `fig` as a PNG at `path` atomically: into a temp file of a unique name beside it
    (mkstemp: two processes writing the same figure at once never share one), then renamed
    over `path`; the temp file is removed when anything fails."""
    path = Path(path)
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, dpi=dpi, format="png"))
    return path


def learning_curves(history: list, path: Path, title: str = "", best_epoch: int | None = None) -> Path | None:
    """Train and validation error and loss per epoch, and the learning rate; integer epoch
    ticks, the best epoch (by trainer.early_stopping.monitor) marked on every panel."""
    if not history:
        return None
    plt = _plt()
    from matplotlib.ticker import FuncFormatter, MaxNLocator  # lazy: matplotlib, as in _plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_err, ax_loss, ax_lr) = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [1, 1, 0.7]})
    # what each curve is: train is averaged over the epoch's steps as it trained (dropout on,
    # weights changing), train_eval (trainer.eval_train) and val are the model at the epoch's end
    splits = (
        ("train", "-", "train (mean over the epoch's steps)"),
        ("train_eval", "-.", "train (at the epoch's end)"),
        ("val", "--", "val (at the epoch's end)"),
    )
    errors = []
    for split, style, label in splits:
        if all(h.get(split) for h in history):
            split_errors = [100 * h[split]["error"] for h in history]
            errors += split_errors
            ax_err.plot(epochs, split_errors, style, marker="o", ms=3, label=label)
            ax_loss.plot(epochs, [h[split]["loss"] for h in history], style, marker="o", ms=3, label=label)
    if errors and min(errors) > 0 and max(errors) / min(errors) >= 10:
        ax_err.set_yscale("log")  # the first epochs' errors would flatten where overfitting shows
        ax_err.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1, 10: not 10^0, 10^1
    lrs = [h.get("lr") for h in history]
    if all(lr is not None for lr in lrs):
        ax_lr.plot(epochs, lrs, marker="o", ms=3, color="tab:green")
        if min(lrs) > 0 and max(lrs) / min(lrs) >= 10:
            ax_lr.set_yscale("log")
        elif max(lrs) == min(lrs):  # a constant lr: from 0, not a ±4% band around it
            ax_lr.set_ylim(0, 1.25 * max(lrs) if max(lrs) > 0 else 1)
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="error")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    best = next((h for h in history if h["epoch"] == best_epoch), None)
    for ax in (ax_err, ax_loss, ax_lr):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best is not None:
            ax.axvline(best["epoch"], color="grey", ls=":", lw=1.2, label=f"best epoch {best['epoch']}")
    if best is not None and best.get("val"):
        ax_err.plot(best["epoch"], 100 * best["val"]["error"], "*", ms=12, color="tab:red", zorder=5)
        ax_err.annotate(
            f"{100 * best['val']['error']:.2f}%",
            (best["epoch"], 100 * best["val"]["error"]),
            textcoords="offset points",
            xytext=(6, 8),
            fontsize=8,
            color="tab:red",
        )
    ax_err.legend()
    ax_loss.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path, close: bool = True, dpi: int = 100) -> Path:
    """Write `fig` as a PNG atomically (write_png), then close it unless `close` is false."""
    try:
        return write_png(fig, path, dpi=dpi)
    finally:
        if close:
            _plt().close(fig)


def roc_figure(probs, y, class_names, title: str = ""):
    """One-vs-rest ROC curves, one per class that occurs among other classes, each labelled with
    its area (scikit-learn's roc_curve and auc), and the chance diagonal."""
    from sklearn.metrics import auc, roc_curve  # lazy: only a test evaluation draws this

    plt = _plt()
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for c, name in enumerate(class_names):
        positive = y == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        ax.plot(fpr, tpr, lw=1.2, label=f"{name} (AUC {auc(fpr, tpr):.4f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(title or "ROC, one class against the rest", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def confusion_figure(confusion, class_names, title: str = ""):
    """A confusion matrix (rows: true class, columns: predicted) with counts, coloured by row share."""
    plt = _plt()
    cm = np.asarray(confusion, dtype=np.int64)
    k = cm.shape[0]
    names = [str(c) for c in class_names] if class_names else [str(c) for c in range(k)]
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.55 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(
        range(k),
        labels=names,
        rotation=45 if max(map(len, names)) > 2 else 0,
        ha="right" if max(map(len, names)) > 2 else "center",
    )
    ax.set_yticks(range(k), labels=names)
    ax.set(xlabel="predicted class", ylabel="true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
