"""PNG figures of a run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list, path: Path, title: str = "") -> Path | None:
    """Train and validation error and loss per epoch (seed 003, exercise 1)."""
    if not history:
        return None
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for split, style in (("train", "-"), ("val", "--")):
        if all(h.get(split) for h in history):
            ax_err.plot(epochs, [100 * h[split]["error"] for h in history], style, marker="o", ms=3, label=split)
            ax_loss.plot(epochs, [h[split]["loss"] for h in history], style, marker="o", ms=3, label=split)
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="error")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    for ax in (ax_err, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
