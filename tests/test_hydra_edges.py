"""Hydra's edge paths through the real command line (issue 15): deleting keys with `~`, adding
unknown keys with `+`, interpolations, hydra.job.chdir, a run's saved config as the primary
config. Each works as a Hydra user expects or is refused in one line naming the key, with nothing
left on disk."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

import mlprunner.cli as cli
from conftest import read_json, requires_mnist, run_main_inprocess, run_mlprun
from mlprunner.errors import ConfigError
from mlprunner.run import run
from mlprunner.runs import find_latest

TINY = ["dataset=digits", "trainer.epochs=1", "trainer.progress=plain", "trainer.tensorboard.enabled=false"]


@pytest.fixture
def mlprun(mlprun_here):
    """mlprun's entry point in this process, in tmp_path (a subprocess would add seconds of
    start-up to every case and check nothing more here)."""
    return mlprun_here


def subprocess_mlprun(tmp_path: Path):
    """The same call as the `mlprun` fixture, as a real process (where a test goes on with
    subprocesses or Hydra's compose API in this process: an in-process run would leave them
    HYDRA_FULL_ERROR=1 or find Hydra already initialised)."""
    return lambda *args, env=None: run_mlprun(*args, cwd=tmp_path, env=env, timeout=300)


def refused(mlprun, tmp_path: Path, *args: str, env: dict | None = None) -> str:
    """Run mlprun; assert exit 2, exactly one stderr line, no traceback and nothing on disk."""
    proc = mlprun(*args, env=env)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("mlprun: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))  # no runs/, no log, no .hydra/
    return lines[0]


def completed(mlprun, tmp_path: Path, *args: str, env: dict | None = None) -> tuple[Path, dict]:
    """Run mlprun to completion; return its run folder and results.json."""
    proc = mlprun(*args, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    folders = [p.parent for p in tmp_path.glob("runs/*/*/results.json")]
    assert len(folders) == 1, (folders, proc.stdout[-2000:])
    return folders[0], read_json(folders[0] / "results.json")


def saved_trainer(run_dir: Path) -> dict:
    import torch  # lazily: only these tests read a checkpoint

    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["config"]["trainer"]


def test_delete_nullable_key_that_holds_null_is_refused_naming_it(mlprun, tmp_path):
    """Hydra deletes only a key that holds a value (null counts as absent): say so, not
    "no such key; did you mean trainer.grad_clip?"."""
    line = refused(mlprun, tmp_path, *TINY, "~trainer.grad_clip")
    assert "~trainer.grad_clip" in line and "null already" in line
    assert "no such" not in line and "did you mean" not in line


def test_delete_nullable_key_with_a_value_means_null(mlprun, tmp_path):
    """`~trainer.grad_clip` after an earlier value: deleted, i.e. no clipping (null)."""
    run_dir, results = completed(mlprun, tmp_path, *TINY, "trainer.grad_clip=1.0", "~trainer.grad_clip")
    assert results["status"] == "completed"
    assert saved_trainer(run_dir)["grad_clip"] is None


def test_delete_required_key_is_refused_before_any_folder(mlprun, tmp_path):
    line = refused(mlprun, tmp_path, *TINY, "~trainer.seed")
    assert "trainer.seed is required" in line and "trainer.seed=0" in line
    assert "not in struct" not in line


def test_unknown_trainer_key_is_refused_with_the_keys(mlprun, tmp_path):
    line = refused(mlprun, tmp_path, *TINY, "+trainer.foo=3")
    assert "trainer.foo: no such key in trainer" in line
    assert "epochs" in line and "grad_clip" in line and "early_stopping" in line


def test_a_mistyped_dataset_key_is_refused_with_or_without_plus(mlprun, tmp_path):
    """`dataset.subst=300` names dataset.subset and does not advise `+dataset.subst` (mlprun's
    loaders would ignore it); `+dataset.subst=300` is refused the same way, not trained without
    a subset."""
    line = refused(mlprun, tmp_path, *TINY, "dataset.subst=300")
    assert "dataset.subst" in line and "dataset.subset" in line and "+dataset" not in line, line
    line = refused(mlprun, tmp_path, *TINY, "+dataset.subst=300")
    assert "dataset.subst: no such key in dataset" in line and "dataset.subset" in line, line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (root may write anywhere else)")
@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_output_folder_that_cannot_be_made_is_refused_naming_its_key(mlprun, tmp_path, key):
    args = [*TINY, f"{key}=/proc/mlprun-cannot-be-made"] + (["-m"] if "sweep" in key else [])
    line = refused(mlprun, tmp_path, *args)
    assert line.startswith(f"mlprun: error: {key}=/proc/mlprun-cannot-be-made: cannot make this folder"), line


@pytest.mark.parametrize(
    ("override", "said"),
    [("hydra.job.chdir=maybe", "allowed: true, false"), ("hydra.launcher.n_jobs=two", "allowed: an integer")],
)
def test_a_wrong_type_for_a_key_of_hydras_is_one_line_naming_it(mlprun, tmp_path, override, said):
    args = [*TINY, override] + (["-m", "hydra/launcher=joblib"] if "launcher" in override else [])
    line = refused(mlprun, tmp_path, *args)
    assert line == f"mlprun: error: {override} is invalid; {said}", line


def test_the_multirun_flag_may_come_after_overrides(mlprun, tmp_path):
    """`mlprun trainer.epochs=1 -m trainer.seed=0,1`: a sweep (Hydra's argparse alone refuses a
    flag after an override, with its whole usage)."""
    proc = mlprun(*TINY, "-m", "trainer.seed=0,1", "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "sweep").glob("*/results.json"))) == 2


def test_a_second_signal_outside_any_sweep_is_exit_130_interrupted(tmp_path, monkeypatch, capsys):
    """A KeyboardInterrupt (the second signal) out of a single run's start (Hydra composing the
    config): exit 130 'interrupted'; the check for a stopped joblib sweep must not trip over there
    being no sweep (it raised TypeError: 'unexpected TypeError', exit 1)."""

    def second_signal():
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "hydra_app", second_signal)
    code, _, err = run_main_inprocess(["dataset=digits"], {}, monkeypatch, capsys)  # env and argv restored after
    assert code == 130 and err.strip() == "mlprun: error: interrupted", err


def test_a_top_level_key_of_ones_own_must_be_interpolated(mlprun, tmp_path):
    """`+foo=1` that nothing reads is refused; named by an interpolation it is a value to reuse."""
    line = refused(mlprun, tmp_path, *TINY, "+base_lr=0.01")
    assert "base_lr: no such top-level key" in line and "${base_lr}" in line, line
    run_dir, results = completed(mlprun, tmp_path, *TINY, "+base_lr=0.01", "optim.lr=${base_lr}")
    assert results["status"] == "completed"
    assert saved_trainer(run_dir) is not None


@pytest.mark.parametrize("epochs_env", [None, "2"])
def test_interpolated_value_resolves_before_validation(mlprun, tmp_path, monkeypatch, epochs_env):
    env = {"EPOCHS": epochs_env} if epochs_env else {}
    monkeypatch.delenv("EPOCHS", raising=False)
    args = ["dataset=digits", "trainer.progress=plain", "trainer.epochs=${oc.env:EPOCHS,1}"]
    run_dir, results = completed(mlprun, tmp_path, *args, env=env)
    want = int(epochs_env or 1)
    assert results["epochs_completed"] == want and saved_trainer(run_dir)["epochs"] == want


def test_interpolated_non_number_is_the_usual_error(mlprun, tmp_path):
    line = refused(mlprun, tmp_path, *TINY, "trainer.epochs=${oc.env:EPOCHS}", env={"EPOCHS": "abc"})
    assert line == "mlprun: error: trainer.epochs='abc' is invalid; allowed: an integer in [1, inf)"


def test_resume_latest_skips_folders_without_a_run(mlprun, tmp_path):
    run_dir, _ = completed(mlprun, tmp_path, *TINY)
    empty = tmp_path / "runs" / "2099-01-01" / "00-00-00-1" / ".hydra"  # a refused start's leftovers
    empty.mkdir(parents=True)
    (empty / "config.yaml").write_text("trainer: {}\n")
    assert find_latest(tmp_path / "runs").resolve() == run_dir.resolve()


@requires_mnist
def test_chdir_keeps_the_data_root_of_the_launch_folder(tmp_path, monkeypatch):
    """hydra.job.chdir=true: the default ./data names the launch folder's data, not the run's."""
    (tmp_path / "data").symlink_to(Path(os.environ["MLPRUN_DATA"]).resolve())
    monkeypatch.delenv("MLPRUN_DATA")
    proc = run_mlprun(
        "dataset=mnist",
        "dataset.subset=1000",
        "dataset.download=false",
        *TINY[1:],
        "hydra.job.chdir=true",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    (results,) = tmp_path.glob("runs/*/*/results.json")
    assert read_json(results)["status"] == "completed"
    assert not list(tmp_path.glob("runs/*/*/data"))  # nothing downloaded into the run folder


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_rerun_from_saved_config_keeps_mlprun_setup_and_never_overwrites(tmp_path):
    run_dir, _ = completed(subprocess_mlprun(tmp_path), tmp_path, *TINY)
    before = _hashes(run_dir)
    saved = ["--config-path", str(run_dir.resolve() / ".hydra"), "--config-name", "config"]
    # into the run's own folder: refused in one line, the folder byte for byte unchanged
    proc = run_mlprun(*saved, f"hydra.run.dir={run_dir.resolve()}", cwd=tmp_path, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"resume={run_dir.resolve()}" in lines[0] and "already holds a run (completed)" in lines[0]
    assert _hashes(run_dir) == before
    # a plain rerun: a new folder under runs/ with mlprun's logging (plain lines, mlprun.log);
    # the saved config named by a path relative to the current directory, as a user types it
    relative = ["--config-path", str(run_dir.relative_to(tmp_path) / ".hydra"), "--config-name", "config"]
    proc = run_mlprun(*relative, cwd=tmp_path, timeout=300, check=True)
    assert _hashes(run_dir) == before
    new = [p.parent for p in tmp_path.glob("runs/*/*/results.json") if p.parent != run_dir]
    assert len(new) == 1 and not (tmp_path / "outputs").exists()
    assert "epoch 1/1" in (new[0] / "mlprun.log").read_text()
    assert not list(new[0].glob("*.log"))[1:]  # mlprun.log only (no Hydra default <name>.log)
    assert "[INFO]" not in proc.stdout and "run folder:" in proc.stdout


def test_a_new_run_inside_mlprun_never_writes_into_a_run(tmp_path, compose_cfg):
    """The check lives in the run itself (RunRecord), not only in the Hydra callback."""
    run_dir, _ = completed(subprocess_mlprun(tmp_path), tmp_path, *TINY)
    before = _hashes(run_dir)
    with pytest.raises(ConfigError, match="already holds a run"):
        run(compose_cfg(*TINY), run_dir)
    assert _hashes(run_dir) == before


@pytest.mark.slow
def test_parallel_jobs_prefix_and_skip_in_percent(tmp_path):
    """joblib jobs' lines carry the job's short name; a rerun skips completed jobs and says
    their best validation error as a percentage, like every other line."""
    sweep = tmp_path / "sweep"
    args = ["-m", "optim.lr=0.01,0.02", *TINY, f"hydra.sweep.dir={sweep}", "hydra/launcher=joblib"]
    args += ["hydra.launcher.n_jobs=2"]
    proc = run_mlprun(*args, cwd=tmp_path, timeout=300, check=True)
    for lr in ("0.01", "0.02"):
        assert re.search(rf"^\[lr={lr}\] epoch 1/1 +train ", proc.stdout, re.M), proc.stdout[-3000:]  # fits 80 columns
    again = run_mlprun(*args, cwd=tmp_path, timeout=300, check=True)
    skips = re.findall(r"already completed \(best val error ([^)]*)\): skipped", again.stdout)
    assert len(skips) == 2 and all(re.fullmatch(r"\d+\.\d\d%", s) for s in skips), again.stdout[-3000:]


@pytest.mark.slow
def test_optuna_log_has_no_colour_codes_when_piped(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_mlprun(
        "-m",
        "hydra/sweeper=mlprun_optuna",
        "hydra.sweeper.n_trials=2",
        "optim.lr=tag(log,interval(0.001,0.1))",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=300,
        check=True,
    )
    out = proc.stdout + proc.stderr
    assert "A new study created" in out, out[-2000:]  # Optuna's own log line is there
    assert "\x1b[" not in out


def test_a_sweep_with_chdir_logs_tensorboard_into_its_sweep_folder(tmp_path):
    """hydra.job.chdir=true with a relative hydra.sweep.dir: each job still logs into
    <sweep>/tensorboard/<its swept values> (the relative folder read from where mlprun started,
    not from the job's own folder)."""
    args = ["dataset=digits", "trainer.epochs=1", "model.hidden=[16]", "trainer.progress=plain"]
    run_mlprun(
        "-m", *args, "optim.lr=0.01,0.02", "hydra.job.chdir=true", "hydra.sweep.dir=sweep", cwd=tmp_path, check=True
    )
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in (sweep / "tensorboard").iterdir() if p.is_dir()) == ["optim.lr=0.01", "optim.lr=0.02"]
    for job in (d for d in sweep.iterdir() if d.name.startswith("dataset=")):
        assert not (job / "tensorboard").exists()
