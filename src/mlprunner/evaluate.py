"""Evaluation on the official test set with a 95% Wilson confidence interval, and `mlprun-eval`.

`evaluate_test()` runs at the end of training when `eval.test=true`; `mlprun-eval` gives the
same report for an existing run directory or checkpoint, rebuilding the model and the test
data from the configuration and normalisation statistics saved in the checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

from .build import build_model
from .checkpoint import check_config_targets, load_checkpoint
from .components import Loss
from .config import with_added_keys
from .data import as_images, load_data
from .device import resolve_device
from .errors import CheckpointError, ConfigError, first_line
from .metrics import TEST_SCALARS, accuracy_error_f1, auroc, precision_recall
from .plots import confusion_figure, roc_figure, save_figure
from .results import short_path, wilson_interval
from .runs import checkpoint_file, locate_checkpoint, merge_overrides, recorded_model_target

log = logging.getLogger("mlprunner")

CHECKPOINTS = ("best", "last", "swa")


# --------------------------------------------------------------------------- metrics


@torch.no_grad()
def predict_split(model, loss, split, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(predicted class (N,), class probabilities (N, K), mean loss) of `model` on `split`, on the CPU."""
    model.eval()
    preds, probs = [], []
    loss_sum = torch.zeros((), dtype=torch.float64)
    for xb, yb in split.batches(batch_size):
        logits = model(xb).float()
        loss_sum += (loss(logits, yb).double() * yb.shape[0]).cpu()
        preds.append(loss.predict(logits).cpu())
        probs.append(loss.probs(logits).cpu())
    n = len(split)
    return torch.cat(preds), torch.cat(probs), float(loss_sum) / max(n, 1)


def metrics_from_predictions(pred: torch.Tensor, y: torch.Tensor, num_classes: int, class_names=None) -> dict:
    """Error, accuracy, macro F1, precision and recall, n, Wilson 95% CI, per-class error and the
    confusion matrix (rows = truth)."""
    y = y.cpu()
    n = int(y.shape[0])
    errors = int((pred != y).sum())
    confusion = torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )
    per_class = confusion.sum(1)
    names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
    per_class_error = {
        names[c]: ((int(per_class[c]) - int(confusion[c, c])) / int(per_class[c]) if per_class[c] else None)
        for c in range(num_classes)
    }
    lo, hi = wilson_interval(errors, n)
    precision, recall = precision_recall(confusion) if n else (None, None)  # macro
    accuracy, error, f1 = accuracy_error_f1(confusion) if n else (None, None, None)  # f1 macro, as val/f1
    return {
        "error": error,
        "accuracy": accuracy,
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "n": n,
        "errors": errors,
        "ci95": [lo, hi],
        "per_class_error": per_class_error,
        "confusion": confusion.tolist(),
    }


def test_metrics(model, loss, split, num_classes: int, batch_size: int = 1000, class_names=None) -> dict:
    """All test metrics of `model` on `split` (see metrics_from_predictions), plus loss, AUROC and probs."""
    pred, probs, mean_loss = predict_split(model, loss, split, batch_size)
    m = metrics_from_predictions(pred, split.y, num_classes, class_names)
    m["loss"] = mean_loss
    m["auroc"] = auroc(probs, split.y)  # macro one-vs-rest
    m["_probs"] = probs  # for the precision/recall curves; not written to results.json
    return m


def report_line(m: dict) -> str:
    """'test error 1.43% (95% CI 1.22-1.68%, n=10000)' (m["split"] names another split)."""
    lo, hi = m["ci95"]
    split = m.get("split", "test")
    return f"{split} error {100 * m['error']:.2f}% (95% CI {100 * lo:.2f}-{100 * hi:.2f}%, n={m['n']})"


def write_figures(
    m: dict, y: torch.Tensor, class_names, out_png: Path | None, tb=None, epoch: int = 0, title: str = ""
) -> None:
    """confusion_matrix.png, and in TensorBoard the same figure, one PR curve per class and the
    classes' ROC curves in one figure (Test/roc_curves)."""
    fig = confusion_figure(m["confusion"], class_names, title=title or report_line(m))
    if out_png is not None:
        save_figure(fig, out_png, close=tb is None)
    if tb is not None:
        tb.figure("Test/confusion_matrix", fig, epoch)  # add_figure closes it
        probs = m.get("_probs")
        if probs is not None:
            y = y.cpu()
            for c, name in enumerate(class_names):
                tb.writer.add_pr_curve(f"PR/test/{name}", (y == c), probs[:, c], epoch)
            tb.figure(
                "Test/roc_curves",
                roc_figure(probs, y, class_names, title="ROC (test), one class against the rest"),
                epoch,
            )


def public_metrics(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith("_")}


# --------------------------------------------------------------------------- after training


def load_evaluated(cfg, run_dir: Path, trainer, purpose: str = "test") -> tuple[str, int]:
    """Load into trainer.model the weights a finished run is evaluated with: eval.checkpoint's
    (best or last), the SWA-averaged model when SWA ran. Returns (which, its epoch); `purpose`
    names what uses them in the log lines."""
    data = trainer.data
    which = cfg.eval.checkpoint
    if getattr(trainer, "swa_result", None):
        which = "swa"  # the averaged model is what SWA produces
    elif which == "best" and data.val is None:
        which = "last"  # no validation set: best means last
    elif which == "best" and not cfg.trainer.checkpoint.save_best:
        # no best.pt was kept: what is in memory are the last epoch's weights, so say so
        which = "last"
        log.info(
            f"eval.checkpoint=best, but trainer.checkpoint.save_best=false kept no best checkpoint: "
            f"the {purpose} uses the last epoch's weights (epoch {trainer.state.epoch})"
        )
    path = checkpoint_file(run_dir, which)
    epoch = trainer.state.epoch
    if which == "best" and not path.is_file():  # moved away (unreadable), never written: say so
        which = "last"
        log.info(f"no {path.name} in the run: the {purpose} uses the last epoch's weights (epoch {epoch})")
    if path.is_file():
        ckpt = load_checkpoint(path)
        trainer.model.load_state_dict(ckpt["model"])
        epoch = int(ckpt["epoch"])
    return which, epoch


def evaluate_test(cfg, run_dir: Path, trainer, tb=None) -> dict:
    """Score the best (or last, or the SWA-averaged) model of a finished run on the test set."""
    data = trainer.data
    if data.load_test is None:
        raise ConfigError(
            "eval.test",
            True,
            message=f"eval.test=true but dataset={cfg.dataset.name} "
            "has no test set configured; allowed: eval.test=false",
        )
    which, epoch = load_evaluated(cfg, run_dir, trainer)
    split = data.load_test()
    m = test_metrics(
        trainer.model, trainer.loss, split, data.num_classes, int(cfg.trainer.eval_batch_size), data.class_names
    )
    m["epoch"] = epoch
    m["checkpoint"] = which
    log.info(f"{report_line(m)} [{which} checkpoint, epoch {epoch}]")
    # TensorBoard's step is the epochs trained so far, not the checkpoint's epoch (in the figure's
    # title): a resumed run's new test never lands on the step of an earlier process's test
    trained = trainer.state.epoch
    if tb is not None:
        tb.new_test_results()  # an earlier process's test results are dropped, not shown beside it
        # Error/test, F1/test, AUROC/test
        scores = {name: m[name] for name in TEST_SCALARS if m.get(name) is not None}  # no AUROC of one class
        tb.scalars(
            {f"{name.upper() if name == 'auroc' else name.title()}/test": v for name, v in scores.items()}, trained
        )
    try:
        write_figures(
            m,
            split.y,
            data.class_names,
            Path(run_dir) / "confusion_matrix.png",
            tb,
            trained,
            title=f"{cfg.dataset.name} test, {which} checkpoint (epoch {epoch}): error {100 * m['error']:.2f}%",
        )
    except Exception as exc:  # a figure must never fail a finished run
        log.warning(f"could not write the confusion matrix figure: {exc}")
    embed(cfg, trainer, split, "test", tb, trained)
    return public_metrics(m)


def embed(cfg, trainer, split, tag: str, tb, step: int) -> None:
    """TensorBoard's Projector (trainer.tensorboard.embedding samples, 0 = none): the first samples
    of `split` as the input of the model's last Linear layer -- the features its classifier
    separates (the logits when it has none) -- with their class, the predicted class and whether
    it is right as metadata, and the images as the sprite of an image dataset."""
    n = min(int(OmegaConf.select(cfg, "trainer.tensorboard.embedding", default=0) or 0), len(split))
    if tb is None or n == 0:
        return
    try:
        x, y = next(iter(split.batches(n)))  # the first n, also of a split streamed from disk
        features, pred, layer = last_layer_input(trainer.model, trainer.loss, x, int(cfg.trainer.eval_batch_size))
        data, y = trainer.data, y.cpu()
        names = data.class_names or [str(c) for c in range(data.num_classes)]
        rows = [[names[t], names[p], "yes" if t == p else "no"] for t, p in zip(y.tolist(), pred.tolist())]
        images = as_images(data, x) if data.image_shape is not None else None
        # SummaryWriter writes each value's full repr into tensors.tsv: 4 decimals make it ~3x
        # smaller (1.4 MB for 300 x 300 values at full length) and are plenty for PCA or t-SNE
        features = torch.round(features.double(), decimals=4)
        folder = tb.embedding(tag, features, rows, ["label", "predicted", "correct"], images, step)
    except Exception as exc:  # as the figures: never fails a finished run
        log.warning(f"could not write the TensorBoard embedding: {first_line(exc)}")
        return
    log.info(f"TensorBoard Projector: {n} {tag} samples, {features.shape[1]} features ({layer}): {short_path(folder)}")


@torch.no_grad()
def last_layer_input(model, loss, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(the input of the model's last Linear layer for each row of `x` (N, D) on the CPU, the
    predicted classes (N,), which layer that is). The logits stand in when the model has no Linear
    layer, or calls its last one other than once per sample."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    features, logits = [], []
    hook = None
    if linears:
        hook = linears[-1][1].register_forward_pre_hook(lambda _m, args: features.append(args[0].float().cpu()))
    model.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            logits.append(model(x[start : start + batch_size]).float())
    finally:
        if hook is not None:
            hook.remove()
    logits = torch.cat(logits)
    pred = loss.predict(logits).cpu()
    if features and sum(f.shape[0] for f in features) == x.shape[0]:
        name, layer = linears[-1]
        return torch.cat(features), pred, f"input of layer {name}, Linear {layer.in_features}->{layer.out_features}"
    return logits.cpu(), pred, "the logits"


# --------------------------------------------------------------------------- existing runs


@dataclass
class Loaded:
    run_dir: Path | None
    path: Path
    which: str
    ckpt: dict
    cfg: object  # DictConfig
    model: torch.nn.Module
    loss: object
    device: torch.device

    @property
    def info(self) -> dict:
        return self.ckpt.get("data") or {}


# Keys that may be overridden on an existing run: where the data lives, not how it was prepared.
EVAL_OVERRIDES = (
    "dataset.root",
    "dataset.download",
    "dataset.test_csv",
    "dataset.test_dir",
    "dataset.csv",
    "dataset.image_dir",
)


def load_run(target: str, which: str | None = None, overrides=(), device: str = "auto") -> Loaded:
    """Rebuild the model of a run (or checkpoint) from its saved config and load the weights."""
    run_dir, path, name = locate_checkpoint(target, which)
    ckpt = load_checkpoint(path)
    check_config_targets(ckpt["config"], path, recorded_model_target(run_dir))
    cfg = with_added_keys(OmegaConf.create(ckpt["config"]))
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or key not in EVAL_OVERRIDES:
            raise ConfigError(
                key,
                message=(
                    f"{item}: cannot be overridden when evaluating a saved run; "
                    f"allowed: {', '.join(k + '=...' for k in EVAL_OVERRIDES)}"
                ),
            )
    merge_overrides(cfg, overrides, strict=False)
    info = ckpt.get("data") or {}
    if "num_classes" not in info or "num_features" not in info:
        raise CheckpointError(f"{path} has no data block (num_features/num_classes); it predates mlprun-eval")
    dev = resolve_device(device, key="--device")  # mlprun-eval's and mlprun-predict's option
    loss = Loss(cfg.loss, int(info["num_classes"]))
    model = build_model(cfg.model, int(info["num_features"]), loss, torch.device("cpu"))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model in its config: {first_line(exc, 200)}") from None
    return Loaded(run_dir, path, name, ckpt, cfg, model.to(dev).eval(), loss, dev)


SPLITS = ("test", "val", "train")  # what mlprun-eval --split scores


def load_test_split(loaded: Loaded, which: str = "test"):
    """The run's test split (or its validation or training split, as training drew them from
    the saved config: the same split_seed, no augmentation), normalised with the statistics saved
    in the checkpoint."""
    cfg = loaded.cfg
    info = loaded.info
    with open_dict(cfg.dataset):
        if info.get("mean") is not None:
            cfg.dataset.normalize = True
            cfg.dataset.mean, cfg.dataset.std = list(info["mean"]), list(info["std"])
        elif "normalize" in cfg.dataset:
            cfg.dataset.normalize = False
        if "augment" in cfg.dataset:
            cfg.dataset.augment.enabled = False
    data = load_data(cfg.dataset, loaded.device)
    if which == "train":
        return data, data.train
    if which == "val":
        if data.val is None:
            raise ConfigError(
                "--split",
                "val",
                message="--split val: this run has no validation split (dataset.val_fraction=0); allowed: test, train",
            )
        return data, data.val
    if data.load_test is None:
        raise ConfigError(
            "dataset",
            cfg.dataset.name,
            message=(
                f"dataset={cfg.dataset.name} of this run has no test set configured "
                f"(image datasets: give dataset.test_csv=... or dataset.test_dir=...)"
            ),
        )
    return data, data.load_test()


def evaluate_saved(
    target: str,
    which: str | None = None,
    overrides=(),
    device: str = "auto",
    batch_size: int = 1000,
    split_name: str = "test",
) -> tuple[Loaded, dict, object]:
    loaded = load_run(target, which, overrides, device)
    data, split = load_test_split(loaded, split_name)
    names = loaded.info.get("class_names") or data.class_names
    m = test_metrics(loaded.model, loaded.loss, split, int(loaded.info["num_classes"]), batch_size, names)
    m["epoch"] = int(loaded.ckpt["epoch"])
    m["checkpoint"] = loaded.which
    m["path"] = str(loaded.path)
    m["split"] = split_name
    return loaded, m, split


if __name__ == "__main__":  # python -m mlprunner.evaluate: the same as mlprun-eval
    from .cli import eval_main

    eval_main()
