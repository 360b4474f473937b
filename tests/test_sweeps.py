"""Sweeps for real: Hydra multirun on XOR with the basic, joblib and submitit_local launchers and
the Optuna sweeper; skip/resume on re-runs; failing jobs; the summary files and the report."""

from __future__ import annotations

import csv
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import QUICK, hparams_session_groups, mlprun_env, read_json, run_mlprun, signalled_mlprun

# Tiny XOR runs: 2 epochs of 500 points.
TINY = [
    "dataset=xor",
    "dataset.n_train=500",
    "dataset.n_val=200",
    "model=mlp",
    "model.hidden=[8]",
    "trainer.epochs=2",
    "trainer.batch_size=50",
    "trainer.tensorboard.histograms=false",
    *QUICK,
]
GRID = ["optim=sgd,adam", "model.activation=relu,tanh"]


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "tensorboard")


def summary_rows(sweep: Path) -> list[dict]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def check_summary_against_jobs(sweep: Path) -> list[dict]:
    """Every job folder has exactly one summary.csv row that repeats its results.json; the
    other rows are the sweep's combinations that never started (no folder)."""
    rows = {r["job"]: r for r in summary_rows(sweep)}
    dirs = job_dirs(sweep)
    unstarted = {n for n, r in rows.items() if r["status"] == "not started" and not (sweep / n).exists()}
    assert sorted(set(rows) - unstarted) == [d.name for d in dirs]
    for d in dirs:
        res, row = read_json(d / "results.json"), rows[d.name]
        assert row["status"] == res["status"]
        assert row["overrides"] == " ".join(res["overrides"])
        if res["status"] == "completed":
            assert float(row["best_val_error"]) == pytest.approx(res["best"]["val"]["error"], abs=0)
            assert int(row["best_epoch"]) == res["best"]["epoch"]
            assert float(row["last_train_error"]) == pytest.approx(res["last"]["train"]["error"], abs=0)
            assert int(row["epochs"]) == res["epochs_completed"]
            assert float(row["wall_s"]) == pytest.approx(res["wall_s"], abs=0)
        else:
            assert row["reason"] == res["reason"]
    # sorted by best validation error, jobs without one last
    errs = [float(r["best_val_error"]) if r["best_val_error"] else float("inf") for r in summary_rows(sweep)]
    assert errs == sorted(errs)
    md = (sweep / "summary.md").read_text()
    table = md.split("## Across seeds")[0]  # (its own table, when trainer.seed is swept)
    assert table.count("\n| ") == len(rows) + 1  # header + one row per job
    return list(rows.values())


def hparams_metrics(log_dir: Path) -> dict[str, dict]:
    """What TensorBoard's HParams dashboard lists for `log_dir`: {session group: metrics}."""
    return {g.name: {m.name.tag: m.value for m in g.metric_values} for g in hparams_session_groups(log_dir)}


def mtimes(sweep: Path) -> dict[str, int]:
    return {
        str(p): p.stat().st_mtime_ns
        for p in sweep.rglob("*")
        if p.is_file() and ("checkpoints" in p.parts or "tensorboard" in p.parts or p.name == "results.json")
    }


# ------------------------------------------------------------------------ fast checks


def test_threads_split_between_parallel_jobs():
    from mlprunner.sweep import launcher_threads

    joblib = OmegaConf.create(
        {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}
    )
    assert launcher_threads(joblib, n_cores=16) == 4
    assert launcher_threads(joblib, n_cores=2) == 1
    joblib.n_jobs = -1  # joblib's "one per core"
    assert launcher_threads(joblib, n_cores=8) == 1
    joblib.n_jobs = -2  # all cores but one
    assert launcher_threads(joblib, n_cores=9) == 1
    slurm = OmegaConf.create(
        {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 6}
    )
    assert launcher_threads(slurm, n_cores=64) == 6
    slurm._target_ = "hydra_plugins.mlprun_launcher.MlprunSlurmLauncher"  # hydra/launcher=slurm
    assert launcher_threads(slurm, n_cores=64) == 6
    local = OmegaConf.create(
        {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", "cpus_per_task": None}
    )
    assert launcher_threads(local, n_cores=8) == 1
    basic = OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})
    assert launcher_threads(basic, n_cores=8) is None


def test_report_bad_folder_is_one_line_exit_2(tmp_path):
    for target in (tmp_path / "missing", tmp_path):  # no such folder; a folder without runs
        proc = subprocess.run([sys.executable, "-m", "mlprunner.report", str(target)], capture_output=True, text=True)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("mlprun-report: error: ")
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "exc, code, line",
    [
        (
            ValueError("bad value"),
            1,
            "mlprun-report: error: unexpected ValueError: bad value (run with MLPRUN_DEBUG=1 for the traceback)",
        ),
        (KeyboardInterrupt(), 130, "mlprun-report: error: interrupted"),
        (PermissionError(13, "Permission denied"), 1, "mlprun-report: error: {folder}: Permission denied"),
    ],
)
def test_report_failures_are_one_line_with_the_contracts_exit_code(exc, code, line, tmp_path, monkeypatch, capsys):
    """Whatever stops mlprun-report (a bug, Ctrl-C, a folder it cannot write) leaves one line and
    the contract's exit code (it printed a traceback, exit 1, for all but its own refusals)."""
    from mlprunner import cli

    def fails(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cli, "build_report", fails)
    with pytest.raises(SystemExit) as exited:
        cli.report_main([str(tmp_path)])
    err = capsys.readouterr().err
    assert exited.value.code == code
    assert err.splitlines() == [line.format(folder=tmp_path)], err


def test_sweep_configs_compose(workdir):
    """The shipped presets compose: exercise 2's grid, the Optuna preset, the SLURM launcher."""
    proc = run_mlprun("experiment=mnist_exercise2", "--cfg", "hydra", cwd=workdir, check=True)
    sweeper = OmegaConf.create(proc.stdout).hydra.sweeper
    assert sweeper.params["optim"] == "sgd,adadelta,adagrad,adam"
    assert sweeper.params["model.activation"] == "relu,sigmoid,tanh"
    proc = run_mlprun(
        "experiment=mnist_exercise2_optuna",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "--cfg",
        "hydra",
        cwd=workdir,
        check=True,
    )
    hydra = OmegaConf.create(proc.stdout).hydra
    assert hydra.sweeper._target_.endswith("OptunaSweeper") and hydra.sweeper.direction == "minimize"
    assert hydra.sweeper.storage.startswith("sqlite:///") and hydra.sweeper.max_failure_rate == 1.0
    assert hydra.launcher._target_.endswith("SlurmLauncher")
    assert (hydra.launcher.partition, hydra.launcher.timeout_min) == ("gpu", 240)
    assert hydra.launcher.gpus_per_node == 0 and hydra.launcher.cpus_per_task == 2


# ------------------------------------------------------------------------ real sweeps


@pytest.mark.slow
def test_grid_basic_summary_rerun_and_report(workdir):
    sweep = workdir / "sweep"
    proc = run_mlprun("-m", *GRID, *TINY, f"hydra.sweep.dir={sweep}", cwd=workdir, check=True)
    dirs = job_dirs(sweep)
    assert len(dirs) == 4
    for d in dirs:
        res = read_json(d / "results.json")
        assert res["status"] == "completed" and res["epochs_completed"] == 2
        assert (d / "checkpoints" / "last.pt").is_file() and (d / "checkpoints" / "best.pt").is_file()
        # the job's TensorBoard run is named by its swept values (sessions.tensorboard_dir)
        assert list((d / res["tensorboard"]).glob("events.out.tfevents.*"))
        # the folder is named by the job's overrides (sorted), not by its position
        assert d.name == ",".join(
            sorted(
                o
                for o in res["overrides"]
                if not o.startswith("trainer.progress") and not o.startswith("trainer.tensorboard.")
            )
        )
    check_summary_against_jobs(sweep)
    for png in ("val_error_vs_optim.png", "val_error_vs_model.activation.png", "val_curves.png"):
        assert (sweep / png).stat().st_size > 5000
    assert "val err %" in proc.stdout  # the rich table was printed (140 columns off a terminal), a line per job
    rows = [line for line in proc.stdout.splitlines() if re.match(r" ?\d+  .* completed ", line)]
    assert len(rows) == 4 and all(len(line) <= 140 for line in rows), rows
    # TensorBoard's HParams dashboard on the sweep folder lists every job with its metrics
    groups = hparams_metrics(sweep)
    assert len(groups) == 4
    by_job = {name.split("/")[1]: m for name, m in groups.items()}  # tensorboard/<swept values>
    for d in dirs:
        res = read_json(d / "results.json")
        assert by_job[Path(res["tensorboard"]).name]["hparam/best_val_error"] == pytest.approx(
            res["best"]["val"]["error"], abs=1e-6
        )

    # The same sweep again, values in another order: nothing is trained again.
    before = mtimes(sweep)
    proc = run_mlprun(
        "-m", "model.activation=tanh,relu", "optim=adam,sgd", *TINY, f"hydra.sweep.dir={sweep}", cwd=workdir, check=True
    )
    assert proc.stdout.count("already completed") == 4
    assert mtimes(sweep) == before
    assert job_dirs(sweep) == dirs

    # mlprun-report rebuilds the summary of the existing folder
    for f in ("summary.csv", "summary.md", "val_curves.png"):
        (sweep / f).unlink()
    out = subprocess.run([sys.executable, "-m", "mlprunner.report", str(sweep)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (sweep / "val_curves.png").is_file()
    check_summary_against_jobs(sweep)


@pytest.mark.slow
def test_grid_joblib_with_failing_jobs(workdir):
    """4 jobs in 2 worker processes; lr=1e38 diverges: recorded failed, the others finish, exit 1."""
    sweep = workdir / "sweep"
    proc = run_mlprun(
        "-m",
        "optim=sgd",
        "optim.lr=0.5,1e38",
        "trainer.seed=0,1",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        cwd=workdir,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    dirs = job_dirs(sweep)
    assert len(dirs) == 4
    by_lr = {}
    for d in dirs:
        res = read_json(d / "results.json")
        by_lr.setdefault(d.name.split("optim.lr=")[1].split(",")[0], []).append(res)
    assert [r["status"] for r in by_lr["0.5"]] == ["completed", "completed"]
    for res in by_lr["1e+38"]:
        assert res["status"] == "failed"
        assert "non-finite" in res["reason"] and "optim.lr" in res["reason"]
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert proc.stdout.count(f": {threads} torch thread(s)") == 4
    # a job beside others ends in one line of its own, not a table interleaved with theirs
    assert "mlprun: completed" not in proc.stdout
    assert len(re.findall(r"^\[[^]]*\] completed; best val error \d", proc.stdout, re.M)) == 2, proc.stdout[-3000:]
    rows = check_summary_against_jobs(sweep)
    assert sorted(r["status"] for r in rows) == ["completed", "completed", "failed", "failed"]
    assert "2 job(s) failed" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_grid_basic_bad_value_in_one_combination(workdir):
    sweep = workdir / "sweep"
    proc = run_mlprun("-m", "model.activation=relu,bogus", *TINY, f"hydra.sweep.dir={sweep}", cwd=workdir)
    assert proc.returncode == 2  # invalid input, which a rerun does not fix
    assert "1 job(s) refused for invalid values: model.activation='bogus' is invalid" in proc.stdout + proc.stderr
    results = {d.name: read_json(d / "results.json") for d in job_dirs(sweep)}
    bad = next(r for name, r in results.items() if "bogus" in name)
    good = next(r for name, r in results.items() if "relu" in name)
    assert good["status"] == "completed"
    assert bad["status"] == "failed" and bad["reason"].startswith("model.activation='bogus' is invalid")
    check_summary_against_jobs(sweep)


@pytest.mark.slow
def test_grid_submitit_local(workdir):
    sweep = workdir / "sweep"
    run_mlprun("-m", *GRID, *TINY, f"hydra.sweep.dir={sweep}", "hydra/launcher=submitit_local", cwd=workdir, check=True)
    assert (sweep / ".submitit").is_dir()  # the jobs ran as submitit processes
    dirs = job_dirs(sweep)
    assert len(dirs) == 4
    assert all(read_json(d / "results.json")["status"] == "completed" for d in dirs)
    check_summary_against_jobs(sweep)


@pytest.mark.slow
def test_optuna_study_persists_and_continues(workdir):
    sweep = workdir / "sweep"
    args = [
        "-m",
        "hydra/sweeper=mlprun_optuna",
        "hydra.sweeper.n_trials=3",
        "optim=sgd",
        "optim.lr=tag(log,interval(0.01,1.0))",
        "model.activation=relu,tanh",
        *TINY,
        f"hydra.sweep.dir={sweep}",
    ]

    def trials():
        with sqlite3.connect(sweep / "optuna.db") as db:
            return db.execute(
                "select t.state, v.value from trials t left join trial_values v "
                "on t.trial_id = v.trial_id order by t.number"
            ).fetchall()

    run_mlprun(*args, cwd=workdir, check=True)
    first = trials()
    assert [s for s, _ in first] == ["COMPLETE"] * 3
    assert len(job_dirs(sweep)) == 3
    # TensorBoard runs named by the swept values (the Optuna sweeper writes no multirun.yaml;
    # mlprun does, so the jobs know their swept keys), not by the whole job folder
    for run in (sweep / "tensorboard").iterdir():
        assert re.fullmatch(r"optim\.lr=[0-9.e-]+,model\.activation=(relu|tanh)", run.name), run.name
    # each trial's value is its job's best validation error
    errors = sorted(read_json(d / "results.json")["best"]["val"]["error"] for d in job_dirs(sweep))
    assert sorted(v for _, v in first) == pytest.approx(errors)
    proc = run_mlprun(*args, cwd=workdir, check=True)
    assert "Using an existing study" in proc.stdout + proc.stderr
    assert len(trials()) == 6 and trials()[:3] == first
    assert len(job_dirs(sweep)) == 6
    check_summary_against_jobs(sweep)
    assert (sweep / "val_error_vs_optim.lr.png").is_file()


@pytest.mark.slow
def test_optuna_failing_trial_does_not_stop_the_study(workdir):
    sweep = workdir / "sweep"
    proc = run_mlprun(
        "-m",
        "hydra/sweeper=mlprun_optuna",
        "hydra.sweeper.n_trials=3",
        "optim=sgd",
        "optim.lr=tag(log,interval(1e37,1e38))",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.sampler.seed=0",
        cwd=workdir,
    )
    assert proc.returncode == 1
    with sqlite3.connect(sweep / "optuna.db") as db:
        states = [s for (s,) in db.execute("select state from trials order by number")]
    assert states == ["FAIL"] * 3  # all three trials ran; diverged jobs are failed trials, not values
    assert all(read_json(d / "results.json")["status"] == "failed" for d in job_dirs(sweep))


@pytest.mark.slow
def test_interrupted_job_resumes_on_rerun(workdir):
    """Ctrl-C during a sweep job marks it interrupted; the same command resumes it from its checkpoint."""
    sweep = workdir / "sweep"
    args = [
        "-m",
        "optim=sgd",
        "model.activation=relu",
        *TINY,
        "trainer.epochs=12",
        "dataset.n_train=1000",
        f"hydra.sweep.dir={sweep}",
    ]
    env = mlprun_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlprunner", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(sweep.glob("*/results.json"))
            if files:
                try:
                    if read_json(files[0]).get("epochs_completed", 0) >= 2:
                        break
                except ValueError:
                    pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-2000:]
    (job,) = job_dirs(sweep)
    res = read_json(job / "results.json")
    assert res["status"] == "interrupted"
    stopped_at = res["epochs_completed"]
    assert 2 <= stopped_at < 12
    proc2 = run_mlprun(*args, cwd=workdir, check=True)
    assert "resuming" in proc2.stdout
    res = read_json(job / "results.json")
    assert res["status"] == "completed" and res["epochs_completed"] == 12
    assert res["resumed"][0]["from_epoch"] == stopped_at


def signal_once_checkpointed(
    args: list[str], sweep: Path, cwd: Path, jobs: int = 1, whom: str = "parent", sig=signal.SIGTERM, times: int = 1
) -> str:
    """signalled_mlprun once `jobs` jobs of `sweep` have a checkpoint (`whom`: "parent" or
    "group"); asserts exit 130 and returns the output."""
    rc, out = signalled_mlprun(
        args, cwd, lambda _: len(list(sweep.glob("*/checkpoints/last.pt"))) >= jobs, sig, times, whom == "group"
    )
    assert rc == 130, out[-3000:]
    return out


def test_a_signal_stops_a_sweep_of_the_basic_launcher_and_its_command_continues_it(tmp_path):
    """SIGTERM in a job of the default launcher (jobs one after another in mlprun's process):
    the job stops at its step and is recorded interrupted, no later job starts (Hydra would note
    the job failed and go on), exit 130 with the sweep's command; that command finishes the sweep,
    the stopped job from its checkpoint."""
    sweep = tmp_path / "sweep"
    args = ["-m", "dataset=digits", "trainer.epochs=40", "trainer.seed=0,1,2", "logger=none", *QUICK]
    args += [f"hydra.sweep.dir={sweep}"]
    out = signal_once_checkpointed(args, sweep, tmp_path)
    line = next(ln for ln in out.splitlines() if ln.startswith("mlprun: error:"))
    assert "SIGTERM" in line and "continue the sweep" in line, line
    assert len(job_dirs(sweep)) == 1, out[-3000:]  # the jobs after it did not start
    (stopped,) = job_dirs(sweep)
    assert read_json(stopped / "results.json")["status"] == "interrupted"
    # written at the stop: the jobs after it are listed as not started
    rows = check_summary_against_jobs(sweep)
    assert [r["status"] for r in rows] == ["interrupted", "not started", "not started"]
    # named as the folders the rerun makes
    assert {r["job"] for r in rows[1:]} == {stopped.name.replace("seed=0", f"seed={k}") for k in (1, 2)}
    command = shlex.split(line.split(" with: ", 1)[1])
    assert command[0] == "mlprun" and f"hydra.sweep.dir={sweep.resolve()}" in command
    proc = run_mlprun(*command[1:], cwd=tmp_path, check=True)
    assert proc.stdout.count("was interrupted: resuming from") == 1, proc.stdout[-3000:]
    assert [read_json(d / "results.json")["status"] for d in job_dirs(sweep)] == ["completed"] * 3
    assert read_json(stopped / "results.json")["resumed"][0]["from_epoch"] >= 1
    assert [r["status"] for r in check_summary_against_jobs(sweep)] == ["completed"] * 3


def _joblib_sweep_stopped(tmp_path: Path, whom: str, times: int = 1) -> tuple[Path, list[str], str]:
    """A 4-job joblib sweep (2 workers) signalled once both running jobs have a checkpoint: a
    Ctrl-C ("group") or a SIGTERM to mlprun alone ("parent"). Returns the sweep folder, the
    command's arguments and its output."""
    sweep = tmp_path / "sweep"
    args = ["-m", "dataset=digits", "trainer.epochs=100", "trainer.seed=0,1,2,3"]
    args += ["logger=none", *QUICK, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    sig = signal.SIGINT if whom == "group" else signal.SIGTERM
    return sweep, args, signal_once_checkpointed(args, sweep, tmp_path, jobs=2, whom=whom, sig=sig, times=times)


def test_ctrl_c_stops_a_joblib_sweep_whose_command_continues_it(tmp_path):
    """Ctrl-C during a joblib sweep: the two running jobs stop at their step (interrupted, with
    checkpoints), the two queued ones never start (no folder), the summary is written, exit 130
    with the command that continues the sweep; that command resumes the two and runs the rest."""
    sweep, args, out = _joblib_sweep_stopped(tmp_path, "group")
    line = next(ln for ln in out.splitlines() if ln.startswith("mlprun: error:"))
    assert "stopped by SIGINT: 2 job(s) interrupted, 2 job(s) not started; continue the sweep" in line, line
    assert "Traceback" not in out and "Error executing job" not in out, out[-3000:]
    stopped = job_dirs(sweep)
    assert len(stopped) == 2, out[-3000:]  # the queued jobs left no folder
    assert all(read_json(d / "results.json")["status"] == "interrupted" for d in stopped)
    assert all(read_json(d / "results.json")["epochs_completed"] < 100 for d in stopped)
    rows = check_summary_against_jobs(sweep)
    assert sorted(r["status"] for r in rows) == ["interrupted", "interrupted", "not started", "not started"]
    command = shlex.split(line.split(" with: ", 1)[1])
    assert command[1:] == [*args[:-1], f"hydra.sweep.dir={sweep.resolve()}"]
    proc = run_mlprun(*command[1:], cwd=tmp_path, check=True)
    assert proc.stdout.count("was interrupted: resuming from") == 2, proc.stdout[-3000:]
    assert [read_json(d / "results.json")["status"] for d in job_dirs(sweep)] == ["completed"] * 4
    assert not list(sweep.glob(".mlprun_marks/*")), "the sweep's markers are left behind"


def test_sigterm_to_mlprun_alone_stops_its_joblib_workers(tmp_path):
    """A SIGTERM to mlprun's process only (the workers do not get it): the running jobs still
    stop at their step and the queued ones do not start."""
    sweep, _, out = _joblib_sweep_stopped(tmp_path, "parent")
    assert "stopped by SIGTERM: 2 job(s) interrupted, 2 job(s) not started" in out, out[-3000:]
    stopped = job_dirs(sweep)
    assert [read_json(d / "results.json")["status"] for d in stopped] == ["interrupted"] * 2
    assert all(read_json(d / "results.json")["epochs_completed"] < 100 for d in stopped)


def test_an_optuna_trial_a_signal_stopped_resumes_when_the_study_continues(tmp_path):
    """SIGTERM during an Optuna study's first trial (default launcher): exit 130, the trial is
    left RUNNING in optuna.db; the printed command continues the study: that trial is told FAIL
    and its parameters come first, so its job resumes from its checkpoint and completes."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/sweeper=mlprun_optuna", "hydra.sweeper.n_trials=2", "dataset=digits", "trainer.epochs=100"]
    args += ["optim.lr=tag(log,interval(1e-4,1e-2))", "logger=none", *QUICK, f"hydra.sweep.dir={sweep}"]
    out = signal_once_checkpointed(args, sweep, tmp_path)

    def trials() -> list[tuple]:
        with sqlite3.connect(sweep / "optuna.db") as db:
            query = "select t.number, t.state, p.param_value from trials t join trial_params p using (trial_id)"
            return sorted(db.execute(query + " order by t.number"))

    ((_, state, lr),) = trials()
    assert state == "RUNNING"
    (stopped,) = job_dirs(sweep)
    assert read_json(stopped / "results.json")["status"] == "interrupted"
    line = next(ln for ln in out.splitlines() if ln.startswith("mlprun: error:"))
    proc = run_mlprun(*shlex.split(line.split(" with: ", 1)[1])[1:], cwd=tmp_path, check=True)
    assert proc.stdout.count("was interrupted: resuming from") == 1, proc.stdout[-3000:]
    assert "ExperimentalWarning" not in proc.stdout + proc.stderr
    assert [t[:2] for t in trials()] == [(0, "FAIL"), (1, "COMPLETE"), (2, "COMPLETE")]
    assert trials()[1][2] == lr  # the stopped trial's parameters, first
    res = read_json(stopped / "results.json")
    assert res["status"] == "completed" and res["resumed"][0]["from_epoch"] >= 1


def test_a_second_ctrl_c_leaves_a_joblib_sweep_at_once_with_its_command(tmp_path):
    """Ctrl-C twice: mlprun and its workers leave at once, the jobs cut short say interrupted,
    exit 130 with the command that continues the sweep, no marker left in the sweep folder."""
    sweep, _, out = _joblib_sweep_stopped(tmp_path, "group", times=2)
    line = next(ln for ln in out.splitlines() if ln.startswith("mlprun: error:"))
    assert line.startswith("mlprun: error: stopped at once by a second signal") and " with: mlprun -m " in line, line
    assert [read_json(d / "results.json")["status"] for d in job_dirs(sweep)] == ["interrupted"] * 2
    assert not (sweep / ".mlprun_marks").exists()


def test_ctrl_c_in_an_optuna_study_on_joblib_continues_its_trials(tmp_path):
    """Ctrl-C during an Optuna study's first batch of 2 trials on joblib's 2 workers: exit 130
    with the study left with both trials RUNNING (not told FAIL, no more trials asked); the
    printed command resumes both jobs from their checkpoints as its first two trials."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/sweeper=mlprun_optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2"]
    args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "dataset=digits", "trainer.epochs=100"]
    args += ["optim.lr=tag(log,interval(1e-4,1e-2))", "logger=none", *QUICK, f"hydra.sweep.dir={sweep}"]
    out = signal_once_checkpointed(args, sweep, tmp_path, jobs=2, whom="group", sig=signal.SIGINT)
    line = next(ln for ln in out.splitlines() if ln.startswith("mlprun: error:"))
    assert "the Optuna study was stopped by SIGINT; continue the sweep" in line, line
    with sqlite3.connect(sweep / "optuna.db") as db:
        assert [s for (s,) in db.execute("select state from trials order by number")] == ["RUNNING"] * 2
    assert [read_json(d / "results.json")["status"] for d in job_dirs(sweep)] == ["interrupted"] * 2
    assert not (sweep / ".mlprun_marks").exists()
    proc = run_mlprun(*shlex.split(line.split(" with: ", 1)[1])[1:], cwd=tmp_path, check=True)
    assert proc.stdout.count("was interrupted: resuming from") == 2, proc.stdout[-3000:]
    with sqlite3.connect(sweep / "optuna.db") as db:
        states = [s for (s,) in db.execute("select state from trials order by number")]
    assert states == ["FAIL", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert [read_json(d / "results.json")["status"] for d in job_dirs(sweep)] == ["completed"] * 4


def test_a_refused_sweep_leaves_its_folder_as_it_was(tmp_path):
    """A sweep refused before any job (a misspelt key, an unknown option): no new folder; in an
    existing sweep folder the first sweep's multirun.yaml stays and no multirun.2.yaml appears."""
    new = tmp_path / "typo"
    proc = run_mlprun("-m", "dataset=digits", "trainer.epoch=1,2", f"hydra.sweep.dir={new}", cwd=tmp_path)
    assert proc.returncode == 2 and "trainer.epochs" in proc.stderr, proc.stderr[-2000:]
    assert not new.exists()
    sweep = tmp_path / "sweep"
    run_mlprun("-m", *TINY, "trainer.seed=0", f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=True)
    before = {p.name: p.read_bytes() for p in sweep.iterdir() if p.is_file()}
    proc = run_mlprun("-m", *TINY, "optim=adam,adamm", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 2 and "optim=adamm" in proc.stderr, proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in sweep.iterdir() if p.is_file()} == before


def test_two_launches_into_one_folder_at_once_each_report_their_own_jobs(tmp_path):
    """Two launches of one 2-job sweep at the same moment: whichever trains a job, each launch's
    summary calls "in use" exactly the jobs it skipped itself (not the other launch's), and both
    write their summary and figures."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "mlprunner", "-m", *TINY, "trainer.threads=1", "optim.lr=0.01,0.02"]
    outs = [tmp_path / f"{n}.out" for n in "ab"]
    procs = []
    for out in outs:
        with open(out, "w") as fh:
            procs.append(
                subprocess.Popen(
                    [*cmd, f"hydra.sweep.dir={sweep}"],
                    cwd=tmp_path,
                    env=mlprun_env({"MLPRUN_TEST_SLOW_CHECKPOINT": "1.0"}),  # a job trains for ~2 s: they overlap
                    stdout=fh,
                    stderr=fh,
                )
            )
    codes = [p.wait(timeout=300) for p in procs]
    for code, out in zip(codes, outs):
        text = out.read_text()
        assert "Traceback" not in text and "could not write the sweep summary" not in text, text[-3000:]
        skipped = text.count("skipped, in use")
        said = re.search(r"(\d+) job\(s\) in use in this sweep", text)
        assert (int(said.group(1)) if said else 0) == skipped, text[-3000:]
        assert code == (1 if skipped else 0), text[-3000:]
    assert 1 <= sum(out.read_text().count("skipped, in use") for out in outs) <= 2, "the launches did not overlap"
    assert [read_json(d / "results.json")["status"] for d in job_dirs(sweep)] == ["completed"] * 2
