"""Where the time goes: `trainer.profile=true`.

`StepProfiler` splits every training step into phases (data, forward, backward, optimizer,
metrics, logging) with laps of a wall clock that first waits for the device (synchronising
timers, so only when profiling), adds the per-epoch phases (validation, epoch_end: TensorBoard,
checkpoints, results) and writes `profile.json` and `profile.txt` into the run directory after
each epoch. For a few steps of the first profiled epoch it also records a torch.profiler trace,
`profile_trace.json` (open it in chrome://tracing or https://ui.perfetto.dev).

When profiling is off the trainer uses `NullProfiler`, whose methods do nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from .checkpoint import atomic_write_json, atomic_write_text

STEP_PHASES = ("data", "forward", "backward", "optimizer", "metrics", "logging")
EPOCH_PHASES = ("validation", "epoch_end")
TRACE_FILE = "profile_trace.json"


def process_start_time() -> float | None:
    """The Unix time this process started (Linux /proc), or None where that is unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5), counted after the ')' of comm
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class NullProfiler:
    """Profiling off: every hook is a no-op (a few attribute look-ups per step)."""

    enabled = False

    def begin_epoch(self, epoch: int) -> None:
        pass

    def lap(self, phase: str) -> None:
        pass

    def end_step(self) -> None:
        pass

    def end_epoch(self) -> None:
        pass

    def add(self, phase: str, seconds: float) -> None:
        pass

    def write(self) -> None:
        pass


class StepProfiler:
    def __init__(
        self, run_dir: Path, device: torch.device, trace_steps: int = 5, trace_wait: int = 3, trace_warmup: int = 2
    ):
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.enabled = True
        self.totals = {p: 0.0 for p in STEP_PHASES + EPOCH_PHASES}
        self.steps = 0
        self.epochs = 0
        self.samples = 0
        self._t = 0.0
        self._trace = None
        self._trace_left = trace_wait + trace_warmup + trace_steps
        self._trace_schedule = (trace_wait, trace_warmup, trace_steps)
        self._trace_done = False
        self._range = None  # the open record_function range of the current phase (trace only)
        self._phase_i = 0

    # ---------------------------------------------------------------- timing
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def _now(self) -> float:
        self._sync()
        return time.perf_counter()

    def begin_epoch(self, epoch: int) -> None:
        if not self._trace_done and self._trace is None:
            self._start_trace()
        self._phase_i = 0
        self._open_range()
        self._t = self._now()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap to `phase`."""
        t = self._now()
        self.totals[phase] += t - self._t
        self._t = t
        if self._trace is not None:
            self._close_range()
            self._phase_i = (STEP_PHASES.index(phase) + 1) % len(STEP_PHASES)
            self._open_range()

    def end_step(self) -> None:
        self.steps += 1
        if self._trace is not None:
            self._trace.step()
            self._trace_left -= 1
            if self._trace_left <= 0:
                self._stop_trace()

    def end_epoch(self) -> None:
        self.epochs += 1
        self._close_range()
        if self._trace is not None:  # an epoch shorter than the trace schedule
            self._stop_trace()

    def add(self, phase: str, seconds: float) -> None:
        self.totals[phase] = self.totals.get(phase, 0.0) + seconds

    # ---------------------------------------------------------------- torch.profiler trace
    def _start_trace(self) -> None:
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        else:  # kineto (read when the profiler first starts) logs "ERROR ... gpuGetDeviceCount failed"
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # on a machine without a GPU: not ours to show
        wait, warmup, active = self._trace_schedule
        path = self.run_dir / TRACE_FILE

        def ready(prof):
            prof.export_chrome_trace(str(path))

        self._trace = profile(
            activities=activities,
            record_shapes=False,
            schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=ready,
        )
        self._trace.__enter__()

    def _stop_trace(self) -> None:
        self._close_range()
        trace, self._trace = self._trace, None
        self._trace_done = True
        trace.__exit__(None, None, None)

    def _open_range(self) -> None:
        if self._trace is not None and self._range is None:
            self._range = torch.profiler.record_function(f"mlprun/{STEP_PHASES[self._phase_i]}")
            self._range.__enter__()

    def _close_range(self) -> None:
        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None

    # ---------------------------------------------------------------- report
    def summary(self) -> dict:
        total = sum(self.totals.values()) or 1.0
        phases = {}
        for name, sec in self.totals.items():
            per = STEP_PHASES if name in STEP_PHASES else EPOCH_PHASES
            count = self.steps if per is STEP_PHASES else self.epochs
            phases[name] = {
                "total_s": round(sec, 6),
                "share": round(sec / total, 4),
                "per": "step" if per is STEP_PHASES else "epoch",
                "mean_ms": round(1000 * sec / count, 4) if count else None,
            }
        trace = self.run_dir / TRACE_FILE
        return {
            "device": str(self.device),
            "steps": self.steps,
            "epochs": self.epochs,
            "total_s": round(total, 6),
            "phases": phases,
            "synchronising_timers": self.device.type in ("cuda", "mps"),
            "trace": TRACE_FILE if trace.is_file() else None,
        }

    def table(self, summary: dict | None = None) -> str:
        s = summary or self.summary()
        lines = [
            f"mlprun profile: {s['steps']} steps, {s['epochs']} epochs on {s['device']} (timed: {s['total_s']:.3f} s)",
            f"{'phase':<12} {'total s':>10} {'share':>7} {'mean ms':>10}  per",
            "-" * 48,
        ]
        for name, p in s["phases"].items():
            mean = f"{p['mean_ms']:.3f}" if p["mean_ms"] is not None else "-"
            lines.append(f"{name:<12} {p['total_s']:>10.3f} {100 * p['share']:>6.1f}% {mean:>10}  {p['per']}")
        if s["trace"]:
            lines.append(f"torch.profiler trace of a few steps: {s['trace']}")
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        summary = self.summary()
        atomic_write_json(self.run_dir / "profile.json", summary)
        atomic_write_text(self.run_dir / "profile.txt", self.table(summary))


def make_profiler(enabled: bool, run_dir: Path, device) -> NullProfiler | StepProfiler:
    return StepProfiler(run_dir, device) if enabled else NullProfiler()
