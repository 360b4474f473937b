"""Issue 13, classes 4-7 and 9: odd inputs are refused in one line before anything is written.

Each case runs `mlprun` (in-process through `mlprunner.cli.main` where it can, else a real
subprocess) or another console tool on a real bad input and checks: the exit code; exactly one
`<prog>: error:` line, naming the key or file; no traceback; no message starting "unexpected";
no run folder (nothing on disk); and a sha256 of every file that existed before (a completed run,
the bad input files themselves) unchanged. A full disk is tried on a real, small tmpfs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import QUICK, read_json, run_main_inprocess, run_mlprun

BIN = Path(sys.executable).parent
DIGITS = ["dataset=digits", "model.hidden=[16]", "trainer.epochs=1", "trainer.tensorboard.enabled=false", *QUICK]


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> dict:
    """A completed digits run (image-shaped, so mlprun-predict takes it) and the bad inputs."""
    from PIL import Image

    base = tmp_path_factory.mktemp("inputs")
    done = base / "done"
    run_mlprun(*DIGITS, f"hydra.run.dir={done}", cwd=base, check=True)
    c = {"base": str(base), "done": str(done)}

    imgs = base / "imgs"
    (imgs / "cat").mkdir(parents=True)
    for i in range(4):
        Image.new("L", (8, 8), color=40 * i).save(imgs / "cat" / f"{i}.png")
    (imgs / "random.csv").write_bytes(os.urandom(3000).replace(b"\n", b"\xff"))
    (imgs / "latin1.csv").write_bytes("cat/0.png,0\ncat/é.png,1\n".encode("latin-1"))
    (imgs / "nul.csv").write_bytes(b"cat/0.png,0\ncat/1.png\x00,1\n")
    (imgs / "oneclass.csv").write_text("".join(f"cat/{i}.png,0\n" for i in range(4)))
    (imgs / "fourclass.csv").write_text("".join(f"cat/{i}.png,{i}\n" for i in range(4)))
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (imgs / "undecodable.csv").write_text("cat/0.png,0\ncat/1.png,1\ncat/2.png,0\nbroken.png,1\n")
    c["imgs"] = str(imgs)
    c["onefolder"] = str(imgs)  # a single class subfolder, cat/
    Image.new("1", (20000, 20000)).save(base / "bomb.png")  # 4e8 pixels, ~50 kB on disk
    c["bomb"] = str(base / "bomb.png")

    cdir = base / "cdir"
    (cdir / "dataset").mkdir(parents=True)
    (cdir / "dataset" / "broken.yaml").write_text("name: foo\n  bad: [1,\n")
    (cdir / "primary.yaml").write_text("foo: [1\n")
    c["cdir"] = str(cdir)

    for name, text in (("list", "[1,2,3]"), ("bestlist", '{"best": [1]}'), ("history", '{"history": [1]}')):
        folder = base / "shapes" / name / "run"
        shutil.copytree(done, folder)
        (folder / "results.json").write_text(text + "\n")
        c[f"shape_{name}"] = str(folder)
        c[f"shapes_{name}"] = str(folder.parent)

    (base / "afile").write_text("not a folder\n")
    c["afile"] = str(base / "afile")
    (base / "fileway" / "MNIST").mkdir(parents=True)
    (base / "fileway" / "MNIST" / "raw").write_text("a file where a folder belongs\n")
    c["fileway"] = str(base / "fileway")
    return c


def case(id_, args, code, names, prog="mlprun", how="inproc", env=None):
    return pytest.param(prog, args, code, names, how if prog == "mlprun" else "subprocess", env or {}, id=id_)


CASES = [
    # ---- 4: an unknown option of any group, experiment included
    case("experiment-unknown", ["experiment=nonexistent"], 2, ["experiment=nonexistent", "mnist_best"]),
    case(
        "experiment-typo", ["experiment=mnist_bst"], 2, ["experiment=mnist_bst", "did you mean experiment=mnist_best"]
    ),
    case("experiment-append-unknown", ["+experiment=nope"], 2, ["experiment=nope", "available"]),
    case("experiment-null", ["experiment=null"], 2, ["experiment=null"]),
    case("model-unknown", ["model=mlp_9000"], 2, ["model=mlp_9000", "mlp_500_300"]),
    case("scheduler-unknown", ["scheduler=cosin"], 2, ["scheduler=cosin", "did you mean scheduler=cosine"]),
    case("launcher-unknown", ["hydra/launcher=nope"], 2, ["hydra/launcher=nope", "joblib"]),
    # ---- 5: every constructor precondition, before the run folder
    case("subset-too-small", ["dataset=digits", "dataset.subset=1"], 2, ["dataset.subset=1"]),
    case("subset-too-small-mnist", ["dataset.subset=1"], 2, ["dataset.subset=1"]),
    case("onecycle-max-lr-null", ["scheduler=onecycle", "scheduler.max_lr=null"], 2, ["scheduler.max_lr"]),
    case("onecycle-max-lr-deleted", ["scheduler=onecycle", "~scheduler.max_lr"], 2, ["scheduler.max_lr", "required"]),
    case("nesterov-no-momentum", ["optim=sgd", "+optim.nesterov=true"], 2, ["optim.nesterov", "Nesterov"]),
    case(
        "nesterov-dampening",
        ["optim=sgd_momentum", "optim.nesterov=true", "+optim.dampening=0.5"],
        2,
        ["optim.nesterov", "dampening"],
    ),
    case("multi-margin-p", ["loss=multi_margin", "loss.p=3"], 2, ["loss.p=3"]),
    case("adagrad-lr-decay", ["optim=adagrad", "+optim.lr_decay=-1"], 2, ["optim.lr_decay=-1", "[0, inf)"]),
    case(
        "loss-without-class-targets",
        ["loss._target_=torch.nn.SoftMarginLoss", "~loss.label_smoothing"],
        2,
        ["loss._target_=torch.nn.SoftMarginLoss cannot score", "multilabel_margin"],
    ),
    case("loss-reduction", ["loss=multi_margin", "+loss.reduction=foo"], 2, ["loss.reduction='foo'", "allowed: mean"]),
    case("plateau-mode", ["scheduler=plateau", "scheduler.mode=foo"], 2, ["scheduler.mode"]),
    case(
        "plateau-threshold-mode",
        ["scheduler=plateau", "+scheduler.threshold_mode=foo"],
        2,
        ["scheduler.threshold_mode"],
    ),
    case(
        "swa-after-last-epoch",
        ["trainer.swa.enabled=true", "trainer.swa.start_epoch=5", "trainer.epochs=2"],
        2,
        ["trainer.swa.start_epoch=5"],
    ),
    case("model-unknown-argument", ["+model.bias=false"], 2, ["model.bias", "takes no argument"]),
    case("optim-unknown-argument", ["+optim.foo=1"], 2, ["optim.foo", "no such argument"]),
    case("adam-betas", ["optim.betas=[0.9,1.0]"], 2, ["optim.betas"]),
    case(
        "too-few-class-names",
        ["dataset=image_csv", "dataset.csv={imgs}/fourclass.csv", "dataset.class_names=[a,b]"],
        2,
        ["dataset.class_names"],
    ),
    case(
        "image-size-zero",
        ["dataset=image_csv", "dataset.csv={imgs}/fourclass.csv", "dataset.image_size=[0,0]"],
        2,
        ["dataset.image_size"],
    ),
    case(
        "image-csv-subset-too-small",
        ["dataset=image_csv", "dataset.csv={imgs}/fourclass.csv", "dataset.subset=1"],
        2,
        ["dataset.subset=1"],
    ),
    # ---- 6: no "unexpected X" for what a user can cause
    case("csv-random-bytes", ["dataset=image_csv", "dataset.csv={imgs}/random.csv"], 1, ["{imgs}/random.csv", "UTF-8"]),
    case("csv-latin1", ["dataset=image_csv", "dataset.csv={imgs}/latin1.csv"], 1, ["{imgs}/latin1.csv:2", "UTF-8"]),
    case("csv-nul-byte", ["dataset=image_csv", "dataset.csv={imgs}/nul.csv"], 1, ["{imgs}/nul.csv:2", "NUL"]),
    case(
        "config-dir-broken-group-yaml",
        ["--config-dir", "{cdir}", "dataset=broken"],
        2,
        ["{cdir}/dataset/broken.yaml:2", "invalid YAML"],
    ),
    case(
        "config-dir-broken-primary-yaml",
        ["--config-dir", "{cdir}", "--config-name", "primary"],
        2,
        ["{cdir}/primary.yaml:2", "invalid YAML"],
    ),
    case("resume-results-list", ["resume={shape_list}"], 1, ["{shape_list}/results.json", "JSON list"]),
    case("resume-results-best-list", ["resume={shape_bestlist}"], 1, ["{shape_bestlist}/results.json", "'best'"]),
    case("resume-results-history", ["resume={shape_history}"], 1, ["{shape_history}/results.json", "'history'"]),
    case("predict-decompression-bomb", ["{done}", "{bomb}"], 1, ["{bomb}", "too large"], prog="mlprun-predict"),
    # ---- 7: a model too large for the memory it would run in
    case("memory-hidden-adam", ["dataset=digits", "model.hidden=[65536,65536]"], 2, ["model.hidden", "adam"]),
    case(
        "memory-hidden-sgd", ["dataset=digits", "model.hidden=[65536,65536]", "optim=sgd"], 2, ["model.hidden", "sgd"]
    ),
    case("memory-hidden-mnist", ["model.hidden=[65536,65536]"], 2, ["model.hidden", "trainer.memory_fraction"]),
    case(
        "memory-fraction-tiny",
        ["dataset=digits", "model.hidden=[2048,2048]", "trainer.memory_fraction=1e-9"],
        2,
        ["model.hidden=[2048, 2048]", "trainer.memory_fraction=1e-09"],
    ),
    case(
        "memory-data-dominates",
        ["dataset=xor", "dataset.n_train=50000000", "model.hidden=[]", "trainer.memory_fraction=1e-6"],
        2,
        ["dataset.n_train=50000000"],
    ),
    case(
        "memory-subset-dominates",
        ["dataset=digits", "dataset.subset=1000", "model.hidden=[]", "trainer.memory_fraction=1e-9"],
        2,
        ["dataset.subset=1000"],
    ),
    case("memory-fraction-zero", ["trainer.memory_fraction=0"], 2, ["trainer.memory_fraction=0"]),
    # ---- 9: smaller ones
    case(
        "image-folder-one-class",
        ["dataset=image_folder", "dataset.image_dir={onefolder}"],
        2,
        ["dataset.image_dir", "at least two class"],
    ),
    case(
        "image-csv-one-class",
        ["dataset=image_csv", "dataset.csv={imgs}/oneclass.csv"],
        2,
        ["dataset.csv", "at least two classes"],
    ),
    # dataset.mean/std: refused by a real `mlprun` before the run folder (it crashed while normalising,
    # or refused once the data was read, leaving a run folder behind)
    case(
        "mean-without-std",
        ["dataset=digits", "dataset.mean=[0.1,0.2]"],
        2,
        ["dataset.std is null but dataset.mean is set", "both lists, or both null"],
        how="subprocess",
    ),
    case("std-without-mean", ["dataset=digits", "dataset.std=[1]"], 2, ["dataset.mean is null but dataset.std"]),
    case(
        "mean-std-lengths",
        ["dataset=digits", "dataset.mean=[0.1]", "dataset.std=[1,1]"],
        2,
        ["dataset.std has 2 value(s) but dataset.mean has 1"],
    ),
    case(
        "mean-channels-digits",
        ["dataset=digits", "dataset.mean=[0.1,0.2]", "dataset.std=[1,1]"],
        2,
        ["dataset.mean=[0.1, 0.2]", "a list of 1 value(s), one per image channel of dataset=digits"],
        how="subprocess",
    ),
    case(
        "mean-channels-rgb",
        ["dataset=image_csv", "dataset.csv={imgs}/fourclass.csv", "dataset.grayscale=false"]
        + ["dataset.mean=[0.5]", "dataset.std=[0.2]"],
        2,
        ["dataset.mean=[0.5]", "a list of 3 value(s)"],
    ),
    case("std-zero", ["dataset=digits", "dataset.mean=[0.1]", "dataset.std=[0]"], 2, ["dataset.std=[0]", "positive"]),
    case("mean-nan", ["dataset=digits", "dataset.mean=[nan]", "dataset.std=[1]"], 2, ["dataset.mean=[nan]", "finite"]),
    case("std-inf", ["dataset=digits", "dataset.mean=[0]", "dataset.std=[inf]"], 2, ["dataset.std=[inf]", "finite"]),
    case("lr-inf", ["optim.lr=inf"], 2, ["optim.lr=inf", "a number in (0, inf)"]),
    case("lr-nan", ["optim.lr=nan"], 2, ["optim.lr=nan", "a number in (0, inf)"]),
    case("margin-inf", ["loss=multi_margin", "loss.margin=inf"], 2, ["loss.margin=inf", "(-inf, inf)"]),
    case("resume-typo", ["resume={done}", "trainer.epcohs=3"], 2, ["trainer.epcohs", "did you mean trainer.epochs"]),
    case("resume-typo-model", ["resume={done}", "model.hiden=[3]"], 2, ["model.hiden", "did you mean model.hidden"]),
    case("data-root-is-a-file", ["trainer.epochs=1"], 1, ["{afile}", "is a file"], env={"MLPRUN_DATA": "{afile}"}),
    case(
        "data-root-file-on-the-way",
        ["trainer.epochs=1", "dataset.download=false"],
        1,
        ["{fileway}/MNIST/raw", "is a file"],
        env={"MLPRUN_DATA": "{fileway}"},
    ),
]


def _fill(value: str, c: dict) -> str:
    return value.format(**c)


@pytest.mark.parametrize("prog, args, code, names, how, env", CASES)
def test_odd_input_refused_in_one_line(ctx, prog, args, code, names, how, env, workdir, monkeypatch, capsys):
    args = [_fill(a, ctx) for a in args]
    names = [_fill(n, ctx) for n in names]
    env = {k: _fill(v, ctx) for k, v in env.items()}
    fresh = workdir / "fresh_run"
    if prog == "mlprun" and not any(a.startswith("resume=") for a in args):
        args.append(f"hydra.run.dir={fresh}")
    base = Path(ctx["base"])
    before = _tree_hashes(base)
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
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, err[-3000:]
    message = lines[0].removeprefix(f"{prog}: error: ")
    assert not message.lower().startswith("unexpected"), message
    assert "delete them" not in message  # never advice to delete files that are not the problem
    for name in names:
        assert name in message, f"{name!r} not in: {message}"
    assert _tree_hashes(base) == before  # the completed run and every input file, byte for byte
    assert not fresh.exists() and not (workdir / "runs").exists()  # nothing on disk


def test_enough_cases_per_class():
    ids = {p.id for p in CASES}
    assert len(ids) == len(CASES) >= 40


# --------------------------------------------------------------------------- beside the table


def test_every_range_text_is_open_at_infinity():
    """inf and nan are never accepted, so no "allowed:" text may include them."""
    from mlprunner.schema import LEGACY, SCHEMA

    for key, spec in SCHEMA.items():
        if spec is LEGACY:  # keys of old configs, ignored
            continue
        assert "inf]" not in spec.allowed and "[-inf" not in spec.allowed, (key, spec.allowed)
        for bad in (float("inf"), float("-inf"), float("nan")):
            if spec.test(1.0) and not spec.path:
                assert spec.check(bad) is not None, (key, bad)


def test_report_lists_a_job_with_a_results_json_of_the_wrong_shape(ctx, workdir):
    for name in ("list", "bestlist", "history"):
        folder = Path(ctx[f"shapes_{name}"])
        run = folder / "run"
        before = _tree_hashes(run)
        proc = subprocess.run(
            [str(BIN / "mlprun-report"), "--no-plots", str(folder)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        assert "unreadable: results.json:" in proc.stdout
        assert _tree_hashes(run) == before


def test_launcher_setting_the_plugin_rejects_names_the_key(workdir):
    sweep = workdir / "sw"
    proc = run_mlprun(
        "-m",
        *DIGITS,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=0",
        f"hydra.sweep.dir={sweep}",
        cwd=workdir,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlprun: error: ")]
    assert len(lines) == 1 and lines[0].startswith("mlprun: error: hydra.launcher.n_jobs=0:"), proc.stderr
    assert not sweep.exists()  # refused before any job: the folder the sweep made is gone


def test_bad_mean_std_leave_no_folder_under_runs(workdir):
    """The commands of the report, with mlprun's own runs/<date>/<time>/ folder: refused in one
    line, exit 2, and nothing written (not even runs/)."""
    for args, says in (
        (["dataset.mean=[0.1,0.2]"], "dataset.std is null"),
        (["dataset.mean=[0.1,0.2]", "dataset.std=[1,1]"], "dataset.mean=[0.1, 0.2] is invalid"),
    ):
        proc = run_mlprun("dataset=digits", *args, cwd=workdir, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlprun: error: ")]
        assert len(lines) == 1 and says in lines[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stdout + proc.stderr
        assert list(workdir.iterdir()) == [], list(workdir.rglob("*"))


def test_loader_channels_match_the_data(compose_cfg):
    """What validation assumes of each built-in image loader's channels is what it loads."""
    from mlprunner.data import load_data
    from mlprunner.schema import resolve_loader

    ds = compose_cfg("dataset=digits").dataset
    assert resolve_loader(ds).dataset_facts.channels(ds) == load_data(ds, "cpu").image_shape[0] == 1
    for name in ("mnist", "fashion_mnist"):
        ds = compose_cfg(f"dataset={name}").dataset
        assert resolve_loader(ds).dataset_facts.channels(ds) == 1
    for name in ("image_csv", "image_folder"):
        for gray, channels in (("true", 1), ("false", 3)):
            ds = compose_cfg(f"dataset={name}", f"dataset.grayscale={gray}").dataset
            assert resolve_loader(ds).dataset_facts.channels(ds) == channels
    assert resolve_loader(compose_cfg("dataset=xor").dataset).dataset_facts.channels is None


def test_memory_estimate_asks_the_optimizer_for_its_state(compose_cfg):
    from mlprunner.config import estimate_memory

    params = 64 * 100 + 100 + 100 * 10 + 10  # digits: 64 -> 100 -> 10
    for optim, ratio in (("sgd", 0), ("sgd_momentum", 1), ("adam", 2), ("rmsprop", 1), ("adadelta", 2)):
        parts = estimate_memory(compose_cfg("dataset=digits", "model=mlp_100", f"optim={optim}"))
        assert parts["parameters"] == parts["gradients"] == 4 * params
        assert parts["optimizer state"] == 4 * params * ratio, optim
    data = estimate_memory(compose_cfg("dataset=digits", "model=mlp_100"))["data"]
    assert data == 4 * 65 * 1797  # every example (train, validation, test) with its label
    subset = estimate_memory(compose_cfg("model=mlp_100", "dataset.subset=1000"))["data"]
    assert subset == 4 * 785 * (1000 + 10000)  # the subset, and the test set


def test_data_that_fails_only_when_read_leaves_results_json_failed(ctx, workdir):
    fresh = workdir / "late"
    proc = run_mlprun(
        "dataset=image_csv", f"dataset.csv={ctx['imgs']}/undecodable.csv", f"hydra.run.dir={fresh}", cwd=workdir
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "broken.png" in proc.stderr
    results = read_json(fresh / "results.json")
    assert results["status"] == "failed" and "broken.png" in results["reason"]


# --------------------------------------------------------------------------- a full disk


def _mount_tmpfs(folder: Path, size_kb: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): needs root")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("mount") is None, reason="needs Linux mount")
def test_full_disk_during_a_checkpoint_write(tmp_path):
    """A run on a small tmpfs: epoch 1 is saved; then the disk is filled so that epoch 2's
    last.pt cannot be written. The message names the file and the cause, the previous last.pt
    stays loadable (atomic writes), results.json says failed and why; with space freed,
    resume= completes the run."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, 16 * 1024)
    try:
        run_dir = disk / "run"
        args = [*DIGITS, "model.hidden=[256]", "trainer.checkpoint.save_best=false"]
        run_mlprun(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True)
        last = run_dir / "checkpoints" / "last.pt"
        saved = hashlib.sha256(last.read_bytes()).hexdigest()
        st = os.statvfs(disk)
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - last.stat().st_size // 2))

        proc = run_mlprun(f"resume={run_dir}", "trainer.epochs=3", cwd=tmp_path, timeout=300)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "Traceback" not in proc.stdout + proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlprun: error: ")]
        assert lines == [f"mlprun: error: no space left on device while writing {last}"], proc.stderr[-2000:]
        assert hashlib.sha256(last.read_bytes()).hexdigest() == saved
        state = torch.load(last, map_location="cpu", weights_only=True)
        assert state["epoch"] == 1
        results = json.loads((run_dir / "results.json").read_text())
        assert results["status"] == "failed"
        assert f"no space left on device while writing {last}" in results["reason"]
        assert not list(last.parent.glob(".*.tmp"))  # the half-written temp file is gone

        filler.unlink()
        proc = run_mlprun(f"resume={run_dir}", "trainer.epochs=3", cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results = json.loads((run_dir / "results.json").read_text())
        assert results["status"] == "completed" and results["epochs_completed"] == 3
        assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 3
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
