"""Test-set evaluation, mlprun-eval, mlprun-predict, SWA and augmentation: real runs, real files."""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import QUICK, mlprun_env, read_json, requires_mnist, run_mlprun, run_mlprun_together, scalars
from mlprunner.results import wilson_interval

MNIST_QUICK = [
    *QUICK,
    "dataset=mnist",
    "dataset.subset=3000",
    "trainer.epochs=2",
    "model.hidden=[64]",
    "trainer.threads=1",
    "trainer.tensorboard.histograms=false",
]


NAMES = [
    "0 - zero",
    "1 - one",
    "2 - two",
    "3 - three",
    "4 - four",
    "5 - five",
    "6 - six",
    "7 - seven",
    "8 - eight",
    "9 - nine",
]  # torchvision's MNIST class names


def wilson_by_bisection(errors: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson interval from its definition: every p with |phat - p| <= z*sqrt(p(1-p)/n).

    Found by bisection on each side of phat, independently of results.wilson_interval's formula.
    """
    phat = errors / n

    def inside(p):
        return abs(phat - p) <= z * math.sqrt(p * (1 - p) / n)

    def edge(lo, hi):  # inside(lo) != inside(hi)
        want = inside(lo)
        for _ in range(200):
            mid = (lo + hi) / 2
            if inside(mid) == want:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    low = 0.0 if inside(0.0) or errors == 0 else edge(phat, 0.0)
    high = 1.0 if inside(1.0) or errors == n else edge(phat, 1.0)
    return low, high


def run_tool(tool: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**mlprun_env(), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", f"mlprunner.{tool}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file(), path
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] > 100 and img.size[1] > 100


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """One short MNIST run on all of a 3000-image subset (val_fraction=0), evaluated on the test set."""
    if os.environ.get("MLPRUN_DATA") is None:
        pytest.skip("MLPRUN_DATA not set")
    cwd = tmp_path_factory.mktemp("mnist_eval")
    run_dir = cwd / "run"
    proc = run_mlprun(
        *MNIST_QUICK, "dataset.val_fraction=0", "eval.test=true", f"hydra.run.dir={run_dir}", cwd=cwd, check=True
    )
    return run_dir, proc


@requires_mnist
@pytest.mark.slow
def test_test_metrics_and_wilson_interval(mnist_run):
    run_dir, proc = mnist_run
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed"
    assert res["dataset"]["n_val"] == 0 and res["dataset"]["n_train"] == 3000
    # no validation set: best is the last epoch, and that is what was evaluated
    assert res["best"]["epoch"] == res["epochs_completed"] == 2
    test = res["test"]
    for key in ("error", "accuracy", "f1", "auroc", "n", "ci95", "loss", "per_class_error"):
        assert key in test, key
    # macro F1 as torchmetrics scores the same predictions (rebuilt from the confusion matrix)
    from torchmetrics.classification import MulticlassF1Score

    counts = torch.tensor(test["confusion"])
    truth = torch.arange(10).repeat_interleave(counts.sum(1))
    pred = torch.cat([torch.arange(10).repeat_interleave(row) for row in counts])
    assert test["f1"] == pytest.approx(float(MulticlassF1Score(10, average="macro")(pred, truth)), abs=1e-6)
    from torchmetrics.classification import MulticlassPrecision, MulticlassRecall

    precision = float(MulticlassPrecision(10, average="macro")(pred, truth))
    recall = float(MulticlassRecall(10, average="macro")(pred, truth))
    assert test["precision"] == pytest.approx(precision, abs=1e-6) and test["recall"] == pytest.approx(recall, abs=1e-6)
    assert test["n"] == 10000
    assert test["checkpoint"] == "last" and test["epoch"] == 2
    assert math.isclose(test["error"] + test["accuracy"], 1.0)
    assert test["errors"] == round(test["error"] * 10000)
    assert 0 < test["error"] < 0.2 and test["loss"] > 0
    lo, hi = test["ci95"]
    ref_lo, ref_hi = wilson_by_bisection(test["errors"], test["n"])
    assert lo == pytest.approx(ref_lo, abs=1e-9) and hi == pytest.approx(ref_hi, abs=1e-9)
    assert lo < test["error"] < hi
    # per-class error agrees with the confusion matrix and with the overall error
    cm = torch.tensor(test["confusion"])
    assert cm.sum() == 10000 and int(cm.trace()) == 10000 - test["errors"]
    per = test["per_class_error"]
    assert list(per) == NAMES  # keyed by class name, in class order
    for c, name in enumerate(NAMES):
        assert per[name] == pytest.approx(1 - cm[c, c].item() / cm[c].sum().item())
    # the console line
    line = f"test error {100 * test['error']:.2f}% (95% CI {100 * lo:.2f}-{100 * hi:.2f}%, n=10000)"
    assert line in proc.stdout
    assert re.search(r"test error \d+\.\d\d% \(95% CI \d+\.\d\d-\d+\.\d\d%, n=10000\)", proc.stdout)
    # once as a line, once as the closing table's row with its interval (not a third time)
    assert proc.stdout.count("test error") == 1, proc.stdout
    row = next(ln for ln in proc.stdout.splitlines() if "test (n=10000)" in ln)
    assert f"{100 * test['error']:.2f}%" in row and f"{100 * lo:.2f}-{100 * hi:.2f}%" in row


@requires_mnist
@pytest.mark.slow
def test_pngs_and_tensorboard_figures(mnist_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = mnist_run
    assert_png(run_dir / "learning_curves.png")
    assert_png(run_dir / "confusion_matrix.png")
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "Test/confusion_matrix" in tags["images"] and "Test/roc_curves" in tags["images"]
    (roc,) = acc.Images("Test/roc_curves")
    assert roc.width >= 600 and roc.height >= 550  # one figure of the ten classes' curves
    pr = [t for t in tags["tensors"] if t.startswith("PR/test/")]
    assert sorted(pr) == sorted(f"PR/test/{name}" for name in NAMES)
    assert "Error/test" in tags["scalars"]


@requires_mnist
@pytest.mark.slow
def test_test_set_not_read_unless_asked(tmp_path):
    """A dataset root whose test files are garbage: training works; eval.test=true fails clearly."""
    src = Path(os.environ["MLPRUN_DATA"]) / "MNIST" / "raw"
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).symlink_to(src / name)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"not an idx file")  # present (torchvision checks) but unreadable
    common = [*MNIST_QUICK, "trainer.epochs=1", f"dataset.root={tmp_path / 'data'}", "dataset.download=false"]
    ok = run_mlprun(*common, "eval.test=false", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    res = read_json(tmp_path / "a" / "results.json")
    assert res["status"] == "completed" and "test" not in res
    assert not (tmp_path / "a" / "confusion_matrix.png").exists()

    bad = run_mlprun(*common, "eval.test=true", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert bad.returncode == 1
    err = bad.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlprun: error:"), bad.stderr
    assert "MNIST" in err[0] and "Traceback" not in bad.stderr
    res = read_json(tmp_path / "b" / "results.json")
    assert res["status"] == "failed" and res["reason"].startswith("test evaluation")
    assert (tmp_path / "b" / "checkpoints" / "last.pt").is_file()  # the training itself is kept


@requires_mnist
@pytest.mark.slow
def test_mlprun_eval_reports_the_same_and_leaves_results_alone(mnist_run, tmp_path):
    run_dir, _ = mnist_run
    before = (run_dir / "results.json").read_bytes()
    test = read_json(run_dir / "results.json")["test"]
    out = tmp_path / "eval.json"
    proc = run_tool("evaluate", str(run_dir), "--json", str(out), "--plot", str(tmp_path / "cm.png"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lo, hi = test["ci95"]
    assert f"test error {100 * test['error']:.2f}% (95% CI {100 * lo:.2f}-{100 * hi:.2f}%, n=10000)" in proc.stdout
    again = read_json(out)
    assert again["errors"] == test["errors"] and again["ci95"] == pytest.approx(test["ci95"])
    assert again["confusion"] == test["confusion"]
    assert_png(tmp_path / "cm.png")
    assert (run_dir / "results.json").read_bytes() == before
    # a checkpoint file works as well as the run directory
    proc = run_tool("evaluate", str(run_dir / "checkpoints" / "last.pt"), cwd=tmp_path)
    assert proc.returncode == 0 and "n=10000" in proc.stdout

    # bad arguments: one line, exit 2; a file that is no checkpoint: one line, exit 1
    for args, code in (
        [[str(tmp_path / "missing")], 2],
        [[str(tmp_path)], 2],
        [[str(run_dir), "dataset.mean=[0]"], 2],
        [[str(run_dir / "results.json")], 1],
    ):
        proc = run_tool("evaluate", *args, cwd=tmp_path)
        assert proc.returncode == code, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mlprun-eval: error:"), proc.stderr
    if not torch.cuda.is_available():  # the option the user gave is named, not trainer.device
        proc = run_tool("evaluate", str(run_dir), "--device", "cuda", cwd=tmp_path)
        assert proc.returncode == 1 and "mlprun-eval: error: --device=cuda: CUDA is not available" in proc.stderr


@requires_mnist
@pytest.mark.slow
def test_predict_labels_test_pngs_like_the_evaluation(mnist_run, tmp_path):
    import torchvision
    from PIL import Image

    from mlprunner.evaluate import load_run, load_test_split, predict_split

    run_dir, _ = mnist_run
    # The evaluation's own predictions on the first 40 test images.
    loaded = load_run(str(run_dir), device="cpu")
    _, split = load_test_split(loaded)
    preds, probs, _ = predict_split(loaded.model, loaded.loss, split)
    # The same images as PNG files, as a user would have them.
    raw = torchvision.datasets.MNIST(os.environ["MLPRUN_DATA"], train=False, download=False).data[:40]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(raw):
        Image.fromarray(img.numpy(), mode="L").save(folder / f"{i:03d}.png")
    out = tmp_path / "pred.csv"
    proc = run_tool("predict", str(run_dir), folder.name, "--csv", out.name, cwd=tmp_path)  # as typed here
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["path"]).name for r in rows] == [f"{i:03d}.png" for i in range(40)]
    assert [r["predicted"] for r in rows] == [NAMES[i] for i in preds[:40].tolist()]
    assert [float(r["p1"]) for r in rows] == pytest.approx(probs[:40].max(1).values.tolist(), abs=1e-4)
    assert all(r["top1"] == r["predicted"] and r["top3"] for r in rows)
    assert len([ln for ln in proc.stdout.splitlines() if "top-3:" in ln]) == 40
    assert max(map(len, proc.stdout.splitlines())) <= 80  # top-k folded, not wrapped mid-word (no terminal: 80)
    assert "note:" not in proc.stderr  # MNIST-like images: nothing to say
    # a dark-on-light scan: a note says --invert; with --invert it is predicted as the original
    Image.fromarray(255 - raw[0].numpy(), mode="L").save(tmp_path / "scan.png")
    proc = run_tool("predict", str(run_dir), "scan.png", cwd=tmp_path)
    assert proc.returncode == 0 and "1 of 1 image(s) are light on the whole" in proc.stderr, proc.stderr
    assert "pass --invert" in proc.stderr
    proc = run_tool("predict", str(run_dir), "scan.png", "--invert", "--csv", "inv.csv", cwd=tmp_path)
    assert proc.returncode == 0 and "note:" not in proc.stderr, proc.stderr
    assert next(csv.DictReader((tmp_path / "inv.csv").open()))["predicted"] == rows[0]["predicted"]
    # a 3-channel 56x56 image is converted to grayscale and resized like the training data
    Image.fromarray(raw[0].numpy(), mode="L").convert("RGB").resize((56, 56)).save(tmp_path / "big.png")
    proc = run_tool("predict", str(run_dir), str(tmp_path / "big.png"), cwd=tmp_path)
    assert proc.returncode == 0 and "top-3:" in proc.stdout
    # errors: one line
    proc = run_tool("predict", str(run_dir), str(tmp_path / "nothing.png"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("mlprun-predict: error:")
    (tmp_path / "junk.png").write_bytes(b"junk")
    proc = run_tool("predict", str(run_dir), str(tmp_path / "junk.png"), cwd=tmp_path)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- SWA (digits)

SWA = [
    *QUICK,
    "dataset=digits",
    "model.hidden=[64]",
    "trainer.threads=1",
    "trainer.swa.enabled=true",
    "trainer.swa.start_epoch=3",
    "trainer.swa.lr=0.0005",
    "trainer.swa.anneal_epochs=2",
    "eval.test=true",
]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_swa_averages_and_survives_resume(workdir):
    straight, part = run_mlprun_together(
        [*SWA, "trainer.epochs=6", "hydra.run.dir=a"], [*SWA, "trainer.epochs=4", "hydra.run.dir=b"], cwd=workdir
    )
    assert straight.returncode == 0, straight.stderr
    res = read_json(workdir / "a" / "results.json")
    assert res["swa"]["start_epoch"] == 3 and res["swa"]["n_averaged"] == 4  # epochs 3..6
    # the plan before training, the averaged model's score after it, and its row in the table
    assert "SWA: epochs 3-6 averaged, SWALR to lr 0.0005 (cos, 2 epochs)" in straight.stdout
    said = f"SWA of 4 epoch(s) from 3: val error {100 * res['swa']['val']['error']:.2f}%"
    assert said in straight.stdout and "val (swa)" in straight.stdout
    assert max(len(line) for line in straight.stdout.splitlines() if line.startswith("SWA")) <= 80
    # TensorBoard has the averaged model's score too (beside the HParams metrics)
    tb = scalars(workdir / "a" / "tensorboard")
    assert tb["hparam/swa_val_error"] == [(6, pytest.approx(res["swa"]["val"]["error"]))]
    assert res["test"]["checkpoint"] == "swa"
    lrs = [h["lr"] for h in res["history"]]
    assert lrs[-1] == pytest.approx(0.0005)  # SWALR annealed to trainer.swa.lr
    swa = _load(workdir / "a" / "checkpoints" / "swa.pt")
    last = _load(workdir / "a" / "checkpoints" / "last.pt")
    assert swa["swa"]["n_averaged"] == 4
    # the averaged weights are not the last weights
    assert not torch.equal(swa["model"]["0.weight"], last["model"]["0.weight"])

    assert part.returncode == 0, part.stderr
    resumed = run_mlprun("resume=b", "trainer.epochs=6", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    swa_b = _load(workdir / "b" / "checkpoints" / "swa.pt")
    for key, value in swa["model"].items():
        assert torch.equal(value, swa_b["model"][key]), key
    assert read_json(workdir / "b" / "results.json")["test"]["errors"] == res["test"]["errors"]


@pytest.mark.slow
def test_swa_updates_batchnorm_statistics(workdir):
    from omegaconf import OmegaConf

    from mlprunner.data import load_data
    from mlprunner.models import MLP

    proc = run_mlprun(
        *SWA, "model.batchnorm=true", "trainer.epochs=4", "eval.test=false", "hydra.run.dir=bn", cwd=workdir
    )
    assert proc.returncode == 0, proc.stderr
    swa = _load(workdir / "bn" / "checkpoints" / "swa.pt")
    cfg = OmegaConf.create(swa["config"])
    data = load_data(cfg.dataset, "cpu")
    model = MLP(
        data.num_features, data.num_classes, hidden=list(cfg.model.hidden), batchnorm=True, dropout=cfg.model.dropout
    )
    model.load_state_dict(swa["model"])
    # recompute the statistics of the averaged weights independently: one cumulative pass
    bn = model[1]
    bn.reset_running_stats()
    bn.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(data.train), 1000):
            model(data.train.x[i : i + 1000])
    assert torch.allclose(bn.running_mean, swa["model"]["1.running_mean"], atol=1e-5)
    assert torch.allclose(bn.running_var, swa["model"]["1.running_var"], rtol=1e-4, atol=1e-5)


def test_swa_start_epoch_is_validated(workdir):
    proc = run_mlprun(*SWA, "trainer.epochs=4", "trainer.swa.start_epoch=9", "hydra.run.dir=x", cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "trainer.swa.start_epoch" in proc.stderr


# --------------------------------------------------------------------------- augmentation


def test_random_affine_unit():
    from mlprunner.augment import RandomAffine

    torch.manual_seed(0)
    x = torch.rand(16, 3 * 8 * 8)
    assert torch.allclose(RandomAffine((3, 8, 8), 0, 0, 0)(x), x, atol=1e-5)  # nothing to do
    aug = RandomAffine((1, 8, 8), max_shift=1, mean=[0.5], std=[0.25])
    x = (torch.rand(32, 64) - 0.5) / 0.25
    torch.manual_seed(1)
    a = aug(x.clone())
    torch.manual_seed(1)
    b = aug(x.clone())
    assert torch.equal(a, b) and a.shape == x.shape  # randomness only from the global RNG
    assert not torch.allclose(a, x)
    # an exact one-pixel shift to the left; the column moved in is black (0 -> -2 normalised)
    aug.theta = lambda n, device, dtype=torch.float32: torch.tensor([[[1.0, 0, 2 / 8], [0, 1.0, 0]]]).repeat(n, 1, 1)
    out = aug(x).view(32, 8, 8)
    ref = x.view(32, 8, 8)
    assert torch.allclose(out[:, :, :-1], ref[:, :, 1:], atol=1e-5)
    assert torch.allclose(out[:, :, -1], torch.full((32, 8), -2.0), atol=1e-5)


AUG = [
    *QUICK,
    "dataset=digits",
    "model.hidden=[64]",
    "trainer.threads=1",
    "dataset.augment.enabled=true",
    "dataset.augment.max_shift=1",
    "dataset.augment.max_rotate=10",
    "dataset.augment.max_scale=0.1",
]


@pytest.mark.slow
def test_augmented_training_is_exact_across_resume(workdir):
    a, plain, b = run_mlprun_together(
        [*AUG, "trainer.epochs=4", "hydra.run.dir=a"],
        [
            *QUICK,
            "dataset=digits",
            "model.hidden=[64]",
            "trainer.threads=1",
            "trainer.epochs=1",  # only its first epoch is compared (no scheduler: the same epoch as in a longer run)
            "hydra.run.dir=p",
        ],
        [*AUG, "trainer.epochs=2", "hydra.run.dir=b"],
        cwd=workdir,
    )
    assert a.returncode == 0, a.stderr
    assert "augmentation: RandomAffine" in a.stdout
    assert plain.returncode == 0
    hist_a = read_json(workdir / "a" / "results.json")["history"]
    hist_p = read_json(workdir / "p" / "results.json")["history"]
    assert hist_a[0]["train"]["loss"] != hist_p[0]["train"]["loss"]  # the batches really changed
    assert hist_a[0]["val"] is not None
    assert b.returncode == 0, b.stderr
    r = run_mlprun("resume=b", "trainer.epochs=4", cwd=workdir)
    assert r.returncode == 0, r.stderr
    wa = _load(workdir / "a" / "checkpoints" / "last.pt")["model"]
    wb = _load(workdir / "b" / "checkpoints" / "last.pt")["model"]
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_augmentation_needs_images(workdir):
    proc = run_mlprun(*QUICK, "dataset=xor", "+dataset.augment.enabled=true", "hydra.run.dir=x", cwd=workdir)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dataset.augment" in lines[0]


def test_test_without_best_checkpoint_is_labelled_last(tmp_path):
    """eval.checkpoint=best with trainer.checkpoint.save_best=false: no best.pt exists, so the
    model tested is the last epoch's, and results.json and the log say so."""
    run_dir = tmp_path / "run"
    proc = run_mlprun(
        *QUICK,
        "dataset=digits",
        "trainer.threads=1",
        "trainer.epochs=8",
        "optim.lr=0.02",
        "eval.test=true",
        "trainer.checkpoint.save_best=false",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        check=True,
    )
    res = read_json(run_dir / "results.json")
    assert res["best"]["epoch"] < 8  # the best epoch is not the last one: a wrong label would show
    assert res["test"]["checkpoint"] == "last" and res["test"]["epoch"] == 8
    out = proc.stdout + proc.stderr
    assert "[last checkpoint, epoch 8]" in out and "[best checkpoint" not in out
    assert "trainer.checkpoint.save_best=false" in out and "last epoch's weights" in out
    assert not (run_dir / "checkpoints" / "best.pt").exists()


# --------------------------------------------------------------------------- mlprun-report's files


def test_report_rewrites_its_own_files_and_refuses_the_users(tmp_path, capsys):
    """mlprun-report rewrites summary.csv/summary.md/figures it wrote itself, and refuses (one
    line naming the file and --force, exit 2, nothing changed) a file of those names it did not
    write, or one the user edited since; --force overwrites. (The report in this process.)"""
    from mlprunner.cli import report_main

    mix = tmp_path / "mix"
    common = [*QUICK, "dataset=digits", "model.hidden=[16]", "trainer.threads=1", "trainer.epochs=2"]
    run_mlprun_together(
        *[
            [*common, "trainer.tensorboard.enabled=false", f"trainer.seed={s}", f"hydra.run.dir={mix / f's{s}'}"]
            for s in (0, 1)
        ],
        cwd=tmp_path,
        check=True,
    )

    def report(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            report_main([str(mix), "--quiet", *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, exit_.value.code, out.out, out.err)

    def refused(proc, name: str) -> None:
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mlprun-report: error:"), proc.stderr
        assert str(mix / name) in lines[0] and "--force" in lines[0]

    (mix / "summary.md").write_text("notes\n")
    refused(report("--no-plots"), "summary.md")
    assert (mix / "summary.md").read_text() == "notes\n" and not (mix / "summary.csv").exists()

    (mix / "summary.md").unlink()
    assert report().returncode == 0  # a fresh folder
    assert (mix / "summary.md").read_text().startswith("# Sweep summary:")
    assert_png(mix / "val_curves.png")
    again = report()  # its own files: rewritten without a word
    assert again.returncode == 0 and again.stderr.strip() == "", again.stderr

    with open(mix / "summary.md", "a") as fh:
        fh.write("my notes on these runs\n")  # the user's now
    edited = (mix / "summary.md").read_bytes()
    refused(report("--no-plots"), "summary.md")
    assert (mix / "summary.md").read_bytes() == edited
    (mix / "summary.md").unlink()

    (mix / "val_curves.png").write_bytes(b"my own figure")
    before = {p.name: p.read_bytes() for p in mix.iterdir() if p.is_file()}
    refused(report(), "val_curves.png")
    assert {p.name: p.read_bytes() for p in mix.iterdir() if p.is_file()} == before
    assert report("--no-plots").returncode == 0  # the figure is not written: nothing to refuse
    assert (mix / "val_curves.png").read_bytes() == b"my own figure"

    assert report("--force").returncode == 0
    assert_png(mix / "val_curves.png")
    assert report().returncode == 0  # what --force wrote is mlprun's own from now on


def test_figures_of_the_same_name_written_at_once_do_not_collide(tmp_path):
    """Two writers of one PNG at the same moment (the second starts while the first is still
    saving) each use a temp file of their own: both succeed, no temp file is left; a failing
    write leaves the old figure and no temp file."""
    from mlprunner.plots import _plt, write_png

    plt = _plt()
    path = tmp_path / "val_curves.png"
    first, second = plt.figure(), plt.figure()

    class SavesWhileAnotherSaves:
        def savefig(self, fh, **kwargs):
            write_png(second, path)  # the other process's write, in the middle of this one
            first.savefig(fh, **kwargs)

    write_png(SavesWhileAnotherSaves(), path)
    assert_png_bytes = path.read_bytes()
    assert assert_png_bytes.startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val_curves.png"]

    class Fails:
        def savefig(self, fh, **kwargs):
            fh.write(b"half a figure")
            raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError, match="drawing failed"):
        write_png(Fails(), path)
    assert path.read_bytes() == assert_png_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val_curves.png"]
    plt.close(first)
    plt.close(second)


def test_eval_and_predict_refuse_non_positive_counts(tmp_path, capsys):
    """--batch-size 0 / --top 0: one line naming the flag, exit 2 (checked before the run is
    read). (In this process.)"""
    from mlprunner.cli import eval_main, predict_main

    for main, args, flag in (
        (eval_main, ["--batch-size", "0"], "--batch-size"),
        (predict_main, ["x.png", "--top", "0"], "--top"),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main([str(tmp_path / "missing"), *args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"{flag} must be a positive integer" in lines[0], err


def test_batchnorm_leaves_out_a_last_batch_of_one_sample(workdir):
    """BatchNorm cannot normalise one sample in training ("Expected more than 1 value per
    channel"): with 1294 digits and batch 431 the last batch of one sample is left out of each
    epoch (said once in the log), and SWA's BatchNorm pass over batches of 431 ends without one."""
    proc = run_mlprun(
        *SWA,
        "model.batchnorm=true",
        "trainer.epochs=4",
        "trainer.batch_size=431",
        "trainer.eval_batch_size=431",
        "eval.test=false",
        "hydra.run.dir=bn1",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("the last training batch would hold 1 sample (1294 samples") == 1, proc.stdout
    assert _load(workdir / "bn1" / "checkpoints" / "last.pt")["step"] == 4 * 3  # three full batches an epoch
    assert (workdir / "bn1" / "checkpoints" / "swa.pt").is_file()


def test_report_drops_its_own_figures_that_no_longer_apply(tmp_path):
    """A figure an earlier report drew and this one does not (a swept key left with one value)
    is removed with the rewrite, so the folder's figures match summary.md; the user's own PNG of
    such a name stays. --no-plots keeps the earlier figures and says they are older."""
    sweep = tmp_path / "sweep"
    common = [*QUICK, "dataset=digits", "model.hidden=[16]", "trainer.threads=1", "trainer.epochs=2"]
    run_mlprun_together(
        *[[*common, f"optim.lr={lr}", f"hydra.run.dir={sweep / f'lr{lr}'}"] for lr in (0.01, 0.001)],
        cwd=tmp_path,
        check=True,
    )
    first = run_tool("report", str(sweep), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    figure = sweep / "val_error_vs_optim.lr.png"
    assert_png(figure)
    assert_png(sweep / "val_curves.png")

    quiet = run_tool("report", "--no-plots", str(sweep), cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "plots (.png): not drawn (--no-plots); val_curves, val_error_vs_optim.lr are from an earlier report" in (
        quiet.stdout
    )
    assert figure.is_file()
    narrow = run_tool("report", str(sweep), cwd=tmp_path, env={"COLUMNS": "40"})
    listed = narrow.stdout[narrow.stdout.index("plots (.png):") :].splitlines()[:2]
    assert listed == ["plots (.png): val_error_vs_optim.lr,", "  val_curves"], narrow.stdout  # names whole

    shutil.rmtree(sweep / "lr0.001")  # one learning rate left: nothing to draw against it
    again = run_tool("report", str(sweep), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert not figure.exists() and "plots (.png): val_curves\n" in again.stdout
    assert "val_error_vs_optim.lr" not in (sweep / "summary.md").read_text()

    figure.write_bytes(b"my own figure")  # not the report's: never removed
    assert run_tool("report", str(sweep), cwd=tmp_path).returncode == 0
    assert figure.read_bytes() == b"my own figure"


def test_eval_split_val_gives_what_training_logged_and_train_scores_the_training_split(tmp_path):
    """mlprun-eval --split val rebuilds the validation split as training drew it: the best
    checkpoint's metrics equal results.json's best val metrics; --split train scores the training
    split in eval mode (its n is n_train); a run without a validation split refuses --split val."""
    run_dir = tmp_path / "run"
    common = [*QUICK, "dataset=digits", "model.hidden=[16]", "trainer.threads=1", "trainer.epochs=2"]
    run_mlprun(*common, f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True)
    res = read_json(run_dir / "results.json")
    out = tmp_path / "val.json"
    proc = run_tool("evaluate", str(run_dir), "--split", "val", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    val, best = read_json(out), res["best"]["val"]
    assert val["split"] == "val" and val["n"] == res["dataset"]["n_val"]
    assert val["error"] == pytest.approx(best["error"], abs=1e-6) and val["loss"] == pytest.approx(
        best["loss"], rel=1e-5
    )
    assert "val error " in proc.stdout

    proc = run_tool("evaluate", str(run_dir), "--split", "train", "--json", str(tmp_path / "train.json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    train = read_json(tmp_path / "train.json")
    assert train["split"] == "train" and train["n"] == res["dataset"]["n_train"] and 0 <= train["error"] < 1

    no_val = tmp_path / "no_val"
    run_mlprun(*common, "dataset.val_fraction=0", f"hydra.run.dir={no_val}", cwd=tmp_path, check=True)
    proc = run_tool("evaluate", str(no_val), "--split", "val", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "mlprun-eval: error: --split val: this run has no validation split (dataset.val_fraction=0); "
        "allowed: test, train"
    ], proc.stderr


def test_swa_anneals_linearly_when_asked(tmp_path):
    """trainer.swa.anneal_strategy=linear (lecture notes 004): SWALR's learning rate goes in a
    straight line from the optimizer's to swa.lr over anneal_epochs (cos was the only path)."""
    run_dir = tmp_path / "run"
    args = [*SWA, "trainer.epochs=5", "trainer.swa.anneal_epochs=4", "trainer.swa.anneal_strategy=linear"]
    run_mlprun(*args, "optim.lr=0.001", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True)
    lrs = [h["lr"] for h in read_json(run_dir / "results.json")["history"]]
    # the lr after each epoch: SWA epochs 3, 4, 5 step 1e-3 -> 5e-4 in 4 equal steps of 1.25e-4
    # (cos would give 0.000927 after epoch 3)
    assert lrs == pytest.approx([0.001, 0.001, 0.000875, 0.00075, 0.000625]), lrs


def test_eval_whose_reader_has_gone_stops_quietly(tmp_path):
    """`mlprun-eval run | head -1` where head has exited: no 'unexpected BrokenPipeError' line,
    exit 1 (as rich's tables and Python's documentation do)."""
    run_dir = tmp_path / "run"
    common = [*QUICK, "dataset=digits", "model.hidden=[16]", "trainer.threads=1", "trainer.epochs=1"]
    run_mlprun(*common, "trainer.tensorboard.enabled=false", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mlprunner.evaluate", str(run_dir)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=mlprun_env(),
            timeout=300,
        )
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("errors, n", [(0, 100), (0, 10000), (1, 100), (100, 100)])
def test_wilson_interval_matches_its_definition_at_the_edges(errors, n):
    """No error at all: the lower end is exactly 0 (the closed form gave 4e-19)."""
    lo, hi = wilson_interval(errors, n)
    ref_lo, ref_hi = wilson_by_bisection(errors, n)
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi), abs=1e-12)
    if errors == 0:
        assert lo == 0.0


def test_mlprun_eval_of_a_sweep_folder_names_its_runs_and_the_report(mnist_run, tmp_path):
    run_dir, _ = mnist_run
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    shutil.copytree(run_dir / "checkpoints", sweep / "optim.lr=0.01" / "checkpoints")
    proc = run_tool("evaluate", str(sweep), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert line == (
        f"mlprun-eval: error: {sweep} is a sweep folder: give one of its 1 run folder(s) "
        f"(e.g. {sweep / 'optim.lr=0.01'}); its table: mlprun-report {sweep}"
    ), line
