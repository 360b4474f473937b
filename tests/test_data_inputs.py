"""Image and dataset inputs read as they mean: 16-bit images, streamed folders' statistics, XOR's
normalisation, and test sets checked before training instead of after it.

Every test runs `mlprun` (in-process through `mlprunner.cli.main`), `mlprun-eval` or
`mlprun-predict` on small generated files, or a loader function on real image files.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import QUICK, read_json, tool_inprocess
from mlprunner import data
from mlprunner.errors import DatasetError

FAST = [*QUICK, "trainer.threads=1", "trainer.tensorboard.enabled=false"]
SMALL = ["dataset.image_size=[8,8]", "model=linear", "trainer.epochs=1", *FAST]


def noisy_png(path: Path, level: int, rng: random.Random) -> None:
    """An 8x8 8-bit grayscale PNG around `level`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.array([[min(255, max(0, level + rng.randrange(-20, 20))) for _ in range(8)] for _ in range(8)])
    Image.fromarray(a.astype(np.uint8)).save(path)


def three_classes(root: Path, per_class: int = 4) -> list[tuple[str, int]]:
    """Class subfolders a/, b/, c/ of 8x8 PNGs under root; (relative path, label) rows."""
    rng = random.Random(0)
    rows = []
    for label, name in enumerate("abc"):
        for k in range(per_class):
            rel = f"{name}/{k}.png"
            noisy_png(root / rel, 30 + 50 * label, rng)
            rows.append((rel, label))
    return rows


def write_csv(path: Path, rows) -> Path:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def refused(res, code: int, names: list[str], run_dir: Path) -> None:
    """One `mlprun: error:` line naming each of `names`, exit `code`, and no run folder."""
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("mlprun: error: ")]
    assert res.returncode == code, res.stdout[-2000:] + res.stderr[-2000:]
    assert len(lines) == 1, res.stderr[-2000:]
    for name in names:
        assert name in lines[0], f"{name!r} not in {lines[0]}"
    assert "unexpected" not in lines[0]
    assert not run_dir.exists()  # refused before the run folder (and any training)


# ------------------------------------------------------------------------------- 16-bit images


def test_16bit_grayscale_images_scale_by_their_range(tmp_path):
    """I;16 (16-bit PNG), I;16B (big-endian TIFF) and I (32-bit TIFF of 16-bit values) images
    become 8 bits by their range, 65535 -> 255, not clipped to white; mode F is refused."""
    a = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000 + 535).astype(np.uint16)  # 535..63535
    want = torch.from_numpy(np.rint(a / 257.0).astype(np.uint8)).unsqueeze(0)
    Image.fromarray(a).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode == "I;16"
    Image.frombytes("I;16B", (8, 8), a.astype(">u2").tobytes()).save(tmp_path / "i16b.tif")
    assert Image.open(tmp_path / "i16b.tif").mode == "I;16B"
    Image.fromarray(a).convert("I").save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    for name in ("i16.png", "i16b.tif", "i32.tif"):
        got = data.load_image(tmp_path / name, (8, 8), grayscale=True)
        assert torch.equal(got, want), name
        rgb = data.load_image(tmp_path / name, (8, 8), grayscale=False)
        assert torch.equal(rgb, want.expand(3, 8, 8)), name

    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(DatasetError, match=r"wide\.tif: mode I .* outside 0\.\.65535"):
        data.load_image(tmp_path / "wide.tif", (8, 8), grayscale=True)
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DatasetError, match=r"float\.tif: mode F"):
        data.load_image(tmp_path / "float.tif", (8, 8), grayscale=True)


def test_16bit_pngs_train_and_predict(tmp_path, mlprun_here, monkeypatch, capsys):
    """Two classes of 16-bit PNGs that differ only in brightness above 255: clipped to white they
    were one input; scaled, a linear model tells them apart, and mlprun-predict does too."""
    rng = random.Random(1)

    def png16(path: Path, low: int, high: int) -> None:
        a = np.array([[rng.randrange(low, high) for _ in range(8)] for _ in range(8)], dtype=np.uint16)
        Image.fromarray(a).save(path)

    levels = {0: (8000, 16000), 1: (40000, 60000)}
    rows = []
    for label, (low, high) in levels.items():
        for k in range(20):
            png16(tmp_path / f"{label}_{k}.png", low, high)
            rows.append((f"{label}_{k}.png", label))
    random.Random(2).shuffle(rows)
    labels = write_csv(tmp_path / "labels.csv", rows)
    run_dir = tmp_path / "run"
    res = mlprun_here(
        "dataset=image_csv",
        f"dataset.csv={labels}",
        "dataset.class_names=[dim,bright]",
        "dataset.val_fraction=0.25",
        *SMALL,
        "trainer.epochs=10",
        "trainer.batch_size=8",
        f"hydra.run.dir={run_dir}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_json(run_dir / "results.json")["best"]["val"]["accuracy"] >= 0.9

    png16(tmp_path / "new_dim.png", *levels[0])
    png16(tmp_path / "new_bright.png", *levels[1])
    out = tmp_path / "pred.csv"
    pred = tool_inprocess(
        "mlprun-predict",
        str(run_dir),
        str(tmp_path / "new_dim.png"),
        str(tmp_path / "new_bright.png"),
        "--csv",
        str(out),
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert pred.returncode == 0, pred.stderr
    with open(out, newline="") as fh:
        predicted = {Path(r["path"]).name: r["predicted"] for r in csv.DictReader(fh)}
    assert predicted == {"new_dim.png": "dim", "new_bright.png": "bright"}


# ------------------------------------------------------------------------------- streamed folders


def test_streamed_folder_computes_mean_std_from_the_training_split(tmp_path, mlprun_here):
    """dataset.mean/std null: a folder streamed from disk gets the training split's statistics,
    the same as when it is held in memory (it used 0.5/0.5), and says how many images gave them."""
    three_classes(tmp_path / "folder", per_class=6)
    stats = {}
    for name, extra in (("memory", []), ("streamed", ["dataset.in_memory_max_mb=0", "dataset.num_workers=0"])):
        res = mlprun_here(
            "dataset=image_folder",
            f"dataset.image_dir={tmp_path / 'folder'}",
            "dataset.val_fraction=0.25",
            *SMALL,
            *extra,
            f"hydra.run.dir={tmp_path / name}",
        )
        assert res.returncode == 0, res.stderr[-3000:]
        ckpt = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)
        stats[name] = (ckpt["data"]["mean"], ckpt["data"]["std"])
        if name == "streamed":
            assert "dataset.mean/std: computed from all 14 training images" in res.stdout + res.stderr
    (m_mean, m_std), (s_mean, s_std) = stats["memory"], stats["streamed"]
    assert s_mean == pytest.approx(m_mean, rel=1e-6) and s_std == pytest.approx(m_std, rel=1e-6)
    assert abs(s_mean[0] - 0.5) > 0.1 and abs(s_std[0] - 0.5) > 0.1  # not the fixed 0.5 it used before


def test_streamed_stats_sample_is_seeded_and_capped(tmp_path, caplog):
    """More training images than the cap: a sample of `cap` images drawn with the split seed
    (the same seed the same statistics, another seed another sample), and one line saying so."""
    rows = three_classes(tmp_path, per_class=10)
    samples = [(str(tmp_path / rel), label) for rel, label in rows]
    train_idx = torch.arange(len(samples))

    def stats(seed):
        return data._streamed_stats(samples, train_idx, (8, 8), True, seed, workers=0, cap=5)

    with caplog.at_level(logging.INFO, logger="mlprunner"):
        first = stats(0)
    assert "computed from 5 of 30 training images (a sample drawn with dataset.split_seed; at most 5)" in caplog.text
    assert stats(0) == first
    assert stats(1) != first
    whole = data._streamed_stats(samples, train_idx, (8, 8), True, 0, workers=0)
    x = torch.stack([data.load_image(Path(p), (8, 8), True) for p, _ in samples]).double().div(255)
    assert whole[0][0] == pytest.approx(float(x.mean()), rel=1e-9)
    assert whole[1][0] == pytest.approx(float(x.std()), rel=1e-9)


# ------------------------------------------------------------------------------- XOR


def test_xor_normalize_is_honoured(tmp_path, mlprun_here, monkeypatch, capsys):
    """dataset=xor dataset.normalize=true standardises each feature with the training points'
    mean/std (it was ignored); the checkpoint keeps them, so mlprun-eval scores the same."""
    run_dir = tmp_path / "run"
    xor = ["dataset=xor", "dataset.n_train=200", "dataset.n_val=50", "dataset.n_test=100", "dataset.split_seed=3"]
    res = mlprun_here(
        *xor,
        "dataset.normalize=true",
        "model.hidden=[8]",
        "trainer.epochs=2",
        "eval.test=true",
        *FAST,
        f"hydra.run.dir={run_dir}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    x_train, _ = data.make_xor(200, 0.1, torch.Generator().manual_seed(3))
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["data"]["mean"] == pytest.approx(x_train.double().mean(0).tolist(), rel=1e-5)
    assert ckpt["data"]["std"] == pytest.approx(x_train.double().std(0).tolist(), rel=1e-5)

    out = tmp_path / "eval.json"
    ev = tool_inprocess("mlprun-eval", str(run_dir), "--json", str(out), monkeypatch=monkeypatch, capsys=capsys)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(out.read_text())["error"] == read_json(run_dir / "results.json")["test"]["error"]

    bad = tmp_path / "bad"
    res = mlprun_here(*xor, "dataset.normalize=true", "+dataset.mean=[0.5]", "+dataset.std=[1]", f"hydra.run.dir={bad}")
    refused(res, 2, ["dataset.mean=[0.5]", "2 value(s), one per input feature of dataset=xor"], bad)


# ------------------------------------------------------------------------------- test sets


@pytest.mark.parametrize("kind", ["image_csv", "image_folder"])
def test_eval_test_without_a_test_set_is_refused_before_training(kind, tmp_path, mlprun_here):
    rows = three_classes(tmp_path / "imgs")
    source = {
        "image_csv": f"dataset.csv={write_csv(tmp_path / 'imgs' / 'train.csv', rows)}",
        "image_folder": f"dataset.image_dir={tmp_path / 'imgs'}",
    }[kind]
    run_dir = tmp_path / "run"
    res = mlprun_here(f"dataset={kind}", source, "eval.test=true", *SMALL, f"hydra.run.dir={run_dir}")
    key = {"image_csv": "dataset.test_csv", "image_folder": "dataset.test_dir"}[kind]
    refused(res, 2, ["eval.test=true", f"dataset={kind} has no test set", "eval.test=false", key], run_dir)


def _bad_test_csv(tmp_path: Path, imgs: Path, case: str) -> tuple[list[str], list[str]]:
    """(overrides, names the error must hold) for one broken dataset.test_csv."""
    if case == "missing":
        return [f"dataset.test_csv={tmp_path / 'nope.csv'}"], ["dataset.test_csv: file not found", "nope.csv"]
    if case == "missing-image":
        path = write_csv(tmp_path / "test.csv", [("a/0.png", 0), ("a/gone.png", 0)])
        return [f"dataset.test_csv={path}"], [f"{path}:2: image file not found"]
    if case == "label-outside":
        path = write_csv(tmp_path / "test.csv", [("path", "label"), ("a/0.png", 0), ("b/1.png", 1), ("c/2.png", 3)])
        return [f"dataset.test_csv={path}"], [f"{path}:4: label 3 but the training data has 3 classes (0..2)"]
    if case == "label-outside-class-names":  # the class count is the names' count
        path = write_csv(tmp_path / "test.csv", [("a/0.png", 4)])
        return [f"dataset.test_csv={path}", "dataset.class_names=[x,y,z,w]"], [
            f"{path}:1: label 4 but the training data has 4 classes (0..3)"
        ]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "missing-image", "label-outside", "label-outside-class-names"])
def test_test_csv_problems_are_found_before_training(case, tmp_path, mlprun_here):
    """A broken dataset.test_csv was read only after training (and a missing one was called
    dataset.csv; a label the model has no output for gave `unexpected IndexError`)."""
    imgs = tmp_path / "imgs"
    train_csv = write_csv(imgs / "train.csv", three_classes(imgs))
    overrides, names = _bad_test_csv(imgs, imgs, case)
    run_dir = tmp_path / "run"
    res = mlprun_here(
        "dataset=image_csv",
        f"dataset.csv={train_csv}",
        *overrides,
        "eval.test=true",
        *SMALL,
        f"hydra.run.dir={run_dir}",
    )
    refused(res, 1, names, run_dir)


@pytest.mark.parametrize("case", ["missing", "missing-class", "extra-class", "empty-class"])
def test_test_dir_problems_are_found_before_training(case, tmp_path, mlprun_here):
    train_dir, test_dir = tmp_path / "train", tmp_path / "test"
    three_classes(train_dir)
    if case != "missing":
        three_classes(test_dir, per_class=2)
    names = {
        "missing": ["dataset.test_dir: folder not found", str(test_dir)],
        "missing-class": ["dataset.test_dir", "classes ['a', 'b'] differ from the training folder's ['a', 'b', 'c']"],
        "extra-class": ["dataset.test_dir", "classes ['a', 'b', 'c', 'd'] differ"],
        "empty-class": ["dataset.test_dir", "class folder b/ holds no image file"],
    }[case]
    if case == "missing-class":
        for p in (test_dir / "c").iterdir():
            p.unlink()
        (test_dir / "c").rmdir()
    elif case == "extra-class":
        noisy_png(test_dir / "d" / "0.png", 100, random.Random(0))
    elif case == "empty-class":
        for p in (test_dir / "b").iterdir():
            p.unlink()
    run_dir = tmp_path / "run"
    res = mlprun_here(
        "dataset=image_folder",
        f"dataset.image_dir={train_dir}",
        f"dataset.test_dir={test_dir}",
        "eval.test=true",
        *SMALL,
        f"hydra.run.dir={run_dir}",
    )
    refused(res, 1, names, run_dir)


def test_mlprun_eval_refuses_a_test_label_outside_the_training_classes(tmp_path, mlprun_here, monkeypatch, capsys):
    """mlprun-eval with a test CSV whose label the model has no output for: one DatasetError line
    naming the row (it was `unexpected IndexError: Target 3 is out of bounds`)."""
    imgs = tmp_path / "imgs"
    rows = three_classes(imgs)
    train_csv = write_csv(imgs / "train.csv", rows)
    good = write_csv(imgs / "test.csv", rows[::2])
    run_dir = tmp_path / "run"
    res = mlprun_here(
        "dataset=image_csv",
        f"dataset.csv={train_csv}",
        f"dataset.test_csv={good}",
        "eval.test=true",
        *SMALL,
        f"hydra.run.dir={run_dir}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    bad = write_csv(imgs / "bad.csv", [("a/0.png", 0), ("b/0.png", 1), ("c/0.png", 3)])
    ev = tool_inprocess("mlprun-eval", str(run_dir), f"dataset.test_csv={bad}", monkeypatch=monkeypatch, capsys=capsys)
    assert ev.returncode == 1, ev.stdout + ev.stderr
    lines = [ln for ln in ev.stderr.splitlines() if ln.startswith("mlprun-eval: error: ")]
    assert lines == [f"mlprun-eval: error: {bad}:3: label 3 but the training data has 3 classes (0..2)"], ev.stderr


def test_digits_test_split_does_not_follow_split_seed(compose_cfg):
    """dataset.split_seed reshuffles train/validation only: every seed is scored on the same
    test images (split_seed + 1 drew them before, so one seed's test images were another's
    training images); a config saved without test_seed still gets the test set it was run with."""
    from omegaconf import open_dict

    from mlprunner.data import load_data

    def split(*overrides, drop_test_seed=False):
        ds = compose_cfg("dataset=digits", *overrides).dataset
        if drop_test_seed:
            with open_dict(ds):
                del ds["test_seed"]
        data = load_data(ds, "cpu")
        return {tuple(r) for r in data.load_test().x.tolist()}, {tuple(r) for r in data.train.x.tolist()}

    test0, train0 = split("dataset.split_seed=0", "dataset.normalize=false")
    test5, train5 = split("dataset.split_seed=5", "dataset.normalize=false")
    assert test0 == test5 and train0 != train5
    assert not (test0 & train5)  # no test image trains another seed's model
    old5, _ = split("dataset.split_seed=5", "dataset.normalize=false", drop_test_seed=True)
    assert old5 != test5  # a run saved before test_seed keeps its own test set (seed 6)
    old0, _ = split("dataset.split_seed=0", "dataset.normalize=false", drop_test_seed=True)
    assert old0 == test0  # the default seed's test set did not move
