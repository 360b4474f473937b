"""Saved runs: where a run keeps its checkpoints, how `resume=`, `mlprun-eval` and
`mlprun-predict` find a run and its checkpoint, and how overrides merge into a saved config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from .errors import ConfigError, first_line
from .results import read_results

CHECKPOINT_DIR = "checkpoints"
SAVED_CONFIG = Path(".hydra") / "config.yaml"  # written by Hydra when a run starts


def recorded_model_target(run_dir: Path | None) -> str | None:
    """The model class (`model._target_`) a run folder's .hydra/config.yaml names: the model the
    user started the run with, which its checkpoints may rebuild (checkpoint.check_config_targets).
    None without a run folder or that file."""
    if run_dir is None or not (Path(run_dir) / SAVED_CONFIG).is_file():
        return None
    try:
        target = OmegaConf.select(OmegaConf.load(Path(run_dir) / SAVED_CONFIG), "model._target_", default=None)
    except Exception:  # unreadable: no model of the user's own is allowed
        return None
    return target if isinstance(target, str) else None


def checkpoint_file(run_dir: Path, name: str = "last") -> Path:
    """<run dir>/checkpoints/<name>.pt (name: last, best or swa)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"{name}.pt"


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run folder of a checkpoint file, or None when it is not in a run's checkpoints/."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else None


def existing_run(folder: Path, hydra_files: bool = True) -> str | None:
    """Describe the run already in `folder`, or None when a new run may start there.

    hydra_files: count a `.hydra/config.yaml` as an earlier start (not when this start's Hydra
    has just written it)."""
    folder = Path(folder)
    if any((folder / mark).exists() for mark in SWEEP_MARKS):
        return "a sweep"
    if (folder / "results.json").is_file():
        data = read_results(folder)
        status = data.get("status", "unknown") if isinstance(data, dict) else "unknown"
        return f"a run ({status})"
    if (folder / CHECKPOINT_DIR).is_dir() or (folder / "tensorboard").is_dir():
        return "a run's checkpoints or TensorBoard logs"
    if hydra_files and (folder / SAVED_CONFIG).is_file():
        return "the configuration of an earlier start (.hydra/config.yaml)"
    return None


def refuse_existing(folder: Path, hydra_files: bool = True) -> None:
    """A new run never starts in a folder that holds a run: ConfigError (exit 2), nothing changed."""
    held = existing_run(folder, hydra_files)
    if held == "a sweep":
        raise ConfigError(
            "hydra.run.dir",
            str(folder),
            message=(
                f"hydra.run.dir={folder} already holds a sweep (multirun.yaml); nothing was changed. Choose another "
                f"hydra.run.dir (a sweep continues with its own command: mlprun -m ... hydra.sweep.dir={folder})"
            ),
        )
    if held:
        raise ConfigError(
            "hydra.run.dir",
            str(folder),
            message=(
                f"hydra.run.dir={folder} already holds {held}; nothing was changed. "
                f"Continue it with: mlprun resume={folder} (or choose another hydra.run.dir)"
            ),
        )


# what mlprun itself may leave in a run folder before the run has written anything else
_OWN_START_FILES = {".mlprun.lock", "mlprun.log"}


def refuse_foreign_files(folder: Path) -> None:
    """A new run starts only in a new or empty folder: one that holds someone's own files (and no
    mlprun run, which refuse_existing names) is refused, ConfigError (exit 2), nothing changed;
    mlprun would otherwise write its learning_curves.png, results.json, ... over them."""
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise ConfigError(
                "hydra.run.dir",
                str(folder),
                message=f"hydra.run.dir={folder} is a file, not a folder; nothing was changed",
            )
        return
    others = sorted(p.name for p in folder.iterdir() if p.name not in _OWN_START_FILES)
    if others:
        shown = _some(others)
        raise ConfigError(
            "hydra.run.dir",
            str(folder),
            message=(
                f"hydra.run.dir={folder} is not empty ({shown}) and holds no mlprun run; nothing was "
                f"changed: a run starts only in a new or empty folder, choose another hydra.run.dir"
            ),
        )


def _some(names: list[str]) -> str:
    """The first three names, and how many more."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


# what only a sweep leaves in its folder (Hydra's multirun.yaml, mlprun's marks, Optuna's results)
# in a sweep folder: mlprun's markers: one per job the summary must report with a status its
# results.json cannot give (sweep.mark_job: "in use", "not collected"), a stop (sweep.stop_sweep),
# and the SLURM job submitted for each combination (submission_file)
MARKS = ".mlprun_marks"
SWEEP_MARKS = {"multirun.yaml", MARKS, "optimization_results.yaml"}


def submission_file(sweep_dir: Path, run_dir: Path) -> Path:
    """Where a SLURM sweep notes the job it submitted for a combination (cluster.py) while that
    job may still be queued or running; mlprun-report names the job of a row with no folder."""
    name = Path(run_dir).relative_to(sweep_dir).as_posix().replace("/", "%")
    return Path(sweep_dir) / MARKS / "slurm" / f"{name}.json"


def refuse_foreign_sweep_folder(folder: Path) -> None:
    """A sweep starts in a new or empty folder, or in one an earlier sweep made (multirun.yaml,
    mlprun's marks, Optuna's results or a job folder in it): a folder of someone's
    own files is refused (ConfigError, exit 2, nothing changed), since the sweep's summary, plots
    and job folders would be written beside or over them."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError("hydra.sweep.dir", str(folder), message=f"hydra.sweep.dir={folder} is a file, not a folder")
    if not folder.is_dir():
        return
    entries = list(folder.iterdir())
    if not entries or any(p.name in SWEEP_MARKS for p in entries):
        return
    job_files = ("results.json", ".hydra", "mlprun.log")
    if any(p.is_dir() and any((p / name).exists() for name in job_files) for p in entries):
        return  # a job folder: a sweep's
    shown = _some(sorted(p.name for p in entries))
    raise ConfigError(
        "hydra.sweep.dir",
        str(folder),
        message=(
            f"hydra.sweep.dir={folder} is not empty ({shown}) and holds no sweep; nothing was changed: "
            f"a sweep starts only in a new or empty folder or continues its own, choose another hydra.sweep.dir"
        ),
    )


# a run folder's own files (a run folder: results.json, .hydra/config.yaml or checkpoints/ in it)
# and a sweep folder's (multirun.yaml in it): never written by mlprun-eval/-predict, --force or not
RUN_FILES = {
    "results.json",
    "learning_curves.png",
    "confusion_matrix.png",
    "mlprun.log",
    ".mlprun.lock",
    "metrics.csv",  # the csv logger's default name; a run's own name for it: _csv_log_name
    "profile.json",  # trainer.profile's (profiling.py)
    "profile.txt",
    "profile_trace.json",
}
RUN_FOLDERS = {".hydra", CHECKPOINT_DIR, "tensorboard"}
SWEEP_FILES = {
    "multirun.yaml",
    "summary.csv",
    "summary.md",
    MARKS,
    ".mlprun_report.json",
    ".submitit",
    "tensorboard",
}


def _csv_log_name(run_dir: Path) -> str | None:
    """The file the run's csv logger writes (logger.csv.filename in its saved config), if any."""
    try:
        cfg = OmegaConf.load(run_dir / SAVED_CONFIG)
        return str(OmegaConf.select(cfg, "logger.csv.filename", default=None) or "") or None
    except Exception:  # no saved config, or one that does not parse: the default names only
        return None


def _owner(path: Path) -> tuple[Path, str] | None:
    """(the run or sweep folder `path` belongs to, what it is), or None."""
    for parent in path.parents:
        top = path.relative_to(parent).parts[0]
        if (
            (parent / "results.json").is_file()
            or (parent / SAVED_CONFIG).is_file()
            or (parent / CHECKPOINT_DIR).is_dir()
        ):
            inside = path.relative_to(parent)
            csv_log = _csv_log_name(parent)  # may name a sub-folder: logger.csv.filename=logs/m.csv
            if csv_log is not None and inside == Path(csv_log):
                return parent, "run"
            if top in RUN_FOLDERS or (top in RUN_FILES and len(inside.parts) == 1):
                return parent, "run"
        if (parent / "multirun.yaml").is_file() and top in SWEEP_FILES:
            return parent, "sweep"
    return None


def check_output(path: Path, flag: str, force: bool) -> None:
    """Where mlprun-eval/mlprun-predict write an output file (--json, --plot, --csv): never a
    run's or a sweep's own file; an existing file only with --force. ConfigError (exit 2), before
    anything is computed."""
    path = Path(path).expanduser()
    owner = _owner(path.resolve())
    if owner is not None:
        folder, what = owner
        raise ConfigError(
            flag,
            str(path),
            message=(
                f"{flag} {path}: that is a file of the {what} in {folder}, which mlprun never writes over "
                f"(--force or not); choose another path"
            ),
        )
    if path.is_dir():
        raise ConfigError(flag, str(path), message=f"{flag} {path}: is a folder; give a file name")
    if path.exists() and not force:
        raise ConfigError(
            flag,
            str(path),
            message=f"{flag} {path}: the file exists; add --force to overwrite it, or choose another path",
        )


def find_latest(runs_root: Path = Path("runs")) -> Path:
    """The run under `runs_root` whose checkpoint (or, lacking one, results.json) is newest.

    A folder that holds no run (no checkpoint, no results.json: e.g. only the `.hydra/` of a
    start that was refused), or a run that trained epochs but keeps no last.pt
    (trainer.checkpoint.save_last=false, debug=fast_dev_run), is skipped."""
    candidates: dict[Path, Path] = {}  # run folder -> the file whose time counts
    if runs_root.is_dir():
        for p in runs_root.glob(f"**/{CHECKPOINT_DIR}/last.pt"):
            candidates[p.parent.parent] = p
        for p in runs_root.glob("**/results.json"):
            if p.parent in candidates or not (p.parent / SAVED_CONFIG).is_file():
                continue
            data = read_results(p.parent)
            # without last.pt only a run killed before its first epoch can continue (restarted)
            if isinstance(data, dict) and data.get("status") != "completed" and not data.get("epochs_completed"):
                candidates[p.parent] = p
    if not candidates:
        raise ConfigError(
            "resume",
            "latest",
            message=(
                f"resume=latest: no run to resume under {runs_root.resolve()} (runs that trained epochs but "
                "keep no checkpoints/last.pt are skipped)"
            ),
        )
    return max(candidates, key=lambda d: candidates[d].stat().st_mtime)


def given_run_folder(path: Path) -> Path:
    """`path`, or the run folder when `path` is a run's checkpoints/ folder (resume=<run>/checkpoints)."""
    if path.name == CHECKPOINT_DIR and (path.parent / SAVED_CONFIG).is_file():
        return path.parent
    return path


def locate_for_resume(arg: str) -> tuple[Path | None, Path | None]:
    """(run dir, checkpoint file or None when the run never wrote one) for a resume= argument."""
    if arg in ("", "null", "None"):
        raise ConfigError("resume", arg, message="resume= needs a run directory, a checkpoint file or 'latest'")
    if arg == "latest":
        run_dir = find_latest().resolve()
    else:
        path = Path(arg).expanduser()
        if path.is_file():
            path = path.resolve()
            # None: not inside a run's checkpoints/ folder (refused once the file itself is checked)
            return run_dir_of(path), path
        if not path.is_dir():
            raise ConfigError("resume", arg, message=f"resume={arg}: no such run directory or checkpoint file")
        run_dir = given_run_folder(path).resolve()
    ckpt = checkpoint_file(run_dir, "last")
    if ckpt.is_file():
        return run_dir, ckpt
    if (run_dir / SAVED_CONFIG).is_file():
        return run_dir, None  # killed before its first checkpoint: restart it in place
    raise ConfigError(
        "resume", arg, message=(f"resume={arg}: {ckpt} not found; the folder is not an mlprun run with a checkpoint")
    )


def locate_checkpoint(target: str, which: str | None = None) -> tuple[Path | None, Path, str]:
    """(run dir or None, checkpoint file, its name) for a run directory or a checkpoint file
    (mlprun-eval, mlprun-predict). A run directory's default is swa, else best, else last."""
    path = Path(target).expanduser()
    if path.is_dir():
        path = given_run_folder(path)
        ckdir = path / CHECKPOINT_DIR
        results = read_results(path) if not ckdir.is_dir() else None
        if results and results.get("status"):  # a run that never wrote a checkpoint
            said = f": {first_line(str(results['reason']), 200)}" if results.get("reason") else ""
            raise ConfigError(
                "run",
                target,
                message=f"{target}: this run has no checkpoint to load (results.json: {results['status']}{said})",
            )
        if not ckdir.is_dir() and (path / "multirun.yaml").is_file():
            runs = sorted(d.name for d in path.iterdir() if (d / CHECKPOINT_DIR).is_dir())
            example = f" (e.g. {path / runs[0]})" if runs else ""
            raise ConfigError(
                "run",
                target,
                message=(
                    f"{target} is a sweep folder: give one of its {len(runs)} run folder(s){example}; "
                    f"its table: mlprun-report {target}"
                ),
            )
        if not ckdir.is_dir():
            raise ConfigError(
                "run",
                target,
                message=(
                    f"{target}: not an mlprun run directory (no checkpoints/ folder); "
                    f"give a run directory or a .pt checkpoint"
                ),
            )
        for name in ["swa", "best", "last"] if which is None else [which]:
            if checkpoint_file(path, name).is_file():
                return path, checkpoint_file(path, name), name
        raise ConfigError(
            "--checkpoint",
            which,
            message=(
                f"{target}: no checkpoints/{which or 'best'}.pt in this run; "
                f"present: {', '.join(sorted(p.stem for p in ckdir.glob('*.pt'))) or 'none'}"
            ),
        )
    if path.is_file():
        if which is not None:
            raise ConfigError(
                "--checkpoint",
                which,
                message=(f"--checkpoint {which} applies to a run directory; {target} is already a checkpoint file"),
            )
        return run_dir_of(path), path, path.stem
    raise ConfigError("run", target, message=f"{target}: no such run directory or checkpoint file")


def merge_overrides(cfg, overrides, *, strict: bool):
    """Merge already-allowed key=value overrides into a saved run's config, in place.

    strict (resume=): every key must exist in the saved config (a misspelt key is an error,
    not a silent new key) and a failure is one ConfigError line; otherwise keys may be added
    (a data path the saved dataset config did not name) and OmegaConf's own error propagates.
    """
    overrides = list(overrides)
    if not strict:
        if overrides:
            cfg.merge_with(OmegaConf.from_dotlist(overrides))
        return cfg
    OmegaConf.set_struct(cfg, True)
    try:
        cfg.merge_with(OmegaConf.from_dotlist(overrides))
    except Exception as exc:
        raise ConfigError(
            "resume", message=f"cannot apply {' '.join(overrides)} to the saved config: {first_line(exc)}"
        ) from None
    OmegaConf.set_struct(cfg, False)
    return cfg
