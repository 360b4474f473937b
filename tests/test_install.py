"""A non-editable install finds its configs from any folder (configs/ is packaged as mlprunner.configs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
