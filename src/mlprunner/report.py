"""The results table of a sweep (or of any folder of runs): summary.csv, summary.md, a rich
table sorted by validation error, and PNG plots (validation error against each swept parameter,
all jobs' validation curves on one figure).

Written at the end of every multirun by `hydra_callbacks.SweepSummary`; `mlprun-report DIR`
rebuilds it for an existing sweep folder or a folder of single runs.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import statistics
import textwrap
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .checkpoint import atomic_write_text
from .errors import EXIT_CONFIG, MlprunError
from .plots import _plt, save_figure
from .progress import item_lines
from .results import RESULTS, read_results, results_file_problem
from .runs import submission_file
from .sessions import BASIC_SWEEPER, NOT_HPARAMS, short_keys, shown_value

SKIP_DIRS = {"tensorboard", "checkpoints", ".hydra", ".submitit", "__pycache__"}
COLUMNS = [
    "job",
    "overrides",
    "status",
    "reason",
    "best_val_error",
    "best_epoch",
    "last_train_error",
    "epochs",
    "wall_s",
    "test_error",
]


class ReportError(MlprunError):
    """A folder that cannot be reported on (exit code 2)."""

    exit_code = EXIT_CONFIG


# ---------------------------------------------------------------- collecting the jobs


def is_run(d: Path) -> bool:
    """A run folder: it holds results.json or .hydra/overrides.yaml."""
    return (d / RESULTS).is_file() or (d / ".hydra" / "overrides.yaml").is_file()


def find_jobs(folder: Path, max_depth: int = 4) -> list[Path]:
    """Run folders below `folder` (see is_run)."""
    folder = Path(folder)
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
            if is_run(child):
                found.append(child)
            elif depth + 1 < max_depth:
                stack.append((child, depth + 1))
    return sorted(found)


def split_override(override: str) -> tuple[str, str]:
    key, _, value = str(override).partition("=")
    return key.lstrip("+~"), value


def values_as_configured(overrides: list[str]) -> dict[str, str]:
    """{key: value} of overrides, each value written as format_value writes a config's (`true`,
    `[32]`), not as Hydra's sweeper spells it (`True`); an override Hydra cannot parse, as written."""
    parser = OverridesParser.create()
    out = {}
    for override in overrides:
        key, value = split_override(override)
        try:
            (parsed,) = parser.parse_overrides([str(override)])
            if not (parsed.is_delete() or parsed.is_sweep_override()):
                value = format_value(parsed.value())
        except HydraException:
            pass
        out[key] = value
    return out


def _read_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        return [str(o) for o in OmegaConf.load(path)]
    except Exception:
        return []


def _load_yaml(path: Path):
    try:
        return OmegaConf.load(path) if path.is_file() else None
    except Exception:  # an unreadable file only costs the filled-in defaults
        return None


def format_value(value) -> str:
    """A config value written as on the command line: [400,400], true, 0.001, adam."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def effective_value(job: dict, key: str) -> str | None:
    """What `key` was in a job, also where the job left it at its default: a config group's
    option (from .hydra/hydra.yaml's choices) or the key's value in .hydra/config.yaml.
    The job's own override wins when it did not compose into the config (e.g. a deletion)."""
    choices, config = job.get("choices") or {}, job.get("config")
    if key in choices:
        return str(choices[key])
    if config is not None:
        try:
            node = OmegaConf.select(config, key, default=_MISSING, throw_on_missing=False)
        except Exception:
            node = _MISSING
        if node is not _MISSING:
            return format_value(node)
    return job["params"].get(key)


_MISSING = object()


def load_job(folder: Path, job_dir: Path) -> dict:
    """One row of the table from a job's results.json (and .hydra/overrides.yaml)."""
    results = read_results(job_dir) or {}
    overrides = results.get("overrides")
    if overrides is None:
        overrides = _read_overrides(job_dir)
    resumed = resume_overrides(results)
    best = results.get("best") or {}
    last = results.get("last") or {}
    name = job_dir.relative_to(folder).as_posix() if job_dir != folder else job_dir.name
    status = results.get("status") or "not started"
    problem = results_file_problem(job_dir)
    if problem:  # a job is listed all the same, with what is wrong with its file
        status = "unreadable"
        results = {"reason": f"{RESULTS}: {problem}", "overrides": overrides}
    return {
        "job": name,
        "dir": job_dir,
        "overrides": [str(o) for o in overrides],
        "params": values_as_configured([*overrides, *resumed]),  # a resume's value wins
        "status": status,
        "reason": results.get("reason"),
        "invalid_config": bool(results.get("invalid_config")),  # refused for its values
        "best_val_error": (best.get("val") or {}).get("error"),
        "best_epoch": best.get("epoch"),
        "last_train_error": (last.get("train") or {}).get("error"),
        "epochs": results.get("epochs_completed"),
        "wall_s": results.get("wall_s"),
        "test_error": (results.get("test") or {}).get("error"),
        "history": results.get("history") or [],
        "dataset": (results.get("dataset") or {}).get("name") or _dataset_of(job_dir),
        "config": _with_overrides(_load_yaml(job_dir / ".hydra" / "config.yaml"), resumed),
        "choices": _choices(job_dir),
    }


def resume_overrides(results: dict) -> list[str]:
    """The overrides the run's resumes applied (`trainer.epochs=6`, `eval.test=false`), oldest
    first: .hydra/config.yaml holds the config of the run's first process only."""
    return [
        str(o)
        for entry in results.get("resumed") or []
        for o in entry.get("overrides") or []
        if split_override(str(o))[0] != "resume"
    ]


def _with_overrides(config, overrides: list[str]):
    """`config` with `overrides` applied (resume= allows plain keys only, never a config group)."""
    if config is None or not overrides:
        return config
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:  # an override results.json could not have recorded: the first config
        return config
    for override in parsed:
        if override.is_delete() or override.is_sweep_override():
            continue
        OmegaConf.update(config, override.key_or_group, override.value(), merge=False, force_add=True)
    return config


def _dataset_of(job_dir: Path) -> str | None:
    config = _load_yaml(job_dir / ".hydra" / "config.yaml")
    return None if config is None else OmegaConf.select(config, "dataset.name", default=None)


def _choices(job_dir: Path) -> dict:
    hydra = _load_yaml(job_dir / ".hydra" / "hydra.yaml")
    choices = None if hydra is None else OmegaConf.select(hydra, "hydra.runtime.choices", default=None)
    if not choices:
        return {}
    return {str(g): str(o) for g, o in choices.items() if not str(g).startswith("hydra") and o is not None}


def swept_keys(jobs: list[dict]) -> list[str]:
    """Override keys whose effective value differs between jobs. Each job's `values` gets the
    effective value of every key any job overrides (its default filled in where it has none)."""
    keys: list[str] = []
    for job in jobs:
        for key in job["params"]:
            if key not in keys and not NOT_HPARAMS.match(key):
                keys.append(key)
    for job in jobs:
        job["values"] = {k: effective_value(job, k) for k in keys}
    if len(jobs) < 2:
        return []
    return [k for k in keys if len({j["values"].get(k) for j in jobs}) > 1]


def _sort_key(job: dict):
    err = job["best_val_error"]
    failed = job["status"] != "completed"
    return (str(job.get("dataset") or ""), err is None, failed, err if err is not None else math.inf, job["job"])


def datasets(jobs: list[dict]) -> list[str]:
    """The datasets of the jobs, in table order (one group each when a folder mixes them)."""
    return list(dict.fromkeys(str(j.get("dataset") or "?") for j in jobs))


def collect(folder: Path) -> tuple[list[dict], list[str]]:
    """(jobs sorted by best validation error, swept keys) for a folder of runs."""
    folder = Path(folder)
    if not folder.exists():
        raise ReportError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ReportError(f"{folder}: not a folder (give a sweep folder or a folder of runs)")
    if is_run(folder):  # its summary would land among the run's own files
        raise ReportError(
            f"{folder} is one run's folder (it holds {RESULTS}); give the sweep folder or the folder "
            f"of runs that holds it, e.g. {folder.parent}"
        )
    job_dirs = find_jobs(folder)
    if not job_dirs:
        raise ReportError(f"{folder}: no runs found (no results.json or .hydra/overrides.yaml below it)")
    jobs = [load_job(folder, d) for d in job_dirs]
    jobs += [unstarted_job(folder, *combination) for combination in not_started(folder, jobs)]
    _fill_datasets(jobs)
    jobs = sorted(jobs, key=_sort_key)  # by dataset, then error
    return jobs, swept_keys(jobs)


LATER_YAML = re.compile(r"multirun\.(\d+)\.yaml$")  # a rerun's own (sweep.restore_multirun_yaml)
DIRNAME = "${hydra.job.override_dirname}"  # mlprun's hydra.sweep.subdir (configs/config.yaml)


def planned(folder: Path) -> list[tuple[list[str], str]]:
    """The combinations the sweeps into `folder` set out to run (the first's multirun.yaml and
    each later one's multirun.<n>.yaml, sweep.restore_multirun_yaml), each once."""
    found: dict[frozenset, tuple[list[str], str]] = {}
    later = [(int(m.group(1)), p) for p in Path(folder).glob("multirun.*.yaml") if (m := LATER_YAML.match(p.name))]
    yamls = [p for _, p in sorted(later)]
    for path in [Path(folder) / "multirun.yaml", *yamls]:
        for combination, name in _planned_by(path):
            found.setdefault(frozenset(combination), (combination, name))
    return list(found.values())


def _planned_by(path: Path) -> list[tuple[list[str], str]]:
    """The combinations of one sweep's multirun.yaml with the name of each one's run folder: the
    command's sweep overrides and hydra.sweeper.params, expanded as Hydra's basic sweeper expands
    them, named as hydra.sweep.subdir names them (mlprun's default; else the overrides joined);
    [] for another sweeper (Optuna decides its trials as it goes) or an unreadable file."""
    saved = _load_yaml(path)
    sweeper = None if saved is None else OmegaConf.select(saved, "hydra.sweeper", default=None)
    if sweeper is None or sweeper.get("_target_") != BASIC_SWEEPER:
        return []
    try:
        task = [str(o) for o in OmegaConf.select(saved, "hydra.overrides.task", default=[])]
        params = OmegaConf.to_container(sweeper.params, resolve=False) if sweeper.get("params") else {}
        on_command_line = {split_override(o)[0] for o in task}
        task += [f"{k}={v}" for k, v in params.items() if k not in on_command_line]
        parser = OverridesParser.create()
        combinations = [
            list(c) for batch in BasicSweeper.split_arguments(parser.parse_overrides(task), None) for c in batch
        ]
        naming = OmegaConf.select(saved, "hydra.job.config.override_dirname")
        by_dirname = OmegaConf.to_container(saved.hydra.sweep, resolve=False).get("subdir") == DIRNAME
        return [
            (
                c,
                get_overrides_dirname(
                    parser.parse_overrides(c), list(naming.exclude_keys), naming.item_sep, naming.kv_sep
                )
                if by_dirname
                else ",".join(c),
            )
            for c in combinations
        ]
    except Exception:  # a multirun.yaml edited by hand: list the folders only
        return []


def not_started(folder: Path, jobs: list[dict]) -> list[tuple[list[str], str]]:
    """The planned combinations no run folder in `folder` holds (a sweep stopped before them)."""
    present = {frozenset(job["overrides"]) for job in jobs} | {job["dir"].name for job in jobs}
    return [(c, name) for c, name in planned(folder) if frozenset(c) not in present and name not in present]


def unstarted_job(folder: Path, overrides: list[str], name: str) -> dict:
    """A row for a combination that has no folder: status "not started", no numbers; the SLURM
    job submitted for it when a SLURM sweep noted one (it may still be queued)."""
    reason = "no folder yet: still queued, or its sweep stopped before it (rerun that sweep command to run it)"
    try:
        job_id = json.loads(submission_file(folder, folder / name).read_text())["job_id"]
        reason = f"no folder yet: SLURM job {job_id} was submitted for it (squeue -j {job_id}); {reason}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {
        **load_job(folder, folder / name),
        "job": name,
        "status": "not started",
        "reason": reason,
        "overrides": overrides,
        "params": values_as_configured(overrides),
        "dataset": None,
        "config": None,
    }


def _fill_datasets(jobs: list[dict]) -> None:
    """A job with no saved config (refused before it started, not started) is listed under its
    `dataset=` override, or under the one dataset all the other jobs share, not under "?"."""
    known = {j["dataset"] for j in jobs if j["dataset"]}
    for job in jobs:
        if not job["dataset"]:
            named = job["params"].get("dataset.name") or job["params"].get("dataset")
            job["dataset"] = named or (next(iter(known)) if len(known) == 1 else None)


# ---------------------------------------------------------------- the table


def _value(job: dict, key: str):
    return (job.get("values") or {}).get(key, job["params"].get(key))


def _label(job: dict, keys: list[str], short: bool = False) -> str:
    if keys:
        names = short_keys(keys) if short else {k: k for k in keys}
        return " ".join(f"{names[k]}={shown_value(_value(job, k))}" for k in keys if _value(job, k) is not None)
    return " ".join(o for o in job["overrides"] if not NOT_HPARAMS.match(split_override(o)[0]))


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _num(x, fmt="{}") -> str:
    return "" if x is None else fmt.format(x)


def write_csv(jobs: list[dict], keys: list[str], path: Path) -> Path:
    """One row per job: the swept keys' effective values (defaults filled in), the outcome."""
    has_test = any(j["test_error"] is not None for j in jobs)
    keys = [k for k in keys if k != "dataset"]  # its own column, whether swept or not
    cols = COLUMNS[:2] + ["dataset"] + keys + COLUMNS[2:]
    if not has_test:
        cols.remove("test_error")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for job in jobs:
        row = {c: job.get(c) for c in cols}
        row["overrides"] = " ".join(job["overrides"])
        for k in keys:
            row[k] = _value(job, k)
        writer.writerow({c: "" if v is None else v for c, v in row.items()})
    atomic_write_text(path, buf.getvalue())
    return path


# ---------------------------------------------------------------- across seeds

SEED = "trainer.seed"
LEVEL = 0.95


def mean_interval(xs: list[float], level: float = LEVEL) -> tuple[float, float | None, float | None] | None:
    """(mean, half-width of the Student-t interval at `level`, sample sd) of xs; the half-width
    and sd are None for one value (no spread to estimate), None for no values."""
    if not xs:
        return None
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, None, None
    # only a report of a seed sweep needs it: 0.3 s at every mlprun start otherwise
    from scipy.special import stdtrit

    sd = statistics.stdev(xs)
    return mean, float(stdtrit(len(xs) - 1, (1 + level) / 2)) * sd / math.sqrt(len(xs)), sd


def across_seeds(jobs: list[dict], keys: list[str]) -> list[dict]:
    """When trainer.seed is swept: per configuration (the other swept keys' values, per dataset),
    over its completed jobs, the mean best validation error (and test error) with its 95%
    t-interval. The interval is of seed-to-seed variation; each run's test-set sampling error is
    its own ci95 (results.json)."""
    if SEED not in keys:
        return []
    others = [k for k in keys if k != SEED]
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        label = _label(job, others, short=True) if others else "all"
        groups.setdefault((str(job.get("dataset") or "?"), label), []).append(job)
    rows = []
    for (dataset, label), group in groups.items():
        done = [j for j in group if j["status"] == "completed"]  # a failed seed is listed as missing, not averaged
        row = {"dataset": dataset, "config": label, "n": len(done), "of": len(group)}
        for metric in ("best_val_error", "test_error"):
            row[metric] = mean_interval([j[metric] for j in done if j[metric] is not None])
        rows.append(row)
    return sorted(rows, key=lambda r: (r["dataset"], r["best_val_error"] is None, (r["best_val_error"] or (0,))[0]))


def _shown_interval(value) -> str:
    if value is None:
        return ""
    mean, half, _ = value
    return f"{100 * mean:.2f} ± {100 * half:.2f}" if half is not None else f"{100 * mean:.2f} (n=1)"


def seed_rows(rows: list[dict], test: bool) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the across-seeds table."""
    hs = ["config", "n", "val err % (95% t)"] + (["test err % (95% t)"] if test else []) + ["val sd %"]
    out = []
    for r in rows:
        sd = (r["best_val_error"] or (None, None, None))[2]
        n = str(r["n"]) if r["n"] == r["of"] else f"{r['n']} of {r['of']}"
        cells = [r["config"], n, _shown_interval(r["best_val_error"])]
        if test:
            cells.append(_shown_interval(r["test_error"]))
        out.append(cells + ["" if sd is None else f"{100 * sd:.2f}"])
    return hs, out


SEED_NOTE = (
    f"mean over the completed jobs of each configuration (one per {SEED}) ± the half-width of the 95% "
    "Student-t interval (n-1 degrees of freedom): seed-to-seed variation only, not each run's test-set "
    "sampling error (its ci95 in results.json)"
)


def has_test(jobs: list[dict]) -> bool:
    return any(j["test_error"] is not None for j in jobs)


def table_rows(jobs: list[dict], keys: list[str], test: bool | None = None, short: bool = False) -> list[list[str]]:
    """short: the swept keys by their shortest distinct ending (the terminal's table, 80 columns)."""
    rows = []
    test = has_test(jobs) if test is None else test
    for i, job in enumerate(jobs, 1):
        row = [
            str(i),
            _label(job, keys, short) or job["job"],
            job["status"],
            _pct(job["best_val_error"]),
            _num(job["best_epoch"]),
            _pct(job["last_train_error"]),
            _num(job["epochs"]),
            _num(job["wall_s"], "{:.1f}"),
        ]
        if test:
            row.insert(4, _pct(job["test_error"]))
        rows.append(row)
    return rows


HEADERS = ["#", "overrides", "status", "best val err %", "best epoch", "last train err %", "epochs", "wall s"]


# the terminal's table is 80 columns wide: shorter headers there (summary.md keeps the long ones)
TERMINAL_HEADERS = {"best val err %": "val err %", "best epoch": "at epoch", "last train err %": "train err %"}


def headers(jobs: list[dict]) -> list[str]:
    return HEADERS[:4] + ["test err %"] + HEADERS[4:] if has_test(jobs) else list(HEADERS)


def by_dataset(jobs: list[dict]) -> list[tuple[str, list[dict]]]:
    """[(dataset, its jobs)] in table order; one group when the folder holds one dataset."""
    return [(d, [j for j in jobs if str(j.get("dataset") or "?") == d]) for d in datasets(jobs)]


def n_jobs(jobs: list) -> str:
    return f"{len(jobs)} job" if len(jobs) == 1 else f"{len(jobs)} jobs"


def counts(jobs: list[dict]) -> str:
    by_status: dict[str, int] = {}
    for job in jobs:
        by_status[job["status"]] = by_status.get(job["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))


def md_table(hs: list[str], rows: list[list[str]], left: tuple[str, ...]) -> list[str]:
    """A markdown table: the `left` columns aligned left, the numbers right, `|` in cells escaped."""
    lines = ["| " + " | ".join(hs) + " |", "|" + "|".join("---" if h in left else "---:" for h in hs) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def write_markdown(folder: Path, jobs: list[dict], keys: list[str], path: Path, plots: list[Path]) -> Path:
    lines = [
        f"# Sweep summary: {folder}",
        "",
        f"{n_jobs(jobs)} ({counts(jobs)}); sorted by best validation error"
        + (" within each dataset." if len(datasets(jobs)) > 1 else ".")
        + (f" Swept: {', '.join(f'`{k}`' for k in keys)}." if keys else ""),
    ]
    groups = by_dataset(jobs)
    for name, group in groups:
        if len(groups) > 1:
            lines += ["", f"## dataset={name} ({n_jobs(group)})"]
        rows = table_rows(group, keys, has_test(jobs))
        for row in rows:
            row[1] = f"`{row[1]}`"
        lines += ["", *md_table(headers(jobs), rows, left=("overrides", "status"))]
    seeds = across_seeds(jobs, keys)
    if seeds:
        lines += ["", f"## Across seeds ({SEED})", "", SEED_NOTE + "."]
        for name in datasets(jobs):
            group = [r for r in seeds if r["dataset"] == name]
            if not group:
                continue
            if len(datasets(jobs)) > 1:
                lines += ["", f"### dataset={name}"]
            lines += ["", *md_table(*seed_rows(group, has_test(jobs)), left=("config",))]
    failed = [j for j in jobs if j["status"] != "completed"]
    if failed:
        lines += ["", "## Not completed", ""]
        lines += [f"- `{j['job']}` ({j['status']}): {j['reason'] or 'no reason recorded'}" for j in failed]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def fitted_widths(hs: list[str], rows: list[list[str]], width: int) -> list[int | None]:
    """Column widths for the terminal's table, or Nones where it fits `width` as it is. Rich
    would narrow a table that is too wide by cutting every column evenly, which splits the
    label's `key=value` tokens mid-value (`dropout=0` / `.25`) and cuts numbers; instead each
    number keeps its width (its header wraps at its spaces), the label column is never narrower
    than its longest token (it wraps between tokens), and the label takes what is left. Where
    even that does not fit, the table stays as Rich makes it."""
    label = hs.index("overrides")
    gaps = 2 * (len(hs) - 1)  # between columns: the padding space and SIMPLE_HEAD's blank rule
    natural = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(hs)]
    if sum(natural) + gaps <= width:
        return [None] * len(hs)
    least = [max([len(w) for w in h.split()] + [len(r[i]) for r in rows]) for i, h in enumerate(hs)]
    least[label] = max((len(t) for r in rows for t in r[label].split()), default=1)
    widths = [natural[i] if i != label else least[label] for i in range(len(hs))]
    excess = sum(widths) + gaps - width
    while excess > 0:  # wrap the header that overhangs its numbers most
        i = max(range(len(hs)), key=lambda i: widths[i] - least[i])
        if widths[i] == least[i]:
            return [None] * len(hs)
        cut = min(excess, widths[i] - least[i])
        widths[i] -= cut
        excess -= cut
    widths[label] = min(natural[label], widths[label] - excess)  # excess <= 0: what is left
    return widths


def terminal_table(title: str) -> Table:
    """No column rules and one space between columns: 80 columns hold the whole table."""
    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))


def print_table(folder: Path, jobs: list[dict], keys: list[str], console=None) -> None:
    console = console or Console()
    groups = by_dataset(jobs)
    for name, group in groups:
        title = f"sweep {folder}: {n_jobs(jobs)} ({counts(jobs)})"
        if len(groups) > 1:
            title = f"{folder}: dataset={name}, {n_jobs(group)} ({counts(group)})"
        table = terminal_table(title)
        hs = headers(jobs)
        rows = table_rows(group, keys, has_test(jobs), short=True)
        widths = fitted_widths([TERMINAL_HEADERS.get(h, h) for h in hs], rows, console.width)
        for h, w in zip(hs, widths):
            table.add_column(
                TERMINAL_HEADERS.get(h, h),
                justify="left" if h in ("overrides", "status") else "right",
                overflow="fold" if h == "overrides" else "ellipsis",
                min_width=max(len(r[hs.index(h)]) for r in rows) if h == "status" else None,  # unbroken
                width=w,
            )
        for job, row in zip(group, rows):
            style = None if job["status"] == "completed" else "red"
            table.add_row(*map(escape, row), style=style)  # `logger=[a,b]` is text, not markup
        console.print(table)
    seeds = across_seeds(jobs, keys)
    for name, _ in groups:
        group = [r for r in seeds if r["dataset"] == name]
        if group:
            hs, rows = seed_rows(group, has_test(jobs))
            where = f", dataset={name}" if len(groups) > 1 else ""
            table = terminal_table(f"across seeds{where}: mean ± 95% t-interval")
            for h in hs:
                table.add_column(h, justify="left" if h == "config" else "right", overflow="fold")
            for row in rows:
                table.add_row(*map(escape, row))
            console.print(table)
    for job in jobs:
        if job["status"] != "completed":
            console.print(
                f"[red]{escape(job['job'])}[/red] {job['status']}: {escape(job['reason'] or 'no reason recorded')}",
                highlight=False,
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


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return save_figure(fig, path)


def colours(n: int) -> list:
    """n distinguishable colours: tab10, tab20, then evenly spaced hues of a cyclic map."""
    plt = _plt()
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def param_points(jobs: list[dict], key: str) -> list[tuple[str, float]]:
    return [
        (_value(j, key), 100 * j["best_val_error"])
        for j in jobs
        if j["best_val_error"] is not None and _value(j, key) is not None
    ]


def param_axis(values: list[str]) -> str:
    """How a key's values go on the x axis: log (positive numbers spanning a decade or more),
    linear (other numbers) or category (anything else: options, booleans, lists)."""
    numbers = [_as_number(v) for v in values]
    if not numbers or any(n is None for n in numbers):
        return "category"
    lo, hi = min(numbers), max(numbers)
    return "log" if lo > 0 and hi / lo >= 10 else "linear"


def param_figure(jobs: list[dict], key: str):
    """Best validation error of every job against one parameter: a scatter on a real axis for
    numbers (the median per value joined when values repeat), points and their median per
    category otherwise (a median: one diverged job at 90% does not drag its category's mark), on
    a logarithmic error axis when the errors span a decade or more (nor flattens the others).
    None when the key has fewer than two values among the jobs with a result."""
    points = param_points(jobs, key)
    if len({v for v, _ in points}) < 2:
        return None
    plt = _plt()
    axis = param_axis([v for v, _ in points])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if axis != "category":
        xs = [float(v) for v, _ in points]
        ax.scatter(xs, [e for _, e in points], alpha=0.8, color="tab:blue", zorder=3, label="job")
        per: dict[float, list[float]] = {}
        for x, (_, e) in zip(xs, points):
            per.setdefault(x, []).append(e)
        if any(len(v) > 1 for v in per.values()):
            ux = sorted(per)
            ax.plot(ux, [statistics.median(per[x]) for x in ux], color="tab:orange", lw=1.5, label="median")
        if axis == "log":
            ax.set_xscale("log")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    else:
        cats = sorted({v for v, _ in points}, key=lambda v: (len(v), v))
        pos = {c: i for i, c in enumerate(cats)}
        per = {c: [e for v, e in points if v == c] for c in cats}
        for c in cats:
            n = len(per[c])
            xs = [pos[c] + (0.24 * (i - (n - 1) / 2) / max(1, n - 1) if n > 1 else 0) for i in range(n)]
            ax.scatter(xs, per[c], alpha=0.75, color="tab:blue", zorder=3, label="job" if c == cats[0] else None)
            ax.hlines(
                statistics.median(per[c]),
                pos[c] - 0.3,
                pos[c] + 0.3,
                color="tab:orange",
                lw=2,
                zorder=2,
                label="median" if c == cats[0] else None,
            )
        ax.set_xticks(range(len(cats)))
        long = max(len(c) for c in cats) > 8
        ax.set_xticklabels(cats, rotation=30 if long else 0, ha="right" if long else "center")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set(xlabel=key, ylabel="best validation error (%)", title=f"validation error vs {key} ({n_jobs(points)})")
    errors = [e for _, e in points]
    if min(errors) > 0 and max(errors) / min(errors) >= 10:
        from matplotlib.ticker import FuncFormatter  # lazy: matplotlib (see plots._plt)

        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 60, not 6x10^1
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.grid(alpha=0.3)
    return fig


def plot_param(jobs: list[dict], key: str, path: Path) -> Path | None:
    fig = param_figure(jobs, key)
    return None if fig is None else _save(fig, path)


def plot_curves(jobs: list[dict], keys: list[str], path: Path, max_legend: int = 20) -> Path | None:
    """Every job's validation error per epoch on one figure, one colour each, the legend (best
    jobs first) outside the axes."""
    with_curves = [j for j in jobs if any(h.get("val") for h in j["history"])]
    if not with_curves:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator  # lazy: matplotlib (see plots._plt)

    shown = min(len(with_curves), max_legend)
    # the terminal's short names, folded: a legend of whole key names can be wider than the figure
    labels = [textwrap.fill(_label(job, keys, short=True) or job["job"], 48) for job in with_curves[:shown]]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(11, max(5.0, 1.2 + 0.15 * lines)))  # tall enough for the legend
    palette = colours(shown)
    styles = ["-", "--", ":", "-."]
    for rank, job in enumerate(with_curves):
        hist = [h for h in job["history"] if h.get("val")]
        top = rank < max_legend
        ax.plot(
            [h["epoch"] for h in hist],
            [100 * h["val"]["error"] for h in hist],
            marker="o" if len(hist) < 30 else None,
            ms=3,
            lw=1.4 if top else 0.8,
            alpha=1.0 if top else 0.35,
            color=palette[rank] if top else "grey",
            linestyle=styles[(rank // 10) % len(styles)] if top else "-",
            label=labels[rank] if top else None,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel="epoch",
        ylabel="validation error (%)",
        title=f"validation error per epoch, {n_jobs(with_curves)}"
        + (f" (legend: best {max_legend}, the rest grey)" if len(with_curves) > max_legend else ""),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="best first", title_fontsize=7)
    return _save(fig, path)


# ---------------------------------------------------------------- entry points


# what mlprun-report (or a sweep's summary) last wrote in a folder: {file name: sha256}. A file
# there whose bytes still match is mlprun's own and is rewritten; any other file of the same name
# (the user's, or one the user edited since) is refused without --force.
MANIFEST = ".mlprun_report.json"


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, {} when unreadable, None when there is none (a folder reported
    before mlprun kept one, or never)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("files", {}) if isinstance(data, dict) and isinstance(data.get("files"), dict) else {}


def _written_before_manifests(path: Path) -> bool:
    """A report file of an mlprun that kept no manifest, recognised by its content: summary.md's
    title line, summary.csv's header, a matplotlib PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    if path.name == "summary.md":
        return head.startswith(b"# Sweep summary: ")
    if path.name == "summary.csv":
        return head.startswith(b"job,overrides,")
    return path.suffix == ".png" and head.startswith(b"\x89PNG\r\n\x1a\n") and b"Matplotlib" in head


def foreign_files(folder: Path, paths: list[Path]) -> list[Path]:
    """The existing files among `paths` (all in `folder`) that mlprun did not write."""
    manifest = _read_manifest(folder)
    foreign = []
    for path in paths:
        if not path.exists():
            continue
        if path.is_file():
            if manifest is None and _written_before_manifests(path):
                continue
            if manifest and manifest.get(path.name) == _digest(path):
                continue
        foreign.append(path)
    return foreign


def refuse_foreign(folder: Path, paths: list[Path]) -> None:
    """ReportError (exit 2, nothing written) when a file the report would write is not mlprun's."""
    foreign = foreign_files(folder, paths)
    if not foreign:
        return
    if len(foreign) == 1:
        raise ReportError(
            f"{foreign[0]} was not written by mlprun (or was changed since); nothing was changed: "
            f"move it away, or pass --force to overwrite it"
        )
    names = ", ".join(p.name for p in foreign[1:4]) + (", ..." if len(foreign) > 4 else "")
    raise ReportError(
        f"{foreign[0]} and {len(foreign) - 1} more file(s) ({names}) were not written by mlprun "
        f"(or were changed since); nothing was changed: move them away, or pass --force to overwrite them"
    )


def _remember(folder: Path, written: list[Path], removed: list[Path] = ()) -> None:
    """Record the digests of the files just written in the folder's manifest (and forget those
    removed)."""
    files = dict(_read_manifest(folder) or {})
    files.update({p.name: _digest(p) for p in written if p.is_file()})
    for p in removed:
        files.pop(p.name, None)
    atomic_write_text(Path(folder) / MANIFEST, json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive flock on the folder itself while the report checks and writes its files
    (none where the platform has no flock: a report alone works the same)."""
    try:
        fd = os.open(folder, os.O_RDONLY) if fcntl is not None else None
    except OSError:
        fd = None
    if fd is None:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def own_figures(folder: Path) -> list[Path]:
    """The PNGs in `folder` an earlier report wrote and nobody changed since (by the manifest)."""
    manifest = _read_manifest(folder) or {}
    paths = [Path(folder) / name for name in sorted(manifest) if name.endswith(".png")]
    return [p for p in paths if p.is_file() and manifest[p.name] == _digest(p)]


def _has_curves(jobs: list[dict]) -> bool:
    return any(any(h.get("val") for h in j["history"]) for j in jobs)


def planned_plots(folder: Path, jobs: list[dict], keys: list[str]) -> list[tuple[Path, object]]:
    """(path, draw) for each figure the report makes: draw(path) writes it."""
    planned = []
    groups = by_dataset(jobs)
    for name, group in groups:
        suffix = f"_{_safe(name)}" if len(groups) > 1 else ""  # a folder of several datasets
        for key in (k for k in keys if k != SEED):  # a seed is no parameter: no trend to draw against it
            if len({v for v, _ in param_points(group, key)}) >= 2:  # else param_figure draws nothing
                planned.append(
                    (folder / f"val_error_vs_{_safe(key)}{suffix}.png", lambda p, g=group, k=key: plot_param(g, k, p))
                )
        if _has_curves(group):
            planned.append((folder / f"val_curves{suffix}.png", lambda p, g=group: plot_curves(g, keys, p)))
    return planned


def build_report(
    folder: Path,
    console=None,
    show: bool = True,
    plots: bool = True,
    collected: tuple[list[dict], list[str]] | None = None,
    force: bool = False,
) -> dict:
    """Write summary.csv, summary.md and the plots into `folder`; print the table if `show`.

    `collected`: the (jobs, keys) `collect(folder)` already returned, to read the jobs once.
    A file of those names that mlprun did not write (MANIFEST) is refused (ReportError, before
    anything is written) unless `force`.
    """
    folder = Path(folder)
    jobs, keys = collected or collect(folder)
    planned = planned_plots(folder, jobs, keys) if plots else []
    csv_file, md_file = folder / "summary.csv", folder / "summary.md"
    made: list[Path] = []
    with _folder_lock(folder):  # two sweeps ending at once: one checks and writes after the other
        if not force:
            refuse_foreign(folder, [p for p, _ in planned] + [csv_file, md_file])
        written: list[Path] = []
        removed: list[Path] = []
        try:
            for path, draw in planned:
                if draw(path):
                    made.append(path)
                    written.append(path)
            earlier = [p for p in own_figures(folder) if p not in made]
            if plots:
                # a figure of an earlier report that this one no longer draws (a parameter left
                # with one value) would sit beside summary.md describing other jobs
                for path in earlier:
                    path.unlink()
                    removed.append(path)
            csv_path = write_csv(jobs, keys, csv_file)
            written.append(csv_path)
            md_path = write_markdown(folder, jobs, keys, md_file, made)
            written.append(md_path)
        finally:
            if written or removed:
                _remember(folder, written, removed)
    if show:
        if console is None:
            console = Console()
            if not console.is_terminal and not os.environ.get("COLUMNS"):
                # logs and pipes: do not squeeze the table into 80 columns, unless COLUMNS says so
                console = Console(width=140)
        print_table(folder, jobs, keys, console)
        # one line each, the files by name (they are all in the sweep folder): fits 80 columns
        # paths are never broken across lines (soft_wrap): they are copied and typed
        console.print(f"summary: {csv_path}, {md_path.name}", highlight=False, soft_wrap=True)
        # file names too: whole, folded between names (an Optuna study draws one per key)
        if plots:
            listed = item_lines("plots (.png):", [p.stem for p in made] or ["none"], console.width)
        else:  # --no-plots keeps an earlier report's figures, though older than these tables: say so
            names = [p.stem for p in earlier]
            if names:
                names[-1] += " are from an earlier report"
            listed = item_lines("plots (.png): not drawn (--no-plots)" + ";" * bool(names), names, console.width)
        console.print("\n".join(listed), highlight=False)
        if next(folder.glob("**/events.out.tfevents.*"), None) is not None:  # none: nothing to show
            console.print(f"HParams: tensorboard --logdir {folder}", highlight=False, soft_wrap=True)
    return {"jobs": jobs, "keys": keys, "csv": csv_path, "md": md_path, "plots": made}


if __name__ == "__main__":  # python -m mlprunner.report: the same as mlprun-report
    from .cli import report_main

    report_main()
