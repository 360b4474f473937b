"""`mlprun resume=<run dir | checkpoint | latest> [safe overrides]`: continue a run in place.

The run continues in its own directory with the configuration saved in its checkpoint. Only
overrides that cannot change what was learned so far are accepted.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from .errors import ConfigError

log = logging.getLogger("mlprunner")

# Keys (or key prefixes ending in '.') that may change when a run is continued.
SAFE_KEYS = (
    "trainer.epochs", "trainer.early_stopping.", "trainer.log_every_n_steps", "trainer.progress",
    "trainer.tensorboard.", "trainer.checkpoint.", "trainer.threads", "trainer.profile",
    "trainer.eval_batch_size", "trainer.device", "eval.", "dataset.root", "dataset.download",
)


def is_safe(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in SAFE_KEYS)


def find_latest(runs_root: Path = Path("runs")) -> Path:
    candidates = [p for p in runs_root.glob("**/checkpoints/last.pt")] if runs_root.is_dir() else []
    if not candidates:
        raise ConfigError("resume", "latest", message=(
            f"resume=latest: no run with checkpoints/last.pt under {runs_root.resolve()}"))
    return max(candidates, key=lambda p: p.stat().st_mtime).parent.parent


def locate(arg: str) -> tuple[Path, Path]:
    """(run dir, checkpoint file) for a resume= argument."""
    if arg == "latest":
        run_dir = find_latest()
        return run_dir, run_dir / "checkpoints" / "last.pt"
    path = Path(arg).expanduser()
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            raise ConfigError("resume", arg, message=(
                f"resume={arg}: {ckpt} not found; the folder is not an mlprun run with a checkpoint"))
        return path, ckpt
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run_dir, path
    raise ConfigError("resume", arg, message=f"resume={arg}: no such run directory or checkpoint file")


def parse_overrides(args: list[str]) -> list[str]:
    out = []
    for a in args:
        if a.startswith("resume="):
            continue
        if a.startswith("-"):
            raise ConfigError(a, message=f"{a}: flags cannot be combined with resume= "
                                         "(resume continues one run; see mlprun --help)")
        key, eq, _ = a.lstrip("+~").partition("=")
        if not eq:
            raise ConfigError(a, message=f"cannot parse override '{a}': expected key=value")
        if not is_safe(key):
            raise ConfigError(key, message=(
                f"{key} cannot change when resuming (it would change the model, data or optimizer); "
                f"allowed with resume=: {', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in SAFE_KEYS)}"))
        out.append(a)
    return out


def _setup_logging(run_dir: Path) -> None:
    if log.handlers:
        return
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    fileh = logging.FileHandler(run_dir / "mlprun.log", mode="a", delay=True)
    fileh.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    log.addHandler(console)
    log.addHandler(fileh)
    log.setLevel(logging.INFO)
    log.propagate = False


def resume_main(args: list[str]) -> int:
    arg = [a for a in args if a.startswith("resume=")][-1].split("=", 1)[1]
    overrides = parse_overrides(args)
    run_dir, ckpt_path = locate(arg)
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    cfg = OmegaConf.create(ckpt["config"])
    try:
        cfg.merge_with(OmegaConf.from_dotlist(overrides))
    except Exception as exc:
        raise ConfigError("resume", message=f"cannot apply overrides {overrides}: {exc}") from None
    cfg.resume = None
    from .config import validate
    from .results import read_results

    validate(cfg)
    prior = read_results(run_dir) or {}
    epochs = int(cfg.trainer.epochs)
    done = int(ckpt["epoch"])
    stopped = bool((ckpt.get("early_stopping") or {}).get("stopped"))
    if prior.get("status") == "completed" and (done >= epochs or stopped):
        why = "stopped early" if stopped and done < epochs else f"completed all {done} epochs"
        print(f"mlprun: run {run_dir} already {why}; nothing to do "
              f"(raise trainer.epochs to train longer)")
        return 0
    if done >= epochs and not stopped:
        print(f"mlprun: run {run_dir} already has {done} epochs (trainer.epochs={epochs}); nothing to do")
        return 0
    _setup_logging(run_dir)
    from .run import run

    run(cfg, run_dir, resume_from=ckpt_path, overrides=overrides)
    return 0
