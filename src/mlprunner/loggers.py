"""Where a run's metrics go besides results.json: the `logger` config group.

Each entry of `cfg.logger` names a class by `_target_` (configs/logger: tensorboard, csv,
mlflow, many, none; a list such as `logger=[tensorboard,csv]` combines them) and is built
with hydra.utils.instantiate. The Trainer talks to one `Loggers` object, which hands every
call to each logger:

- `start(run)`: once, before training (hyper-parameters; on resume, reopen what was there)
- `step(step, scalars)`: step-level scalars every trainer.log_every_n_steps
- `epoch(epoch, step, metrics, model)`: right after an epoch, before its checkpoint is saved
- `epoch_saved(epoch, step, metrics)`: the same epoch once its checkpoint is on disk (called
  from the checkpoint writer's thread); a logger that cannot take back what it logged (MLflow)
  logs here, so a resumed run never logs an epoch twice
- `test(epoch, metrics)`: the test-set metrics
- `finish(run)`: the run completed (final metrics, artifacts), then closed
- `abort(status)`: the run failed or was interrupted (status `failed` or `interrupted`)

A saved config from before the `logger` group (no `logger` key) logs to TensorBoard, as those
runs did (`with_logger`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, open_dict, read_write

from .checkpoint import atomic_write_text
from .data import sample_images
from .errors import ConfigError, LoggerIncomplete, MlprunError, first_line
from .metrics import TEST_SCALARS
from .provenance import as_markdown, launch_folder
from .sessions import (
    claim_tensorboard_dir,
    group_choices,
    hparams_of,
    hydra_sweep_dir,
    job_name,
    swept_keys,
    tensorboard_dir,
)
from .tblog import TensorBoardLogger

log = logging.getLogger("mlprunner")

LEGACY_LOGGER = {"tensorboard": {"_target_": "mlprunner.loggers.TensorBoard"}}
MLFLOW_HINT = "logger=mlflow needs MLflow, which is not installed: pip install 'mlprunner[mlflow]'"


def with_logger(cfg: DictConfig) -> DictConfig:
    """A config saved before the `logger` group (no `logger` key) logs to TensorBoard, as it did."""
    if "logger" not in cfg:
        with read_write(cfg), open_dict(cfg):
            cfg.logger = LEGACY_LOGGER
    return cfg


def check_loggers(cfg: DictConfig) -> None:
    """Each logger names a Logger class that can be imported (MLflow: that it is installed),
    before a run folder is made."""
    for name, node in (cfg.get("logger") or {}).items():
        key = f"logger.{name}"
        if not isinstance(node, DictConfig) or not node.get("_target_"):
            raise ConfigError(
                key, message=f"{key}: a logger needs a _target_ (a Logger class, e.g. mlprunner.loggers.CSV)"
            )
        try:
            cls = get_class(str(node._target_))
        except Exception as exc:  # not importable, or not a class
            cause = exc.__cause__ or exc
            raise ConfigError(
                f"{key}._target_", message=f"{key}._target_={node._target_!r}: {first_line(cause)}"
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, Logger)):
            raise ConfigError(
                f"{key}._target_",
                node._target_,
                "a subclass of mlprunner.loggers.Logger, e.g. mlprunner.loggers.CSV",
            )
        cls.check_installed()


# --------------------------------------------------------------------------- the interface


@dataclass
class RunInfo:
    """What a logger may read about the run it logs."""

    cfg: DictConfig
    run_dir: Path
    results: dict  # results.json's dict (RunRecord.data): a logger may keep its ids in it
    ckpt: dict | None = None  # the checkpoint a resumed run continues from
    overrides: list = field(default_factory=list)
    pieces: object = None  # build.Pieces (TensorBoard's graph)

    @property
    def resume_epoch(self) -> int:
        return int(self.ckpt["epoch"]) if self.ckpt else 0

    @property
    def resume_step(self) -> int:
        return int(self.ckpt["step"]) if self.ckpt else 0

    @cached_property
    def hparams(self) -> dict:
        return hparams_of(self.cfg, self.overrides, group_choices(self.run_dir))

    @property
    def provenance(self) -> dict | None:
        return self.results.get("provenance")

    def name(self) -> str:
        """The job's name: its swept values in a sweep, else the run folder's name."""
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            named = job_name(self.overrides, swept_keys(hydra_sweep_dir()))
            if named:
                return named
        return self.run_dir.name


class Logger:
    """A logger of the `logger` group; every method may be left as it is (does nothing)."""

    @classmethod
    def check_installed(cls) -> None:
        """Raise MlprunError (one line, with the pip command) when a package it needs is missing."""

    def start(self, run: RunInfo) -> None:
        pass

    def step(self, step: int, scalars: dict) -> None:
        pass

    def epoch(self, epoch: int, step: int, metrics: dict, model: torch.nn.Module | None = None) -> None:
        pass

    def epoch_saved(self, epoch: int, step: int, metrics: dict) -> None:
        pass

    def test(self, epoch: int, metrics: dict) -> None:
        """The test metrics; `epoch`: the epochs the run has trained so far (their step), the
        scored checkpoint's own epoch is metrics["epoch"]."""

    def finish(self, run: RunInfo) -> None:
        pass

    def abort(self, status: str) -> None:
        pass


def final_metrics(results: dict) -> dict:
    """The finished run's summary numbers (TensorBoard's HParams metrics, without `hparam/`)."""
    best_val = (results.get("best") or {}).get("val") or {}
    metrics = {
        "best_val_error": best_val.get("error"),
        "best_val_loss": best_val.get("loss"),
        "last_train_error": (results.get("last") or {}).get("train", {}).get("error"),
        "test_error": (results.get("test") or {}).get("error"),
        "swa_val_error": ((results.get("swa") or {}).get("val") or {}).get("error"),
        "swa_val_loss": ((results.get("swa") or {}).get("val") or {}).get("loss"),
    }
    return {k: v for k, v in metrics.items() if v is not None}


def flat_metrics(record: dict) -> dict:
    """One history entry of results.json ({epoch, train, val, lr, time_s}) as the flat names
    loggers use (train/loss, val/error, lr, time_s)."""
    out = {f"train/{k}": v for k, v in (record.get("train") or {}).items()}
    out.update({f"val/{k}": v for k, v in (record.get("val") or {}).items()})
    for key in ("lr", "time_s"):
        if record.get(key) is not None:
            out[key] = record[key]
    return out


class Loggers:
    """The run's loggers as one: each call goes to every logger, in the config's order."""

    def __init__(self, loggers: list[Logger] | None = None):
        self.loggers = list(loggers or [])

    @property
    def tensorboard(self) -> TensorBoardLogger | None:
        """TensorBoard's writers, for what only TensorBoard shows (figures, PR curves)."""
        return next((lg.tb for lg in self.loggers if isinstance(lg, TensorBoard) and lg.tb is not None), None)

    def start(self, run: RunInfo) -> None:
        for lg in self.loggers:
            lg.start(run)

    def step(self, step: int, scalars: dict) -> None:
        for lg in self.loggers:
            lg.step(step, scalars)

    def epoch(self, epoch: int, step: int, metrics: dict, model=None) -> None:
        for lg in self.loggers:
            lg.epoch(epoch, step, metrics, model)

    def epoch_saved(self, epoch: int, step: int, metrics: dict) -> None:
        for lg in self.loggers:
            lg.epoch_saved(epoch, step, metrics)

    def test(self, epoch: int, metrics: dict) -> None:
        for lg in self.loggers:
            lg.test(epoch, metrics)

    def finish(self, run: RunInfo) -> None:
        """Every logger's end, each tried even when one before it failed (an MLflow run left
        RUNNING because TensorBoard's close failed); the first failure is then raised."""
        failed = []
        for lg in self.loggers:
            try:
                lg.finish(run)
            except Exception as exc:
                failed.append(f"logger {type(lg).__name__} could not finish: {first_line(exc, 300)}")
        if failed:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise LoggerIncomplete(f"the run completed (results.json), but {failed[0]}{more}")

    def abort(self, status: str) -> None:
        for lg in self.loggers:
            try:
                lg.abort(status)
            except Exception as exc:  # the run's own error is what the user needs to see
                log.warning(f"logger {type(lg).__name__} could not close: {exc}")


def make_loggers(run: RunInfo) -> Loggers:
    """The loggers of `run.cfg.logger`, instantiated and started."""
    out = []
    for name, node in (with_logger(run.cfg).logger or {}).items():
        try:
            logger = instantiate(node)
        except Exception as exc:  # e.g. a key the class does not take
            cause = exc.__cause__ or exc
            raise ConfigError(f"logger.{name}", message=f"logger.{name}: {first_line(cause)}") from None
        out.append(logger)
    loggers = Loggers(out)
    try:
        loggers.start(run)
    except BaseException:
        loggers.abort("failed")
        raise
    return loggers


# --------------------------------------------------------------------------- TensorBoard


class TensorBoard(Logger):
    """TensorBoard (tblog.py): `<run>/tensorboard` (a sweep job's: `<sweep>/tensorboard/<swept
    values>`), set by trainer.tensorboard.* (enabled, histograms, graph)."""

    def __init__(self):
        self.tb: TensorBoardLogger | None = None
        self.graph = False
        self.resumed = False

    def start(self, run: RunInfo) -> None:
        cfg, run_dir, ckpt = run.cfg, run.run_dir, run.ckpt
        settings = cfg.trainer.tensorboard
        if not settings.enabled:
            return
        # a resumed run continues in the folder it started in (results.json "tensorboard"),
        # a new one gets its own (a sweep job's is named by its values)
        if ckpt is None:
            tb_dir = self._fresh_dir(run)
        else:
            tb_dir = run_dir / run.results.get("tensorboard", "tensorboard")
        run.results["tensorboard"] = os.path.relpath(tb_dir, run_dir)
        if ckpt is None and tb_dir.is_dir():  # a fresh start: what an abandoned attempt logged goes
            for old in tb_dir.glob("events.out.tfevents.*"):
                old.unlink()  # never another job's: _fresh_dir gives a folder only this run owns
        tb = TensorBoardLogger(
            tb_dir, resume_epoch=run.resume_epoch, resume_step=run.resume_step, histograms=bool(settings.histograms)
        )
        self.resumed = ckpt is not None  # its HParams session was started by the first process
        hparams = run.hparams
        if ckpt is not None:  # its session goes on, with the values it goes on with
            tb.replace_hparams(hparams)
            resumes = run.results.get("resumed") or []
            prov = resumes[-1].get("provenance") if resumes else None
            if prov:  # the command that resumed it, at the epoch it resumed from
                tb.when_open(lambda: tb.text("provenance", as_markdown(prov), run.resume_epoch))
        else:  # written when the writers open, after the first training step
            prov = run.provenance
            tb.when_open(lambda: tb.hparams(hparams))
            if prov:
                tb.when_open(lambda: tb.text("provenance", as_markdown(prov)))
            data = getattr(run.pieces, "data", None)
            if settings.get("images", True) and data is not None and data.image_shape is not None:
                # what the network is given, as the lecture notes' make_grid example shows it
                tb.when_open(lambda: tb.images("Images/train", sample_images(data)))
        self.tb, self.graph = tb, bool(settings.graph)

    @staticmethod
    def _fresh_dir(run: RunInfo) -> Path:
        """The folder of a run that starts from epoch 1: a restart of a run that never
        checkpointed (its results.json kept "tensorboard", record.py) goes on in its own folder,
        anything else gets a new one (a sweep job's: claimed for it, sessions.tensorboard_dir)."""
        saved = run.results.get("tensorboard")
        if saved:
            tb_dir = run.run_dir / saved
            if tb_dir.resolve().parent == run.run_dir.resolve() or claim_tensorboard_dir(
                tb_dir, run.run_dir, tb_dir.parent.parent
            ):
                return tb_dir
        return tensorboard_dir(run.run_dir, run.overrides)

    def step(self, step: int, scalars: dict) -> None:
        if self.tb is not None:
            self.tb.step(step, scalars)

    def epoch(self, epoch: int, step: int, metrics: dict, model=None) -> None:
        if self.tb is not None:
            self.tb.epoch(epoch, metrics, model)

    # test metrics, the confusion matrix and PR curves are written by evaluate.py (Loggers.tensorboard)

    def finish(self, run: RunInfo) -> None:
        """The model graph and the HParams metrics of the finished run, then the writers close.

        The graph is traced here rather than at the start: tracing takes about half a second,
        which would otherwise lengthen the first epoch."""
        tb = self.tb
        if tb is None:
            return
        if self.graph and run.pieces is not None:
            data, model = run.pieces.data, run.pieces.model
            example = data.train.x[:2] if hasattr(data.train, "x") else torch.zeros(2, data.num_features)
            tb.graph(model, example.to(next(model.parameters()).device))
        epoch = int(run.results.get("epochs_completed") or 0)
        tb.scalars({f"hparam/{k}": v for k, v in final_metrics(run.results).items()}, epoch)
        tb.end_session("completed")
        tb.close()
        self.tb = None

    def abort(self, status: str) -> None:
        """End the HParams session as failed or interrupted (else TensorBoard shows it Unknown)
        when there is one: written by this process (its writers opened) or by the process it
        resumes. A failed run always gets one, as results.json says failed: the writers open on
        the first logged scalar, and a run that diverges before it (a too large lr) would
        otherwise be missing from a sweep's HParams table. A fresh run interrupted before it has
        written nothing and writes nothing."""
        tb, self.tb = self.tb, None
        if tb is None:
            return
        if tb.opened or self.resumed or status == "failed":
            tb.end_session(status)  # on a resume this opens the writers, dropping the earlier end
        if tb.opened:  # flush what was written
            tb.close()


# --------------------------------------------------------------------------- metrics.csv


class CSV(Logger):
    """`<run>/metrics.csv`: one row per epoch (epoch, step, train/..., val/..., lr, time_s).

    The whole file is rewritten atomically after each epoch (a kill leaves the previous
    version), so it is never half written; a resumed run first drops the rows after the epoch
    it continues from."""

    FIRST = ("epoch", "step")

    def __init__(self, filename: str = "metrics.csv"):
        self.filename = filename
        self.path: Path | None = None
        self.columns: list[str] = list(self.FIRST)
        self.rows: list[dict] = []

    def start(self, run: RunInfo) -> None:
        self.path = run.run_dir / self.filename
        if run.ckpt is None or not self.path.is_file():
            self.path.unlink(missing_ok=True)  # a fresh start: what an abandoned attempt wrote goes
            self.rows = []
            return
        with open(self.path, newline="") as fh:
            reader = csv.DictReader(fh)
            self.columns = list(reader.fieldnames or self.FIRST)
            self.rows = [r for r in reader if r.get("epoch", "").isdigit() and int(r["epoch"]) <= run.resume_epoch]
        self._write()

    def epoch(self, epoch: int, step: int, metrics: dict, model=None) -> None:
        row = {"epoch": epoch, "step": step}
        for key, value in metrics.items():
            if value is None:
                continue
            row[key] = repr(float(value)) if isinstance(value, float) else value
            if key not in self.columns:
                self.columns.append(key)
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch] + [row]
        self._write()

    def _write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


# --------------------------------------------------------------------------- MLflow


def _mlflow():
    try:
        # lazy: MLflow is an optional extra and takes about a second to import
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlprunError(MLFLOW_HINT) from None
    return mlflow, MlflowClient


def _param(value) -> str:
    """A hyper-parameter as MLflow's text, booleans as the config writes them (true, not True)."""
    return (str(value).lower() if isinstance(value, bool) else str(value))[:6000]


def _absolute_uri(uri: str) -> str:
    """A relative local store (`sqlite:///x.db`, `file:./mlruns`, `./mlruns`) is taken relative to
    the folder mlprun was started in, so a resume from elsewhere finds the same store."""
    base = launch_folder()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(base / uri[len("sqlite:///") :])
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return "file:" + str(base / uri[len("file:") :])
    if "://" not in uri and not uri.startswith("file:") and not Path(uri).is_absolute():
        return str(base / uri)
    return uri


class MLflow(Logger):
    """MLflow tracking through MlflowClient: one MLflow run per mlprun run.

    Params: the run's hyper-parameters (as in TensorBoard's HParams); metrics: each epoch's
    train/val metrics and lr with step = epoch, logged once the epoch's checkpoint is on disk;
    the test metrics; tags: provenance (mlprun version, git commit and dirty flag, host, device,
    command, run folder). At the end: the summary metrics and, with log_artifacts, results.json,
    learning_curves.png, confusion_matrix.png and checkpoints/best.pt. The MLflow run's id is
    kept in results.json ("mlflow"), so `resume=` continues the same MLflow run."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        log_artifacts: bool = True,
    ):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.log_artifacts = log_artifacts
        self.client = None
        self.run_id: str | None = None
        self._warned = False

    @classmethod
    def check_installed(cls) -> None:
        _mlflow()

    def start(self, run: RunInfo) -> None:
        mlflow, MlflowClient = _mlflow()
        for noisy in ("alembic", "mlflow.store.db.utils"):  # database set-up chatter at INFO
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # results.json names this run's MLflow run when an earlier process made one: a resume, or
        # a restart of a run stopped before its first checkpoint (record.py keeps it then too)
        saved = run.results.get("mlflow") or {}
        if saved.get("run_id"):
            uri = saved.get("tracking_uri") or _absolute_uri(self.tracking_uri or mlflow.get_tracking_uri())
        else:
            uri = _absolute_uri(self.tracking_uri or mlflow.get_tracking_uri())
        try:
            self.client = MlflowClient(tracking_uri=uri)
            if saved.get("run_id") and self._reopen(saved["run_id"], run):
                return
            self._create(run, uri)
        except MlprunError:
            raise
        except Exception as exc:
            raise MlprunError(f"logger=mlflow: cannot log to {uri}: {first_line(exc, 300)}") from None

    def _create(self, run: RunInfo, uri: str) -> None:
        from mlflow.entities import Param, RunTag

        name = self.experiment_name or str(run.cfg.dataset.name)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(name)
            except Exception:  # another job of the sweep made it first
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        tags = {"mlprun.run_dir": str(run.run_dir.resolve())}
        prov = run.provenance or {}
        for key in ("mlprun", "torch", "python", "host", "device", "command"):
            if prov.get(key) is not None:
                tags[f"mlprun.{key}"] = str(prov[key])
        git = prov.get("git") or {}
        if git.get("commit"):
            tags["mlflow.source.git.commit"] = str(git["commit"])
            tags["mlprun.git_dirty"] = str(git.get("dirty")).lower()
        created = self.client.create_run(exp_id, run_name=self.run_name or run.name(), tags=tags)
        self.run_id = created.info.run_id
        run.results["mlflow"] = {"tracking_uri": uri, "experiment_id": exp_id, "run_id": self.run_id}
        params = [Param(str(k)[:250], _param(v)) for k, v in run.hparams.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("mlprun.status", "running")])

    def _reopen(self, run_id: str, run: RunInfo) -> bool:
        """Continue the MLflow run of the first process; log the epochs up to the checkpoint
        that it could not log (killed between the checkpoint and MLflow)."""
        from mlflow.entities import Param

        try:
            existing = self.client.get_run(run_id)
        except Exception:
            log.warning(f"MLflow run {run_id} is not in this tracking store any more; starting a new MLflow run")
            return False
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "mlprun.resumed_from_epoch", str(run.resume_epoch))
        if run.ckpt is None:  # a restart: keys its command line added (MLflow params never change)
            params = existing.data.params
            new = [Param(str(k)[:250], _param(v)) for k, v in run.hparams.items() if str(k)[:250] not in params]
            for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=new[i : i + 100])
        logged = {m.step for m in self.client.get_metric_history(run_id, "train/loss")}
        for record in (run.ckpt or {}).get("history", []):
            if record["epoch"] <= run.resume_epoch and record["epoch"] not in logged:
                self.epoch_saved(record["epoch"], 0, flat_metrics(record))
        return True

    def _safe(self, what: str, call) -> None:
        """A failure to log warns (once) and never stops the training."""
        if self.run_id is None:
            return
        try:
            call()
        except Exception as exc:
            if not self._warned:
                log.warning(f"MLflow: could not log {what}: {first_line(exc, 200)}")
                self._warned = True

    def _metrics(self, values: dict, step: int):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        return [
            Metric(key, float(v), now, step)
            for key, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]

    def epoch_saved(self, epoch: int, step: int, metrics: dict) -> None:
        self._safe("epoch metrics", lambda: self.client.log_batch(self.run_id, metrics=self._metrics(metrics, epoch)))

    def test(self, epoch: int, metrics: dict) -> None:
        """test/* at step = the epochs trained so far, not the scored checkpoint's epoch (a tag):
        MLflow cannot delete the test of an earlier process that a resume has trained past, so
        only a later step tells the new test from it."""
        from mlflow.entities import RunTag

        values = {f"test/{k}": metrics.get(k) for k in TEST_SCALARS}
        tags = [RunTag("mlprun.test_checkpoint_epoch", str(metrics.get("epoch", epoch)))]
        if metrics.get("checkpoint"):
            tags.append(RunTag("mlprun.test_checkpoint", str(metrics["checkpoint"])))
        self._safe(
            "test metrics",
            lambda: self.client.log_batch(self.run_id, metrics=self._metrics(values, epoch), tags=tags),
        )

    def finish(self, run: RunInfo) -> None:
        if self.run_id is None:
            return
        epoch = int(run.results.get("epochs_completed") or 0)
        summary = {k: v for k, v in final_metrics(run.results).items() if k != "test_error"}  # test/error has it
        self._safe(
            "final metrics",
            lambda: self.client.log_batch(self.run_id, metrics=self._metrics(summary, epoch)),
        )
        if self.log_artifacts:
            for name, folder in (
                ("results.json", None),
                ("learning_curves.png", None),
                ("confusion_matrix.png", None),
                ("checkpoints/best.pt", "checkpoints"),
            ):
                path = run.run_dir / name
                if path.is_file():
                    self._safe(name, lambda p=path, f=folder: self.client.log_artifact(self.run_id, str(p), f))
        self._safe("status", lambda: self.client.set_tag(self.run_id, "mlprun.status", "completed"))
        self._safe("status", lambda: self.client.set_terminated(self.run_id, "FINISHED"))
        self.run_id = None

    def abort(self, status: str) -> None:
        if self.run_id is None:
            return
        self._safe("status", lambda: self.client.set_tag(self.run_id, "mlprun.status", status))
        self._safe(
            "status", lambda: self.client.set_terminated(self.run_id, "KILLED" if status == "interrupted" else "FAILED")
        )
        self.run_id = None
