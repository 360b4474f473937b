"""Resume: exact continuation after SIGKILL, clean SIGTERM/Ctrl-C, refusal of bad checkpoints.

Every run here is a real `python -m mlprunner` subprocess on CPU (digits, a 64-32-10 MLP with
dropout, Adam, cosine schedule, trainer.deterministic=true, one thread). The uninterrupted
reference run starts once per module, in the background, and is compared bitwise with runs that
were killed and resumed. MLPRUN_TEST_SLOW_CHECKPOINT=<s> (see checkpoint.save_checkpoint) makes a
checkpoint write pause half-way, so a test can kill the process in the middle of one.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import QUICK, mlprun_env, read_json, run_mlprun, scalars
from mlprunner.checkpoint import load_checkpoint

EPOCHS = 8
JOB = [
    "dataset=digits",
    "model=mlp",
    "model.hidden=[32]",
    "model.dropout=0.1",
    "scheduler=cosine",
    f"scheduler.T_max={EPOCHS}",  # given, not set from trainer.epochs: a resume may train longer
    "trainer.batch_size=16",
    "trainer.log_every_n_steps=10",
    f"trainer.epochs={EPOCHS}",
    "trainer.deterministic=true",
    "trainer.threads=1",
    "trainer.device=cpu",
    "trainer.early_stopping.enabled=true",
    "trainer.early_stopping.patience=100",
    *QUICK,
]
SLOW = "MLPRUN_TEST_SLOW_CHECKPOINT"


# --------------------------------------------------------------------------- helpers


class Proc:
    """A background `python -m mlprunner ...` with its output in files (no pipe can fill up)."""

    def __init__(self, args, cwd: Path, env: dict | None = None, name: str = "p"):
        self.out = cwd / f"{name}.{time.time_ns()}.out"
        self.err = self.out.with_suffix(".err")
        full_env = mlprun_env(env)
        if not (env or {}).get(SLOW):
            full_env.pop(SLOW, None)
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.p = subprocess.Popen(
                [sys.executable, "-m", "mlprunner", *args], cwd=cwd, env=full_env, stdout=out, stderr=err
            )

    def wait(self, timeout: float = 300) -> int:
        return self.p.wait(timeout)

    def running(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(60)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()


def wait_for(predicate, proc: Proc, timeout: float = 240, every: float = 0.005) -> bool:
    """Poll until predicate() holds (True) or the process has exited (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if not proc.running():
            return bool(predicate())
        time.sleep(every)
    raise AssertionError("timed out waiting; stderr:\n" + proc.stderr[-2000:])


def temps(run_dir: Path, name: str = "last.pt") -> list[Path]:
    return list((run_dir / "checkpoints").glob(f".{name}.*.tmp"))


def mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def assert_same_tensors(a, b, where: str) -> None:
    """torch.equal on every tensor of two nested state dicts (same keys, same plain values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def without_times(history: list) -> list:
    return [{k: v for k, v in rec.items() if k != "time_s"} for rec in history]


def raw_scalars(log_dir: Path, tag: str) -> tuple[list, int]:
    """(step, value) of `tag` from the raw event files, applying the purge markers by hand.

    Returns the surviving points and how many raw points the markers purged: an independent check
    that each resumed writer wrote its SessionLog START purge marker at the resumed step.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    points, purged = [], 0
    files = sorted(log_dir.glob("events.out.tfevents.*"), key=lambda p: (int(p.name.split(".")[3]), p.name))
    for f in files:
        for ev in EventFileLoader(str(f)).Load():
            if ev.HasField("session_log") and ev.session_log.status == SessionLog.START:
                kept = [(s, v) for s, v in points if s < ev.step]
                purged += len(points) - len(kept)
                points = kept
            if ev.HasField("summary"):
                for v in ev.summary.value:
                    if v.tag == tag:
                        points.append((ev.step, v.simple_value))
    return points, purged


def assert_matches_reference(run_dir: Path, ref: Path, epochs: int = EPOCHS) -> dict:
    """Bitwise-equal weights (last.pt and best.pt), equal optimizer state and equal metrics."""
    for name in ("last.pt", "best.pt"):
        mine, theirs = load_checkpoint(run_dir / "checkpoints" / name), load_checkpoint(ref / "checkpoints" / name)
        assert mine["epoch"] == theirs["epoch"] and mine["step"] == theirs["step"], name
        assert_same_tensors(mine["model"], theirs["model"], f"{name}:model")
        assert_same_tensors(mine["optimizer"], theirs["optimizer"], f"{name}:optimizer")
        assert_same_tensors(mine["scheduler"], theirs["scheduler"], f"{name}:scheduler")
        assert_same_tensors(mine["rng"], theirs["rng"], f"{name}:rng")
    res, ref_res = read_json(run_dir / "results.json"), read_json(ref / "results.json")
    assert res["status"] == "completed" and res["epochs_completed"] == epochs
    assert res["best"] == ref_res["best"]
    assert res["last"] == ref_res["last"]
    assert without_times(res["history"]) == without_times(ref_res["history"])
    # TensorBoard: one point per epoch / logged step, the same values as the uninterrupted run
    tb, ref_tb = scalars(run_dir / "tensorboard"), scalars(ref / "tensorboard")
    assert [s for s, _ in tb["Error/val"]] == list(range(1, epochs + 1))
    assert tb["Error/val"] == ref_tb["Error/val"]
    assert tb["Loss/val"] == ref_tb["Loss/val"]
    steps, ref_steps = tb, ref_tb  # step-level tags live in the run's one TensorBoard folder
    got = [s for s, _ in steps["Loss/train_step"]]
    assert got == sorted(set(got)), "duplicated or out-of-order step points"
    assert steps["Loss/train_step"] == ref_steps["Loss/train_step"]
    return res


class Reference:
    """The uninterrupted run, started in the background when the module's first test needs it."""

    def __init__(self, folder: Path):
        self.dir = folder / "ref"
        self.proc = Proc([*JOB, f"hydra.run.dir={self.dir}"], cwd=folder, name="ref")
        self._done = False

    def done(self) -> Path:
        if not self._done:
            rc = self.proc.wait(600)
            assert rc == 0, self.proc.stderr[-3000:]
            self._done = True
        return self.dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return Reference(tmp_path_factory.mktemp("reference"))


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bitwise_exact(reference, tmp_path):
    seed = int(os.environ.get("MLPRUN_TEST_SEED") or time.time_ns() % 10**9)
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    story = [f"seed {seed}"]

    def why():
        return "; ".join(story)

    # 1. killed while writing its very first checkpoint: no last.pt may appear
    p = Proc([*JOB, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env={SLOW: "1.5"})
    assert wait_for(lambda: temps(run_dir), p), p.stderr
    p.kill()
    assert not last.exists(), "a killed first write left a last.pt"
    story.append("killed in the first last.pt write")

    # 2.-5. resumed and killed again: at random moments and inside a later checkpoint write
    for trial, mode in enumerate(["random", "in-write", "random", "random"], start=2):
        before, stale = mtime(last), set(temps(run_dir))  # an earlier kill may have left a temp file
        p = Proc([f"resume={run_dir}"], cwd=tmp_path, env={SLOW: "1.5"} if mode == "in-write" else None)
        if mode == "in-write":
            if not wait_for(lambda b=before, st=stale: mtime(last) == b and set(temps(run_dir)) - st, p):
                story.append(f"trial {trial} exited before writing (rc {p.wait()})")
                break
            snapshot = last.read_bytes()
            assert set(temps(run_dir)) - stale, "the write finished before the kill (machine too slow?)"
            p.kill()
            assert set(temps(run_dir)) - stale, "expected the half-written temp file"
            assert last.read_bytes() == snapshot, "last.pt changed although the write was killed"
            load_checkpoint(last)  # still a complete, loadable checkpoint
        else:
            if not wait_for(lambda b=before: mtime(last) != b, p):  # this attempt's first checkpoint
                story.append(f"trial {trial} exited before writing (rc {p.wait()})")
                break
            # the kill lands anywhere in the next 1.5 epochs (a step, validation, a write), as
            # measured by this attempt's own pace, so a faster or slower machine changes nothing
            first = mtime(last)
            wait_for(lambda f=first: mtime(last) != f, p)
            epoch_s = max((mtime(last) - first) / 1e9, 0.01)
            delay = rng.uniform(0.0, 1.5 * epoch_s)
            time.sleep(delay)
            if not p.running():
                story.append(f"trial {trial} finished before its kill")
                assert p.wait() == 0, p.stderr
                break
            p.kill()
            mode = f"random after {delay:.2f}s"
        epoch = load_checkpoint(last)["epoch"] if last.exists() else 0
        story.append(f"trial {trial} killed ({mode}) with last.pt at epoch {epoch}")

    # the final resume runs to the end (or finds the run already complete)
    done = run_mlprun(f"resume={run_dir}", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, why() + "\n" + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not temps(run_dir) and not temps(run_dir, "best.pt"), "stale temp files left behind"
    assert not (tmp_path / "runs").exists(), "resume made a new run folder"
    try:
        res = assert_matches_reference(run_dir, reference.done())
    except AssertionError as exc:
        raise AssertionError(f"{exc} [{why()}]") from None
    assert len(res.get("resumed", [])) >= 2, why()
    # the purge markers in the raw event files account for every overlapping point
    points, _ = raw_scalars(run_dir / "tensorboard", "Error/val")
    assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), why()
    print(why())


# --------------------------------------------------------------------------- SIGTERM / Ctrl-C


def test_sigterm_then_double_ctrl_c_then_resume_is_exact(reference, tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"

    # SIGTERM (a scheduler's preemption): stop after the current step, exit 130, resumable
    p = Proc([*JOB, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert wait_for(last.exists, p), p.stderr
    p.p.send_signal(signal.SIGTERM)
    assert p.wait(120) == 130, p.stderr[-3000:]
    res = read_json(run_dir / "results.json")
    assert res["status"] == "interrupted" and "SIGTERM" in res["reason"]
    err = p.stderr
    assert "Traceback" not in err
    error_lines = [ln for ln in err.splitlines() if ln.startswith("mlprun: error:")]
    assert len(error_lines) == 1 and f"continue with: mlprun resume={run_dir}" in error_lines[0], err
    ckpt = load_checkpoint(last)
    assert 1 <= ckpt["epoch"] < EPOCHS and not temps(run_dir)

    # resumed; Ctrl-C, then Ctrl-C again while last.pt is being written: the write is abandoned
    before = mtime(last)
    p = Proc([f"resume={run_dir}"], cwd=tmp_path, env={SLOW: "1.5"})
    assert wait_for(lambda: mtime(last) == before and temps(run_dir), p), p.stderr  # inside its write
    snapshot = last.read_bytes()
    p.p.send_signal(signal.SIGINT)
    time.sleep(0.1)
    p.p.send_signal(signal.SIGINT)  # "quit at once": lands inside the paused write
    assert p.wait(60) == 130, p.stderr[-3000:]
    assert last.read_bytes() == snapshot and not temps(run_dir), "the abandoned write touched last.pt"
    epoch = load_checkpoint(last)["epoch"]
    res = read_json(run_dir / "results.json")
    assert res["status"] == "interrupted" and "second" in res["reason"]
    assert "Traceback" not in p.stderr and f"mlprun resume={run_dir}" in p.stderr
    assert f"after epoch {ckpt['epoch']}" in p.stdout

    # the last resume completes the run: identical to the uninterrupted one
    done = run_mlprun(f"resume={run_dir}", cwd=tmp_path, check=True)
    assert f"after epoch {epoch}" in done.stdout
    res = assert_matches_reference(run_dir, reference.done())
    assert [r["from_epoch"] for r in res["resumed"]] == [ckpt["epoch"], epoch]
    assert not (tmp_path / "runs").exists(), "resume made a new run folder"


# --------------------------------------------------------------------------- completed runs


def test_resume_completed_run_is_a_no_op_unless_epochs_raised(reference, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "done"
    shutil.copytree(reference.done(), run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    snapshot = last.read_bytes()

    code, out, _ = cli([f"resume={run_dir}"], capsys, monkeypatch)
    assert code == 0 and f"already completed all {EPOCHS} epochs" in out and "epoch 1/" not in out
    assert last.read_bytes() == snapshot
    assert read_json(run_dir / "results.json") == read_json(reference.done() / "results.json")

    # what a killed process's atomic writes left (any file of the run), and a file of the user's
    left = [run_dir / ".metrics.csv.ab12cd34.tmp", run_dir / ".learning_curves.png.k2j3_4g5.tmp"]
    for path in [*left, run_dir / ".notes.tmp"]:
        path.write_text("half")
    more = run_mlprun(f"resume={run_dir}", f"trainer.epochs={EPOCHS + 2}", cwd=tmp_path, check=True)
    assert not any(p.exists() for p in left) and (run_dir / ".notes.tmp").read_text() == "half"
    assert "Traceback" not in more.stderr
    # said once, on the console and in the run's log (restore() said it a second time)
    said = f"resuming done from last.pt after epoch {EPOCHS} of {EPOCHS + 2} (step "
    assert more.stdout.count("resuming") == 1 and said in more.stdout, more.stdout
    assert said in (run_dir / "mlprun.log").read_text()
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and res["epochs_completed"] == EPOCHS + 2
    assert res["resumed"] == [
        {**res["resumed"][0], "from_epoch": EPOCHS, "overrides": [f"trainer.epochs={EPOCHS + 2}"]}
    ]
    ref = read_json(reference.done() / "results.json")
    assert without_times(res["history"][:EPOCHS]) == without_times(ref["history"])
    assert load_checkpoint(last)["epoch"] == EPOCHS + 2
    tb = scalars(run_dir / "tensorboard")
    assert [s for s, _ in tb["Error/val"]] == list(range(1, EPOCHS + 3))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["done"], "a new run folder appeared"


# --------------------------------------------------------------------------- refusals (in-process)


def cli(args, capsys, monkeypatch) -> tuple[int, str, str]:
    """Call mlprun's entry point in this process (only for commands that refuse before training)."""
    from mlprunner.cli import main

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.delenv("MLPRUN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


class Evil:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fake_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "victim"
    (run_dir / "checkpoints").mkdir(parents=True)
    return run_dir


def _write_case(kind: str, path: Path, ref_last: Path, marker: Path) -> None:
    good = ref_last.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "corrupted":
        data = bytearray(good)
        for i in range(64, min(len(data), 4096)):
            data[i] ^= 0xA5
        path.write_bytes(bytes(data))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("epoch: 3\nthis is not a checkpoint\n")
    elif kind == "tensor":
        torch.save(torch.ones(3), path)
    elif kind == "foreign-dict":
        torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, path)
    elif kind == "pickle-os-system":
        path.write_bytes(pickle.dumps({"model": Evil(marker)}, protocol=2))
    elif kind == "torch-save-os-system":
        torch.save({"model": Evil(marker), "epoch": 1}, path)
    elif kind == "config-target-os-system":
        state = torch.load(ref_last, weights_only=True)
        state["config"]["model"]["evil"] = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
        torch.save(state, path)
    elif kind == "config-model-target":
        state = torch.load(ref_last, weights_only=True)
        state["config"]["model"]["_target_"] = "subprocess.getoutput"
        torch.save(state, path)
    else:
        raise ValueError(kind)


BAD = [
    "truncated",
    "corrupted",
    "empty",
    "text",
    "tensor",
    "foreign-dict",
    "pickle-os-system",
    "torch-save-os-system",
    "config-target-os-system",
    "config-model-target",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_checkpoint_is_refused_in_one_line(kind, reference, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "PWNED"
    run_dir = _fake_run(tmp_path)
    ckpt = run_dir / "checkpoints" / "last.pt"
    _write_case(kind, ckpt, reference.done() / "checkpoints" / "last.pt", marker)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for arg in (run_dir, ckpt):
        code, out, err = cli([f"resume={arg}"], capsys, monkeypatch)
        assert code == 1, (kind, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mlprun: error:") and str(ckpt) in lines[0], err
        assert "Traceback" not in out + err
    assert not marker.exists(), "the malicious payload ran"
    if "os-system" in kind:
        assert "could run code" in err or "does not instantiate" in err, err
    # nothing was written into the run folder
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_malicious_checkpoint_payload_never_runs_in_a_real_process(reference, tmp_path):
    marker = tmp_path / "PWNED"
    run_dir = _fake_run(tmp_path)
    _write_case(
        "torch-save-os-system",
        run_dir / "checkpoints" / "last.pt",
        reference.done() / "checkpoints" / "last.pt",
        marker,
    )
    proc = run_mlprun(f"resume={run_dir}", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "refusing to load" in proc.stderr and "posix.system" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "override",
    [
        "model.hidden=[64]",
        "dataset.name=xor",
        "optim=sgd",
        "optim._target_=torch.optim.SGD",
        "optim.lr=0.1",
        "trainer.batch_size=32",
        "~trainer.epochs",
    ],
)
def test_unsafe_override_is_refused(override, reference, capsys, monkeypatch):
    run_dir = reference.done()
    key = override.lstrip("~").partition("=")[0]
    code, out, err = cli([f"resume={run_dir}", override], capsys, monkeypatch)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "trainer.epochs" in lines[0], err
    assert "Traceback" not in out + err


def test_misspelt_safe_override_and_missing_targets(reference, tmp_path, capsys, monkeypatch):
    code, _, err = cli([f"resume={reference.done()}", "trainer.early_stopping.patiense=3"], capsys, monkeypatch)
    assert code == 2 and "patiense" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli([f"resume={tmp_path / 'nope'}"], capsys, monkeypatch)
    assert code == 2 and "no such run directory" in err
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["resume=latest"], capsys, monkeypatch)
    assert code == 2 and "no run to resume" in err
    stray = tmp_path / "stray.pt"
    shutil.copy(reference.done() / "checkpoints" / "last.pt", stray)
    code, _, err = cli([f"resume={stray}"], capsys, monkeypatch)
    assert code == 2 and "checkpoints/" in err


def test_resume_latest_picks_the_newest_run(reference, tmp_path, capsys, monkeypatch):
    old, new = tmp_path / "runs" / "2026-01-01" / "10-00-00-1", tmp_path / "runs" / "2026-01-02" / "09-00-00-2"
    for folder in (new, old):  # `old` is copied last: newest by creation, but not by checkpoint time
        shutil.copytree(reference.done(), folder)
    os.utime(old / "checkpoints" / "last.pt", (1_000_000_000, 1_000_000_000))
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(["resume=latest"], capsys, monkeypatch)
    assert code == 0 and f"run {new.relative_to(tmp_path)} already completed" in out  # as typed from here


def test_run_in_use_is_refused(reference, tmp_path, capsys, monkeypatch):
    import fcntl

    run_dir = tmp_path / "busy"
    shutil.copytree(reference.done(), run_dir)
    with open(run_dir / ".mlprun.lock", "w") as fh:  # as a live mlprun process holds it
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = cli([f"resume={run_dir}", f"trainer.epochs={EPOCHS + 1}"], capsys, monkeypatch)
    assert code == 1 and "in use by another running mlprun process" in err
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == EPOCHS


def test_resume_refuses_what_would_overwrite_or_bend_the_run(tmp_path, capsys, monkeypatch):
    """Refused in one line (exit 2) with nothing changed: an earlier checkpoint of a run that
    trained further, another early-stopping monitor, a config group, a longer run when the
    scheduler's length came from trainer.epochs. A resume that trains drops the earlier test
    result (it scored a model since trained further)."""
    base = ["dataset=digits", "model=mlp", "model.hidden=[16]", "trainer.threads=1", "logger=none", *QUICK]
    run_dir = tmp_path / "run"
    run_mlprun(*base, "trainer.epochs=2", "eval.test=true", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True)
    assert read_json(run_dir / "results.json")["test"]["epoch"] <= 2
    epoch2 = run_dir / "checkpoints" / "epoch2.pt"
    shutil.copy(run_dir / "checkpoints" / "last.pt", epoch2)
    run_mlprun(f"resume={run_dir}", "trainer.epochs=3", "eval.test=false", cwd=tmp_path, check=True)
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and res["epochs_completed"] == 3 and "test" not in res

    other = tmp_path / "onecycle"
    run_mlprun(*base, "scheduler=onecycle", "trainer.epochs=1", f"hydra.run.dir={other}", cwd=tmp_path, check=True)
    cases = [
        ([f"resume={epoch2}"], "would overwrite epoch 3"),
        ([f"resume={run_dir}", "trainer.epochs=4", "trainer.early_stopping.monitor=val/loss"], "chosen by monitor"),
        ([f"resume={run_dir}", "optim=sgd"], "config group optim cannot change"),
        ([f"resume={other}", "trainer.epochs=2"], "scheduler.total_steps set from trainer.epochs=1"),
    ]
    for args, said in cases:
        before = {p: p.read_bytes() for p in [*run_dir.rglob("*.pt"), *other.rglob("*.pt")]}
        code, out, err = cli(args, capsys, monkeypatch)
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, (args, out, err)
        assert {p: p.read_bytes() for p in before} == before, args

    # resume=latest skips a run that trained epochs but keeps no last.pt (debug=fast_dev_run)
    kept = tmp_path / "elsewhere" / "runs" / "2026-01-01" / "10-00-00-1"
    shutil.copytree(run_dir, kept)
    shutil.rmtree(kept / "checkpoints")
    monkeypatch.chdir(kept.parents[2])
    code, _, err = cli(["resume=latest"], capsys, monkeypatch)
    assert code == 2 and "no run to resume" in err, err
    # a sweep's folder is not a run's: no `resume=` hint that cannot work
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    code, _, err = cli([*base, f"hydra.run.dir={sweep}"], capsys, monkeypatch)
    assert code == 2 and "already holds a sweep" in err and "resume=" not in err, err
    assert sorted(p.name for p in sweep.iterdir()) == ["multirun.yaml"]


def test_a_run_resumed_after_it_finished_keeps_one_model_graph(tmp_path):
    """TensorBoard warns of (and shows one of) several graphs in a run: the graph is logged at a
    run's first finish only."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    run_dir = tmp_path / "run"
    args = ["dataset=digits", "model=mlp", "model.hidden=[16]", "trainer.threads=1", "trainer.progress=plain"]
    run_mlprun(*args, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True)
    run_mlprun(f"resume={run_dir}", "trainer.epochs=2", cwd=tmp_path, check=True)
    events = [
        ev for f in (run_dir / "tensorboard").glob("events.out.tfevents.*") for ev in EventFileLoader(str(f)).Load()
    ]
    assert sum(ev.HasField("graph_def") for ev in events) == 1
    assert read_json(run_dir / "results.json")["epochs_completed"] == 2


def test_a_class_named_by_its_defining_module_resumes(tmp_path):
    """optim._target_=torch.optim.adam.Adam trains, so it must resume too (the checkpoint's
    allow-list compared the module text and refused what validation had accepted)."""
    run_dir = tmp_path / "run"
    args = ["dataset=digits", "model.hidden=[16]", "trainer.threads=1", "trainer.progress=plain"]
    targets = ["optim._target_=torch.optim.adam.Adam", "loss._target_=torch.nn.modules.loss.CrossEntropyLoss"]
    run_mlprun(*args, *targets, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True)
    more = run_mlprun(f"resume={run_dir}", "trainer.epochs=2", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-2000:]
    assert read_json(run_dir / "results.json")["epochs_completed"] == 2


def test_a_run_saved_before_keys_were_added_resumes_and_evaluates(tmp_path):
    """A run whose checkpoints and .hydra/config.yaml predate trainer.swa.anneal_strategy and
    trainer.tensorboard.images (keys of mlprun's own groups added since) resumes and evaluates
    with those keys at their defaults; resume refused it ('is required and cannot be deleted')."""
    import yaml

    run_dir = tmp_path / "old"
    args = ["dataset=digits", "model.hidden=[16]", "trainer.threads=1", "trainer.progress=plain"]
    run_mlprun(*args, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True)

    def strip(config: dict) -> dict:
        del config["trainer"]["swa"]["anneal_strategy"]
        del config["trainer"]["tensorboard"]["images"]
        return config

    for path in (run_dir / "checkpoints").glob("*.pt"):
        ckpt = torch.load(path, weights_only=True)
        ckpt["config"] = strip(ckpt["config"])
        torch.save(ckpt, path)
    saved = run_dir / ".hydra" / "config.yaml"
    saved.write_text(yaml.safe_dump(strip(yaml.safe_load(saved.read_text()))))

    more = run_mlprun(f"resume={run_dir}", "trainer.epochs=2", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-2000:]
    assert read_json(run_dir / "results.json")["epochs_completed"] == 2
    evaluated = subprocess.run(
        [sys.executable, "-m", "mlprunner.evaluate", str(run_dir), "--split", "val"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr
