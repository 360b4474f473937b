"""TensorBoard: one log folder (one TensorBoard run) per run, continued on resume without
overlapping steps.

Epoch scalars (tags of the shared contract, step = epoch number) and step-level scalars
(`*_step`/`*/step` tags, every trainer.log_every_n_steps, step = global step) share the run's one
folder. A resumed run first drops, from the event files already there, whatever the stopped
process logged after its last checkpoint (epoch tags after its epoch, step tags after its
step); TensorBoard's own purge marker cannot do that, since it cuts every tag of a run at one
step. It also drops the HParams session's start record, written again with the values the
resumed run goes on with, and what the run writes again at its end: the `hparam/*` summary scalars and the
HParams session's end record (TensorBoard reads only the first end record of a run, so a
completed resume would otherwise keep showing the earlier process's status); and, once it trains
or tests again, the earlier test results (`*/test`, `Test/*`, `PR/test/*`: they scored a model
the run has since trained on; a new test is logged at step = the epochs trained so far, so an
earlier test point and a new one never share a step). Runs made before this layout (a `steps/`
sub-folder) continue with the old two writers. The Projector's embedding (`<step:05d>/<tag>/`
and projector_config.pbtxt, written once at the end) is replaced by a resumed run's.

HParams: each run writes its own session (start info with its hyper-parameters, end info with
its status), never an experiment summary, so TensorBoard builds the table of a sweep from all
sessions and marks which hyper-parameters differ itself. The status is Success for a completed
run, Failure for a failed one and for an interrupted one (HParams has no status for "stopped,
can be resumed"); a resume replaces it.

The writers open on first use (the first step scalars, after the first training step), so
importing tensorboard, tracing the graph and writing the HParams session do not delay the
first step. Weight histograms are binned on the model's device with `torch.histc` (64 equal
buckets, exact min/max/sum/sum of squares) and written with `add_histogram_raw`, which is much
cheaper than `add_histogram`'s NumPy binning after a copy to the host (docs/performance.md).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import torch

from .errors import first_line

GRID_MIN_SIDE = 28  # pixels: an MNIST digit's size, readable at TensorBoard's scale
log = logging.getLogger("mlprunner")

EPOCH_TAGS = {
    "train/loss": "Loss/train",
    "val/loss": "Loss/val",
    "train/error": "Error/train",
    "val/error": "Error/val",
    "train/accuracy": "Accuracy/train",
    "val/accuracy": "Accuracy/val",
    "train/f1": "F1/train",
    "val/f1": "F1/val",
    "train/precision": "Precision/train",
    "val/precision": "Precision/val",
    "train/recall": "Recall/train",
    "val/recall": "Recall/val",
    "train_eval/loss": "Loss/train_eval",  # trainer.eval_train
    "train_eval/error": "Error/train_eval",
    "train_eval/accuracy": "Accuracy/train_eval",
    "lr": "LR",
}
STEP_TAGS = ("Loss/train_step", "LR/step")  # step = global step; every other tag's step is an epoch


# tensorboard.plugins.hparams.metadata's, without importing it
SESSION_START_TAG = "_hparams_/session_start_info"
SESSION_END_TAG = "_hparams_/session_end_info"


def is_step_tag(tag: str) -> bool:
    return tag in STEP_TAGS or tag.endswith("_step") or tag.endswith("/step")


def is_test_tag(tag: str) -> bool:
    """A test-set result (evaluate.py): `Error|Accuracy|F1|Precision|Recall|AUROC|Loss/test`,
    `Test/confusion_matrix`, `PR/test/<class>`."""
    return tag.endswith("/test") or tag.startswith(("Test/", "PR/test/"))


def is_end_tag(tag: str) -> bool:
    """What a run writes again when it ends: the `hparam/*` summary scalars and the session's end."""
    return tag.startswith("hparam/") or tag == SESSION_END_TAG


def truncate_events(log_dir: Path, epoch: int, step: int, seen: set | None = None, drop=None) -> int:
    """Drop, from the event files in `log_dir`, the values logged after `epoch` (epoch tags)
    or after `step` (step tags), and those whose tag `drop(tag)` says; each changed file is
    rewritten atomically. Returns how many values were dropped; `seen` gets "graph" when a model
    graph is there already."""
    # lazy: tensorboard's readers and protos, only on resume
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    dropped = 0
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        kept, changed = [], False
        for raw in RawEventFileLoader(str(path)).Load():
            ev = Event.FromString(raw)
            if seen is not None and ev.HasField("graph_def"):
                seen.add("graph")
            if ev.HasField("summary") and ev.summary.value:
                values = [
                    v
                    for v in ev.summary.value
                    if ev.step <= (step if is_step_tag(v.tag) else epoch) and not (drop and drop(v.tag))
                ]
                if len(values) < len(ev.summary.value):
                    dropped += len(ev.summary.value) - len(values)
                    changed = True
                    if not values:
                        continue
                    del ev.summary.value[:]
                    ev.summary.value.extend(values)
                    raw = ev.SerializeToString()
            kept.append(raw)
        if changed:
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as fh:
                writer = RecordWriter(fh)
                for raw in kept:
                    writer.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
    return dropped


def hparams_summaries(hparams: dict, status: str | None = None):
    """The HParams plugin's session start info (hparams: str, bool, int or float values), or its
    end info when `status` is given (completed, failed, interrupted, running; interrupted is
    Failure: HParams' statuses are unknown, success, failure and running only)."""
    # lazy: tensorboard's protos load with the writers
    from google.protobuf import struct_pb2
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    if status is None:
        info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for key, value in hparams.items():
            if isinstance(value, bool):
                info.hparams[key].CopyFrom(struct_pb2.Value(bool_value=value))
            elif isinstance(value, (int, float)):
                info.hparams[key].CopyFrom(struct_pb2.Value(number_value=float(value)))
            else:
                info.hparams[key].CopyFrom(struct_pb2.Value(string_value=str(value)))
        content, tag = plugin_data_pb2.HParamsPluginData(session_start_info=info), metadata.SESSION_START_INFO_TAG
    else:
        code = {
            "completed": "STATUS_SUCCESS",
            "failed": "STATUS_FAILURE",
            "interrupted": "STATUS_FAILURE",
            "running": "STATUS_RUNNING",
        }
        info = plugin_data_pb2.SessionEndInfo(
            status=api_pb2.Status.Value(code.get(status, "STATUS_UNKNOWN")), end_time_secs=time.time()
        )
        content, tag = plugin_data_pb2.HParamsPluginData(session_end_info=info), metadata.SESSION_END_INFO_TAG
    content.version = metadata.PLUGIN_DATA_VERSION
    meta = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


class TensorBoardLogger:
    HISTOGRAM_BINS = 64

    def __init__(self, log_dir: Path, resume_epoch: int = 0, resume_step: int = 0, histograms: bool = True):
        self.log_dir = Path(log_dir)
        self.resume_epoch, self.resume_step = resume_epoch, resume_step
        self.histograms = histograms
        # runs made before steps and epochs shared one folder go on with their steps/ writer
        self.legacy = (self.log_dir / "steps").is_dir()
        self._writers = None
        self._on_open: list = []  # writes queued until the writers exist
        self._seen: set = set()  # what an earlier process of the run logged once: "graph"
        self._retest = False  # this process trains or tests: an earlier process's test results go
        self._new_session = False  # this process writes the HParams session start: the earlier goes

    def _open(self):
        if self._writers is None:
            # lazy: tensorboard and protobuf load when the first scalar is due, after the first step
            from torch.utils.tensorboard import SummaryWriter

            if self.legacy:  # purge_step drops what a stopped process logged after its last checkpoint
                self._writers = (
                    SummaryWriter(str(self.log_dir), purge_step=self.resume_epoch + 1 if self.resume_epoch else None),
                    SummaryWriter(
                        str(self.log_dir / "steps"), purge_step=self.resume_step + 1 if self.resume_step else None
                    ),
                )
            else:
                if self.resume_epoch or self.resume_step:
                    truncate_events(self.log_dir, self.resume_epoch, self.resume_step, self._seen, self._stale)
                writer = SummaryWriter(str(self.log_dir))
                self._writers = (writer, writer)
            queued, self._on_open = self._on_open, []
            for write in queued:
                write()
        return self._writers

    def _stale(self, tag: str) -> bool:
        """What a resumed run drops from the earlier processes' events (see the module's docstring)."""
        return (
            is_end_tag(tag) or (self._retest and is_test_tag(tag)) or (self._new_session and tag == SESSION_START_TAG)
        )

    @property
    def opened(self) -> bool:
        return self._writers is not None

    def new_test_results(self) -> None:
        """Test results follow (evaluate.py): an earlier process's go when the writers open."""
        self._retest = True

    @property
    def writer(self):
        return self._open()[0]

    @property
    def step_writer(self):
        return self._open()[1]

    def when_open(self, write) -> None:
        """Run `write()` (e.g. the graph or the HParams session) once the writers are opened."""
        if self._writers is None:
            self._on_open.append(write)
        else:
            write()

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The model's graph, once per run (a run resumed after it finished has one already:
        TensorBoard would warn of more than one graph per run)."""
        self._open()
        if "graph" in self._seen:
            return
        was_training = model.training
        model.eval()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.writer.add_graph(model, example)
        except Exception as exc:  # the graph is a nicety; tracing must never break a run
            log.debug(f"TensorBoard graph not written: {type(exc).__name__}: {first_line(exc, 200)}")
        finally:
            model.train(was_training)  # a failed trace must not leave the model in eval mode (no dropout)

    def replace_hparams(self, hparams: dict) -> None:
        """A resumed run's HParams session start, with the values it goes on with (trainer.epochs=30
        of `resume=... trainer.epochs=30`): TensorBoard reads a run's first start record only, so
        the earlier process's goes when the writers open. Runs of the old two-writer layout keep
        theirs."""
        if self.legacy:
            return
        self._new_session = True
        self.when_open(lambda: self.hparams(hparams))

    def hparams(self, hparams: dict) -> None:
        """Start this run's HParams session (its hyper-parameters) in its own event file.

        SummaryWriter.add_hparams would write into a new sub-folder (a second run in TensorBoard's
        list) and an experiment summary that fixes the table's columns to this run's keys; the
        writer's FileWriter puts only the session into this run's own event file."""
        self.writer.file_writer.add_summary(hparams_summaries(hparams))

    def end_session(self, status: str) -> None:
        """End this run's HParams session with its status (completed, failed, interrupted)."""
        self.writer.file_writer.add_summary(hparams_summaries({}, status))

    def epoch(self, epoch: int, metrics: dict, model: torch.nn.Module | None = None) -> None:
        self._retest = True  # trained on: an earlier test scored another model
        for key, tag in EPOCH_TAGS.items():
            if key in metrics and metrics[key] is not None:
                self.writer.add_scalar(tag, metrics[key], epoch)
        if self.histograms and model is not None:
            for name, p in model.named_parameters():
                self.histogram(f"weights/{name}", p, epoch)
        self.writer.flush()
        self.step_writer.flush()

    @torch.no_grad()
    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """A histogram of `values`, binned where they live; only the summary (range, 64 counts,
        sum, sum of squares) is read to the host, once per tensor per epoch.

        As TensorBoard's own binning does, bucket limits are right edges and an empty first
        bucket carries the left edge (the minimum).
        """
        v = values.detach().flatten().float()
        if v.numel() == 0:
            return
        lo, hi = (float(t) for t in torch.aminmax(v))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return  # histc needs a finite range; a diverged run is stopped by the trainer anyway
        if hi > lo:
            counts = [0.0] + torch.histc(v, bins=self.HISTOGRAM_BINS, min=lo, max=hi).tolist()
            limits = torch.linspace(lo, hi, self.HISTOGRAM_BINS + 1, dtype=torch.float64).tolist()
            limits[0], limits[-1] = lo, hi
        else:  # all values equal: one bucket around them, as numpy's histogram makes
            counts, limits = [0.0, float(v.numel())], [lo - 0.5, hi + 0.5]
        self.writer.add_histogram_raw(
            tag,
            min=lo,
            max=hi,
            num=v.numel(),
            sum=float(v.sum()),
            sum_squares=float(v.dot(v)),
            bucket_limits=limits,
            bucket_counts=counts,
            global_step=step,
        )

    def step(self, step: int, scalars: dict) -> None:
        self._retest = True  # trained on: an earlier test scored another model
        for tag, value in scalars.items():
            self.step_writer.add_scalar(tag, value, step)

    def scalars(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def images(self, tag: str, batch: torch.Tensor, step: int = 0) -> None:
        """A grid of images (N, C, H, W) in [0, 1] for TensorBoard's Images tab: 8 to a row, a
        white line between them, each enlarged (nearest, whole pixels) to at least 28 pixels high
        (digits' 8x8 images made a 64-pixel grid of touching digits)."""
        # lazy: torchvision takes ~1 s to import after torch; a run without images never needs it
        from torchvision.utils import make_grid

        scale = math.ceil(GRID_MIN_SIDE / batch.shape[-2])
        if scale > 1:
            batch = torch.nn.functional.interpolate(batch, scale_factor=scale, mode="nearest")
        grid = make_grid(batch, nrow=8, padding=2, pad_value=1.0)
        self.writer.add_image(tag, grid, step, dataformats="CHW")

    def embedding(self, tag: str, features: torch.Tensor, rows: list, header: list, images, step: int) -> Path:
        """Points for TensorBoard's Projector: `features` (N, D), one metadata row per point under
        `header`, and images (N, C, H, W) in [0, 1] for its sprite (or None), in
        `<log dir>/<step:05d>/<tag>`; returns that folder. An earlier process's embeddings go
        first: SummaryWriter writes projector_config.pbtxt with its own embeddings only, so theirs
        would stay on disk unlisted, and one of the same step would be written into."""
        writer = self.writer
        self._drop_embeddings()
        writer.add_embedding(
            features, metadata=rows, metadata_header=header, label_img=images, global_step=step, tag=tag
        )
        return self.log_dir / f"{step:05d}" / tag

    def _drop_embeddings(self) -> None:
        config = self.log_dir / "projector_config.pbtxt"
        if not config.is_file():
            return
        # loaded with the writers (tensorboard is imported lazily, see the module's docstring)
        from google.protobuf import text_format
        from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

        try:
            listed = text_format.Parse(config.read_text(), ProjectorConfig())
        except (OSError, text_format.ParseError) as exc:
            log.debug(f"{config}: not read ({first_line(exc)}); its embeddings stay")
            return
        root = self.log_dir.resolve()
        for info in listed.embeddings:
            folder = (self.log_dir / info.tensor_path).parent.resolve()
            # only what add_embedding makes: <log dir>/<step:05d>/<tag>
            if folder.parent.parent == root and folder.parent.name.isdigit() and folder.is_dir():
                shutil.rmtree(folder)
                if not any(folder.parent.iterdir()):
                    folder.parent.rmdir()
        config.unlink()

    def figure(self, tag: str, fig, step: int) -> None:
        self.writer.add_figure(tag, fig, step)
        self.writer.flush()

    def close(self) -> None:
        for w in set(self._open()):  # a run that logged nothing still gets its queued writes
            w.close()
