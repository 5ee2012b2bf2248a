"""Phase 1: initial training of a zoo network from scratch on the first n samples (the SGD loop of `loop`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from skqk import models
from skqk.data import Dataset, subset_indices
from skqk.pipeline import distributed
from skqk.pipeline.checkpoint import model_kwargs, network_entry
from skqk.pipeline.config import SGDConfig, TrainConfig
from skqk.pipeline.loop import EpochHook, RunResult, StepHook, fit, memory_format
from skqk.pipeline.rundir import prepare_run_dir


def train(
    cfg: TrainConfig,
    dataset: Dataset,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    on_epoch: EpochHook | None = None,
    on_step: StepHook | None = None,
) -> RunResult:
    """Phase 1: train zoo network `cfg.model` from scratch on the first `cfg.samples` samples.

    `on_epoch` and `on_step` (after every SGD step) add metrics to the history, as Fig. 4 does with pattern flips.

    Example:
        >>> from skqk.pipeline.train import train
        >>> result = train(TrainConfig(model="lenet5", samples=1024, epochs=200), dataset, "runs/a")
        >>> result.history[-1]["val_accuracy"]
    """
    order = (cfg.subset_seed, cfg.balanced, cfg.class_chunks, dataset.train.ordered)
    indices = subset_indices(dataset.train.labels, cfg.samples, *order)
    kwargs = model_kwargs(dataset) | cfg.model_kwargs  # the checkpoint records both: it rebuilds without flags
    torch.manual_seed(cfg.seed)
    trust = (cfg.model,)  # the model the caller chose to train (configs are never read back from files)
    network = models.build(cfg.model, trust=trust, **kwargs).to(memory_format=memory_format(cfg.layout, cfg.model))
    warn_if_not_decouplable(network, cfg.model)
    run_dir = distributed.current().on_main(prepare_run_dir, out, resume, cfg, {"data": dataset.fingerprint})
    return fit_network(run_dir, network, cfg.model, kwargs, dataset, indices, cfg, resume, progress, on_epoch, on_step)


def warn_if_not_decouplable(network: nn.Module, name: str) -> None:
    """Say before Phase 1, not after it, that Phase 2 will refuse this network (a GELU, a LayerNorm...):
    `skqk record` and `retrain --method qk` refuse it, only traditional re-training works."""
    from skqk.sites import DecouplingError, list_sites

    was_training = network.training
    try:
        list_sites(network.eval())  # the analysis `decouple` runs, without building the pair
    except DecouplingError as e:
        warnings.warn(
            f"{name} cannot be decoupled, so `skqk record` and `skqk retrain --method qk` will refuse it (traditional "
            f"re-training works): {e}",
            stacklevel=3,
        )
    finally:
        network.train(was_training)


def fit_network(
    run_dir: Path,
    network: nn.Module,
    name: str,
    kwargs: dict,
    dataset: Dataset,
    indices: Tensor,
    cfg: SGDConfig,
    resume: bool,
    progress: bool,
    on_epoch: EpochHook | None = None,
    on_step: StepHook | None = None,
) -> RunResult:
    """Traditional training of the whole network, ReLUs live (Phase 1, and the re-training baseline)."""
    model = distributed.wrap(network)  # itself in one process; DDP under torchrun
    entry = lambda: network_entry(name, kwargs, network)  # noqa: E731
    forward = lambda x, idx: model(x)  # noqa: E731
    history = fit(run_dir, network, forward, network, dataset, indices, cfg, entry, resume, progress, on_epoch, on_step)
    return RunResult(network, history, run_dir, getattr(cfg, "patience", 0))
