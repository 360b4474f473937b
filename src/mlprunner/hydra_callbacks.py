"""Hydra callbacks: check a run before Hydra writes anything, summarise a sweep at its end."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError


def job_config(config: DictConfig) -> DictConfig:
    """The task's config without Hydra's own node."""
    return OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])


def existing_run(folder: Path) -> str | None:
    """Describe the run already in `folder`, or None when a new run may start there."""
    if (folder / "results.json").is_file():
        from .results import read_results

        status = (read_results(folder) or {}).get("status", "unknown")
        return f"a run ({status})"
    if (folder / "checkpoints").is_dir() or (folder / "tensorboard").is_dir():
        return "a run's checkpoints or TensorBoard logs"
    return None


class RunGuard(Callback):
    """Validate the config and refuse to reuse a run's folder, before the run folder is made."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from .config import validate

        validate(job_config(config))
        folder = Path(str(config.hydra.run.dir))
        held = existing_run(folder)
        if held:
            raise ConfigError("hydra.run.dir", str(folder), message=(
                f"hydra.run.dir={folder} already holds {held}; nothing was changed. "
                f"Continue it with: mlprun resume={folder} (or choose another hydra.run.dir)"))
