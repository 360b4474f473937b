"""Short real training runs, one per dataset kind, with their run directories read back.

Runs go through the real CLI (`python -m mlprunner`) in a temporary folder, except where a test
needs the trained model object itself (then the same pieces are built in-process).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import QUICK, read_json, requires_mnist, run_mlprun, scalars, tool_inprocess
from mlprunner.models import MLP

# One intra-op thread: these models are tiny, and on a busy 2-core machine OpenMP's spinning
# threads make a step many times slower than a single thread would.
FAST = [*QUICK, "trainer.threads=1"]
EPOCH_TAGS = ("Loss/train", "Loss/val", "Error/train", "Error/val", "Accuracy/train", "Accuracy/val", "LR")
CKPT_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "rng", "config", "metrics")


def train(workdir: Path, name: str, *overrides: str) -> Path:
    run_dir = workdir / name
    run_mlprun(f"hydra.run.dir={run_dir}", *FAST, *overrides, cwd=workdir, check=True)
    return run_dir


def run_in_process(run_dir: Path, *overrides: str, dataset: str = "dataset=digits") -> dict:
    """mlprunner.run.run() on a Hydra-composed config: the CLI's pipeline without the
    subprocess start-up (digits and a 100-unit MLP unless overridden)."""
    from hydra import compose, initialize_config_module

    from mlprunner.config import register_resolvers
    from mlprunner.run import run

    register_resolvers()
    with initialize_config_module("mlprunner.configs", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                dataset,
                "model=mlp_100",
                "trainer.progress=none",
                "trainer.tensorboard.graph=false",
                "trainer.threads=1",
                *overrides,
            ],
        )
    return run(cfg, run_dir)


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_ckpt(ckpt: dict) -> MLP:
    """A fresh MLP shaped by the checkpoint's own config, with its weights loaded."""
    m = {k: v for k, v in ckpt["config"]["model"].items() if k != "_target_"}
    out = 1 if ckpt["config"]["loss"]["_target_"] == "torch.nn.BCEWithLogitsLoss" else ckpt["data"]["num_classes"]
    model = MLP(ckpt["data"]["num_features"], out, **m)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def check_run(run_dir: Path, epochs: int, val: bool = True, cli: bool = True) -> dict:
    """The run folder contract (README.md, "The run folder"); returns results.json.

    `cli=False` for runs made in-process with mlprunner.run.run() (no Hydra, so no .hydra/).
    """
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and res["reason"] is None
    assert res["epochs_completed"] == epochs
    assert res["device"] == "cpu"
    assert isinstance(res["n_params"], int) and res["n_params"] > 0
    assert res["wall_s"] > 0
    best, last = res["best"], res["last"]
    assert 1 <= best["epoch"] <= epochs and last["epoch"] == epochs
    for key in ("error", "loss", "accuracy"):
        assert key in last["train"]
        if val:
            assert key in best["val"] and key in last["val"]
    if val:
        assert best["val"]["error"] == pytest.approx(1 - best["val"]["accuracy"])
        assert 0 <= best["val"]["error"] <= 1 and math.isfinite(best["val"]["loss"])
        # best is the lowest validation error (the default monitor)
        assert best["val"]["error"] <= last["val"]["error"]
    if cli:
        assert (run_dir / ".hydra" / "config.yaml").is_file()
        assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (run_dir / "learning_curves.png").stat().st_size > 1000

    tags = scalars(run_dir / "tensorboard")
    for tag in EPOCH_TAGS:
        if not val and tag.endswith("/val"):
            assert tag not in tags
            continue
        assert [s for s, _ in tags[tag]] == list(range(1, epochs + 1)), tag
    assert [v for _, v in tags["Loss/train"]] == pytest.approx([h["train"]["loss"] for h in res["history"]])
    if val:
        assert tags["Error/val"][best["epoch"] - 1][1] == pytest.approx(best["val"]["error"])
        assert tags["Accuracy/val"][-1][1] == pytest.approx(last["val"]["accuracy"])
    assert tags["LR"][-1][1] == pytest.approx(last["lr"])

    hp = hparams(run_dir / "tensorboard")
    cfg = OmegaConf.create(load_ckpt(run_dir / "checkpoints" / "last.pt")["config"])
    if cli:
        assert OmegaConf.to_container(
            OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True
        ) == OmegaConf.to_container(cfg)
    assert hp["dataset"] == cfg.dataset.name
    assert hp["optim.lr"] == pytest.approx(cfg.optim.lr)

    for name in ("last.pt", "best.pt"):
        ckpt = load_ckpt(run_dir / "checkpoints" / name)
        for key in CKPT_KEYS:
            assert key in ckpt, (name, key)
        assert ckpt["config"]["dataset"]["name"] == cfg.dataset.name
    last_ckpt = load_ckpt(run_dir / "checkpoints" / "last.pt")
    best_ckpt = load_ckpt(run_dir / "checkpoints" / "best.pt")
    assert last_ckpt["epoch"] == epochs and best_ckpt["epoch"] == best["epoch"]
    assert last_ckpt["step"] > 0
    if cfg.trainer.tensorboard.histograms:
        check_histograms(run_dir / "tensorboard", last_ckpt["model"], epochs)
    if val:
        assert best_ckpt["metrics"]["val"]["error"] == pytest.approx(best["val"]["error"])
    return res


def check_histograms(log_dir: Path, weights: dict, epochs: int) -> None:
    """One weight histogram per parameter per epoch; the last one summarises the saved weights."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"histograms": 0})
    acc.Reload()
    assert sorted(acc.Tags()["histograms"]) == sorted(f"weights/{k}" for k in weights)
    for name, w in weights.items():
        events = acc.Histograms(f"weights/{name}")
        assert [e.step for e in events] == list(range(1, epochs + 1)), name
        h = events[-1].histogram_value
        w = w.double().flatten()
        assert h.num == w.numel() and sum(h.bucket) == w.numel()
        assert (h.min, h.max) == pytest.approx((float(w.min()), float(w.max())), abs=1e-6)
        assert h.sum == pytest.approx(float(w.sum()), rel=1e-4, abs=1e-4)
        assert h.sum_squares == pytest.approx(float(w.dot(w)), rel=1e-4)
        assert list(h.bucket_limit) == sorted(h.bucket_limit) and h.bucket_limit[-1] == pytest.approx(h.max)
        if w.max() > w.min():  # an empty first bucket ends at the minimum; then equal-width buckets
            assert h.bucket[0] == 0 and h.bucket_limit[0] == pytest.approx(h.min)
            widths = torch.tensor(h.bucket_limit).diff()
            assert torch.allclose(widths, widths.mean().expand_as(widths), rtol=1e-3)
            ours = torch.histc(w.float(), bins=len(h.bucket) - 1, min=float(w.min()), max=float(w.max()))
            assert [int(c) for c in h.bucket[1:]] == [int(c) for c in ours.tolist()], name


def hparams(log_dir: Path) -> dict:
    """The HParams session start info written into the run's own event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    # a session only: an experiment summary would fix the columns of a sweep's table to this run's
    assert "_hparams_/session_start_info" in content and "_hparams_/experiment" not in content
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    out = {}
    for key, value in info.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out


# ------------------------------------------------------------------------------- datasets


def test_xor_reaches_full_accuracy(workdir):
    run_dir = train(workdir, "xor", "dataset=xor", "trainer.epochs=3")
    res = check_run(run_dir, 3)
    assert res["best"]["val"]["accuracy"] == 1.0
    assert res["dataset"] == {"name": "xor", "n_train": 2500, "n_val": 500}


def test_xor_seed_experiment_bce(tmp_path):
    """Seed 001: 2-4-1 tanh, SGD 0.1, BCE-with-logits, batch 128, 100 epochs."""
    res = run_in_process(tmp_path, "model=mlp", "trainer.tensorboard.histograms=false", dataset="experiment=xor_seed")
    check_run(tmp_path, 100, cli=False)
    assert res["n_params"] == 2 * 4 + 4 + 4 + 1  # one output unit for BCE
    assert res["best"]["val"]["accuracy"] == 1.0
    ckpt = load_ckpt(tmp_path / "checkpoints" / "best.pt")
    assert ckpt["model"]["2.weight"].shape == (1, 4)
    assert ckpt["config"]["loss"]["_target_"] == "torch.nn.BCEWithLogitsLoss"


def test_digits_and_checkpoint_reload(workdir):
    from mlprunner.components import Loss
    from mlprunner.data import load_data

    run_dir = train(workdir, "digits", "dataset=digits", "model=mlp_100", "trainer.epochs=4", "trainer.batch_size=64")
    res = check_run(run_dir, 4)
    assert res["dataset"]["name"] == "digits"
    assert res["dataset"]["n_val"] == 144 and res["dataset"]["n_train"] == 1294
    assert res["best"]["val"]["accuracy"] > 0.85
    assert res["n_params"] == 64 * 100 + 100 + 100 * 10 + 10

    # Reload each checkpoint into a fresh model and re-evaluate the validation split: the metrics
    # it stored (and results.json) must come back.
    for name, block in (("best.pt", res["best"]["val"]), ("last.pt", res["last"]["val"])):
        ckpt = load_ckpt(run_dir / "checkpoints" / name)
        model = model_from_ckpt(ckpt)
        data = load_data(OmegaConf.create(ckpt["config"]["dataset"]), "cpu")
        assert data.mean == pytest.approx(ckpt["data"]["mean"])
        loss = Loss(OmegaConf.create(ckpt["config"]["loss"]), data.num_classes)
        with torch.no_grad():
            logits = model(data.val.x)
        accuracy = float((logits.argmax(1) == data.val.y).float().mean())
        assert accuracy == pytest.approx(block["accuracy"], abs=1e-6)
        assert float(loss(logits, data.val.y)) == pytest.approx(block["loss"], rel=1e-4)
        assert ckpt["metrics"]["val"]["accuracy"] == pytest.approx(block["accuracy"])


def test_tensorboard_graph_and_hparams_in_the_runs_event_file(tmp_path):
    """The writers open after the first step (here at the epoch's last step, the first step
    scalars due) with the HParams session queued before them; the graph is traced when the run
    ends. Both land in the run's own epoch-level event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_in_process(tmp_path, "trainer.epochs=1", "trainer.tensorboard.graph=true", "trainer.log_every_n_steps=1000")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    nodes = {n.op for n in acc.Graph().node}
    assert any("linear" in op.lower() or "addmm" in op.lower() for op in nodes), nodes
    assert hparams(tmp_path / "tensorboard")["model.hidden"] == "[100]"


def test_tensorboard_shows_a_grid_of_the_training_images(tmp_path):
    """Images/train (lecture notes 004's make_grid example): the first 64 training images as the
    network is given them, normalisation undone; trainer.tensorboard.images=false leaves it out,
    and data that are no images have none."""
    import numpy as np
    from hydra import compose, initialize_config_module
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mlprunner.data import load_data, sample_images

    def images(run_dir):
        acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
        acc.Reload()
        return {tag: acc.Images(tag) for tag in acc.Tags()["images"]}

    run_in_process(tmp_path / "on", "trainer.epochs=1")
    (grid,) = images(tmp_path / "on")["Images/train"]
    # 8 x 8 digits of 8x8 pixels, each shown 4x (32 pixels, at least MNIST's 28), 2 white pixels apart
    assert grid.step == 0 and (grid.width, grid.height) == (8 * 34 + 2, 8 * 34 + 2)
    pixels = np.asarray(Image.open(io.BytesIO(grid.encoded_image_string)).convert("L"), dtype=np.float32) / 255
    with initialize_config_module("mlprunner.configs", version_base="1.3"):
        data = load_data(compose("config", overrides=["dataset=digits"]).dataset, "cpu")
    digits = sample_images(data).view(64, 8, 8).numpy()
    expected = np.ones((274, 274), dtype=np.float32)
    for k, digit in enumerate(digits):  # rows of 8
        top, left = 2 + 34 * (k // 8), 2 + 34 * (k % 8)
        expected[top : top + 32, left : left + 32] = np.kron(digit, np.ones((4, 4)))
    assert np.abs(pixels - expected).max() <= 1 / 255 + 1e-6
    run_in_process(tmp_path / "off", "trainer.epochs=1", "trainer.tensorboard.images=false")
    assert "Images/train" not in images(tmp_path / "off")
    run_in_process(tmp_path / "xor", "trainer.epochs=1", dataset="dataset=xor")
    assert images(tmp_path / "xor") == {}


def test_a_model_that_cannot_be_traced_stays_in_training_mode(tmp_path):
    """The TensorBoard graph is a nicety: a forward that fails under tracing writes no graph,
    raises nothing, and leaves the model as it was (in training mode, dropout on)."""
    from mlprunner.tblog import TensorBoardLogger

    class Untraceable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            if torch.jit.is_tracing():
                raise RuntimeError("cannot be traced")
            return self.fc(x)

    model = Untraceable().train()
    tb = TensorBoardLogger(tmp_path / "tb")
    tb.graph(model, torch.zeros(3, 4))
    tb.close()
    assert model.training


def test_checkpoint_gives_identical_outputs_in_process(tmp_path):
    """Train in-process, then a fresh model loaded from last.pt/best.pt gives the same logits."""
    from hydra import compose, initialize_config_module

    from mlprunner.build import build
    from mlprunner.config import register_resolvers, validate
    from mlprunner.device import seed_everything
    from mlprunner.train import Trainer

    register_resolvers()
    with initialize_config_module("mlprunner.configs", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "dataset=digits",
                "model=mlp_300_100",
                "model.dropout=0.2",
                "model.batchnorm=true",
                "trainer.epochs=3",
                "trainer.early_stopping.monitor=val/loss",
                "scheduler=step",
                "scheduler.step_size=1",
            ],
        )
    validate(cfg)
    device = torch.device("cpu")
    seed_everything(0, False)
    p = build(cfg, device)  # the run's own pieces (augment included; off here)
    data, loss, model = p.data, p.loss, p.model
    trainer = Trainer(
        cfg.trainer,
        tmp_path,
        data,
        model,
        loss,
        p.optimizer,
        p.scheduler,
        p.interval,
        device,
        augment=p.augment,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    state = trainer.fit()
    assert state.epoch == 3
    x = data.val.x
    model.eval()
    with torch.no_grad():
        expected = model(x)
    last = load_ckpt(tmp_path / "checkpoints" / "last.pt")
    with torch.no_grad():
        assert torch.equal(model_from_ckpt(last)(x), expected)
    assert last["scheduler"]["last_epoch"] == 3
    assert last["optimizer"]["state"]  # Adam moments were saved
    best = load_ckpt(tmp_path / "checkpoints" / "best.pt")
    assert best["epoch"] == state.best_epoch
    with torch.no_grad():
        best_logits = model_from_ckpt(best)(x)
    assert float(loss(best_logits, data.val.y)) == pytest.approx(state.best_value, rel=1e-5)
    if state.best_epoch != 3:
        assert not torch.equal(best_logits, expected)


@requires_mnist
def test_mnist_subset(workdir):
    run_dir = train(workdir, "mnist", "dataset=mnist", "dataset.subset=3000", "trainer.epochs=1")
    res = check_run(run_dir, 1)
    assert res["dataset"] == {"name": "mnist", "n_train": 2700, "n_val": 300}
    assert res["n_params"] == 784 * 500 + 500 + 500 * 300 + 300 + 300 * 10 + 10
    assert res["best"]["val"]["accuracy"] > 0.8


@requires_mnist
def test_fashion_mnist_subset(workdir):
    run_dir = train(workdir, "fashion", "dataset=fashion_mnist", "dataset.subset=3000", "trainer.epochs=1")
    res = check_run(run_dir, 1)
    assert res["dataset"] == {"name": "fashion_mnist", "n_train": 2700, "n_val": 300}
    assert res["best"]["val"]["accuracy"] > 0.65
    ckpt = load_ckpt(run_dir / "checkpoints" / "best.pt")
    assert ckpt["data"]["class_names"][0] == "T-shirt/top"


# ------------------------------------------------------------------------------- image files

CLASSES = ("horizontal", "vertical", "diagonal")


def bar_image(kind: str, rng: random.Random):
    """A 12x12 grayscale PNG-able image: a bright bar on a noisy dark background."""
    from PIL import Image

    img = Image.new("L", (12, 12))
    px = img.load()
    pos = rng.randrange(2, 10)
    for i in range(12):
        for j in range(12):
            px[j, i] = rng.randrange(0, 40)
    for t in range(12):
        if kind == "horizontal":
            px[t, pos] = px[t, pos + 1] = 255
        elif kind == "vertical":
            px[pos, t] = px[pos + 1, t] = 255
        else:
            px[t, t] = px[min(t + 1, 11), t] = 255
    return img


def write_images(root: Path, per_class: int = 30) -> list[tuple[str, int]]:
    """Class-per-subfolder PNGs under root; returns (relative path, label) rows."""
    rng = random.Random(0)
    rows = []
    for label, kind in enumerate(CLASSES):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            rel = f"{kind}/{k:03d}.png"
            bar_image(kind, rng).save(root / rel)
            rows.append((rel, label))
    return rows


IMAGE_RUN = [
    "dataset.image_size=[12,12]",
    "dataset.val_fraction=0.3",
    "model=mlp_100",
    "trainer.epochs=8",
    "trainer.batch_size=16",
]


def test_image_csv(workdir):
    folder = workdir / "csvdata"
    rows = write_images(folder / "images")
    with open(folder / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])  # a header row is allowed
        writer.writerows((f"images/{rel}", label) for rel, label in rows)
    run_dir = train(
        workdir,
        "csv",
        "dataset=image_csv",
        f"dataset.csv={folder / 'labels.csv'}",
        "dataset.class_names=[h,v,d]",
        *IMAGE_RUN,
    )
    res = check_run(run_dir, 8)
    assert res["dataset"] == {"name": "image_csv", "n_train": 63, "n_val": 27}
    assert res["n_params"] == 144 * 100 + 100 + 100 * 3 + 3
    assert res["best"]["val"]["accuracy"] >= 0.8
    ckpt = load_ckpt(run_dir / "checkpoints" / "best.pt")
    assert ckpt["data"]["class_names"] == ["h", "v", "d"]
    assert ckpt["data"]["image_shape"] == [1, 12, 12]


def test_image_csv_with_image_dir(tmp_path):
    """Paths relative to dataset.image_dir instead of the CSV's folder; no header row."""
    images = tmp_path / "pics"
    rows = write_images(images, per_class=6)
    (tmp_path / "meta").mkdir()
    with open(tmp_path / "meta" / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    res = run_in_process(
        tmp_path / "run",
        f"dataset.csv={tmp_path / 'meta' / 'train.csv'}",
        f"dataset.image_dir={images}",
        "dataset.image_size=[12,12]",
        "model=linear",
        "trainer.epochs=1",
        dataset="dataset=image_csv",
    )
    check_run(tmp_path / "run", 1, cli=False)
    assert res["dataset"]["n_train"] + res["dataset"]["n_val"] == 18


def test_image_folder(workdir):
    write_images(workdir / "folder")
    (workdir / "folder" / ".cache").mkdir()  # hidden folders are not classes
    # the run directory inside the image folder: its .hydra/ must not become a class either
    run_dir = train(
        workdir, "folder/.run", "dataset=image_folder", f"dataset.image_dir={workdir / 'folder'}", *IMAGE_RUN
    )
    res = check_run(run_dir, 8)
    assert res["dataset"] == {"name": "image_folder", "n_train": 63, "n_val": 27}
    assert res["best"]["val"]["accuracy"] >= 0.8
    ckpt = load_ckpt(run_dir / "checkpoints" / "last.pt")
    assert ckpt["data"]["class_names"] == sorted(CLASSES)  # ImageFolder sorts class folders


def test_image_folder_streamed(tmp_path):
    """Larger than dataset.in_memory_max_mb: read through a DataLoader, same results contract;
    the Projector's points are the first validation samples read from disk too."""
    write_images(tmp_path / "folder")
    res = run_in_process(
        tmp_path / "run",
        f"dataset.image_dir={tmp_path / 'folder'}",
        *IMAGE_RUN,
        "dataset.in_memory_max_mb=0",
        "dataset.num_workers=0",
        "trainer.tensorboard.embedding=20",
        dataset="dataset=image_folder",
    )
    check_run(tmp_path / "run", 8, cli=False)
    assert res["dataset"] == {"name": "image_folder", "n_train": 63, "n_val": 27}
    assert res["best"]["val"]["accuracy"] >= 0.8
    (metadata,) = (tmp_path / "run" / "tensorboard").glob("*/val/metadata.tsv")
    assert len(metadata.read_text().splitlines()) == 1 + 20


# ------------------------------------------------------------------------------- trainer options


def test_early_stopping_stops_early(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mlprunner")
    run_dir = tmp_path
    run_in_process(
        run_dir,
        "trainer.epochs=10",
        "trainer.early_stopping.enabled=true",
        "trainer.early_stopping.patience=0",
        "trainer.early_stopping.min_delta=1.0",
        "trainer.progress=plain",
    )
    res = read_json(run_dir / "results.json")
    # in percent, as the epoch lines show the error
    best = f"{100 * res['best']['val']['error']:.2f}%"
    assert f"early stop: val/error no better than {best} for 1 epoch (best: epoch 1)" in caplog.text
    assert res["status"] == "completed"
    assert res["stopped_early"] is True
    assert res["epochs_completed"] == 2  # epoch 1 sets the best, epoch 2 cannot beat it by 1.0
    # the way to train on names the stop, not trainer.epochs (a resume with more epochs stays stopped)
    from mlprunner.results import closing_lines

    assert closing_lines(res)[-1].endswith(" trainer.early_stopping.enabled=false"), closing_lines(res)
    assert res["best"]["epoch"] == 1
    assert [s for s, _ in scalars(run_dir / "tensorboard")["Error/val"]] == [1, 2]
    assert load_ckpt(run_dir / "checkpoints" / "best.pt")["epoch"] == 1
    assert load_ckpt(run_dir / "checkpoints" / "last.pt")["epoch"] == 2


def test_eval_train_scores_the_training_split_as_mlprun_eval_does(tmp_path, monkeypatch, capsys):
    """trainer.eval_train: each epoch's train_eval block is the training split scored in eval mode
    with the epoch's final weights: the last one equals mlprun-eval --split train on last.pt, and
    it is not the running mean of the steps (dropout on); TensorBoard has one point per epoch."""
    res = run_in_process(tmp_path, "trainer.epochs=3", "model.dropout=0.5", "trainer.eval_train=true")
    assert all(h["train_eval"]["error"] != h["train"]["error"] for h in res["history"])
    assert res["last"]["train_eval"] == res["history"][-1]["train_eval"]
    proc = tool_inprocess(
        "mlprun-eval", str(tmp_path), "--checkpoint", "last", "--split", "train", "--json", str(tmp_path / "t.json"),
        monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    scored = read_json(tmp_path / "t.json")
    assert scored["error"] == res["last"]["train_eval"]["error"]
    assert scored["loss"] == pytest.approx(res["last"]["train_eval"]["loss"], rel=1e-5)
    errors = [v for _, v in scalars(tmp_path / "tensorboard")["Error/train_eval"]]
    assert errors == pytest.approx([h["train_eval"]["error"] for h in res["history"]])


def test_early_stopping_patience_on_accuracy(tmp_path):
    """monitor val/accuracy is maximised; with min_delta huge nothing improves after epoch 1, and
    patience 2 stops after the 2 epochs without improvement (as Keras and Lightning count it)."""
    run_in_process(
        tmp_path,
        "trainer.epochs=6",
        "trainer.early_stopping.enabled=true",
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.monitor=val/accuracy",
        "trainer.early_stopping.min_delta=1.0",
        dataset="dataset=xor",
    )
    res = read_json(tmp_path / "results.json")
    assert res["epochs_completed"] == 3 and res["stopped_early"] is True and res["best"]["epoch"] == 1


def test_no_validation_set(tmp_path):
    run_in_process(tmp_path, "dataset.val_fraction=0", "trainer.epochs=3")
    res = check_run(tmp_path, 3, val=False, cli=False)
    assert res["dataset"]["n_val"] == 0 and res["dataset"]["n_train"] == 1438
    train_losses = [h["train"]["loss"] for h in res["history"]]
    assert res["best"]["epoch"] == 1 + train_losses.index(min(train_losses))
    assert res["last"]["val"] is None


@pytest.mark.parametrize(
    "name", ["mse", "l1", "huber", "kl_div", "nll", "multi_margin", "multilabel_margin", "cross_entropy"]
)
def test_losses_train_on_digits(tmp_path, name):
    res = run_in_process(tmp_path, f"loss={name}", "trainer.epochs=2")
    check_run(tmp_path, 2, cli=False)
    h = res["history"]
    assert all(math.isfinite(e["train"]["loss"]) for e in h)
    # the loss goes down and the classifier learns something (chance is 10%)
    assert h[1]["train"]["loss"] < h[0]["train"]["loss"]
    assert res["best"]["val"]["accuracy"] > 0.3


def test_kl_div_on_one_hot_targets_is_cross_entropy(tmp_path):
    """KLDivLoss(batchmean) from one-hot targets has no entropy term: the same numbers as cross_entropy."""
    kl = run_in_process(tmp_path / "kl", "loss=kl_div", "trainer.epochs=1")
    ce = run_in_process(tmp_path / "ce", "loss=cross_entropy", "trainer.epochs=1")
    assert kl["history"][0]["train"]["loss"] == pytest.approx(ce["history"][0]["train"]["loss"], rel=1e-5)


def test_bce_on_ten_classes_fails_cleanly(workdir):
    proc = run_mlprun("hydra.run.dir=bad", *FAST, "dataset=digits", "loss=bce_with_logits", cwd=workdir)
    assert proc.returncode == 2
    assert "bce_with_logits" in proc.stderr and "Traceback" not in proc.stderr


def test_a_scheduler_of_ones_own_on_top_of_scheduler_none(tmp_path):
    """+scheduler._target_=...CyclicLR with its arguments and an interval is all it takes: mlprun
    passes the optimizer (no _partial_ needed) and steps it per batch; the lr moves."""
    res = run_in_process(
        tmp_path,
        "trainer.epochs=2",
        "+scheduler._target_=torch.optim.lr_scheduler.CyclicLR",
        "+scheduler.base_lr=0.0001",
        "+scheduler.max_lr=0.01",
        "+scheduler.step_size_up=5",
        "+scheduler.interval=step",
    )
    lrs = [h["lr"] for h in res["history"]]
    assert res["status"] == "completed" and len(set(lrs)) == 2 and all(1e-4 <= lr <= 1e-2 for lr in lrs), lrs


@pytest.mark.parametrize("name", ["step", "cosine", "onecycle", "exponential"])
def test_schedulers_with_warmup(tmp_path, name):
    res = run_in_process(
        tmp_path, f"scheduler={name}", "scheduler.warmup_epochs=1", "trainer.epochs=2", "optim=sgd_momentum"
    )
    check_run(tmp_path, 2, cli=False)
    lrs = [e["lr"] for e in res["history"]]
    tb = scalars(tmp_path / "tensorboard")
    assert [v for _, v in tb["LR"]] == pytest.approx(lrs)
    if name != "onecycle":
        # epoch 1 runs at the start of the warm-up ramp, epoch 2 at the configured lr
        assert lrs[0] == pytest.approx(0.05 * 0.1)
        assert lrs[1] == pytest.approx(0.05)
    else:
        assert lrs[0] != lrs[1]
    assert res["best"]["val"]["accuracy"] > 0.5


def test_plateau_scheduler(tmp_path):
    res = run_in_process(
        tmp_path,
        "scheduler=plateau",
        "scheduler.patience=0",
        "scheduler.threshold=10",
        "+scheduler.threshold_mode=abs",
        "trainer.epochs=4",
    )
    lrs = [e["lr"] for e in res["history"]]
    # threshold 10 (abs): after the first epoch nothing counts as an improvement, so the lr drops
    # after every later epoch (each record holds the lr the epoch trained with)
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])


def test_plateau_follows_a_maximised_monitor(tmp_path):
    """ReduceLROnPlateau steps on the monitored metric: with val/accuracy (maximised) it must
    not cut the lr while the accuracy rises, even though scheduler.mode says min."""
    res = run_in_process(
        tmp_path,
        "scheduler=plateau",
        "scheduler.patience=0",
        "scheduler.mode=min",
        "trainer.epochs=4",
        "trainer.early_stopping.monitor=val/accuracy",
    )
    acc = [e["val"]["accuracy"] for e in res["history"]]
    lrs = [e["lr"] for e in res["history"]]
    assert all(b > a for a, b in zip(acc, acc[1:])), acc  # the accuracy improves every epoch ...
    assert lrs == pytest.approx([1e-3] * 4)  # ... so the lr is never cut


def test_an_equal_validation_error_with_a_lower_loss_becomes_the_best_epoch(workdir):
    """XOR reaches 0% validation error epochs before its loss settles: the best epoch (best.pt,
    the test, the table) is the one of lowest loss among those of lowest error, not the first;
    early stopping still counts patience from the last strictly better error."""
    args = ["experiment=xor_seed", "trainer.epochs=60", "logger=none"]
    es = ["trainer.early_stopping.enabled=true", "trainer.early_stopping.patience=5"]
    proc = run_mlprun(*args, *es, "hydra.run.dir=xs", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = read_json(workdir / "xs" / "results.json")
    history = res["history"]
    lowest = min(h["val"]["error"] for h in history)
    tied = [h for h in history if h["val"]["error"] == lowest]
    assert len(tied) > 1  # else this run shows nothing
    assert res["best"]["epoch"] == min(tied, key=lambda h: (h["val"]["loss"], h["epoch"]))["epoch"]
    assert res["best"]["epoch"] != tied[0]["epoch"]
    # stopped 5 epochs after the first epoch at the lowest error (the ties did not reset patience)
    assert res["epochs_completed"] == tied[0]["epoch"] + 5 < 60
    best = torch.load(workdir / "xs" / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == res["best"]["epoch"]
