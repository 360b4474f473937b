"""Bad input gets one clear line and the right exit code; nothing already written is damaged.

The parametrized `test_bad_input` feeds real bad overrides, files, checkpoints and environment
settings to `mlprun` (configuration cases in-process through `mlprunner.cli.main`, the others as
real subprocesses) and checks the exit code, the absence of a traceback, that the one-line
message names the offending key or file, and that no half-made run folder is left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import QUICK, mlprun_env, read_json, run_main_inprocess, run_mlprun, tool_inprocess

MNIST_RAW = Path(os.environ.get("MLPRUN_DATA", "/nonexistent")) / "MNIST" / "raw"
TINY = ["dataset=xor", "model=mlp", "model.hidden=[4]", "trainer.epochs=1", *QUICK]

# --------------------------------------------------------------------------- shared bad files


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory) -> Path:
    """A real completed run (1 epoch of XOR); no test may change a byte of it."""
    base = tmp_path_factory.mktemp("completed")
    done = base / "done"
    run_mlprun(*TINY, f"hydra.run.dir={done}", cwd=base, check=True)
    return done


@pytest.fixture(scope="module")
def bad(tmp_path_factory, completed_run) -> dict:
    """Paths of bad files and folders for the cases below."""
    base = tmp_path_factory.mktemp("bad")
    ctx = {"base": str(base)}
    empty = base / "empty"
    empty.mkdir()
    ctx["empty"] = str(empty)
    own = base / "own_configs" / "experiment"  # an experiment file without `# @package _global_`
    own.mkdir(parents=True)
    (own / "nopkg.yaml").write_text("trainer:\n  epochs: 1\n")
    ctx["own_configs"] = str(own.parent)

    # The source of real checkpoints and the folder a new run must not reuse.
    done = completed_run
    ctx["done"] = str(done)
    last = done / "checkpoints" / "last.pt"

    ckpts = base / "ckpts"
    ckpts.mkdir()
    (ckpts / "corrupt.pt").write_bytes(os.urandom(4096))
    data = last.read_bytes()
    (ckpts / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"weights": torch.zeros(3)}, ckpts / "foreign.pt")  # not an mlprun checkpoint
    torch.save({"model": torch.nn.Linear(2, 2)}, ckpts / "pickled.pt")  # a pickled module object
    other = base / "other_model"  # an mlprun checkpoint whose
    (other / "checkpoints").mkdir(parents=True)  # weights do not fit its config
    state = torch.load(last, weights_only=True)
    state["config"]["model"]["hidden"] = [7]
    torch.save(state, other / "checkpoints" / "last.pt")
    ctx["other_model"] = str(other)
    for name in ("corrupt", "truncated", "foreign", "pickled"):
        ctx[name] = str(ckpts / f"{name}.pt")
    nockpt = base / "no_checkpoint_run"
    nockpt.mkdir()
    (nockpt / "results.json").write_text('{"status": "failed"}\n')
    ctx["no_ckpt"] = str(nockpt)

    # Image CSVs: one naming a file that does not exist, one with a non-integer label,
    # one whose image cannot be decoded.
    from PIL import Image

    imgs = base / "imgs"
    imgs.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), color=40 * i).save(imgs / f"{i}.png")
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (imgs / "missing.csv").write_text("path,label\n0.png,0\n1.png,1\nnot_there.png,1\n")
    (imgs / "badlabel.csv").write_text("0.png,0\n1.png,cat\n")
    (imgs / "undecodable.csv").write_text("0.png,0\n1.png,1\n2.png,0\nbroken.png,1\n")
    ctx["imgs"] = str(imgs)

    # MNIST folders: truncated and malformed copies (only the bytes needed, under tmp only).
    if (MNIST_RAW / "train-labels-idx1-ubyte").is_file():
        for kind in ("truncated", "malformed"):
            raw = base / f"mnist_{kind}" / "MNIST" / "raw"
            raw.mkdir(parents=True)
            with open(MNIST_RAW / "train-images-idx3-ubyte", "rb") as fh:
                (raw / "train-images-idx3-ubyte").write_bytes(fh.read(200_000))
            shutil.copyfile(MNIST_RAW / "train-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")
            for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
                (raw / name).write_bytes(b"")  # not read for training
            if kind == "malformed":
                shutil.copyfile(MNIST_RAW / "train-images-idx3-ubyte", raw / "train-images-idx3-ubyte")
                (raw / "train-labels-idx1-ubyte").write_bytes(b"this is not an idx1 label file\n" * 4)
            ctx[f"mnist_{kind}"] = str(base / f"mnist_{kind}")
    return ctx


# --------------------------------------------------------------------------- the cases

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
no_mps = pytest.mark.skipif(
    bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(), reason="MPS is present here"
)
needs_mnist = pytest.mark.skipif(
    not (MNIST_RAW / "train-labels-idx1-ubyte").is_file(), reason="MLPRUN_DATA does not hold MNIST"
)


def case(id_, args, code, names, how="inproc", env=None, marks=(), prog="mlprun"):
    """args/names may use {placeholders} from the `bad` fixture; how: inproc or subprocess.

    `prog` other than mlprun runs that console script (installed beside this Python)."""
    if prog != "mlprun":
        how = "subprocess"
        marks = [*marks, pytest.mark.skipif(not (BIN / prog).exists(), reason=f"{prog} is not installed")]
    return pytest.param(prog, args, code, names, how, env or {}, id=id_, marks=marks)


BIN = Path(sys.executable).parent


CASES = [
    # ---- overrides Hydra rejects: unknown keys, groups, options, syntax
    case("unknown-key", ["trainer.epoch=5"], 2, ["trainer.epoch", "did you mean trainer.epochs"]),
    case(
        "unknown-key-typo-nested",
        ["trainer.early_stoping.patience=3"],
        2,
        ["trainer.early_stoping.patience", "trainer.early_stopping.patience"],
    ),
    case(
        "key-absent-in-chosen-group",
        ["optim=adam", "optim.momentum=0.9"],
        2,
        ["optim.momentum", "lr, weight_decay, betas, eps"],
    ),
    case("unknown-group", ["optimizer=adam"], 2, ["optimizer", "did you mean optim"]),
    case("unknown-group-option", ["optim=adamm"], 2, ["optim=adamm", "available: ", "sgd_momentum"]),
    case("unknown-option-in-a-list", ["logger=[tensorboard,nope]"], 2, ["logger=nope", "available: ", "mlflow"]),
    case("unknown-experiment", ["+experiment=nope"], 2, ["experiment=nope", "xor_seed"]),
    case("unparsable-override", ["trainer.epochs=[1"], 2, ["trainer.epochs=[1"]),
    case("empty-range-sweep", ["-m", "trainer.seed=range(0,0)"], 2, ["trainer.seed=range(0,0) gives no values"]),
    case(
        "zero-step-range", ["-m", "trainer.seed=range(0,2,0)"], 2, ["trainer.seed=range(0,2,0)", "step must not be 0"]
    ),
    case("multirun-and-cfg", ["-m", "--cfg", "job"], 2, ["-m (--multirun)", "mlprun --cfg job <overrides>"]),
    case("cfg-and-info", ["--info", "defaults", "--cfg", "job"], 2, ["--cfg, --info", "cannot be combined"]),
    case("hydra-flag-choice", ["--cfg", "jobb"], 2, ["--cfg/-c", "'jobb'", "'job', 'hydra', 'all'"]),
    case("unknown-flag", ["--epochs", "3"], 2, ["unrecognized arguments: --epochs", "trainer.epochs=5"]),
    case("cfg-package-typo", ["--cfg", "job", "-p", "optim.lrr"], 2, ["-p optim.lrr", "did you mean optim.lr"]),
    case("no-equals", ["epochs"], 2, ["'epochs'", "key=value"]),
    case("append-existing", ["+trainer.epochs=3"], 2, ["+trainer.epochs", "without '+'"]),
    case("delete-absent", ["~trainer.nothing"], 2, ["trainer.nothing"]),
    case("ambiguous-list", ["optim.lr=0.1,0.01"], 2, ["optim.lr=0.1,0.01", "--multirun"]),
    case(
        "unresolvable-interpolation",
        ["trainer.epochs=${{oc.env:MLPRUN_NO_SUCH_VAR}}"],
        2,
        ["trainer.epochs", "MLPRUN_NO_SUCH_VAR"],
    ),
    # ---- types and ranges
    case("lr-negative", ["optim.lr=-1"], 2, ["optim.lr=-1", "(0, inf)"]),
    case("lr-not-a-number", ["optim.lr=fast"], 2, ["optim.lr='fast'", "a number"]),
    case("momentum-above-1", ["optim=sgd", "optim.momentum=1.5"], 2, ["optim.momentum=1.5", "[0, 1)"]),
    case("weight-decay-negative", ["optim.weight_decay=-0.1"], 2, ["optim.weight_decay=-0.1"]),
    case("betas-out-of-range", ["optim.betas=[1.5,0.9]"], 2, ["optim.betas", "[0, 1)"]),
    case("dropout-1", ["model.dropout=1.0"], 2, ["model.dropout=1.0", "[0, 1)"]),
    case("epochs-0", ["trainer.epochs=0"], 2, ["trainer.epochs=0", "an integer"]),
    case("batch-size-float", ["trainer.batch_size=2.5"], 2, ["trainer.batch_size=2.5", "an integer"]),
    case("val-fraction-1", ["dataset.val_fraction=1.0"], 2, ["dataset.val_fraction=1.0", "[0, 1)"]),
    case("width-zero", ["model.hidden=[100,0]"], 2, ["model.hidden=[100, 0]", "positive integers"]),
    case("hidden-not-list", ["model.hidden=wide"], 2, ["model.hidden='wide'"]),
    case("bool-not-bool", ["trainer.deterministic=maybe"], 2, ["trainer.deterministic='maybe'", "true or false"]),
    case("group-replaced-by-value", ["trainer.early_stopping=5"], 2, ["trainer.early_stopping=5"]),
    case("group-switched-by-value", ["trainer.swa=true"], 2, ["trainer.swa=true", "trainer.swa.enabled=true|false"]),
    # ---- choices
    case("activation", ["model.activation=swish"], 2, ["model.activation='swish'", "relu, tanh"]),
    case("device-unknown", ["trainer.device=tpu"], 2, ["trainer.device", "tpu", "cuda:N"]),
    case(
        "bce-on-10-classes",
        ["dataset=digits", "loss=bce_with_logits"],
        2,
        ["loss=bce_with_logits", "dataset=digits", "10 classes"],
    ),
    case("bce-on-mnist", ["dataset=mnist", "loss=bce_with_logits"], 2, ["loss=bce_with_logits", "dataset=mnist"]),
    case(
        "early-stopping-without-val",
        ["dataset=digits", "dataset.val_fraction=0", "trainer.early_stopping.enabled=true"],
        2,
        ["trainer.early_stopping.enabled", "dataset.val_fraction=0"],
    ),
    case(
        "max-of-a-minimised-monitor",
        ["trainer.early_stopping.mode=max"],
        2,
        ["trainer.early_stopping.mode='max'", "min with monitor=val/error"],
    ),
    case("loss-per-sample", ["+loss.reduction=none"], 2, ["loss.reduction='none'", "allowed: mean"]),
    case(
        "optuna-without-val",
        ["-m", *TINY, "dataset.n_val=0", "hydra/sweeper=mlprun_optuna", "optim.lr=interval(0.001,0.1)"],
        2,
        ["dataset.n_val=0", "hydra/sweeper=mlprun_optuna", "validation error"],
        how="subprocess",
    ),
    case("csv-required", ["dataset=image_csv"], 2, ["dataset.csv", "required"]),
    case(
        "experiment-without-package",
        ["-cd", "{own_configs}", "experiment=nopkg"],
        2,
        ["experiment.trainer", "# @package _global_"],
    ),
    case(
        "sweep-dir-of-a-swept-key",
        ["-m", *TINY, "optim.lr=0.01,0.02", "hydra.sweep.dir={base}/by_lr_${{optim.lr}}"],
        2,
        ["hydra.sweep.dir={base}/by_lr_${{optim.lr}}", "names the swept key optim.lr"],
        how="subprocess",
    ),
    case("keys-of-no-scheduler", ["+scheduler.warmup_epochs=3"], 2, ["scheduler.warmup_epochs", "scheduler=none"]),
    # ---- the run folder
    case(
        "reuse-completed-run-dir", ["dataset=xor", "hydra.run.dir={done}"], 2, ["hydra.run.dir={done}", "resume={done}"]
    ),
    # ---- environment: devices and dataset files (subprocess, the real entry point)
    case(
        "cuda-absent",
        [*TINY, "trainer.device=cuda"],
        1,
        ["trainer.device=cuda", "not available"],
        how="subprocess",
        marks=no_cuda,
    ),
    case("mps-absent", [*TINY, "trainer.device=mps"], 1, ["trainer.device=mps", "not available"], marks=no_mps),
    case(
        "mnist-missing-no-download",
        ["dataset=mnist", "dataset.root={empty}", "dataset.download=false"],
        1,
        ["{empty}/MNIST/raw", "dataset.root", "MLPRUN_DATA"],
        how="subprocess",
    ),
    case(
        "fashion-missing-no-download",
        ["dataset=fashion_mnist", "dataset.root={empty}", "dataset.download=false"],
        1,
        ["{empty}/FashionMNIST/raw"],
    ),
    case(
        "compile-without-a-compiler",  # a fresh inductor cache: nothing compiled before can be reused
        ["dataset=digits", "trainer.compile=true", "trainer.epochs=1", *QUICK],
        1,
        ["trainer.compile=true: torch.compile failed", "trainer.compile=false"],
        how="subprocess",
        env={"CXX": "/bin/false", "CC": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": "{base}/inductor"},
    ),
    case(
        "env-MLPRUN_DATA-empty",
        ["dataset=mnist", "dataset.download=false"],
        1,
        ["{empty}/MNIST/raw"],
        env={"MLPRUN_DATA": "{empty}"},
    ),
    case(
        "mnist-truncated",
        ["dataset=mnist", "dataset.root={mnist_truncated}", "dataset.download=false", "trainer.epochs=1", *QUICK],
        1,
        ["{mnist_truncated}/MNIST/raw", "truncated"],
        how="subprocess",
        marks=needs_mnist,
    ),
    case(
        "mnist-malformed-labels",
        ["dataset=mnist", "dataset.root={mnist_malformed}", "dataset.download=false", "trainer.epochs=1", *QUICK],
        1,
        ["{mnist_malformed}/MNIST/raw", "malformed"],
        how="subprocess",
        marks=needs_mnist,
    ),
    case(
        "csv-not-found",
        ["dataset=image_csv", "dataset.csv={empty}/labels.csv"],
        1,
        ["dataset.csv", "{empty}/labels.csv"],
    ),
    case(
        "csv-names-missing-image",
        ["dataset=image_csv", "dataset.csv={imgs}/missing.csv"],
        1,
        ["{imgs}/missing.csv:4", "{imgs}/not_there.png"],
        how="subprocess",
    ),
    case(
        "csv-non-integer-label",
        ["dataset=image_csv", "dataset.csv={imgs}/badlabel.csv"],
        1,
        ["{imgs}/badlabel.csv:2", "'cat'", "not an integer"],
    ),
    case(
        "csv-undecodable-image",
        ["dataset=image_csv", "dataset.csv={imgs}/undecodable.csv", "trainer.epochs=1", *QUICK],
        1,
        ["{imgs}/broken.png", "cannot be decoded"],
        how="subprocess",
    ),
    case(
        "image-folder-missing",
        ["dataset=image_folder", "dataset.image_dir={empty}/nope"],
        1,
        ["dataset.image_dir", "{empty}/nope"],
    ),
    # ---- checkpoints given to resume=
    case("resume-missing", ["resume={empty}/gone.pt"], 2, ["resume={empty}/gone.pt"], how="subprocess"),
    case("resume-run-without-checkpoint", ["resume={no_ckpt}"], 2, ["{no_ckpt}"]),
    case("resume-corrupt", ["resume={corrupt}"], 1, ["{corrupt}", "corrupt"], how="subprocess"),
    case("resume-truncated", ["resume={truncated}"], 1, ["{truncated}"]),
    case("resume-foreign", ["resume={foreign}"], 1, ["{foreign}", "not an mlprun checkpoint"]),
    case("resume-pickled-code", ["resume={pickled}"], 1, ["{pickled}", "refusing"]),
    case("resume-other-model", ["resume={other_model}"], 1, ["{other_model}", "does not fit"], how="subprocess"),
    case(
        "resume-unsafe-override",
        ["resume={done}", "model.hidden=[8]"],
        2,
        ["model.hidden", "cannot change when resuming"],
    ),
    # ---- the other entry points
    case("eval-missing-target", ["{empty}/no_run"], 2, ["{empty}/no_run"], prog="mlprun-eval"),
    case("eval-not-a-run", ["{empty}"], 2, ["{empty}", "not an mlprun run"], prog="mlprun-eval"),
    case("eval-corrupt-checkpoint", ["{corrupt}"], 1, ["{corrupt}", "corrupt"], prog="mlprun-eval"),
    case("eval-foreign-checkpoint", ["{foreign}"], 1, ["{foreign}", "not an mlprun checkpoint"], prog="mlprun-eval"),
    case(
        "eval-other-model",
        ["{other_model}"],
        1,
        ["{other_model}/checkpoints/last.pt", "do not fit"],
        prog="mlprun-eval",
    ),
    case("eval-bad-override", ["{done}", "model.hidden=[3]"], 2, ["model.hidden=[3]", "allowed"], prog="mlprun-eval"),
    case("eval-bad-flag-value", ["{done}", "--checkpoint", "foo"], 2, ["--checkpoint", "'best'"], prog="mlprun-eval"),
    case("predict-no-arguments", [], 2, ["required: target, images"], prog="mlprun-predict"),
    case("eval-absent-checkpoint-kind", ["{done}", "--checkpoint", "swa"], 2, ["swa", "present: "], prog="mlprun-eval"),
    case(
        "predict-non-image-run", ["{done}", "{imgs}/0.png"], 2, ["{done}", "not made of images"], prog="mlprun-predict"
    ),
    case("predict-corrupt-checkpoint", ["{corrupt}", "{imgs}/0.png"], 1, ["{corrupt}"], prog="mlprun-predict"),
    case(
        "report-missing-folder", ["{empty}/no_sweep"], 2, ["{empty}/no_sweep", "no such folder"], prog="mlprun-report"
    ),
    case("report-folder-without-runs", ["{empty}"], 2, ["{empty}", "no runs found"], prog="mlprun-report"),
]


def _fill(value: str, ctx: dict) -> str:
    try:
        return value.format(**ctx)
    except KeyError as exc:  # a fixture file this machine could not make (e.g. no MNIST)
        pytest.skip(f"no {exc} here")


@pytest.mark.parametrize("prog, args, code, names, how, env", CASES)
def test_bad_input(bad, completed_run, prog, args, code, names, how, env, workdir, monkeypatch, capsys):
    args = [_fill(a, bad) for a in args]
    names = [_fill(n, bad) for n in names]
    env = {k: _fill(v, bad) for k, v in env.items()}
    resuming = any(a.startswith("resume=") for a in args)
    fresh = workdir / "fresh_run"
    if prog == "mlprun" and not resuming and not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={fresh}")
    before = _tree_hashes(completed_run)
    if prog != "mlprun":
        full_env = {**os.environ, **env}
        full_env.pop("MLPRUN_DEBUG", None)
        proc = subprocess.run(
            [str(BIN / prog), *args], cwd=workdir, env=full_env, capture_output=True, text=True, timeout=300
        )
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    elif how == "subprocess":
        proc = run_mlprun(*args, cwd=workdir, env=env, timeout=300)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        rc, out, err = run_main_inprocess(args, env, monkeypatch, capsys)
    both = out + err
    assert rc == code, both[-3000:]
    assert "Traceback" not in both
    assert _tree_hashes(completed_run) == before  # no bad input touches an earlier run
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error: ")]
    assert len(lines) == 1 and "usage:" not in err, err[-3000:]
    for name in names:
        assert name in lines[0], f"{name!r} not in: {lines[0]}"
    # No half-made run folder: none at all, or one clearly marked as failed.
    assert not (workdir / "runs").exists()
    if fresh.exists():
        assert code == 1 and read_json(fresh / "results.json")["status"] == "failed"
    # Configuration errors and the checks made before the run folder is created leave nothing.
    if code == 2 or how == "inproc":
        assert not fresh.exists()


def test_enough_distinct_bad_inputs():
    assert len({p.id for p in CASES}) == len(CASES) >= 25


# --------------------------------------------------------------------------- nothing overwritten


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_refused_start_leaves_completed_run_byte_for_byte_unchanged(tmp_path, completed_run, mlprun_here):
    run_dir = completed_run
    before = _tree_hashes(run_dir)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "results.json", "checkpoints/last.pt", "mlprun.log"} <= set(
        before
    )
    # Same and different settings, both refused before Hydra writes anything.
    for extra in ([], ["optim.lr=0.5", "trainer.epochs=2"]):
        proc = mlprun_here(*TINY, *extra, f"hydra.run.dir={run_dir}")
        assert proc.returncode == 2, proc.stderr
        assert f"resume={run_dir}" in proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    assert _tree_hashes(run_dir) == before
    assert not (tmp_path / "runs").exists()


def test_config_error_leaves_no_run_folder(workdir, mlprun_here):
    proc = mlprun_here("dataset=xor", "optim.lr=0")
    assert proc.returncode == 2 and "optim.lr=0" in proc.stderr
    assert list(workdir.iterdir()) == []  # not even runs/ or a log file
    # std missing: found before anything is written (it crashed while normalising)
    proc = mlprun_here("dataset=digits", "dataset.mean=[0.1,0.2]")
    assert proc.returncode == 2 and "dataset.std is null" in proc.stderr, proc.stderr
    assert list(workdir.iterdir()) == []
    # a check that needs the data (digits has one channel): the folder Hydra made goes again
    proc = mlprun_here("dataset=digits", "dataset.mean=[0.1,0.2]", "dataset.std=[1,1]")
    assert proc.returncode == 2 and "dataset.mean" in proc.stderr, proc.stderr
    assert not list(workdir.glob("runs/*/*")), list(workdir.rglob("*"))


@pytest.mark.slow
def test_two_runs_started_together_get_distinct_folders(workdir):
    """Default run folders: two processes started at once in one cwd never share a folder."""
    env = mlprun_env()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mlprunner", *TINY, "trainer.progress=none", "trainer.tensorboard.enabled=false"],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = sorted(p.parent for p in (workdir / "runs").rglob("results.json"))
    assert len(runs) == 2 and runs[0] != runs[1]
    # runs/<date>/<H-M-S>-<pid>: unique by the process id, whatever second each one started in
    suffixes = {re.fullmatch(r"\d\d-\d\d-\d\d-(\d+)", r.name).group(1) for r in runs}
    assert suffixes == {str(p.pid) for p in procs}
    for r in runs:
        assert read_json(r / "results.json")["status"] == "completed"
        assert (r / "checkpoints" / "last.pt").is_file()


# --------------------------------------------------------------------------- tracebacks on request


@pytest.mark.parametrize("debug", [False, True])
def test_traceback_only_with_mlprun_debug(workdir, debug):
    env = {"MLPRUN_DEBUG": "1"} if debug else {}
    proc = run_mlprun("dataset=xor", "model.activation=swish", cwd=workdir, env=env)
    assert proc.returncode == 2
    assert ("Traceback" in proc.stderr) is debug
    assert proc.stderr.strip().splitlines()[-1].startswith("mlprun: error: model.activation='swish'")


# --------------------------------------------------------------------------- divergence


def test_divergence_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(workdir):
    """Epoch 1 trains normally; the scheduler then multiplies lr by 1e10 and a later epoch diverges."""
    run_dir = workdir / "div"
    proc = run_mlprun(
        "dataset=digits",
        "model=mlp",
        "model.hidden=[64]",
        "optim=sgd",
        "optim.lr=0.1",
        "scheduler=exponential",
        "scheduler.gamma=1e10",
        "trainer.epochs=5",
        *QUICK,
        f"hydra.run.dir={run_dir}",
        cwd=workdir,
    )
    both = proc.stdout + proc.stderr
    assert proc.returncode == 1, both[-3000:]
    assert "Traceback" not in both
    message = proc.stderr.strip().splitlines()[-1]
    m = re.match(r"mlprun: error: loss became non-finite at epoch (\d+), step (\d+) of \d+", message)
    assert m, message
    epoch = int(m.group(1))
    assert epoch >= 2 and int(m.group(2)) >= 1
    assert "lower learning rate" in message and "optim.lr" in message
    results = read_json(run_dir / "results.json")
    assert results["status"] == "failed"
    assert f"epoch {epoch}" in results["reason"] and "\n" not in results["reason"]
    assert results["epochs_completed"] == epoch - 1
    from mlprunner.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")  # the last good epoch, intact
    assert ckpt["epoch"] == epoch - 1
    weights = [t for t in ckpt["model"].values() if t.is_floating_point()]
    assert weights and all(bool(torch.isfinite(t).all()) for t in weights)


BLOCK_SUBMITIT = """
import sys
class _Absent:  # as if the sweep extra were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "submitit" or name.startswith(("submitit.", "hydra_plugins.hydra_submitit_launcher")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Absent())
"""


def test_a_launcher_of_a_missing_extra_names_the_extra(tmp_path):
    """hydra/launcher=slurm without the sweep extra: one line naming the extra, exit 2 (it was
    'unexpected ModuleNotFoundError')."""
    (tmp_path / "sitecustomize.py").write_text(BLOCK_SUBMITIT)
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_mlprun(
        "-m", "dataset=digits", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "mlprun: error: hydra/launcher=slurm needs submitit, which is not installed: pip install 'mlprunner[sweep]'"
    )
    assert not [p for p in (tmp_path / "s").glob("*") if p.is_dir()]  # no job started


def test_a_crash_after_training_leaves_results_json_saying_failed(tmp_path, monkeypatch, capsys):
    """A bug or an OS error outside the phases that record their own (here the learning-curves
    plot) still leaves results.json saying failed and why, as every run whose folder exists."""
    from mlprunner import run as run_module

    def broken_plot(*args, **kwargs):
        raise RuntimeError("disk quota exceeded while plotting")

    monkeypatch.setattr(run_module, "learning_curves", broken_plot)
    run_dir = tmp_path / "run"
    rc, out, err = run_main_inprocess([*TINY, f"hydra.run.dir={run_dir}"], {}, monkeypatch, capsys)
    assert rc == 1, out + err
    assert "unexpected RuntimeError: disk quota exceeded while plotting" in err
    res = read_json(run_dir / "results.json")
    assert res["status"] == "failed" and res["epochs_completed"] == 1
    assert res["reason"] == "RuntimeError: disk quota exceeded while plotting"


@pytest.mark.parametrize(
    "given, meant",
    [
        ("optim=AdamW", "optim=adamw"),  # was "did you mean optim=adam?"
        ("optim=SGD", "optim=sgd"),  # torch's class names, as the lecture notes write them
        ("optim=RMSProp", "optim=rmsprop"),
        ("loss=NLLLoss", "loss=nll"),
        ("loss=BCEWithLogitsLoss", "loss=bce_with_logits"),
        ("scheduler=CosineAnnealingLR", "scheduler=cosine"),
        ("scheduler=ReduceLROnPlateau", "scheduler=plateau"),
        ("optim._target_=torch.optim.sgd", "torch.optim.SGD"),
    ],
)
def test_an_option_named_as_torch_names_its_class_gets_the_right_suggestion(given, meant, monkeypatch, capsys):
    rc, out, err = run_main_inprocess([*TINY, given], {}, monkeypatch, capsys)
    assert rc == 2, err
    assert f"did you mean {meant}?" in err, err


@pytest.mark.parametrize(
    "given, meant",
    [
        (["hydra/launcher=joblib", "hydra.launcher.n_job=2"], "hydra.launcher.n_jobs"),
        (["hydra/sweeper=optuna", "hydra.sweeper.n_trial=2"], "hydra.sweeper.n_trials"),
        (["hydra/sweeper=optuna", "hydra.sweeper.sampler.sed=1"], "hydra.sweeper.sampler.seed"),
    ],
)
def test_a_typo_in_a_chosen_launchers_or_sweepers_key_suggests_its_keys(given, meant, monkeypatch, capsys):
    """The keys suggested are those of the launcher/sweeper the command line chose (they were
    the basic launcher's: hydra.launcher._target_), and the listing named is `--cfg hydra`."""
    rc, out, err = run_main_inprocess(["-m", *TINY, *given], {}, monkeypatch, capsys)
    assert rc == 2, err
    assert f"did you mean {meant}" in err and f"`mlprun {given[0]} --cfg hydra`" in err, err


def test_a_bad_target_lists_the_classes_of_its_kind(monkeypatch, capsys):
    """The classes offered for a bad loss._target_ are torch.nn's losses (all of them), not its
    first twelve names (layers: AdaptiveAvgPool1d, ...)."""
    rc, out, err = run_main_inprocess([*TINY, "loss._target_=torch.nn.Foo"], {}, monkeypatch, capsys)
    assert rc == 2, err
    assert "CrossEntropyLoss" in err and "NLLLoss" in err and "AdaptiveAvgPool1d" not in err, err


def test_an_optimizer_that_needs_a_closure_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """torch.optim.LBFGS's step() needs a closure: refused in one line naming the key (it
    trained into 'unexpected TypeError: LBFGS.step() missing ... closure', exit 1)."""
    run_dir = tmp_path / "run"
    args = [*TINY, "optim._target_=torch.optim.LBFGS", f"hydra.run.dir={run_dir}"]
    rc, out, err = run_main_inprocess(args, {}, monkeypatch, capsys)
    assert rc == 2, err
    assert "optim._target_=torch.optim.LBFGS: its step() needs a closure" in err and "optim=adam" in err, err
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "given, said, not_said",
    [
        # other tools' names, and a key's last part alone, lead to mlprun's key (the hint was
        # '+optim.learning_rate=...', which Adam then refused; `lr=` suggested `logger`)
        ("optim.learning_rate=0.1", "did you mean optim.lr?", "trainer.swa.lr"),
        ("lr=0.01", "did you mean optim.lr", "did you mean logger"),
        ("trainer.max_epochs=3", "did you mean trainer.epochs", "+trainer"),
        # aliases and case first, in the key's own group (trainer.bs suggested trainer.swa)
        ("trainer.bs=64", "did you mean trainer.batch_size?", "trainer.swa"),
        # a key of another group by its own name (trainer.lr suggested trainer.swa.lr)
        ("trainer.lr=0.1", "did you mean optim.lr?", "trainer.swa"),
        ("trainer.hidden=[3]", "did you mean model.hidden?", "+trainer"),
        ("optim.LR=0.1", "did you mean optim.lr?", "+optim"),
        # a key the option's class does not take: which options take it, not '+key'
        (
            "optim.momentum=0.9",
            "torch.optim.Adam takes no argument 'momentum'; options of optim that take it:",
            "+optim",
        ),
        ("optim=sgd optim.betas=[0.9,0.99]", "that take it: adam, adamax, adamw, nadam, radam", "+optim"),
        # scheduler=none has no class: which options take the key (was 'did you mean scheduler?')
        ("scheduler.gamma=0.5", "options of scheduler that take it: exponential, multistep, step", "did you mean"),
        # a key the class takes but the option leaves out: '+key' is the way
        ("optim.amsgrad=true", "+optim.amsgrad=...", "takes no argument"),
    ],
)
def test_an_unknown_key_gets_a_hint_that_leads_somewhere(given, said, not_said, monkeypatch, capsys):
    rc, out, err = run_main_inprocess([*TINY, *given.split()], {}, monkeypatch, capsys)
    assert rc == 2, err
    assert said in err and not_said not in err, err


def test_a_sweep_preset_without_multirun_says_it_runs_one_job(tmp_path, monkeypatch, capsys):
    """experiment=mnist_exercise2 without -m: Hydra runs one job and ignores the preset's grid;
    mlprun says so before training (it trained one job without a word)."""
    run_dir = tmp_path / "run"
    args = ["experiment=mnist_exercise2", *TINY, f"hydra.run.dir={run_dir}"]
    rc, out, err = run_main_inprocess(args, {}, monkeypatch, capsys)
    assert rc == 0, err
    warning = "experiment=mnist_exercise2 defines a sweep over optim, model.activation, model.hidden"
    assert warning in out and "add -m to run the sweep" in out
    assert out.index(warning) < out.index("epoch 1/1")


def test_a_scheduler_of_ones_own_without_an_interval_is_told_which_to_give(monkeypatch, capsys):
    args = [*TINY, "+scheduler._target_=torch.optim.lr_scheduler.CyclicLR", "+scheduler.base_lr=0.001"]
    rc, out, err = run_main_inprocess([*args, "+scheduler.max_lr=0.1"], {}, monkeypatch, capsys)
    assert rc == 2, err
    assert "scheduler.interval is needed" in err and "+scheduler.interval=step" in err, err


@pytest.mark.parametrize(
    "given, said",
    [
        # no step() to ask about a closure: what the class refuses is said (was AttributeError, exit 1)
        (["optim._target_=torch.nn.Linear"], "optim.lr: no such argument of torch.nn.Linear"),
        # an interval that exists but is null: no '+' advice, which Hydra would refuse
        (["scheduler=step", "scheduler.interval=null"], "scheduler.interval=null is invalid; allowed: epoch, step"),
    ],
)
def test_refusals_next_to_the_new_checks_stay_one_clear_line(given, said, monkeypatch, capsys):
    rc, out, err = run_main_inprocess([*TINY, *given], {}, monkeypatch, capsys)
    assert rc == 2 and said in err and "+scheduler" not in err, err


def test_a_file_where_a_folder_belongs_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    """A run's tensorboard/ replaced by a file: one line with the path and what to do, exit 1
    (it was 'unexpected FileExistsError ... run with MLPRUN_DEBUG=1'); nothing is overwritten."""
    run_dir = tmp_path / "run"
    rc, out, err = run_main_inprocess([*TINY, f"hydra.run.dir={run_dir}"], {}, monkeypatch, capsys)
    assert rc == 0, err
    shutil.rmtree(run_dir / "tensorboard")
    (run_dir / "tensorboard").write_text("mine")
    rc, out, err = run_main_inprocess([f"resume={run_dir}", "trainer.epochs=2"], {}, monkeypatch, capsys)
    assert rc == 1, err
    assert err.strip().splitlines()[-1] == (
        f"mlprun: error: {run_dir / 'tensorboard'}: File exists; a file is where mlprun needs a folder: move it away"
    )
    assert (run_dir / "tensorboard").read_text() == "mine"


@pytest.mark.parametrize(
    "override, reason",
    [
        ("logger=csv", "a run keeps the loggers it started with"),
        ("hydra.run.dir=elsewhere", "a run stays in its folder, and resume= names it"),
        ("hydra.verbose=true", "a run goes on with the Hydra settings it started with"),
        ("optim.lr=0.5", "it would change the model, data or optimizer"),
    ],
)
def test_a_key_resume_keeps_says_why(completed_run, override, reason, monkeypatch, capsys):
    rc, out, err = run_main_inprocess([f"resume={completed_run}", override], {}, monkeypatch, capsys)
    assert rc == 2 and f"cannot change when resuming ({reason}" in err, err
    assert "; allowed with resume=: trainer.epochs" in err, err


def test_a_run_that_failed_before_its_first_checkpoint_and_a_checkpoints_folder(tmp_path, monkeypatch, capsys):
    """mlprun-eval of a run that diverged before any checkpoint says so and why (it said 'not an
    mlprun run directory'); a run's checkpoints/ folder stands for the run, for mlprun-eval and
    resume= (resume looked for checkpoints/checkpoints/last.pt)."""
    failed = tmp_path / "failed"
    args = ["dataset=digits", "optim=sgd", "optim.lr=1e12", *QUICK, f"hydra.run.dir={failed}"]
    rc, out, err = run_main_inprocess(args, {}, monkeypatch, capsys)
    assert rc == 1, err
    proc = tool_inprocess("mlprun-eval", str(failed), monkeypatch=monkeypatch, capsys=capsys)
    assert proc.returncode == 2
    assert f"{failed}: this run has no checkpoint to load (results.json: failed: loss became non-finite" in proc.stderr
    run_dir = tmp_path / "run"
    rc, out, err = run_main_inprocess([*TINY, f"hydra.run.dir={run_dir}"], {}, monkeypatch, capsys)
    assert rc == 0, err
    proc = tool_inprocess("mlprun-eval", str(run_dir / "checkpoints"), monkeypatch=monkeypatch, capsys=capsys)
    assert proc.returncode == 0 and "test error" in proc.stdout, proc.stderr
    rc, out, err = run_main_inprocess(
        [f"resume={run_dir / 'checkpoints'}", "trainer.epochs=2"], {}, monkeypatch, capsys
    )
    assert rc == 0, err
    assert read_json(run_dir / "results.json")["epochs_completed"] == 2


def test_an_unreadable_best_checkpoint_is_refused_on_resume(tmp_path, monkeypatch, capsys):
    """best.pt emptied: resume refuses in one line (it completed, leaving an empty best.pt that
    mlprun-eval and mlprun-predict then could not read); moved away, the run continues."""
    run_dir = tmp_path / "run"
    rc, out, err = run_main_inprocess([*TINY, f"hydra.run.dir={run_dir}"], {}, monkeypatch, capsys)
    assert rc == 0, err
    best = run_dir / "checkpoints" / "best.pt"
    best.write_bytes(b"")
    rc, out, err = run_main_inprocess([f"resume={run_dir}", "trainer.epochs=2"], {}, monkeypatch, capsys)
    assert rc == 1, err
    assert err.strip().splitlines()[-1] == (
        f"mlprun: error: checkpoint {best} is truncated, corrupt or not a PyTorch checkpoint (the file is empty); "
        "resuming cannot rebuild the best epoch's weights: move it away to continue without them"
    )
    assert read_json(run_dir / "results.json")["epochs_completed"] == 1  # nothing written
    best.rename(tmp_path / "best.pt")
    rc, out, err = run_main_inprocess([f"resume={run_dir}", "trainer.epochs=2"], {}, monkeypatch, capsys)
    assert rc == 0, err


def test_a_file_error_in_a_sweep_jobs_folder_is_no_invalid_value(monkeypatch):
    """A sweep job's folder is named by its overrides: a permission error on a path inside it is
    a file problem (exit 1), not an error of the override whose key the path names (exit 2, which
    made the sweep say 'refused for invalid values ... fix them in the command')."""
    from mlprunner.messages import describe_exception

    monkeypatch.setattr(sys, "argv", ["mlprun", "-m", "optim=sgd,adam", "model.activation=relu,tanh"])
    path = "/tmp/s/model.activation=relu,optim=adam/tensorboard"
    code, message = describe_exception(PermissionError(13, "Permission denied", path))
    assert code == 1 and message.startswith(f"{path}: Permission denied; give mlprun read and write access"), message


def test_a_resumed_run_does_not_keep_an_earlier_refusal(tmp_path, monkeypatch, capsys):
    """invalid_config (a sweep job refused for its values) is what that attempt ended with: a
    later process of the run that completes does not carry it (the sweep would count it refused)."""
    run_dir = tmp_path / "run"
    rc, out, err = run_main_inprocess([*TINY, f"hydra.run.dir={run_dir}"], {}, monkeypatch, capsys)
    assert rc == 0, err
    res = read_json(run_dir / "results.json")
    (run_dir / "results.json").write_text(json.dumps({**res, "invalid_config": True}))
    rc, out, err = run_main_inprocess([f"resume={run_dir}", "trainer.epochs=2"], {}, monkeypatch, capsys)
    assert rc == 0, err
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and "invalid_config" not in res


def test_a_bad_saved_config_or_a_file_for_checkpoints_is_named_on_resume(tmp_path, monkeypatch, capsys):
    """A run with no checkpoint restarts from its saved config: a bad value written into that file
    names the file (it read as if the command line had given it); a file where the checkpoints
    folder belongs is said so (it guessed trainer.checkpoint.save_last=false)."""
    run_dir = tmp_path / "run"
    rc, out, err = run_main_inprocess([*TINY, f"hydra.run.dir={run_dir}"], {}, monkeypatch, capsys)
    assert rc == 0, err
    shutil.rmtree(run_dir / "checkpoints")
    saved = run_dir / ".hydra" / "config.yaml"
    good = saved.read_text()
    saved.write_text(good.replace("  epochs: 1\n", "  epochs: -3\n", 1))
    rc, out, err = run_main_inprocess([f"resume={run_dir}"], {}, monkeypatch, capsys)
    assert rc == 2 and err.strip().splitlines()[-1].startswith(f"mlprun: error: {saved}: trainer.epochs=-3 is invalid")
    saved.write_text(good)
    (run_dir / "checkpoints").write_text("")
    rc, out, err = run_main_inprocess([f"resume={run_dir}", "trainer.epochs=2"], {}, monkeypatch, capsys)
    assert rc == 1 and err.strip().splitlines()[-1] == (
        f"mlprun: error: {run_dir / 'checkpoints'}: a file, where the run keeps its checkpoints folder: move it away"
    )


def test_cfg_package_of_a_key_that_holds_null_prints_null(mlprun_here):
    """Hydra says "package not found" (exit 1) for a key that holds null as for one that does
    not exist: trainer.grad_clip is a key (null by default) and prints null."""
    proc = mlprun_here("--cfg", "job", "-p", "trainer.grad_clip")
    assert proc.returncode == 0 and proc.stdout.strip() == "null", proc.stderr
    proc = mlprun_here("--cfg", "job", "-p", "trainer.grad_clip", "trainer.grad_clip=0.5")
    assert proc.returncode == 0 and proc.stdout.strip() == "0.5", proc.stderr
