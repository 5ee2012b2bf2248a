"""Solve runs: statistics of a block over samples of a pattern store, the solve, and the run folder they leave.

A run folder holds ``model.pt`` (an ordinary decoupled checkpoint: the checkpoint's SK and QK with the block
solved) and ``stats.pt`` (the block's `Statistics`, with what they are statistics of), so a later run adds
samples, forgets some or merges with another run from the statistics alone, never reading the other samples.
Under torchrun each rank sums the statistics of its share of the samples and one all-reduce adds them up.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from skqk.analytic.blocks import Block, find_block, fixed_qk_fingerprint
from skqk.analytic.solve import (
    MAX_NEWTON_PARAMETERS,
    CrossEntropyCurvature,
    CrossEntropySums,
    cross_entropy_curvature,
    cross_entropy_sums,
    input_basis,
    newton,
    solve_ridge,
)
from skqk.analytic.stats import Source, Statistics, StatisticsError, difference, overlap, ranges_of, ranges_text
from skqk.atomic import atomic_write_text
from skqk.data import Dataset, subset_fingerprint, subset_indices
from skqk.decoupled import DecoupledModel
from skqk.estimator import Estimator
from skqk.patterns import Pattern
from skqk.pipeline import distributed
from skqk.pipeline.checkpoint import (
    decoupled_entry,
    load_estimator,
    load_model_checkpoint,
    load_selector,
    model_kwargs,
    resolve_pooling,
    save_checkpoint,
)
from skqk.pipeline.loop import evaluate
from skqk.pipeline.provenance import code_version
from skqk.store import PatternStore

Loss = Literal["mse", "ce"]


@dataclass
class SolveConfig:
    """An analytic solve of one block of the QK (an extension; not in the paper)."""

    samples: int = 4096  # the samples at positions sample_start .. samples - 1 of the subset order
    sample_start: int = 0
    block: str = "head"  # "head", or layer names solved one after the other ("features.3,classifier.4")
    loss: Loss = "mse"  # "mse": ridge on one-hot targets (additive); "ce": Newton on cross-entropy from the ridge
    ridge: float | None = None  # λ; None: chosen by generalised cross-validation
    subset_seed: int = 0  # the subset order, as for record / retrain
    balanced: bool = False
    class_incremental: int = 0
    chunk_samples: int = 0
    batch_size: int = 1024  # samples per forward pass (memory only; the result does not depend on it)
    eval_samples: int = 0  # test samples the solved model is measured on (0: the whole test split)
    blocks_before: list[str] = field(default_factory=list)  # filled in: layers solved before the last block

    def __post_init__(self):
        if not 0 <= self.sample_start < self.samples:
            raise ValueError(f"the sample range {self.sample_start}:{self.samples} is empty or negative")
        if self.loss not in ("mse", "ce"):
            raise ValueError(f"loss must be 'mse' or 'ce', got {self.loss!r}")
        if self.ridge is not None and not 0 <= self.ridge < math.inf:
            raise ValueError(f"λ (--ridge) must be non-negative and finite, got {self.ridge}")
        if self.eval_samples < 0:
            raise ValueError(f"--eval-samples must be 0 (the whole test split) or positive, not {self.eval_samples}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")

    @property
    def class_chunks(self) -> tuple[int, int] | None:
        return (self.class_incremental, self.chunk_samples) if self.class_incremental else None

    @property
    def span(self) -> tuple[int, int]:
        return self.sample_start, self.samples

    @property
    def positions(self) -> torch.Tensor:
        return torch.arange(self.sample_start, self.samples)


@dataclass
class Problem:
    """What a solve reads: the decoupled checkpoint's pair, where its patterns come from, the data and its order."""

    ckpt: dict
    decoupled: DecoupledModel
    store: PatternStore | None  # None: the selector computes the patterns (a federated client keeps no store)
    dataset: Dataset
    order: torch.Tensor  # positions -> sample indices
    subset: str

    @property
    def estimator(self) -> Estimator:
        return self.decoupled.estimator

    def patterns(self, idx: torch.Tensor, x: torch.Tensor) -> Pattern:
        """The recorded patterns of samples `idx` (images `x`): read from the store, else the selector's."""
        return self.store.read(idx).to(x.device) if self.store is not None else self.decoupled.selector(x)

    def source(self, block: Block, loss: str) -> Source:
        return Source(
            self.decoupled.selector.fingerprint,
            block.name,
            loss,
            fixed_qk_fingerprint(self.estimator, block),
            self.dataset.fingerprint,
            self.subset,
        )


def open_problem(
    checkpoint: str | os.PathLike,
    dataset: Dataset,
    store: str | os.PathLike,
    cfg: SolveConfig,
    trust: Collection[str] = (),
) -> Problem:
    """Load and check everything a solve reads before anything is computed or written. A model the checkpoint
    names by import path is built only if `trust` names it (`skqk.models.resolve`); zoo models need nothing."""
    ckpt = load_model_checkpoint(checkpoint, fits=model_kwargs(dataset))
    pooling = resolve_pooling(ckpt, None, PatternStore.open(store, verify=False).pooling, str(checkpoint))
    selector = load_selector(ckpt, pooling, str(checkpoint), trust)
    estimator = load_estimator(ckpt, pooling, str(checkpoint), trust).eval()  # BatchNorm and dropout as deployed
    if estimator.live_pooling:
        raise ValueError(
            f"an analytic solve needs frozen max pooling (live pooling is not linear): record the store with "
            f"`skqk record --pooling frozen` from the checkpoint {checkpoint}"
        )
    if cfg.loss == "ce" and dataset.task == "regression":
        raise ValueError("the cross-entropy solve is for classes; regression targets are fitted by ridge (--loss mse)")
    ordered = dataset.train.ordered  # a time-ordered table: positions are the time order
    subset = subset_fingerprint(dataset.train.labels, cfg.subset_seed, cfg.balanced, cfg.class_chunks, ordered)
    opened = PatternStore.open(store, selector, data=dataset.fingerprint, subset=subset)
    total = len(dataset.train.labels)
    if cfg.samples > total:
        raise ValueError(f"sample range {cfg.sample_start}:{cfg.samples} exceeds the {total} training samples")
    order = subset_indices(dataset.train.labels, total, cfg.subset_seed, cfg.balanced, cfg.class_chunks, ordered)
    return Problem(ckpt, DecoupledModel(selector, estimator), opened, dataset, order, subset)


def check_held(problem: Problem, positions: torch.Tensor) -> None:
    if problem.store is None:
        return
    missing = (~torch.isin(problem.order[positions], problem.store.indices)).sum().item()
    if missing:
        where = ranges_text(ranges_of(positions))
        raise ValueError(
            f"pattern store {problem.store.path} lacks {missing} of the samples at positions {where}: run "
            f"`skqk record` with the same checkpoint and --samples {int(positions.max()) + 1} first"
        )


def block_batches(problem: Problem, block: Block, positions: torch.Tensor, batch_size: int, progress: bool):
    """(design, out, sample indices, positions) of every batch of this rank's share of `positions`."""
    ctx = distributed.current()
    device = ctx.device
    problem.estimator.to(device)
    problem.decoupled.selector.to(device)
    parts = ctx.share(positions).split(batch_size)
    for part in tqdm(parts, desc=f"statistics of {block.name}", disable=not progress or not ctx.is_main):
        idx = problem.order[part]
        x = problem.dataset.inputs(problem.dataset.train, idx).to(device, block.module.weight.dtype)
        design, out = block.design(problem.estimator, x, problem.patterns(idx, x))
        yield design, out, idx, part


def fitted_targets(dataset: Dataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the ridge fits for samples `idx`: one-hot classes, or the standardised regression target as one column
    (the loss training minimises); and each sample's class for the counts (class 0 for regression)."""
    if dataset.task == "regression":
        return dataset.targets(dataset.train, idx).double()[:, None], torch.zeros(len(idx), dtype=torch.int64)
    labels = dataset.train.labels[idx]
    return F.one_hot(labels, dataset.num_classes).double(), labels


def statistics(
    problem: Problem, block: Block, positions: torch.Tensor, batch_size: int = 1024, progress: bool = False
) -> Statistics:
    """The ridge statistics of `block` over the samples at `positions` of the order (an int64 tensor, e.g.
    ``torch.arange(a, b)``), summed over torchrun's ranks."""
    positions = torch.as_tensor(positions, dtype=torch.int64)
    check_held(problem, positions)
    classes = problem.dataset.num_classes
    stats = Statistics.empty(
        problem.source(block, "mse"),
        block.penalised,
        classes if block.head else 1,
        classes,
        1 if block.head else classes,
        distributed.current().device,
    )
    theta = block.theta().to(stats.gram.device)
    for design, out, idx, part in block_batches(problem, block, positions, batch_size, progress):
        target, labels = fitted_targets(problem.dataset, idx)
        target = target.to(design.device)
        if block.head:
            residual = target
        else:  # y − r, with r = out − J θ the output's part that does not move with θ
            residual = target - out.double() + (design.double() @ theta)[..., 0]
        stats = stats.update(design, residual, labels, part)
    return sum_over_ranks(stats.to("cpu"), positions)


def sum_over_ranks(stats: Statistics, positions: torch.Tensor) -> Statistics:
    """One all-reduce: every rank then holds the statistics of all `positions`."""
    ctx = distributed.current()
    if not ctx.is_distributed:
        return stats
    flat = torch.cat([stats.gram.reshape(-1), stats.moment.reshape(-1), stats.target_sq])
    total = ctx.sum_over_ranks(flat).cpu()
    counts = ctx.sum_over_ranks(torch.cat([stats.class_counts, torch.tensor([stats.samples])])).cpu()
    g, m = stats.gram.numel(), stats.moment.numel()
    return replace(
        stats,
        gram=total[:g].reshape(stats.gram.shape),
        moment=total[g : g + m].reshape(stats.moment.shape),
        target_sq=total[g + m :],
        class_counts=counts[:-1],
        samples=int(counts[-1]),
        ranges=ranges_of(positions),
    )


# -- cross-entropy ---------------------------------------------------------------------------------------------
def cross_entropy_solve(
    problem: Problem, block: Block, positions: torch.Tensor, start: torch.Tensor, lam: float, batch_size: int
):
    """Newton from the ridge solution on the head's inputs, held in memory for the iterations (this rank's
    share); each iteration's sums are exact over the samples at `positions`, summed over torchrun's ranks. A
    head above `MAX_NEWTON_PARAMETERS` keeps its Hessian as products (conjugate-gradient Newton steps)."""
    if not block.head:
        raise ValueError("the cross-entropy solve is for the head block; use --loss mse for other blocks")
    labels = problem.dataset.train.labels
    cached = [(d, labels[idx]) for d, _, idx, _ in block_batches(problem, block, positions, batch_size, False)]

    def sums(theta: torch.Tensor) -> CrossEntropySums:
        total = None
        for design, labels in cached:
            s = cross_entropy_sums(design, labels, theta)
            total = s if total is None else total + s
        return all_reduce_sums(total, theta)

    if start.numel() <= MAX_NEWTON_PARAMETERS:
        return newton(sums, start, block.penalised, lam)
    basis = input_basis(cached, add_over_ranks)

    def curvature(theta: torch.Tensor) -> CrossEntropyCurvature:
        return cross_entropy_curvature(cached, theta, add_over_ranks, basis)

    return newton(curvature, start, block.penalised, lam)


def add_over_ranks(flat: torch.Tensor) -> torch.Tensor:
    """`flat` summed over torchrun's ranks (itself when not distributed)."""
    ctx = distributed.current()
    return ctx.sum_over_ranks(flat).cpu() if ctx.is_distributed else flat


def all_reduce_sums(sums: CrossEntropySums | None, theta: torch.Tensor) -> CrossEntropySums:
    """A rank's sums (None: it had no samples) added over all ranks."""
    size = theta.numel()
    ctx = distributed.current()
    if sums is None:
        zero = torch.zeros((), dtype=torch.float64)
        sums = CrossEntropySums(zero, torch.zeros(size).double(), torch.zeros(size, size).double(), 0)
    if not ctx.is_distributed:
        return sums
    flat = torch.cat([sums.loss.reshape(1).cpu(), sums.gradient.cpu(), sums.hessian.reshape(-1).cpu()])
    total = ctx.sum_over_ranks(flat).cpu()
    return CrossEntropySums(total[0], total[1 : size + 1], total[size + 1 :].reshape(size, size), sums.samples)


# -- runs ------------------------------------------------------------------------------------------------------
@dataclass
class SolveResult:
    decoupled: DecoupledModel
    stats: Statistics
    solution: dict  # what model.pt and stats.pt record about the solve (λ and how it was chosen)
    run_dir: Path
    metrics: dict = field(default_factory=dict)  # the solved model on its test split (`SolveConfig.eval_samples`)
    evaluation_seconds: float = 0.0  # of measuring `metrics` (not saved: the run folder holds no timings)


def solve_blocks(problem: Problem, cfg: SolveConfig, progress: bool) -> tuple[Block, Statistics, dict]:
    """Solve the configured blocks one after the other on the samples of `cfg.span`; the last one's statistics."""
    names = [n.strip() for n in cfg.block.split(",")]
    blocks = [find_block(problem.estimator, n) for n in names]  # all refused before any is solved
    if cfg.loss == "ce" and len(blocks) > 1:
        raise ValueError("the cross-entropy solve takes one block (the head)")
    for block in blocks:
        stats = statistics(problem, block, cfg.positions, cfg.batch_size, progress)
        solution = solve_statistics(problem, block, stats, cfg)
    cfg.blocks_before = [b.name for b in blocks[:-1]]
    return block, stats, solution


def solve_statistics(problem: Problem, block: Block, stats: Statistics, cfg: SolveConfig) -> dict:
    """Ridge (and, for ``loss="ce"``, Newton from it) on `stats`, written into the block; what was chosen."""
    ridge = solve_ridge(stats, cfg.ridge)
    block.assign(ridge.theta)
    record = {"ridge": ridge.record()}
    if cfg.loss == "ce":
        result = cross_entropy_solve(problem, block, cfg.positions, ridge.theta, ridge.lam, cfg.batch_size)
        block.assign(result.theta)
        record["cross_entropy"] = result.record()
    return record


def solve(
    cfg: SolveConfig,
    checkpoint: str | os.PathLike,
    dataset: Dataset,
    store: str | os.PathLike,
    out: str | os.PathLike,
    progress: bool = True,
    trust: Collection[str] = (),
) -> SolveResult:
    """Solve `cfg.block` of the checkpoint's QK on the samples of `cfg.span` and write the run folder `out`.

    Example:
        >>> solve(SolveConfig(samples=4096), "runs/pre/model.pt", dataset, "runs/patterns", "runs/solve")
    """
    run_dir = check_out(out)
    problem = open_problem(checkpoint, dataset, store, cfg, trust)
    block, stats, solution = solve_blocks(problem, cfg, progress)
    stats = replace(stats, source=replace(stats.source, loss=cfg.loss))
    return write_run(
        run_dir, problem.ckpt, problem.decoupled, cfg, stats, solution, {"checkpoint": str(checkpoint)}, dataset
    )


def update(
    from_run: str | os.PathLike,
    dataset: Dataset,
    store: str | os.PathLike,
    out: str | os.PathLike,
    add: tuple[int, int] | None = None,
    forget: tuple[int, int] | None = None,
    progress: bool = True,
    trust: Collection[str] = (),
) -> SolveResult:
    """A solve run's statistics plus the samples at positions `add`, or minus those at `forget` (an exact
    downdate), solved again: reads only those samples (and the run's own files)."""
    if (add is None) == (forget is None):
        raise ValueError("give the samples to add (--sample-range A:B) or to forget (--forget A:B), one of them")
    run_dir = check_out(out)
    held, extra = Statistics.load(Path(from_run) / "stats.pt")
    cfg = SolveConfig(**{**extra.get("config", {}), "sample_start": (add or forget)[0], "samples": (add or forget)[1]})
    if held.source.loss != "mse":
        raise StatisticsError(
            f"{from_run} is a cross-entropy solve: its Newton iterations need every sample again, so it cannot be "
            "updated from statistics; solve with --loss mse"
        )
    clash = overlap(held.ranges, (cfg.span,)) if add else (difference((cfg.span,), held.ranges) or [None])[0]
    if clash:  # refused before a feature pass
        what = "already holds" if add else "does not hold"
        raise StatisticsError(f"{from_run} {what} samples {clash[0]}:{clash[1]}; a sample is counted once")
    problem = open_problem(Path(from_run) / "model.pt", dataset, store, cfg, trust)
    block = find_block(problem.estimator, held.source.block)
    part = statistics(problem, block, cfg.positions, cfg.batch_size, progress)
    total = held + part if add is not None else held - part
    solution = solve_statistics(problem, block, total, cfg)
    origin = {"from": str(from_run), "add" if add else "forget": list(cfg.span)}
    return write_run(run_dir, problem.ckpt, problem.decoupled, cfg, total, solution, origin, dataset)


def merge_runs(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    dataset: Dataset | None = None,
    trust: Collection[str] = (),
) -> SolveResult:
    """The solve runs' statistics summed (exact) and solved again; refused, writing nothing, when they hold
    overlapping samples or are statistics of another SK, block, loss, fixed QK, dataset or subset order. With
    `dataset` (the one the statistics are of), the merged model is evaluated on its test split."""
    if len(runs) < 2:
        raise ValueError(f"merging needs at least two solve runs, got {len(runs)}")
    run_dir = check_out(out)
    loaded = [Statistics.load(Path(r) / "stats.pt") for r in runs]
    if dataset is not None and loaded[0][0].source.data != dataset.fingerprint:
        raise StatisticsError(f"{runs[0]} holds statistics of another dataset than the one given")
    total = loaded[0][0]
    for path, (stats, _) in zip(runs[1:], loaded[1:]):
        try:
            total = total + stats
        except StatisticsError as e:
            raise StatisticsError(
                f"{path} cannot be merged with {', '.join(map(str, runs[: runs.index(path)]))}: {e}"
            ) from None
    if total.source.loss != "mse":
        raise StatisticsError("cross-entropy solves do not add up; merge ridge (--loss mse) solve runs")
    ckpt = load_model_checkpoint(Path(runs[0]) / "model.pt")
    pooling = resolve_pooling(ckpt, path=str(runs[0]))
    path = str(runs[0])
    decoupled = DecoupledModel(load_selector(ckpt, pooling, path, trust), load_estimator(ckpt, pooling, path, trust))
    decoupled.estimator.eval()
    block = find_block(decoupled.estimator, total.source.block)
    cfg = SolveConfig(**loaded[0][1].get("config", {}))
    ridge = solve_ridge(total, cfg.ridge)
    block.assign(ridge.theta)
    return write_run(
        run_dir, ckpt, decoupled, cfg, total, {"ridge": ridge.record()}, {"merged": [str(r) for r in runs]}, dataset
    )


def check_out(out: str | os.PathLike) -> Path:
    run_dir = Path(out)
    if (run_dir / "model.pt").exists():
        raise ValueError(f"{run_dir} already holds a solve run; choose another --out")
    return run_dir


def write_run(
    run_dir: Path,
    ckpt: dict,
    decoupled: DecoupledModel,
    cfg: SolveConfig,
    stats: Statistics,
    solution: dict,
    origin: dict,
    dataset: Dataset | None,
) -> SolveResult:
    """stats.pt, config.json, then model.pt (last: a folder with model.pt is complete), all atomic, rank 0 only;
    with `dataset`, the solved model's accuracy and loss on its test split (`cfg.eval_samples` of it) are measured
    and recorded with them."""
    metrics, started = {}, time.perf_counter()
    if dataset is not None:
        decoupled.to(distributed.current().device)
        metrics = evaluate(decoupled, dataset, cfg.eval_samples, sharded=True)
    evaluation_seconds = time.perf_counter() - started
    analytic = {
        "block": stats.source.block,
        "blocks_before": cfg.blocks_before,
        "loss": stats.source.loss,
        "samples": stats.samples,
        "ranges": [list(r) for r in stats.ranges],
        **solution,
        **metrics,
    }

    def write() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        stats.save(run_dir / "stats.pt", {"config": asdict(cfg), "analytic": analytic})
        record = {
            "kind": "SolveConfig",
            "config": asdict(cfg),
            "source": origin,
            "analytic": analytic,
            "code_version": code_version(),
        }
        atomic_write_text(run_dir / "config.json", json.dumps(record, indent=2))
        sk = ckpt["selector_state"] if ckpt["kind"] == "decoupled" else ckpt["state_dict"]
        entry = decoupled_entry(ckpt["model"], ckpt["model_kwargs"], sk, decoupled)
        save_checkpoint(run_dir / "model.pt", {**entry, "samples": stats.samples, "analytic": analytic})

    distributed.current().on_main(write)
    return SolveResult(decoupled, stats, analytic, run_dir, metrics, evaluation_seconds)


def held_text(stats: Statistics) -> str:
    return f"{stats.samples} samples ({ranges_text(stats.ranges)})"
