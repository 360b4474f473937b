"""The training step as CUDA graphs (`trainer.cuda_graph`).

On a GPU a step of a small MLP is ~40 tiny kernels, and launching them from Python costs more
than running them. Here the whole step -- gather the batch from the device-resident training
split by index, forward, loss, backward, gradient clipping, optimizer step, loss and
confusion-matrix accumulation -- is captured once with `torch.cuda.graph` and replayed per
batch: one launch per step.

How it stays equal to the eager loop:
- The batch indices come from the epoch's permutation (the same seeded order as eager) copied
  into a static device tensor once per epoch; a device-side cursor advances inside the graph.
- The first `WARMUP_STEPS` steps of each batch size run eagerly, on a side stream as CUDA's
  graph documentation asks (lazy optimizer state, cuBLAS workspaces); they are real steps.
  The next one is captured and every later one replayed. The last, smaller batch of an epoch
  gets its own graph the same way.
- Dropout draws from the default CUDA generator, which graphs advance by the same offsets as
  eager kernels, so runs stay seed-deterministic and the RNG state saved in checkpoints is
  the true one.
- The optimizer's hyperparameters are baked into a captured kernel, so when a scheduler or
  ReduceLROnPlateau changes the learning rate between epochs the graphs are captured again.
- Gradients of the captured backward live in the graph's memory pool and are overwritten by
  each replay, so no zero_grad runs inside the graph.

What cannot be captured falls back to the eager loop, with one log line saying why
(`fallback_reason`). A capture that fails anyway ends the run with an error naming the
setting to turn off: torch's CUDA generator cannot be trusted after a failed capture.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from .errors import MlprunError, first_line

WARMUP_STEPS = 2  # eager steps of each batch size before it is captured


def supports_capture(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's step can be replayed from a graph: it keeps its step counters on
    the device when `capturable=True`, or (SGD) has no counter at all."""
    return "capturable" in optimizer.defaults or type(optimizer) is torch.optim.SGD


def fallback_reason(
    setting,
    device: torch.device,
    *,
    train_split,
    optimizer,
    scaler,
    step_scheduler: bool,
    augment,
    swa,
    compiled: bool,
    profile: bool,
) -> str | None:
    """None when the step can be graphed, else why not (one line for the log)."""
    if setting is False:
        return "trainer.cuda_graph=false"
    if device.type != "cuda":
        return f"needs a CUDA device (this run is on {device.type})"
    if not hasattr(train_split, "x"):
        return "the training split is streamed from disk, not resident on the device"
    if scaler is not None:
        return "trainer.precision=fp16 uses a GradScaler, whose skipped steps need a host check"
    if step_scheduler:
        return "scheduler.interval=step changes the learning rate inside the epoch"
    if augment is not None:
        return "dataset.augment draws its transforms per batch on the host"
    if swa is not None:
        return "trainer.swa averages weights on its own schedule"
    if compiled:
        return "trainer.compile=true: torch.compile manages its own graphs"
    if profile:
        return "trainer.profile=true times the phases of each step separately"
    if not supports_capture(optimizer):
        return f"{type(optimizer).__name__} cannot run its step inside a graph"
    return None


def _make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Turn the optimizer's capturable flag on; capturable steps keep their counters on the device."""
    if "capturable" not in optimizer.defaults:
        return
    for group in optimizer.param_groups:
        group["capturable"] = True
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            step = state.get("step")
            if torch.is_tensor(step) and step.device != p.device:
                state["step"] = step.to(device=p.device, dtype=torch.float32)


def checkpoint_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() as an eager run would save it (capturable off), so a checkpoint
    written under graphs resumes anywhere, on the CPU too."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        if group.get("capturable"):
            group["capturable"] = False
    return state


class CapturedSteps:
    """Runs training steps through captured graphs, one per batch size; a subclass defines the
    step (`_body(n)`: the same code runs eagerly and captured) and what it needs around it.

    `capture=False` (any device but CUDA) runs `_body` eagerly every step: the same step,
    without the graph (what the CPU tests check the step's arithmetic with)."""

    def __init__(self, device: torch.device, capture: bool = True):
        self.device = device
        self.capture = capture and device.type == "cuda"
        self.cursor = torch.zeros((), dtype=torch.long, device=device)  # start of the next batch
        self.filled = 0  # host: positions of the epoch trained so far
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, object]] = {}
        self.eager_steps: dict[int, int] = {}
        self.side = torch.cuda.Stream(device) if self.capture else None
        self.captured_lrs: tuple | None = None

    # what a subclass provides
    def _body(self, n: int):
        raise NotImplementedError

    def _zero_grad(self) -> None:
        """Before an eager step or a capture: gradients set to None, so that the step's backward
        allocates them (inside the graph's pool when captured)."""

    def _before_capture(self) -> None:
        """Once before each capture (e.g. the optimizer made capturable)."""

    def _generators(self) -> list[torch.Generator]:
        """Generator states besides the device's default one that the step draws from (each is
        registered with the graph, so replays advance it as eager draws would)."""
        return []

    def _replayed(self, n: int) -> None:
        """Host-side bookkeeping that the step's Python does eagerly and a replay does not."""

    # the machinery
    def _begin(self, start: int, lrs: tuple) -> None:
        """The epoch's cursor at position `start`; `lrs`: the learning rates its steps use (each
        baked into a captured optimizer kernel: when one changed, the graphs are captured again)."""
        self.cursor.fill_(start)
        self.filled = start
        if self.graphs and lrs != self.captured_lrs:
            self.drop_graphs()
        self.captured_lrs = lrs

    def step(self, n: int):
        """Train on the next `n` samples of the epoch's order; returns the body's output."""
        self.filled += n
        if not self.capture:
            self._zero_grad()
            return self._body(n)
        entry = self.graphs.get(n)
        if entry is None and self.eager_steps.get(n, 0) < WARMUP_STEPS:
            self.eager_steps[n] = self.eager_steps.get(n, 0) + 1
            return self._eager(n)
        graph, out = entry or self._capture(n)
        graph.replay()  # a capture records the step without running it
        self._replayed(n)
        return out

    def drop_graphs(self) -> None:
        """Capture again at the next steps (e.g. a learning rate baked into a captured kernel changed)."""
        self.graphs.clear()

    def _eager(self, n: int):
        main = torch.cuda.current_stream(self.device)
        self.side.wait_stream(main)
        with torch.cuda.stream(self.side), warnings.catch_warnings():
            # after a capture the optimizer is capturable; its one-time "running uncaptured"
            # warning is about speed, and these eager steps are few
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            self._zero_grad()
            out = self._body(n)
        main.wait_stream(self.side)
        return out

    def _capture(self, n: int):
        self._before_capture()
        self._zero_grad()
        graph = torch.cuda.CUDAGraph()
        for gen in self._generators():
            graph.register_generator_state(gen)
        try:
            with torch.cuda.graph(graph):
                out = self._body(n)
        except RuntimeError as exc:
            # no eager fallback here: a failed capture can leave torch's CUDA generator mid-capture
            raise MlprunError(
                f"CUDA graph capture failed for batches of {n} ({first_line(exc, 160)}); "
                "the last checkpoint is intact: resume with trainer.cuda_graph=false"
            ) from None
        self.graphs[n] = (graph, out)
        return self.graphs[n]


class GraphedSteps(CapturedSteps):
    """A solo run's training step (Trainer): gather, forward, loss, backward, clip, optimizer
    step, loss sum and the step's predictions kept for the epoch's confusion matrix."""

    def __init__(
        self, model, loss_fn, optimizer, metrics, split, grad_clip, autocast_dtype, device, capture: bool = True
    ):
        super().__init__(device, capture)
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.metrics = metrics
        self.x, self.y = split.x, split.y
        self.grad_clip = float(grad_clip) if grad_clip else None
        self.autocast_dtype = autocast_dtype
        self.params = [p for p in model.parameters() if p.requires_grad]
        n = self.y.shape[0]
        self.order = torch.zeros(n, dtype=torch.long, device=device)  # this epoch's permutation
        self.arange = torch.arange(n, device=device)
        # each sample's prediction, at its place in the epoch's order: the confusion matrix is
        # counted once at the epoch's end (one index_put_), not per step inside the graph
        self.preds = torch.zeros(n, dtype=torch.long, device=device)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # no weight-cast cache: cached casts would be freed between a capture and its replays
        return torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)

    def _body(self, n: int) -> torch.Tensor:
        """One step on the next `n` samples of the order; the same code runs eagerly and captured."""
        pos = self.cursor + self.arange[:n]
        idx = self.order.index_select(0, pos)
        xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
        with self._autocast():
            logits = self.model(xb)
            loss = self.loss_fn(logits, yb)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.optimizer.step()
        self.metrics.add_loss(loss, n)
        self.preds.index_copy_(0, pos, self.loss_fn.predict(logits.detach()))
        self.cursor.add_(n)
        return loss.detach()

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _before_capture(self) -> None:
        _make_capturable(self.optimizer)

    def begin_epoch(self, order: torch.Tensor) -> None:
        self.order.copy_(order)
        self._begin(0, tuple(float(g["lr"]) for g in self.optimizer.param_groups))

    def step(self, n: int) -> torch.Tensor:
        """Train on the next `n` samples; returns the step's loss (a device scalar)."""
        loss = super().step(n)
        self.metrics.count += n
        return loss

    def end_epoch(self) -> None:
        """The epoch's predictions into the train metrics' confusion matrix."""
        k = self.filled
        self.metrics.add_predictions(self.preds[:k], self.y.index_select(0, self.order[:k]))
