"""Where a run computes and how it is seeded: `trainer.device` and `trainer.seed`."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import MlprunError


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """`name` (auto, cpu, cuda, cuda:N, mps) as a torch.device; `key`: what the user set it with."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MlprunError(f"{key}={name}: CUDA is not available on this machine; allowed here: auto, cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise MlprunError(f"{key}={name}: only {torch.cuda.device_count()} CUDA device(s) present")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MlprunError(f"{key}=mps: MPS is not available on this machine; allowed here: auto, cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.are_deterministic_algorithms_enabled():
        # only when needed: use_deterministic_algorithms imports torch._inductor (~1.5 s)
        torch.use_deterministic_algorithms(False)
