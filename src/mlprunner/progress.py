"""Console output that fits 80 columns: one line per epoch, and on a terminal a live bar.

Every epoch line goes through the `mlprunner` logger (so it is on the console and in
mlprun.log); on a terminal a one-line bar (epoch, steps, loss, samples/s, time left) is redrawn
four times a second by rich's refresh thread while the epoch trains, and erased when it ends.
The training loop only stores the step number (`step()`), so the bar costs no device sync;
the loss shown is the last logged window's mean (trainer.log_every_n_steps).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

log = logging.getLogger("mlprunner")

LEGEND = "epoch  train: loss error  val: loss error  lr  seconds  samples/s"


def fmt_pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def item_lines(head: str, items: list[str], width: int | None = None) -> list[str]:
    """`head` and the items, comma-separated, folded between items to the terminal's width (80
    when not a terminal); the lines after the first indented by two spaces."""
    width = width or shutil.get_terminal_size((80, 24)).columns
    lines, line = [], head.rstrip()
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if line != head.rstrip() and len(line) + 1 + len(piece) > width:  # the head keeps one item
            lines.append(line)
            line = "  " + piece
        else:
            line += " " + piece
    return [*lines, line]


def fmt_rate(x: float) -> str:
    """45.3k/s, 1.23M/s: samples per second in at most 7 characters."""
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            v = x / div
            return f"{v:.3g}{unit}/s" if v < 100 else f"{v:.0f}{unit}/s"
    return f"{x:.0f}/s"


def fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(round(s)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def fmt_loss(x: float) -> str:
    """Four decimals below 10, so the epoch lines' columns stay put (0.0230, not 0.023 beside
    0.02299); four significant digits above (12.35, 1e+08), so a line keeps within 80 columns."""
    return f"{x:.4f}" if abs(x) < 10 else f"{x:.4g}"


def epoch_line(epoch: int, epochs: int, m: dict, seconds: float, samples_per_s: float) -> str:
    """`epoch 3/20  train 0.1234 3.21%  val 0.1321 3.40%  lr 1.0e-03  1.2s  45.0k/s` (loss,
    error; at most ~78 characters for runs under 1000 epochs)."""
    parts = [f"epoch {epoch}/{epochs}", f"train {fmt_loss(m['train/loss'])} {fmt_pct(m['train/error'])}"]
    if m.get("val/loss") is not None:
        parts.append(f"val {fmt_loss(m['val/loss'])} {fmt_pct(m['val/error'])}")
    parts.append(f"lr {m['lr']:.1e}")
    parts.append(fmt_seconds(seconds))
    parts.append(fmt_rate(samples_per_s))
    return "  ".join(parts)


def with_prefix(prefix: str, line: str, width: int = 80) -> str:
    """`prefix` + an epoch or legend line in `width` columns: its double-spaced fields get single
    spaces, then the last fields (samples/s, seconds) are dropped while it is still too wide."""
    if len(prefix) + len(line) <= width:
        return prefix + line
    fields = line.split("  ")
    while len(fields) > 3 and len(prefix) + len(" ".join(fields)) > width:
        fields.pop()
    return prefix + " ".join(fields)


class ConsoleFormatter(logging.Formatter):
    """The console's formatter (configs/hydra/job_logging/mlprun.yaml): an epoch or legend line of
    a job beside others, logged with `extra={"fit": (prefix, line, width)}`, is made to fit the
    terminal (with_prefix); mlprun.log's formatter writes the whole line."""

    def format(self, record: logging.LogRecord) -> str:
        fit = getattr(record, "fit", None)
        return with_prefix(*fit) if fit else super().format(record)


class JobLines(logging.Filter):
    """On mlprun's logger while a job runs beside others (prefixed_lines): each of its lines starts
    with the job's prefix, as its epoch lines do, so two jobs' `data:` or layer lines interleaved
    on one terminal can be told apart."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith(self.prefix):
            record.msg, record.args = "\n".join(self.prefix + line for line in text.splitlines()), ()
        return True


@contextlib.contextmanager
def prefixed_lines(prefix: str):
    """Every line mlprun logs inside starts with `prefix` (none when it is "")."""
    if not prefix:
        yield
        return
    lines = JobLines(prefix)
    log.addFilter(lines)
    try:
        yield
    finally:
        log.removeFilter(lines)


_SHOWN: list[Progress] = []  # the Progress objects whose live bar is on the screen now


def erase_bars() -> None:
    """Erase every live bar, so that a line logged from outside the loop (a signal's warning)
    starts on a line of its own; the bar comes back with the next epoch."""
    for progress in list(_SHOWN):
        progress._stop_bar()


class Progress:
    """mode: rich (live bar + epoch lines), plain (epoch lines), none (silent), auto (rich on a TTY)."""

    REFRESH_PER_SECOND = 4

    def __init__(
        self, mode: str, epochs: int, steps_per_epoch: int, batch_size: int, prefix: str = "", val: bool = True
    ):
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.batch_size = batch_size
        self.prefix = prefix  # a parallel job's short name
        self._live: Live | None = None
        self._console = Console(highlight=False) if mode == "rich" else None
        self._epoch, self._done, self._loss = 0, 0, None
        self._t0 = time.perf_counter()
        self._legend = False
        # the epoch lines' columns: no val fields without a validation split (dataset.val_fraction=0)
        self.legend = LEGEND if val else LEGEND.replace("  val: loss error", "")

    # --------------------------------------------------------------- the live bar
    def __rich__(self) -> Text:
        """The bar as it is now (called by rich's refresh thread)."""
        done, steps = self._done, max(self.steps, 1)
        dt = max(time.perf_counter() - self._t0, 1e-9)
        rate = done * self.batch_size / dt
        left = f"{self.prefix}epoch {self._epoch}/{self.epochs} "
        right = f" {done}/{steps}"
        if self._loss is not None:
            right += f" loss {self._loss:.4g}"
        if done:
            right += f" {fmt_rate(rate)} {fmt_seconds((steps - done) * dt / done)} left"
        width = max(10, (self._console.width if self._console else 80) - len(left) - len(right) - 1)
        filled = min(width, round(width * done / steps))
        return Text.assemble(left, ("━" * filled, "magenta"), ("━" * (width - filled), "bright_black"), right)

    def start_epoch(self, epoch: int) -> None:
        self._t0 = time.perf_counter()
        self._epoch, self._done, self._loss = epoch, 0, None
        if not self._legend and self.mode != "none":
            self._legend = True
            self._emit(self.legend, fit=True)
        if self.mode == "rich" and self._live is None:
            self._live = Live(
                self,
                console=self._console,
                refresh_per_second=self.REFRESH_PER_SECOND,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
            _SHOWN.append(self)

    def step(self, step_in_epoch: int) -> None:
        """Every training step: only remembers where the epoch is (the bar redraws by time)."""
        self._done = step_in_epoch

    def update(self, step_in_epoch: int, loss: float) -> None:
        """Every trainer.log_every_n_steps steps: the window's mean loss."""
        self._done, self._loss = step_in_epoch, loss

    def _stop_bar(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            if self in _SHOWN:
                _SHOWN.remove(self)
            live.stop()  # transient: the bar is erased

    def _emit(self, text: str, fit: bool = False) -> None:
        """fit: an epoch or legend line, made to fit the terminal (COLUMNS, else 80 off a terminal)
        beside a parallel job's prefix on the console (ConsoleFormatter), whole in mlprun.log."""
        self._stop_bar()
        # a console's width, else the terminal's (COLUMNS), 80 off one
        width = self._console.width if self._console is not None else shutil.get_terminal_size().columns
        extra = {"fit": (self.prefix, text, width)} if fit else None
        log.info(f"{self.prefix}{text}", extra=extra)

    def end_epoch(self, epoch: int, metrics: dict, seconds: float, samples: int) -> None:
        if self.mode != "none":
            self._emit(epoch_line(epoch, self.epochs, metrics, seconds, samples / max(seconds, 1e-9)), fit=True)

    def message(self, text: str) -> None:
        if self.mode != "none":
            self._emit(text)

    def close(self) -> None:
        self._stop_bar()
