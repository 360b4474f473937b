"""The results table of a sweep (or of any folder of runs): summary.csv, summary.md, a rich
table sorted by validation error, and PNG plots (validation error against each swept parameter,
all jobs' validation curves on one figure).

Written at the end of every multirun by `hydra_callbacks.SweepSummary`; `mlprun-report DIR`
rebuilds it for an existing sweep folder or a folder of single runs.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from .checkpoint import atomic_write_text
from .plots import _plt
from .results import read_results

SKIP_DIRS = {"tensorboard", "checkpoints", ".hydra", ".submitit", "__pycache__"}
COLUMNS = [
    "job",
    "overrides",
    "status",
    "reason",
    "best_val_error",
    "best_epoch",
    "final_train_error",
    "epochs",
    "wall_s",
    "test_error",
]


class ReportError(Exception):
    """A folder that cannot be reported on (exit code 2)."""


# ---------------------------------------------------------------- collecting the jobs


def find_jobs(folder: Path, max_depth: int = 4) -> list[Path]:
    """Run folders at or below `folder`: those holding results.json or .hydra/overrides.yaml."""
    folder = Path(folder)

    def is_job(d: Path) -> bool:
        return (d / "results.json").is_file() or (d / ".hydra" / "overrides.yaml").is_file()

    if is_job(folder):
        return [folder]
    found, stack = [], [(folder, 0)]
    while stack:
        d, depth = stack.pop()
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            if child.name in SKIP_DIRS or child.name.startswith("."):
                continue
            if is_job(child):
                found.append(child)
            elif depth + 1 < max_depth:
                stack.append((child, depth + 1))
    return sorted(found)


def split_override(override: str) -> tuple[str, str]:
    key, _, value = str(override).partition("=")
    return key.lstrip("+~"), value


def _read_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        return [str(o) for o in OmegaConf.load(path)]
    except Exception:
        return []


def load_job(folder: Path, job_dir: Path) -> dict:
    """One row of the table from a job's results.json (and .hydra/overrides.yaml)."""
    results = read_results(job_dir) or {}
    overrides = results.get("overrides")
    if overrides is None:
        overrides = _read_overrides(job_dir)
    best = results.get("best") or {}
    last = results.get("last") or {}
    name = job_dir.relative_to(folder).as_posix() if job_dir != folder else job_dir.name
    status = results.get("status") or "not started"
    return {
        "job": name,
        "dir": job_dir,
        "overrides": [str(o) for o in overrides],
        "params": dict(split_override(o) for o in overrides),
        "status": status,
        "reason": results.get("reason"),
        "best_val_error": (best.get("val") or {}).get("error"),
        "best_epoch": best.get("epoch"),
        "final_train_error": (last.get("train") or {}).get("error"),
        "epochs": results.get("epochs_completed"),
        "wall_s": results.get("wall_s"),
        "test_error": (results.get("test") or {}).get("error"),
        "history": results.get("history") or [],
    }


def swept_keys(jobs: list[dict]) -> list[str]:
    """Override keys whose value differs between jobs (or that only some jobs set)."""
    keys: list[str] = []
    for job in jobs:
        for key in job["params"]:
            if key not in keys:
                keys.append(key)
    if len(jobs) < 2:
        return []
    return [k for k in keys if len({j["params"].get(k) for j in jobs}) > 1]


def _sort_key(job: dict):
    err = job["best_val_error"]
    failed = job["status"] != "completed"
    return (err is None, failed, err if err is not None else math.inf, job["job"])


def collect(folder: Path) -> tuple[list[dict], list[str]]:
    """(jobs sorted by best validation error, swept keys) for a folder of runs."""
    folder = Path(folder)
    if not folder.exists():
        raise ReportError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ReportError(f"{folder}: not a folder (give a sweep folder or a folder of runs)")
    job_dirs = find_jobs(folder)
    if not job_dirs:
        raise ReportError(f"{folder}: no runs found (no results.json or .hydra/overrides.yaml below it)")
    jobs = sorted((load_job(folder, d) for d in job_dirs), key=_sort_key)
    return jobs, swept_keys(jobs)


# ---------------------------------------------------------------- the table


def _label(job: dict, keys: list[str]) -> str:
    if keys:
        return " ".join(f"{k}={job['params'][k]}" for k in keys if k in job["params"])
    return " ".join(job["overrides"])


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _num(x, fmt="{}") -> str:
    return "" if x is None else fmt.format(x)


def write_csv(jobs: list[dict], keys: list[str], path: Path) -> Path:
    has_test = any(j["test_error"] is not None for j in jobs)
    cols = COLUMNS[:2] + keys + COLUMNS[2:] if has_test else COLUMNS[:2] + keys + COLUMNS[2:-1]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for job in jobs:
        row = {c: job.get(c) for c in cols}
        row["overrides"] = " ".join(job["overrides"])
        for k in keys:
            row[k] = job["params"].get(k, "")
        writer.writerow({c: "" if v is None else v for c, v in row.items()})
    atomic_write_text(path, buf.getvalue())
    return path


def table_rows(jobs: list[dict], keys: list[str]) -> list[list[str]]:
    rows = []
    for i, job in enumerate(jobs, 1):
        rows.append(
            [
                str(i),
                _label(job, keys) or job["job"],
                job["status"],
                _pct(job["best_val_error"]),
                _num(job["best_epoch"]),
                _pct(job["final_train_error"]),
                _num(job["epochs"]),
                _num(job["wall_s"], "{:.1f}"),
            ]
        )
    return rows


HEADERS = ["#", "overrides", "status", "best val err %", "best epoch", "final train err %", "epochs", "wall s"]


def counts(jobs: list[dict]) -> str:
    by_status: dict[str, int] = {}
    for job in jobs:
        by_status[job["status"]] = by_status.get(job["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))


def write_markdown(folder: Path, jobs: list[dict], keys: list[str], path: Path, plots: list[Path]) -> Path:
    lines = [
        f"# Sweep summary: {folder}",
        "",
        f"{len(jobs)} jobs ({counts(jobs)}); sorted by best validation error."
        + (f" Swept: {', '.join(f'`{k}`' for k in keys)}." if keys else ""),
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---:" if h not in ("overrides", "status") else "---" for h in HEADERS) + "|",
    ]
    for row in table_rows(jobs, keys):
        row[1] = f"`{row[1]}`"
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    failed = [j for j in jobs if j["status"] != "completed"]
    if failed:
        lines += ["", "## Not completed", ""]
        lines += [f"- `{j['job']}` ({j['status']}): {j['reason'] or 'no reason recorded'}" for j in failed]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def print_table(folder: Path, jobs: list[dict], keys: list[str], console=None) -> None:
    console = console or Console()
    table = Table(title=f"sweep {folder}: {len(jobs)} jobs ({counts(jobs)})")
    for h in HEADERS:
        table.add_column(
            h,
            justify="left" if h in ("overrides", "status") else "right",
            overflow="fold" if h == "overrides" else "ellipsis",
        )
    for job, row in zip(jobs, table_rows(jobs, keys)):
        style = None if job["status"] == "completed" else "red"
        table.add_row(*row, style=style)
    console.print(table)
    for job in jobs:
        if job["status"] != "completed":
            console.print(
                f"[red]{job['job']}[/red] {job['status']}: {job['reason'] or 'no reason recorded'}", highlight=False
            )


# ---------------------------------------------------------------- plots


def _as_number(value: str):
    if value.lower() in ("true", "false", "nan", "inf", "-inf", "null", "none"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "param"


def _save(fig, path: Path, plt) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_param(jobs: list[dict], key: str, path: Path) -> Path | None:
    """Best validation error of every job against one swept parameter (one point per job;
    categories get the mean as a bar, so the trend shows, not only the best)."""
    points = [
        (j["params"].get(key), 100 * j["best_val_error"])
        for j in jobs
        if j["best_val_error"] is not None and key in j["params"]
    ]
    if not points:
        return None
    plt = _plt()
    numbers = [_as_number(v) for v, _ in points]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if all(n is not None for n in numbers) and len(set(numbers)) > 4:
        ax.scatter(numbers, [e for _, e in points], alpha=0.8)
        lo, hi = min(numbers), max(numbers)
        if lo > 0 and hi / lo >= 50:
            ax.set_xscale("log")
    else:
        if all(n is not None for n in numbers):
            cats = [v for _, v in sorted({(n, v) for n, (v, _) in zip(numbers, points)})]
        else:
            cats = sorted({v for v, _ in points}, key=lambda v: (len(v), v))
        cats = list(dict.fromkeys(cats))
        pos = {c: i for i, c in enumerate(cats)}
        per = {c: [e for v, e in points if v == c] for c in cats}
        for c in cats:
            n = len(per[c])
            xs = [pos[c] + (0.12 * (i - (n - 1) / 2) / max(1, n - 1) * 2 if n > 1 else 0) for i in range(n)]
            ax.scatter(xs, per[c], alpha=0.75, color="tab:blue", zorder=3)
            mean = sum(per[c]) / n
            ax.hlines(
                mean,
                pos[c] - 0.3,
                pos[c] + 0.3,
                color="tab:orange",
                lw=2,
                zorder=2,
                label="mean" if c == cats[0] else None,
            )
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(
            cats,
            rotation=30 if max(len(c) for c in cats) > 8 else 0,
            ha="right" if max(len(c) for c in cats) > 8 else "center",
        )
        ax.legend(loc="best")
    ax.set(xlabel=key, ylabel="best validation error (%)", title=f"validation error vs {key} ({len(points)} jobs)")
    ax.grid(alpha=0.3)
    return _save(fig, path, plt)


def plot_curves(jobs: list[dict], keys: list[str], path: Path, max_legend: int = 12) -> Path | None:
    """Every job's validation error per epoch on one figure (best jobs labelled)."""
    with_curves = [j for j in jobs if any(h.get("val") for h in j["history"])]
    if not with_curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5))
    for rank, job in enumerate(with_curves):
        hist = [h for h in job["history"] if h.get("val")]
        label = (_label(job, keys) or job["job"]) if rank < max_legend else None
        ax.plot(
            [h["epoch"] for h in hist],
            [100 * h["val"]["error"] for h in hist],
            marker="o" if len(hist) < 30 else None,
            ms=3,
            lw=1.4 if rank < max_legend else 0.8,
            alpha=1.0 if rank < max_legend else 0.4,
            label=label,
        )
    from matplotlib.ticker import MaxNLocator  # lazy: matplotlib (see plots._plt)

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel="epoch",
        ylabel="validation error (%)",
        title=f"validation error per epoch, {len(with_curves)} jobs"
        + (f" (legend: best {max_legend})" if len(with_curves) > max_legend else ""),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path, plt)


# ---------------------------------------------------------------- entry points


def build_report(
    folder: Path,
    console=None,
    show: bool = True,
    plots: bool = True,
    collected: tuple[list[dict], list[str]] | None = None,
) -> dict:
    """Write summary.csv, summary.md and the plots into `folder`; print the table if `show`.

    `collected`: the (jobs, keys) `collect(folder)` already returned, to read the jobs once.
    """
    folder = Path(folder)
    jobs, keys = collected or collect(folder)
    made: list[Path] = []
    if plots:
        for key in keys:
            p = plot_param(jobs, key, folder / f"val_error_vs_{_safe(key)}.png")
            if p:
                made.append(p)
        p = plot_curves(jobs, keys, folder / "val_curves.png")
        if p:
            made.append(p)
    csv_path = write_csv(jobs, keys, folder / "summary.csv")
    md_path = write_markdown(folder, jobs, keys, folder / "summary.md", made)
    if show:
        if console is None:
            console = Console()
            if not console.is_terminal:  # logs and pipes: do not squeeze the table into 80 columns
                console = Console(width=140)
        print_table(folder, jobs, keys, console)
        console.print(
            f"summary: {csv_path}, {md_path}; plots: {', '.join(p.name for p in made) or 'none'}; "
            f"HParams: tensorboard --logdir {folder}",
            highlight=False,
        )
    return {"jobs": jobs, "keys": keys, "csv": csv_path, "md": md_path, "plots": made}


if __name__ == "__main__":  # python -m mlprunner.report: the same as mlprun-report
    from .cli import report_main

    report_main()
