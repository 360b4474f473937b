"""results.json (the run's machine-readable outcome) and the end-of-run summary table."""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from rich.console import Console
from rich.table import Table

from .checkpoint import atomic_write_json
from .errors import MlprunError, first_line

RESULTS = "results.json"
log = logging.getLogger("mlprunner")


def wilson_interval(errors: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion errors/n."""
    if n == 0:
        return (0.0, 1.0)
    if errors == 0:  # the closed form's lower end is 0 up to rounding (4e-19): say 0
        return (0.0, min(1.0, z * z / n / (1 + z * z / n)))
    p = errors / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


_NUMBER = (int, float)
# the keys of results.json something reads back, and the JSON types each may hold
SHAPE = {
    "status": (str,),
    "reason": (str, type(None)),
    "epochs_completed": (int, type(None)),
    "best": (dict, type(None)),
    "last": (dict, type(None)),
    "test": (dict, type(None)),
    "dataset": (dict, type(None)),
    "overrides": (list,),
    "history": (list,),
    "resumed": (list,),
    "wall_s": (*_NUMBER, type(None)),
}


def _json_type(value) -> str:
    for kind, name in ((bool, "boolean"), (dict, "object"), (list, "list"), (str, "string"), (_NUMBER, "number")):
        if isinstance(value, kind):
            return name
    return "null"


def results_problem(data) -> str | None:
    """What makes `data` no results.json of mlprun's (wrong JSON types where mlprun reads), or None."""
    if not isinstance(data, dict):
        return f"it holds a JSON {_json_type(data)}, not an object"
    for key, kinds in SHAPE.items():
        value = data.get(key)
        if key in data and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            allowed = " or ".join(dict.fromkeys(_json_type(k()) if k is not type(None) else "null" for k in kinds))
            return f"'{key}' is a {_json_type(value)}, expected {allowed}"
    for block in ("best", "last", "test"):
        for sub in ("val", "train"):
            value = (data.get(block) or {}).get(sub)
            if value is not None and not isinstance(value, dict):
                return f"'{block}.{sub}' is a {_json_type(value)}, expected object or null"
    for item in data.get("history") or []:
        if not isinstance(item, dict):
            return f"'history' holds a {_json_type(item)}, expected objects"
    return None


def _load_results(path: Path) -> tuple[dict | None, str | None]:
    """(results, None), or (None, what is wrong with the file); (None, None) when it is absent."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    except ValueError as exc:
        return None, f"it is not valid JSON ({first_line(exc)})"
    problem = results_problem(data)
    return (None, problem) if problem else (data, None)


def results_file_problem(run_dir: Path) -> str | None:
    """Why the run's results.json is no mlprun results file; None when it is one or absent."""
    return _load_results(Path(run_dir) / RESULTS)[1]


def read_results(run_dir: Path, strict: bool = False) -> dict | None:
    """The run's results.json as a dict; None when absent, or (not strict) unreadable or of
    the wrong shape. strict: such a file is an MlprunError naming it (resume will not replace
    a file it cannot read)."""
    path = Path(run_dir) / RESULTS
    data, problem = _load_results(path)
    if problem and strict:
        raise MlprunError(
            f"{path} is not an mlprun results file: {problem}; restore it, or move it away to go on "
            f"without it (a new one is written)"
        )
    return data


class ResultsFile:
    """Keeps results.json current: written atomically at start, after each epoch and at the end."""

    def __init__(self, run_dir: Path, base: dict):
        self.path = Path(run_dir) / RESULTS
        self.data = {"status": "running", "reason": None, "epochs_completed": 0, "best": None, "last": None, **base}

    def update(self, **fields) -> None:
        self.data.update(fields)
        atomic_write_json(self.path, self.data)

    def from_history(self, history: list, best_epoch: int | None) -> dict:
        """best/last blocks of the contract from the per-epoch history."""
        if not history:
            return {"epochs_completed": 0, "best": None, "last": None}
        last = history[-1]
        best_rec = next((h for h in history if h["epoch"] == best_epoch), last)
        out = {
            "epochs_completed": last["epoch"],
            "best": {"epoch": best_rec["epoch"], "val": best_rec["val"], "train": best_rec["train"]},
            "last": {"epoch": last["epoch"], "train": last["train"], "val": last["val"], "lr": last["lr"]},
            "history": history,
        }
        if last.get("train_eval") is not None:  # trainer.eval_train
            out["last"]["train_eval"] = last["train_eval"]
        return out


def print_summary(results: dict, console=None) -> None:
    """The run's closing table; the test row carries its Wilson 95% interval (the honest number to
    quote) beside its error, as the test line logged before the table does."""
    # highlight=False: rich's number highlighting split "wall 1.8s" into a coloured "1." and "8s"
    console = console or Console(highlight=False)
    table = Table(title=f"mlprun: {results.get('status')}", show_header=True)
    table.add_column("")
    table.add_column("epoch", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("error", justify="right")
    table.add_column("accuracy", justify="right")
    test = results.get("test")
    if test:
        table.add_column("error 95% CI", justify="right")

    def row(label, epoch, m, ci=()):
        if m:
            cells = [str(epoch), f"{m['loss']:.4f}", f"{100 * m['error']:.2f}%", f"{100 * m['accuracy']:.2f}%"]
            table.add_row(label, *cells, *ci)

    last, best = results.get("last") or {}, results.get("best") or {}
    row("train (last)", last.get("epoch"), last.get("train"))
    row("train (eval)", last.get("epoch"), last.get("train_eval"))  # trainer.eval_train
    row("val (last)", last.get("epoch"), last.get("val"))
    row("val (best)", best.get("epoch"), best.get("val"))
    swa = results.get("swa") or {}
    row("val (swa)", last.get("epoch"), swa.get("val"))  # the averaged model, scored after training
    if test:
        lo, hi = test["ci95"]
        row(f"test (n={test['n']})", test.get("epoch", best.get("epoch")), test, [f"{100 * lo:.2f}-{100 * hi:.2f}%"])
    console.print(table)
    extra = f"wall {results.get('wall_s', 0):.1f}s on {results.get('device')}, {results.get('n_params'):,} parameters"
    console.print(extra)


def launch_dir() -> Path:
    """The folder mlprun was started in (with hydra.job.chdir=true, Hydra has since changed the
    current folder to the run's)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def short_path(path) -> str:
    """`path` relative to the folder mlprun was started in when it lies below it (shorter to
    read and copy, and right where the user types the next command), else absolute: a relative
    path names a place from the current folder, which hydra.job.chdir=true made the run's."""
    path = Path(path)
    try:
        rel = path.resolve().relative_to(launch_dir().resolve())
        return str(rel)
    except (ValueError, OSError):
        return os.path.abspath(path)


def closing_lines(results: dict) -> list[str]:
    """Where the run is, how to look at it and how to continue it."""
    run_dir = Path(results.get("run_dir") or ".")
    run = shlex.quote(short_path(run_dir))
    lines = [f"run folder: {run}"]
    if results.get("tensorboard"):
        tb = os.path.normpath(run_dir / results["tensorboard"])
        lines.append(f"tensorboard --logdir {shlex.quote(short_path(tb))}")
    epochs = results.get("epochs_completed") or 0
    uri = (results.get("mlflow") or {}).get("tracking_uri")
    if uri:
        for scheme in ("sqlite:///", "file:"):  # a local store: its path as short as the others
            if uri.startswith(scheme):
                uri = scheme + short_path(uri[len(scheme) :])
        lines.append(f"mlflow ui --backend-store-uri {shlex.quote(uri)}")
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return lines  # nothing to resume from (trainer.checkpoint.save_last=false, debug=fast_dev_run)
    if results.get("status") == "completed" and results.get("stopped_early"):
        # more epochs alone would do nothing: the stop holds until the patience allows more
        lines.append(f"train longer: mlprun resume={run} trainer.early_stopping.enabled=false")
    elif results.get("status") == "completed":
        more = f" trainer.epochs={2 * epochs}" if epochs else ""
        lines.append(f"train longer: mlprun resume={run}{more}")
    else:
        lines.append(f"continue: mlprun resume={run}")
    return lines


def job_line(prefix: str, results: dict) -> str:
    """A job's end in one line, for a job that runs beside others (its table would interleave
    with theirs; the sweep's summary has them all): `[lr=0.01] completed; best val error 0.69% at
    epoch 14; 20 epochs in 3.1s`."""
    best = results.get("best") or {}
    error = (best.get("val") or {}).get("error")
    parts = [f"{prefix}{results.get('status')}"]
    if error is not None:
        parts.append(f"best val error {100 * error:.2f}% at epoch {best.get('epoch')}")
    if results.get("test"):
        parts.append(f"test error {100 * results['test']['error']:.2f}%")
    parts.append(f"{results.get('epochs_completed') or 0} epochs in {results.get('wall_s') or 0:.1f}s")
    return "; ".join(parts)


def print_closing(results: dict) -> None:
    for line in closing_lines(results):
        log.info(line)
