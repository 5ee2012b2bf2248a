"""Measurements of the machine and of one training step: matmul peak, FLOPs, peak memory, top operators."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from skqk.bench.arms import Arm
from skqk.data import Dataset
from skqk.pipeline.prune import active_units
from skqk.store import PatternStore


def matmul_flops(dtype: torch.dtype, n: int, repeats: int = 5) -> list[float]:
    """FLOP/s of an n x n x n dense matmul, one sample per repeat."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    c = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=c)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=c)
        out.append(2 * n**3 / (time.perf_counter() - start))
    return out


def step_flops(arm: Arm, dataset: Dataset, idx: Tensor) -> int:
    """Training FLOPs of one step (forward + backward; matmuls and convolutions) by torch.utils.flop_counter."""
    x, y = arm.inputs(dataset, idx)
    pattern = arm.read(idx) if arm.read is not None else None
    with FlopCounterMode(display=False) as counter:
        arm.step(x, y, pattern)
    return counter.get_total_flops()


@contextlib.contextmanager
def quiet_profiler() -> Iterator[None]:
    """Inside, nothing reaches file descriptor 2: torch.profiler's C++ side writes ``USDT ... profiler_start`` /
    ``profiler_stop`` and allocator warnings there, past Python's sys.stderr, and they are no news to a user."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes allocated on top of what was live before `fn`, from torch.profiler's allocation events."""
    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def top_operators(arm: Arm, dataset: Dataset, idx: Tensor, steps: int = 3, top: int = 10) -> list[dict]:
    """The operators that take the most self CPU time in `steps` training steps of `arm` (torch.profiler)."""
    x, y = arm.inputs(dataset, idx)
    arm.trainable.train()
    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            arm.step(x, y, arm.read(idx) if arm.read is not None else None)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    return [
        {
            "op": e.key,
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / steps,
        }
        for e in rows[:top]
    ]


def state_bytes(arm: Arm) -> int:
    """Parameters, gradients and momentum buffers: the memory a method holds between steps."""
    params = sum(p.numel() * p.element_size() for p in arm.trainable.parameters() if p.requires_grad)
    return 3 * params


def dead_units(store: PatternStore, indices: Tensor) -> dict[str, float]:
    """Per gate site, the share of units (channels of a conv site, neurons of a linear one) inactive for every
    stored sample at every position: what an exact pruning of the estimator could drop."""
    active = active_units(store.read(idx) for idx in indices.split(1024))
    return {site: 1.0 - alive.float().mean().item() for site, alive in active.items()}
