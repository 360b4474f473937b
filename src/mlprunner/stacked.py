"""Stacked sweeps: the compatible jobs of a multirun trained together, as one batched model.

`hydra/launcher=stacked` (hydra_plugins.mlprun_stacked) composes every job's config, groups
the jobs whose `group_key` is equal (at most hydra.launcher.max_models per group) and trains
each group with `run_group`. A group of one is a normal sweep job (sweep.run_sweep_job).

Inside a group every job keeps its own pieces, built by build() exactly as alone (same seed ->
bitwise the same initial weights): its model, its torch.optim optimizer and scheduler, its
metrics, its RunRecord, loggers (logger=...) and checkpoints, and the end of each epoch is
Trainer.end_epoch, as alone. Only the step is shared: the jobs'
Linear weights are stacked into one (N, out, in) tensor per layer and each job's parameters
become views of its slice, so one baddbmm per layer (StackedLinear) runs every job's forward and backward;
each job's loss is computed on its own slice and the losses are summed, so each job's gradient
is its solo gradient. The jobs' optimizers (Adam, AdamW, SGD) are stepped by one fused update over
the stacked tensors (stacked_optim: each job's optimizer state is a view of it, so its
checkpoints are a solo run's); other optimizers step each job's views in place. Each job draws
its solo data order (train.epoch_seed) and its solo dropout masks (F.dropout with the device's
generator in the state the job's solo run would have, DropoutRNG), so the runs differ from solo
runs at most by the float rounding of baddbmm against addmm (none measured on the CPU).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .build import build
from .checkpoint import atomic_write_json, atomic_write_text, capture_rng, load_checkpoint
from .config import available_memory, validate
from .cudagraph import CapturedSteps
from .data import Split, load_data
from .device import resolve_device
from .errors import ConfigError, DivergenceError, Interrupted, LoggerIncomplete, MlprunError
from .loggers import RunInfo, make_loggers, with_logger
from .messages import describe_exception
from .models import count_parameters
from .profiling import NullProfiler, StepProfiler
from .progress import Progress
from .record import RunRecord
from .run import _Signals, describe, limited, make_trainer, restore, set_up_process, stop_if_signalled, test_and_plot
from .sessions import job_prefix
from .stacked_optim import StackedOptimizer, clip_limits, clip_stacked, unsupported
from .sweep import best_val_error, record_job_failure, sweep_threads
from .train import StopFlag, Trainer, diverged_hint, epoch_seed, young_gc_only

log = logging.getLogger("mlprunner")

# keys that may differ between the jobs of one group (everything else must be equal)
FREE = (
    "model.dropout",
    "model.input_dropout",
    "trainer.seed",
    "trainer.early_stopping",
    "trainer.grad_clip",
    "trainer.tensorboard",
    "trainer.progress",
    "trainer.log_every_n_steps",
    "trainer.eval_train",
    "trainer.checkpoint",
    "eval",
    "logger",
)
# of these groups only the class must be equal; every hyperparameter may differ
CLASS_ONLY = ("optim", "scheduler")


def unstackable(cfg: DictConfig) -> str | None:
    """Why this job cannot train in a stacked group (it then trains alone), or None."""
    model = cfg.model
    if str(model.get("_target_")) != "mlprunner.models.MLP":
        return f"model {model.get('_target_')} is not mlprun's MLP"
    if model.get("batchnorm"):
        return "model.batchnorm=true (per-job running statistics are not stacked)"
    t = cfg.trainer
    if t.get("swa") is not None and t.swa.enabled:
        return "trainer.swa.enabled=true"
    if t.compile:
        return "trainer.compile=true"
    if t.precision == "fp16":
        return "trainer.precision=fp16 (one GradScaler per job)"
    if t.precision != "fp32":
        # the stacked step has no autocast: the group would train in fp32 what alone trains in bf16
        return f"trainer.precision={t.precision} (the stacked step runs in fp32)"
    augment = cfg.dataset.get("augment")
    if augment is not None and augment.get("enabled"):
        return "dataset.augment.enabled=true"
    if cfg.get("resume") is not None:
        return "resume= is set"
    if t.get("overfit_batches"):
        return "trainer.overfit_batches is set (the same batches in order, not each job's data order)"
    return None


def group_key(cfg: DictConfig) -> str:
    """Jobs with equal keys can train as one stacked group: the config without the keys that
    may differ (FREE, and the hyperparameters of the optimizer and the scheduler)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in FREE:
        parent, _, leaf = key.rpartition(".")
        node = data
        for part in parent.split(".") if parent else []:
            node = node.get(part) or {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    for group in CLASS_ONLY:
        node = data.get(group) or {}
        data[group] = {"_target_": node.get("_target_")}
    return json.dumps(data, sort_keys=True, default=str)


def check_max_models(value) -> int:
    """hydra.launcher.max_models (hydra/launcher=stacked, hydra/launcher=slurm) as an int >= 1."""
    try:
        n = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        n = None
    if n is None or n < 1:
        raise ConfigError(
            "hydra.launcher.max_models",
            message=f"hydra.launcher.max_models={value}: not a number of jobs per group; allowed: an integer >= 1 "
            f"(1 = every job alone)",
        )
    return n


def plan_groups(cfgs: list[DictConfig], max_models: int) -> list[list[int]]:
    """Indices of the jobs in each group, in sweep order: equal group_key, at most max_models
    each; a job that cannot be stacked is a group of its own."""
    groups: list[list[int]] = []
    open_groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        if unstackable(cfg) is not None or max_models <= 1:
            groups.append([i])
            continue
        key = group_key(cfg)
        group = open_groups.get(key)
        if group is None or len(group) >= max_models:
            group = open_groups[key] = []
            groups.append(group)
        group.append(i)
    return groups


def log_alone(cfgs: list[DictConfig]) -> None:
    """One log line per reason why jobs of a stacked sweep train alone (plan_groups)."""
    alone: dict[str, int] = {}
    for cfg in cfgs:
        reason = unstackable(cfg)
        if reason is not None:
            alone[reason] = alone.get(reason, 0) + 1
    for reason, n in alone.items():
        log.info(f"stacked launcher: {n} job(s) train alone: {reason}")


# ------------------------------------------------------------------------------ memory
def bytes_per_model(n_params: int, widths: list[int], num_features: int, batch_size: int) -> int:
    """What one model adds to a group: weights, gradients and two optimizer buffers (Adam's;
    SGD needs fewer) in fp32, plus its gathered batch, activations, dropout masks and their
    gradients."""
    activations = batch_size * (num_features + 4 * sum(widths))
    return 4 * (4 * n_params + 2 * activations)


def memory_limit(device: torch.device) -> int:
    """Bytes a group may use: 80% of the free device memory on CUDA, half of the available memory
    on the CPU (config.available_memory: MemAvailable and the cgroup's limit); 4 GiB when
    neither can be read."""
    available = available_memory(device)
    if available is None:
        return 4 * 2**30
    return int((0.8 if device.type == "cuda" else 0.5) * available)


def split_to_fit(n: int, per_model: int, limit: int) -> int:
    """How many models of a group train at once: all n, or as many as `limit` holds (>= 1)."""
    return max(1, min(n, limit // max(1, per_model)))


# ------------------------------------------------------------------------------ the jobs
@dataclass
class Job:
    """One sweep job the launcher prepared: its config, folder and overrides; resume_from its
    checkpoints/last.pt when it continues; hydra its whole config (HydraConfig while its pieces
    are made, so its TensorBoard folder and HParams are those of a solo job)."""

    cfg: DictConfig
    run_dir: Path
    overrides: list[str]
    resume_from: Path | None = None
    hydra: DictConfig | None = None
    checkpoint: dict | None = None  # resume_from's contents when the caller has read it already


class DropoutRNG:
    """A member's own stream of the random numbers its solo run's dropout would draw: the device's
    default generator (the one nn.Dropout uses) is put in the member's state around each draw,
    so that the member's dropout noise is drawn as its solo run draws it, from the same generator
    state (Stack._dropout: bitwise the solo masks on the CPU; on CUDA, by construction, F.dropout's
    fused kernel with the solo run's state).
    On CUDA the state is a generator state of its own that the default generator is pointed at
    (graphsafe_set_state): that also works while a CUDA graph is captured, where the graph is told
    of it (GroupSteps._generators) and each replay advances it as the eager draws would.
    Its checkpoint "rng" is the solo run's: every generator as the run left it after building its
    pieces (nothing else draws while it trains), the dropout stream where it is now."""

    def __init__(self, device: torch.device, saved: dict | None = None):
        """saved: a checkpoint's "rng" to continue from; None: the generators as they are now
        (right after the member's pieces were built: where its solo run would start training)."""
        self.device = device
        self.saved = capture_rng() if saved is None else saved
        if device.type == "cuda":
            default = torch.cuda.default_generators[_cuda_index(device)]
            self.generator = default.clone_state()
            self.generator.set_state(self.saved["cuda"][_cuda_index(device)])
        else:
            self.state = self.saved["torch"]

    def draw(self, fn, *args):
        if self.device.type == "cuda":
            default = torch.cuda.default_generators[_cuda_index(self.device)]
            outer = default.graphsafe_get_state()
            default.graphsafe_set_state(self.generator)
            try:
                return fn(*args)
            finally:
                default.graphsafe_set_state(outer)
        outer = torch.get_rng_state()
        torch.set_rng_state(self.state)
        try:
            return fn(*args)
        finally:
            self.state = torch.get_rng_state()
            torch.set_rng_state(outer)

    def checkpoint(self) -> dict:
        """The checkpoint's "rng" (checkpoint.capture_rng's form), as the solo run would save it now."""
        rng = dict(self.saved)
        if self.device.type == "cuda":
            rng["cuda"] = list(rng["cuda"])
            rng["cuda"][_cuda_index(self.device)] = self.generator.get_state()
        else:
            rng["torch"] = self.state
        return rng


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


class Member(Trainer):
    """One job of a group: a Trainer (its checkpoints, evaluation, state) whose Linear weights
    are views of the group's stacked tensors while it trains, and whose dropout masks come from
    its own DropoutRNG (whose state is its checkpoint's "rng", as a solo run saves the global
    generators')."""

    job: Job
    record: RunRecord
    info: RunInfo  # what its loggers read at the end (loggers.Loggers.finish)
    rng: DropoutRNG
    dropout: list[float]  # the rate after each hidden layer (0 = none)
    input_dropout: float
    done: bool = False
    objective: float | None = None

    def checkpoint_state(self) -> dict:
        state = super().checkpoint_state()
        state["rng"] = self.rng.checkpoint()
        return state

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.model if isinstance(m, nn.Linear)]

    def linear_params(self) -> list[torch.Tensor]:
        """Weight and bias of each Linear layer, in model.parameters()' order (the stacked order)."""
        return [p for lin in self.linears() for p in (lin.weight, lin.bias)]


class StackedLinear(torch.autograd.Function):
    """Every member's Linear layer at once: baddbmm(b, h, wᵀ) over (N, batch, in) inputs, (N, out, in)
    weights and (N, 1, out) biases. Written out because autograd's own baddbmm backward gives the
    weight gradient as the transpose of an (N, in, out) product, which AccumulateGrad then copies
    into the weights' layout (16% of a 16-job CPU step's time in torch.profiler); here it is one
    (N, out, batch) x (N, batch, in) product, the batched form of the product a solo nn.Linear's
    backward computes (gradᵀ x input)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        return torch.baddbmm(b, h, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, w = ctx.saved_tensors
        grad_h = torch.bmm(grad, w) if ctx.needs_input_grad[0] else None  # the first layer's input needs none
        return grad_h, torch.bmm(grad.transpose(1, 2), h), grad.sum(1, keepdim=True)


@dataclass
class Stack:
    """The stacked weights of the members training now: per Linear layer a (N, out, in) weight
    and a (N, 1, out) bias, each member's parameters being views of its slice. `optim` updates
    every member's optimizer at once (stacked_optim; None: each member steps its own); the
    members' train metrics are accumulated here, batched (GroupSteps), and handed to each member's
    Metrics by `hand_out_metrics`."""

    members: list[Member]
    weights: list[torch.Tensor] = field(default_factory=list)
    biases: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self):
        layers = [m.linears() for m in self.members]
        for k in range(len(layers[0])):
            w = torch.stack([ls[k].weight.detach() for ls in layers]).requires_grad_()
            b = torch.stack([ls[k].bias.detach() for ls in layers]).unsqueeze(1).requires_grad_()
            self.weights.append(w)
            self.biases.append(b)
            for i, ls in enumerate(layers):
                ls[k].weight.data = w.data[i]
                ls[k].bias.data = b.data[i, 0]
        # the activation (the same in a group): the first layer that is neither Linear nor Dropout
        self.act = next((x for x in self.members[0].model if not isinstance(x, (nn.Linear, nn.Dropout))), None)
        self.in_rates = [m.input_dropout for m in self.members]
        self.rates = [m.dropout for m in self.members]
        # stacked order of the parameters: weight, bias of each layer (model.parameters()' order)
        self.stacked = [t for wb in zip(self.weights, self.biases) for t in wb]
        params = [m.linear_params() for m in self.members]
        self.optim_reason = unsupported([m.optimizer for m in self.members], params)
        self.optim = None
        if self.optim_reason is None:
            self.optim = StackedOptimizer([m.optimizer for m in self.members], params, self.stacked)
        first = self.members[0].train_metrics
        self.num_classes = first.num_classes
        self.confusion = torch.zeros(
            len(self.members) * self.num_classes**2, dtype=torch.long, device=first.confusion.device
        )
        self.loss_sums = torch.zeros(len(self.members), dtype=first.loss_sum.dtype, device=first.loss_sum.device)
        self.counted = 0
        self._ones = torch.ones(0, dtype=torch.long, device=first.confusion.device)
        self._offsets = (
            torch.arange(len(self.members), device=first.confusion.device).unsqueeze(1) * self.num_classes**2
        )
        self.clip_limit = clip_limits([m.t.grad_clip for m in self.members], first.confusion.device)

    def losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) each member's loss on its slice, computed as alone (one call of the loss over
        all slices, reduction="none" then a mean per member, was not bitwise the solo loss)."""
        # unbind, not logits[j]: the backward of N selects would be N zero-filled (N, batch, classes) tensors
        return torch.stack([m.loss(lj, y[j]) for j, (m, lj) in enumerate(zip(self.members, logits.unbind(0)))])

    def count_predictions(self, preds: torch.Tensor, y: torch.Tensor) -> None:
        """(N, k) predictions and true classes of k samples per member into each member's confusion matrix."""
        n, k = y.shape
        if self._ones.shape[0] < n * k:
            self._ones = torch.ones(n * k, dtype=torch.long, device=self.confusion.device)
        index = (self._offsets + y * self.num_classes + preds).reshape(-1)
        self.confusion.index_put_((index,), self._ones[: n * k], accumulate=True)
        self.counted += k

    def hand_out_metrics(self) -> None:
        """Add what was gathered (loss sums, count_predictions) to each member's train metrics (then start over)."""
        if not self.counted:
            return
        cc = self.num_classes**2
        for i, m in enumerate(self.members):
            tm = m.train_metrics
            tm.confusion.add_(self.confusion[i * cc : (i + 1) * cc])
            tm.loss_sum.add_(self.loss_sums[i])
            tm.count += self.counted
        self.confusion.zero_()
        self.loss_sums.zero_()
        self.counted = 0

    def release(self) -> None:
        """Each member's parameters (and optimizer state) get their own memory again (the
        stack is dropped); metrics gathered so far go to the members."""
        self.hand_out_metrics()
        if self.optim is not None:
            self.optim.release()
        for m in self.members:
            for lin in m.linears():
                lin.weight.data = lin.weight.data.clone()
                lin.bias.data = lin.bias.data.clone()
                lin.weight.grad = lin.bias.grad = None

    def _dropout(self, h: torch.Tensor, rates: list[float]) -> torch.Tensor:
        """Each member's dropout as its solo nn.Dropout draws it, with the device's default
        generator in the member's own state: F.dropout on its slice (the same shape)."""
        if not any(rates):
            return h
        if h.device.type == "cpu":
            # F.dropout on the CPU is bernoulli_(1 - p) noise divided by 1 - p, times the input
            # (ATen's _dropout_impl): each member's noise into its slice of one mask, then one
            # product for the group (no stack of N outputs, and one backward)
            masks = torch.empty_like(h)
            for m, p, mask in zip(self.members, rates, masks.unbind(0)):
                if p > 0:
                    m.rng.draw(lambda mask=mask, p=p: mask.bernoulli_(1 - p).div_(1 - p))
                else:
                    mask.fill_(1)
            return h * masks
        # unbind, not h[i]: the backward of N selects is N zero-filled copies of the whole (N, batch, width)
        # gradient (a fifth of a 16-job CPU step); unbind's is one stack of the slices
        parts = [m.rng.draw(F.dropout, hi, p) if p > 0 else hi for m, p, hi in zip(self.members, rates, h.unbind(0))]
        return torch.stack(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, batch, features) -> (N, batch, outputs), in training mode."""
        h = self._dropout(x, self.in_rates)
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = StackedLinear.apply(h, w, b)
            if k < last:
                h = self._dropout(self.act(h), [r[k] for r in self.rates])
        return h

    def hand_out_grads(self) -> list[torch.Tensor]:
        """Each member's parameter gradients: views of its slice of the stacked gradients;
        returns the stacked gradients (in `stacked` order)."""
        grads = [t.grad for t in self.stacked]
        for i, m in enumerate(self.members):
            for lin, w, b in zip(m.linears(), self.weights, self.biases):
                lin.weight.grad = w.grad[i]
                lin.bias.grad = b.grad[i, 0]
        for t in self.stacked:
            t.grad = None
        return grads

    def step(self) -> None:
        """Clip each member's gradients (its own trainer.grad_clip) and step every member's
        optimizer and per-step scheduler."""
        grads = self.hand_out_grads()
        clip_stacked(grads, self.clip_limit)
        if self.optim is not None:
            self.optim.step(grads)
        for m in self.members:
            if self.optim is None:
                m.optimizer.step()
            if m.scheduler is not None and m.interval == "step":
                m.scheduler.step()


class GroupSteps(CapturedSteps):
    """The group's training step: each member's batch gathered by its own data order, the
    stacked forward, each member's loss, one backward, every member's update, the loss sums and
    each sample's prediction kept for the epoch's confusion matrices. On a GPU it is captured
    as one CUDA graph per batch size and replayed (cudagraph.CapturedSteps); elsewhere, and
    when a member's settings rule graphs out, the same code runs eagerly.
    One GroupSteps per Stack: when members leave, the next stack gets its own."""

    def __init__(self, stack: Stack, train: Split, prof, capture: bool):
        super().__init__(stack.weights[0].device, capture)
        self.stack = stack
        self.x, self.y = train.x, train.y
        self.prof = prof
        n_members, n = len(stack.members), self.y.shape[0]
        self.orders = torch.zeros(n_members, n, dtype=torch.long, device=self.device)  # each member's order
        self.preds = torch.zeros(n_members, n, dtype=torch.long, device=self.device)
        self.arange = torch.arange(n, device=self.device)
        self.start = 0  # host: the first position of the epoch not yet handed out

    def begin_epoch(self, orders: torch.Tensor, start: int = 0) -> None:
        """This epoch's (members, samples) orders; `start`: the first position still to train
        (a stack made when members left mid-epoch continues where the old one stopped)."""
        self.orders.copy_(orders)
        self.start = start
        self._begin(start, tuple(float(g["lr"]) for m in self.stack.members for g in m.optimizer.param_groups))

    def _body(self, b: int) -> torch.Tensor:
        stack, prof = self.stack, self.prof
        n_members = len(stack.members)
        pos = self.cursor + self.arange[:b]
        idx = self.orders.index_select(1, pos).reshape(-1)
        x = self.x.index_select(0, idx).view(n_members, b, -1)
        y = self.y.index_select(0, idx).view(n_members, b)
        prof.lap("data")
        logits = stack.forward(x)
        losses = stack.losses(logits, y)
        prof.lap("forward")
        losses.sum().backward()
        prof.lap("backward")
        stack.step()
        prof.lap("optimizer")
        stack.loss_sums.add_(losses.detach().to(stack.loss_sums.dtype), alpha=b)
        preds = stack.members[0].loss.predict(logits.detach().reshape(n_members * b, -1)).view(n_members, b)
        self.preds.index_copy_(1, pos, preds)
        self.cursor.add_(b)
        return losses.detach()

    def _generators(self) -> list[torch.Generator]:
        return [m.rng.generator for m in self.stack.members]

    def _replayed(self, n: int) -> None:
        if self.stack.optim is not None:
            self.stack.optim.replayed()

    def hand_out(self) -> None:
        """The predictions since the last hand-out into each member's confusion matrix, and the
        stack's metrics to the members' train metrics."""
        a, b = self.start, self.filled
        if b > a:
            n_members = len(self.stack.members)
            y = self.y.index_select(0, self.orders[:, a:b].reshape(-1)).view(n_members, b - a)
            self.stack.count_predictions(self.preds[:, a:b], y)
        self.start = b
        self.stack.hand_out_metrics()


# ------------------------------------------------------------------------------ logs
class JobLogs(logging.Handler):
    """While a group trains: each line logged for one member (inside `of(its folder)`: its
    set-up, epoch lines, end) goes to that job's own log file, lines of the group as a whole to
    every job's. Stands in for the file handler Hydra opened for the last job it prepared
    (<run>/mlprun.log, job_logging's `file`), with its name, format and level; a logging set-up
    without such a handler is left as it is."""

    def __init__(self, folders: list[Path]):
        super().__init__()
        self.current: Path | None = None
        self.logger = logging.getLogger("mlprunner")
        inside = {Path(f).resolve() for f in folders}
        self.replaced = [
            h
            for h in self.logger.handlers
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve().parent in inside
        ]
        self.files: dict[Path, logging.FileHandler] = {}
        for template in self.replaced[:1]:
            for f in folders:
                h = logging.FileHandler(Path(f) / Path(template.baseFilename).name, mode="a", delay=True)
                h.setFormatter(template.formatter)
                h.setLevel(template.level)
                self.files[Path(f)] = h

    def __enter__(self) -> JobLogs:
        if self.files:
            for h in self.replaced:
                self.logger.removeHandler(h)
            self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        if self.files:
            self.logger.removeHandler(self)
            for h in self.files.values():
                h.close()
            for h in self.replaced:
                self.logger.addHandler(h)

    @contextlib.contextmanager
    def of(self, folder: Path):
        """Lines logged meanwhile belong to the job in `folder`."""
        before, self.current = self.current, Path(folder)
        try:
            yield
        finally:
            self.current = before

    def emit(self, record: logging.LogRecord) -> None:
        own = self.files.get(self.current) if self.current is not None else None
        for h in [own] if own is not None else self.files.values():
            if record.levelno >= h.level:
                h.handle(record)


# ------------------------------------------------------------------------------ the group
class GroupProfiler(StepProfiler):
    """trainer.profile=true in a group: one phase table for the group's work (the shared steps,
    every member's validation and epoch end), written into every member's run folder as
    profile.txt/profile.json (the torch.profiler trace into the first member's). The members'
    own write() calls do nothing; the group writes once per epoch (write_all)."""

    def __init__(self, members: list[Member], device: torch.device):
        super().__init__(members[0].run_dir, device)
        self.folders = [m.run_dir for m in members]

    def summary(self) -> dict:
        out = super().summary()
        out["stacked_group"] = [str(f) for f in self.folders]
        return out

    def table(self, summary: dict | None = None) -> str:
        s = summary or self.summary()
        head = (
            f"stacked group of {len(self.folders)} jobs ({', '.join(f.name for f in self.folders)}): each step "
            f"trains all of them at once; validation and epoch_end are summed over the jobs\n"
        )
        text = super().table(s)
        if s["trace"]:
            text = text.replace(f": {s['trace']}", f": {self.run_dir / s['trace']}")
        return head + text

    def write(self) -> None:
        pass

    def write_all(self) -> None:
        summary = self.summary()
        table = self.table(summary)
        for folder in self.folders:
            atomic_write_json(folder / "profile.json", summary)
            atomic_write_text(folder / "profile.txt", table)


def _hyperparameters(m: Member) -> str:
    group = m.optimizer.param_groups[0]
    return repr(sorted((k, repr(v)) for k, v in group.items() if k != "params"))


class Group:
    """Trains the members of one group epoch by epoch; each member ends on its own (early
    stopping, divergence, completion); a signal stops them all."""

    def __init__(self, members: list[Member], stop: StopFlag, logs: JobLogs | None = None):
        self.members = members
        self.stop = stop
        self.logs = logs or JobLogs([])  # each member's lines to its own log file
        self.stack: Stack | None = None
        # trainer.profile (equal in a group): one profiler for the group's work, shared by the members
        self.prof = GroupProfiler(members, members[0].device) if members[0].profiler.enabled else NullProfiler()
        for m in members:
            m.profiler = self.prof
        self.t = members[0].t
        self.device = members[0].device
        self.train = members[0].data.train
        self.steps: GroupSteps | None = None
        self.orders: dict[int, torch.Tensor] = {}  # this epoch's data order of each member (by id)
        self.capture = self._graph_decision()

    def _restack(self, active: list[Member], epoch_start: bool = False) -> None:
        """The stack (and its step) for these members: at the epoch's start, or when members left
        mid-epoch (the new stack continues at the position the old one reached)."""
        # members with equal optimizer hyperparameters next to each other: one update for them all
        active = sorted(active, key=_hyperparameters)
        start = 0 if epoch_start or self.steps is None else self.steps.filled
        if self.stack is None or self.stack.members != active:
            self._drop_stack()
            if not active:
                return
            self.stack = Stack(active)
            self.steps = GroupSteps(self.stack, self.train, self.prof, capture=self.capture)
        elif not epoch_start:
            return
        self.steps.begin_epoch(torch.stack([self.orders[id(m)] for m in self.stack.members]), start)

    def _drop_stack(self) -> None:
        """Metrics gathered so far to the members, each member's parameters its own again."""
        if self.steps is not None:
            self.steps.hand_out()
            self.steps = None
        if self.stack is not None:
            self.stack.release()
            self.stack = None

    def _graph_decision(self) -> bool:
        """Whether the group's step is captured as CUDA graphs, with one log line on it (on CUDA,
        or when asked for): the members' own reasons against a graph (their settings, equal in a
        group but for grad clip and the scheduler's interval), else the stacked update's."""
        members = self.members
        reason = next((m.graph_reason for m in members if m.graph_reason), None)
        if reason is None and members:
            why = unsupported([m.optimizer for m in members], [m.linear_params() for m in members])
            if why is not None:
                reason = f"the members' optimizers are updated one by one ({why})"
        setting = self.t.get("cuda_graph", "auto")
        if setting is True or (setting == "auto" and self.device.type == "cuda"):
            if reason is None:
                log.info("CUDA graph: the group's step is captured once per batch size, then replayed")
            else:
                log.info(f"CUDA graph off for the group: {reason}")
        return reason is None

    def fit(self) -> None:
        with young_gc_only():
            try:
                epochs = int(self.t.epochs)
                for m in self.members:
                    if m.state.stopped_early or m.state.epoch >= epochs:
                        self.finish(m)
                start = min((m.state.epoch for m in self.members if not m.done), default=epochs)
                for epoch in range(start + 1, epochs + 1):
                    active = [m for m in self.members if not m.done and m.state.epoch == epoch - 1]
                    if active:
                        self.train_epoch(epoch, active)
            finally:
                self._drop_stack()

    def train_epoch(self, epoch: int, active: list[Member]) -> None:
        t0 = time.perf_counter()
        n, bs = len(self.train), int(self.t.batch_size)
        self.orders = {}
        for m in active:
            g = torch.Generator().manual_seed(epoch_seed(m.t.seed, epoch))
            self.orders[id(m)] = torch.randperm(n, generator=g).to(self.device)
            m.train_metrics.reset()
            m.step_model.train()
            if m.progress:
                with self.logs.of(m.run_dir):
                    m.progress.start_epoch(epoch)
        self._restack(active, epoch_start=True)
        log_every = int(self.t.log_every_n_steps)
        window: list[torch.Tensor] = []
        steps = self.train.num_batches(bs)
        prof = self.prof
        prof.begin_epoch(epoch)
        for i, start in enumerate(range(0, n, bs), start=1):
            members = self.stack.members
            # a replayed graph returns the same tensor each step: the window keeps copies
            window.append(self.steps.step(min(bs, n - start)).clone())
            for m in members:
                m.state.step += 1
            prof.lap("metrics")
            if len(window) == log_every or i == steps:
                self._flush(torch.stack(window), epoch, i, steps)
                window = []
                if self.stack is None:
                    break  # every member failed
            if members[0].first_step_at is None:
                now = time.time()
                for m in members:
                    m.first_step_at = now
            prof.lap("logging")
            prof.end_step()
            if self.stop.requested:
                raise Interrupted(f"stopped by {self.stop.signal_name or 'signal'} during epoch {epoch}")
        prof.end_epoch()
        if self.steps is not None:
            self.steps.hand_out()
        for m in active:
            if not m.done:
                with self.logs.of(m.run_dir):
                    self.end_epoch(m, epoch, t0)
        if prof.enabled:
            prof.write_all()
        if self.stack is not None and self.stop.requested and epoch < int(self.t.epochs):
            raise Interrupted(f"stopped by {self.stop.signal_name or 'signal'} after epoch {epoch}")

    def _flush(self, losses: torch.Tensor, epoch: int, i: int, steps: int) -> None:
        """Every log interval, per member: the finiteness check and the logged mean loss (two
        host syncs for the group, not two per member)."""
        per_member = losses.t().contiguous()  # each member's window as one row, as a solo run's window
        finite = torch.isfinite(per_member)
        ok, means = finite.all(1).tolist(), per_member.mean(1).tolist()
        members = list(self.stack.members)
        failed = []
        for j, m in enumerate(members):
            if not ok[j]:
                k, first = losses.shape[0], int((~finite[j]).nonzero()[0])
                failed.append(m)
                self.fail(
                    m,
                    DivergenceError(
                        f"loss became non-finite at epoch {epoch}, step {i - k + 1 + first} of {steps} "
                        f"(global step {m.state.step - k + 1 + first}); {diverged_hint(m.optimizer)}"
                    ),
                )
            elif m.logger is not None:
                m.logger.step(
                    m.state.step,
                    {"Loss/train_step": means[j], "LR/step": m.optimizer.param_groups[0]["lr"]},
                )
        if failed:
            self._restack([m for m in members if m not in failed])

    def end_epoch(self, m: Member, epoch: int, t0: float) -> None:
        """The end of an epoch for one member, as a solo run's (Trainer.end_epoch: validation,
        scheduler, best and early stopping, loggers, checkpoints, results.json); a non-finite
        loss fails only this member; a member whose training is over leaves the group."""
        try:
            m.end_epoch(epoch, m.train_metrics.compute(), t0)
        except DivergenceError as exc:
            self.fail(m, exc)
            return
        if m.state.stopped_early or epoch >= int(m.t.epochs):
            self.finish(m)

    # ---------------------------------------------------------------------- how members end
    def _leave(self, m: Member) -> None:
        m.done = True
        if self.stack is not None and m in self.stack.members:
            self._restack([x for x in self.stack.members if x is not m])

    def fail(self, m: Member, exc: BaseException) -> None:
        """The member is recorded failed with its reason; the others go on."""
        with self.logs.of(m.run_dir):
            self._fail(m, exc)

    def _fail(self, m: Member, exc: BaseException) -> None:
        self._leave(m)
        _, message = describe_exception(exc)
        self._record_end(m, exc, "failed")
        log.error(f"job {m.run_dir.name} ({' '.join(m.job.overrides)}) failed: {message}")

    def finish(self, m: Member) -> None:
        """The member's training is over (all epochs, or stopped early): its files as a solo
        run's end writes them, then results.json says completed."""
        with self.logs.of(m.run_dir):
            self._finish(m)

    def _finish(self, m: Member) -> None:
        self._leave(m)
        try:
            m.writer.wait()
            m.writer.close()
            if m.progress:
                m.progress.close()
            cfg, record = m.job.cfg, m.record
            record.trained(m.state, None)
            test_and_plot(cfg, m.run_dir, m, record, m.logger)
            record.__exit__(None, None, None)
            try:
                m.logger.finish(m.info)  # after results.json says completed, as a solo run
            except LoggerIncomplete as exc:  # completed all the same, as a solo run stays
                log.error(f"job {m.run_dir.name}: {exc}")
            m.objective = best_val_error(record.data)
        except Exception as exc:  # recorded like a solo run's failure; the group goes on
            m.logger.abort("failed")
            _, message = describe_exception(exc)
            if m.record.data.get("status") != "failed":
                m.record.results.update(status="failed", reason=message, wall_s=m.record.elapsed())
            log.error(f"job {m.run_dir.name} ({' '.join(m.job.overrides)}) failed: {message}")

    def interrupt(self, exc: BaseException) -> None:
        """A signal stopped the group: every member still training is recorded interrupted
        (its last.pt is its last finished epoch)."""
        self._drop_stack()
        for m in self.members:
            if m.done:
                continue
            m.done = True
            self._record_end(m, exc, "interrupted")

    @staticmethod
    def _record_end(m: Member, exc: BaseException, status: str) -> None:
        """A member that ends by `exc` (failure or signal): its pending checkpoint written, its
        results.json saying what RunRecord.training() makes of `exc`, its loggers aborted."""
        m.writer.wait(raise_error=False)
        m.writer.close()
        try:
            with m.record.training():
                raise exc
        except BaseException:
            pass
        m.logger.abort(status)
        if m.progress:
            m.progress.close()


# ------------------------------------------------------------------------------ entry point
def open_member(job: Job, data, stop: StopFlag) -> Member:
    """Everything a solo run sets up before Trainer.fit(), for one job of a group (whose config
    run_group has validated)."""
    cfg = job.cfg
    started = time.perf_counter()
    if job.hydra is not None:
        HydraConfig.instance().set_config(job.hydra)
    device = set_up_process(cfg.trainer)  # seeds the global generator with the job's seed
    ckpt = job.checkpoint
    if ckpt is None and job.resume_from is not None:
        ckpt = load_checkpoint(job.resume_from)
    record = RunRecord(job.run_dir, device, job.overrides, resumed_from=ckpt, started=started).__enter__()
    with record.building():
        pieces = limited(cfg, build(cfg, device, data=data))
    data = pieces.data
    rng = DropoutRNG(device)  # where the solo run's dropout draws would start
    prefix = job_prefix(job.run_dir, job.overrides, beside_others=True)  # the group's lines interleave
    describe(record, cfg, pieces, job.run_dir, device, prefix)
    bs = int(cfg.trainer.batch_size)
    mode = "none" if cfg.trainer.progress == "none" else "plain"  # one live bar per job would clash
    progress = Progress(
        mode, int(cfg.trainer.epochs), data.train.num_batches(bs), bs, prefix=prefix, val=data.val is not None
    )
    info = RunInfo(cfg, job.run_dir, record.data, ckpt, list(job.overrides), pieces)
    with record.building():
        loggers = make_loggers(info)  # the job's own loggers (logger=...), as a solo run's
    try:
        m = make_trainer(Member, cfg, job.run_dir, pieces, device, record, loggers, progress, stop)
        m.job, m.record, m.info = job, record, info
        m.rng = rng
        m.dropout = [float(cfg.model.dropout)] * len(cfg.model.hidden)
        m.input_dropout = float(cfg.model.input_dropout)
        if ckpt is not None:
            restore(m, ckpt, job.resume_from)
            m.rng = DropoutRNG(device, ckpt["rng"])
    except BaseException:
        loggers.abort("failed")
        raise
    return m


def run_group(jobs: list[Job], solo) -> list[float | None]:
    """Train the jobs of one group together; return each job's objective (best validation
    error, None when it failed). `solo(job)` runs one job alone (the data cannot be stacked).
    Raises Interrupted when a signal stopped the group (every member recorded interrupted)."""
    results: dict[int, float | None] = {}
    valid: list[int] = []
    for k, job in enumerate(jobs):  # a job with a bad value fails alone; the others train
        try:
            validate(with_logger(job.cfg))
            valid.append(k)
        except MlprunError as exc:
            record_job_failure(job.run_dir, job.overrides, exc)
            results[k] = None
    if valid:
        values = _run_valid([jobs[k] for k in valid], solo)
        results.update(zip(valid, values))
    return [results[k] for k in range(len(jobs))]


def _run_valid(jobs: list[Job], solo) -> list[float | None]:
    cfg = jobs[0].cfg
    device = resolve_device(cfg.trainer.device)
    threads = cfg.trainer.get("threads") or sweep_threads()  # on SLURM: hydra.launcher.cpus_per_task
    if threads:
        torch.set_num_threads(int(threads))
    try:
        data = load_data(cfg.dataset, device)
    except MlprunError as exc:  # the group's data (one dataset config) fails every job of it
        for job in jobs:
            record_job_failure(job.run_dir, job.overrides, exc)
        return [None] * len(jobs)
    if not isinstance(data.train, Split):
        log.info("stacked launcher: this dataset streams from disk; its jobs train one at a time")
        return [solo(job) for job in jobs]
    widths = [int(h) for h in cfg.model.hidden]
    probe = build(cfg, device, data=data).model  # only its size is read
    per_model = bytes_per_model(count_parameters(probe), widths, data.num_features, int(cfg.trainer.batch_size))
    limit = memory_limit(device)
    size = split_to_fit(len(jobs), per_model, limit)
    if size < len(jobs):
        log.info(
            f"stacked launcher: {len(jobs)} jobs need {len(jobs) * per_model / 2**20:.0f} MiB, over the limit of "
            f"{limit / 2**20:.0f} MiB on {device}: trained {size} at a time"
        )
    out: list[float | None] = []
    for lo in range(0, len(jobs), size):
        out += _train_together(jobs[lo : lo + size], data)
    return out


def _train_together(jobs: list[Job], data) -> list[float | None]:
    with JobLogs([job.run_dir for job in jobs]) as logs:
        return _train_logged(jobs, data, logs)


def _train_logged(jobs: list[Job], data, logs: JobLogs) -> list[float | None]:
    stop = StopFlag()
    members: list[Member] = []
    results: dict[int, float | None] = {}
    for k, job in enumerate(jobs):
        with logs.of(job.run_dir):
            try:
                members.append(open_member(job, data, stop))
            except Exception as exc:  # this job's setup failed: recorded, the others train
                record_job_failure(job.run_dir, job.overrides, exc)
                results[k] = None
    log.info(
        f"stacked group of {len(members)} job(s) on {members[0].device if members else '-'}; "
        f"each job's lines start with its swept values"
    )
    if not members:  # every job's setup failed (each recorded as such)
        return [results[k] for k in range(len(jobs))]
    group = Group(members, stop, logs)
    signals = _Signals(stop).install()
    try:
        # a signal while the members were set up (mlprun's start-up handler only noted it)
        stop_if_signalled("while the stacked group was set up, before it trained")
        group.fit()
    except (Interrupted, KeyboardInterrupt) as exc:
        group.interrupt(exc if isinstance(exc, Interrupted) else Interrupted(str(exc) or "interrupted"))
        n = sum(1 for m in members if m.record.data.get("status") == "interrupted")
        raise Interrupted(
            f"{exc}; {n} job(s) of the group interrupted; rerunning this sweep command into the same "
            "hydra.sweep.dir continues them (each from its own checkpoints/last.pt)"
        ) from None
    finally:
        signals.restore()
        if group.prof.enabled:
            group.prof.write_all()
    it = iter(members)
    return [results[k] if k in results else next(it).objective for k in range(len(jobs))]
