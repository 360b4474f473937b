"""Stacked sweeps against Hydra's basic launcher: model-epochs per second both ways.

    python scripts/bench_stacked.py                      # 16 jobs (lr x seed) of the default MNIST job, 2 epochs
    python scripts/bench_stacked.py --jobs 4 --epochs 1 --subset 5000 --rounds 1

Each round runs the same sweep once with hydra/launcher=stacked and once with the basic
launcher (alternating which goes first), each into a fresh folder, in a subprocess, and times
the whole sweep (start-up included, the same for both). On a shared machine compare the ratio
within a round, not the absolute numbers. Needs MLPRUN_DATA with MNIST.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep_args(jobs: int, epochs: int, subset: int | None, device: str) -> list[str]:
    seeds = max(1, jobs // 4)
    lrs = [f"{0.0005 * (i + 1):g}" for i in range(max(1, jobs // seeds))]
    args = [
        "-m",
        f"optim.lr={','.join(lrs)}",
        f"trainer.seed={','.join(str(s) for s in range(seeds))}",
        f"trainer.epochs={epochs}",
        f"trainer.device={device}",
        "trainer.progress=none",
        "trainer.tensorboard.graph=false",
        "trainer.tensorboard.histograms=false",
    ]
    if subset:
        args.append(f"dataset.subset={subset}")
    return args


def timed(args: list[str], folder: Path) -> float:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mlprunner", *args, f"hydra.sweep.dir={folder}"], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"sweep failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=None, help="dataset.subset (training samples) for a quick run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-models", type=int, default=64)
    p.add_argument(
        "--basic-jobs",
        type=int,
        default=None,
        help="jobs the basic launcher runs (default: all); it trains one job after another, so a "
        "part of the sweep gives its rate (e.g. 16 of 64 jobs on a GPU)",
    )
    a = p.parse_args()
    base = sweep_args(a.jobs, a.epochs, a.subset, a.device)
    basic = sweep_args(a.basic_jobs or a.jobs, a.epochs, a.subset, a.device)

    def count(args: list[str]) -> int:
        return len(args[1].split(",")) * len(args[2].split(","))

    model_epochs = {"stacked": count(base) * a.epochs, "basic": count(basic) * a.epochs}
    ways = {
        "stacked": [*base, "hydra/launcher=stacked", f"hydra.launcher.max_models={a.max_models}"],
        "basic": basic,
    }
    print(
        f"{count(base)} jobs x {a.epochs} epochs (subset {a.subset or 'all'}), device {a.device}; "
        f"the basic launcher runs {count(basic)} of them"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            order = ["stacked", "basic"] if r % 2 == 0 else ["basic", "stacked"]
            secs = {w: timed(ways[w], Path(tmp) / f"{w}{r}") for w in order}
            rate = {w: model_epochs[w] / s for w, s in secs.items()}
            rows.append(rate)
            print(
                f"round {r + 1}: stacked {rate['stacked']:.3f} model-epochs/s ({secs['stacked']:.1f} s), "
                f"basic {rate['basic']:.3f} ({secs['basic']:.1f} s): {rate['stacked'] / rate['basic']:.2f}x"
            )
    best = {w: max(r[w] for r in rows) for w in ways}
    print(f"best of {a.rounds}: stacked {best['stacked']:.3f}, basic {best['basic']:.3f} model-epochs/s")


if __name__ == "__main__":
    main()
