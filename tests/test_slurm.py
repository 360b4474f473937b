"""hydra/launcher=slurm against a real SLURM cluster (scripts/slurm/up.sh brings up one node).

Skipped with the reason when `sinfo` is absent or no node answers. Every wait is bounded. The
jobs are tiny runs on the bundled digits, one CPU each, so two run at once on a 2-core node.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import QUICK, mlprun_env, read_json


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no sinfo: SLURM is not installed (scripts/slurm/up.sh installs and starts one)"
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo does not answer: {exc}"
    if res.returncode != 0 or not re.search(r"^(idle|mix|alloc)", res.stdout, re.M):
        return f"no SLURM node up (sinfo: {(res.stdout + res.stderr).strip()[:200]}); run scripts/slurm/up.sh"
    return None


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(_cluster_problem() is not None, reason=str(_cluster_problem())),
]

JOB = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.poll_s=0.5",
    "dataset=digits",
    "model=mlp",
    "model.hidden=[16]",
    "trainer.tensorboard.enabled=false",
    *QUICK,
]

LOCAL = [a for a in JOB if not a.startswith("hydra")]  # the same jobs with the basic launcher


STARTED: list[tuple[subprocess.Popen, Path]] = []


@pytest.fixture(autouse=True)
def stop_leftovers():
    """A test that fails half-way leaves no sweep process and no SLURM job behind."""
    yield
    while STARTED:
        proc, out = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ids = submitted_ids(out)
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=20)


def start_sweep(
    sweep: Path, *args: str, job: list[str] = JOB, name: str | None = None, env: dict | None = None
) -> tuple[subprocess.Popen, Path]:
    """`mlprun -m` in the background; its output goes to a file (read while it runs)."""
    out = sweep.parent / f"{name or sweep.name}.out"
    env = mlprun_env(env)
    with open(out, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlprunner", "-m", *job, *args, f"hydra.sweep.dir={sweep}"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    STARTED.append((proc, out))
    return proc, out


def finish(proc: subprocess.Popen, out: Path, timeout: float = 150) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the sweep did not end within {timeout}s:\n{out.read_text()[-3000:]}")
    return out.read_text()


def run_sweep(sweep: Path, *args: str, timeout: float = 150, **how) -> tuple[int, str]:
    proc, out = start_sweep(sweep, *args, **how)
    text = finish(proc, out, timeout)
    return proc.returncode, text


def wait_for(what: str, check, timeout: float = 90, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def submitted_ids(out: Path) -> list[str]:
    m = re.search(r"submitted \d+ SLURM job\(s\): ([0-9_, ]+);", out.read_text())
    return [j.strip() for j in m.group(1).split(",")] if m else []


def job_state(job_id: str) -> tuple[str, str]:
    res = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=20)
    fields = dict(f.split("=", 1) for f in res.stdout.split() if "=" in f)
    return fields.get("JobState", ""), fields.get("Reason", "")


def epochs_done(run_dir: Path) -> int:
    try:
        return int(read_json(run_dir / "results.json").get("epochs_completed") or 0)
    except (OSError, ValueError):
        return 0


def release_when_requeued(job_id: str) -> None:
    """A requeued job waits ~2 minutes (Reason=BeginTime); start it now."""

    last = []

    def started_again():
        state, reason = job_state(job_id)
        last[:] = [state, reason]
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, timeout=20)
        return state == "RUNNING" and reason != "BeginTime"

    wait_for(f"job {job_id} to be requeued and start again", lambda: job_state(job_id)[0] == "PENDING", 60)
    # on a loaded machine (pytest-xdist's other worker) the node may still be cleaning up after
    # the job's first run: give the scheduler time, and say where the job stood if it never ran
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if started_again():
            return
        time.sleep(0.5)
    queue = subprocess.run(["squeue", "-a", "-l"], capture_output=True, text=True, timeout=20).stdout
    pytest.fail(f"job {job_id} did not run again within 180 s: state {last}; squeue:\n{queue}")


def job_pids(sweep: Path) -> list[int]:
    """The SLURM job processes (submitit's `_submit`) of this sweep, found by its folder."""
    pids = []
    for proc_dir in Path("/proc").iterdir():
        try:
            cmd = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            Path(cmd[0].decode()).name.startswith("python")
            and b"submitit.core._submit" in cmd
            and any(str(sweep).encode() in c for c in cmd)
        ):
            pids.append(int(proc_dir.name))
    return pids


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_two_jobs_through_slurm_failure_isolated_and_rerun_submits_nothing(tmp_path):
    """3 combinations: two train, one diverges (lr=1e38): jobs really go through SLURM, the
    failed one is isolated (its SLURM job FAILED, the others COMPLETED), exit 1; a rerun
    submits no job for the completed ones; an invalid combination gets no job (exit 2)."""
    sweep = tmp_path / "sweep"
    rc, text = run_sweep(sweep, "trainer.epochs=3", "optim.lr=0.001,0.01,1e38")
    assert rc == 1, text
    ids = re.search(r"submitted 3 SLURM job\(s\): ([0-9_, ]+);", text).group(1).split(", ")
    assert f"logs: {sweep / '.submitit'}" in text
    states = {j: job_state(j)[0] for j in ids}
    assert sorted(states.values()) == ["COMPLETED", "COMPLETED", "FAILED"], states
    by_lr = {d.name.split("optim.lr=")[1].split(",")[0]: read_json(d / "results.json") for d in job_dirs(sweep)}
    assert by_lr.pop("0.001")["status"] == by_lr.pop("0.01")["status"] == "completed"
    for d in job_dirs(sweep):  # torch's threads in the job: hydra.launcher.cpus_per_task=1
        assert ": 1 torch thread(s)" in (d / "mlprun.log").read_text(), d
    ((_, diverged),) = by_lr.items()
    assert diverged["status"] == "failed" and "non-finite" in diverged["reason"]
    assert "1 job(s) failed in this sweep" in text
    assert not list((sweep / ".submitit").glob(".submission_file_*"))

    rc, text = run_sweep(sweep, "trainer.epochs=3", "optim.lr=0.001,0.01,-1")
    assert rc == 2, text  # -1 is invalid: reported, no job; the only failure of this launch, a refusal
    assert "1 job(s) refused for invalid values: optim.lr=-1 is invalid" in text
    assert "SLURM job(s)" not in text
    assert text.count("already completed") == 2
    assert re.search(r"optim\.lr=-1: invalid, not submitted: optim\.lr=-1 is invalid", text)
    bad = read_json(next(d for d in job_dirs(sweep) if "optim.lr=-1" in d.name) / "results.json")
    assert bad["status"] == "failed" and bad["reason"].startswith("optim.lr=-1 is invalid")


@pytest.mark.slow
def test_time_limit_requeue_resumes_from_checkpoint(tmp_path):
    """SIGUSR2 (what SLURM sends before the time limit; with timeout_min <= 10 submitit takes
    every SIGUSR2 for a timeout): the job is checkpointed and requeued, the requeued job resumes
    from last.pt, and the sweep waits for it and exits 0 with the job completed."""
    sweep = tmp_path / "sweep"
    proc, out = start_sweep(sweep, "trainer.epochs=150", "hydra.launcher.timeout_min=5", "optim.lr=0.01")
    (job_id,) = wait_for("the job id", lambda: submitted_ids(out))
    run_dir = wait_for("the job folder", lambda: next(iter(job_dirs(sweep)), None) if sweep.is_dir() else None)
    wait_for("a few epochs", lambda: epochs_done(run_dir) >= 3)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=20)
    release_when_requeued(job_id)
    text = finish(proc, out)
    assert proc.returncode == 0, text
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and res["epochs_completed"] == 150
    assert len(res["resumed"]) == 1 and res["resumed"][0]["from_epoch"] >= 3
    assert "1 completed" in text and "failed" not in text
    log = next((sweep / ".submitit" / job_id).glob("*_log.err")).read_text()
    assert "this job is timed-out" in log  # submitit's handler saw the SIGUSR2 as a time limit


@pytest.mark.slow
def test_a_time_limit_with_no_requeue_left_is_interrupted_and_the_rerun_resumes(tmp_path):
    """hydra.launcher.max_num_timeout=0: the first time limit (SIGUSR2) ends the job with submitit's
    'timed-out too many times'. The job is interrupted, not failed (a failed job starts again from
    scratch on the rerun: its epochs were lost), and rerunning the command resumes it."""
    sweep = tmp_path / "sweep"
    args = ["trainer.epochs=600", "hydra.launcher.timeout_min=5", "hydra.launcher.max_num_timeout=0", "optim.lr=0.01"]
    proc, out = start_sweep(sweep, *args)
    (job_id,) = wait_for("the job id", lambda: submitted_ids(out))
    run_dir = wait_for("the job folder", lambda: next(iter(job_dirs(sweep)), None) if sweep.is_dir() else None)
    wait_for("a few epochs", lambda: epochs_done(run_dir) >= 3)
    for _ in range(5):  # submitit raises from its signal handler: landing in a log write, logging swallows it
        subprocess.run(["scancel", "--signal=USR2", job_id], check=False, timeout=20)
        try:
            proc.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            pass
    text = finish(proc, out)
    assert proc.returncode == 1, text
    res = read_json(run_dir / "results.json")
    assert res["status"] == "interrupted", res
    assert res["reason"].startswith("SLURM time limit reached with no requeue left (hydra.launcher.max_num_timeout)")
    assert f"SLURM job {job_id} (#0): interrupted: SLURM time limit reached" in text
    done = res["epochs_completed"]
    rc, text = run_sweep(sweep, *args)
    assert rc == 0, text
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and res["resumed"][-1]["from_epoch"] >= done >= 3
    # the command as typed, not submitit's `.../_submit.py <folder>/%j` (the job's own sys.argv)
    for prov in (res["provenance"], res["resumed"][-1]["provenance"]):
        assert prov["command"].startswith("mlprun -m ") and "optim.lr=0.01" in prov["command"], prov


@pytest.mark.slow
def test_scontrol_requeue_resumes_and_scancel_reports_cancelled(tmp_path):
    """Two long jobs: one is requeued by `scontrol requeue` (SIGTERM: it stops, is rerun and
    resumes from last.pt), the other is cancelled with `scancel`: the sweep is not reported
    interrupted, waits for the requeued job, and ends with a summary that says cancelled, exit 1."""
    sweep = tmp_path / "sweep"
    proc, out = start_sweep(sweep, "trainer.epochs=150", "optim.lr=0.01,0.02")
    ids = wait_for("the job ids", lambda: submitted_ids(out))
    assert len(ids) == 2
    dirs = wait_for(
        "both job folders", lambda: len(job_dirs(sweep)) == 2 and job_dirs(sweep) if sweep.is_dir() else None
    )
    wait_for("a few epochs in both jobs", lambda: all(epochs_done(d) >= 3 for d in dirs))
    lr_of = {j: re.search(rf"{j}: #\d+ .*optim\.lr=([0-9.]+)", out.read_text()).group(1) for j in ids}
    requeued, cancelled = ids
    subprocess.run(["scontrol", "requeue", requeued], check=True, timeout=20)
    subprocess.run(["scancel", cancelled], check=True, timeout=20)
    release_when_requeued(requeued)
    text = finish(proc, out)
    assert proc.returncode == 1, text
    by_lr = {d.name.split("optim.lr=")[1].split(",")[0]: read_json(d / "results.json") for d in dirs}
    done, gone = by_lr[lr_of[requeued]], by_lr[lr_of[cancelled]]
    assert done["status"] == "completed" and done["epochs_completed"] == 150
    assert len(done["resumed"]) == 1 and done["resumed"][0]["from_epoch"] >= 3
    assert gone["status"] == "cancelled" and cancelled in gone["reason"]
    assert "1 job(s) cancelled in this sweep" in text
    assert "rerun this sweep command to continue (completed jobs are skipped)" in text
    assert "| cancelled |" in (sweep / "summary.md").read_text()
    assert "interrupted" not in text


def test_job_killed_without_result_is_reported_lost(tmp_path):
    """SIGKILL to the job's process (what the OOM killer does): no result, no hang; the sweep
    reports the job lost with its SLURM state and log, exit 1."""
    sweep = tmp_path / "sweep"
    proc, out = start_sweep(sweep, "trainer.epochs=150", "optim.lr=0.01")
    (job_id,) = wait_for("the job id", lambda: submitted_ids(out))
    run_dir = wait_for("the job folder", lambda: next(iter(job_dirs(sweep)), None) if sweep.is_dir() else None)
    wait_for("a few epochs", lambda: epochs_done(run_dir) >= 3)
    (pid,) = job_pids(sweep)
    os.kill(pid, signal.SIGKILL)  # (scancel --signal=KILL would make SLURM call it cancelled)
    text = finish(proc, out, timeout=90)
    assert proc.returncode == 1, text
    res = read_json(run_dir / "results.json")
    assert res["status"] == "lost"
    assert res["reason"].startswith(f"SLURM job {job_id} ended FAILED") and "log: " in res["reason"]
    assert str(sweep / ".submitit" / job_id) in res["reason"]
    assert "1 job(s) lost in this sweep" in text


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_job_whose_folder_is_in_use_leaves_it_untouched(tmp_path):
    """An older sweep's job still trains in the folder (here: a local sweep, stopped with
    SIGSTOP so its files hold still, its lock still held): a second launch of the same sweep,
    locally and through SLURM, writes nothing into that folder, reports the job "in use" in its
    summary and exits 1."""
    sweep = tmp_path / "sweep"
    args = ["trainer.epochs=150", "optim.lr=0.01"]
    older, _ = start_sweep(sweep, *args, job=LOCAL, name="older")
    run_dir = wait_for("the job folder", lambda: next(iter(job_dirs(sweep)), None) if sweep.is_dir() else None)
    wait_for("a few epochs", lambda: epochs_done(run_dir) >= 2)
    older.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.5)  # a results.json or checkpoint write under way ends as it is
        before = folder_bytes(run_dir)
        assert read_json(run_dir / "results.json")["status"] == "running"
        for how, job in (("local", LOCAL), ("slurm", JOB)):
            rc, text = run_sweep(sweep, *args, job=job, name=how)
            assert rc == 1, text
            assert "1 job(s) in use in this sweep" in text, text
            assert folder_bytes(run_dir) == before, how
            assert "| in use |" in (sweep / "summary.md").read_text()
            assert not (sweep / ".mlprun_marks").exists()
            said = "skipped, in use: " if how == "local" else r"SLURM job \d+ \(#0\): in use: "
            assert re.search(said + ".* is in use by another running mlprun process", text), text
    finally:
        older.kill()
        older.wait()


def test_slurm_not_answering_stops_the_wait_with_a_summary(tmp_path):
    """squeue and scontrol start failing for the sweep's process (shadowed on its PATH, failing once
    a flag file exists; the job itself runs on): after unreachable_s the sweep stops waiting,
    names the job not collected and how to collect it later, writes nothing into its folder,
    exit 1; mlprun-report then collects the job SLURM ran to the end."""
    fake, flag = tmp_path / "fake_bin", tmp_path / "slurm_down"
    fake.mkdir()
    for name in ("squeue", "scontrol"):
        script = fake / name
        script.write_text(
            f"#!/bin/sh\nif [ -e {flag} ]; then\n"
            "  echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1\nfi\n"
            f'exec {shutil.which(name)} "$@"\n'
        )
        script.chmod(0o755)
    sweep = tmp_path / "sweep"
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    proc, out = start_sweep(sweep, "trainer.epochs=40", "optim.lr=0.01", "hydra.launcher.unreachable_s=3", env=env)
    (job_id,) = wait_for("the job id", lambda: submitted_ids(out))
    run_dir = wait_for("the job folder", lambda: next(iter(job_dirs(sweep)), None) if sweep.is_dir() else None)
    wait_for("an epoch", lambda: epochs_done(run_dir) >= 1)
    flag.touch()
    text = finish(proc, out, timeout=60)
    assert proc.returncode == 1, text
    assert re.search(rf"SLURM has not answered for \d+ s .*not collected: SLURM job\(s\) {job_id}\b", text), text
    assert f"mlprun-report {sweep} (or rerun this sweep command)" in text
    assert "1 job(s) not collected in this sweep" in text, text
    assert "| not collected |" in (sweep / "summary.md").read_text()
    wait_for("the job to end", lambda: job_state(job_id)[0] == "COMPLETED", 90)
    assert read_json(run_dir / "results.json")["status"] == "completed"  # the job's own word
    res = subprocess.run(
        [sys.executable, "-c", "from mlprunner.cli import report_main; report_main()", str(sweep)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "| completed |" in (sweep / "summary.md").read_text()


def test_pending_reason_reported_and_ctrl_c_leaves_the_running_job_with_the_scancel_command(tmp_path):
    """A job SLURM holds (sbatch --hold: Reason=JobHeldUser) pending longer than pending_warn_s is
    reported with its Reason; released, it trains; Ctrl-C (SIGINT) on the sweep then prints the
    job id and the scancel command, exit 130, and leaves the job running."""
    sweep = tmp_path / "sweep"
    proc, out = start_sweep(
        sweep,
        "trainer.epochs=150",
        "++hydra.launcher.additional_parameters.hold=true",
        "hydra.launcher.pending_warn_s=1",
    )
    (job_id,) = wait_for("the job id", lambda: submitted_ids(out))
    wait_for("the pending warning", lambda: f"SLURM job {job_id} pending for" in out.read_text(), 30)
    assert re.search(rf"SLURM job {job_id} pending for \d+ s: Reason=JobHeldUser", out.read_text())
    subprocess.run(["scontrol", "release", job_id], check=True, timeout=20)
    run_dir = wait_for("the job folder", lambda: next(iter(job_dirs(sweep)), None) if sweep.is_dir() else None)
    wait_for("an epoch", lambda: epochs_done(run_dir) >= 1)
    proc.send_signal(signal.SIGINT)
    text = finish(proc, out, timeout=60)
    assert proc.returncode == 130, text
    assert f"SLURM job(s) {job_id} are still queued or running; cancel them with: scancel {job_id}" in text
    assert f"mlprun-report {sweep}" in text
    assert job_state(job_id)[0] == "RUNNING"  # left running (the fixture cancels it)


def held_and_left(sweep: Path, *args: str) -> str:
    """A sweep whose SLURM job is held (pending) and whose sweep process was stopped with Ctrl-C:
    the job stays queued; its id."""
    proc, out = start_sweep(sweep, *args, "++hydra.launcher.additional_parameters.hold=true")
    (job_id,) = wait_for("the job id", lambda: submitted_ids(out))
    proc.send_signal(signal.SIGINT)
    text = finish(proc, out, timeout=60)
    assert proc.returncode == 130, text
    assert job_state(job_id)[0] == "PENDING"
    return job_id


def test_a_rerun_while_the_earlier_job_is_queued_waits_for_it_instead_of_submitting_again(tmp_path):
    """Ctrl-C leaves the sweep's job queued; the same sweep command again submits nothing and
    waits for that job, which (released) trains the combination once; results.json names the
    SLURM job it ran in."""
    sweep = tmp_path / "sweep"
    job_id = held_and_left(sweep, "trainer.epochs=2")
    proc, out = start_sweep(sweep, "trainer.epochs=2", "++hydra.launcher.additional_parameters.hold=true", name="rerun")
    line = f"SLURM job {job_id} from an earlier launch is still PENDING: waiting for it"
    wait_for("the rerun to wait for the earlier job", lambda: line in out.read_text(), 60)
    subprocess.run(["scontrol", "release", job_id], check=True, timeout=20)
    text = finish(proc, out)
    assert proc.returncode == 0, text
    assert not re.search(r"submitted \d+ SLURM job", text), text
    assert f"SLURM job {job_id} (#0): completed" in text
    (run_dir,) = job_dirs(sweep)
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and res["epochs_completed"] == 2
    assert res["provenance"]["slurm_job"] == job_id


def test_a_rerun_with_other_launcher_settings_submits_again_and_names_the_earlier_job(tmp_path):
    """The earlier job still queued but the rerun changes the submission (here: no hold): a new
    job is submitted, and the warning gives the scancel command for the earlier one."""
    sweep = tmp_path / "sweep"
    job_id = held_and_left(sweep, "trainer.epochs=2")
    rc, text = run_sweep(sweep, "trainer.epochs=2", name="rerun")
    assert rc == 0, text
    assert f"SLURM job {job_id} from an earlier launch is still PENDING, submitted with other launcher settings" in text
    assert f"cancel the earlier one with: scancel {job_id}" in text
    (new_id,) = re.search(r"submitted 1 SLURM job\(s\): ([0-9_]+);", text).groups()
    assert new_id != job_id
    assert read_json(job_dirs(sweep)[0] / "results.json")["provenance"]["slurm_job"] == new_id


def test_ctrl_c_with_cancel_on_interrupt_cancels_the_running_job(tmp_path):
    """hydra.launcher.cancel_on_interrupt=true: Ctrl-C on the sweep while its job trains cancels
    the SLURM job, writes the sweep's summary (the job cancelled) and names the command that
    continues it, exit 130."""
    sweep = tmp_path / "sweep"
    proc, out = start_sweep(sweep, "trainer.epochs=150", "optim.lr=0.01", "hydra.launcher.cancel_on_interrupt=true")
    (job_id,) = wait_for("the job id", lambda: submitted_ids(out))
    run_dir = wait_for("the job folder", lambda: next(iter(job_dirs(sweep)), None) if sweep.is_dir() else None)
    wait_for("an epoch", lambda: epochs_done(run_dir) >= 1)
    assert job_state(job_id)[0] == "RUNNING"
    proc.send_signal(signal.SIGINT)
    text = finish(proc, out, timeout=60)
    assert proc.returncode == 130, text
    assert f"interrupted: cancelled SLURM job(s) {job_id}" in text
    assert "continue the sweep (completed jobs are skipped" in text and "with: mlprun -m" in text, text
    # the summary lists the job (cancelled; or what the job, still ending, wrote after that)
    assert len(list(csv.DictReader((sweep / "summary.csv").open()))) == 1
    wait_for("the job to be cancelled", lambda: job_state(job_id)[0] == "CANCELLED", 30)


# ------------------------------------------------------------------ stacked groups on SLURM
GRID = ["model.activation=relu,tanh", "optim.lr=0.01,0.02", "trainer.seed=0,1", "trainer.epochs=2"]


def history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "time_s"} for rec in read_json(run_dir / "results.json")["history"]]


@pytest.mark.slow
def test_stacked_groups_are_one_slurm_job_each_and_train_bitwise_as_the_stacked_launcher(tmp_path):
    """hydra.launcher.max_models=4 on 2 activations x 2 lrs x 2 seeds: two SLURM jobs (the
    activations do not stack), each holding one activation's 4 lr x seed combinations; every
    combination gets its own folder, .hydra/, checkpoints and a completed results.json whose
    per-epoch history is bitwise that of the same sweep with hydra/launcher=stacked; a rerun
    submits nothing."""
    sweep = tmp_path / "sweep"
    rc, text = run_sweep(sweep, *GRID, "hydra.launcher.max_models=4")
    assert rc == 0, text
    assert "8 combination(s) in 2 stacked group(s) of up to 4, one SLURM job each (sizes 4, 4)" in text, text
    ids = re.search(r"submitted 2 SLURM job\(s\): ([0-9_, ]+);", text).group(1).split(", ")
    array = ids[0].split("_")[0]  # the array's own folder holds its submission script
    assert sorted(p.name for p in (sweep / ".submitit").iterdir() if p.name != array) == sorted(ids)
    for job_id in ids:
        held = re.findall(rf"^  {job_id}: #\d+ .*model\.activation=(\w+)", text, re.M)
        assert len(held) == 4 and len(set(held)) == 1, text
        assert job_state(job_id)[0] == "COMPLETED"
        assert "stacked group of 4 job(s)" in next((sweep / ".submitit" / job_id).glob("*_log.out")).read_text()
    assert text.count("): completed") == 8

    ref = tmp_path / "ref"
    rc, ref_text = run_sweep(ref, *GRID, "hydra/launcher=stacked", "hydra.launcher.max_models=4", job=LOCAL)
    assert rc == 0, ref_text
    dirs = job_dirs(sweep)
    assert [d.name for d in dirs] == [d.name for d in job_dirs(ref)] and len(dirs) == 8
    for d in dirs:
        assert read_json(d / "results.json")["status"] == "completed"
        assert (d / "checkpoints" / "last.pt").is_file() and (d / ".hydra" / "config.yaml").is_file()
        assert history(d) == history(ref / d.name), d.name

    rc, text = run_sweep(sweep, *GRID, "hydra.launcher.max_models=4")
    assert rc == 0, text
    assert "SLURM job(s)" not in text and text.count("already completed") == 8


@pytest.mark.slow
def test_time_limit_requeue_of_a_stacked_group_resumes_every_member(tmp_path):
    """SIGUSR2 (the time limit, as in test_time_limit_requeue_resumes_from_checkpoint) on the
    SLURM job of a group of two: the job is requeued with the group, both members are recorded
    interrupted, and the requeued job resumes each from its own last.pt and completes both."""
    sweep = tmp_path / "sweep"
    proc, out = start_sweep(
        sweep, "trainer.epochs=40", "hydra.launcher.timeout_min=5", "optim.lr=0.01,0.02", "hydra.launcher.max_models=2"
    )
    (job_id,) = wait_for("the job id", lambda: submitted_ids(out))
    dirs = wait_for(
        "both job folders", lambda: len(job_dirs(sweep)) == 2 and job_dirs(sweep) if sweep.is_dir() else None
    )
    wait_for("a few epochs in both jobs", lambda: all(epochs_done(d) >= 3 for d in dirs))
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=20)
    release_when_requeued(job_id)
    text = finish(proc, out)
    assert proc.returncode == 0, text
    for d in dirs:
        res = read_json(d / "results.json")
        assert res["status"] == "completed" and res["epochs_completed"] == 40
        assert len(res["resumed"]) == 1 and res["resumed"][0]["from_epoch"] >= 3
    assert text.count(f"SLURM job {job_id} (#") == 2 and "failed" not in text


@pytest.mark.parametrize("value", ["0", "x"])
def test_bad_max_models_is_a_one_line_error_and_submits_nothing(tmp_path, value):
    sweep = tmp_path / "sweep"
    rc, text = run_sweep(sweep, "optim.lr=0.01,0.02", f"hydra.launcher.max_models={value}", timeout=60)
    assert rc == 2, text
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"mlprun: error: hydra.launcher.max_models={value}:"), text
    assert "SLURM job" not in text and not (sweep / ".submitit").exists()


def test_an_unknown_partition_is_one_line_naming_the_clusters(tmp_path):
    """A partition sinfo does not know is refused before submission in one line that lists the
    cluster's partitions (sbatch printed three lines of its own, and none named them)."""
    sweep = tmp_path / "sweep"
    rc, text = run_sweep(sweep, "optim.lr=0.01,0.02", "hydra.launcher.partition=nosuchpart", timeout=60)
    assert rc == 2, text
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    assert errors == [
        "mlprun: error: hydra.launcher.partition='nosuchpart' is invalid; allowed: a partition of this cluster: debug"
    ], text
    assert "SLURM job" not in text and not (sweep / ".submitit").exists()


def test_a_gpu_on_a_cluster_without_gpus_is_one_line(tmp_path):
    """hydra.launcher.gpus_per_node=1 where sinfo lists no gpu resource: refused before
    submission, exit 2 (sbatch's 'Invalid generic resource' came out as an unexpected error, exit 1)."""
    sweep = tmp_path / "sweep"
    rc, text = run_sweep(sweep, "optim.lr=0.01,0.02", "hydra.launcher.gpus_per_node=1", timeout=60)
    assert rc == 2, text
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(
        "mlprun: error: hydra.launcher.gpus_per_node=1: no node of the default partition has a GPU"
    ), text
    assert "SLURM job" not in text and not (sweep / ".submitit").exists()
