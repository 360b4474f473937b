"""The stacked optimizer update (mlprunner.stacked_optim) against each member's own torch.optim
step: N small models with different hyperparameters, 20 steps on random gradients, then the
weights and every optimizer's state_dict compared (rtol 1e-6, atol 1e-7; the kernel is the fused
one a solo run uses, on slices only where that is bitwise the same work, so on the CPU they come
out bitwise equal: max abs diff 0.0 in every configuration)."""

from __future__ import annotations

import pytest
import torch

from mlprunner.stacked_optim import StackedOptimizer, clip_limits, clip_stacked, unsupported

SHAPES = [(8, 6), (1, 8), (3, 8), (1, 3)]  # weight (out, in), bias (1, out); 48 elements: updated as a slice

CONFIGS = {
    "adam": (
        torch.optim.Adam,
        [dict(lr=1e-3), dict(lr=1e-3), dict(lr=3e-3, betas=(0.8, 0.99)), dict(lr=1e-2, eps=1e-6)],
    ),
    "adam_wd": (torch.optim.Adam, [dict(lr=1e-3, weight_decay=0.1), dict(lr=2e-3), dict(lr=2e-3, weight_decay=1e-3)]),
    "adam_decoupled": (torch.optim.Adam, [dict(lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True)] * 2),
    "adamw": (torch.optim.AdamW, [dict(lr=1e-3), dict(lr=1e-3, weight_decay=0.5), dict(lr=5e-3, betas=(0.5, 0.9))]),
    "sgd": (torch.optim.SGD, [dict(lr=0.1), dict(lr=0.1), dict(lr=0.05, weight_decay=1e-2)]),
    "sgd_momentum": (
        torch.optim.SGD,
        [
            dict(lr=0.1, momentum=0.9),
            dict(lr=0.1, momentum=0.9, nesterov=True),
            dict(lr=0.02, momentum=0.5, dampening=0.3, weight_decay=1e-3),
            dict(lr=0.1),
            dict(lr=0.1, momentum=0.9),
        ],
    ),
}


def _members(cls, kwargs, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(kwargs)
    stacked = [torch.randn(n, *s, generator=g) for s in SHAPES]
    solo = [[torch.nn.Parameter(t[i].clone()) for t in stacked] for i in range(n)]
    solo_opts = [cls(ps, fused=True, **kw) for ps, kw in zip(solo, kwargs)]
    # the stacked members: parameters are views of `stacked`, as stacked.Stack makes them
    views = [[torch.nn.Parameter(torch.empty(0)) for _ in stacked] for _ in range(n)]
    for i in range(n):
        for p, t in zip(views[i], stacked):
            p.data = t[i]
    opts = [cls(ps, fused=True, **kw) for ps, kw in zip(views, kwargs)]
    return stacked, solo, solo_opts, views, opts


def _grads(n, step, scale=1.0):
    g = torch.Generator().manual_seed(1000 + step)
    return [scale * torch.randn(n, *s, generator=g) for s in SHAPES]


def _max_diff(a, b) -> float:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max([_max_diff(a[k], b[k]) for k in a], default=0.0)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max([_max_diff(x, y) for x, y in zip(a, b)], default=0.0)
    if torch.is_tensor(a):
        assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        return float((a - b).abs().max()) if a.numel() else 0.0
    assert a == b
    return 0.0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_stacked_update_equals_each_optimizer(name):
    cls, kwargs = CONFIGS[name]
    stacked, solo, solo_opts, views, opts = _members(cls, kwargs)
    n = len(kwargs)
    for step in range(3):  # a few steps each member takes alone first: the state is copied in
        grads = _grads(n, step)
        for i in range(n):
            for ps in (solo[i], views[i]):
                for p, g in zip(ps, grads):
                    p.grad = g[i].clone()
            solo_opts[i].step()
            opts[i].step()
    assert unsupported(opts, views) is None
    so = StackedOptimizer(opts, views, stacked)
    assert so.whole == [True, False, False, False]  # the 48-element weight as one slice per run
    sched = [torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5) for o in opts]
    solo_sched = [torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5) for o in solo_opts]
    for step in range(3, 23):
        grads = _grads(n, step)
        for i in range(n):
            for p, g in zip(solo[i], grads):
                p.grad = g[i].clone()
            solo_opts[i].step()
            solo_sched[i].step()
        so.step(grads)
        for s in sched:
            s.step()
    worst = 0.0
    for i in range(n):
        worst = max(worst, _max_diff([p.detach() for p in solo[i]], [t[i] for t in stacked]))
        worst = max(worst, _max_diff(solo_opts[i].state_dict(), opts[i].state_dict()))
    # the state entries are views of the stacked state while stacked, then their own memory
    state = opts[0].state[views[0][0]]
    key = "momentum_buffer" if cls is torch.optim.SGD else "exp_avg"
    if key in state:
        assert state[key].untyped_storage().data_ptr() != 0
        before = state[key].clone()
        so.release()
        stacked[0].zero_()  # dropping the stack must not touch the released state
        for s in so.buffers if so.sgd else so.exp_avg:
            s.zero_()
        assert torch.equal(opts[0].state[views[0][0]][key], before)
    print(f"{name}: max abs diff {worst:g}")
    assert worst <= 1e-7


def test_a_member_that_starts_fresh_and_resumed_ones_together():
    """Step counts differ (one member resumed later): each keeps its own bias correction."""
    cls, kwargs = torch.optim.Adam, [dict(lr=1e-3)] * 3
    stacked, solo, solo_opts, views, opts = _members(cls, kwargs)
    for i in (0, 1):  # members 0 and 1 have taken 2 steps, member 2 none
        for step in range(2):
            grads = _grads(3, step)
            for ps, o in ((solo[i], solo_opts[i]), (views[i], opts[i])):
                for p, g in zip(ps, grads):
                    p.grad = g[i].clone()
                o.step()
    so = StackedOptimizer(opts, views, stacked)
    assert [r[:2] for r in so.runs()] == [(0, 2), (2, 3)]
    for step in range(5):
        grads = _grads(3, 10 + step)
        for i in range(3):
            for p, g in zip(solo[i], grads):
                p.grad = g[i].clone()
            solo_opts[i].step()
        so.step(grads)
    for i in range(3):
        _max_diff([p.detach() for p in solo[i]], [t[i] for t in stacked])
        _max_diff(solo_opts[i].state_dict(), opts[i].state_dict())


def test_unsupported_options_fall_back():
    ps = [[torch.nn.Parameter(torch.zeros(2))]]
    assert "amsgrad" in unsupported([torch.optim.Adam(ps[0], amsgrad=True, fused=True)], ps)
    assert "maximize" in unsupported([torch.optim.SGD(ps[0], lr=0.1, maximize=True, fused=True)], ps)
    assert "not fused" in unsupported([torch.optim.Adam(ps[0], foreach=True)], ps)
    assert "is not Adam" in unsupported([torch.optim.RMSprop(ps[0])], ps)
    assert "in order" in unsupported([torch.optim.Adam(ps[0], fused=True)], [[torch.nn.Parameter(torch.zeros(2))]])


def test_clip_matches_clip_grad_norm_per_member():
    n = 4
    grads = _grads(n, 0, scale=3.0)
    limits = [1.0, None, 100.0, 0.5]
    expected = []
    for i in range(n):
        own = [g[i].clone() for g in grads]
        if limits[i]:
            ps = [torch.nn.Parameter(torch.zeros_like(g)) for g in own]
            for p, g in zip(ps, own):
                p.grad = g
            torch.nn.utils.clip_grad_norm_(ps, limits[i], foreach=True)
        expected.append(own)
    clip_stacked(grads, clip_limits(limits, grads[0].device))
    worst = max(float((grads[k][i] - expected[i][k]).abs().max()) for i in range(n) for k in range(len(SHAPES)))
    for i in range(n):
        for k in range(len(SHAPES)):
            torch.testing.assert_close(grads[k][i], expected[i][k], rtol=1e-6, atol=1e-7)
    print(f"clip: max abs diff {worst:g}")
