"""hydra/launcher=stacked: compatible sweep jobs trained together, each as if alone.

Real sweeps on scikit-learn's digits (CPU): the same jobs stacked and with Hydra's basic
launcher, compared file by file and epoch by epoch."""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import QUICK, mlprun_env, read_json, run_mlprun, run_mlprun_together
from mlprunner.build import build
from mlprunner.checkpoint import load_checkpoint
from mlprunner.run import set_up_process
from mlprunner.stacked import Job, Stack, group_key, open_member, plan_groups, unstackable
from mlprunner.train import StopFlag

# per-epoch losses of a stacked job against the same job alone: measured largest difference 0
# (bitwise equal: digits, 3 epochs, dropout 0.2, CPU); the stacked forward is baddbmm and the
# solo one addmm, which may round differently on other CPUs, BLAS builds or GPUs
LOSS_TOL = 1e-4

SWEEP = ["dataset=digits", "trainer.epochs=3", "model.dropout=0.2", "optim.lr=0.001,0.003", "trainer.seed=0,1"]


def jobs_of(sweep: Path) -> dict[str, Path]:
    return {p.name: p for p in sweep.iterdir() if (p / "results.json").is_file()}


def test_groups_follow_compatibility(compose_cfg):
    cfgs = [
        compose_cfg("dataset=digits", f"model.activation={a}", f"optim.lr={lr}")
        for a in ("relu", "tanh")
        for lr in (0.001, 0.01)
    ]
    assert plan_groups(cfgs, 16) == [[0, 1], [2, 3]]
    assert plan_groups(cfgs, 1) == [[0], [1], [2], [3]]
    # hyperparameters, seeds, dropout and early stopping may differ; the optimizer class may not
    a = compose_cfg("dataset=digits", "optim.lr=0.1", "trainer.seed=3", "model.dropout=0.5")
    b = compose_cfg("dataset=digits", "trainer.early_stopping.enabled=true", "optim.betas=[0.8,0.9]")
    assert group_key(a) == group_key(b)
    assert group_key(a) != group_key(compose_cfg("dataset=digits", "optim=sgd"))
    assert group_key(a) != group_key(compose_cfg("dataset=digits", "trainer.batch_size=64"))
    assert plan_groups([a, b, compose_cfg("dataset=digits", "model.batchnorm=true")], 16) == [[0, 1], [2]]
    # a job that alone would train under bf16 autocast trains alone (the stacked step is fp32)
    bf16 = compose_cfg("dataset=digits", "trainer.precision=bf16")
    assert "trainer.precision=bf16" in unstackable(bf16)
    assert plan_groups([a, b, bf16], 16) == [[0, 1], [2]]


def test_initial_weights_bitwise_equal_to_solo(compose_cfg, tmp_path):
    cfgs = [compose_cfg("dataset=digits", f"trainer.seed={s}", "trainer.tensorboard.enabled=false") for s in (0, 5)]
    solo = []
    for cfg in cfgs:
        device = set_up_process(cfg.trainer)
        solo.append({k: v.clone() for k, v in build(cfg, device).model.state_dict().items()})
    members = [open_member(Job(cfg, tmp_path / str(i), []), None, StopFlag()) for i, cfg in enumerate(cfgs)]
    stack = Stack(members)
    for i, m in enumerate(members):
        for k, v in m.model.state_dict().items():
            assert torch.equal(v, solo[i][k]), k
        # the member's parameters are views of the stacked weights
        assert m.linears()[0].weight.data_ptr() == stack.weights[0][i].data_ptr()
    assert not torch.equal(solo[0]["0.weight"], solo[1]["0.weight"])  # the seeds differ


def test_jobs_that_cannot_stack_train_alone_and_say_why(tmp_path):
    # a subprocess: this module's compose_cfg keeps Hydra initialised, which mlprun in-process refuses
    proc = run_mlprun(
        "-m",
        "dataset=digits",
        "trainer.epochs=1",
        "trainer.precision=bf16",
        "optim.lr=0.001,0.003",
        "trainer.tensorboard.enabled=false",
        "hydra/launcher=stacked",
        "hydra.sweep.dir=s",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "stacked launcher: 2 job(s) train alone: trainer.precision=bf16 (the stacked step runs in fp32)" in out
    assert "stacked group of" not in out
    assert all(read_json(p)["status"] == "completed" for p in (tmp_path / "s").glob("*/results.json"))
    assert len(list((tmp_path / "s").glob("*/results.json"))) == 2


@pytest.mark.slow
def test_stacked_sweep_matches_solo_jobs(workdir):
    stacked, basic = workdir / "stacked", workdir / "basic"
    proc, solo = run_mlprun_together(
        ["-m", *SWEEP, *QUICK, "hydra/launcher=stacked", f"hydra.sweep.dir={stacked}"],
        ["-m", *SWEEP, *QUICK, f"hydra.sweep.dir={basic}"],
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stacked group of 4 job(s)" in proc.stdout
    assert solo.returncode == 0, solo.stdout[-3000:] + solo.stderr[-3000:]
    a, b = jobs_of(stacked), jobs_of(basic)
    assert sorted(a) == sorted(b) and len(a) == 4
    worst = 0.0
    for name in a:
        ra, rb = read_json(a[name] / "results.json"), read_json(b[name] / "results.json")
        assert ra["status"] == "completed" and ra["epochs_completed"] == 3
        for ea, eb in zip(ra["history"], rb["history"], strict=True):
            for split in ("train", "val"):
                worst = max(worst, abs(ea[split]["loss"] - eb[split]["loss"]))
        for f in (".hydra/config.yaml", ".hydra/overrides.yaml", "learning_curves.png", "checkpoints/best.pt"):
            assert (a[name] / f).is_file(), f
        ca, cb = load_checkpoint(a[name] / "checkpoints/last.pt"), load_checkpoint(b[name] / "checkpoints/last.pt")
        assert ca.keys() == cb.keys() and ca["model"].keys() == cb["model"].keys()
        assert ca["optimizer"]["param_groups"][0]["lr"] == cb["optimizer"]["param_groups"][0]["lr"]
        assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])  # the same dropout draws
        assert ca["rng"]["python"] == cb["rng"]["python"]  # every generator as the solo run leaves it
        assert torch.equal(ca["rng"]["numpy"]["keys"], cb["rng"]["numpy"]["keys"])
        assert (a[name] / ra["tensorboard"]).is_dir()
    print(f"largest per-epoch loss difference stacked vs solo: {worst:.2e}")
    assert worst < LOSS_TOL
    rows = (stacked / "summary.csv").read_text().splitlines()
    assert len(rows) == 5
    # the stacked job's checkpoints serve mlprun-eval and resume= like a solo job's
    job = a[sorted(a)[0]]
    ev = run_eval(job, workdir)
    assert ev.returncode == 0 and "test error" in ev.stdout.lower(), ev.stdout + ev.stderr
    res = run_mlprun(f"resume={job}", "trainer.epochs=4", "trainer.progress=plain", cwd=workdir)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert read_json(job / "results.json")["epochs_completed"] == 4


def run_eval(job: Path, cwd: Path):
    return subprocess.run(
        [sys.executable, "-c", "from mlprunner.cli import eval_main; eval_main()", str(job)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_early_stop_and_divergence_inside_one_group(workdir):
    sweep = workdir / "sweep"
    proc = run_mlprun(
        "-m",
        "dataset=digits",
        "trainer.epochs=6",
        "optim=sgd",
        "optim.lr=0.01,1e8",
        "trainer.early_stopping.enabled=true",
        "trainer.early_stopping.patience=0",
        "trainer.early_stopping.min_delta=0.5",
        *QUICK,
        "hydra/launcher=stacked",
        f"hydra.sweep.dir={sweep}",
        cwd=workdir,
    )
    assert proc.returncode == 1  # one job failed
    assert "stacked group of 2 job(s)" in proc.stdout
    jobs = {json.loads((p / "results.json").read_text())["status"]: p for p in jobs_of(sweep).values()}
    assert set(jobs) == {"completed", "failed"}
    done = read_json(jobs["completed"] / "results.json")
    assert done["stopped_early"] is True and done["epochs_completed"] == 2
    best = load_checkpoint(jobs["completed"] / "checkpoints/best.pt")
    assert best["epoch"] == 1
    failed = read_json(jobs["failed"] / "results.json")
    assert "non-finite" in failed["reason"]


# ------------------------------------------------------------------------------ kill, stop, rerun
# a small deterministic group: 4 jobs (lr x seed), one thread, enough epochs to stop in the middle
KILL_SWEEP = [
    "dataset=digits",
    "model.hidden=[64,32]",
    "model.dropout=0.1",
    "scheduler=cosine",
    "trainer.batch_size=32",
    "trainer.epochs=8",
    "trainer.deterministic=true",
    "trainer.threads=1",
    "trainer.device=cpu",
    "optim.lr=0.001,0.003",
    "trainer.seed=0,1",
    *QUICK,
    "hydra/launcher=stacked",
]


class Background:
    """`python -m mlprunner ARGS` in the background, its output in a file (no pipe can fill)."""

    def __init__(self, args, cwd: Path, env: dict | None = None):
        self.out = cwd / f"bg.{time.time_ns()}.out"
        env = mlprun_env(env)
        with open(self.out, "w") as out:
            self.p = subprocess.Popen(
                [sys.executable, "-m", "mlprunner", *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_until(self, predicate, timeout: float = 300) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.p.poll() is None:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"never happened (exit {self.p.poll()}):\n{self.out.read_text()[-3000:]}")

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        try:
            self.p.wait(timeout)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait(60)
        return self.p.returncode, self.out.read_text()


def epochs_done(sweep: Path) -> list[int]:
    """epochs_completed of every job's results.json (0 while it is being replaced or absent)."""
    out = []
    for p in sorted(sweep.glob("*/results.json")):
        try:
            out.append(int(read_json(p).get("epochs_completed") or 0))
        except ValueError:
            out.append(0)
    return out


def without_times(history: list) -> list:
    return [{k: v for k, v in rec.items() if k != "time_s"} for rec in history]


def assert_same_as_left_alone(sweep: Path, ref: Path) -> None:
    a, b = jobs_of(sweep), jobs_of(ref)
    assert sorted(a) == sorted(b) and len(a) == 4
    for name in a:
        ra, rb = read_json(a[name] / "results.json"), read_json(b[name] / "results.json")
        assert ra["status"] == "completed" and ra["epochs_completed"] == 8, name
        assert without_times(ra["history"]) == without_times(rb["history"]), name  # bitwise: floats compared ==
        assert ra["best"] == rb["best"] and ra["last"] == rb["last"], name
        ca, cb = load_checkpoint(a[name] / "checkpoints/last.pt"), load_checkpoint(b[name] / "checkpoints/last.pt")
        for k in cb["model"]:
            assert torch.equal(ca["model"][k], cb["model"][k]), f"{name}: {k}"
        assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"]), name


@pytest.fixture(scope="module")
def left_alone(tmp_path_factory):
    """The kill tests' sweep, run to the end without interruption (started once per module)."""
    folder = tmp_path_factory.mktemp("left_alone")
    run_mlprun("-m", *KILL_SWEEP, f"hydra.sweep.dir={folder / 'sweep'}", cwd=folder, check=True)
    return folder / "sweep"


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_each_job_exactly(workdir, left_alone):
    sweep = workdir / "sweep"
    args = ["-m", *KILL_SWEEP, f"hydra.sweep.dir={sweep}"]
    bg = Background(args, workdir)
    # every job has checkpointed at least one epoch, and at least one has two
    bg.wait_until(
        lambda: len(epochs_done(sweep)) == 4 and min(epochs_done(sweep)) >= 1 and max(epochs_done(sweep)) >= 2
    )
    bg.p.send_signal(signal.SIGKILL)
    rc, out = bg.finish(60)
    assert rc == -signal.SIGKILL
    killed_at = epochs_done(sweep)
    assert all(1 <= e < 8 for e in killed_at), killed_at
    # one job as if it had not checkpointed yet: the group then holds members at different epochs
    fresh = sorted(jobs_of(sweep).values())[0]
    shutil.rmtree(fresh / "checkpoints")
    (fresh / "results.json").unlink()
    proc = run_mlprun(*args, cwd=workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("was running: resuming from") == 3, proc.stdout[-3000:]
    assert "stacked group of 4 job(s)" in proc.stdout
    for job in jobs_of(sweep).values():
        res = read_json(job / "results.json")
        if job == fresh:
            assert not res.get("resumed")
        else:
            assert len(res["resumed"]) == 1 and 1 <= res["resumed"][0]["from_epoch"] < 8
    assert_same_as_left_alone(sweep, left_alone)


@pytest.mark.slow
def test_sigterm_stops_the_group_and_the_printed_command_finishes_it(workdir, left_alone):
    """Also: each job logs through its own loggers (metrics.csv, MLflow) as a solo run would, and
    its rerun continues its own MLflow run and metrics.csv without logging an epoch twice."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient  # lazy: MLflow is optional and slow to import

    sweep, uri = workdir / "sweep", f"sqlite:///{workdir}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}  # (as an override it would be in the job folders' names)
    bg = Background(["-m", *KILL_SWEEP, "logger=[tensorboard,csv,mlflow]", f"hydra.sweep.dir={sweep}"], workdir, env)
    bg.wait_until(lambda: len(epochs_done(sweep)) == 4 and min(epochs_done(sweep)) >= 1)
    bg.p.send_signal(signal.SIGTERM)
    rc, out = bg.finish(120)
    assert rc == 130, out[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("mlprun: error:"))
    assert "SIGTERM" in line and line.count("continue") == 1 and "continue the sweep" in line, line
    command = shlex.split(line.split(" with: ", 1)[1])
    assert command[0] == "mlprun" and f"hydra.sweep.dir={sweep.resolve()}" in command
    for job in jobs_of(sweep).values():
        res = read_json(job / "results.json")
        assert res["status"] == "interrupted" and "SIGTERM" in res["reason"], res["reason"]
        assert res["epochs_completed"] < 8
    assert f"summary: {sweep / 'summary.csv'}" in out  # the summary of what the stop left
    with open(sweep / "summary.csv") as fh:
        assert [row["status"] for row in csv.DictReader(fh)] == ["interrupted"] * 4
    proc = subprocess.run(
        [sys.executable, "-m", "mlprunner", *command[1:]],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("was interrupted: resuming from") == 4, proc.stdout[-3000:]
    assert_same_as_left_alone(sweep, left_alone)
    client = MlflowClient(tracking_uri=uri)
    run_ids = set()
    for job in jobs_of(sweep).values():
        res = read_json(job / "results.json")
        with open(job / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [float(r["val/error"]) for r in rows] == [h["val"]["error"] for h in res["history"]]
        run_id = res["mlflow"]["run_id"]
        run_ids.add(run_id)
        assert client.get_run(run_id).info.status == "FINISHED"
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val/error"))
        assert got == [(h["epoch"], h["val"]["error"]) for h in res["history"]]  # each epoch once
    assert len(run_ids) == 4


@pytest.mark.slow
def test_optuna_batches_of_n_jobs_trials_train_stacked(workdir):
    """Hydra's Optuna sweeper asks n_jobs trials at a time and hands them to the launcher in one
    launch(): each batch trains as one group, and each trial's value is its job's objective."""
    sweep = workdir / "sweep"
    proc = run_mlprun(
        "-m",
        "hydra/sweeper=mlprun_optuna",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.n_jobs=4",
        "hydra.sweeper.sampler.seed=0",
        "optim.lr=tag(log,interval(1e-4,1e-2))",
        "model.dropout=interval(0.0,0.3)",
        "dataset=digits",
        "model.hidden=[64,32]",
        "trainer.epochs=2",
        *QUICK,
        "hydra/launcher=stacked",
        f"hydra.sweep.dir={sweep}",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("stacked group of 4 job(s)") == 2, proc.stdout[-3000:]
    jobs = jobs_of(sweep)
    assert len(jobs) == 8
    errors = {}
    for job in jobs.values():
        res = read_json(job / "results.json")
        assert res["status"] == "completed" and res["epochs_completed"] == 2
        errors[float(next(o for o in res["overrides"] if o.startswith("optim.lr=")).split("=")[1])] = res["best"][
            "val"
        ]["error"]
    with sqlite3.connect(sweep / "optuna.db") as db:
        rows = db.execute(
            "select p.param_value, v.value from trials t join trial_values v on t.trial_id = v.trial_id "
            "join trial_params p on t.trial_id = p.trial_id where p.param_name = 'optim.lr' and t.state = 'COMPLETE'"
        ).fetchall()
    assert len(rows) == 8
    for lr, value in rows:  # each trial's value is the best validation error of its own job
        assert value == pytest.approx(errors[min(errors, key=lambda k: abs(k - lr))], abs=0)
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(errors.values()), abs=0)


def test_profile_gives_the_group_phase_table_in_each_job(workdir):
    sweep = workdir / "sweep"
    proc = run_mlprun(
        "-m",
        "dataset=digits",
        "model.hidden=[32]",
        "trainer.epochs=2",
        "trainer.profile=true",
        "logger=[tensorboard,csv]",
        "optim.lr=0.001,0.01",
        *QUICK,
        "hydra/launcher=stacked",
        f"hydra.sweep.dir={sweep}",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = jobs_of(sweep)
    assert len(jobs) == 2
    for job in jobs.values():
        prof = read_json(job / "profile.json")
        assert sorted(prof["stacked_group"]) == sorted(str(j) for j in jobs.values())
        n_train = read_json(job / "results.json")["dataset"]["n_train"]
        bs = OmegaConf.load(job / ".hydra/config.yaml").trainer.batch_size
        assert prof["epochs"] == 2 and prof["steps"] == 2 * math.ceil(n_train / bs)  # the group's steps, once
        assert all(prof["phases"][p]["total_s"] > 0 for p in ("forward", "backward", "optimizer", "validation"))
        table = (job / "profile.txt").read_text()
        assert table.startswith("stacked group of 2 jobs") and "forward" in table
    # each job's mlprun.log holds its own lines (set-up, epochs, end), the group's lines in both
    for job in jobs.values():
        text = (job / "mlprun.log").read_text()
        lr = next(o for o in read_json(job / "results.json")["overrides"] if o.startswith("optim.lr="))
        epochs = [ln for ln in text.splitlines() if "] epoch " in ln and "/2 " in ln]
        assert len(epochs) == 2 and all(f"[lr={lr.split('=')[1]}] epoch" in ln for ln in epochs), text
        assert f"run directory: {job}" in text and "stacked group of 2 job(s)" in text
        other = next(j for j in jobs.values() if j != job)
        assert f"run directory: {other}" not in text and text.count("epoch  train: loss") == 1
    # each job logs through its own loggers, as a solo run: metrics.csv next to TensorBoard
    for job in jobs.values():
        res = read_json(job / "results.json")
        with open(job / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [int(r["epoch"]) for r in rows] == [1, 2]
        assert [float(r["val/error"]) for r in rows] == [h["val"]["error"] for h in res["history"]]
        assert (job / res["tensorboard"]).is_dir()


def test_a_member_with_a_bad_value_fails_alone_and_the_sweep_says_so(workdir):
    """optim.lr=-1 in a stacked group: that job is recorded failed with its reason (it was left
    'not started' with exit 0, and as the group's first job it stopped the whole sweep with exit
    2), the others train, the summary counts it; exit 2, as the failed job was refused for its
    value (a rerun would refuse it again). A group whose dataset cannot be loaded fails its own
    jobs; the next group still trains."""
    sweep = workdir / "bad"
    tiny = ["dataset=digits", "model.hidden=[16]", "trainer.epochs=1", "trainer.threads=1", *QUICK]
    proc = run_mlprun(
        "-m", *tiny, "optim.lr=-1,0.01,0.02", "hydra/launcher=stacked", f"hydra.sweep.dir={sweep}", cwd=workdir
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {name: read_json(job / "results.json") for name, job in jobs_of(sweep).items()}
    assert len(results) == 3, sorted(results)
    bad = next(r for name, r in results.items() if "lr=-1" in name)
    assert bad["status"] == "failed" and "optim" in bad["reason"] and "-1" in bad["reason"], bad
    assert bad["invalid_config"] is True
    assert sorted(r["status"] for r in results.values()) == ["completed", "completed", "failed"]
    assert "1 job(s) refused for invalid values: optim.lr=-1" in proc.stdout + proc.stderr
    assert (sweep / "summary.csv").is_file()

    sweep = workdir / "nodata"
    proc = run_mlprun(
        "-m",
        "dataset=mnist,xor",
        "model.hidden=[8]",
        "trainer.epochs=1",
        "trainer.threads=1",
        *QUICK,
        "optim.lr=0.1,0.2",
        "hydra/launcher=stacked",
        f"hydra.sweep.dir={sweep}",
        cwd=workdir,
        env={"MLPRUN_DATA": str(workdir / "no_data_here")},
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {name: read_json(job / "results.json") for name, job in jobs_of(sweep).items()}
    statuses = sorted((("mnist" if "mnist" in n else "xor"), r["status"]) for n, r in results.items())
    assert statuses == [("mnist", "failed"), ("mnist", "failed"), ("xor", "completed"), ("xor", "completed")]
    assert (sweep / "summary.csv").is_file()


def test_a_signal_while_the_group_is_set_up_stops_the_sweep(workdir):
    """SIGINT as soon as the first member says where it runs (the members are still being set
    up): the sweep stops with exit 130 and the command that continues it (the signal was noted
    and then ignored: all jobs trained to the end, exit 0)."""
    sweep = workdir / "sweep"
    args = ["-m", "dataset=digits", "model.hidden=[16]", "trainer.epochs=30", "trainer.threads=1", *QUICK]
    bg = Background(
        [*args, "optim.lr=0.01,0.02,0.03,0.04,0.05,0.06", "hydra/launcher=stacked", f"hydra.sweep.dir={sweep}"], workdir
    )
    bg.wait_until(lambda: "run directory:" in bg.out.read_text())
    bg.p.send_signal(signal.SIGINT)
    rc, out = bg.finish(300)
    assert rc == 130, out[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("mlprun: error:"))
    assert "SIGINT" in line and "continue the sweep" in line, line
    assert all(n < 30 for n in epochs_done(sweep)), epochs_done(sweep)


def test_jobs_that_name_one_folder_train_once(workdir):
    """trainer.log_every_n_steps is left out of folder names: two jobs differing only there name
    one folder, which is trained once (both trained into it at the same time), as the basic
    launcher skips the second as already completed."""
    sweep = workdir / "same"
    tiny = ["dataset=digits", "model.hidden=[16]", "trainer.epochs=1", "trainer.threads=1", *QUICK]
    proc = run_mlprun(
        "-m",
        *tiny,
        "trainer.log_every_n_steps=5,50",
        "optim.lr=0.01,0.02",
        "hydra/launcher=stacked",
        f"hydra.sweep.dir={sweep}",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("one run per folder, it is trained once") == 2
    jobs = jobs_of(sweep)
    assert len(jobs) == 2 and all(read_json(j / "results.json")["status"] == "completed" for j in jobs.values())
    for job in jobs.values():  # one process trained it: one start in its log
        assert (job / "mlprun.log").read_text().count("run directory:") == 1
