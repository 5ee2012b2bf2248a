"""Phase 4 (QK-only re-training) and the traditional re-training baseline, from a pre-trained checkpoint.

A QK run keeps the SK of the checkpoint's network in a frozen selector and trains only the estimator; its
batches' patterns come from the Phase 3 store or are computed on the fly.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from skqk.analytic import find_block, solve_ridge, statistics
from skqk.analytic.run import Problem, cross_entropy_solve
from skqk.data import Dataset, batches, subset_fingerprint, subset_indices
from skqk.data.sampling import replay_indices
from skqk.decoupled import DecoupledModel
from skqk.estimator import mask_sites
from skqk.fuse import relu_gates_in_place
from skqk.patterns import Pattern
from skqk.pipeline import distributed
from skqk.pipeline.checkpoint import (
    CheckpointError,
    build_network,
    decoupled_entry,
    load_estimator,
    load_model_checkpoint,
    load_selector,
    model_kwargs,
    resolve_pooling,
)
from skqk.pipeline.config import RetrainConfig
from skqk.pipeline.loop import ReadAhead, RunResult, StepForward, fit, memory_format
from skqk.pipeline.prune import active_units, dead_units_removed, removal_report
from skqk.pipeline.refresh import SKMonitor
from skqk.pipeline.rundir import file_sha256, prepare_run_dir
from skqk.pipeline.train import fit_network
from skqk.pipeline.validation import RecordedValidation
from skqk.store import PatternStore
from skqk.store.sizing import bytes_per_sample, size_notice


def retrain(
    cfg: RetrainConfig,
    checkpoint: str | os.PathLike,
    dataset: Dataset,
    out: str | os.PathLike,
    store: str | os.PathLike | None = None,
    pooling: str | None = None,
    resume: bool = False,
    progress: bool = True,
    trust: Collection[str] = (),
) -> RunResult:
    """Phase 4 (``cfg.method == "qk"``) or traditional re-training from `checkpoint` on `cfg.samples` samples.

    A QK run keeps the SK of the checkpoint's network in a frozen selector and trains only the estimator,
    reading each batch's patterns from the pattern `store` (or computing them on the fly); its final
    checkpoint is a decoupled one. A checkpoint of an earlier QK run continues with the same SK. The max-pooling
    mode follows `resolve_pooling` (checkpoint, store and `pooling` must agree) and is recorded in the run
    folder's config.json, which `resume` checks. A model named by import path is built only if `trust` names it
    (`skqk.models.resolve`).
    """
    # everything that can refuse the inputs runs before the run folder is created
    kwargs = model_kwargs(dataset)
    ckpt = load_model_checkpoint(checkpoint, fits=kwargs)
    indices = training_indices(dataset.train.labels, cfg, dataset.train.ordered)
    source = {"checkpoint_sha256": file_sha256(checkpoint), "store": None, "data": dataset.fingerprint}
    if cfg.method == "traditional":
        if ckpt["kind"] != "network":
            raise CheckpointError(
                f"{checkpoint} is a QK (decoupled) checkpoint; traditional re-training needs a network checkpoint"
            )
        network = build_network(ckpt, path=str(checkpoint), trust=trust).to(
            memory_format=memory_format(cfg.layout, ckpt["model"])
        )
        run_dir = distributed.current().on_main(prepare_run_dir, out, resume, cfg, source)
        torch.manual_seed(cfg.seed)
        built = ckpt["model_kwargs"]  # the data's sizes and an imported model's options
        return fit_network(run_dir, network, ckpt["model"], built, dataset, indices, cfg, resume, progress)

    sk_key = "selector_state" if ckpt["kind"] == "decoupled" else "state_dict"
    from_store = store is not None and cfg.patterns == "store"
    store_pooling = PatternStore.open(store, verify=False).pooling if from_store else None
    pooling = resolve_pooling(ckpt, pooling, store_pooling, str(checkpoint))
    selector = load_selector(ckpt, pooling, str(checkpoint), trust)
    layout = memory_format(cfg.layout, ckpt["model"])
    estimator = load_estimator(ckpt, pooling, str(checkpoint), trust).to(memory_format=layout)
    decoupled = DecoupledModel(selector, estimator)
    model = distributed.wrap(estimator)
    device = next(estimator.parameters()).device
    selector.to(device, memory_format=layout)

    masks = mask_sites(estimator)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32  # what a gate's input is in the step

    def prepare(pattern: Pattern) -> dict[str, Tensor]:
        return for_step(pattern, masks, dtype, layout)

    def make_step(selector, store) -> tuple[StepForward, ReadAhead | None]:
        if cfg.patterns == "store":
            read = patterns_from_store(selector, store, indices, dataset, cfg)
            return (lambda x, ready: model(x, ready)), (lambda idx: prepare(read(idx).to(device)))
        return (lambda x, idx: model(x, selector(x))), None

    make_step(selector, store)  # refuses a store that lacks samples before the run folder is created
    if progress and distributed.current().is_main:
        print(patterns_notice(selector, dataset, indices, store if cfg.patterns == "store" else None), file=sys.stderr)
    read = patterns_from_store(selector, store, indices, dataset, cfg) if cfg.patterns == "store" else None
    removal = dead_unit_removal(cfg, estimator, selector, read, dataset, indices)
    source["store"] = selector.fingerprint if cfg.patterns == "store" else None
    extra = {"dead_unit_removal": removal.summary()} if removal else {}
    if cfg.optimizer != "sgd":  # on resume too: resume.pt then replaces the weights, solved or trained
        opened = PatternStore.open(store, verify=False) if cfg.patterns == "store" else None
        subset = subset_fingerprint(
            dataset.train.labels, cfg.subset_seed, cfg.balanced, cfg.class_chunks, dataset.train.ordered
        )
        problem = Problem(ckpt, decoupled, opened, dataset, indices, subset)
        extra["head_solve"] = solve_head(problem, cross_entropy=cfg.optimizer == "ce-head")
    run_dir = distributed.current().on_main(prepare_run_dir, out, resume, cfg, source, pooling, extra or None)
    relu_gates_in_place(estimator.net)  # after the head's solve, which reads the layers' outputs
    torch.manual_seed(cfg.seed)
    network = build_network(ckpt, path=str(checkpoint), trust=trust).to(next(estimator.parameters()).device)
    validate = RecordedValidation(decoupled, dataset, cfg.eval_samples, prepare)
    monitor = SKMonitor(cfg, decoupled, network, ckpt[sk_key], dataset, indices, run_dir, make_step, store, validate)
    history = fit(
        run_dir,
        estimator,
        monitor.step,
        decoupled,
        dataset,
        indices,
        cfg,
        lambda: decoupled_entry(ckpt["model"], ckpt["model_kwargs"], monitor.selector_state, decoupled),
        resume,
        progress,
        on_epoch=monitor if removal is None else RemovalMetrics(monitor, removal),
        epoch_context=removal and removal.epoch,
        read_ahead=monitor.read if cfg.patterns == "store" else None,
        validate=validate,
    )
    return RunResult(decoupled, history, run_dir, cfg.patience)


def solve_head(problem: Problem, cross_entropy: bool = False, batch_size: int = 1024) -> dict:
    """``--optimizer ridge-head`` / ``ce-head``: the estimator's head set to its exact ridge solution on all of the
    problem's samples (one-hot targets, λ chosen by GCV; `skqk.analytic`) or, with `cross_entropy`, to the
    cross-entropy optimum with that λ (Newton from the ridge solution), its input computed in eval mode through
    the fixed SK. With the SK fixed the output is linear in the head's weights, so this is the optimum of that
    layer in one pass (ridge) or a few (Newton) over the data, where SGD takes epochs to approach it; the
    cross-entropy optimum also puts the logits on the scale SGD's loss works on, where one-hot targets give a
    nearly flat softmax. Returns what config.json records: the head, λ and how it was chosen (and the Newton
    iterations), and the seconds it took (a QK run's time to accuracy)."""
    if cross_entropy and problem.dataset.task == "regression":
        raise ValueError("--optimizer ce-head is for classes; a regression head is solved by --optimizer ridge-head")
    start = time.perf_counter()
    estimator = problem.estimator
    block = find_block(estimator)
    was_training = estimator.training
    estimator.eval()
    try:
        positions = torch.arange(len(problem.order))
        solution = solve_ridge(statistics(problem, block, positions, batch_size))
        block.assign(solution.theta)
        record = {"block": block.name, **solution.record()}
        if cross_entropy:
            newton = cross_entropy_solve(problem, block, positions, solution.theta, solution.lam, batch_size)
            block.assign(newton.theta)
            record["cross_entropy"] = newton.record()
    finally:
        estimator.train(was_training)
    return {**record, "seconds": time.perf_counter() - start}


def training_indices(labels: Tensor, cfg: RetrainConfig, ordered: bool = False) -> Tensor:
    """The samples a re-training visits: the range ``cfg.sample_start`` .. ``cfg.samples - 1`` of the run's
    permutation (of the time order when `ordered`; all n + m samples by default, only the new ones for data
    arriving in chunks), then the class-balanced replay buffer of ``cfg.replay`` samples from before the range."""
    order = subset_indices(labels, cfg.samples, cfg.subset_seed, cfg.balanced, cfg.class_chunks, ordered)
    new = order[cfg.sample_start :]
    if not cfg.replay:
        return new
    return torch.cat([new, replay_indices(labels, order[: cfg.sample_start], cfg.replay, cfg.subset_seed)])


PRUNE_MIN_SHARE = 0.1  # of the estimator's parameters; see DeadUnitRemoval.pays


@dataclass
class DeadUnitRemoval:
    """Phase 4 without the units the SK proves dead for every training sample (`skqk.pipeline.prune`), per epoch."""

    estimator: nn.Module
    active: dict[str, Tensor]
    report: dict[str, dict[str, int]]  # per site: units, dead, removed

    def epoch(self, optimizer: torch.optim.Optimizer) -> contextlib.AbstractContextManager:
        if not self.pays:
            return contextlib.nullcontext()
        return dead_units_removed(self.estimator, self.active, optimizer)

    @property
    def pays(self) -> bool:
        """Whether the removal leaves out at least `PRUNE_MIN_SHARE` of the estimator's parameters: below that,
        removing and restoring every epoch costs more than the smaller layers save (a trained LeNet-5 has 4 of
        its 204 classifier neurons dead: 2% of its weights; docs/benchmarks.md)."""
        total = sum(p.numel() for p in self.estimator.parameters())
        return sum(r["parameters"] for r in self.report.values()) >= PRUNE_MIN_SHARE * total

    def summary(self) -> dict:
        """What config.json records: whether the removal is applied, the share of parameters it leaves out of
        training, and per site units / dead / removed / parameters."""
        total = sum(p.numel() for p in self.estimator.parameters())
        share = sum(r["parameters"] for r in self.report.values()) / total
        return {"applied": self.pays, "parameter_share": share, "sites": self.report}

    def metrics(self) -> dict:
        removed = {site: r["removed"] for site, r in self.report.items() if r["removed"]} if self.pays else {}
        return {"removed_units": removed}


@dataclass
class RemovalMetrics:
    """The SK monitor's epoch hook (its state resumes with the run) plus the units removed in the epoch."""

    monitor: SKMonitor
    removal: DeadUnitRemoval

    def __call__(self, epoch: int, trained: nn.Module) -> dict:
        return {**self.monitor(epoch, trained), **self.removal.metrics()}

    def state_dict(self) -> dict:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.monitor.load_state_dict(state)


def dead_unit_removal(cfg, estimator, selector, read, dataset: Dataset, indices: Tensor) -> DeadUnitRemoval | None:
    """What `cfg.prune` removes: units inactive in the patterns of every sample of `indices` (from the store, or
    the selector's on the fly). Off under torch.distributed (DDP holds the full-size parameters) and with
    ``--sk-refresh auto`` (a refreshed SK has other dead units)."""
    if not cfg.prune or distributed.current().is_distributed or cfg.sk_refresh != "off":
        return None
    with torch.no_grad():
        if read is not None:
            patterns = (read(idx) for idx in indices.split(1024))
        else:
            device = next(estimator.parameters()).device
            patterns = (selector(x.to(device)) for x, _, _ in batches(dataset.train, dataset, indices, 1024))
        active = {site: a.cpu() for site, a in active_units(patterns).items()}
    return DeadUnitRemoval(estimator, active, removal_report(estimator, active))


def patterns_notice(selector, dataset: Dataset, indices: Tensor, store) -> str:
    """What a QK run says before it starts: the size of the store it reads (`store`), or of the one it could read
    instead of computing patterns on the fly (`store` None), and the measured trade-off."""
    if store is not None:
        per_sample = PatternStore.open(store, verify=False).bytes_per_sample
    else:
        device = next(selector.parameters(), torch.empty(0)).device
        example = selector(dataset.normalize(dataset.train.images[indices[:1]]).to(device))
        per_sample = bytes_per_sample(selector, example)
    return size_notice(per_sample, len(indices), store, reading=True)


def for_step(
    pattern: Pattern, masks: Collection[str], dtype: torch.dtype, layout: torch.memory_format
) -> dict[str, Tensor]:
    """`pattern` as the step reads it: the states of the `masks` sites (`skqk.estimator.mask_sites`) as 0/1 masks
    of the step's `dtype`, and every per-position state in the activations' `layout`, each in one copy (the cast
    and the layout change together) made where the patterns are read, in the prefetch thread, so the step itself
    converts nothing (`skqk.gates.as_mask` then passes the mask through). Exact: the gates multiply by the same
    0 and 1 and select with the same states."""
    ready = {}
    for site, t in pattern.items():
        fmt = layout if t.dim() == 4 else torch.contiguous_format
        if site in masks:
            t, target = t.view(torch.uint8), dtype  # uint8 -> float: the vectorised cast (`as_mask`)
        else:
            target = t.dtype
        same = t.dtype == target and t.is_contiguous(memory_format=fmt)
        ready[site] = t if same else torch.empty_like(t, dtype=target, memory_format=fmt).copy_(t)
    return ready


def patterns_from_store(
    selector, store, indices: Tensor, dataset: Dataset, cfg: RetrainConfig
) -> Callable[[Tensor], Pattern]:
    """The reader of each batch's patterns from the store recorded by this very selector (Phase 3) from this very
    data and subset order."""
    if store is None:
        raise ValueError("QK re-training from a pattern store needs --store (or use on-the-fly patterns)")
    subset = subset_fingerprint(
        dataset.train.labels, cfg.subset_seed, cfg.balanced, cfg.class_chunks, dataset.train.ordered
    )
    opened = PatternStore.open(store, selector, data=dataset.fingerprint, subset=subset)
    missing = (~torch.isin(indices, opened.indices)).sum().item()
    if missing:
        raise ValueError(
            f"pattern store {store} lacks {missing} of the {len(indices)} samples: run `skqk record` "
            f"with the same checkpoint and --samples {cfg.samples} first"  # a range A:B and its replay lie in 0:B
        )
    return opened.read
