"""Benchmark: QK-only re-training against traditional re-training, measured side by side in one process.

Every timed quantity is a median over interleaved repeats: each round runs one epoch of every method (the
"arms") in a rotating order, so a slow phase of a shared machine hits all methods alike; methods are compared
only as ratios of those medians, never across runs. Throughput uses synthetic CIFAR-10-shaped data (random
uint8 images, random labels; a random-initialised network), which costs exactly what real data costs; the
time-to-accuracy protocol uses real data when it is available.

Example:
    >>> result = run(BenchConfig(models=("lenet5",), samples=256, repeats=3))
    >>> result["models"]["lenet5"]["qk_over_traditional"]
    >>> print(markdown(result))

Command line: ``skqk bench --quick --json bench.json`` or ``python benchmarks/bench.py ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from skqk import models
from skqk.data import Dataset, ImageData, epoch_order, subset_indices
from skqk.decoupled import DecoupledModel
from skqk.estimator import build_estimator
from skqk.gates import MaxPoolGate, ReluGate
from skqk.prefetch import Prefetcher
from skqk.prune import prune_dead_units
from skqk.record import record
from skqk.selector import build_selector
from skqk.store import PatternStore

LEVERS = ("prefetch", "pooling", "fusion", "gates", "channels_last", "prune", "threads")
DEFAULT_LEVERS = ("prefetch", "pooling", "fusion", "gates", "channels_last", "prune")  # threads: slow, see docs


@dataclass
class AccuracyProtocol:
    """Time to reach the traditional method's final validation accuracy: a fixed small protocol."""

    model: str = "lenet5"
    pretrain_samples: int = 1024
    pretrain_epochs: int = 10
    samples: int = 4096  # n + m re-trained on
    epochs: int = 6
    eval_samples: int = 2000


@dataclass
class BenchConfig:
    models: tuple[str, ...] = ("lenet5", "alexnet", "vgg8")
    samples: int = 512  # synthetic training samples per timed epoch
    batch_size: int = 64  # SGDConfig's default
    repeats: int = 4  # timed rounds (plus one warm-up round)
    e2e_epochs: int = 50  # the paper's re-training epochs
    pooling: str = "live"  # the paper's setup; the other mode is measured as the "pooling" lever
    precisions: tuple[str, ...] = ("fp32", "bf16")
    prefetch: bool = True  # read patterns in a background thread
    levers: tuple[str, ...] = DEFAULT_LEVERS
    accuracy: AccuracyProtocol | None = field(default_factory=AccuracyProtocol)
    seed: int = 0
    matmul_size: int = 1024
    profile: bool = False  # top operators of one traditional and one QK step (torch.profiler), for misses

    def __post_init__(self):
        for name in self.models:
            if name not in models.list_models():
                raise ValueError(f"unknown model {name!r}; choose from {', '.join(models.list_models())}")
        for p in self.precisions:
            if p not in ("fp32", "bf16"):
                raise ValueError(f"precision must be fp32 or bf16, got {p!r}")
        for lever in self.levers:
            if lever not in LEVERS:
                raise ValueError(f"unknown lever {lever!r}; choose from {', '.join(LEVERS)}")
        if self.pooling not in ("live", "frozen"):
            raise ValueError(f"pooling must be live or frozen, got {self.pooling!r}")
        if self.samples < self.batch_size or self.repeats < 1:
            raise ValueError("samples must be at least one batch and repeats at least 1")


def quick_config(**overrides) -> BenchConfig:
    """Under a minute for lenet5: fewer samples and repeats, no levers, no accuracy protocol."""
    base = BenchConfig(models=("lenet5",), samples=128, repeats=3, levers=(), accuracy=None)
    return replace(base, **overrides)


# -- machine -----------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    flags, model = set(), platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": [f for f in wanted if f in flags],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


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


# -- data ----------------------------------------------------------------------------------------------------------


def synthetic_dataset(samples: int, seed: int = 0, image_size: int = 32) -> Dataset:
    """CIFAR-10-shaped random data: uint8 images, random labels of 10 classes."""
    g = torch.Generator().manual_seed(seed)
    classes = [str(i) for i in range(10)]

    def split(n: int) -> ImageData:
        images = torch.randint(0, 256, (n, 3, image_size, image_size), generator=g, dtype=torch.uint8)
        return ImageData(images, torch.randint(0, 10, (n,), generator=g), classes)

    return Dataset.from_splits(split(samples), split(64), "synthetic CIFAR-10-shaped (random)")


# -- one timed method ----------------------------------------------------------------------------------------------


@dataclass
class Arm:
    """One timed training method: what is trained, how a batch's logits are computed, where patterns come from."""

    name: str
    trainable: nn.Module
    forward: Callable[[Tensor, object], Tensor]  # (images, pattern or None) -> logits
    read: Callable[[Tensor], object] | None = None  # sample indices -> Pattern (QK from a store)
    prefetch: bool = False
    precision: str = "fp32"
    channels_last: bool = False
    threads: int = 0  # 0: leave torch's setting

    def __post_init__(self):
        if self.channels_last:
            self.trainable.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.trainable.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else contextlib.nullcontext()

    def inputs(self, dataset: Dataset, idx: Tensor) -> tuple[Tensor, Tensor]:
        x = dataset.normalize(dataset.train.images[idx])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, dataset.train.labels[idx]

    def step(self, x: Tensor, y: Tensor, pattern) -> Tensor:
        with self.autocast():
            logits = self.forward(x, pattern)
        loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def epoch(self, dataset: Dataset, order: Tensor, batch_size: int) -> dict[str, float]:
        """One SGD epoch over `order`; seconds in total and blocked on pattern reads."""
        steps = self.steps(dataset, order, batch_size)
        seconds = sum(steps)
        return {"seconds": seconds, "read_wait_s": steps.read_wait_s}

    def steps(self, dataset: Dataset, order: Tensor, batch_size: int) -> _Steps:
        """One epoch as an iterator of step times (seconds), so several arms' epochs can be interleaved step
        by step: a load change on a shared machine then hits every arm alike."""
        return _Steps(self, dataset, list(order.split(batch_size)))

    def patterns(self, splits: list[Tensor]):
        if self.read is None:
            return None
        return Prefetcher(self.read, splits) if self.prefetch else _SyncReader(self.read, splits)


class _Steps:
    """Iterator over the timed steps of one epoch of an arm (see `Arm.steps`)."""

    def __init__(self, arm: Arm, dataset: Dataset, splits: list[Tensor]):
        self.arm, self.dataset, self.splits = arm, dataset, splits
        arm.trainable.train()
        self.patterns = arm.patterns(splits)
        self.read_wait_s = 0.0
        self._next = 0

    def __iter__(self) -> Iterator[float]:
        return self

    def __next__(self) -> float:
        arm = self.arm
        if self._next == len(self.splits):
            self.close()
            raise StopIteration
        start = time.perf_counter()
        idx = self.splits[self._next]
        x, y = arm.inputs(self.dataset, idx)
        arm.step(x, y, next(self.patterns) if self.patterns is not None else None)
        seconds = time.perf_counter() - start
        self._next += 1
        return seconds

    def close(self) -> None:
        if self.patterns is not None:
            self.read_wait_s = self.patterns.wait_s
            if isinstance(self.patterns, Prefetcher):
                self.patterns.close()


class _SyncReader:
    """The reads on the critical path, timed (what `Prefetcher` replaces)."""

    def __init__(self, read, keys):
        self._read, self._keys, self.wait_s = read, iter(keys), 0.0

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        key = next(self._keys)
        start = time.perf_counter()
        value = self._read(key)
        self.wait_s += time.perf_counter() - start
        return value


# -- measurements of one step --------------------------------------------------------------------------------------


def step_flops(arm: Arm, dataset: Dataset, idx: Tensor) -> int:
    """Training FLOPs of one step (forward + backward; matmuls and convolutions) by torch.utils.flop_counter."""
    x, y = arm.inputs(dataset, idx)
    pattern = arm.read(idx) if arm.read is not None else None
    with FlopCounterMode(display=False) as counter:
        arm.step(x, y, pattern)
    return counter.get_total_flops()


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes allocated on top of what was live before `fn`, from torch.profiler's allocation events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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
    with profile(activities=[ProfilerActivity.CPU]) as prof:
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
    pattern = store.read(indices)
    out = {}
    for site in pattern.gate_sites:
        states = pattern[site]
        ever = states.any(0)
        while ever.dim() > 1:
            ever = ever.any(-1)
        out[site] = 1.0 - ever.float().mean().item()
    return out


# -- one model -----------------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_model(name: str, cfg: BenchConfig, peaks: dict[str, float], log: Callable[[str], None]) -> dict:
    torch.manual_seed(cfg.seed)
    net = models.build(name)
    dataset = synthetic_dataset(cfg.samples, cfg.seed)
    indices = torch.arange(cfg.samples)
    tmp = Path(tempfile.mkdtemp(prefix="skqk-bench-"))
    other = "frozen" if cfg.pooling == "live" else "live"
    poolings = [cfg.pooling] + ([other] if {"pooling", "fusion"} & set(cfg.levers) else [])
    selectors, stores = {}, {}
    try:
        for pooling in poolings:
            selectors[pooling] = build_selector(copy.deepcopy(net).eval(), pooling)
            stores[pooling] = record(selectors[pooling], dataset, indices, tmp / f"store-{pooling}", progress=False)
        arms = _arms(net, cfg, selectors, stores, indices)
        log(f"{name}: {len(arms)} arms x {cfg.repeats} rounds (+1 warm-up) of {cfg.samples} samples")
        times: dict[str, list[float]] = {a.name: [] for a in arms}
        waits: dict[str, list[float]] = {a.name: [] for a in arms}
        phase3: list[float] = []
        reads: list[float] = []
        for r in range(cfg.repeats + 1):
            order = epoch_order(indices, cfg.seed, r)
            seconds, read_waits = interleaved_epoch(arms, dataset, order, cfg.batch_size, r)
            if r:
                for arm, sec, wait in zip(arms, seconds, read_waits):
                    times[arm.name].append(sec)
                    waits[arm.name].append(wait)
            start = time.perf_counter()
            record(selectors[cfg.pooling], dataset, indices, tmp / f"phase3-{r}", progress=False)
            if r:
                phase3.append(time.perf_counter() - start)
            shutil.rmtree(tmp / f"phase3-{r}", ignore_errors=True)
            start = time.perf_counter()
            for idx in order.split(cfg.batch_size):
                stores[cfg.pooling].read(idx)
            if r:
                reads.append(time.perf_counter() - start)
            if r:
                log(f"  round {r}: " + ", ".join(f"{a.name} {times[a.name][-1]:.2f}s" for a in arms))
        by_name = {a.name: a for a in arms}
        idx = indices[: cfg.batch_size]
        flops = {n: step_flops(by_name[n], dataset, idx) for n in ("traditional", "qk_store", "qk_fly")}
        for n in ("traditional_bf16", "qk_store_bf16"):
            if n in by_name:
                flops[n] = step_flops(by_name[n], dataset, idx)
        memory = {}
        for n in ("traditional", "qk_store", "qk_fly", "traditional_bf16", "qk_store_bf16"):
            if n in by_name:
                arm = by_name[n]
                x, y = arm.inputs(dataset, idx)
                memory[n] = {
                    "step_peak_bytes": peak_memory(
                        lambda arm=arm, x=x, y=y: arm.step(x, y, arm.read(idx) if arm.read else None)
                    ),
                    "state_bytes": state_bytes(arm),
                }
        memory["phase3"] = {
            "step_peak_bytes": peak_memory(
                lambda: record(selectors[cfg.pooling], dataset, indices, tmp / "phase3-mem", progress=False)
            ),
            "state_bytes": sum(t.numel() * t.element_size() for t in selectors[cfg.pooling].state_dict().values()),
        }
        profiles = {}
        if cfg.profile:
            for n in ("traditional", "qk_store", "qk_store_frozen"):
                if n in by_name:
                    profiles[n] = top_operators(by_name[n], dataset, idx)
        dead = dead_units(stores[cfg.pooling], indices)
        store = stores[cfg.pooling]
        metrics = _model_metrics(cfg, times, waits, phase3, reads, flops, memory, peaks, store, dead)
        if profiles:
            metrics["profile_top_ops"] = profiles
        return metrics
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def interleaved_epoch(
    arms: list[Arm], dataset: Dataset, order: Tensor, batch_size: int, rotate: int = 0
) -> tuple[list[float], list[float]]:
    """One epoch of every arm over the same batch order, interleaved step by step in a rotating arm order.

    Returns each arm's epoch seconds (the sum of its step times) and its seconds blocked on pattern reads.
    """
    epochs = [a.steps(dataset, order, batch_size) for a in arms]
    mixed = [i for i, a in enumerate(arms) if not a.threads]
    seconds = [0.0] * len(arms)
    for step in range(len(epochs[0].splits)):
        shift = (step + rotate) % len(mixed)
        for i in mixed[shift:] + mixed[:shift]:
            seconds[i] += next(epochs[i])
    for i, a in enumerate(arms):  # another thread count: whole epochs, switching threads per step costs
        if a.threads:
            threads = torch.get_num_threads()
            torch.set_num_threads(a.threads)
            try:
                seconds[i] = sum(epochs[i])
            finally:
                torch.set_num_threads(threads)
    for steps in epochs:
        steps.close()
    return seconds, [steps.read_wait_s for steps in epochs]


class _MulReluGate(ReluGate):
    """The previous ReLU gate, ``x * state`` with a bool state (a slow bool-to-float promotion in the forward and
    again in the backward): the "gates" lever measures the current gates against it."""

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        return x * state


class _IndexMathMaxPoolGate(MaxPoolGate):
    """The previous frozen-pooling gate: flat positions by element-wise index arithmetic, then a gather."""

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        offset = state.long()
        rows, cols = self._window_origins(x, offset)
        kh, kw = torch.div(offset, self.kernel_size[1], rounding_mode="floor"), offset % self.kernel_size[1]
        flat = (rows + kh * self.dilation[0]) * x.shape[-1] + cols + kw * self.dilation[1]
        out = torch.gather(x.flatten(-2), -1, flat.flatten(-2))
        return out.view(*x.shape[:-2], *state.shape[-2:])


def with_previous_gates(estimator: nn.Module) -> nn.Module:
    """Swap the estimator's gates for their previous implementations (same states, same results)."""
    for module in estimator.modules():
        if type(module) is ReluGate:
            module.__class__ = _MulReluGate
        elif type(module) is MaxPoolGate:
            module.__class__ = _IndexMathMaxPoolGate
    return estimator


def _arms(net: nn.Module, cfg: BenchConfig, selectors: dict, stores: dict, indices: Tensor) -> list[Arm]:
    """The timed methods. Every arm trains its own copy of the same initial weights."""

    def traditional(name, **kw) -> Arm:
        m = copy.deepcopy(net)
        return Arm(name, m, lambda x, p: m(x), **kw)

    def qk_store(name, pooling=cfg.pooling, prefetch=cfg.prefetch, previous_gates=False, fuse=True, prune=False, **kw):
        est = build_estimator(copy.deepcopy(net), pooling, fuse=fuse and not previous_gates)
        if prune:  # exact: units inactive for every stored sample (skqk.prune)
            prune_dead_units(est, stores[pooling].read(indices))
        if previous_gates:
            with_previous_gates(est)
        return Arm(name, est, lambda x, p: est(x, p), read=stores[pooling].read, prefetch=prefetch, **kw)

    def qk_fly(name, **kw) -> Arm:
        est = build_estimator(copy.deepcopy(net), cfg.pooling)
        sel = selectors[cfg.pooling]
        return Arm(name, est, lambda x, p: est(x, sel(x)), **kw)

    arms = [traditional("traditional"), qk_store("qk_store"), qk_fly("qk_fly")]
    if "bf16" in cfg.precisions:
        arms += [traditional("traditional_bf16", precision="bf16"), qk_store("qk_store_bf16", precision="bf16")]
    if "prefetch" in cfg.levers:
        arms.append(qk_store("qk_store_noprefetch" if cfg.prefetch else "qk_store_prefetch", prefetch=not cfg.prefetch))
    if "pooling" in cfg.levers:
        other = "frozen" if cfg.pooling == "live" else "live"
        arms.append(qk_store(f"qk_store_{other}", pooling=other))
    if "prune" in cfg.levers:
        arms.append(qk_store("qk_store_pruned", prune=True))
    if "fusion" in cfg.levers and "frozen" in stores:
        arms.append(qk_store("qk_store_frozen_unfused", pooling="frozen", fuse=False))
    if "gates" in cfg.levers:
        arms.append(qk_store("qk_store_previous_gates", previous_gates=True))
        if "pooling" in cfg.levers:
            other = "frozen" if cfg.pooling == "live" else "live"
            arms.append(qk_store(f"qk_store_{other}_previous_gates", pooling=other, previous_gates=True))
    if "channels_last" in cfg.levers:
        arms += [traditional("traditional_cl", channels_last=True), qk_store("qk_store_cl", channels_last=True)]
    if "threads" in cfg.levers and (os.cpu_count() or 1) > 1:
        n = 1 if torch.get_num_threads() > 1 else os.cpu_count()
        arms += [traditional(f"traditional_{n}threads", threads=n), qk_store(f"qk_store_{n}threads", threads=n)]
    return arms


def _model_metrics(cfg, times, waits, phase3, reads, flops, memory, peaks, store, dead) -> dict:
    med = {n: _median(v) for n, v in times.items()}
    steps = -(-cfg.samples // cfg.batch_size)
    trad, qk, fly = med["traditional"], med["qk_store"], med["qk_fly"]
    phase3_s = _median(phase3)
    train_sps = cfg.samples / trad
    out = {
        "samples_per_epoch": cfg.samples,
        "batch_size": cfg.batch_size,
        "pooling": cfg.pooling,
        "prefetch": cfg.prefetch,
        "traditional_epoch_s": trad,
        "qk_epoch_s": qk,
        "qk_fly_epoch_s": fly,
        "traditional_samples_per_s": train_sps,
        "qk_samples_per_s": cfg.samples / qk,
        "qk_fly_samples_per_s": cfg.samples / fly,
        "qk_over_traditional": qk / trad,
        "qk_fly_over_traditional": fly / trad,
        "phase3_s": phase3_s,
        "phase3_samples_per_s": cfg.samples / phase3_s,
        "phase3_over_training_throughput": (cfg.samples / phase3_s) / train_sps,
        "pattern_bytes_per_sample": store.bytes_per_sample,
        "pattern_sites": len(store.sites),
        "store_read_s_per_step": _median(reads) / steps,
        "store_read_share_of_qk_step": _median(reads) / qk,
        "store_wait_share_of_qk_step": _median(waits["qk_store"]) / qk,
        "e2e_epochs": cfg.e2e_epochs,
        "e2e_qk_s": phase3_s + cfg.e2e_epochs * qk,
        "e2e_traditional_s": cfg.e2e_epochs * trad,
        "e2e_over_traditional": (phase3_s + cfg.e2e_epochs * qk) / (cfg.e2e_epochs * trad),
        "training_flops_per_sample": {n: f / cfg.batch_size for n, f in flops.items()},
        "memory": memory,
        "dead_unit_share": dead,
        "epoch_s_all": {n: v for n, v in times.items()},
        "epoch_s_median": med,
    }
    achieved = {}
    for n, f in flops.items():
        precision = "bf16" if n.endswith("bf16") else "fp32"
        rate = f * steps / med[n]
        achieved[n] = {"flops_per_s": rate, "precision": precision, "share_of_matmul_peak": rate / peaks[precision]}
    out["achieved_flops"] = achieved
    if "traditional_bf16" in med:
        out["traditional_bf16_epoch_s"] = med["traditional_bf16"]
        out["qk_bf16_epoch_s"] = med["qk_store_bf16"]
        out["qk_over_traditional_bf16"] = med["qk_store_bf16"] / med["traditional_bf16"]
        out["bf16_over_fp32_traditional"] = med["traditional_bf16"] / trad
        out["bf16_over_fp32_qk"] = med["qk_store_bf16"] / qk
    levers = {}
    for name, (arm, base) in {
        "prefetch (with / without)": ("qk_store", "qk_store_noprefetch"),
        "prefetch (without / with)": ("qk_store", "qk_store_prefetch"),
        "frozen pooling (gather) / live max, QK": ("qk_store_frozen", "qk_store"),
        "live max / frozen pooling (gather), QK": ("qk_store_live", "qk_store"),
        "fused ReLU+pool gate / separate gates (frozen pooling), QK": ("qk_store_frozen", "qk_store_frozen_unfused"),
        "uint8-cast mask gates / previous bool-mul gates, QK": ("qk_store", "qk_store_previous_gates"),
        "table-gather frozen pooling / previous index-maths gather, QK": (
            "qk_store_frozen",
            "qk_store_frozen_previous_gates",
        ),
        "channels_last / contiguous, traditional": ("traditional_cl", "traditional"),
        "channels_last / contiguous, QK": ("qk_store_cl", "qk_store"),
        **{
            f"{n} threads / {torch.get_num_threads()} threads, {label}": (f"{arm}_{n}threads", arm)
            for n in (1, os.cpu_count())
            for arm, label in (("traditional", "traditional"), ("qk_store", "QK"))
        },
    }.items():
        if arm in med and base in med:
            levers[name] = med[arm] / med[base]
    if "qk_store_pruned" in med:
        out["qk_pruned_over_traditional"] = med["qk_store_pruned"] / trad
        e = cfg.e2e_epochs
        out["e2e_pruned_over_traditional"] = (phase3_s + e * med["qk_store_pruned"]) / (e * trad)
        levers["dead units removed / all units, QK"] = med["qk_store_pruned"] / qk
    if "qk_store_frozen" in med:
        out["qk_frozen_over_traditional"] = med["qk_store_frozen"] / trad
    if cfg.pooling == "frozen" and "qk_store_frozen_unfused" in med:
        levers["fused ReLU+pool gate / separate gates (frozen pooling), QK"] = qk / med["qk_store_frozen_unfused"]
    if "qk_store_cl" in med:
        levers["QK channels_last / traditional channels_last"] = med["qk_store_cl"] / med["traditional_cl"]
    out["levers"] = levers
    return out


# -- time to accuracy ----------------------------------------------------------------------------------------------


def accuracy_protocol(dataset: Dataset, proto: AccuracyProtocol, cfg: BenchConfig, log) -> dict:
    """Pre-train briefly, record the patterns (Phase 3, timed), then re-train both methods epoch by epoch,
    interleaved, evaluating after each epoch (evaluation not timed). QK time includes Phase 3."""
    from skqk.train import evaluate

    kwargs = {"in_channels": dataset.in_channels, "image_size": dataset.image_size, "num_classes": dataset.num_classes}
    torch.manual_seed(cfg.seed)
    net = models.build(proto.model, **kwargs)
    pre_idx = subset_indices(dataset.train.labels, proto.pretrain_samples, 0)
    pre = Arm("pretrain", net, lambda x, p: net(x))
    pre.opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for e in range(proto.pretrain_epochs):
        pre.epoch(dataset, epoch_order(pre_idx, cfg.seed, e), cfg.batch_size)
    pretrained = evaluate(net, dataset, proto.eval_samples)["val_accuracy"]
    log(f"accuracy protocol: pre-trained {proto.model}, val accuracy {pretrained:.4f}")
    idx = subset_indices(dataset.train.labels, proto.samples, 0)
    tmp = Path(tempfile.mkdtemp(prefix="skqk-bench-acc-"))
    try:
        selector = build_selector(copy.deepcopy(net).eval(), cfg.pooling)
        start = time.perf_counter()
        store = record(selector, dataset, idx, tmp / "store", progress=False)
        phase3_s = time.perf_counter() - start
        arms, evals = [], {}
        for precision in cfg.precisions:
            suffix = "" if precision == "fp32" else "_bf16"
            m = copy.deepcopy(net)
            est = build_estimator(copy.deepcopy(net), cfg.pooling)
            arms.append(Arm("traditional" + suffix, m, lambda x, p, m=m: m(x), precision=precision))
            arms.append(
                Arm("qk" + suffix, est, lambda x, p, e=est: e(x, p), store.read, cfg.prefetch, precision=precision)
            )
            evals["traditional" + suffix], evals["qk" + suffix] = m, DecoupledModel(selector, est)
        for a in arms:  # the protocol's optimiser: the SGDConfig defaults
            a.opt = torch.optim.SGD(a.trainable.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        curves = {a.name: [] for a in arms}
        clock = {a.name: phase3_s if a.name.startswith("qk") else 0.0 for a in arms}
        for e in range(proto.epochs):
            order = epoch_order(idx, cfg.seed, e)
            seconds, _ = interleaved_epoch(arms, dataset, order, cfg.batch_size, e)
            for a, sec in zip(arms, seconds):
                clock[a.name] += sec
                acc = evaluate(evals[a.name], dataset, proto.eval_samples)["val_accuracy"]
                curves[a.name].append({"epoch": e + 1, "seconds": clock[a.name], "val_accuracy": acc})
            log(f"  epoch {e + 1}: " + ", ".join(f"{n} {c[-1]['val_accuracy']:.4f}" for n, c in curves.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"protocol": asdict(proto), "data": dataset.source, "pretrained_val_accuracy": pretrained}
    out["phase3_s"] = phase3_s
    out["curves"] = curves
    for precision in cfg.precisions:
        suffix = "" if precision == "fp32" else "_bf16"
        trad, qk = curves["traditional" + suffix], curves["qk" + suffix]
        target = trad[-1]["val_accuracy"]
        trad_s = next(c["seconds"] for c in trad if c["val_accuracy"] >= target)
        reached = next((c for c in qk if c["val_accuracy"] >= target), None)
        out[precision] = {
            "traditional_final_val_accuracy": target,
            "traditional_seconds_to_target": trad_s,
            "qk_final_val_accuracy": qk[-1]["val_accuracy"],
            "qk_best_val_accuracy": max(c["val_accuracy"] for c in qk),
            "qk_seconds_to_target": reached["seconds"] if reached else None,
            "qk_over_traditional_time_to_target": reached["seconds"] / trad_s if reached else None,
        }
    if "bf16" in cfg.precisions and "fp32" in cfg.precisions:
        out["bf16_minus_fp32_points"] = {
            m: 100 * (curves[m + "_bf16"][-1]["val_accuracy"] - curves[m][-1]["val_accuracy"])
            for m in ("traditional", "qk")
        }
    return out


# -- the whole benchmark -------------------------------------------------------------------------------------------


def run(cfg: BenchConfig, dataset: Dataset | None = None, log: Callable[[str], None] = print) -> dict:
    """All measurements of `cfg`; `dataset` (real data) is needed for the time-to-accuracy protocol only."""
    started = time.perf_counter()
    machine = machine_info()
    machine["note"] = (
        "timings are medians of interleaved repeats in one process; compare them only as ratios within this run"
    )
    peak_samples: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def measure_peaks() -> None:
        for _ in range(2):
            peak_samples["fp32"] += matmul_flops(torch.float32, cfg.matmul_size)
            peak_samples["bf16"] += matmul_flops(torch.bfloat16, cfg.matmul_size)

    measure_peaks()
    peaks = {p: max(v) for p, v in peak_samples.items()}  # updated after the models, below
    result: dict = {"machine": machine, "config": _config_dict(cfg), "models": {}}
    for name in cfg.models:
        result["models"][name] = bench_model(name, cfg, peaks, log)
    measure_peaks()
    final = {p: max(v) for p, v in peak_samples.items()}
    for metrics in result["models"].values():  # re-base shares on the peak over the whole run
        for a in metrics["achieved_flops"].values():
            a["share_of_matmul_peak"] = a["flops_per_s"] / final[a["precision"]]
    machine["matmul_peak_flops"] = final
    machine["matmul_median_flops"] = {p: statistics.median(v) for p, v in peak_samples.items()}
    machine["matmul_size"] = cfg.matmul_size
    if cfg.accuracy is not None:
        if dataset is None:
            result["time_to_accuracy"] = {"skipped": "no real data given"}
        else:
            result["time_to_accuracy"] = accuracy_protocol(dataset, cfg.accuracy, cfg, log)
    machine["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - started
    result["targets"] = targets(result)
    return result


def _config_dict(cfg: BenchConfig) -> dict:
    d = asdict(cfg)
    d["models"], d["precisions"], d["levers"] = list(cfg.models), list(cfg.precisions), list(cfg.levers)
    return d


def targets(result: dict) -> list[dict]:
    """The issue's targets, each with the measured value and whether it is met."""
    rows = []

    def add(target, model, value, limit, at_most=True):
        met = value is not None and (value <= limit if at_most else value >= limit)
        rows.append({"target": target, "model": model, "value": value, "limit": limit, "met": bool(met)})

    for name, m in result["models"].items():
        add("QK epoch / traditional epoch <= 0.8 (fp32)", name, m["qk_over_traditional"], 0.8)
        add(f"(Phase 3 + {m['e2e_epochs']} QK epochs) / traditional <= 0.85", name, m["e2e_over_traditional"], 0.85)
        if "qk_pruned_over_traditional" in m:
            add("QK epoch, dead units removed / traditional <= 0.8", name, m["qk_pruned_over_traditional"], 0.8)
            add(
                "(Phase 3 + E QK epochs, dead units removed) / traditional <= 0.85",
                name,
                m["e2e_pruned_over_traditional"],
                0.85,
            )
        add("store read / QK step <= 5% (raw read)", name, m["store_read_share_of_qk_step"], 0.05)
        add("store read / QK step <= 5% (critical path)", name, m["store_wait_share_of_qk_step"], 0.05)
        add("Phase 3 throughput / training throughput >= 3", name, m["phase3_over_training_throughput"], 3, False)
        if name in ("alexnet", "vgg8"):
            for arm, a in m["achieved_flops"].items():
                if arm in ("traditional", "qk_store", "traditional_bf16", "qk_store_bf16"):
                    add(
                        f"{arm} FLOP/s >= 50% of {a['precision']} matmul peak",
                        name,
                        a["share_of_matmul_peak"],
                        0.5,
                        False,
                    )
    acc = result.get("time_to_accuracy", {})
    if "bf16_minus_fp32_points" in acc:
        for method, diff in acc["bf16_minus_fp32_points"].items():
            rows.append(
                {
                    "target": f"bf16 accuracy within 0.5 point of fp32 ({method}; small lenet5 protocol, "
                    "not the Fig. 5 cpu preset)",
                    "model": acc["protocol"]["model"],
                    "value": diff,
                    "limit": 0.5,
                    "met": abs(diff) <= 0.5,
                }
            )
    return rows


# -- report --------------------------------------------------------------------------------------------------------


def _fmt(v, digits=3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if abs(v) >= 1e9:
            return f"{v / 1e9:.1f} G"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def markdown(result: dict) -> str:
    mach = result["machine"]
    lines = [
        f"Machine: {mach['cpu']}, {mach['usable_cores']} usable cores, torch {mach['torch']} "
        f"({mach['cpu_capability']}, flags: {', '.join(mach['cpu_flags'])}), {mach['torch_threads']} threads; "
        f"load average {mach['loadavg_start'][0]:.1f} at start, {mach['loadavg_end'][0]:.1f} at end "
        f"(shared machine).",
        f"Dense matmul peak ({mach['matmul_size']}³): fp32 {_fmt(mach['matmul_peak_flops']['fp32'])}FLOP/s, "
        f"bf16 {_fmt(mach['matmul_peak_flops']['bf16'])}FLOP/s.",
        "",
        "| model | trad. epoch s | QK (store) epoch s | QK (on-the-fly) epoch s | QK/trad. | on-the-fly/trad. "
        "| Phase 3 samples/s | Phase 3 / training throughput | pattern bytes/sample | store read share (raw / "
        "critical path) | e2e (Phase 3 + E epochs) / trad. |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        lines.append(
            f"| {name} | {m['traditional_epoch_s']:.3f} | {m['qk_epoch_s']:.3f} | {m['qk_fly_epoch_s']:.3f} | "
            f"{m['qk_over_traditional']:.3f} | {m['qk_fly_over_traditional']:.3f} | {m['phase3_samples_per_s']:,.0f} | "
            f"{m['phase3_over_training_throughput']:.2f} | {m['pattern_bytes_per_sample']:,} | "
            f"{100 * m['store_read_share_of_qk_step']:.2f}% / {100 * m['store_wait_share_of_qk_step']:.2f}% | "
            f"{m['e2e_over_traditional']:.3f} (E={m['e2e_epochs']}) |"
        )
    lines += [
        "",
        "| model | trad. samples/s | QK samples/s | bf16 trad. epoch s | bf16 QK epoch s | bf16 QK/trad. "
        "| bf16/fp32 trad. | bf16/fp32 QK |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        lines.append(
            f"| {name} | {m['traditional_samples_per_s']:.1f} | {m['qk_samples_per_s']:.1f} | "
            f"{_fmt(m.get('traditional_bf16_epoch_s'))} | {_fmt(m.get('qk_bf16_epoch_s'))} | "
            f"{_fmt(m.get('qk_over_traditional_bf16'))} | {_fmt(m.get('bf16_over_fp32_traditional'))} | "
            f"{_fmt(m.get('bf16_over_fp32_qk'))} |"
        )
    lines += [
        "",
        "| model | method | training MFLOP/sample | achieved GFLOP/s | share of matmul peak |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        for arm, a in m["achieved_flops"].items():
            lines.append(
                f"| {name} | {arm} | {m['training_flops_per_sample'][arm] / 1e6:.1f} | {a['flops_per_s'] / 1e9:.1f} | "
                f"{100 * a['share_of_matmul_peak']:.1f}% ({a['precision']}) |"
            )
    lines += ["", "| model | method | peak extra MB in one step | weights+grads+momentum MB |", "|---|---|---|---|"]
    for name, m in result["models"].items():
        for arm, mem in m["memory"].items():
            lines.append(
                f"| {name} | {arm} | {mem['step_peak_bytes'] / 2**20:.1f} | {mem['state_bytes'] / 2**20:.1f} |"
            )
    lever_rows = [(name, k, v) for name, m in result["models"].items() for k, v in m["levers"].items()]
    if lever_rows:
        lines += ["", "| model | lever (epoch-time ratio, < 1 = pays) | ratio |", "|---|---|---|"]
        lines += [f"| {name} | {k} | {v:.3f} |" for name, k, v in lever_rows]
    for name, m in result["models"].items():
        for arm, ops in m.get("profile_top_ops", {}).items():
            lines += ["", f"Top operators, {name} {arm} (self CPU per step):", "", "| op | ms/step | share | calls |"]
            lines.append("|---|---|---|---|")
            lines += [
                f"| {o['op']} | {o['self_ms_per_step']:.2f} | {100 * o['share']:.1f}% | {o['calls_per_step']:g} |"
                for o in ops
            ]
    lines += ["", "| model | dead-unit share per gate site (inactive for every stored sample) |", "|---|---|"]
    for name, m in result["models"].items():
        shares = ", ".join(f"{s}: {100 * v:.1f}%" for s, v in m["dead_unit_share"].items())
        lines.append(f"| {name} | {shares} |")
    acc = result.get("time_to_accuracy")
    if acc and "curves" in acc:
        p = acc["protocol"]
        lines += [
            "",
            f"Time to accuracy ({acc['data']}): {p['model']} pre-trained {p['pretrain_epochs']} epochs on "
            f"{p['pretrain_samples']} samples (val accuracy {acc['pretrained_val_accuracy']:.4f}), then re-trained "
            f"{p['epochs']} epochs on {p['samples']} samples, validation on {p['eval_samples']} test samples; QK "
            f"time includes Phase 3 ({acc['phase3_s']:.2f} s).",
            "",
            "| precision | trad. final val acc | trad. s | QK final val acc | QK best | QK s to trad. final | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for precision in ("fp32", "bf16"):
            if precision in acc:
                a = acc[precision]
                lines.append(
                    f"| {precision} | {a['traditional_final_val_accuracy']:.4f} | "
                    f"{a['traditional_seconds_to_target']:.1f} | {a['qk_final_val_accuracy']:.4f} | "
                    f"{a['qk_best_val_accuracy']:.4f} | {_fmt(a['qk_seconds_to_target'])} | "
                    f"{_fmt(a['qk_over_traditional_time_to_target'])} |"
                )
        if "bf16_minus_fp32_points" in acc:
            d = acc["bf16_minus_fp32_points"]
            lines.append("")
            lines.append("bf16 − fp32 final val accuracy (points): " + ", ".join(f"{m} {v:+.2f}" for m, v in d.items()))
    elif acc:
        lines += ["", f"Time to accuracy: skipped ({acc.get('skipped')})."]
    lines += ["", "| target | model | value | limit | met |", "|---|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(
            f"| {t['target']} | {t['model']} | {_fmt(t['value'])} | {t['limit']} | {'yes' if t['met'] else 'no'} |"
        )
    lines.append("")
    lines.append(f"Wall time of the benchmark: {result['wall_s']:.0f} s.")
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", help="comma-separated (default lenet5,alexnet,vgg8; --quick: lenet5)")
    p.add_argument("--quick", action="store_true", help="under a minute for lenet5: fewer samples and repeats")
    p.add_argument("--json", dest="json_path", help="write the results to this JSON file")
    p.add_argument("--markdown", help="write the markdown tables to this file (always printed)")
    p.add_argument("--samples", type=int, help="synthetic samples per timed epoch (default 512; quick 128)")
    p.add_argument("--repeats", type=int, help="timed rounds, after one warm-up round (default 4; quick 3)")
    p.add_argument("--batch-size", type=int, help="SGD batch size (default 64)")
    p.add_argument("--epochs", type=int, help="re-training epochs of the end-to-end comparison (default 50)")
    p.add_argument("--precision", default=None, help="comma-separated precisions to time: fp32,bf16 (default both)")
    p.add_argument("--pooling", choices=["live", "frozen"], help="max pooling of the estimator (default live)")
    p.add_argument("--no-prefetch", action="store_true", help="read patterns on the critical path")
    p.add_argument(
        "--levers", help=f"comma-separated levers to measure: {','.join(LEVERS)} (default all but threads; quick none)"
    )
    p.add_argument("--no-accuracy", action="store_true", help="skip the time-to-accuracy protocol (real data)")
    p.add_argument("--accuracy-epochs", type=int, help="re-training epochs of the time-to-accuracy protocol")
    p.add_argument("--profile", action="store_true", help="also report the top operators of a step (torch.profiler)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads before measuring (default: torch's choice)")
    p.add_argument("--data-dir", help="real data for the time-to-accuracy protocol (default $SKQK_DATA)")
    p.add_argument("--cache-dir", help="decoded-data cache (default $SKQK_CACHE)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    cfg = quick_config() if args.quick else BenchConfig()
    over: dict = {}
    if args.models:
        over["models"] = tuple(args.models.split(","))
    for key in ("samples", "repeats", "batch_size", "pooling"):
        if getattr(args, key, None) is not None:
            over[key] = getattr(args, key)
    if args.epochs is not None:
        over["e2e_epochs"] = args.epochs
    if args.precision:
        over["precisions"] = tuple(args.precision.split(","))
    if args.profile:
        over["profile"] = True
    if args.no_prefetch:
        over["prefetch"] = False
    if args.levers is not None:
        over["levers"] = tuple(x for x in args.levers.split(",") if x)
    if args.no_accuracy:
        over["accuracy"] = None
    elif args.accuracy_epochs:
        over["accuracy"] = replace(cfg.accuracy or AccuracyProtocol(), epochs=args.accuracy_epochs)
    return replace(cfg, **over)


def main_from_args(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    dataset = None
    if cfg.accuracy is not None:
        from skqk.data import load_dataset

        if args.data_dir or os.environ.get("SKQK_DATA"):
            dataset = load_dataset(args.data_dir, args.cache_dir, download=False, progress=False)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = run(cfg, dataset, log)
    result["command"] = " ".join(["skqk bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv)
    table = markdown(result)
    print(table)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description="QK-only vs traditional re-training benchmark")
    add_arguments(parser)
    main_from_args(parser.parse_args(argv))
    return 0
