"""Shared helpers: run `mlprun` for real in a subprocess, find MNIST, read TensorBoard files."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig

from mlprunner.config import register_resolvers

REPO = Path(__file__).resolve().parents[1]

# Several tests run two or more training processes at once (a reference run beside a killed
# one, parallel sweep jobs). With OpenMP's default spin-waiting, threads of one process burn
# the cores the other needs and small jobs get 5-10x slower; passive waiting avoids that.
# Subprocesses inherit it. (Set before torch is imported by any test module.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def mnist_root() -> Path | None:
    """The MLPRUN_DATA folder when it holds MNIST in torchvision's layout, else None."""
    root = os.environ.get("MLPRUN_DATA")
    if root and (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        return Path(root)
    return None


requires_mnist = pytest.mark.skipif(mnist_root() is None, reason="MLPRUN_DATA does not hold MNIST")


def mlprun_env(extra: dict | None = None) -> dict:
    """The environment of an mlprun subprocess: this one's, unbuffered output, without an
    inherited MLPRUN_DEBUG or HYDRA_FULL_ERROR (an in-process mlprun earlier in the test sets the
    latter; tracebacks would change the one-line errors), MLPRUN_COMMAND (its command, for
    provenance) or COLUMNS/LINES, plus `extra` (which may set them)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLPRUN_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("MLPRUN_COMMAND", None)
    # the caller's terminal size must not shape the output a test reads (rich honours COLUMNS)
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return {**env, **(extra or {})}


def run_mlprun(
    *args: str, cwd: Path, env: dict | None = None, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess:
    """Run `python -m mlprunner ARGS` in `cwd`; returns the CompletedProcess (text output)."""
    full_env = mlprun_env(env)
    proc = subprocess.run(
        [sys.executable, "-m", "mlprunner", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mlprun {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


def signalled_mlprun(
    args: list[str], cwd: Path, when, sig=signal.SIGTERM, times: int = 1, group: bool = False, timeout: float = 240
) -> tuple[int, str]:
    """Run `python -m mlprunner ARGS` in its own process group; once `when(output so far)` holds
    (asked at each line it prints), send `sig` `times` times, 0.3 s apart, to mlprun alone (`kill`,
    `timeout`) or with `group` to it and its workers (Ctrl-C in a terminal). (exit code, output)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlprunner", *args],
        cwd=cwd,
        env=mlprun_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen, deadline = "", time.monotonic() + timeout
    try:
        for line in proc.stdout:
            seen += line
            if when(seen) or time.monotonic() > deadline:
                break
        for i in range(times):
            time.sleep(0.3 if i else 0)
            if proc.poll() is None:
                os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        seen += proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, seen


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} read with tensorboard's EventAccumulator (honours purge)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# Needed by the image datasets, whose required keys are `???` in their config.
IMAGE_KEYS = {"image_csv": ["dataset.csv=/tmp/x/labels.csv"], "image_folder": ["dataset.image_dir=/tmp/x"]}


@pytest.fixture(scope="module")
def compose_cfg():
    """compose(*overrides): mlprun's config composed by Hydra's compose API."""
    register_resolvers()
    with initialize_config_module("mlprunner.configs", version_base="1.3"):

        def _compose(*overrides: str):
            return compose(config_name="config", overrides=list(overrides))

        yield _compose


# Fast, quiet settings for real training runs in tests.
QUICK = ["trainer.progress=plain", "trainer.tensorboard.graph=false"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh folder to run mlprun in (runs/ is created inside it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_main_inprocess(args, env, monkeypatch, capsys):
    """`mlprun ARGS` in this process (cli.main), env set for it: (exit code, stdout, stderr)."""
    from mlprunner import cli, messages

    monkeypatch.setattr(sys, "argv", ["mlprun"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # main() sets it; restored after the test
    monkeypatch.setenv("MLPRUN_COMMAND", "")  # main() sets it (provenance); removed after the test
    monkeypatch.setattr(messages, "_USER_FULL_ERROR", None)
    monkeypatch.delenv("MLPRUN_DEBUG", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # Hydra configures logging in-process; give the loggers back as they were afterwards.
    loggers = [logging.getLogger(), logging.getLogger("mlprunner")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        with pytest.raises(SystemExit) as exited:
            cli.main(list(args))
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved):
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
        # Hydra leaves its last config set (a process runs one command); a later test that calls
        # run() directly would read that command's group choices (sessions.hparams_of)
        HydraConfig.instance().cfg = None
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def mlprun_inprocess(*args: str, monkeypatch, capsys, env: dict | None = None) -> subprocess.CompletedProcess:
    """run_main_inprocess as a CompletedProcess (returncode, stdout, stderr), a drop-in for
    run_mlprun's result where the subprocess itself is not what a test checks (its start-up costs
    seconds: torch, Hydra and the plugins imported again)."""
    code, out, err = run_main_inprocess(args, env or {}, monkeypatch, capsys)
    return subprocess.CompletedProcess(["mlprun", *args], code, out, err)


def tool_inprocess(prog: str, *args: str, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """`mlprun-eval` / `mlprun-predict` ARGS in this process (cli.eval_main / cli.predict_main)."""
    from mlprunner import cli, messages

    entry = {"mlprun-eval": cli.eval_main, "mlprun-predict": cli.predict_main}[prog]
    monkeypatch.setattr(messages, "_USER_FULL_ERROR", None)
    monkeypatch.delenv("MLPRUN_DEBUG", raising=False)
    code = 0
    try:
        entry(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return subprocess.CompletedProcess([prog, *args], code, out.out, out.err)


@pytest.fixture
def mlprun_here(tmp_path, monkeypatch, capsys):
    """mlprun_here(*args, env=None): mlprun's entry point in this process with tmp_path as the
    working folder (mlprun_inprocess). The test's later subprocesses would inherit its
    HYDRA_FULL_ERROR=1 (tracebacks on error); Hydra must not be initialised (compose_cfg)."""
    monkeypatch.chdir(tmp_path)

    def call(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return mlprun_inprocess(*args, monkeypatch=monkeypatch, capsys=capsys, env=env)

    return call


def run_mlprun_together(*arg_lists: list[str], cwd: Path, timeout: float = 600, check: bool = False) -> list:
    """run_mlprun for independent commands started at once (their start-up and training share the
    cores instead of waiting for each other); a CompletedProcess per command, in order. Only for
    runs whose results do not depend on their pace."""
    env = mlprun_env()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mlprunner", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in arg_lists
    ]
    done = []
    try:
        for args, proc in zip(arg_lists, procs):
            out, err = proc.communicate(timeout=timeout)
            done.append(
                subprocess.CompletedProcess([sys.executable, "-m", "mlprunner", *args], proc.returncode, out, err)
            )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if check:
        for result in done:
            if result.returncode != 0:
                raise AssertionError(
                    f"mlprun {' '.join(result.args[3:])} exited {result.returncode}\n"
                    f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
                )
    return done


def hparams_session_groups(log_dir: Path):
    """TensorBoard's HParams dashboard's answer for `log_dir` (its own backend, every status):
    the session groups, each with its sessions and metric values."""
    from tensorboard import context
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(log_dir))
    mux.Reload()
    tb = base_plugin.TBContext(
        logdir=str(log_dir), multiplexer=mux, data_provider=MultiplexerDataProvider(mux, str(log_dir))
    )
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=1000, allowed_statuses=list(api_pb2.Status.values())
    )
    return (
        list_session_groups.Handler(context.RequestContext(), backend_context.Context(tb), "", request)
        .run()
        .session_groups
    )
