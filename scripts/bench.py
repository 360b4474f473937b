#!/usr/bin/env python
"""Benchmark: one MLP job three ways, alternating repetitions in one invocation.

  (a) seed    the seed's MNIST script (003, mlp_exp.py): torchvision MNIST with ToTensor
              through a DataLoader (batch 100, shuffle), the loss read with .item() every step,
              its error() on the validation loader (per-batch .item()) after every epoch
  (b) bare    a hand-written loop over in-memory tensors, torch.optim.Adam with its defaults,
              no logging, no metrics beyond the validation loss/accuracy
  (c) mlprun  mlprunner.run.run() in this process on a temporary run directory, with its
              default TensorBoard logging (step scalars, epoch scalars, weight histograms, graph),
              torchmetrics-derived metrics, results.json and last.pt/best.pt every epoch;
              eager steps (trainer.cuda_graph=false)
  (g) graph   (c) with trainer.cuda_graph=true: each step replayed as a CUDA graph (CUDA only;
              run by default when --device is cuda)

Every way trains the 784-500-300-10 ReLU MLP with Adam (lr 1e-3) on the same split sizes
(MNIST: 54000 train / 6000 validation) and validates once per epoch. Seconds per epoch is
the mean over the epochs of one repetition (training plus validation plus, for (c), the
per-epoch logging and checkpoints), reported as the median over repetitions; one untimed
warm-up pass of each way runs first so imports and allocators are warm. samples/s is training
samples per second of epoch time.

Separately, `mlprun` runs once as a fresh process (1 epoch of the same job) to measure the
time from process start to the end of the first training step (results.json `startup_s`) and
the peak resident memory of the process (getrusage of that child), --startup-reps times, each
beside a process that only imports torch and takes one Adam step (the floor), in alternating order.

    python scripts/bench.py --epochs 5 --out bench.json
    python scripts/bench.py --dataset digits --epochs 1 --reps 1      # quick, offline
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WAYS = {
    "a": "seed-style DataLoader loop",
    "b": "bare in-memory tensor loop",
    "c": "mlprun Trainer",
    "g": "mlprun Trainer, CUDA graph",
}


# ----------------------------------------------------------------------------- shared pieces


def compose_cfg(args, epochs: int, subset: int | None, extra=()):
    from hydra import compose, initialize_config_module

    from mlprunner.config import register_resolvers

    register_resolvers()
    # the seed's job exactly: no dropout (the mlp presets default to 0.2), same as loops (a) and (b)
    overrides = [
        f"dataset={args.dataset}",
        "model=mlp_500_300",
        "model.dropout=0",
        "optim=adam",
        f"trainer.epochs={epochs}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.device={args.device}",
        "trainer.progress=none",
    ]
    if args.data:
        overrides.append(f"dataset.root={args.data}")
    if args.threads:
        overrides.append(f"trainer.threads={args.threads}")
    if subset:
        overrides.append(f"dataset.subset={subset}")
    with initialize_config_module("mlprunner.configs", version_base="1.3"):
        return compose("config", overrides=overrides + list(extra)), overrides + list(extra)


def make_model(num_features: int, device) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(num_features, 500),
        torch.nn.ReLU(),
        torch.nn.Linear(500, 300),
        torch.nn.ReLU(),
        torch.nn.Linear(300, 10),
    ).to(device)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Job:
    """The data every way uses, loaded once: tensors for (b), a torchvision-style dataset for (a)."""

    def __init__(self, args):
        from mlprunner.data import load_data
        from mlprunner.device import resolve_device

        self.args = args
        self.device = resolve_device(args.device)
        cfg, _ = compose_cfg(args, 1, args.subset)
        self.data = load_data(cfg.dataset, self.device)
        self.n_train, self.n_val = len(self.data.train), len(self.data.val)
        self.num_features = self.data.num_features
        self._seed_sets = None

    def seed_datasets(self):
        """(train, val) datasets that decode PIL images and apply ToTensor per sample."""
        if self._seed_sets is None:
            from torch.utils.data import Subset, random_split
            from torchvision.transforms import ToTensor

            if self.args.dataset == "mnist":
                from torchvision.datasets import MNIST

                full = MNIST(
                    str(Path(self.args.data or os.environ.get("MLPRUN_DATA", "./data"))),
                    train=True,
                    download=False,
                    transform=ToTensor(),
                )
            else:
                full = _DigitsImages(ToTensor())
            n = self.n_train + self.n_val
            if n < len(full):
                full = Subset(full, range(n))
            self._seed_sets = random_split(full, [self.n_train, self.n_val], generator=torch.Generator().manual_seed(0))
        return self._seed_sets


class _DigitsImages(torch.utils.data.Dataset):
    """scikit-learn's 8x8 digits as PIL images, so (a) does per-sample decoding as with MNIST."""

    def __init__(self, transform):
        from PIL import Image
        from sklearn.datasets import load_digits

        bunch = load_digits()
        self.images = [Image.fromarray((img * 255 / 16).astype("uint8"), mode="L") for img in bunch.images]
        self.targets = [int(t) for t in bunch.target]
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.targets[i]


# ----------------------------------------------------------------------------- (a) seed style


def run_seed(job: Job, epochs: int) -> list[float]:
    """The loop of the seed's MNIST script (003, mlp_exp.py), plus its error() on the
    validation loader after every epoch."""
    from torch.utils.data import DataLoader

    device, bs = job.device, job.args.batch_size
    train_set, val_set = job.seed_datasets()
    train_loader = DataLoader(train_set, batch_size=bs, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=bs, shuffle=False)
    torch.manual_seed(0)
    model = make_model(job.num_features, device)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        total_loss = 0.0
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            inputs = inputs.view(inputs.shape[0], -1)
            loss = loss_fn(model(inputs), labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
            total_loss += loss.item()  # the seed sums the epoch loss on the host every step
        errors, total = 0, 0
        with torch.no_grad():  # the seed's error(model, loader, device)
            for inputs, labels in val_loader:
                inputs = inputs.to(device).view(inputs.shape[0], -1)
                _, predicted = model(inputs).max(1)
                errors += (predicted.cpu() != labels).sum().item()
                total += labels.size(0)
        times.append(time.perf_counter() - t0)
    return times


# ----------------------------------------------------------------------------- (b) bare loop


def run_bare(job: Job, epochs: int) -> list[float]:
    device, bs = job.device, job.args.batch_size
    x, y = job.data.train.x, job.data.train.y
    xv, yv = job.data.val.x, job.data.val.y
    torch.manual_seed(0)
    model = make_model(job.num_features, device)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # torch's defaults, as a hand-written loop
    n = x.shape[0]
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            total, correct = 0.0, 0
            for i in range(0, xv.shape[0], 1000):
                out = model(xv[i : i + 1000])
                total += loss_fn(out, yv[i : i + 1000]) * out.shape[0]
                correct += (out.argmax(1) == yv[i : i + 1000]).sum()
            float(total), int(correct)  # one host read per epoch
        times.append(time.perf_counter() - t0)
    return times


# ----------------------------------------------------------------------------- (c) mlprun


def run_mlprun(job: Job, epochs: int, subset: int | None = None, graph: bool = False) -> list[float]:
    """mlprunner.run.run() on a temporary run dir; the epoch clock starts at each train_epoch()."""
    from mlprunner import train as T
    from mlprunner.run import run

    extra = [*job.args.c_override, f"trainer.cuda_graph={str(graph).lower()}"]
    cfg, overrides = compose_cfg(job.args, epochs, subset or job.args.subset, extra=extra)
    marks: list[float] = []
    orig_epoch, orig_fit = T.Trainer.train_epoch, T.Trainer.fit

    def train_epoch(self, epoch):
        marks.append(time.perf_counter())
        return orig_epoch(self, epoch)

    def fit(self):
        try:
            return orig_fit(self)
        finally:
            marks.append(time.perf_counter())

    T.Trainer.train_epoch, T.Trainer.fit = train_epoch, fit
    try:
        with tempfile.TemporaryDirectory(prefix="mlprun-bench-") as tmp:
            run(cfg, Path(tmp) / "run", overrides=overrides)
    finally:
        T.Trainer.train_epoch, T.Trainer.fit = orig_epoch, orig_fit
    return [b - a for a, b in zip(marks, marks[1:])]


def run_graphed(job: Job, epochs: int, subset: int | None = None) -> list[float]:
    return run_mlprun(job, epochs, subset, graph=True)


RUNNERS = {"a": run_seed, "b": run_bare, "c": run_mlprun, "g": run_graphed}


def speed_probe_ms(device, n: int = 100) -> float:
    """Median time of one (100x784)@(784x500) fp32 matmul, taken before each timed run: a
    machine's (especially a VM's) matrix-product speed can drift between runs; the probe shows
    which speed a number was measured at (docs/performance.md)."""
    x = torch.randn(100, 784, device=device)
    w = torch.randn(500, 784, device=device)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        x @ w.t()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


# ----------------------------------------------------------------------------- fresh process


def _mlprun_process(args) -> dict:
    """`python -m mlprunner` for one epoch: start-up to the first step, peak RSS, exit code."""
    with tempfile.TemporaryDirectory(prefix="mlprun-bench-proc-") as tmp:
        run_dir = Path(tmp) / "run"
        overrides = [
            f"dataset={args.dataset}",
            "model.dropout=0",
            "trainer.epochs=1",
            f"trainer.batch_size={args.batch_size}",
            f"trainer.device={args.device}",
            "trainer.progress=plain",
            f"hydra.run.dir={run_dir}",
        ]
        if args.data:
            overrides.append(f"dataset.root={args.data}")
        if args.subset:
            overrides.append(f"dataset.subset={args.subset}")
        if args.threads:
            overrides.append(f"trainer.threads={args.threads}")
        overrides += args.c_override
        log = Path(tmp) / "out.log"
        with open(log, "w") as fh:
            t0 = time.time()
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlprunner", *overrides], cwd=tmp, stdout=fh, stderr=subprocess.STDOUT
            )
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.time() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out = {
            "command": "python -m mlprunner " + " ".join(o for o in overrides if "hydra.run.dir" not in o),
            "exit_code": proc.returncode,
            "wall_s": round(wall, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        }  # Linux: KiB
        results = run_dir / "results.json"
        if results.is_file():
            out["startup_s"] = json.loads(results.read_text()).get("startup_s")
        if proc.returncode != 0:
            out["log_tail"] = log.read_text()[-2000:]
        return out


def _floor_process(args) -> float | None:
    """A process that only imports torch and takes one Adam step (torch 2.x imports torch._dynamo
    on the first optimizer step), measured the same way: its start to the end of that step."""
    with tempfile.TemporaryDirectory(prefix="mlprun-bench-floor-") as tmp:
        floor = subprocess.run([sys.executable, "-c", FLOOR, args.device], capture_output=True, text=True, cwd=tmp)
    try:
        return round(float(floor.stdout.strip().splitlines()[-1]), 3)
    except (ValueError, IndexError):
        return None


def measure_process(args) -> dict:
    """The fresh-process start-up against its floor, --startup-reps times in alternating order
    (whichever runs first also pays for cold file caches); medians, and every repetition."""
    runs, floors = [], []
    for r in range(args.startup_reps):
        if r % 2:
            floors.append(_floor_process(args))
            runs.append(_mlprun_process(args))
        else:
            runs.append(_mlprun_process(args))
            floors.append(_floor_process(args))
    out = dict(runs[-1])
    starts = [x["startup_s"] for x in runs if x.get("startup_s") is not None]
    ok_floors = [f for f in floors if f is not None]
    out["exit_code"] = next((x["exit_code"] for x in runs if x["exit_code"] != 0), 0)
    out["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs)
    out["startup_s"] = statistics.median(starts) if starts else None
    out["floor_startup_s"] = statistics.median(ok_floors) if ok_floors else None
    out["startup_s_reps"], out["floor_startup_s_reps"] = [x.get("startup_s") for x in runs], floors
    if out["startup_s"] and out["floor_startup_s"]:
        out["startup_over_floor"] = round(out["startup_s"] / out["floor_startup_s"], 3)
    return out


FLOOR = """
import sys, time, torch
from mlprunner.profiling import process_start_time
device = torch.device("cuda" if sys.argv[1] == "auto" and torch.cuda.is_available() else
                      "cpu" if sys.argv[1] == "auto" else sys.argv[1])
m = torch.nn.Linear(784, 10).to(device)
o = torch.optim.Adam(m.parameters())
m(torch.randn(100, 784, device=device)).sum().backward()
o.step()
if device.type == "cuda":
    torch.cuda.synchronize(device)
print(time.time() - process_start_time())
"""


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=5, help="epochs per repetition (default 5)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each way, alternating (default 3)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--subset", type=int, default=None, help="use only N images of the training file")
    p.add_argument(
        "--dataset",
        choices=["mnist", "digits"],
        default="mnist",
        help="mnist (needs MLPRUN_DATA or --data) or digits (bundled, offline)",
    )
    p.add_argument("--data", default=None, help="dataset root (default: $MLPRUN_DATA)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads for every way (default: torch's own, = cores)"
    )
    p.add_argument("--ways", default=None, help="which of a, b, c, g to run (default abc, and g too on a CUDA device)")
    p.add_argument(
        "--c-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra mlprun override for (c) and the fresh process, e.g. "
        "trainer.precision=bf16 (repeatable; default: none, mlprun's defaults)",
    )
    p.add_argument("--no-process", action="store_true", help="skip the fresh-process start-up/memory run")
    p.add_argument(
        "--startup-reps", type=int, default=3, help="fresh-process start-up runs, each beside a floor run (default 3)"
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.ways is None:
        args.ways = "abcg" if args.device.startswith("cuda") else "abc"
    ways = [w for w in "abcg" if w in args.ways]
    if not ways or args.epochs < 1 or args.reps < 1:
        p.error("--ways needs some of a, b, c, g; --epochs and --reps at least 1")

    if args.threads:
        torch.set_num_threads(args.threads)
    process = None
    if not args.no_process and ("c" in ways or "g" in ways):  # first, so this process's own state cannot matter
        process = measure_process(args)

    job = Job(args)
    print(
        f"bench: {args.dataset} {job.n_train} train / {job.n_val} val, batch {args.batch_size}, "
        f"784-500-300-10 Adam, {args.epochs} epochs x {args.reps} reps on {job.device} "
        f"({torch.get_num_threads()} threads)",
        flush=True,
    )
    warm_subset = min(job.n_train + job.n_val, 2000)
    for w in ways:  # untimed warm-up: imports, allocator, first-call costs
        if w in "cg":
            RUNNERS[w](job, 1, subset=warm_subset)
        else:
            RUNNERS[w](job, 1)

    per_rep: dict[str, list[float]] = {w: [] for w in ways}
    epochs_raw: dict[str, list[list[float]]] = {w: [] for w in ways}
    probes: dict[str, list[float]] = {w: [] for w in ways}
    for r in range(args.reps):
        order = ways[r % len(ways) :] + ways[: r % len(ways)]  # rotate who goes first
        for w in order:
            probes[w].append(round(speed_probe_ms(job.device), 4))
            times = RUNNERS[w](job, args.epochs)
            epochs_raw[w].append([round(t, 4) for t in times])
            per_rep[w].append(sum(times) / len(times))
            print(
                f"  rep {r + 1} {w} ({WAYS[w]}): {per_rep[w][-1]:.3f} s/epoch "
                f"(matmul probe before it: {probes[w][-1]:.3f} ms)",
                flush=True,
            )

    summary = {}
    for w in ways:
        s = statistics.median(per_rep[w])
        summary[w] = {
            "name": WAYS[w],
            "s_per_epoch": round(s, 6),
            "samples_per_s": round(job.n_train / s, 1),
            "reps_s_per_epoch": [round(t, 4) for t in per_rep[w]],
            "epochs_s": epochs_raw[w],
            "probe_ms": probes[w],
        }
    ratios, paired = {}, {}
    for num, den in (("c", "b"), ("a", "c"), ("c", "g")):
        if num in summary and den in summary:
            ratios[f"{num}/{den}"] = round(summary[num]["s_per_epoch"] / summary[den]["s_per_epoch"], 3)
            # the same ratio within each repetition (its ways ran back to back), then the median:
            # steadier than the ratio of medians when the machine's speed drifts between reps
            paired[f"{num}/{den}"] = round(statistics.median(x / y for x, y in zip(per_rep[num], per_rep[den])), 3)
    result = {
        "job": {
            "dataset": args.dataset,
            "n_train": job.n_train,
            "n_val": job.n_val,
            "batch_size": args.batch_size,
            "model": "784-500-300-10 relu" if job.num_features == 784 else f"{job.num_features}-500-300-10 relu",
            "optimizer": "Adam lr 1e-3",
            "epochs": args.epochs,
            "reps": args.reps,
            "subset": args.subset,
            "c_overrides": list(args.c_override),
        },
        "device": str(job.device),
        "device_name": torch.cuda.get_device_name(job.device)
        if job.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "ways": summary,
        "ratios": ratios,
        "ratios_paired": paired,
        "process": process,
    }
    if job.device.type == "cuda":
        result["cuda_samples_per_s"] = {w: summary[w]["samples_per_s"] for w in ways}

    print()
    print(f"{'way':<32} {'s/epoch':>9} {'samples/s':>11}")
    for w in ways:
        print(f"({w}) {WAYS[w]:<28} {summary[w]['s_per_epoch']:>9.3f} {summary[w]['samples_per_s']:>11,.0f}")
    for k, v in ratios.items():
        print(f"{k} = {v:.2f} (ratio of the medians; median of the per-repetition ratios {paired[k]:.2f})")
    if process:
        print(
            f"mlprun process: start to first step {process.get('startup_s')} s "
            f"(torch + one Adam step alone: {process.get('floor_startup_s')} s; ratio "
            f"{process.get('startup_over_floor')}; medians of {process['startup_s_reps']} and "
            f"{process['floor_startup_s_reps']}), peak RSS {process['peak_rss_mb']} MB, exit {process['exit_code']}"
        )
    print(f"load average during the run: {result['load_average']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if not process or process["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
