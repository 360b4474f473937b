#!/usr/bin/env python
"""Where a CUDA-graphed training step spends its device time (CUDA only).

Runs the benchmark's job (MNIST 54000/6000, 784-500-300-10 ReLU without dropout, Adam, batch
100, `trainer.cuda_graph=true`) for --epochs epochs in this process under torch.profiler and
prints the kernels by device time, with the number of graph launches, so that the device time
per step (the sum of the kernels' time over the steps) can be set against the wall time per step.

    python scripts/profile_graph.py --epochs 2 --out profile_graph.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from torch.profiler import ProfilerActivity, profile

from mlprunner.config import register_resolvers
from mlprunner.run import run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_graph: needs a CUDA device")
        return 2
    register_resolvers()
    overrides = [
        f"dataset={a.dataset}",
        "model=mlp_500_300",
        "model.dropout=0",
        f"trainer.epochs={a.epochs}",
        "trainer.device=cuda",
        "trainer.cuda_graph=true",
        "trainer.progress=none",
    ]
    with initialize_config_module("mlprunner.configs", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with tempfile.TemporaryDirectory(prefix="mlprun-profile-") as tmp:
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            results = run(cfg, Path(tmp) / "run", overrides=overrides)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key == "cudaGraphLaunch")
    kernels = [e for e in events if e.device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA]
    kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
    total_us = sum(e.self_device_time_total for e in kernels)
    rows = [
        {"kernel": e.key[:90], "calls": e.count, "device_us": round(e.self_device_time_total, 1)}
        for e in kernels[: a.top]
    ]
    summary = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "epochs": a.epochs,
        "wall_s_under_profiler": round(wall, 3),
        "graph_launches": launches,
        "device_us_all_kernels": round(total_us, 1),
        "device_us_per_graph_launch": round(total_us / launches, 2) if launches else None,
        "epoch_s": [h.get("time_s") for h in results.get("history", [])],
        "top_kernels": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "top_kernels"}, indent=2))
    for r in rows:
        print(f"{r['device_us']:>12,.1f} us {r['calls']:>8}  {r['kernel']}")
    if a.out:
        a.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
