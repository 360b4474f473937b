"""TensorBoard and MLflow across the life of a run: a second sweep into the same folder, a resume
after a test evaluation, a failed or interrupted run, a restart before the first checkpoint.
Real runs on dataset=digits; TensorBoard read back with its own EventAccumulator and HParams
backend, MLflow with its MlflowClient on a real sqlite store."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2

from conftest import QUICK, hparams_session_groups, mlprun_env, read_json, run_mlprun

DIGITS = [
    "dataset=digits",
    "model=mlp",
    "model.hidden=[16]",
    "trainer.device=cpu",
    "trainer.threads=1",
    "trainer.tensorboard.histograms=false",
    *QUICK,
]
SLOW_CHECKPOINT = "MLPRUN_TEST_SLOW_CHECKPOINT"  # checkpoint.save_checkpoint pauses half-way


def tags(log_dir: Path) -> dict[str, list[int]]:
    """{tag: [step, ...]} of every scalar, image and tensor (PR curve) of a TensorBoard run."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    kinds = acc.Tags()
    out = {t: [e.step for e in acc.Scalars(t)] for t in kinds["scalars"]}
    out.update({t: [e.step for e in acc.Images(t)] for t in kinds["images"]})
    out.update({t: [e.step for e in acc.Tensors(t)] for t in kinds["tensors"]})
    return out


def is_test(tag: str) -> bool:
    return tag.endswith("/test") or tag.startswith(("Test/", "PR/test/"))


def hparams_status(log_dir: Path) -> dict[str, str]:
    """{session: status} as TensorBoard's HParams dashboard lists the runs under `log_dir`."""
    return {s.name: api_pb2.Status.Name(s.status) for g in hparams_session_groups(log_dir) for s in g.sessions}


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def start(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """`python -m mlprunner ARGS` in the background, its output in a file (no pipe can fill up)."""
    with open(cwd / f"out.{time.time_ns()}", "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mlprunner", *args], cwd=cwd, env=mlprun_env(env), stdout=out, stderr=out
        )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> bool:
    """Poll until predicate() holds (True) or the process has exited (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


@pytest.mark.slow
def test_a_second_sweep_with_other_fixed_overrides_keeps_the_first_sweeps_tensorboard(tmp_path):
    sweep = tmp_path / "S"
    grid = ["-m", "trainer.seed=0,1", *DIGITS, "trainer.epochs=2", f"hydra.sweep.dir={sweep}"]
    run_mlprun(*grid, cwd=tmp_path, check=True)
    first = {d: read_json(d / "results.json")["tensorboard"] for d in sweep.iterdir() if (d / "results.json").is_file()}
    assert sorted(Path(tb).name for tb in first.values()) == ["trainer.seed=0", "trainer.seed=1"]  # short names
    # as a sweep made before TensorBoard folders named their job: results.json says whose it is
    (sweep / "tensorboard" / "trainer.seed=0" / ".mlprun_job").unlink()
    run_mlprun(*grid, "optim.lr=0.01", cwd=tmp_path, check=True)

    jobs = {d: read_json(d / "results.json") for d in sweep.iterdir() if (d / "results.json").is_file()}
    assert len(jobs) == 4 and all(r["status"] == "completed" for r in jobs.values())
    folders = {(d / r["tensorboard"]).resolve() for d, r in jobs.items()}
    assert len(folders) == 4, [r["tensorboard"] for r in jobs.values()]  # one TensorBoard run per job
    for d, res in jobs.items():
        got = tags(d / res["tensorboard"])
        assert got["Error/val"] == [1, 2], (d.name, got)  # each job's own epochs, each once
        if d in first:
            assert res["tensorboard"] == first[d]  # the first sweep's jobs keep their folders
    assert set(hparams_status(sweep / "tensorboard").values()) == {"STATUS_SUCCESS"}
    assert len(hparams_status(sweep / "tensorboard")) == 4


@pytest.mark.slow
def test_a_resume_that_trains_drops_the_earlier_test_and_a_new_test_gets_its_own_step(tmp_path):
    pytest.importorskip("mlflow")
    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    logged = ["logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}"]
    run_mlprun(
        *DIGITS, *logged, "trainer.epochs=2", "eval.test=true", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True
    )
    assert (run_dir / "confusion_matrix.png").is_file()
    before = tags(run_dir / "tensorboard")
    assert before["Error/test"] == [2] and before["hparam/test_error"] == [2]

    # trained on without a test: the earlier test scored another model
    run_mlprun(f"resume={run_dir}", "trainer.epochs=3", "eval.test=false", cwd=tmp_path, check=True)
    res = read_json(run_dir / "results.json")
    assert "test" not in res and not (run_dir / "confusion_matrix.png").exists()
    got = tags(run_dir / "tensorboard")
    assert not [t for t in got if is_test(t) or t == "hparam/test_error"], sorted(got)
    assert got["hparam/best_val_error"] == [3] and got["Error/val"] == [1, 2, 3]
    assert list(hparams_status(run_dir / "tensorboard").values()) == ["STATUS_SUCCESS"]
    client = mlflow_client(uri)
    run_id = res["mlflow"]["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "test/error")] == [2]  # MLflow cannot delete it

    # tested again: one test point, at the epochs trained so far, the checkpoint's epoch as a tag
    run_mlprun(f"resume={run_dir}", "trainer.epochs=4", "eval.test=true", cwd=tmp_path, check=True)
    res = read_json(run_dir / "results.json")
    got = tags(run_dir / "tensorboard")
    for tag in ("Error/test", "Accuracy/test", "Loss/test", "Test/confusion_matrix", "hparam/test_error"):
        assert got[tag] == [4], (tag, got[tag])
    assert [t for t in got if t.startswith("PR/test/")] and all(got[t] == [4] for t in got if t.startswith("PR/test/"))
    history = client.get_metric_history(run_id, "test/error")
    assert [m.step for m in history] == [2, 4] and history[-1].value == res["test"]["error"]
    assert client.get_run(run_id).data.tags["mlprun.test_checkpoint_epoch"] == str(res["test"]["epoch"])


@pytest.mark.slow
def test_failed_and_interrupted_runs_end_their_hparams_session_and_a_completed_resume_is_success(tmp_path):
    failed = tmp_path / "failed"
    # it diverges in epoch 1, before the first scalar is due (the writers open on the first one):
    # it must not be missing from the HParams table
    args = ["optim=sgd", "optim.lr=1e12", "trainer.epochs=2", "trainer.log_every_n_steps=1000"]
    proc = run_mlprun(*DIGITS, *args, f"hydra.run.dir={failed}", cwd=tmp_path)
    res = read_json(failed / "results.json")
    assert proc.returncode == 1 and res["status"] == "failed" and "at epoch 1," in res["reason"], res["reason"]
    assert list(hparams_status(failed / "tensorboard").values()) == ["STATUS_FAILURE"]

    run_dir = tmp_path / "intr"
    last = run_dir / "checkpoints" / "last.pt"
    p = start([*DIGITS, "trainer.epochs=30", f"hydra.run.dir={run_dir}"], tmp_path)
    assert wait_for(last.exists, p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(120) == 130
    res = read_json(run_dir / "results.json")
    assert res["status"] == "interrupted" and res["epochs_completed"] < 30
    # HParams has no "interrupted": Failure, not Unknown (tblog.hparams_summaries)
    assert list(hparams_status(run_dir / "tensorboard").values()) == ["STATUS_FAILURE"]

    epochs = res["epochs_completed"] + 1
    run_mlprun(f"resume={run_dir}", f"trainer.epochs={epochs}", cwd=tmp_path, check=True)
    # TensorBoard reads only a run's first end record: the resume replaced the earlier one
    assert list(hparams_status(run_dir / "tensorboard").values()) == ["STATUS_SUCCESS"]
    # and its first start record: the HParams table shows the epochs the run went on to, not 30
    (group,) = hparams_session_groups(run_dir / "tensorboard")
    assert group.hparams["trainer.epochs"].number_value == epochs
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors("provenance/text_summary")}
    assert sorted(texts) == [0, res["epochs_completed"]]  # the resume's command at the epoch it resumed from
    assert f"resume={run_dir} trainer.epochs={epochs}" in texts[res["epochs_completed"]]


@pytest.mark.slow
def test_a_restart_before_the_first_checkpoint_continues_the_same_mlflow_run(tmp_path):
    pytest.importorskip("mlflow")
    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    args = [*DIGITS, "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}", "trainer.epochs=2"]
    # killed while writing its first checkpoint: nothing of it survives but results.json
    p = start([*args, f"hydra.run.dir={run_dir}"], tmp_path, env={SLOW_CHECKPOINT: "60"})
    assert wait_for(lambda: list((run_dir / "checkpoints").glob(".*.pt.*.tmp")), p)
    p.kill()
    p.wait(60)
    run_id = read_json(run_dir / "results.json")["mlflow"]["run_id"]
    assert not list((run_dir / "checkpoints").glob("*.pt"))

    proc = run_mlprun(f"resume={run_dir}", cwd=tmp_path, check=True)
    assert "restarting it from epoch 1" in proc.stdout
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and res["mlflow"]["run_id"] == run_id
    client = mlflow_client(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no second MLflow run
    assert [m.step for m in client.get_metric_history(run_id, "val/error")] == [1, 2]
    assert tags(run_dir / res["tensorboard"])["Error/val"] == [1, 2]
