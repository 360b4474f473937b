"""TensorBoard: one log folder per run, continued on resume without overlapping steps.

Epoch scalars (tags of the shared contract, step = epoch number) go to `tensorboard/`;
step-level scalars (every trainer.log_every_n_steps, step = global step) go to
`tensorboard/steps/`, so each file can be purged on resume at its own step.
"""

from __future__ import annotations

from pathlib import Path

import torch

EPOCH_TAGS = {
    "train/loss": "Loss/train", "val/loss": "Loss/val",
    "train/error": "Error/train", "val/error": "Error/val",
    "train/accuracy": "Accuracy/train", "val/accuracy": "Accuracy/val",
    "train/f1": "F1/train", "val/f1": "F1/val",
    "lr": "LR",
}


class TensorBoardLogger:
    def __init__(self, log_dir: Path, resume_epoch: int = 0, resume_step: int = 0,
                 histograms: bool = True):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        # purge_step drops anything an interrupted process logged after its last checkpoint.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=resume_epoch + 1 if resume_epoch else None)
        self.step_writer = SummaryWriter(str(self.log_dir / "steps"),
                                         purge_step=resume_step + 1 if resume_step else None)
        self.histograms = histograms

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        import warnings

        try:
            was_training = model.training
            model.eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.writer.add_graph(model, example)
            model.train(was_training)
        except Exception:  # the graph is a nicety; tracing must never break a run
            pass

    def hparams(self, hparams: dict, metric_tags: list[str]) -> None:
        """Write the HParams plugin's session into this run's own event file."""
        from torch.utils.tensorboard.summary import hparams as hp_summary

        exp, ssi, sei = hp_summary(hparams, {tag: 0.0 for tag in metric_tags})
        fw = self.writer._get_file_writer()
        for s in (exp, ssi, sei):
            fw.add_summary(s)

    def epoch(self, epoch: int, metrics: dict, model: torch.nn.Module | None = None) -> None:
        for key, tag in EPOCH_TAGS.items():
            if key in metrics and metrics[key] is not None:
                self.writer.add_scalar(tag, metrics[key], epoch)
        if self.histograms and model is not None:
            for name, p in model.named_parameters():
                self.writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), epoch)
        self.writer.flush()
        self.step_writer.flush()

    def step(self, step: int, scalars: dict) -> None:
        for tag, value in scalars.items():
            self.step_writer.add_scalar(tag, value, step)

    def scalars(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def figure(self, tag: str, fig, step: int) -> None:
        self.writer.add_figure(tag, fig, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self.step_writer.close()
