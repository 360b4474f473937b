"""Console output: a rich live display on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

log = logging.getLogger("mlprunner")


def fmt_pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def epoch_line(epoch: int, epochs: int, m: dict, seconds: float, samples_per_s: float) -> str:
    parts = [f"epoch {epoch}/{epochs}", f"train loss {m['train/loss']:.4f} err {fmt_pct(m['train/error'])}"]
    if m.get("val/loss") is not None:
        parts.append(f"val loss {m['val/loss']:.4f} err {fmt_pct(m['val/error'])}")
    parts.append(f"lr {m['lr']:.2e}")
    parts.append(f"{samples_per_s:,.0f} samples/s")
    parts.append(f"{seconds:.1f}s")
    return "  ".join(parts)


class Progress:
    """mode: rich (live bar), plain (one line per epoch), none (silent), auto (rich on a TTY)."""

    def __init__(self, mode: str, epochs: int, steps_per_epoch: int, batch_size: int):
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.batch_size = batch_size
        self._live = None
        self._task = None
        self._t0 = time.perf_counter()
        if mode == "rich":
            self._live = RichProgress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[speed]} samples/s"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._live.start()

    def start_epoch(self, epoch: int) -> None:
        self._t0 = time.perf_counter()
        if self._live is not None:
            if self._task is not None:
                self._live.remove_task(self._task)
            self._task = self._live.add_task(
                "train", total=self.steps, epoch=epoch, epochs=self.epochs, loss="-", speed="-"
            )

    def update(self, step_in_epoch: int, loss: float) -> None:
        if self._live is not None and self._task is not None:
            dt = max(time.perf_counter() - self._t0, 1e-9)
            self._live.update(
                self._task,
                completed=step_in_epoch,
                loss=f"{loss:.4f}",
                speed=f"{step_in_epoch * self.batch_size / dt:,.0f}",
            )

    def end_epoch(self, epoch: int, metrics: dict, seconds: float, samples: int) -> None:
        line = epoch_line(epoch, self.epochs, metrics, seconds, samples / max(seconds, 1e-9))
        if self._live is not None:
            self._live.console.log(line)
        elif self.mode == "plain":
            log.info(line)

    def message(self, text: str) -> None:
        if self._live is not None:
            self._live.console.log(text)
        elif self.mode != "none":
            log.info(text)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
