"""The `logger` group (TensorBoard, metrics.csv, MLflow, any combination) and the `debug` presets,
with real runs on dataset=digits: metrics.csv is read back with the csv module, MLflow with its
own MlflowClient on a real local store, TensorBoard with its EventAccumulator."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import QUICK, read_json, run_mlprun, scalars
from mlprunner.checkpoint import load_checkpoint, save_checkpoint

DIGITS = ["dataset=digits", "trainer.device=cpu", "trainer.threads=1", *QUICK]


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def flat(record: dict) -> dict:
    """A results.json history entry by the names metrics.csv and MLflow use."""
    out = {f"train/{k}": v for k, v in record["train"].items()}
    out.update({f"val/{k}": v for k, v in (record["val"] or {}).items()})
    out["lr"] = record["lr"]
    return out


def assert_csv_is_history(run_dir: Path, history: list) -> list[dict]:
    rows = csv_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in history]
    for row, record in zip(rows, history):
        for key, value in flat(record).items():
            assert float(row[key]) == value, (key, row, record)
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[0] > 0
    return rows


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def assert_mlflow_is_history(client, run_id: str, history: list) -> None:
    for key in ("train/loss", "train/error", "val/loss", "val/error", "lr"):
        got = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        want = [(h["epoch"], flat(h)[key]) for h in history]
        assert sorted(got) == want, (key, got, want)  # each epoch once: no duplicated steps


@pytest.mark.slow
def test_logger_many_writes_tensorboard_csv_and_mlflow(tmp_path):
    pytest.importorskip("mlflow")
    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    args = [*DIGITS, "logger=many", f"logger.mlflow.tracking_uri={uri}", "eval.test=true"]
    run_mlprun(*args, "trainer.epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True)
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and len(res["history"]) == 2

    assert_csv_is_history(run_dir, res["history"])
    tb = scalars(run_dir / "tensorboard")
    assert [s for s, _ in tb["Error/val"]] == [1, 2] and "hparam/best_val_error" in tb

    client = mlflow_client(uri)
    run_id = res["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "digits"
    params = run.data.params
    assert params["dataset"] == "digits" and params["optim"] == "adam" and params["optim.lr"] == "0.001"
    assert params["eval.test"] == "true"
    assert run.data.tags["mlprun.run_dir"] == str(run_dir.resolve())
    assert run.data.tags["mlprun.command"].startswith("mlprun ")
    assert_mlflow_is_history(client, run_id, res["history"])
    assert run.data.metrics["test/error"] == res["test"]["error"]
    assert run.data.metrics["test/f1"] == pytest.approx(res["test"]["f1"])  # it was never logged
    assert [v for _, v in tb["F1/test"]] == [pytest.approx(res["test"]["f1"])]
    assert run.data.metrics["best_val_error"] == res["best"]["val"]["error"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"results.json", "learning_curves.png", "confusion_matrix.png", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.pt"]


@pytest.mark.slow
def test_interrupted_run_resumes_the_same_mlflow_run_and_csv_without_duplicates(tmp_path):
    """SIGTERM after the first checkpoint: the MLflow run is KILLED, then the resume reopens it.
    A metrics.csv row after the checkpoint's epoch (what a process killed between the two leaves)
    is dropped on resume."""
    pytest.importorskip("mlflow")
    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    args = [*DIGITS, "logger=[csv,mlflow]", f"logger.mlflow.tracking_uri={uri}", "trainer.epochs=8"]
    last = run_dir / "checkpoints" / "last.pt"
    with open(tmp_path / "out", "w") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "mlprunner", *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, stdout=out, stderr=out
        )
        end = time.monotonic() + 240
        while not last.exists() and p.poll() is None and time.monotonic() < end:
            time.sleep(0.01)
        p.send_signal(signal.SIGTERM)
        assert p.wait(120) == 130, (tmp_path / "out").read_text()[-3000:]
    res = read_json(run_dir / "results.json")
    assert res["status"] == "interrupted"
    k = load_checkpoint(last)["epoch"]
    assert 1 <= k < 8
    client = mlflow_client(uri)
    run_id = res["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run_id, "val/error")] == list(range(1, k + 1))
    rows = csv_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(1, k + 1))
    with open(run_dir / "metrics.csv", "a") as fh:  # an epoch the checkpoint does not hold
        fh.write(f"{k + 1},999,9.9,0.5,0.5,0.5,9.9,0.5,0.5,0.5,0.001,1.0\n")

    run_mlprun(f"resume={run_dir}", cwd=tmp_path, check=True)
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and res["mlflow"]["run_id"] == run_id
    assert [h["epoch"] for h in res["history"]] == list(range(1, 9))
    rows = assert_csv_is_history(run_dir, res["history"])
    assert "999" not in [r["step"] for r in rows]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_mlflow_is_history(client, run_id, res["history"])
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1  # no second MLflow run


@pytest.mark.slow
def test_a_saved_config_without_logger_key_resumes_with_tensorboard(tmp_path):
    """A run saved before the logger group (no `logger` key in its checkpoint or
    .hydra/config.yaml) resumes and logs to TensorBoard as it did."""
    old = tmp_path / "old"
    run_mlprun(*DIGITS, "trainer.epochs=1", f"hydra.run.dir={old}", cwd=tmp_path, check=True)
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(old / "checkpoints" / name)
        assert ckpt["config"].pop("logger") == {"tensorboard": {"_target_": "mlprunner.loggers.TensorBoard"}}
        save_checkpoint(old / "checkpoints" / name, {k: v for k, v in ckpt.items() if k != "format"})
    saved = yaml.safe_load((old / ".hydra" / "config.yaml").read_text())
    del saved["logger"]
    (old / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    run_mlprun(f"resume={old}", "trainer.epochs=2", cwd=tmp_path, check=True)
    assert read_json(old / "results.json")["status"] == "completed"
    assert [s for s, _ in scalars(old / "tensorboard")["Error/val"]] == [1, 2]


def test_unknown_logger_and_missing_mlflow_are_one_line_errors(tmp_path, mlprun_here):
    fake = tmp_path / "no_mlflow" / "mlflow"  # an environment where `import mlflow` fails
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'mlflow'\")\n")
    proc = run_mlprun(*DIGITS, "logger=mlflow", cwd=tmp_path, env={"PYTHONPATH": str(fake.parent)})
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "logger=mlflow" in lines[0] and "pip install 'mlprunner[mlflow]'" in lines[0], lines

    proc = mlprun_here(*DIGITS, "logger=wandb")  # (in this process, after the subprocess: see mlprun_here)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "logger=wandb" in lines[0] and "csv, many, mlflow, none, tensorboard" in lines[0]
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- debug presets


def only_run(tmp_path: Path) -> Path:
    found = [p.parent for p in (tmp_path / "runs" / "debug").rglob("results.json")]
    assert len(found) == 1, found
    return found[0]


def test_fast_dev_run_is_one_batch_of_each_and_writes_no_checkpoints(tmp_path, mlprun_here):
    args = ["debug=fast_dev_run", "logger=csv", "eval.test=true", "trainer.eval_batch_size=50"]
    proc = mlprun_here(*DIGITS, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run(tmp_path)  # under runs/debug/
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and res["epochs_completed"] == 1
    assert res["dataset"]["n_train"] == 100 and res["dataset"]["n_val"] == 50 and res["test"]["n"] == 50
    assert [r["step"] for r in csv_rows(run_dir)] == ["1"]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "tensorboard").exists()
    assert "tensorboard" not in res
    assert "debug: training on 100 samples" in proc.stdout + proc.stderr


def test_limit_caps_the_batches_of_each_split(tmp_path, mlprun_here):
    proc = mlprun_here(
        *DIGITS,
        "debug=limit",
        "logger=csv",
        "trainer.limit_train_batches=2",
        "trainer.eval_batch_size=50",
        "eval.test=true",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run(tmp_path)
    res = read_json(run_dir / "results.json")
    assert res["epochs_completed"] == 3
    assert [int(r["step"]) for r in csv_rows(run_dir)] == [2, 4, 6]
    assert res["dataset"]["n_train"] == 200 and res["dataset"]["n_val"] == 100 and res["test"]["n"] == 100


def test_overfit_reaches_zero_training_error(tmp_path, mlprun_here):
    proc = mlprun_here(*DIGITS, "debug=overfit")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run(tmp_path)
    res = read_json(run_dir / "results.json")
    assert res["dataset"]["n_train"] == 300 and res["dataset"]["n_val"] == 300  # validated on the same batches
    assert res["last"]["train"]["error"] == 0.0 and res["last"]["val"]["error"] == 0.0
    assert res["epochs_completed"] == 40


@pytest.mark.parametrize("key", ["trainer.limit_train_batches", "trainer.overfit_batches"])
def test_limits_are_checked(tmp_path, key, mlprun_here):
    proc = mlprun_here(*DIGITS, f"{key}=0")
    assert proc.returncode == 2 and key in proc.stderr and "an integer >= 1" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_profile_preset_writes_the_profile(tmp_path, mlprun_here):
    proc = mlprun_here(*DIGITS, "debug=profile", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run(tmp_path)
    assert read_json(run_dir / "results.json")["epochs_completed"] == 1
    assert json.loads((run_dir / "profile.json").read_text())


def test_every_logger_finishes_when_one_fails_at_its_end():
    """One logger's end failing (a full disk under TensorBoard's close) still ends the others
    (an MLflow run left RUNNING otherwise), then one error says the run completed and which
    logger failed."""
    from mlprunner.errors import MlprunError
    from mlprunner.loggers import Logger, Loggers

    ended = []

    class FullDisk(Logger):
        def finish(self, run):
            raise OSError(28, "No space left on device")

    class Fine(Logger):
        def finish(self, run):
            ended.append(run)

    with pytest.raises(MlprunError) as failed:
        Loggers([FullDisk(), Fine()]).finish("the run")
    assert ended == ["the run"]
    assert str(failed.value) == (
        "the run completed (results.json), but logger FullDisk could not finish: [Errno 28] No space left on device"
    )


BAD_LOGGER = """
from mlprunner.loggers import Logger


class FullDisk(Logger):
    def finish(self, run):
        raise OSError(28, "No space left on device")
"""


def test_a_logger_failing_at_its_end_leaves_the_run_completed(tmp_path):
    """A logger of the user's whose end fails: a single run shows its summary, then one error
    line naming the logger, exit 1, results.json completed; in a sweep the job stays completed
    (it was recorded failed, and a rerun of the sweep would have trained it again)."""
    (tmp_path / "badlog.py").write_text(BAD_LOGGER)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    args = [*DIGITS, "model.hidden=[16]", "trainer.epochs=1", "+logger.bad._target_=badlog.FullDisk"]
    single = run_mlprun(*args, "hydra.run.dir=one", cwd=tmp_path, env=env)
    assert single.returncode == 1, single.stderr
    assert single.stderr.strip().splitlines()[-1] == (
        "mlprun: error: the run completed (results.json), but logger FullDisk could not finish: "
        "[Errno 28] No space left on device"
    )
    assert (
        "mlprun: completed" in single.stdout and read_json(tmp_path / "one" / "results.json")["status"] == "completed"
    )

    sweep = tmp_path / "sweep"
    proc = run_mlprun("-m", *args, "optim.lr=0.01,0.001", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = [p for p in sweep.iterdir() if (p / "results.json").is_file()]
    assert len(jobs) == 2 and all(read_json(p / "results.json")["status"] == "completed" for p in jobs)
    assert proc.stdout.count("could not finish") == 2
