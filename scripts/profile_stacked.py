"""How fast can a stacked group's step be on this device? Formulations and floors, per job-step.

    python scripts/profile_stacked.py                  # 16 jobs of the default MNIST model, batch 100
    python scripts/profile_stacked.py --jobs 4 --device cuda

Synthetic data of MNIST's shape (the arithmetic does not depend on the values). Every number is
milliseconds per job-step (one training step of one job); each round measures every way once,
in a rotating order, and the table shows the best round, so a noisy machine slows all ways alike.

Whole steps (forward, cross-entropy, backward, Adam):
  solo           one job's nn.Linear model and fused Adam, as a basic-launcher job trains
  stacked        the group as mlprun trains it: baddbmm per layer (mlprunner.stacked.StackedLinear),
                 each job's loss on its own slice, one fused Adam call over the stacked tensors
                 (equal hyperparameters: the fewest calls possible)
Forward + backward only, the formulations the issue asks about:
  per-job addmm  one F.linear per job and layer
  StackedLinear  one batched product per layer over (N, batch, in) batches (mlprun's choice)
  baddbmm        the same with autograd's own baddbmm backward (its weight gradient is transposed
                 and then copied into the weights' layout)
  vmap F.linear  torch.func.vmap over the jobs
  wide first     jobs that share a data order (same trainer.seed) as one wide GEMM in the first
                 layer (lr x seed sweeps: jobs/4 seeds); the other layers by baddbmm
Floors (no autograd, no Python per op beyond the loop):
  GEMMs          the step's matrix products alone, per job (forward 3, backward 5)
  Adam           one fused Adam update of one job's parameters

The best the stacked way can reach is about `solo / (GEMMs + Adam)`: what stacking removes
is everything else (Python, autograd's bookkeeping, small kernels), never the arithmetic.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.func import vmap

from mlprunner.stacked import StackedLinear

SIZES = [784, 500, 300, 10]


def timer(device: torch.device):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def measure(fn, reps: int) -> float:
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return (time.perf_counter() - t0) / reps

    return measure


def make(n: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    ws = [(torch.randn(n, o, i, generator=gen) * i**-0.5).to(device).requires_grad_() for i, o in zip(SIZES, SIZES[1:])]
    bs = [torch.zeros(n, 1, o, device=device, requires_grad=True) for o in SIZES[1:]]
    x = torch.randn(n, 100, SIZES[0], generator=gen).to(device)
    y = torch.randint(0, 10, (n, 100), generator=gen).to(device)
    return ws, bs, x, y


def ways(n: int, device: torch.device, seeds: int) -> dict:
    ws, bs, x, y = make(n, device)
    solo = [
        torch.nn.Sequential(
            torch.nn.Linear(784, 500),
            torch.nn.ReLU(),
            torch.nn.Linear(500, 300),
            torch.nn.ReLU(),
            torch.nn.Linear(300, 10),
        ).to(device)
        for _ in range(n)
    ]
    solo_opt = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for m in solo]
    stacked = [t for wb in zip(ws, bs) for t in wb]
    stacked_opt = torch.optim.Adam(stacked, lr=1e-3, fused=True)
    views_w = [[w[j] for w in ws] for j in range(n)]
    views_b = [[b[j, 0] for b in bs] for j in range(n)]
    share = max(1, n // seeds)  # jobs per data order

    def stacked_forward(h, first=0, linear=StackedLinear.apply):
        for k in range(first, 3):
            h = linear(h, ws[k], bs[k])
            if k < 2:
                h = torch.relu(h)
        return h

    def solo_step():
        for j, (m, opt) in enumerate(zip(solo, solo_opt)):
            F.cross_entropy(m(x[j]), y[j]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def stacked_step():
        logits = stacked_forward(x)
        torch.stack([F.cross_entropy(logits[j], y[j]) for j in range(n)]).sum().backward()
        stacked_opt.step()
        stacked_opt.zero_grad(set_to_none=True)

    def per_job_addmm():
        out = []
        for j in range(n):
            h = x[j]
            for k in range(3):
                h = F.linear(h, views_w[j][k], views_b[j][k])
                if k < 2:
                    h = torch.relu(h)
            out.append(F.cross_entropy(h, y[j]))
        torch.stack(out).sum().backward()
        for t in stacked:
            t.grad = None

    def stacked_linear():
        logits = stacked_forward(x)
        torch.stack([F.cross_entropy(logits[j], y[j]) for j in range(n)]).sum().backward()
        for t in stacked:
            t.grad = None

    def baddbmm():
        logits = stacked_forward(x, linear=lambda h, w, b: torch.baddbmm(b, h, w.transpose(1, 2)))
        torch.stack([F.cross_entropy(logits[j], y[j]) for j in range(n)]).sum().backward()
        for t in stacked:
            t.grad = None

    def one_model(w0, b0, w1, b1, w2, b2, xb):
        return F.linear(torch.relu(F.linear(torch.relu(F.linear(xb, w0, b0)), w1, b1)), w2, b2)

    batched = vmap(one_model)

    def vmapped():
        logits = batched(ws[0], bs[0][:, 0], ws[1], bs[1][:, 0], ws[2], bs[2][:, 0], x)
        torch.stack([F.cross_entropy(logits[j], y[j]) for j in range(n)]).sum().backward()
        for t in stacked:
            t.grad = None

    xs = x[::share]  # one batch per data order: the jobs sharing it see the same samples

    def wide_first():
        # (seeds, batch, 784) @ (seeds, 784, share*500): one GEMM per data order
        w = ws[0].view(-1, share * 500, 784)
        h = torch.bmm(xs, w.transpose(1, 2)).view(-1, 100, share, 500).transpose(1, 2).reshape(n, 100, 500)
        logits = stacked_forward(torch.relu(h + bs[0]), first=1)
        torch.stack([F.cross_entropy(logits[j], y[j]) for j in range(n)]).sum().backward()
        for t in stacked:
            t.grad = None

    acts = [x[0]] + [torch.randn(100, o, device=device) for o in SIZES[1:]]
    w1 = [w[0].detach() for w in ws]

    def gemms():
        for _ in range(n):
            for k in range(3):  # forward
                torch.addmm(bs[k][0, 0].detach(), acts[k], w1[k].t())
            for k in range(3):  # weight gradients, and input gradients below the first layer
                torch.mm(acts[k + 1].t(), acts[k])
                if k:
                    torch.mm(acts[k + 1], w1[k])

    one = [torch.zeros_like(p, requires_grad=True) for p in solo[0].parameters()]  # not stepped by anything else
    for p in one:
        p.grad = torch.randn_like(p)
    adam = torch.optim.Adam(one, lr=1e-3, fused=True)

    def adam_only():
        for _ in range(n):
            adam.step()

    return {
        "solo": solo_step,
        "stacked": stacked_step,
        "per-job addmm": per_job_addmm,
        "StackedLinear": stacked_linear,
        "baddbmm": baddbmm,
        "vmap F.linear": vmapped,
        "wide first": wide_first,
        "GEMMs": gemms,
        "Adam": adam_only,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=16)
    p.add_argument("--seeds", type=int, default=4, help="data orders among the jobs (for 'wide first')")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=10, help="group steps per measurement")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    fns = ways(a.jobs, device, a.seeds)
    measure = timer(device)
    names = list(fns)
    best = dict.fromkeys(names, float("inf"))
    for r in range(a.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            best[name] = min(best[name], measure(fns[name], a.reps) / a.jobs * 1e3)
    print(f"{a.jobs} jobs, batch 100, 784-500-300-10, {device}, {torch.get_num_threads()} threads; ms per job-step")
    print(f"(best of {a.rounds} rounds of {a.reps} group steps)")
    for name in names:
        print(f"  {name:<15} {best[name]:7.3f}")
    floor = best["GEMMs"] + best["Adam"]
    print(f"floor (GEMMs + Adam) {floor:.3f}: the stacked way can be at most {best['solo'] / floor:.2f}x solo")
    print(f"stacked / solo speed: {best['solo'] / best['stacked']:.2f}x")


if __name__ == "__main__":
    main()
