"""A non-editable install finds its configs from any folder (configs/ is packaged as mlprunner.configs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, read_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install --no-deps --target` of a copy of the source tree (a copy, so the build leaves
    nothing in the working tree); returns the target folder."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "runs",
            "multirun",
            "outputs",
            "data",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
        ),
    )
    target = base / "target"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--quiet",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def run_installed(target: Path, cwd: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONUNBUFFERED": "1"}
    env.pop("MLPRUN_DEBUG", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)


def test_configs_are_in_the_install(installed):
    configs = installed / "mlprunner" / "configs"
    assert (configs / "config.yaml").is_file()
    for group, option in [
        ("dataset", "digits"),
        ("dataset", "mnist"),
        ("model", "mlp_500_300"),
        ("optim", "adam"),
        ("scheduler", "onecycle"),
        ("loss", "cross_entropy"),
        ("trainer", "default"),
        ("experiment", "mnist_seed"),
        ("hydra/job_logging", "mlprun"),
    ]:
        assert (configs / group / f"{option}.yaml").is_file(), f"{group}/{option}.yaml not installed"
    assert not (installed / "mlprunner.egg-link").exists()


def test_installed_package_composes_from_another_folder(installed, tmp_path):
    where = run_installed(
        installed,
        tmp_path,
        "-c",
        "import mlprunner, mlprunner.configs as c; print(mlprunner.__file__); print(list(c.__path__)[0])",
    )
    assert where.returncode == 0, where.stderr
    lines = where.stdout.split()
    assert all(line.startswith(str(installed)) for line in lines), lines  # not the editable checkout
    proc = run_installed(
        installed, tmp_path, "-m", "mlprunner", "--cfg", "job", "dataset=digits", "optim=sgd", "trainer.epochs=3"
    )
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.dataset.name == "digits" and cfg.optim._target_ == "torch.optim.SGD"
    assert list(cfg.model.hidden) == [500, 300] and cfg.trainer.epochs == 3
    assert not (tmp_path / "runs").exists()


def test_installed_package_trains_from_another_folder(installed, tmp_path):
    proc = run_installed(
        installed,
        tmp_path,
        "-m",
        "mlprunner",
        "dataset=xor",
        "model=mlp_100",
        "trainer.epochs=1",
        "trainer.progress=plain",
        "trainer.threads=1",
        "trainer.tensorboard.graph=false",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = list((tmp_path / "runs").glob("*/*/results.json"))
    assert len(runs) == 1
    res = read_json(runs[0])
    assert res["status"] == "completed" and res["epochs_completed"] == 1
    assert (runs[0].parent / "mlprun.log").is_file()  # the packaged hydra/job_logging config was used


# the sweep extra's import packages (pyproject.toml's `sweep`), and what only they need
SWEEP_EXTRA = ("submitit", "optuna", "hydra_joblib_launcher", "hydra_submitit_launcher", "hydra_optuna_sweeper")


@pytest.fixture(scope="module")
def without_sweep_extra(installed, tmp_path_factory) -> tuple[list[str], str]:
    """`python -S` with PYTHONPATH on the install and on links to everything this environment's
    site-packages holds but the sweep extra's packages and the project: mlprun as after
    `pip install mlprunner` alone. Returns (the command's first words, PYTHONPATH)."""
    site = Path(sysconfig.get_paths()["purelib"])
    farm = tmp_path_factory.mktemp("site")
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("mlprunner", "__editable__", "hydra_plugins")) or name.startswith(SWEEP_EXTRA):
            continue
        (farm / entry.name).symlink_to(entry)
    return [sys.executable, "-S"], f"{installed}{os.pathsep}{farm}"


def test_without_the_sweep_extra_mlprun_runs_without_plugin_warnings(without_sweep_extra, tmp_path):
    """Hydra imports every module under hydra_plugins at each start and warned in six lines that
    mlprun's launcher plugin did not import (it imported the submitit launcher): a single run is
    quiet, and choosing what needs the extra says which extra in one line, exit 2."""
    python, path = without_sweep_extra
    env = {**os.environ, "PYTHONPATH": path, "MLPRUN_DATA": os.environ.get("MLPRUN_DATA", "")}
    env.pop("MLPRUN_DEBUG", None)

    def mlprun(*args):
        return subprocess.run(
            [*python, "-m", "mlprunner", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )

    assert subprocess.run([*python, "-c", "import submitit"], env=env, capture_output=True).returncode != 0
    proc = mlprun("dataset=xor", "model=mlp_100", "trainer.epochs=1", "trainer.progress=plain", "hydra.run.dir=one")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Error importing" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    for choice, dist in [
        ("hydra/launcher=slurm", "hydra-submitit-launcher"),
        ("hydra/launcher=joblib", "hydra-joblib-launcher"),
        ("hydra/sweeper=mlprun_optuna", "hydra-optuna-sweeper"),
    ]:
        proc = mlprun("-m", "dataset=xor", choice, "optim.lr=0.1,0.2", "hydra.sweep.dir=s")
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines() == [
            f"mlprun: error: {choice.replace('mlprun_optuna', 'optuna')} needs {dist}, which is not installed: "
            "pip install 'mlprunner[sweep]'"
        ], proc.stderr
    assert not (tmp_path / "s").exists()
