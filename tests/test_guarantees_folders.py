"""What mlprun guarantees about folders (README, What mlprun guarantees), tried as a careless or
hostile user would: a run folder another process holds is left alone (single runs, resume=,
sweep reruns, two sweeps at once), completed work and a user's own files are never rewritten
(sweep reruns with extra settings, eval/predict outputs, hydra.run.dir= a folder of someone's
files), a checkpoint from another run does not take a folder over, and a signal during start-up
gives exit 130 with a results.json that says interrupted (or no folder) and the resume command.

Every case checks the exit code, one error line naming the key or file, no traceback, and the
sha256 of every file that was there before."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import (
    QUICK,
    mlprun_env,
    mlprun_inprocess,
    read_json,
    run_mlprun,
    run_mlprun_together,
    scalars,
    signalled_mlprun,
    tool_inprocess,
)

# what a sweep's summary rewrites: its tables, figures and their digests (mlprun-report's manifest)
REPORT = ("summary.", "val_", ".mlprun_report.json")

DIGITS = ["dataset=digits", "model=mlp_100", "trainer.epochs=1", "trainer.deterministic=true", *QUICK]
GRID = ["optim.lr=0.01,0.001"]


def hashes(folder: Path) -> dict[str, str]:
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error_line(proc, *needles: str) -> str:
    """The single error line of a refused command; no traceback anywhere."""
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


class Held:
    """The run folder's lock, held by this test process as a running mlprun process holds it."""

    def __init__(self, folder: Path):
        self.fh = open(Path(folder) / ".mlprun.lock", "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Completed runs and a completed sweep, made once; tests work on copies."""
    base = tmp_path_factory.mktemp("made")
    run_mlprun_together(
        [*DIGITS, f"hydra.run.dir={base / 'run'}"],
        [*DIGITS, "optim.lr=0.01", f"hydra.run.dir={base / 'other'}"],
        ["-m", *DIGITS, *GRID, f"hydra.sweep.dir={base / 'sweep'}"],
        cwd=base,
        check=True,
    )
    return base


def copy(made: Path, name: str, to: Path) -> Path:
    return Path(shutil.copytree(made / name, to / name, symlinks=True))


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/results.json"))


def set_status(run_dir: Path, status: str) -> None:
    data = read_json(run_dir / "results.json")
    data["status"] = status
    (run_dir / "results.json").write_text(json.dumps(data))


# ----------------------------------------------------------------- 1. every path takes the lock


def test_run_resume_and_sweep_refuse_a_folder_another_process_holds(made, tmp_path):
    # a new run into a folder whose lock another process holds: refused before Hydra writes
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with Held(fresh):
        before = hashes(fresh)
        proc = run_mlprun(*DIGITS, f"hydra.run.dir={fresh}", cwd=tmp_path)
        assert proc.returncode == 1
        one_error_line(proc, str(fresh), "in use by another running mlprun process")
        assert hashes(fresh) == before and sorted(p.name for p in fresh.iterdir()) == [".mlprun.lock"]

    # resume= of a run that another process trains
    run = copy(made, "run", tmp_path)
    set_status(run, "running")
    with Held(run):
        before = hashes(run)
        proc = run_mlprun(f"resume={run}", "trainer.epochs=3", cwd=tmp_path)
        assert proc.returncode == 1
        one_error_line(proc, str(run), "in use by another running mlprun process")
        assert hashes(run) == before

    # a sweep rerun while one of its jobs trains in another process (results.json: running): the
    # job is skipped as "in use", its folder and its TensorBoard folder stay byte for byte
    sweep = copy(made, "sweep", tmp_path)
    busy, done = job_dirs(sweep)
    set_status(busy, "running")
    before = hashes(sweep)
    with Held(busy):
        proc = run_mlprun("-m", *DIGITS, *GRID, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text and "1 job(s) in use in this sweep" in text
    assert f"job {busy.name} skipped, in use" in text
    after = hashes(sweep)
    mine = [k for k in before if not k.startswith(REPORT)]  # the summary is rebuilt
    assert {k: after.get(k) for k in mine} == {k: before[k] for k in mine}


@pytest.mark.slow
def test_concurrent_sweeps_and_a_rerun_leave_the_training_job_unharmed(tmp_path):
    """Two identical sweeps started ~1.5 s apart into one folder, then a third while the job
    trains: one process trains the job to the end, bitwise equal to a run left alone; the others
    say "in use" in one line each, exit 1 and write nothing into the job's folder."""
    args = ["-m", *DIGITS, "trainer.epochs=8", "optim.lr=0.01"]
    ref = tmp_path / "ref"
    sweep = tmp_path / "sweep"
    env = mlprun_env({"MLPRUN_TEST_SLOW_CHECKPOINT": "1.0"})  # ~2 s per epoch
    procs = []

    def launch(name: str, folder: Path, run_env: dict):
        out = tmp_path / f"{name}.out"
        with open(out, "w") as fh:
            p = subprocess.Popen(
                [sys.executable, "-m", "mlprunner", *args, f"hydra.sweep.dir={folder}"],
                cwd=tmp_path,
                env=run_env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        return p, out

    # the sweep left alone, at full speed beside the others (they mostly wait in their slowed writes)
    ref_env = {k: v for k, v in env.items() if k != "MLPRUN_TEST_SLOW_CHECKPOINT"}
    ref_proc, _ = launch("ref", ref, ref_env)

    def start(name: str):
        procs.append(launch(name, sweep, env))
        return procs[-1]

    def wait_for(what, check, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}")

    def epochs() -> int:
        try:
            return max((read_json(p).get("epochs_completed") or 0) for p in sweep.glob("*/results.json"))
        except (ValueError, OSError):
            return 0

    try:
        a, a_out = start("a")
        wait_for("a's first line", lambda: a_out.stat().st_size > 0)
        time.sleep(1.5)
        b, b_out = start("b")
        wait_for("two epochs", lambda: epochs() >= 2)
        c, c_out = start("c")
        for p, _ in procs:
            p.wait(timeout=300)
        assert ref_proc.wait(timeout=300) == 0, (tmp_path / "ref.out").read_text()[-3000:]
    finally:
        for p in [ref_proc, *(p for p, _ in procs)]:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = {name: p.returncode for name, (p, _) in zip("abc", procs)}
    texts = {name: out.read_text() for name, (_, out) in zip("abc", procs)}
    for text in texts.values():
        assert "Traceback" not in text, text[-3000:]
    trained = [n for n in "abc" if codes[n] == 0]
    assert len(trained) == 1 and trained[0] in "ab", (codes, {n: t[-1500:] for n, t in texts.items()})
    for n in "abc":
        if n not in trained:
            assert codes[n] == 1 and "skipped, in use" in texts[n] and "1 job(s) in use" in texts[n], texts[n]
            assert "starting it again from scratch" not in texts[n]
    (job,) = job_dirs(sweep)
    (ref_job,) = job_dirs(ref)
    res, ref_res = read_json(job / "results.json"), read_json(ref_job / "results.json")
    assert res["status"] == "completed" and res["epochs_completed"] == 8

    def learned(history):  # every number but the epoch's wall time
        return [{k: v for k, v in h.items() if k != "time_s"} for h in history]

    assert learned(res["history"]) == learned(ref_res["history"])  # bitwise: the same floats
    assert torch.equal(
        torch.load(job / "checkpoints" / "last.pt", weights_only=True)["model"]["0.weight"],
        torch.load(ref_job / "checkpoints" / "last.pt", weights_only=True)["model"]["0.weight"],
    )
    assert "resumed" not in res
    # its TensorBoard events were never deleted: every epoch is there once
    logs = [p.parent for p in (sweep / "tensorboard").rglob("events.out.tfevents.*")]
    steps = [s for d in set(logs) for s, _ in scalars(d).get("Loss/train", [])]
    assert sorted(steps) == list(range(1, 9)), steps


# ----------------------------------------------------------------- 2. nothing rewritten


def test_sweep_reruns_leave_completed_jobs_byte_for_byte(tmp_path):
    sweep = tmp_path / "sweep"  # made here: its records name this folder
    run_mlprun("-m", *DIGITS, *GRID, f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=True)
    first = hashes(sweep)
    # the same command: nothing changes, not even a line in a job's mlprun.log
    proc = run_mlprun("-m", *DIGITS, *GRID, f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=True)
    assert "already completed" in proc.stdout + proc.stderr
    assert hashes(sweep) == first
    # a setting left out of folder names (same folders): the jobs are skipped and keep the
    # .hydra/ they were trained with; multirun.yaml is the first sweep's, this one beside it
    run_mlprun("-m", *DIGITS, *GRID, "trainer.threads=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=True)
    after = hashes(sweep)
    assert {k: after.get(k) for k in first} == first
    assert set(after) - set(first) == {"multirun.2.yaml"}
    assert "trainer.threads=1" in (sweep / "multirun.2.yaml").read_text()
    assert "trainer.threads=1" not in (sweep / "multirun.yaml").read_text()
    # a new value: one new job; the completed ones and the sweep's records stay as they were
    proc = run_mlprun("-m", *DIGITS, "optim.lr=0.01,0.001,0.1", f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=True)
    after = hashes(sweep)
    kept = [k for k in first if not k.startswith(REPORT)]  # the summary gains a row
    assert {k: after.get(k) for k in kept} == {k: first[k] for k in kept}
    assert (sweep / "multirun.3.yaml").is_file() and not list(sweep.glob(".multirun*"))
    assert len(job_dirs(sweep)) == 3


def test_eval_and_predict_never_write_over_a_runs_files(made, tmp_path, monkeypatch, capsys):
    """(mlprun-eval and mlprun-predict in this process: their refusals come before any work.)"""
    from PIL import Image

    run = copy(made, "run", tmp_path)
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8), 0).save(image)
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}')
    own = hashes(run)
    refused = [
        ("mlprun-eval", [str(run), "--json", str(run / "results.json")], "results.json"),
        ("mlprun-eval", [str(run), "--json", str(run / ".hydra" / "config.yaml"), "--force"], "config.yaml"),
        ("mlprun-eval", [str(run), "--plot", str(run / "learning_curves.png"), "--force"], "learning_curves.png"),
        ("mlprun-eval", [str(run), "--json", str(run / "checkpoints" / "last.pt")], "last.pt"),
        ("mlprun-predict", [str(run), str(image), "--csv", str(run / "results.json"), "--force"], "results.json"),
        ("mlprun-predict", [str(run), str(image), "--csv", str(run / "mlprun.log")], "mlprun.log"),
        # files a logger or the profiler writes (missing from the list before)
        ("mlprun-predict", [str(run), str(image), "--csv", str(run / "metrics.csv"), "--force"], "metrics.csv"),
        ("mlprun-eval", [str(run), "--json", str(run / "profile.json"), "--force"], "profile.json"),
    ]
    for prog, args, name in refused:
        proc = tool_inprocess(prog, *args, monkeypatch=monkeypatch, capsys=capsys)
        assert proc.returncode == 2, (prog, args, proc.stderr)
        one_error_line(proc, name, "never writes over")
    # an existing file of the user's: only with --force
    for prog, args in (
        ("mlprun-eval", [str(run), "--json", str(mine)]),
        ("mlprun-predict", [str(run), str(image), "--csv", str(mine)]),
    ):
        proc = tool_inprocess(prog, *args, monkeypatch=monkeypatch, capsys=capsys)
        assert proc.returncode == 2, proc.stderr
        one_error_line(proc, str(mine), "--force")
    assert mine.read_text() == '{"my": "notes"}'
    assert hashes(run) == own
    proc = tool_inprocess(
        "mlprun-eval", str(run), "--json", str(mine), "--force", monkeypatch=monkeypatch, capsys=capsys
    )
    assert proc.returncode == 0, proc.stderr
    assert "error" in json.loads(mine.read_text())
    assert hashes(run) == own  # results.json is never modified by mlprun-eval


def users_folder(folder: Path, files: dict[str, bytes]) -> Path:
    """A folder of a user's own files ({relative path: bytes}), none of them mlprun's."""
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def test_a_new_run_refuses_a_folder_of_someone_elses_files(tmp_path, monkeypatch, capsys):
    """(The refusals in this process, as mlprun's entry point runs them; the run into the empty
    folder as a real process.)"""
    monkeypatch.chdir(tmp_path)
    cases = {
        "pictures": {"learning_curves.png": b"my own figure", "notes.txt": b"mine"},
        "subfolder": {"data/x.csv": b"1,2\n"},
        "not_ours": {"results.json": b"[1, 2, 3]"},
    }
    for name, files in cases.items():
        folder = users_folder(tmp_path / name, files)
        before = hashes(folder)
        proc = mlprun_inprocess(*DIGITS, f"hydra.run.dir={folder}", monkeypatch=monkeypatch, capsys=capsys)
        assert proc.returncode == 2, (name, proc.stderr)
        one_error_line(proc, f"hydra.run.dir={folder}", "nothing was changed")
        assert hashes(folder) == before and sorted(p.name for p in folder.rglob("*")) == sorted(
            {Path(r).parts[0] for r in files} | {Path(r).name for r in files}
        ), name
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    proc = mlprun_inprocess(*DIGITS, f"hydra.run.dir={a_file}", monkeypatch=monkeypatch, capsys=capsys)
    assert proc.returncode == 2
    one_error_line(proc, f"hydra.run.dir={a_file}", "not a folder")
    assert a_file.read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_mlprun(*DIGITS, f"hydra.run.dir={empty}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_json(empty / "results.json")["status"] == "completed"


def test_a_sweep_refuses_a_folder_of_someone_elses_files(tmp_path, monkeypatch, capsys):
    """A sweep's summary.csv, summary.md, plots and job folders never land among a user's files.
    (Refused before any job starts: in this process, as mlprun's entry point runs it.)"""
    monkeypatch.chdir(tmp_path)
    cases = {
        "summary": {"summary.csv": b"my own table", "summary.md": b"# mine"},
        "plots": {"val_curves.png": b"my own figure"},
        "subfolder": {"data/x.csv": b"1,2\n"},
    }
    for name, files in cases.items():
        folder = users_folder(tmp_path / name, files)
        before = hashes(folder)
        proc = mlprun_inprocess("-m", *DIGITS, f"hydra.sweep.dir={folder}", monkeypatch=monkeypatch, capsys=capsys)
        assert proc.returncode == 2, (name, proc.stderr)
        one_error_line(proc, f"hydra.sweep.dir={folder}", "nothing was changed")
        assert hashes(folder) == before and len(list(folder.rglob("*"))) == len(
            {Path(r).parts[0] for r in files} | set(files)
        ), name
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    proc = mlprun_inprocess("-m", *DIGITS, f"hydra.sweep.dir={a_file}", monkeypatch=monkeypatch, capsys=capsys)
    assert proc.returncode == 2
    one_error_line(proc, f"hydra.sweep.dir={a_file}", "not a folder")
    assert a_file.read_text() == "mine"


# ----------------------------------------------------------------- 3. foreign checkpoints


def _edited(src: Path, dst: Path, key: str, value) -> None:
    state = torch.load(src, weights_only=True)
    node = state["config"]
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    torch.save(state, dst)


def test_a_checkpoint_from_another_run_does_not_take_a_folder_over(made, tmp_path, monkeypatch, capsys):
    """(The refused resumes in this process: refused before training; the accepted ones as real
    processes.)"""
    monkeypatch.chdir(tmp_path)
    run = copy(made, "run", tmp_path)
    other = made / "other" / "checkpoints"
    cases = [
        ("last.pt", lambda dst: shutil.copy(other / "last.pt", dst), "optim.lr"),
        ("best.pt", lambda dst: shutil.copy(other / "best.pt", dst), "optim.lr"),
        ("last.pt", lambda dst: _edited(run / "checkpoints" / "last.pt", dst, "trainer.seed", 7), "trainer.seed"),
        ("last.pt", lambda dst: _edited(run / "checkpoints" / "last.pt", dst, "model.hidden", [64]), "model.hidden"),
    ]
    own = {n: (run / "checkpoints" / n).read_bytes() for n in ("last.pt", "best.pt")}
    for name, make, key in cases:
        make(run / "checkpoints" / name)
        before = hashes(run)
        target = run if name == "last.pt" else run / "checkpoints" / name
        proc = mlprun_inprocess(f"resume={target}", "trainer.epochs=3", monkeypatch=monkeypatch, capsys=capsys)
        assert proc.returncode == 1, (name, key, proc.stderr)
        one_error_line(proc, str(run / "checkpoints" / name), f"was not trained in {run}", key)
        assert hashes(run) == before
        (run / "checkpoints" / name).write_bytes(own[name])
    # its own checkpoint, continued with settings a resume may change: accepted, twice
    for epochs in (2, 3):
        run_mlprun(f"resume={run}", f"trainer.epochs={epochs}", "trainer.threads=1", cwd=tmp_path, check=True)
        assert read_json(run / "results.json")["epochs_completed"] == epochs


def test_a_sweep_rerun_leaves_a_job_with_a_foreign_checkpoint_alone(made, tmp_path):
    sweep = copy(made, "sweep", tmp_path)
    job = next(j for j in job_dirs(sweep) if "optim.lr=0.001" in j.name)
    shutil.copy(made / "other" / "checkpoints" / "last.pt", job / "checkpoints" / "last.pt")
    set_status(job, "interrupted")
    before = hashes(job)
    proc = run_mlprun("-m", *DIGITS, *GRID, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in text, text[-2000:]
    assert f"job {job.name} refused: " in text and "was not trained in" in text
    assert "1 job(s) refused in this sweep" in text
    assert hashes(job) == before


# ----------------------------------------------------------------- 8. signals at start-up


def _caught(pid: int) -> bool:
    """Whether the process handles SIGINT and SIGTERM itself yet (Linux: /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:")), 16)
    return all(mask & (1 << (s - 1)) for s in (signal.SIGINT, signal.SIGTERM))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_start_up_stops_cleanly(tmp_path, sig):
    """At each moment of start-up (mlprun's handlers installed, torch still loading; the run
    folder made; the first line printed): exit 130, one line, no traceback, and either no folder
    or a results.json that says interrupted plus the command that continues the run."""
    moments = {
        "handlers": lambda p, d, out: _caught(p.pid),
        "folder": lambda p, d, out: (d / ".hydra" / "config.yaml").is_file(),
        "first line": lambda p, d, out: out.stat().st_size > 0,
    }
    env = mlprun_env()
    continued = False
    for moment, ready in moments.items():
        run_dir = tmp_path / moment.replace(" ", "_")
        out = tmp_path / f"{run_dir.name}.out"
        with open(out, "w") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlprunner", *DIGITS, "trainer.epochs=3", f"hydra.run.dir={run_dir}"],
                cwd=tmp_path,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 120
            while not ready(proc, run_dir, out) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, f"{moment}: the run ended before the signal\n{out.read_text()}"
            proc.send_signal(sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = out.read_text()
        assert proc.returncode == 130, (moment, text[-2000:])
        assert "Traceback" not in text, text
        errors = [ln for ln in text.splitlines() if "error:" in ln]
        assert len(errors) == 1, (moment, text)
        if not run_dir.exists():
            assert "nothing was written" in errors[0], (moment, text)
            continue
        res = read_json(run_dir / "results.json")
        assert res["status"] == "interrupted", (moment, res)
        if not (run_dir / "checkpoints" / "last.pt").is_file():  # names no checkpoint it does not have
            assert "no checkpoint yet" in errors[0] and "after epoch 0" not in errors[0], errors[0]
        hint = f"mlprun resume={run_dir}"
        assert hint in errors[0], (moment, errors[0])
        if not continued:  # the command it names continues the run to the end
            run_mlprun(f"resume={run_dir}", cwd=tmp_path, check=True)
            assert read_json(run_dir / "results.json")["status"] == "completed"
            continued = True
    assert continued, "no moment found a run folder"


def test_a_signal_during_the_last_epoch_stops_the_run_before_its_test(tmp_path):
    """SIGTERM as the last epoch ends (its validation, its checkpoint): training is done, but
    the run stops before the test evaluation and plots (exit 130, interrupted); resume= then
    finishes it without training. (It used to be dropped: the run went on to exit 0.)"""
    run_dir = tmp_path / "run"
    args = [*DIGITS, "trainer.epochs=3", "eval.test=true", f"hydra.run.dir={run_dir}"]
    rc, out = signalled_mlprun(args, tmp_path, lambda seen: "epoch 3/3" in seen)
    assert rc == 130, out[-3000:]
    (line,) = [ln for ln in out.splitlines() if ln.startswith("mlprun: error:")]
    assert "stopped by SIGTERM after training" in line and "last checkpoint after epoch 3" in line, line
    assert read_json(run_dir / "results.json")["status"] == "interrupted"
    resumed = run_mlprun(f"resume={run_dir}", cwd=tmp_path, check=True)
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and res["epochs_completed"] == 3 and len(res["history"]) == 3
    assert res["test"]["error"] is not None and "epoch 1/" not in resumed.stdout


def test_a_second_signal_while_mlprun_exits_keeps_exit_130(tmp_path):
    """SIGTERM, then another 0.3 s later while mlprun winds down after saying it stopped: still
    exit 130 (Python's finalisation put the default handlers back: it was killed, 143)."""
    run_dir = tmp_path / "run"
    args = [*DIGITS, "trainer.epochs=300", f"hydra.run.dir={run_dir}"]
    rc, out = signalled_mlprun(args, tmp_path, lambda seen: "epoch 2/" in seen, times=2)
    assert rc == 130, (rc, out[-3000:])
    assert read_json(run_dir / "results.json")["status"] == "interrupted"


def test_a_runs_own_csv_log_name_is_its_file_too(tmp_path):
    """logger.csv.filename=my_log.csv: that file is the run's (in its saved config), so an output
    of mlprun-eval/-predict never goes over it; another new file in the folder is allowed."""
    from mlprunner.errors import ConfigError
    from mlprunner.runs import check_output

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("logger:\n  csv:\n    filename: my_log.csv\n")
    (run / "my_log.csv").write_text("epoch\n1\n")
    with pytest.raises(ConfigError, match="never writes over"):
        check_output(run / "my_log.csv", "--csv", force=True)
    check_output(run / "predictions.csv", "--csv", force=False)
    # a name in a sub-folder of the run (logger.csv.filename=logs/m.csv) is the run's too
    (run / ".hydra" / "config.yaml").write_text("logger:\n  csv:\n    filename: logs/m.csv\n")
    with pytest.raises(ConfigError, match="never writes over"):
        check_output(run / "logs" / "m.csv", "--csv", force=True)
    check_output(run / "logs" / "other.csv", "--csv", force=False)
