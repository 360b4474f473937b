"""Speed tooling: scripts/bench.py, trainer.profile, the metrics fast path, compile/bf16, CUDA.

No timed assertions: these tests check that the benchmark and the profiler produce complete,
well-formed output, and that the fast paths compute the same numbers as the slow ones.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, mnist_root, read_json, requires_mnist

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_in_process(run_dir: Path, *overrides: str) -> dict:
    """mlprunner.run.run() on a Hydra-composed digits config (one thread, quiet)."""
    from hydra import compose, initialize_config_module

    from mlprunner.config import register_resolvers
    from mlprunner.run import run

    register_resolvers()
    with initialize_config_module("mlprunner.configs", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "dataset=digits",
                "model=mlp_100",
                "trainer.progress=none",
                "trainer.tensorboard.graph=false",
                "trainer.threads=1",
                *overrides,
            ],
        )
    return run(cfg, run_dir)


def run_bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), *args, "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"bench.py exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "c/b =" in proc.stdout and "a/c =" in proc.stdout
    return json.loads(out.read_text())


def check_bench_json(result: dict, n_train: int, device: str = "cpu", ways: str = "abc") -> None:
    assert result["device"].startswith(device)
    assert result["job"]["n_train"] == n_train
    assert set(result["ways"]) == set(ways)
    for way in result["ways"].values():
        assert way["s_per_epoch"] > 0
        assert math.isclose(way["samples_per_s"], n_train / way["s_per_epoch"], rel_tol=1e-3)
        assert len(way["reps_s_per_epoch"]) == result["job"]["reps"]
        assert all(len(rep) == result["job"]["epochs"] for rep in way["epochs_s"])
        assert len(way["probe_ms"]) == result["job"]["reps"] and all(p > 0 for p in way["probe_ms"])
    ways = result["ways"]
    assert math.isclose(result["ratios"]["c/b"], ways["c"]["s_per_epoch"] / ways["b"]["s_per_epoch"], rel_tol=1e-2)
    assert math.isclose(result["ratios"]["a/c"], ways["a"]["s_per_epoch"] / ways["c"]["s_per_epoch"], rel_tol=1e-2)
    reps = {w: ways[w]["reps_s_per_epoch"] for w in ways}
    for num, den in (("c", "b"), ("a", "c")):
        per_rep = sorted(x / y for x, y in zip(reps[num], reps[den]))
        assert per_rep[0] - 1e-2 <= result["ratios_paired"][f"{num}/{den}"] <= per_rep[-1] + 1e-2


def test_bench_smoke_digits(tmp_path):
    """One short epoch of each way on the bundled digits, plus the fresh-process measurement."""
    result = run_bench(
        tmp_path,
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--reps",
        "1",
        "--threads",
        "1",
        "--c-override",
        "trainer.log_every_n_steps=7",
        "--startup-reps",
        "2",  # both orders (mlprun first, floor first)
    )
    check_bench_json(result, n_train=1294)
    assert result["job"]["c_overrides"] == ["trainer.log_every_n_steps=7"]
    assert "trainer.log_every_n_steps=7" in result["process"]["command"]
    proc = result["process"]
    assert proc["exit_code"] == 0, proc.get("log_tail")
    assert proc["startup_s"] > 0 and proc["floor_startup_s"] > 0
    assert len(proc["startup_s_reps"]) == len(proc["floor_startup_s_reps"]) == 2
    assert proc["startup_over_floor"] == round(proc["startup_s"] / proc["floor_startup_s"], 3)
    assert proc["peak_rss_mb"] > 100  # torch alone is several hundred MB


@requires_mnist
def test_bench_smoke_mnist_subset(tmp_path):
    result = run_bench(
        tmp_path,
        "--dataset",
        "mnist",
        "--subset",
        "1000",
        "--epochs",
        "1",
        "--reps",
        "1",
        "--threads",
        "1",
        "--no-process",
        "--data",
        str(mnist_root()),
    )
    check_bench_json(result, n_train=900)
    assert result["process"] is None


def test_bench_rejects_bad_options(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--ways", "xyz"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--ways" in proc.stderr


def test_profile_writes_table_and_trace(tmp_path):
    run_dir = tmp_path / "run"
    results = run_in_process(run_dir, "trainer.epochs=2", "trainer.profile=true")
    assert results["status"] == "completed"
    prof = read_json(run_dir / "profile.json")
    steps = 2 * math.ceil(1294 / 100)
    assert prof["steps"] == steps and prof["epochs"] == 2
    phases = prof["phases"]
    for name in ("data", "forward", "backward", "optimizer", "metrics", "logging", "validation", "epoch_end"):
        assert phases[name]["total_s"] >= 0
    assert phases["forward"]["total_s"] > 0 and phases["backward"]["total_s"] > 0
    assert math.isclose(sum(p["share"] for p in phases.values()), 1.0, abs_tol=1e-2)
    table = (run_dir / "profile.txt").read_text()
    for name in ("data", "forward", "backward", "optimizer", "metrics", "logging"):
        assert f"\n{name} " in table
    assert prof["trace"] == "profile_trace.json"
    trace = json.loads((run_dir / "profile_trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"mlprun/forward", "mlprun/backward", "mlprun/optimizer"} <= names
    assert any(n and n.startswith("aten::addmm") for n in names)


def test_no_profile_files_by_default(tmp_path):
    run_dir = tmp_path / "run"
    results = run_in_process(run_dir, "trainer.epochs=1")
    assert results["status"] == "completed"
    assert not (run_dir / "profile.json").exists() and not (run_dir / "profile_trace.json").exists()


def test_metrics_equal_torchmetrics():
    """The confusion-matrix fast path gives torchmetrics' micro accuracy and macro F1, precision and recall,
    including classes that never occur (they are left out of the macro mean)."""
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    from mlprunner.train import Metrics

    g = torch.Generator().manual_seed(0)
    for num_classes, absent in [(10, ()), (10, (3, 7)), (2, ()), (5, (0,))]:
        acc = MulticlassAccuracy(num_classes, average="micro")
        f1 = MulticlassF1Score(num_classes, average="macro")
        prec = MulticlassPrecision(num_classes, average="macro")
        rec = MulticlassRecall(num_classes, average="macro")
        ours = Metrics(num_classes, "cpu")
        total, count = 0.0, 0
        for n in (33, 100, 7):
            y = torch.randint(0, num_classes, (n,), generator=g)
            noise = torch.randint(0, num_classes, (n,), generator=g)
            p = torch.where(torch.rand(n, generator=g) < 0.6, y, noise)
            for a in absent:
                y[y == a] = (a + 1) % num_classes
                p[p == a] = (a + 1) % num_classes
            loss = torch.rand((), generator=g)
            total, count = total + float(loss) * n, count + n
            acc.update(p, y)
            f1.update(p, y)
            prec.update(p, y)
            rec.update(p, y)
            ours.update(loss, p, y)
        m = ours.compute()
        assert m["accuracy"] == pytest.approx(float(acc.compute()), abs=1e-6)
        assert m["error"] == pytest.approx(1 - float(acc.compute()), abs=1e-6)
        assert m["f1"] == pytest.approx(float(f1.compute()), abs=1e-6)
        assert m["precision"] == pytest.approx(float(prec.compute()), abs=1e-6)
        assert m["recall"] == pytest.approx(float(rec.compute()), abs=1e-6)
        assert m["loss"] == pytest.approx(total / count, rel=1e-6)
        assert ours.compute()["loss"] == 0.0  # compute() resets


@requires_mnist
def test_mnist_fast_reader_matches_torchvision():
    from torchvision.datasets import MNIST

    from mlprunner.data import MNIST_CLASSES, read_idx_pair

    root = mnist_root()
    for train in (True, False):
        x, y = read_idx_pair(root / "MNIST" / "raw", train)
        ds = MNIST(str(root), train=train, download=False)
        assert torch.equal(x, ds.data) and torch.equal(y, ds.targets)
    assert MNIST_CLASSES["mnist"] == MNIST.classes


def test_fast_reader_declines_bad_files(tmp_path):
    """Missing or malformed files are left to torchvision's path (and its error messages)."""
    from mlprunner.data import read_idx_pair

    assert read_idx_pair(tmp_path, True) is None
    (tmp_path / "train-images-idx3-ubyte").write_bytes((2051).to_bytes(4, "big") + bytes(12) + bytes(10))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + bytes(4))
    assert read_idx_pair(tmp_path, True) is None


def test_uint8_images_split_then_scaled_bit_for_bit():
    """MNIST's pixels stay uint8 until after the train/val split (less memory and copying);
    the splits, their normalisation and the test set must equal scaling the whole file first."""
    from omegaconf import OmegaConf

    from mlprunner.data import _finish

    g = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (500, 784), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (500,), generator=g)
    test = torch.randint(0, 256, (50, 784), dtype=torch.uint8, generator=g)
    for normalize in (True, False):
        cfg = OmegaConf.create(
            {
                "val_fraction": 0.1,
                "split_seed": 7,
                "subset": None,
                "normalize": normalize,
                "mean": [0.1307],
                "std": [0.3081],
            }
        )
        names = [str(i) for i in range(10)]
        raw = _finish(cfg, pixels, labels, 1, (1, 28, 28), names, "cpu", lambda: (test, labels[:50]), {})
        ref = _finish(
            cfg,
            pixels.float().div_(255.0),
            labels,
            1,
            (1, 28, 28),
            names,
            "cpu",
            lambda: (test.float().div_(255.0), labels[:50]),
            {},
        )
        for a, b in ((raw.train, ref.train), (raw.val, ref.val), (raw.load_test(), ref.load_test())):
            assert a.x.dtype == torch.float32 and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert (len(raw.train), len(raw.val)) == (450, 50)


def test_load_data_overlaps_other_work_and_raises_its_errors(tmp_path):
    """run() imports torch._dynamo while the data loads in a helper thread; the data must be
    the same as loaded directly, and a loader's error must reach the caller unchanged."""
    import threading

    from hydra import compose, initialize_config_module

    from mlprunner.config import register_resolvers
    from mlprunner.data import load_data
    from mlprunner.errors import DatasetError

    register_resolvers()
    with initialize_config_module("mlprunner.configs", version_base="1.3"):
        digits = compose("config", overrides=["dataset=digits"]).dataset
        missing = compose(
            "config", overrides=["dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false"]
        ).dataset
    ran_in = []
    direct = load_data(digits, "cpu")
    overlapped = load_data(digits, "cpu", meanwhile=lambda: ran_in.append(threading.current_thread()))
    assert ran_in == [threading.main_thread()]
    for a, b in ((direct.train, overlapped.train), (direct.val, overlapped.val)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    with pytest.raises(DatasetError, match="MNIST not found"):
        load_data(missing, "cpu", meanwhile=lambda: None)


def test_training_pauses_automatic_gc_and_restores_it(tmp_path):
    """fit() runs with Python's automatic GC off (one young collection per epoch instead) and
    gives the previous setting back, also when it was off and when training fails."""
    import gc

    from mlprunner.train import young_gc_only

    seen = []

    def watch(phase, info):
        if phase == "start":
            seen.append((gc.isenabled(), info["generation"]))

    gc.callbacks.append(watch)
    try:
        results = run_in_process(tmp_path / "run", "trainer.epochs=3")
    finally:
        gc.callbacks.remove(watch)
    assert results["epochs_completed"] == 3 and gc.isenabled()
    paused = [generation for enabled, generation in seen if not enabled]
    assert paused.count(1) >= 3 and set(paused) == {1}  # the per-epoch collections, no full ones
    gc.disable()
    try:
        with pytest.raises(RuntimeError):
            with young_gc_only():
                raise RuntimeError("boom")
        assert not gc.isenabled()
    finally:
        gc.enable()
    with young_gc_only():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_bf16_autocast_on_cpu(tmp_path):
    results = run_in_process(tmp_path / "run", "trainer.epochs=2", "trainer.precision=bf16")
    assert results["status"] == "completed"
    assert math.isfinite(results["last"]["train"]["loss"])
    assert results["best"]["val"]["error"] < 0.5  # it learns, in bf16


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler"
)
def test_compile_on_cpu(tmp_path):
    results = run_in_process(tmp_path / "run", "trainer.epochs=1", "trainer.compile=true")
    assert results["status"] == "completed"
    assert math.isfinite(results["last"]["train"]["loss"])
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])  # the plain module's weights


@requires_cuda
def test_cuda_bf16_run(tmp_path):
    results = run_in_process(
        tmp_path / "run", "trainer.epochs=2", "trainer.device=cuda", "trainer.precision=bf16", "trainer.profile=true"
    )
    assert results["status"] == "completed" and results["device"].startswith("cuda")
    prof = read_json(tmp_path / "run" / "profile.json")
    assert prof["synchronising_timers"] is True


@requires_cuda
def test_bench_cuda(tmp_path):
    result = run_bench(
        tmp_path, "--dataset", "digits", "--epochs", "1", "--reps", "1", "--device", "cuda", "--no-process"
    )
    check_bench_json(result, n_train=1294, device="cuda", ways="abcg")
    assert set(result["cuda_samples_per_s"]) == {"a", "b", "c", "g"}
    assert result["ratios"]["c/g"] > 0


def test_macro_precision_and_recall_equal_torchmetrics():
    """metrics.precision_recall gives torchmetrics' macro precision and recall, absent classes
    left out and a class never predicted counted as 0 precision, as torchmetrics counts them."""
    from torchmetrics.classification import MulticlassPrecision, MulticlassRecall

    from mlprunner.metrics import precision_recall

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        truth = torch.randint(0, 6, (200,), generator=g)
        pred = torch.where(torch.rand(200, generator=g) < 0.6, truth, torch.randint(0, 6, (200,), generator=g))
        pred[pred == 5] = 4  # class 5 never predicted
        truth[truth == 3], pred[pred == 3] = 2, 2  # class 3 absent: left out of the mean
        cm = torch.bincount(truth * 6 + pred, minlength=36).view(6, 6)
        p, r = precision_recall(cm)
        assert p == pytest.approx(float(MulticlassPrecision(6, average="macro")(pred, truth)), abs=1e-6)
        assert r == pytest.approx(float(MulticlassRecall(6, average="macro")(pred, truth)), abs=1e-6)


def test_auroc_equals_torchmetrics():
    """The test block's macro one-vs-rest AUROC (metrics.auroc, rank statistic) is torchmetrics'
    multiclass_auroc(average="macro"), with tied scores and 2, 3 and 10 classes; a class with no
    sample is left out of the mean and a split of one class has none."""
    from torchmetrics.functional.classification import multiclass_auroc

    from mlprunner.metrics import auroc

    g = torch.Generator().manual_seed(0)
    for num_classes, n in [(10, 500), (3, 40), (2, 30)]:
        logits = torch.randn(n, num_classes, generator=g)
        y = torch.randint(0, num_classes, (n,), generator=g)
        logits[torch.arange(n), y] += 1.0
        probs = (logits.softmax(1) * 20).round() / 20  # many ties
        expected = float(multiclass_auroc(probs, y, num_classes, average="macro", thresholds=None))
        assert auroc(probs, y) == pytest.approx(expected, abs=1e-6)
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    assert auroc(probs, torch.tensor([0, 1, 0])) == pytest.approx(1.0)  # class 2 never occurs
    assert auroc(probs, torch.tensor([1, 1, 1])) is None
