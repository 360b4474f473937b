"""Checkpoints: atomic writes, safe loads (weights_only=True), and RNG state capture.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so
`torch.load(path, weights_only=True)` reads it and a crafted pickle is refused unexecuted.
"""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
import pickle
import queue
import random
import re
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, WriteError, first_line

FORMAT = "mlprunner-checkpoint-v1"
REQUIRED_KEYS = ("model", "epoch", "step", "config")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_UMASK = os.umask(0o022)  # read the process umask (at import, before any threads) ...
os.umask(_UMASK)  # ... and put it back


def temp_files_of_atomic_writes(folder: Path) -> list[Path]:
    """The temp files atomic_write_bytes makes in `folder` (`.<name>.<mkstemp's 8 characters>.tmp`)
    and a killed process left: never a valid file, since never renamed."""
    return [p for p in Path(folder).glob(".*.tmp") if re.fullmatch(r"\..+\.[A-Za-z0-9_]{8}\.tmp", p.name)]


def atomic_write_bytes(path: Path, write) -> None:
    """Write through `write(fileobj)` into a temp file beside `path`, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file the usual permissions
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        error = _write_error(path, exc)  # before the temp file goes: a full disk is still full
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if error is not None:
            raise error from None
        raise
    _fsync_dir(path.parent)


# a write that fails with less than this free beside the file was stopped by a full disk
_NEARLY_FULL = 1 << 20


def _write_error(path: Path, exc: BaseException) -> WriteError | None:
    """A failed write as one line naming the file and the cause: torch.save reports a full disk
    as "[enforce fail at inline_container.cc:...] ... file write failed" (no errno), so the free
    space beside the file decides; None for an error that is not the file system's."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return WriteError(f"no space left on device while writing {path}")
        if exc.errno == errno.EDQUOT:
            return WriteError(f"disk quota exceeded while writing {path}")
        return WriteError(f"cannot write {path}: {exc.strerror or exc}")
    if isinstance(exc, RuntimeError) and ("inline_container" in str(exc) or "write failed" in str(exc)):
        try:
            st = os.statvfs(path.parent)
            full = st.f_bavail * st.f_frsize < _NEARLY_FULL
        except (OSError, AttributeError):  # no statvfs (Windows)
            full = False
        if full:
            return WriteError(f"no space left on device while writing {path}")
        return WriteError(f"cannot write {path}: {_first_sentence(exc)}")
    return None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class Abandoned(Exception):
    """A checkpoint write given up because the process is leaving at once (a second Ctrl-C)."""


def save_checkpoint(path: Path, state: dict, abort: threading.Event | None = None) -> None:
    """Write `state` to `path` atomically; when `abort` is set before the file is complete,
    raise Abandoned and leave the old file as it was."""
    state = {"format": FORMAT, **state}
    delay = float(os.environ.get("MLPRUN_TEST_SLOW_CHECKPOINT") or 0)

    def write(fh):
        if not delay:
            torch.save(state, fh)
        else:
            # Test hook (tests/test_resume.py): write half, pause, write the rest, so a test can
            # observe the temp file and kill the process in the middle of a checkpoint write.
            buf = io.BytesIO()
            torch.save(state, buf)
            data = buf.getvalue()
            fh.write(data[: len(data) // 2])
            fh.flush()
            if abort is not None:
                abort.wait(delay)
            else:
                time.sleep(delay)
            if abort is None or not abort.is_set():
                fh.write(data[len(data) // 2 :])
        if abort is not None and abort.is_set():
            raise Abandoned(str(path))

    atomic_write_bytes(path, write)


def snapshot(obj):
    """A copy of a checkpoint state, tensors on the CPU, that later training steps cannot change.

    On the CPU, not the tensors' device: the writer thread must make no CUDA call, since one
    made while the training thread captures a CUDA graph invalidates the capture."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class BackgroundWriter:
    """Writes a run's files (checkpoints, then results.json) in one background thread, in the
    order they were submitted, while training goes on.

    `save_checkpoint()` snapshots the state to the CPU at once (so the files hold exactly this
    moment) and queues its serialisation and fsync; it first waits for earlier writes, so at most one
    checkpoint is in flight. `submit()` queues any other write to run after it -- results.json
    goes this way, so it never claims an epoch whose last.pt is not on disk yet. A failed write
    skips the ones queued after it and raises from the next `wait()` or `save_checkpoint()`.
    Each file is still replaced atomically (atomic_write_bytes).
    """

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._abort = threading.Event()

    def submit(self, write) -> None:
        if self._thread is None:
            # a daemon, so a process that ends without wait() never hangs on it; the trainer
            # waits at the end of fit() and on every error
            self._thread = threading.Thread(target=self._work, name="mlprun-writer", daemon=True)
            self._thread.start()
        self._queue.put(write)

    def _work(self) -> None:
        while True:
            write = self._queue.get()
            if write is None:  # close()
                self._queue.task_done()
                return
            try:
                if self._error is None and not self._abort.is_set():
                    write()
            except Abandoned:
                pass
            except BaseException as exc:  # handed to the training thread by wait()
                self._error = exc
            finally:
                self._queue.task_done()

    def save_checkpoint(self, paths, state: dict) -> None:
        self.wait()
        state = snapshot(state)
        self.submit(lambda: [save_checkpoint(path, state, self._abort) for path in paths])

    def wait(self, raise_error: bool = True) -> None:
        """Block until every queued write is on disk; raise the first error (when asked)."""
        self._queue.join()
        error, self._error = self._error, None
        if error is not None and raise_error:
            raise error

    def close(self) -> None:
        """Let the thread end once the queued writes are done (a later submit() starts a new
        one), so a process that trains many runs keeps no idle thread per run."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None

    def abandon(self) -> None:
        """Give up the writes not yet on disk (their files stay as they were) and wait for the
        thread to let go of them: for a process that must leave at once."""
        self._abort.set()
        self._queue.join()


def _first_sentence(exc: BaseException) -> str:
    """first_line of a library's error, cut at its first sentence when that line is long."""
    line = first_line(exc)
    if len(line) > 160:  # its first sentence, not a cut in the middle of the next one
        line = re.split(r"(?<=\.)\s+", line)[0].rstrip(".")
    return line if len(line) <= 160 else line[:157] + "..."


def load_checkpoint(path: Path | str) -> dict:
    """Load a checkpoint safely; any problem is a one-line CheckpointError naming the file.

    `weights_only=True`: the unpickler builds only tensors and plain containers and refuses any
    other global before it is imported, so a crafted file never runs code.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise for a bad file
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # "Unsupported global: GLOBAL x.y" or "Trying to load unsupported GLOBAL x.y ..."
        m = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if m:
            raise CheckpointError(
                f"refusing to load {path}: it asks to import {m.group(1)} when unpickled, which could "
                f"run code (mlprun loads only weights_only checkpoints: tensors and plain values)"
            ) from None
        m = re.search(r"WeightsUnpickler error: \s*(.+)", str(exc))
        detail = m.group(1).strip()[:120] if m else _first_sentence(exc)
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({detail})") from None
    except Exception as exc:  # truncated zip, garbage, a text file, an empty file, ...
        detail = _first_sentence(exc)
        if isinstance(exc, EOFError):
            detail = "the file ends too early" if path.stat().st_size else "the file is empty"
        elif len(detail) < 12:  # e.g. KeyError: 105 from a text file's first byte
            detail = f"unreadable content: {type(exc).__name__} {detail}"
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a PyTorch checkpoint ({detail})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or any(k not in state for k in REQUIRED_KEYS):
        what = "a dict without mlprun's format marker" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(f"{path} is not an mlprun checkpoint (it holds {what})")
    return state


# Classes a checkpoint's config may name as `_target_`, per config group. Anything else (another
# module, or a `_target_` nested elsewhere, which hydra.utils.instantiate would call too) is
# refused before anything is built: a crafted checkpoint must not be able to call os.system.
TARGETS = {
    "model": ("mlprunner.models", "torch.nn.Module"),
    "optim": ("torch.optim", "torch.optim.Optimizer"),
    "scheduler": ("torch.optim.lr_scheduler", "torch.optim.lr_scheduler.LRScheduler"),
    "loss": ("torch.nn", "torch.nn.modules.loss._Loss"),
    "dataset": ("mlprunner.data", None),  # loader functions marked by data.loader, not classes
    "logger": ("mlprunner.loggers", "mlprunner.loggers.Logger"),  # logger.<name>._target_
}


def _base(dotted: str):
    module, _, name = dotted.rpartition(".")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _target_ok(group: str, target) -> bool:
    if group not in TARGETS or not isinstance(target, str):
        return False
    module, _, name = target.rpartition(".")
    allowed_module, base = TARGETS[group]
    # torch.optim.adam.Adam is torch.optim.Adam: a submodule of the allowed package, and then the
    # class itself is checked
    if not (module == allowed_module or module.startswith(allowed_module + ".")) or not name.isidentifier():
        return False
    if not all(part.isidentifier() for part in module.split(".")):
        return False
    try:
        obj = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return False
    if base is None:
        return callable(obj) and hasattr(obj, "dataset_facts")
    bases = (_base(base),)
    if group == "scheduler":  # ReduceLROnPlateau is no LRScheduler subclass in older torch
        bases += (torch.optim.lr_scheduler.ReduceLROnPlateau,)
    return isinstance(obj, type) and issubclass(obj, bases)


def _users_model_ok(target: str, path) -> bool:
    """The model class a run folder's own config names: importable, and a torch.nn.Module."""
    module, _, name = target.rpartition(".")
    if not module or not all(part.isidentifier() for part in target.split(".")):
        return False
    try:
        obj = getattr(importlib.import_module(module), name)
    except Exception as exc:  # not importable here (PYTHONPATH?): one line, naming it
        raise CheckpointError(
            f"cannot rebuild the model of {path}: model._target_={target!r} cannot be imported "
            f"({type(exc).__name__}: {_first_sentence(exc)}); is its package on PYTHONPATH?"
        ) from None
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def check_config_targets(config, path: Path | str, model_target: str | None = None) -> None:
    """Refuse a checkpoint whose saved config would instantiate anything but mlprun's own classes.

    model_target: the model class the run folder's own config (.hydra/config.yaml, written when
    the run started) names. A model of the user's own is allowed only when the checkpoint names
    that same class: what the user ran is the user's statement, a checkpoint alone is not."""

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}.{key}" if where else str(key)
                if key == "_target_":
                    group = where if "." not in where else ""
                    if where.startswith("logger.") and where.count(".") == 1:
                        group = "logger"
                    if group == "model" and isinstance(value, str) and not _target_ok(group, value):
                        if model_target is None:
                            raise CheckpointError(
                                f"refusing to rebuild the model of {path}: its config sets model._target_="
                                f"{value!r}, which is not mlprun's; a model of your own is rebuilt only from "
                                f"its run folder, whose .hydra/config.yaml names it"
                            )
                        if value != model_target:
                            raise CheckpointError(
                                f"refusing to rebuild the model of {path}: its config sets model._target_="
                                f"{value!r} but its run folder's .hydra/config.yaml names {model_target!r} "
                                f"(a checkpoint may rebuild mlprun's models or the model its run started with)"
                            )
                        if _users_model_ok(value, path):
                            continue
                    if not _target_ok(group, value):
                        raise CheckpointError(
                            f"refusing to resume from {path}: its config sets {here}={value!r}, which mlprun "
                            f"does not instantiate from a checkpoint (allowed: mlprunner.models.*, "
                            f"torch.optim.*, torch.optim.lr_scheduler.*, torch.nn losses, "
                            f"mlprunner.data loaders, mlprunner.loggers)"
                        )
                else:
                    walk(value, here)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not an mlprun checkpoint (its config is not a mapping)")
    walk(config, "")


# --------------------------------------------------------------------------- RNG state


def capture_rng() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
