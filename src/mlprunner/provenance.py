"""What produced a run: mlprun, torch and Python versions, the git commit (and whether the work
tree had uncommitted changes) of the folder it was launched from, the host, the device and the
command line. Written to results.json ("provenance") and as TensorBoard text."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig

from . import __version__


def version() -> str:
    """The installed package's version (pyproject.toml), else the source tree's."""
    try:
        return metadata.version("mlprunner")
    except metadata.PackageNotFoundError:
        return __version__


def version_line() -> str:
    return f"mlprun {version()} (torch {torch.__version__}, Python {platform.python_version()})"


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs: no git block
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(folder: Path) -> dict | None:
    """{root, commit, dirty} of the git work tree holding `folder`; None outside one."""
    root = _git(["rev-parse", "--show-toplevel"], folder)
    if not root:
        return None
    commit = _git(["rev-parse", "HEAD"], folder)  # None in a repository without commits
    status = _git(["status", "--porcelain", "--untracked-files=no"], folder)
    return {"root": root, "commit": commit, "dirty": bool(status) if status is not None else None}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.partition(':')[2].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def launch_folder() -> Path:
    """Where the command was started (Hydra's runtime.cwd survives hydra.job.chdir=true)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


# the command as typed, noted by cli.main for the processes it starts: a sweep's joblib workers
# and SLURM jobs (sbatch passes the environment on), whose own sys.argv is submitit's or loky's
COMMAND_ENV = "MLPRUN_COMMAND"


def command_line() -> str:
    return shlex.join(["mlprun" if sys.argv[0].endswith(("mlprun", "__main__.py")) else sys.argv[0]] + sys.argv[1:])


def note_command() -> None:
    """Called by `mlprun` before it changes sys.argv: what provenance() names as the command."""
    os.environ[COMMAND_ENV] = command_line()


def provenance(device: torch.device) -> dict:
    cwd = launch_folder()
    out = {
        "mlprun": version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "device": device_name(device),
        "command": os.environ.get(COMMAND_ENV) or command_line(),
        "cwd": str(cwd),
    }
    slurm = slurm_job()
    if slurm:
        out["slurm_job"] = slurm
    git = git_state(cwd)
    if git is not None:
        out["git"] = git
    return out


def slurm_job() -> str | None:
    """The SLURM job this process runs in, as squeue/sacct name it (array task: "12_3")."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def as_markdown(prov: dict) -> str:
    """The provenance block as a TensorBoard text summary (markdown)."""
    rows = []
    for key, value in prov.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        rows.append(f"| {key} | `{value}` |")
    return "| | |\n|---|---|\n" + "\n".join(rows)
