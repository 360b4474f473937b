"""TensorBoard: one log folder per run, continued on resume without overlapping steps.

Epoch scalars (tags of the shared contract, step = epoch number) go to `tensorboard/`;
step-level scalars (every trainer.log_every_n_steps, step = global step) go to
`tensorboard/steps/`, so each file can be purged on resume at its own step.

The writers open on first use (the first step scalars, after the first training step), so
importing tensorboard, tracing the graph and writing the HParams session do not delay the
first step. Weight histograms are binned on the model's device with `torch.histc` (64 equal
buckets, exact min/max/sum/sum of squares) and written with `add_histogram_raw`, which is much
cheaper than `add_histogram`'s NumPy binning after a copy to the host (docs/performance.md).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

EPOCH_TAGS = {
    "train/loss": "Loss/train",
    "val/loss": "Loss/val",
    "train/error": "Error/train",
    "val/error": "Error/val",
    "train/accuracy": "Accuracy/train",
    "val/accuracy": "Accuracy/val",
    "train/f1": "F1/train",
    "val/f1": "F1/val",
    "lr": "LR",
}


class TensorBoardLogger:
    HISTOGRAM_BINS = 64

    def __init__(self, log_dir: Path, resume_epoch: int = 0, resume_step: int = 0, histograms: bool = True):
        self.log_dir = Path(log_dir)
        self.resume_epoch, self.resume_step = resume_epoch, resume_step
        self.histograms = histograms
        self._writers = None
        self._on_open: list = []  # writes queued until the writers exist

    def _open(self):
        if self._writers is None:
            # lazy: tensorboard and protobuf load when the first scalar is due, after the first step
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops anything an interrupted process logged after its last checkpoint.
            self._writers = (
                SummaryWriter(str(self.log_dir), purge_step=self.resume_epoch + 1 if self.resume_epoch else None),
                SummaryWriter(
                    str(self.log_dir / "steps"), purge_step=self.resume_step + 1 if self.resume_step else None
                ),
            )
            queued, self._on_open = self._on_open, []
            for write in queued:
                write()
        return self._writers

    @property
    def writer(self):
        return self._open()[0]

    @property
    def step_writer(self):
        return self._open()[1]

    def when_open(self, write) -> None:
        """Run `write()` (e.g. the graph or the HParams session) once the writers are opened."""
        if self._writers is None:
            self._on_open.append(write)
        else:
            write()

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
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
        from torch.utils.tensorboard.summary import hparams as hp_summary  # lazy: tensorboard, as above

        exp, ssi, sei = hp_summary(hparams, {tag: 0.0 for tag in metric_tags})
        # SummaryWriter.add_hparams would write into a new sub-folder (a second run in TensorBoard's
        # list); the writer's FileWriter (`file_writer`, what add_hparams itself writes through)
        # puts the session into this run's own event file.
        for s in (exp, ssi, sei):
            self.writer.file_writer.add_summary(s)

    def epoch(self, epoch: int, metrics: dict, model: torch.nn.Module | None = None) -> None:
        for key, tag in EPOCH_TAGS.items():
            if key in metrics and metrics[key] is not None:
                self.writer.add_scalar(tag, metrics[key], epoch)
        if self.histograms and model is not None:
            for name, p in model.named_parameters():
                self.histogram(f"weights/{name}", p, epoch)
        self.writer.flush()
        self.step_writer.flush()

    @torch.no_grad()
    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """A histogram of `values`, binned where they live; only the summary (range, 64 counts,
        sum, sum of squares) is read to the host, once per tensor per epoch.

        As TensorBoard's own binning does, bucket limits are right edges and an empty first
        bucket carries the left edge (the minimum).
        """
        v = values.detach().flatten().float()
        if v.numel() == 0:
            return
        lo, hi = (float(t) for t in torch.aminmax(v))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return  # histc needs a finite range; a diverged run is stopped by the trainer anyway
        if hi > lo:
            counts = [0.0] + torch.histc(v, bins=self.HISTOGRAM_BINS, min=lo, max=hi).tolist()
            limits = torch.linspace(lo, hi, self.HISTOGRAM_BINS + 1, dtype=torch.float64).tolist()
            limits[0], limits[-1] = lo, hi
        else:  # all values equal: one bucket around them, as numpy's histogram makes
            counts, limits = [0.0, float(v.numel())], [lo - 0.5, hi + 0.5]
        self.writer.add_histogram_raw(
            tag,
            min=lo,
            max=hi,
            num=v.numel(),
            sum=float(v.sum()),
            sum_squares=float(v.dot(v)),
            bucket_limits=limits,
            bucket_counts=counts,
            global_step=step,
        )

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
        for w in self._open():  # a run that logged nothing still gets its queued writes
            w.close()
