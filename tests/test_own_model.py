"""A model of the user's own: any torch.nn.Module named by `model._target_`, from a package on
PYTHONPATH. Real runs in subprocesses: train, resume, mlprun-eval, mlprun-predict; the refusals
(wrong outputs, unimportable class, tampered checkpoint or config) in one line."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import QUICK, mlprun_inprocess, read_json, run_mlprun

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, num_features, num_classes, width=32):
            super().__init__()
            self.fc1 = nn.Linear(num_features, width)
            self.fc2 = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))


    class Deep(nn.Module):  # `depth` has no default: the config must give it
        def __init__(self, num_features, num_classes, depth, hidden=8):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.Linear(hidden, num_classes))

        def forward(self, x):
            return self.net(x)


    class Picky(nn.Module):  # refuses with an exception that has no message
        def __init__(self, num_features, num_classes):
            raise ValueError()


    class Breaks(Net):  # a torch RuntimeError in its 4th forward, as a bug in a model would raise
        calls = 0

        def forward(self, x):
            Breaks.calls += 1
            if Breaks.calls >= 4:
                raise RuntimeError("Tensor on device meta is not on the expected device cpu!")
            return super().forward(x)


    class Lazy(nn.Module):  # its first layer's size is known only after the first forward
        def __init__(self, num_features, num_classes):
            super().__init__()
            self.net = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, num_classes))

        def forward(self, x):
            return self.net(x)


    class Three(nn.Module):  # three outputs whatever the data
        def __init__(self, num_features):
            super().__init__()
            self.fc = nn.Linear(num_features, 3)

        def forward(self, x):
            return self.fc(x)
    """
)

FAST = [*QUICK, "dataset=digits", "trainer.threads=1", "trainer.tensorboard.enabled=false", "optim.lr=0.01"]


@pytest.fixture
def own(tmp_path):
    """(work folder, env with the user's package `mynets` on PYTHONPATH)."""
    pkg = tmp_path / "src" / "mynets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(NETS)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "src"), os.environ.get("PYTHONPATH", "")])}
    work = tmp_path / "work"
    work.mkdir()
    return work, env


def tool(name: str, *args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"mlprunner.{name}", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line_error(proc, prog="mlprun") -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), proc.stderr + proc.stdout
    assert "Error getting class" not in proc.stdout + proc.stderr
    return lines[0]


@pytest.mark.slow
def test_own_model_trains_resumes_evaluates_and_predicts(own):
    from PIL import Image
    from sklearn.datasets import load_digits

    work, env = own
    run = work / "run"
    proc = run_mlprun(
        *FAST,
        "model._target_=mynets.Net",
        "+model.width=64",
        "trainer.epochs=2",
        f"hydra.run.dir={run}",
        cwd=work,
        env=env,
        check=True,
    )
    assert "64 inputs -> 10 outputs" in proc.stdout
    # the MLP's keys of the default model option are not passed to a class that does not take them
    assert "left out" in proc.stdout
    first = read_json(run / "results.json")
    assert first["status"] == "completed" and first["epochs_completed"] == 2
    assert first["n_params"] == 64 * 64 + 64 + 64 * 10 + 10
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["model"]["_target_"] == "mynets.Net" and ckpt["config"]["model"]["width"] == 64
    assert set(ckpt["model"]) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}

    run_mlprun(f"resume={run}", "trainer.epochs=6", cwd=work, env=env, check=True)
    res = read_json(run / "results.json")
    assert res["status"] == "completed" and res["epochs_completed"] == 6
    assert res["resumed"][0]["from_epoch"] == 2
    assert res["best"]["val"]["error"] < 0.5, res["best"]
    assert res["best"]["val"]["error"] <= first["best"]["val"]["error"]

    proc = tool("evaluate", str(run), cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    test_error = float(proc.stdout.split("test error ")[1].split("%")[0]) / 100
    assert test_error < 0.5, proc.stdout

    # digits as 8x8 PNG files, as a user would have them: mostly labelled right
    bunch = load_digits()
    imgs = work / "imgs"
    imgs.mkdir()
    for i in range(20):
        Image.fromarray((bunch.images[i] * 255 / 16).round().astype("uint8"), mode="L").save(imgs / f"{i:02d}.png")
    out = work / "pred.csv"
    proc = tool("predict", str(run), str(imgs), "--csv", str(out), cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == 20
    predicted = [row.split(",")[1] for row in rows]
    right = sum(p == str(t) for p, t in zip(predicted, bunch.target[:20]))
    assert right >= 12, (predicted, list(bunch.target[:20]))


@pytest.mark.slow
def test_own_model_yaml_through_config_dir_and_tampering_refused(own, tmp_path):
    work, env = own
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "mynet.yaml").write_text("_target_: mynets.Net\nwidth: 48\n")
    run = work / "run"
    proc = run_mlprun(
        "--config-dir",
        str(tmp_path / "conf"),
        *FAST,
        "model=mynet",
        "trainer.epochs=2",
        f"hydra.run.dir={run}",
        cwd=work,
        env=env,
        check=True,
    )
    assert "left out" not in proc.stdout  # model=mynet has no MLP keys
    assert read_json(run / "results.json")["n_params"] == 64 * 48 + 48 + 48 * 10 + 10

    # a copy whose checkpoint names another class than the run folder's config: refused
    for name, other in (("ckpt", "mynets.Three"), ("system", "os.system")):
        bad = work / name
        subprocess.run(["cp", "-r", str(run), str(bad)], check=True)
        for which in ("last", "best"):
            path = bad / "checkpoints" / f"{which}.pt"
            state = torch.load(path, weights_only=True)
            state["config"]["model"]["_target_"] = other
            torch.save(state, path)
        for proc, prog in (
            (run_mlprun(f"resume={bad}", "trainer.epochs=3", cwd=work, env=env), "mlprun"),
            (tool("evaluate", str(bad), cwd=work, env=env), "mlprun-eval"),
        ):
            assert proc.returncode == 1
            line = one_line_error(proc, prog)
            assert f"model._target_={other!r}" in line and "'mynets.Net'" in line
        assert read_json(bad / "results.json")["epochs_completed"] == 2

    # a copy whose .hydra/config.yaml names another class than its checkpoints: refused
    bad = work / "config"
    subprocess.run(["cp", "-r", str(run), str(bad)], check=True)
    saved = bad / ".hydra" / "config.yaml"
    saved.write_text(saved.read_text().replace("mynets.Net", "mynets.Three"))
    proc = run_mlprun(f"resume={bad}", "trainer.epochs=3", cwd=work, env=env)
    assert proc.returncode == 1 and "'mynets.Three'" in one_line_error(proc)
    # a checkpoint of the user's model away from its run folder: nothing says which class to allow
    loose = work / "loose.pt"
    loose.write_bytes((run / "checkpoints" / "best.pt").read_bytes())
    proc = tool("evaluate", str(loose), cwd=work, env=env)
    assert proc.returncode == 1 and "run folder" in one_line_error(proc, "mlprun-eval")
    # the run itself, without its package on PYTHONPATH: one line naming the class
    proc = tool("evaluate", str(run), cwd=work, env={"PYTHONPATH": ""})
    assert proc.returncode == 1 and "model._target_='mynets.Net'" in one_line_error(proc, "mlprun-eval")


def test_own_model_refusals_in_one_line(own, monkeypatch, capsys):
    """(In this process, with the user's package on sys.path: every case is refused before
    training, and a subprocess would only add its start-up.)"""
    work, env = own
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(os.pathsep)[0])
    try:
        _refusals(work, lambda *args: mlprun_inprocess(*args, monkeypatch=monkeypatch, capsys=capsys))
    finally:
        sys.modules.pop("mynets", None)  # the next test's package of the same name is another folder


def _refusals(work: Path, mlprun) -> None:
    # no module: refused before anything is written
    proc = mlprun(*FAST, "model._target_=nosuch.Net", "hydra.run.dir=r1")
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "model._target_='nosuch.Net'" in line and "No module named 'nosuch'" in line
    # not a torch.nn.Module; a key the class does not take; a required argument nobody gives
    for args, words in (
        (["model._target_=collections.OrderedDict"], ["model._target_", "torch.nn.Module"]),
        (["model._target_=mynets.Net", "+model.widht=3"], ["model.widht", "width"]),
        (["model._target_=mynets.Deep"], ["model.depth is required by mynets.Deep", "+model.depth="]),
        (["model._target_=mynets.Nett"], ["module mynets has no class Nett", "did you mean mynets.Net?"]),
    ):
        proc = mlprun(*FAST, *args, "hydra.run.dir=r1")
        assert proc.returncode == 2, proc.stderr
        line = one_line_error(proc)
        assert all(w in line for w in words), line
    assert not (work / "r1").exists()

    # the wrong number of outputs: found by a forward pass once the data's size is known
    proc = mlprun(*FAST, "model._target_=mynets.Three", "trainer.epochs=1", "hydra.run.dir=r2")
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "model._target_='mynets.Three'" in line and "(2, 3)" in line and "10 classes" in line
    assert not (work / "r2" / "checkpoints").exists()


def test_mlp_keys_are_checked_for_the_mlp_only(compose_cfg, own, monkeypatch):
    from mlprunner.build import build_model
    from mlprunner.components import Loss
    from mlprunner.config import validate
    from mlprunner.errors import ConfigError

    monkeypatch.syspath_prepend(own[1]["PYTHONPATH"].split(os.pathsep)[0])
    with pytest.raises(ConfigError, match="model.hidden"):
        validate(compose_cfg("dataset=digits", "model.hidden=3"))
    # a class of the user's own with a key `hidden` of its own meaning (an int): passed as it is
    cfg = compose_cfg("dataset=digits", "model._target_=mynets.Deep", "model.hidden=3", "+model.depth=2")
    validate(cfg)
    model = build_model(cfg.model, 64, Loss(cfg.loss, 10), torch.device("cpu"))
    assert model.net[0].out_features == 3  # hidden=3 reached the constructor
    # a binary loss needs one output: Net(num_classes=2) gives two, refused naming the class
    cfg = compose_cfg("dataset=xor", "model._target_=mynets.Net", "loss=bce_with_logits")
    validate(cfg)
    with pytest.raises(ConfigError, match=r"model._target_='mynets.Net' gives shape \(2, 2\).*1 output"):
        build_model(cfg.model, 2, Loss(cfg.loss, 2), torch.device("cpu"))


def test_a_constructor_error_without_a_message_is_still_one_line(own):
    """ValueError() (no text) from the user's class: one line naming the key and the error's
    type (the first line of an empty message was an IndexError, 'unexpected', exit 1)."""
    work, env = own
    proc = run_mlprun(*FAST, "model._target_=mynets.Picky", "hydra.run.dir=picky", cwd=work, env=env)
    line = one_line_error(proc)
    assert proc.returncode == 2, proc.stderr
    assert "model" in line and "ValueError" in line and "IndexError" not in line, line
    assert not (work / "picky").exists()


def test_a_runtime_error_in_training_fails_its_sweep_job_and_the_sweep_goes_on(own):
    """A RuntimeError from the model during training (its text names `device`, as trainer.device
    on the command line does): each job is recorded failed, the sweep writes its summary and
    exits 1, a runtime failure, not 2 (a refusal of values); a single run exits 1 too."""
    work, env = own
    args = [*FAST, "model._target_=mynets.Breaks", "trainer.device=cpu", "trainer.seed=0,1"]
    proc = run_mlprun("-m", *args, "hydra.sweep.dir=sweep", cwd=work, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 job(s) failed in this sweep" in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert "Error executing job" not in proc.stderr + proc.stdout
    rows = list(csv.DictReader((work / "sweep" / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("expected device cpu" in r["reason"] for r in rows)
    proc = run_mlprun(*args[:-1], "hydra.run.dir=single", cwd=work, env=env)
    assert proc.returncode == 1, proc.stderr
    assert read_json(work / "single" / "results.json")["status"] == "failed"


def test_a_model_with_lazy_layers_trains(own):
    """nn.LazyLinear (lecture 004) has no size before its first forward: the memory estimate made
    before training asked its numel() and stopped the run with 'unexpected ValueError'."""
    work, env = own
    proc = run_mlprun(*FAST, "model._target_=mynets.Lazy", "trainer.epochs=1", "hydra.run.dir=lazy", cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_json(work / "lazy" / "results.json")
    assert results["status"] == "completed" and results["n_params"] == 64 * 16 + 16 + 16 * 10 + 10
