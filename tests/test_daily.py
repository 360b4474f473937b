"""What users see every day (issue 15): TensorBoard's HParams table of a sweep read from
TensorBoard's own server, provenance, the terminal display, the reports."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import QUICK, mlprun_env, read_json, run_mlprun

DIGITS = ["dataset=digits", "model=mlp", "model.hidden=[16]", "trainer.epochs=2", *QUICK]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = 20):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class TensorBoardServer:
    """TensorBoard's own server on 127.0.0.1 over `logdir`, stopped on exit."""

    def __init__(self, logdir: Path):
        self.logdir, self.port = logdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir), "--host", "127.0.0.1"]
            + ["--port", str(self.port), "--reload_interval", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self

    def wait_for_runs(self, n: int, timeout: float = 90) -> list[str]:
        deadline, runs = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                runs = http(f"{self.url}/data/runs", timeout=5)
                if len(runs) >= n:
                    return runs
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"TensorBoard listed {runs} after {timeout}s, expected {n} runs")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.mark.slow
def test_tensorboard_server_shows_the_sweep_as_one_hparams_table(workdir):
    """A 2x2 sweep whose second key is not one of the keys every run logs: TensorBoard's own
    server lists 4 runs named by the swept values only, both keys with differs=true and 4
    sessions with their metrics (requests as TensorBoard's frontend sends them)."""
    sweep = workdir / "sweep"
    run_mlprun(
        "-m",
        *DIGITS,
        "optim=sgd_momentum,adam",
        "loss.label_smoothing=0,0.1",
        f"hydra.sweep.dir={sweep}",
        cwd=workdir,
        check=True,
    )
    with TensorBoardServer(sweep) as tb:
        runs = tb.wait_for_runs(4)
        assert sorted(runs) == sorted(
            f"tensorboard/optim={o},loss.label_smoothing={s}" for o in ("sgd_momentum", "adam") for s in ("0", "0.1")
        )
        experiment = http(f"{tb.url}/data/plugin/hparams/experiment", {"experimentName": ""})
        infos = {h["name"]: h for h in experiment["hparamInfos"]}
        assert infos["optim"]["differs"] is True
        assert sorted(infos["optim"]["domainDiscrete"]) == ["adam", "sgd_momentum"]  # option names
        assert infos["loss.label_smoothing"]["differs"] is True
        assert infos["loss.label_smoothing"]["type"] == "DATA_TYPE_FLOAT64"
        assert infos["dataset"]["differs"] is False and infos["model.hidden"]["differs"] is False
        # TensorBoard orders the hparams that differ first
        n_differ = sum(h["differs"] for h in experiment["hparamInfos"])
        assert all(h["differs"] for h in experiment["hparamInfos"][:n_differ])
        metric_tags = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"hparam/best_val_error", "Error/val"} <= metric_tags
        groups = http(
            f"{tb.url}/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "startIndex": 0,
                "sliceSize": 100,
                "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
                "colParams": [],
                "aggregationType": "AGGREGATION_AVG",
            },
        )["sessionGroups"]
    assert len(groups) == 4
    jobs = {read_json(d / "results.json")["tensorboard"].rpartition("/")[2]: d for d in sweep.glob("dataset=*")}
    for group in groups:
        assert len(group["sessions"]) == 1 and group["sessions"][0]["status"] == "STATUS_SUCCESS"
        res = read_json(jobs[group["name"].partition("/")[2]] / "results.json")
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert metrics["hparam/best_val_error"] == pytest.approx(res["best"]["val"]["error"], abs=1e-6)
        assert metrics["Error/val"] == pytest.approx(res["last"]["val"]["error"], abs=1e-6)
        optim = [o for o in res["overrides"] if o.startswith("optim=")][0].partition("=")[2]
        assert group["hparams"]["optim"] == optim
        assert group["hparams"]["loss.label_smoothing"] in (0.0, 0.1)
        assert group["hparams"]["trainer.epochs"] == 2


def test_single_run_is_one_tensorboard_run_with_step_and_epoch_tags(workdir, mlprun_here):
    """One run folder is one TensorBoard run: epoch tags (step = epoch) and step tags
    (step = global step) in `tensorboard/`, no `steps/` sub-folder; real booleans in HParams."""
    from conftest import scalars
    from test_train import hparams

    run_dir = workdir / "run"
    proc = mlprun_here(*DIGITS, "model.batchnorm=true", "trainer.log_every_n_steps=5", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tb = run_dir / "tensorboard"
    assert not (tb / "steps").exists()
    assert [p.name for p in tb.iterdir() if p.is_dir()] == []
    tags = scalars(tb)
    assert [s for s, _ in tags["Error/val"]] == [1, 2]
    steps = [s for s, _ in tags["Loss/train_step"]]
    res = read_json(run_dir / "results.json")
    assert steps == sorted(set(steps)) and steps[-1] == 2 * math.ceil(res["dataset"]["n_train"] / 100)
    hp = hparams(tb)
    assert hp["model.batchnorm"] is True  # a real boolean, not 1.0
    assert hp["model"] == "mlp" and hp["optim"] == "adam" and hp["dataset"] == "digits"


@pytest.mark.slow
def test_projector_shows_the_evaluated_models_features_of_test_samples(workdir, mlprun_here):
    """trainer.tensorboard.embedding=N (lecture notes 004's add_embedding), read back through
    TensorBoard's Projector: the first N test samples as the input of the last Linear layer of the
    model the test scored (best.pt), labels and predictions as metadata, the digits as the sprite.
    A resume replaces it (one embedding listed, the old step's folder gone); eval.test=false
    embeds validation samples instead, the test set untouched."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from mlprunner.evaluate import load_run, load_test_split

    run_dir = workdir / "run"
    args = [*DIGITS, "eval.test=true", "trainer.tensorboard.embedding=40", f"hydra.run.dir={run_dir}"]
    assert mlprun_here(*args).returncode == 0
    assert (run_dir / "tensorboard" / "00002" / "test" / "tensors.tsv").is_file()
    proc = mlprun_here(f"resume={run_dir}", "trainer.epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TensorBoard Projector: 40 test samples, 16 features" in proc.stdout
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir() if p.is_dir()) == ["00003"]

    loaded = load_run(str(run_dir), "best", device="cpu")
    _data, split = load_test_split(loaded)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(loaded.model)[:-1])(split.x[:40]).numpy()  # up to the output layer
        predicted = loaded.model(split.x[:40]).argmax(1).tolist()
    with TensorBoardServer(run_dir / "tensorboard") as tb:
        tb.wait_for_runs(1)
        deadline = time.monotonic() + 90
        while http(f"{tb.url}/data/plugin/projector/runs") != ["."]:
            assert time.monotonic() < deadline, "the Projector lists no run"
            time.sleep(0.5)
        (info,) = http(f"{tb.url}/data/plugin/projector/info?run=.")["embeddings"]
        assert info["tensorName"] == "test:00003" and info["tensorShape"] == [40, 16]
        query = f"run=.&name={info['tensorName']}"
        with urllib.request.urlopen(f"{tb.url}/data/plugin/projector/tensor?{query}") as resp:
            tensor = np.frombuffer(resp.read(), dtype=np.float32).reshape(40, 16)
        with urllib.request.urlopen(f"{tb.url}/data/plugin/projector/metadata?{query}") as resp:
            rows = [line.split("\t") for line in resp.read().decode().splitlines()]
        with urllib.request.urlopen(f"{tb.url}/data/plugin/projector/sprite_image?{query}") as resp:
            sprite = Image.open(io.BytesIO(resp.read()))
    assert np.abs(tensor - expected).max() <= 5e-5 + 1e-6  # written with 4 decimals
    y = split.y[:40].tolist()
    assert rows == [["label", "predicted", "correct"]] + [
        [str(t), str(p), "yes" if t == p else "no"] for t, p in zip(y, predicted)
    ]
    assert sprite.size == (7 * 8, 7 * 8)  # a square of 7 x 7 digits of 8 x 8 pixels

    val_run = workdir / "val"
    args = [*DIGITS, "eval.test=false", "trainer.tensorboard.embedding=1000", f"hydra.run.dir={val_run}"]
    proc = mlprun_here(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_val = read_json(val_run / "results.json")["dataset"]["n_val"]
    assert f"TensorBoard Projector: {n_val} val samples" in proc.stdout
    rows = (val_run / "tensorboard" / "00002" / "val" / "metadata.tsv").read_text().splitlines()
    assert len(rows) == 1 + n_val


def test_resume_truncates_what_the_stopped_process_logged(tmp_path):
    """truncate_events drops epoch tags after the epoch and step tags after the step, in place."""
    from torch.utils.tensorboard import SummaryWriter

    from conftest import scalars
    from mlprunner.tblog import truncate_events

    w = SummaryWriter(str(tmp_path))
    for epoch in (1, 2, 3):
        w.add_scalar("Error/val", 0.1 * epoch, epoch)
        for step in range(10 * epoch - 9, 10 * epoch + 1):
            w.add_scalar("Loss/train_step", float(step), step)
    w.close()
    assert truncate_events(tmp_path, epoch=2, step=20) == 1 + 10
    tags = scalars(tmp_path)
    assert [s for s, _ in tags["Error/val"]] == [1, 2]
    assert [s for s, _ in tags["Loss/train_step"]] == list(range(1, 21))
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------- provenance


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_provenance_in_results_and_tensorboard(workdir):
    """Launched inside a git work tree with an uncommitted change: versions, commit, dirty flag,
    host, device, command line in results.json, and the same as TensorBoard text."""
    import platform
    import socket

    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mlprunner.provenance import version

    git("init", "-q", cwd=workdir)
    (workdir / "notes.txt").write_text("one\n")
    git("add", "notes.txt", cwd=workdir)
    git("commit", "-q", "-m", "first", cwd=workdir)
    commit = git("rev-parse", "HEAD", cwd=workdir)
    (workdir / "notes.txt").write_text("two\n")  # an uncommitted change: dirty
    run_mlprun(*DIGITS, "trainer.epochs=1", "hydra.run.dir=run", cwd=workdir, check=True)
    prov = read_json(workdir / "run" / "results.json")["provenance"]
    assert prov["git"] == {"root": str(workdir.resolve()), "commit": commit, "dirty": True}
    assert prov["mlprun"] == version() and prov["torch"] == torch.__version__
    assert prov["python"] == platform.python_version() and prov["host"] == socket.gethostname()
    assert prov["device"] and "cores" in prov["device"]
    assert prov["command"].startswith("mlprun dataset=digits") and prov["command"].endswith("hydra.run.dir=run")
    acc = EventAccumulator(str(workdir / "run" / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("provenance/text_summary")[0].tensor_proto.string_val[0].decode()
    assert commit in text and torch.__version__ in text


def test_provenance_outside_git_and_version(tmp_path):
    from mlprunner.provenance import git_state, version

    assert git_state(tmp_path) is None  # /tmp is no work tree: no git block
    out = subprocess.run(
        [sys.executable, "-m", "mlprunner", "--version"], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.startswith(f"mlprun {version()} (torch ") and "Python" in out.stdout


# ------------------------------------------------------------------------------- the terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def run_in_pty(args: list[str], cwd: Path, columns: int = 80, timeout: float = 300) -> str:
    """Run `python -m mlprunner ARGS` with a pseudo-terminal of `columns` columns as its
    stdin/stdout/stderr; everything it wrote (escape sequences included)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "MLPRUN_DEBUG")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlprunner", *args], cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    out, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"mlprun did not finish within {timeout}s:\n{out.decode(errors='replace')}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        os.close(master)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode()


def screen_lines(raw: str) -> list[str]:
    """What each write shows on one terminal row: split at newlines and carriage returns,
    escape sequences removed."""
    return [ANSI.sub("", part) for part in re.split(r"\r\n|\n|\r", raw)]


@pytest.mark.slow
def test_parallel_jobs_on_a_terminal_print_lines_not_live_bars(workdir):
    """joblib's 2 workers on one terminal: each job's lines carry its prefix (epoch lines, and its
    data, model and layer lines too) and no live bar is drawn (two processes' bars erased each
    other's lines), and each job ends in one line. Epoch lines fit the terminal there; each job's
    mlprun.log has them whole (lr, seconds, samples/s)."""
    raw = run_in_pty(
        ["-m", "dataset=digits", "trainer.epochs=3", "trainer.seed=0,1", "logger=none", "hydra/launcher=joblib"]
        + ["hydra.launcher.n_jobs=2", "hydra.sweep.dir=sweep", "model.hidden=[500,300]"],
        workdir,
        columns=60,
    )
    lines = [line for line in screen_lines(raw) if line.strip()]
    assert "━" not in raw and "\x1b[2K" not in raw, raw[-3000:]
    epoch_lines = [line for line in lines if re.match(r"\[seed=[01]\] epoch \d/3 ", line)]
    assert len(epoch_lines) == 6 and all(len(line) <= 60 for line in epoch_lines), lines
    assert len([line for line in lines if re.match(r"\[seed=[01]\] completed; best val error ", line)]) == 2, lines
    for what in ("data: digits", "model: 64 inputs", "total parameters"):
        assert len([line for line in lines if re.match(r"\[seed=[01]\] +" + what, line)]) == 2, (what, lines)
    # Hydra's joblib launcher's 190-column settings line, shortened (logsetup.ShortJoblibLine)
    assert "joblib: launching 2 jobs on n_jobs=2 worker processes" in lines, lines
    assert not any("Joblib.Parallel(" in line for line in lines), lines
    layers = [line for line in lines if "Linear(" in line]  # the prefix narrows the layer column
    assert len(layers) == 6 and all(len(line) <= 79 for line in layers), layers
    for log_file in (workdir / "sweep").glob("*/mlprun.log"):
        logged = [line for line in log_file.read_text().splitlines() if " epoch " in line and "/3 " in line]
        assert len(logged) == 3 and all(re.search(r"lr \S+  [\d.]+s  [\d.]+k?/s$", line) for line in logged), logged


@pytest.mark.slow
def test_terminal_of_80_columns(workdir):
    """Under a real pseudo-terminal of 80 columns: every line fits, the first line says what is
    loading, one line per epoch (the live bar erased), closing lines name the run folder,
    TensorBoard and resume; mlprun.log holds every epoch line."""
    epochs = 4
    raw = run_in_pty(
        ["dataset=digits", f"trainer.epochs={epochs}", "trainer.tensorboard.graph=false", "hydra.run.dir=run"],
        workdir,
    )
    lines = screen_lines(raw)
    # a path cannot be wrapped: the run folder's absolute path is as long as the temp folder's
    too_long = [(len(line), line) for line in lines if len(line) > 80 and not line.startswith("run directory: ")]
    assert not too_long, too_long
    visible = [line for line in lines if line.strip()]
    assert visible[0].startswith("mlprun: loading PyTorch")
    epoch_lines = [line for line in visible if re.match(r"epoch \d+/\d+  train ", line)]
    assert [int(re.match(r"epoch (\d+)/", line).group(1)) for line in epoch_lines] == list(range(1, epochs + 1))
    for line in epoch_lines:
        assert re.fullmatch(
            r"epoch \d+/4  train \d\.\d{4} \d+\.\d\d%  val \d\.\d{4} \d+\.\d\d%  lr \d\.\de-\d\d  \d+\.\ds  \S+/s", line
        ), line
    # the bar was drawn (by time) and erased: rich erases a line with ESC[2K before the epoch line
    assert "\x1b[2K" in raw and re.search(r"epoch 1/4 ━+", ANSI.sub("", raw))
    assert visible[-3:] == [
        "run folder: run",
        "tensorboard --logdir run/tensorboard",
        f"train longer: mlprun resume=run trainer.epochs={2 * epochs}",
    ]
    log_text = (workdir / "run" / "mlprun.log").read_text()
    for line in epoch_lines:
        assert line in log_text


def test_no_colour_codes_when_piped(workdir):
    proc = run_mlprun(*DIGITS, "hydra.run.dir=run", "trainer.progress=auto", cwd=workdir, check=True)
    assert "\x1b[" not in proc.stdout and "\x1b[" not in proc.stderr
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 3  # the legend and one line per epoch
    assert all(len(line) <= 80 for line in proc.stdout.splitlines() if not line.startswith(("run directory", "  ")))


# ------------------------------------------------------------------------------- reports


@pytest.mark.slow
def test_report_fills_defaults_groups_datasets_and_shows_test_error(workdir, mlprun_here):
    """A folder of single runs: one with optim=sgd, one at the default optimizer (Adam), one on
    XOR scored on its test set. summary.csv says optim=adam for the default run, the tables are
    grouped by dataset, and a test-error column appears."""
    runs = workdir / "runs"
    one = ["trainer.epochs=1", *QUICK, "trainer.tensorboard.enabled=false"]
    jobs = {"a": ["dataset=digits", "optim=sgd"], "b": ["dataset=digits", "model.dropout=0.1"]}
    jobs["c"] = ["dataset=xor", "eval.test=true"]
    for name, args in jobs.items():  # (in this process: the report is what this test is about)
        proc = mlprun_here(*args, *one, f"hydra.run.dir={runs}/{name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "mlprunner.report", str(runs)], capture_output=True, text=True, timeout=120, check=True
    )
    import csv

    with open(runs / "summary.csv", newline="") as fh:
        header = next(csv.reader(fh))
        assert header.count("dataset") == 1, header  # swept here, and its own column
        fh.seek(0)
        rows = {r["job"]: r for r in csv.DictReader(fh)}
    assert rows["a"]["optim"] == "sgd" and rows["b"]["optim"] == "adam"  # the default, filled in
    assert rows["a"]["model.dropout"] == "0.2" and rows["b"]["model.dropout"] == "0.1"
    assert rows["c"]["dataset"] == "xor" and rows["c"]["test_error"] != "" and rows["a"]["test_error"] == ""
    assert [r["dataset"] for r in rows.values()] == ["digits", "digits", "xor"]  # grouped by dataset
    md = (runs / "summary.md").read_text()
    assert "## dataset=digits (2 jobs)" in md and "## dataset=xor (1 job)" in md and "test err %" in md
    assert "dataset=digits" in proc.stdout and "dataset=xor" in proc.stdout
    # per-dataset plots, only for keys with two or more values among that dataset's jobs
    assert (runs / "val_error_vs_optim_digits.png").is_file()
    assert not list(runs.glob("val_error_vs_*_xor.png"))


def test_report_shows_a_resumed_runs_effective_settings_and_refuses_a_run_folder(workdir, mlprun_here):
    """A run resumed with trainer.epochs=3 eval.test=false is reported with those values (its
    .hydra/config.yaml still says 2 and true); mlprun-report on one run's folder is refused in one
    line and writes nothing there; cell text with brackets is shown as typed, not as rich markup."""
    from rich.console import Console

    from mlprunner.report import collect, print_table

    runs = workdir / "runs"
    one = ["dataset=digits", *QUICK, "trainer.tensorboard.enabled=false"]
    for name, args in {"a": ["trainer.epochs=2", "eval.test=true"], "b": ["trainer.epochs=2"]}.items():
        proc = mlprun_here(*one, *args, f"hydra.run.dir={runs}/{name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = mlprun_here(f"resume={runs}/a", "trainer.epochs=3", "eval.test=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = sorted(p.name for p in (runs / "a").iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "mlprunner.report", str(runs / "a")],
        capture_output=True,
        text=True,
        timeout=120,
        env=mlprun_env(),  # not the HYDRA_FULL_ERROR=1 the in-process mlprun above left
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"mlprun-report: error: {runs / 'a'} is one run's folder"), proc.stderr
    assert sorted(p.name for p in (runs / "a").iterdir()) == before

    subprocess.run([sys.executable, "-m", "mlprunner.report", "--quiet", str(runs)], check=True, timeout=120)
    import csv

    with open(runs / "summary.csv", newline="") as fh:
        rows = {r["job"]: r for r in csv.DictReader(fh)}
    assert rows["a"]["trainer.epochs"] == "3" and rows["b"]["trainer.epochs"] == "2"
    # eval.test: false in both now (a's resume turned it off), so not a column; a has no test error
    assert "eval.test" not in rows["a"] and rows["a"].get("test_error", "") == ""

    jobs, keys = collect(runs)
    jobs[0]["values"]["trainer.epochs"] = "[tensorboard,csv]"
    console = Console(record=True, width=120)
    print_table(runs, jobs, keys, console)
    assert "[tensorboard,csv]" in console.export_text()


def fake_jobs(key: str, values: list[str]) -> list[dict]:
    return [
        {"job": f"j{i}", "params": {key: v}, "values": {key: v}, "best_val_error": 0.1 + 0.01 * i, "overrides": []}
        for i, v in enumerate(values)
    ]


def test_numeric_keys_are_scattered_on_a_real_axis():
    from mlprunner.plots import _plt
    from mlprunner.report import param_axis, param_figure

    plt = _plt()
    lrs = ["0.0012170317250926735", "0.01", "0.0003", "0.09", "0.01"]
    fig = param_figure(fake_jobs("optim.lr", lrs), "optim.lr")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"  # the values span more than two decades
    assert sorted(ax.collections[0].get_offsets()[:, 0].tolist()) == sorted(float(v) for v in lrs)
    assert [t.get_text() for t in ax.get_xticklabels() if "0.0012170317" in t.get_text()] == []
    plt.close(fig)
    fig = param_figure(fake_jobs("loss.label_smoothing", ["0", "0.1", "0.05"]), "loss.label_smoothing")
    assert fig.axes[0].get_xscale() == "linear"
    assert sorted(fig.axes[0].collections[0].get_offsets()[:, 0].tolist()) == [0.0, 0.05, 0.1]
    plt.close(fig)
    assert param_axis(["sgd", "adam"]) == "category" and param_axis(["true", "false"]) == "category"
    assert param_figure(fake_jobs("optim", ["adam", "adam"]), "optim") is None  # one value: no plot
    fig = param_figure(fake_jobs("optim", ["adam", "sgd", "adam"]), "optim")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["sgd", "adam"]
    legend = fig.axes[0].get_legend()
    plt.close(fig)
    assert legend is not None


def test_mlprun_eval_folds_the_per_class_line_between_classes():
    """The per-class error of 10 classes (106 characters in one line) folds to the terminal's
    width between classes, never inside one ("5 10.25%" stays whole)."""
    from mlprunner.cli import item_lines

    items = [f"{c} {e:.2f}%" for c, e in enumerate([0.5, 1.2, 3.4, 2.2, 0.0, 10.25, 1.1, 2.2, 3.3, 4.4])]
    for width in (80, 40):
        lines = item_lines("per-class error: ", items, width)
        assert len(lines) > 1 and all(len(line) <= width for line in lines), lines
        assert lines[0].startswith("per-class error: 0 0.50%,") and all(line.startswith("  ") for line in lines[1:])
        assert " ".join(line.strip() for line in lines) == "per-class error: " + ", ".join(items)
    assert item_lines("per-class error: ", items, 200) == ["per-class error: " + ", ".join(items)]


def test_a_diverged_job_neither_drags_its_category_nor_flattens_the_others():
    """Three adam jobs at 2-3% and one at 90% (diverged): the category's mark is their median
    (3%, the mean was 24%) and the error axis logarithmic, its ticks plain numbers."""
    from mlprunner.plots import _plt
    from mlprunner.report import param_figure

    plt = _plt()
    jobs = fake_jobs("optim", ["adam", "adam", "adam", "adam", "sgd"])
    for job, error in zip(jobs, (0.02, 0.03, 0.035, 0.9, 0.05)):
        job["best_val_error"] = error
    fig = param_figure(jobs, "optim")
    ax = fig.axes[0]
    fig.canvas.draw()
    lines = [c for c in ax.collections if hasattr(c, "get_segments")]
    marks = {round(float(seg[0][1]), 6) for c in lines for seg in c.get_segments()}
    assert ax.get_yscale() == "log" and 3.25 in marks and 5.0 in marks, marks  # medians of 2, 3, 3.5, 90 and 5
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels and not any("times" in t or "^" in t for t in labels), labels
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["job", "median"]
    plt.close(fig)


def test_the_epoch_legend_has_no_val_columns_without_a_validation_split(caplog):
    """dataset.val_fraction=0: the legend names the columns the epoch lines have (it promised
    'val: loss error' above lines without them)."""
    from mlprunner.progress import Progress, epoch_line

    progress = Progress("plain", 2, 13, 100, val=False)
    with caplog.at_level("INFO", logger="mlprunner"):
        progress.start_epoch(1)
        progress.end_epoch(1, {"train/loss": 0.5, "train/error": 0.1, "lr": 1e-3}, 0.1, 1000)
        progress.close()
    out = [r.getMessage() for r in caplog.records]
    assert out[0] == "epoch  train: loss error  lr  seconds  samples/s", out
    assert out[1] == epoch_line(1, 2, {"train/loss": 0.5, "train/error": 0.1, "lr": 1e-3}, 0.1, 10000), out


def test_the_table_shows_an_optuna_trials_long_floats_to_4_significant_digits():
    """lr=0.0070947950645657365 (an Optuna trial) reads lr=0.007095 in the table and legends;
    short values, lists and exponents are shown as they are."""
    from mlprunner.report import _label

    values = {"optim.lr": "0.0070947950645657365", "optim.weight_decay": "1e-05", "trainer.seed": "0"}
    values |= {"model.hidden": "[500, 300]", "optim.momentum": "0.9", "loss.label_smoothing": "2.5e-07"}
    job = {"values": values, "params": {}}
    assert _label(job, list(values), short=True) == (
        "lr=0.007095 weight_decay=1e-05 seed=0 hidden=[500, 300] momentum=0.9 label_smoothing=2.5e-07"
    )
