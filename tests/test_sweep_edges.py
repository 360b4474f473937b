"""Edge cases of sweeps: an Optuna study in which no trial completes, the terminal's table of a
sweep with several swept keys at 80 columns."""

from __future__ import annotations

import csv
import re
import shutil
import statistics
import subprocess
import sys

import pytest
from rich.console import Console

from conftest import QUICK, mlprun_env, read_json, run_mlprun
from mlprunner.report import collect, mean_interval, print_table, table_rows
from mlprunner.runs import submission_file
from mlprunner.sessions import short_keys
from mlprunner.sweep import record_failure

TINY = [
    "dataset=digits",
    "trainer.threads=1",
    "logger=none",
    "trainer.tensorboard.enabled=false",
    "model.hidden=[32]",
    "trainer.epochs=1",
    *QUICK,
]


def test_optuna_study_without_completed_trial_ends_like_failed_sweep(workdir):
    """Every trial's loss non-finite: hydra/sweeper=mlprun_optuna ends the study like a sweep
    whose jobs failed (it ended on 'unexpected ValueError: Record does not exist.', no summary)."""
    sweep = workdir / "sweep"
    proc = run_mlprun(
        "-m",
        *TINY,
        "optim=sgd",
        "hydra/sweeper=mlprun_optuna",
        "optim.lr=tag(log,interval(1e7,1e8))",  # every trial's loss becomes non-finite
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        cwd=workdir,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "unexpected" not in out and "Record does not exist" not in out, out
    assert "float-castable" not in out  # the plugin's line after each failed trial: the job's said why
    assert "no trial of the Optuna study has completed" in out
    assert re.search(r"^2 job\(s\) failed in this sweep", out, re.M), out
    jobs = [d for d in sweep.iterdir() if (d / "results.json").is_file()]
    assert len(jobs) == 2 and all(read_json(d / "results.json")["status"] == "failed" for d in jobs)
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "## Not completed" in (sweep / "summary.md").read_text()
    assert not (sweep / "optimization_results.yaml").exists()  # there is no best trial


def test_a_sweep_whose_failed_jobs_were_refused_for_their_values_exits_2(workdir):
    """Jobs refused for an invalid value (model.dropout=1.5) fail again on any rerun: the sweep
    says so in one line with the reason and exits 2, not 1 with 'rerun this sweep command to
    continue'; a valid job beside them still trains, and the fixed command then exits 0."""
    sweep = workdir / "sweep"
    proc = run_mlprun("-m", *TINY, "model.dropout=1.5", "optim=sgd,adam", f"hydra.sweep.dir={sweep}", cwd=workdir)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "2 job(s) refused for invalid values: model.dropout=1.5 is invalid; allowed: a number in [0, 1)" in out
    assert "rerun this sweep command" not in out
    proc = run_mlprun("-m", *TINY, "model.dropout=0.1,1.5", f"hydra.sweep.dir={sweep}", cwd=workdir)
    assert proc.returncode == 2 and "1 job(s) refused for invalid values" in proc.stdout + proc.stderr
    statuses = {d.name: read_json(d / "results.json")["status"] for d in sweep.iterdir() if d.is_dir()}
    assert sorted(statuses.values()) == ["completed", "failed", "failed", "failed"], statuses
    proc = run_mlprun("-m", *TINY, "model.dropout=0.1,0.2", f"hydra.sweep.dir={sweep}", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_plain_optuna_without_completed_trial_is_one_line(workdir):
    """Plain hydra/sweeper=optuna (Hydra's own sweeper, in memory): one line that says what
    happened and names mlprun_optuna, exit 1."""
    proc = run_mlprun(
        "-m",
        *TINY,
        "optim=sgd",
        "hydra/sweeper=optuna",
        "optim.lr=tag(log,interval(1e7,1e8))",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={workdir / 'sweep'}",
        cwd=workdir,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.count("mlprun: error:") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no trial of the Optuna study has completed" in proc.stderr and "mlprun_optuna" in proc.stderr


@pytest.fixture(scope="module")
def three_key_sweep(tmp_path_factory):
    """8 real jobs with 3 swept keys and the test column: the widest table of the basic runs."""
    workdir = tmp_path_factory.mktemp("edges")
    sweep = workdir / "sweep"
    run_mlprun(
        "-m",
        *TINY,
        "eval.test=true",
        "model.dropout=0.25,0.5",
        "optim.lr=0.01,0.02",
        "trainer.early_stopping.patience=1,2",
        f"hydra.sweep.dir={sweep}",
        cwd=workdir,
        check=True,
    )
    return sweep


def test_terminal_table_keeps_key_value_tokens_whole_at_80_columns(three_key_sweep):
    jobs, keys = collect(three_key_sweep)
    assert len(jobs) == 8 and len(keys) == 3
    console = Console(width=80, record=True)
    print_table(three_key_sweep, jobs, keys, console=console)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = table_rows(jobs, keys, short=True)
    tokens = [t for row in rows for t in row[1].split()]
    assert any(t.startswith("dropout=0.25") for t in tokens)
    for token in set(tokens):  # whole, on one line, once per job that has it
        whole = re.compile(rf"(?<!\S){re.escape(token)}(?!\S)")
        assert sum(len(whole.findall(line)) for line in lines) == tokens.count(token), (token, lines)
    for row in rows:  # and the numbers are not cut either
        for cell in row[3:]:
            assert any(re.search(rf"(?<!\S){re.escape(cell)}(?!\S)", line) for line in lines), (cell, lines)


def test_report_into_a_pipe_keeps_to_the_columns_given(three_key_sweep):
    """`COLUMNS=80 mlprun-report SWEEP | less`: the table keeps to 80 columns (into a pipe it was
    always 140 wide); without COLUMNS a pipe still gets the wide table."""
    import subprocess
    import sys

    def widest(env: dict) -> int:
        proc = subprocess.run(
            [sys.executable, "-m", "mlprunner.report", "--no-plots", str(three_key_sweep)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        # the lines naming paths are never broken (soft wrap): the table's lines are measured
        lines = [
            ln for ln in proc.stdout.splitlines() if not ln.startswith(("summary: ", "plots (.png): ", "HParams: "))
        ]
        return max(len(line) for line in lines)

    assert widest(mlprun_env({"COLUMNS": "80"})) <= 80
    assert widest(mlprun_env()) > 80  # (mlprun_env leaves out the caller's COLUMNS)


def test_swept_keys_of_the_same_last_part_are_named_by_their_shortest_distinct_ending():
    """`dataset.augment.enabled` and `trainer.early_stopping.enabled` read augment.enabled= and
    early_stopping.enabled= in the table (the whole keys, broken mid-word at 80 columns, before),
    the others by their last part."""
    keys = ["dataset.augment.enabled", "trainer.early_stopping.enabled", "trainer.seed", "optim"]
    assert short_keys(keys) == {
        "dataset.augment.enabled": "augment.enabled",
        "trainer.early_stopping.enabled": "early_stopping.enabled",
        "trainer.seed": "seed",
        "optim": "optim",
    }
    assert short_keys(["model.activation", "activation"]) == {
        "model.activation": "model.activation",
        "activation": "activation",
    }


def test_the_report_lists_combinations_without_a_folder_and_refused_jobs_under_their_dataset(three_key_sweep, tmp_path):
    """mlprun-report of a sweep with a combination that never started (its folder gone) and one
    refused before it started (results.json only, no saved config, as a SLURM refusal leaves it):
    the first is a "not started" row named as the folder a rerun makes, both under the sweep's
    dataset, not under "?"."""
    sweep = tmp_path / "sweep"
    shutil.copytree(three_key_sweep, sweep)
    gone, refused = sorted(d for d in sweep.iterdir() if (d / "results.json").is_file())[:2]
    overrides = read_json(refused / "results.json")["overrides"]
    shutil.rmtree(gone)
    shutil.rmtree(refused)
    record_failure(refused, overrides, "optim.lr=-1 is invalid", invalid=True)
    jobs, _ = collect(sweep)
    assert len(jobs) == 8
    by_name = {j["job"]: j for j in jobs}
    assert by_name[gone.name]["status"] == "not started" and not gone.exists()
    assert by_name[refused.name]["status"] == "failed"
    assert {j["dataset"] for j in jobs} == {"digits"}
    proc = subprocess.run(
        [sys.executable, "-m", "mlprunner.report", str(sweep)], capture_output=True, text=True, env=mlprun_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert "8 jobs (6 completed, 1 failed, 1 not started)" in " ".join(proc.stdout.split()), proc.stdout
    rows = [ln for ln in proc.stdout.splitlines() if re.match(r"\d+ ", ln)]
    assert len(rows) == 8 and not any("test=" in r for r in rows), proc.stdout  # eval.test=true in every job
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert sorted(r["status"] for r in rows) == ["completed"] * 6 + ["failed", "not started"]


def test_mean_interval_is_students_t_and_says_when_there_is_no_spread():
    from scipy import stats

    xs = [0.02, 0.025, 0.04]
    mean, half, sd = mean_interval(xs)
    assert mean == pytest.approx(statistics.fmean(xs))
    lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=statistics.fmean(xs), scale=stats.sem(xs))
    assert (mean - half, mean + half) == pytest.approx((lo, hi), rel=1e-9)
    assert sd == pytest.approx(statistics.stdev(xs))
    assert mean_interval([0.03]) == (0.03, None, None)  # one seed: no interval
    assert mean_interval([0.03, 0.03])[1:] == (0.0, 0.0)  # identical values: a zero-width interval
    assert mean_interval([]) is None
    two = mean_interval([0.01, 0.03])  # n=2: t(1) = 12.71, a wide interval, as it should be
    assert two[1] == pytest.approx(12.7062047 * statistics.stdev([0.01, 0.03]) / 2**0.5, rel=1e-6)


def test_a_seed_sweep_reports_each_configuration_across_its_seeds(tmp_path):
    """lr x seed: the terminal and summary.md give each lr's mean best validation error over its
    seeds with the 95% t-interval (checked against summary.csv's own numbers); the seed gets no
    'val error vs' plot (it is no parameter), the lr does."""
    sweep = tmp_path / "sweep"
    proc = run_mlprun(
        "-m", *TINY, "optim.lr=0.01,0.03", "trainer.seed=0,1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=True
    )
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    md = (sweep / "summary.md").read_text()
    assert "## Across seeds (trainer.seed)" in md and "Student-t" in md
    for lr in ("0.01", "0.03"):
        errs = [float(r["best_val_error"]) for r in rows if r["optim.lr"] == lr]
        mean, half, sd = mean_interval(errs)
        line = f"| lr={lr} | 3 | {100 * mean:.2f} ± {100 * half:.2f} | {100 * sd:.2f} |"
        assert line in md, md
        assert f"{100 * mean:.2f} ± {100 * half:.2f}" in proc.stdout
    assert "across seeds: mean ± 95% t-interval" in proc.stdout
    assert not (sweep / "val_error_vs_trainer.seed.png").exists()
    assert (sweep / "val_error_vs_optim.lr.png").is_file()


def test_not_started_rows_come_from_every_sweep_into_the_folder_and_name_a_slurm_job(tmp_path):
    """A rerun with a wider grid keeps its own multirun.2.yaml: a combination only it planned and
    never started is a row too; one a SLURM sweep submitted (its note in the sweep folder) names
    the job, which may still be queued."""
    sweep = tmp_path / "sweep"
    run_mlprun("-m", *TINY, "optim.lr=0.01", f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=True)
    run_mlprun("-m", *TINY, "optim.lr=0.01,0.02,0.03", f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=True)
    assert (sweep / "multirun.2.yaml").is_file()
    gone = next(d for d in sweep.iterdir() if "optim.lr=0.03" in d.name)
    queued = next(d for d in sweep.iterdir() if "optim.lr=0.02" in d.name)
    shutil.rmtree(gone)
    shutil.rmtree(queued)
    note = submission_file(sweep, queued)
    note.parent.mkdir(parents=True)
    note.write_text('{"job_id": "4242_1", "log": "x", "settings": {}}')
    jobs = {j["job"]: j for j in collect(sweep)[0]}
    assert len(jobs) == 3 and jobs[gone.name]["status"] == jobs[queued.name]["status"] == "not started"
    assert jobs[queued.name]["reason"].startswith("no folder yet: SLURM job 4242_1 was submitted for it")
    assert "SLURM" not in jobs[gone.name]["reason"]


def test_an_optuna_study_continued_with_other_choices_is_one_line(tmp_path):
    """The study kept in the sweep folder was made with choice(relu,tanh): continuing it with a
    third option is refused in one line naming optuna.db (Optuna's ValueError was 'unexpected')."""
    args = ["-m", *TINY, "hydra/sweeper=mlprun_optuna", "hydra.sweeper.n_trials=1", "hydra.sweep.dir=opt"]
    run_mlprun(*args, "model.activation=choice(relu,tanh)", cwd=tmp_path, check=True)
    proc = run_mlprun(*args, "model.activation=choice(relu,tanh,sigmoid)", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlprun: error:")]
    assert len(lines) == 1 and "optuna.db" in lines[0] and "another hydra.sweep.dir" in lines[0], proc.stderr


def test_an_optuna_trial_refused_for_a_key_typo_is_failed_not_rerun(tmp_path):
    """optim.lrr (no such key) ends the study in its first trial, before training: that trial is
    told FAIL, not left RUNNING, so the corrected command starts new trials instead of 'continuing'
    the typo's trial as one a signal stopped."""
    optuna = pytest.importorskip("optuna")
    args = ["-m", *TINY, "hydra/sweeper=mlprun_optuna", "hydra.sweeper.n_trials=1", "hydra.sweep.dir=opt"]
    proc = run_mlprun(*args, "optim.lrr=interval(0.001,0.01)", cwd=tmp_path)
    assert proc.returncode == 2 and "optim.lrr" in proc.stderr, proc.stderr[-3000:]
    study = optuna.load_study(study_name="mlprun", storage=f"sqlite:///{tmp_path / 'opt' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"]
    proc = run_mlprun(*args, "optim.lr=interval(0.001,0.01)", cwd=tmp_path, check=True)
    assert "runs again as a new trial" not in proc.stdout + proc.stderr
    study = optuna.load_study(study_name="mlprun", storage=f"sqlite:///{tmp_path / 'opt' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
