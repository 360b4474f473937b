"""One optimizer update for a stacked group (stacked.Stack): torch's fused Adam/AdamW/SGD kernel
run over slices of the stacked (N, ...) tensors instead of once per member.

Each member keeps its own torch.optim optimizer, which still owns its hyperparameters (read
every step from its param_groups[0], so schedulers work) and its state for checkpoints: the
entries of `optimizer.state[p]` (step, exp_avg, exp_avg_sq / momentum_buffer) are views of
this object's stacked state tensors, as the members' parameters are views of the stacked
weights, so `optimizer.state_dict()` is unchanged; `release()` gives them their own memory
again. Members next to each other whose hyperparameters (and step count) are equal are
updated by one kernel call over their slice of every stacked tensor; the kernel is the one a
fused solo optimizer runs, elementwise, so each member's update is its solo update.

Why not one update with per-member (N, 1, 1) hyperparameter tensors: on the CPU that costs
about ten passes over the weights and state where the fused kernel makes one, and measured
slower than the members' own fused steps (docs/performance.md).
"""

from __future__ import annotations

import torch

# the optimizer classes updated here; type() must match exactly (a subclass may change step())
CLASSES = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


# a member's tensor with a multiple of this many elements is updated as part of a slice (see
# StackedOptimizer.whole); others one tensor per member, as a solo optimizer steps them
SLICE_ALIGN = 16


def unsupported(optimizers: list[torch.optim.Optimizer], params: list[list[torch.Tensor]]) -> str | None:
    """Why these members' optimizers cannot be updated together (they then step one by one),
    or None. `params[i]` are member i's parameters in stacked order."""
    if not all(hasattr(torch, f) for f in ("_fused_adam_", "_fused_adamw_", "_fused_sgd_")):
        return "this torch has no fused optimizer kernels (torch._fused_adam_, ...)"  # torch's internal ops
    kinds = {type(o) for o in optimizers}
    if len(kinds) != 1 or next(iter(kinds)) not in CLASSES:
        return f"optimizer {sorted(k.__name__ for k in kinds)} is not Adam, AdamW or SGD"
    for opt, ps in zip(optimizers, params):
        if len(opt.param_groups) != 1:
            return "more than one parameter group"
        group = opt.param_groups[0]
        if [id(p) for p in group["params"]] != [id(p) for p in ps]:
            return "the optimizer's parameters are not the model's Linear layers in order"
        if not group.get("fused"):
            return "the optimizer is not fused (no fused kernel for this device)"
        for key in ("amsgrad", "maximize", "capturable", "differentiable"):
            if group.get(key):
                return f"{key}=True"
        if any(isinstance(group.get(k), torch.Tensor) for k in ("lr", "betas", "momentum", "weight_decay")):
            return "a hyperparameter is a tensor"
        states = [len(opt.state.get(p, {})) > 0 for p in ps]
        if any(states) and not all(states):
            return "only some parameters have optimizer state"
        if isinstance(opt, torch.optim.SGD) and all(states) and group["momentum"] == 0:
            return "momentum=0 with state"
    return None


def _view(t: torch.Tensor, i: int, p: torch.Tensor) -> torch.Tensor:
    return t[i].view(p.shape)


class StackedOptimizer:
    """The update of every member's optimizer over the stacked tensors (see the module doc).
    `stacked[k]` is the (N, ...) tensor whose slice i is member i's k-th parameter."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], params: list[list[torch.Tensor]], stacked):
        self.optimizers = optimizers
        self.params = params
        self.stacked = [t.detach() for t in stacked]
        self.sgd = isinstance(optimizers[0], torch.optim.SGD)
        # slot k as one slice: when a member's tensor splits into whole vector blocks of the
        # fused kernel (and its threads' chunks), so that no element takes the scalar tail path
        self.whole = [t[0].numel() % SLICE_ALIGN == 0 for t in self.stacked]
        n, slots = len(optimizers), len(self.stacked)
        device = self.stacked[0].device
        with torch.no_grad():
            if self.sgd:
                self.buffers = [torch.zeros_like(t) for t in self.stacked]
                self.started = [False] * n
                for i, (opt, ps) in enumerate(zip(optimizers, params)):
                    for k, p in enumerate(ps):
                        buf = opt.state.get(p, {}).get("momentum_buffer")
                        if buf is not None:
                            _view(self.buffers[k], i, p).copy_(buf)
                            self.started[i] = True
                    if self.started[i]:
                        self._attach(i)
            else:
                self.exp_avg = [torch.zeros_like(t) for t in self.stacked]
                self.exp_avg_sq = [torch.zeros_like(t) for t in self.stacked]
                self.steps = torch.zeros(n, slots, dtype=torch.float32, device=device)
                self.count = [0] * n
                for i, (opt, ps) in enumerate(zip(optimizers, params)):
                    for k, p in enumerate(ps):
                        state = opt.state.get(p)
                        if state:
                            _view(self.exp_avg[k], i, p).copy_(state["exp_avg"])
                            _view(self.exp_avg_sq[k], i, p).copy_(state["exp_avg_sq"])
                            self.steps[i, k] = float(state["step"])
                    self.count[i] = int(self.steps[i].max())
                    if bool((self.steps[i] != self.count[i]).any()):
                        raise ValueError("the member's parameters have different step counts")
                    self._attach(i)

    def _attach(self, i: int) -> None:
        """Member i's optimizer state: views of the stacked state."""
        opt = self.optimizers[i]
        for k, p in enumerate(self.params[i]):
            if self.sgd:
                opt.state[p]["momentum_buffer"] = _view(self.buffers[k], i, p)
            else:
                opt.state[p].update(
                    step=self.steps[i, k],
                    exp_avg=_view(self.exp_avg[k], i, p),
                    exp_avg_sq=_view(self.exp_avg_sq[k], i, p),
                )

    def release(self) -> None:
        """Each member's optimizer state gets its own memory again (the stack is dropped)."""
        for opt, ps in zip(self.optimizers, self.params):
            for p in ps:
                state = opt.state.get(p)
                if state:
                    for key, value in state.items():
                        if isinstance(value, torch.Tensor):
                            state[key] = value.clone()

    def _members(self, k: int, a: int, b: int) -> range:
        return range(a, a + 1) if self.whole[k] else range(a, b)

    def _picker(self, a: int, b: int):
        """What the kernel gets of members a..b-1 of each stacked tensor: one slice where the
        kernel's work on it is bitwise its work on each member's tensor, else one view per member."""

        def pick(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            out = []
            for k, t in enumerate(tensors):
                out += [t[a:b]] if self.whole[k] else [t[i] for i in range(a, b)]
            return out

        return pick

    def _key(self, i: int) -> tuple:
        g = self.optimizers[i].param_groups[0]
        if self.sgd:
            return (
                float(g["lr"]),
                float(g["momentum"]),
                float(g["dampening"]),
                bool(g["nesterov"]),
                float(g["weight_decay"]),
                self.started[i],
            )
        decoupled = isinstance(self.optimizers[i], torch.optim.AdamW) or bool(g.get("decoupled_weight_decay"))
        beta1, beta2 = g["betas"]
        return (
            float(g["lr"]),
            float(beta1),
            float(beta2),
            float(g["eps"]),
            float(g["weight_decay"]),
            decoupled,
            self.count[i],
        )

    def runs(self) -> list[tuple[int, int, tuple]]:
        """(start, stop, hyperparameters) of each run of neighbouring members with equal ones."""
        out: list[tuple[int, int, tuple]] = []
        for i in range(len(self.optimizers)):
            key = self._key(i)
            if out and out[-1][2] == key:
                out[-1] = (out[-1][0], i + 1, key)
            else:
                out.append((i, i + 1, key))
        return out

    def replayed(self) -> None:
        """A captured step was replayed: its device step counters advanced, the host's count follows."""
        if not self.sgd:
            self.count = [c + 1 for c in self.count]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        """Every member's optimizer step; grads[k] is the stacked gradient of stacked[k]."""
        runs = self.runs()
        if not self.sgd:
            self.steps.add_(1)
            self.count = [c + 1 for c in self.count]
        for a, b, key in runs:
            pick = self._picker(a, b)
            params, gs = pick(self.stacked), pick(grads)
            if self.sgd:
                lr, momentum, dampening, nesterov, wd, started = key
                torch._fused_sgd_(
                    params,
                    gs,
                    pick(self.buffers) if momentum != 0 else [],
                    weight_decay=wd,
                    momentum=momentum,
                    lr=lr,
                    dampening=dampening,
                    nesterov=nesterov,
                    maximize=False,
                    is_first_step=momentum != 0 and not started,
                )
            else:
                lr, beta1, beta2, eps, wd, decoupled, _count = key
                fn = torch._fused_adamw_ if decoupled else torch._fused_adam_
                steps = [
                    self.steps[a if self.whole[k] else i, k]
                    for k in range(len(self.stacked))
                    for i in self._members(k, a, b)
                ]
                fn(
                    params,
                    gs,
                    pick(self.exp_avg),
                    pick(self.exp_avg_sq),
                    [],
                    steps,
                    amsgrad=False,
                    lr=lr,
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=wd,
                    eps=eps,
                    maximize=False,
                )
        for opt in self.optimizers:
            opt._opt_called = True  # what a wrapped optimizer.step() tells its LR scheduler
        if self.sgd:
            for i, opt in enumerate(self.optimizers):
                if not self.started[i] and opt.param_groups[0]["momentum"] != 0:
                    self.started[i] = True
                    self._attach(i)


def clip_limits(max_norms: list[float | None], device) -> torch.Tensor | None:
    """Each member's trainer.grad_clip as the device tensor clip_stacked reads (inf: no limit), made
    once (a step captured in a CUDA graph cannot copy from the host); None when no member clips."""
    if not any(max_norms):
        return None
    return torch.tensor([float(c) if c else float("inf") for c in max_norms], device=device)


@torch.no_grad()
def clip_stacked(grads: list[torch.Tensor], limit: torch.Tensor | None) -> None:
    """Per member, as torch.nn.utils.clip_grad_norm_ on its own parameters: the total 2-norm of
    member i's gradients (slice i of every stacked gradient) scaled down to limit[i] when
    above it (clip_limits); limit None: nothing to clip."""
    if limit is None:
        return
    n = grads[0].shape[0]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(n, -1), 2, dim=1) for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, 2, dim=1)
    coef = torch.clamp(limit / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.view(n, *([1] * (g.dim() - 1))))
