"""The timed methods ("arms") of the benchmark and their interleaving: one epoch of every arm over the same batch
order, step by step in a rotating order, so a load change on a shared machine hits every arm alike."""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skqk.bench.levers import with_previous_gates
from skqk.bench.protocol import BenchConfig
from skqk.data import Dataset, ImageData
from skqk.data.sampling import batch_indices
from skqk.estimator import build_estimator, mask_sites
from skqk.fuse import relu_gates_in_place
from skqk.patterns import Pattern
from skqk.pipeline.config import SGDConfig
from skqk.pipeline.loop import (
    EpochContext,
    evaluate,
    make_optimizer,
    memory_format,
    precision_context,
    sgd_step,
    validation_indices,
)
from skqk.pipeline.prefetch import Prefetcher
from skqk.pipeline.prune import active_units, removal_report
from skqk.pipeline.retrain import DeadUnitRemoval, for_step
from skqk.pipeline.validation import RecordedPatterns


def synthetic_dataset(samples: int, seed: int = 0, image_size: int = 32, test_samples: int = 64) -> Dataset:
    """CIFAR-10-shaped random data: uint8 images, random labels of 10 classes."""
    g = torch.Generator().manual_seed(seed)
    classes = [str(i) for i in range(10)]

    def split(n: int) -> ImageData:
        images = torch.randint(0, 256, (n, 3, image_size, image_size), generator=g, dtype=torch.uint8)
        return ImageData(images, torch.randint(0, 10, (n,), generator=g), classes)

    return Dataset.from_splits(split(samples), split(test_samples), "synthetic CIFAR-10-shaped (random)")


@dataclass
class Arm:
    """One timed training method: what is trained, how a batch's logits are computed, where patterns come from."""

    name: str
    trainable: nn.Module
    forward: Callable[[Tensor, object], Tensor]  # (images, pattern or None) -> logits
    read: Callable[[Tensor], object] | None = None  # sample indices -> Pattern (QK from a store)
    prepare: Callable[[Pattern], object] | None = None  # a Pattern as the step takes it (QK from a store)
    selector: nn.Module | None = None  # the frozen SK a QK arm from a store reads (its validation patterns too)
    prefetch: bool = False
    sgd: SGDConfig = field(default_factory=SGDConfig)  # the optimiser's settings and the precision
    channels_last: bool = False
    threads: int = 0  # 0: leave torch's setting
    fused_sgd: bool = True  # the pipeline's optimiser (`make_optimizer`); False: torch's for-loop SGD on the CPU
    epoch_context: EpochContext | None = None  # wraps each epoch's steps, timed with them (dead-unit removal)
    removed_units: dict = field(default_factory=dict)  # per site: units, dead, removed (QK with removal)
    setup_s: float = 0.0  # one-off work before the first epoch (finding the dead units in the store)

    def __post_init__(self):
        if self.channels_last:
            self.trainable.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(self.trainable, self.sgd, fused=self.fused_sgd)

    def inputs(self, dataset: Dataset, idx: Tensor) -> tuple[Tensor, Tensor]:
        x = dataset.inputs(dataset.train, idx)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, dataset.train.labels[idx]

    def step(self, x: Tensor, y: Tensor, pattern) -> Tensor:
        with precision_context(self.sgd.precision, "cpu"):
            logits = self.forward(x, pattern)
        loss = F.cross_entropy(logits.float(), y)
        sgd_step(self.opt, loss)
        return loss.detach()

    def epoch(self, dataset: Dataset, order: Tensor, batch_size: int) -> dict[str, float]:
        """One SGD epoch over `order`; seconds in total and blocked on pattern reads."""
        steps = self.steps(dataset, order, batch_size)
        seconds = sum(steps)
        return {"seconds": seconds + steps.overhead_s, "read_wait_s": steps.read_wait_s}

    def steps(self, dataset: Dataset, order: Tensor, batch_size: int) -> _Steps:
        """One epoch as an iterator of step times (seconds), so several arms' epochs can be interleaved step
        by step: a load change on a shared machine then hits every arm alike."""
        return _Steps(self, dataset, list(batch_indices(order, batch_size)))

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
        start = time.perf_counter()
        self._context = arm.epoch_context(arm.opt) if arm.epoch_context is not None else contextlib.nullcontext()
        self._context.__enter__()
        self.overhead_s = time.perf_counter() - start  # per-epoch work outside the steps (removal, restore)

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
        if self._context is not None:
            start = time.perf_counter()
            self._context.__exit__(None, None, None)
            self.overhead_s += time.perf_counter() - start
            self._context = None
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
    for i, steps in enumerate(epochs):
        steps.close()
        seconds[i] += steps.overhead_s
    return seconds, [steps.read_wait_s for steps in epochs]


def timed_evaluation(arm: Arm, dataset: Dataset, limit: int) -> Callable[[], tuple[float, dict]]:
    """The evaluation `skqk retrain` runs after every epoch of `arm`'s method, as a call that returns its seconds
    and metrics: the network's own, or for QK from a store the estimator's from its selector's patterns of the
    validation samples, recorded here once (untimed: a run records them once per SK) as
    `skqk.pipeline.validation` does; QK on the fly runs the selector and the estimator."""
    if arm.prepare is not None:
        recorded = RecordedPatterns(arm.selector, dataset, validation_indices(dataset, limit))

        def forward(x: Tensor, idx: Tensor) -> Tensor:
            return arm.forward(x, arm.prepare(recorded.read(idx)))
    else:

        def forward(x: Tensor, idx: Tensor) -> Tensor:
            return arm.forward(x, None)

    def run() -> tuple[float, dict]:
        start = time.perf_counter()
        metrics = evaluate(arm.trainable, dataset, limit, forward=forward)
        return time.perf_counter() - start, metrics

    return run


def make_arms(
    net: nn.Module, cfg: BenchConfig, selectors: dict, stores: dict, indices: Tensor, model: str = ""
) -> list[Arm]:
    """The timed methods. Every arm trains its own copy of the same initial weights.

    "pytorch" is the plain PyTorch fine-tune a user writes by hand (`skqk.bench.plain`); "traditional" and
    "qk_store" are exactly what ``skqk retrain --method traditional`` / ``--method qk`` run by default: the
    pipeline's fused SGD, the layout `memory_format("auto", model)` picks with patterns put in it, and for QK the
    removal of dead units around every epoch (`skqk.pipeline.retrain.DeadUnitRemoval`) and synchronous reads.
    Every lever arm changes one of these defaults.
    """
    from skqk.bench.plain import PlainPyTorchArm

    cl = memory_format("auto", model) == torch.channels_last
    layout = torch.channels_last if cl else torch.contiguous_format
    sgd = SGDConfig(lr=cfg.lr, batch_size=cfg.batch_size)

    def traditional(name, channels_last=cl, precision="fp32", **kw) -> Arm:
        m = copy.deepcopy(net)
        sgd_cfg = replace(sgd, precision=precision)
        return Arm(name, m, lambda x, p: m(x), sgd=sgd_cfg, channels_last=channels_last, **kw)

    def qk_store(
        name,
        pooling=cfg.pooling,
        prefetch=cfg.prefetch,
        previous_gates=False,
        fuse=True,
        prune=True,
        channels_last=cl,
        masks_in_layout=True,
        precision="fp32",
        **kw,
    ):
        est = build_estimator(copy.deepcopy(net), pooling, fuse=fuse and not previous_gates)
        if previous_gates:
            with_previous_gates(est)
        else:
            relu_gates_in_place(est.net)  # as `skqk retrain` does
        store = stores[pooling]
        fmt = torch.channels_last if channels_last and masks_in_layout else torch.contiguous_format
        masks = set() if previous_gates else mask_sites(est)  # the previous gates read bool states
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32

        def prepare(pattern: Pattern) -> dict[str, Tensor]:  # what `skqk retrain` hands its step
            return for_step(pattern, masks, dtype, fmt)

        sgd_cfg = replace(sgd, precision=precision)
        arm = Arm(
            name, est, lambda x, p: est(x, p), lambda idx: prepare(store.read(idx)), prepare, selectors[pooling],
            prefetch=prefetch, sgd=sgd_cfg, channels_last=channels_last, **kw,
        )  # fmt: skip
        if prune:
            start = time.perf_counter()
            active = active_units(store.read(idx) for idx in indices.split(1024))
            removal = DeadUnitRemoval(est, active, removal_report(est, active))
            arm.epoch_context, arm.removed_units = removal.epoch, removal.report if removal.pays else {}
            arm.setup_s = time.perf_counter() - start
        return arm

    def qk_fly(name, **kw) -> Arm:
        est = build_estimator(copy.deepcopy(net), cfg.pooling)
        sel = copy.deepcopy(selectors[cfg.pooling]).to(memory_format=layout)
        return Arm(name, est, lambda x, p: est(x, sel(x)), sgd=sgd, channels_last=cl, **kw)

    plain = copy.deepcopy(net)
    arms = [
        PlainPyTorchArm("pytorch", plain, lambda x, p: plain(x), sgd=sgd),
        traditional("traditional"),
        qk_store("qk_store"),
        qk_fly("qk_fly"),
    ]
    if "bf16" in cfg.precisions:
        arms += [traditional("traditional_bf16", precision="bf16"), qk_store("qk_store_bf16", precision="bf16")]
    if "prune" in cfg.levers:
        arms.append(qk_store("qk_store_all_units", prune=False))
    if "channels_last" in cfg.levers:
        other = "contiguous" if cl else "cl"
        arms += [
            traditional(f"traditional_{other}", channels_last=not cl),
            qk_store(f"qk_store_{other}", channels_last=not cl),
        ]
        if cl:
            arms.append(qk_store("qk_store_nchw_masks", masks_in_layout=False))
    if "sgd" in cfg.levers:
        arms += [traditional("traditional_loop_sgd", fused_sgd=False), qk_store("qk_store_loop_sgd", fused_sgd=False)]
    if "prefetch" in cfg.levers:
        arms.append(qk_store("qk_store_noprefetch" if cfg.prefetch else "qk_store_prefetch", prefetch=not cfg.prefetch))
    if "pooling" in cfg.levers:
        other = "frozen" if cfg.pooling == "live" else "live"
        arms.append(qk_store(f"qk_store_{other}", pooling=other))
    if "fusion" in cfg.levers and "frozen" in stores:
        arms.append(qk_store("qk_store_frozen_unfused", pooling="frozen", fuse=False))
    if "gates" in cfg.levers:
        arms.append(qk_store("qk_store_previous_gates", previous_gates=True))
        if "pooling" in cfg.levers:
            other = "frozen" if cfg.pooling == "live" else "live"
            arms.append(qk_store(f"qk_store_{other}_previous_gates", pooling=other, previous_gates=True))
    if "threads" in cfg.levers and (os.cpu_count() or 1) > 1:
        n = 1 if torch.get_num_threads() > 1 else os.cpu_count()
        arms += [traditional(f"traditional_{n}threads", threads=n), qk_store(f"qk_store_{n}threads", threads=n)]
    return arms
