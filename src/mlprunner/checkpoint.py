"""Checkpoints: atomic writes, safe loads (weights_only=True), and RNG state capture.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so
`torch.load(path, weights_only=True)` reads it and a crafted pickle is refused unexecuted.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import pickle
import random
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError

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
os.umask(_UMASK)          # ... and put it back


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
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(path: Path, state: dict) -> None:
    state = {"format": FORMAT, **state}
    delay = float(os.environ.get("MLPRUN_TEST_SLOW_CHECKPOINT") or 0)

    def write(fh):
        if not delay:
            torch.save(state, fh)
            return
        # Test hook (tests/test_resume.py): write half, pause, write the rest, so a test can
        # observe the temp file and kill the process in the middle of a checkpoint write.
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        fh.write(data[: len(data) // 2])
        fh.flush()
        time.sleep(delay)
        fh.write(data[len(data) // 2:])

    atomic_write_bytes(path, write)


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:160]
    return type(exc).__name__


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
                f"run code (mlprun loads only weights_only checkpoints: tensors and plain values)") from None
        m = re.search(r"WeightsUnpickler error: \s*(.+)", str(exc))
        detail = m.group(1).strip()[:120] if m else _first_line(exc)
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({detail})") from None
    except Exception as exc:  # truncated zip, garbage, a text file, an empty file, ...
        detail = _first_line(exc)
        if isinstance(exc, EOFError):
            detail = "the file ends too early" if path.stat().st_size else "the file is empty"
        elif len(detail) < 12:  # e.g. KeyError: 105 from a text file's first byte
            detail = f"unreadable content: {type(exc).__name__} {detail}"
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or not a PyTorch checkpoint "
                              f"({detail})") from None
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
    if module != allowed_module or not name.isidentifier():
        return False
    obj = getattr(importlib.import_module(module), name, None)
    bases = (_base(base),)
    if group == "scheduler":  # ReduceLROnPlateau is no LRScheduler subclass in older torch
        bases += (torch.optim.lr_scheduler.ReduceLROnPlateau,)
    return isinstance(obj, type) and issubclass(obj, bases)


def check_config_targets(config, path: Path | str) -> None:
    """Refuse a checkpoint whose saved config would instantiate anything but mlprun's own classes."""

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}.{key}" if where else str(key)
                if key == "_target_":
                    group = where if "." not in where else ""
                    if not _target_ok(group, value):
                        raise CheckpointError(
                            f"refusing to resume from {path}: its config sets {here}={value!r}, which mlprun "
                            f"does not instantiate from a checkpoint (allowed: mlprunner.models.*, "
                            f"torch.optim.*, torch.optim.lr_scheduler.*, torch.nn losses)")
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
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss": py_state[2]},
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
