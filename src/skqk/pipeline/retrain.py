"""Phase 4 (QK-only re-training) and the traditional re-training baseline, from a pre-trained checkpoint.

A QK run keeps the SK of the checkpoint's network in a frozen selector and trains only the estimator; its
batches' patterns come from the Phase 3 store or are computed on the fly.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from skqk.data import Dataset, subset_fingerprint, subset_indices
from skqk.data.sampling import replay_indices
from skqk.decoupled import DecoupledModel
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
from skqk.pipeline.loop import RunResult, StepForward, fit
from skqk.pipeline.refresh import SKMonitor
from skqk.pipeline.rundir import file_sha256, prepare_run_dir
from skqk.pipeline.train import fit_network
from skqk.store import PatternStore


def retrain(
    cfg: RetrainConfig,
    checkpoint: str | os.PathLike,
    dataset: Dataset,
    out: str | os.PathLike,
    store: str | os.PathLike | None = None,
    pooling: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> RunResult:
    """Phase 4 (``cfg.method == "qk"``) or traditional re-training from `checkpoint` on `cfg.samples` samples.

    A QK run keeps the SK of the checkpoint's network in a frozen selector and trains only the estimator,
    reading each batch's patterns from the pattern `store` (or computing them on the fly); its final
    checkpoint is a decoupled one. A checkpoint of an earlier QK run continues with the same SK. The max-pooling
    mode follows `resolve_pooling` (checkpoint, store and `pooling` must agree) and is recorded in the run
    folder's config.json, which `resume` checks.
    """
    # everything that can refuse the inputs runs before the run folder is created
    kwargs = model_kwargs(dataset)
    ckpt = load_model_checkpoint(checkpoint, fits=kwargs)
    indices = training_indices(dataset.train.labels, cfg)
    source = {"checkpoint_sha256": file_sha256(checkpoint), "store": None, "data": dataset.fingerprint}
    if cfg.method == "traditional":
        if ckpt["kind"] != "network":
            raise CheckpointError(
                f"{checkpoint} is a QK (decoupled) checkpoint; traditional re-training needs a network checkpoint"
            )
        network = build_network(ckpt, path=str(checkpoint))
        run_dir = distributed.current().on_main(prepare_run_dir, out, resume, cfg, source)
        torch.manual_seed(cfg.seed)
        built = ckpt["model_kwargs"]  # the data's sizes and an imported model's options
        return fit_network(run_dir, network, ckpt["model"], built, dataset, indices, cfg, resume, progress)

    sk_key = "selector_state" if ckpt["kind"] == "decoupled" else "state_dict"
    from_store = store is not None and cfg.patterns == "store"
    store_pooling = PatternStore.open(store, verify=False).pooling if from_store else None
    pooling = resolve_pooling(ckpt, pooling, store_pooling, str(checkpoint))
    selector = load_selector(ckpt, pooling, str(checkpoint))
    estimator = load_estimator(ckpt, pooling, str(checkpoint))
    decoupled = DecoupledModel(selector, estimator)
    model = distributed.wrap(estimator)
    selector.to(next(estimator.parameters()).device)

    def make_step(selector, store) -> StepForward:
        if cfg.patterns == "store":
            return patterns_from_store(model, selector, store, indices, dataset, cfg)
        return lambda x, idx: model(x, selector(x))

    make_step(selector, store)  # refuses a store that lacks samples before the run folder is created
    source["store"] = selector.fingerprint if cfg.patterns == "store" else None
    run_dir = distributed.current().on_main(prepare_run_dir, out, resume, cfg, source, pooling)
    torch.manual_seed(cfg.seed)
    network = build_network(ckpt, path=str(checkpoint)).to(next(estimator.parameters()).device)
    monitor = SKMonitor(cfg, decoupled, network, ckpt[sk_key], dataset, indices, run_dir, make_step, store)
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
        on_epoch=monitor,
    )
    return RunResult(decoupled, history, run_dir)


def training_indices(labels: Tensor, cfg: RetrainConfig) -> Tensor:
    """The samples a re-training visits: the range ``cfg.sample_start`` .. ``cfg.samples - 1`` of the run's
    permutation (all n + m samples by default, only the new ones for data arriving in chunks), then the
    class-balanced replay buffer of ``cfg.replay`` samples from before the range."""
    order = subset_indices(labels, cfg.samples, cfg.subset_seed, cfg.balanced, cfg.class_chunks)
    new = order[cfg.sample_start :]
    if not cfg.replay:
        return new
    return torch.cat([new, replay_indices(labels, order[: cfg.sample_start], cfg.replay, cfg.subset_seed)])


def patterns_from_store(
    estimator, selector, store, indices: Tensor, dataset: Dataset, cfg: RetrainConfig
) -> StepForward:
    """A QK step that reads each batch's patterns from the store recorded by this very selector (Phase 3) from
    this very data and subset order."""
    if store is None:
        raise ValueError("QK re-training from a pattern store needs --store (or use on-the-fly patterns)")
    subset = subset_fingerprint(dataset.train.labels, cfg.subset_seed, cfg.balanced, cfg.class_chunks)
    opened = PatternStore.open(store, selector, data=dataset.fingerprint, subset=subset)
    missing = (~torch.isin(indices, opened.indices)).sum().item()
    if missing:
        raise ValueError(
            f"pattern store {store} lacks {missing} of the {len(indices)} samples: run `skqk record` "
            f"with the same checkpoint and --samples {len(indices)} first"
        )
    device = next(estimator.parameters()).device
    if device.type != "cpu":
        return lambda x, idx: estimator(x, opened.read(idx).to(device))
    return lambda x, idx: estimator(x, opened.read(idx))
