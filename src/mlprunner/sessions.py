"""What a run is called in TensorBoard and which hyper-parameters describe it there.

- `hparams_of`: the HParams session of a run: the config groups by the option names they were
  picked by (`optim=sgd_momentum`, not the class `SGD`), a few central keys, and every key the
  command line changed, with their effective values (numbers, real booleans, lists as text).
- `tensorboard_dir`: a single run logs into `<run>/tensorboard`; a job of a sweep logs into
  `<sweep>/tensorboard/<swept values>` (e.g. `optim=sgd,loss.label_smoothing=0.1`), so
  `tensorboard --logdir <sweep>` lists one run per job named by what distinguishes it. Each such
  folder belongs to one job (its `.mlprun_job` file names the job folder): a job of a later sweep
  into the same folder whose swept values name a folder another job owns (other fixed overrides)
  logs into `<sweep>/tensorboard/<its job folder's name>` instead, so no job ever writes into, or
  clears, another job's TensorBoard run.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from .schema import option_label

GROUPS = ("dataset", "model", "optim", "scheduler", "loss")
CENTRAL_KEYS = (
    "model.hidden",
    "model.activation",
    "model.dropout",
    "optim.lr",
    "trainer.batch_size",
    "trainer.epochs",
    "trainer.seed",
)
# keys that do not change a run's result (as hydra.job.config.override_dirname.exclude_keys)
NOT_HPARAMS = re.compile(
    r"^(resume|logger\b.*|hydra\b.*|trainer\.(progress|threads|log_every_n_steps|eval_train|profile|memory_fraction|tensorboard\..*)|dataset\.(root|download))$"
)


def group_choices(run_dir: Path | None = None) -> dict[str, str]:
    """{group: option} as Hydra picked them: from the running Hydra job, else from the run
    folder's .hydra/hydra.yaml; {} when neither is there (a run started from Python)."""
    choices = None
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
    elif run_dir is not None and (Path(run_dir) / ".hydra" / "hydra.yaml").is_file():
        try:
            choices = OmegaConf.select(OmegaConf.load(Path(run_dir) / ".hydra" / "hydra.yaml"), "hydra.runtime.choices")
        except Exception:  # an unreadable file only costs the option names
            choices = None
    if not choices:
        return {}
    return {str(g): str(o) for g, o in choices.items() if not str(g).startswith("hydra") and o is not None}


def _plain(value):
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)


def override_key(override: str) -> str | None:
    """The key an override sets (`optim`, `optim.lr`, `+trainer.foo`->`trainer.foo`); None for a deletion."""
    key, sep, _ = str(override).partition("=")
    if not sep or key.startswith("~"):
        return None
    return key.lstrip("+")


def hparams_of(cfg: DictConfig, overrides=(), choices: dict | None = None) -> dict:
    """The run's hyper-parameters for TensorBoard's HParams: {name: str | bool | int | float}."""
    choices = choices or {}
    out: dict = {}
    for group in GROUPS:
        if group in cfg and cfg[group] is not None:
            out[group] = choices.get(group) or option_label(cfg[group], group)
    if choices.get("experiment"):
        out["experiment"] = choices["experiment"]
    for key in CENTRAL_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            out[key] = _plain(value)
    for override in overrides:
        key = override_key(override)
        if key is None or NOT_HPARAMS.match(key):
            continue
        if key in choices or key in GROUPS:  # a group option: its name
            out[key] = choices.get(key) or str(override).partition("=")[2]
            continue
        out[key] = _plain(OmegaConf.select(cfg, key, default=None))
    return out


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"  # Hydra's default sweeper


def swept_keys(sweep_dir: Path) -> list[str]:
    """swept_keys_of the sweep folder's multirun.yaml ([] without one)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return []
    try:
        conf = OmegaConf.load(path)
    except Exception:  # an unreadable multirun.yaml: the jobs keep their folder names
        return []
    return swept_keys_of(conf)


def swept_keys_of(conf) -> list[str]:
    """The keys a sweep varies, in command-line order: overrides with several values
    (`a=1,2`, `range(...)`, `choice(...)`) and the sweeper's own `params` (preset grids, Optuna's
    search space), read from a sweep's config (multirun.yaml, or the sweep's own at its start)."""
    try:
        task = [str(o) for o in OmegaConf.select(conf, "hydra.overrides.task", default=[]) or []]
        params = OmegaConf.select(conf, "hydra.sweeper.params", default=None) or {}
        keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(task) if o.is_sweep_override()]
    except Exception:  # an unreadable multirun.yaml: the jobs keep their folder names
        return []
    for key in params:
        if str(key) not in keys:
            keys.append(str(key))
    return keys


def override_values(overrides) -> dict[str, str]:
    """{key: value as typed} of the overrides that set a key (deletions left out)."""
    return {key: str(o).partition("=")[2] for o in overrides if (key := override_key(o))}


def job_name(overrides, keys: list[str]) -> str:
    """`k=v` of the swept keys of one job, joined by commas, in the order of `keys`."""
    values = override_values(overrides)
    return ",".join(f"{k}={values[k]}" for k in keys if k in values)


def short_keys(keys: list[str]) -> dict[str, str]:
    """{key: its shortest ending of whole parts that no other key ends with} (`optim.lr` -> `lr`;
    `dataset.augment.enabled` and `trainer.early_stopping.enabled` -> `augment.enabled` and
    `early_stopping.enabled`)."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                break
        short[key] = tail
    return short


LONG_FLOAT = re.compile(r"-?\d*\.\d{7,}(e[-+]?\d+)?")


def shown_value(value):
    """A value as the sweep's table, summary.md, plot legends and line prefixes show it: a float
    of many digits (an Optuna trial's lr=0.0070947950645657365) to 4 significant ones (0.007095);
    summary.csv and the folder names keep it whole."""
    return f"{float(value):.4g}" if isinstance(value, str) and LONG_FLOAT.fullmatch(value) else value


def job_prefix(run_dir: Path, overrides=(), beside_others: bool = False) -> str:
    """`[lr=0.01,activation=tanh] `: what starts each line of a job that runs beside others
    (Hydra's joblib launcher with n_jobs other than 1, or beside_others: a stacked group), so
    interleaved lines can be told apart; "" otherwise. The job is named by its swept values,
    each key by its shortest distinct ending (short_keys)."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return ""
    hc = HydraConfig.get()
    launcher = hc.launcher
    if not beside_others and ("joblib" not in str(launcher.get("_target_", "")) or launcher.get("n_jobs") == 1):
        return ""
    keys = swept_keys(hydra_sweep_dir())
    values = override_values(overrides)
    names = short_keys([k for k in keys if k in values])  # as the sweep's table names them
    name = ",".join(f"{short}={shown_value(values[k])}" for k, short in names.items())
    return f"[{name or Path(run_dir).name}] "


def hydra_sweep_dir() -> Path:
    """This multirun's sweep folder, relative paths taken from the folder mlprun started in (a job
    with hydra.job.chdir=true works in its own folder, where `runs/multirun/...` is not)."""
    hc = HydraConfig.get()
    folder = Path(str(hc.sweep.dir))
    return folder if folder.is_absolute() else Path(str(hc.runtime.cwd)) / folder


def tensorboard_dir(run_dir: Path, overrides=()) -> Path:
    """Where a fresh run logs TensorBoard (see the module's docstring); a sweep job's folder is
    claimed for it (`claim_tensorboard_dir`)."""
    run_dir = Path(run_dir)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_dir = hydra_sweep_dir()
        try:
            own = run_dir.resolve().relative_to(sweep_dir.resolve()).as_posix()
        except ValueError:  # a job folder outside its sweep folder: keep it with the job
            return run_dir / "tensorboard"
        name = job_name(overrides, swept_keys(sweep_dir)) or own
        # the short name when it is free (or this job's already); else the job folder's own name,
        # which no other job of the folder has (a suffix only if someone made that folder by hand)
        candidates = itertools.chain(dict.fromkeys([name, own]), (f"{own}_{i}" for i in itertools.count(2)))
        for candidate in candidates:
            tb_dir = sweep_dir / "tensorboard" / candidate.replace(os.sep, "_")
            if claim_tensorboard_dir(tb_dir, run_dir, sweep_dir):
                return tb_dir
    return run_dir / "tensorboard"


TB_OWNER = ".mlprun_job"  # in a sweep job's TensorBoard folder: the job folder, relative to it


def tensorboard_owner(tb_dir: Path, sweep_dir: Path) -> Path | None:
    """The (resolved) job folder a sweep's TensorBoard folder belongs to, or None when nobody's.

    Its `.mlprun_job` file says; a folder from before those files (events, no owner file) is the
    job's whose results.json "tensorboard" names it."""
    tb_dir = Path(tb_dir)
    try:
        return (tb_dir / (tb_dir / TB_OWNER).read_text().strip()).resolve()
    except OSError:  # no owner file (yet)
        pass
    if not any(tb_dir.glob("events.out.tfevents.*")):
        return None
    target = tb_dir.resolve()
    for results in Path(sweep_dir).rglob("results.json"):
        try:
            named = json.loads(results.read_text()).get("tensorboard")
        except (OSError, ValueError, AttributeError):  # not a job's readable results.json
            continue
        if isinstance(named, str) and (results.parent / named).resolve() == target:
            return results.parent.resolve()
    return None


def claim_tensorboard_dir(tb_dir: Path, run_dir: Path, sweep_dir: Path) -> bool:
    """Make `tb_dir` the TensorBoard folder of the job in `run_dir`: True when it was free or is
    this job's already, False when another job owns it (then nothing there is touched)."""
    tb_dir, me = Path(tb_dir), Path(run_dir).resolve()
    owner = tensorboard_owner(tb_dir, sweep_dir)
    if owner is not None:
        return owner == me
    tb_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of two jobs claiming the same free folder at once, exactly one wins
        fd = os.open(tb_dir / TB_OWNER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return tensorboard_owner(tb_dir, sweep_dir) == me
    with os.fdopen(fd, "w") as fh:
        fh.write(os.path.relpath(me, tb_dir.resolve()) + "\n")
    return True
