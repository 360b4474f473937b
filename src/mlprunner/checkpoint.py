"""Checkpoints: atomic writes, safe loads (weights_only=True), and RNG state capture.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so
`torch.load(path, weights_only=True)` reads it and a crafted pickle is refused unexecuted.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
import zipfile
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


def atomic_write_bytes(path: Path, write) -> None:
    """Write through `write(fileobj)` into a temp file beside `path`, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
    atomic_write_bytes(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: Path | str) -> dict:
    """Load a checkpoint safely; any problem is a one-line CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects that could run code "
                f"when unpickled (only weights_only checkpoints are loaded)") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            AttributeError, TypeError, IndexError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or not a PyTorch checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not an mlprun checkpoint (missing keys or format marker)")
    return state


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
