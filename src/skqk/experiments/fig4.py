"""Fig. 4: SK stabilisation — how many gate states flip from epoch to epoch while the losses still move.

After every epoch a path selector is built from the current weights and its pattern of fixed validation samples
is compared with the previous epoch's (the first epoch is compared with the initial weights).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from skqk import models
from skqk.data import Dataset
from skqk.experiments.common import write_csv, write_results
from skqk.experiments.plots import plot_fig4
from skqk.experiments.presets import Preset
from skqk.patterns import Pattern
from skqk.pipeline.checkpoint import model_kwargs
from skqk.pipeline.config import TrainConfig
from skqk.pipeline.loop import validation_indices
from skqk.pipeline.train import train
from skqk.selector import build_selector


def run_fig4(preset: Preset, model_names: list[str], dataset: Dataset, out: Path, progress: bool = True) -> dict:
    """Train each model from scratch and log pattern flips, losses and accuracy per epoch."""
    out = Path(out)
    started = time.time()
    tables = {name: stabilisation_table(preset, name, dataset, out / name / "fig4", progress) for name in model_names}
    results = write_results(out, "fig4", preset, model_names, dataset, started, epochs=tables)
    for name, rows in tables.items():
        write_csv(out / f"fig4_{name}.csv", [{k: v for k, v in r.items() if k != "flips_per_site"} for r in rows])
        write_csv(
            out / f"fig4_{name}_per_site.csv", [{"epoch": r["epoch"], **(r["flips_per_site"] or {})} for r in rows]
        )
        plot_fig4(rows, name, out / f"fig4_{name}.png", preset.name)
    return results


def stabilisation_table(preset: Preset, name: str, dataset: Dataset, run_dir: Path, progress: bool) -> list[dict]:
    cfg = TrainConfig(
        model=name, samples=preset.fig4_samples, epochs=preset.fig4_epochs, eval_samples=preset.fig4_eval_samples
    )
    val_x = dataset.normalize(dataset.test.images[validation_indices(dataset, preset.fig4_val_samples)])
    previous: dict[str, Pattern | None] = {"pattern": None}
    if not (run_dir / "resume.pt").exists():  # a fresh run: the first epoch is compared with the initial weights
        previous["pattern"] = pattern_of(initial_network(cfg, dataset), val_x)

    def flips_since_last_epoch(epoch: int, network: nn.Module) -> dict:
        pattern = pattern_of(network, val_x)
        flips = pattern.flips(previous["pattern"]) if previous["pattern"] is not None else None
        previous["pattern"] = pattern
        return {"flips": flips.overall if flips else None, "flips_per_site": flips.per_site if flips else None}

    result = train(cfg, dataset, run_dir, resume=True, progress=progress, on_epoch=flips_since_last_epoch)
    return [
        {k: h.get(k) for k in ("epoch", "flips", "train_loss", "val_loss", "val_accuracy", "flips_per_site")}
        for h in result.history
    ]


def initial_network(cfg: TrainConfig, dataset: Dataset) -> nn.Module:
    """The very weights `train` starts from (same seed, same builder), without touching the caller's RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return models.build(cfg.model, **model_kwargs(dataset))


def pattern_of(network: nn.Module, x: torch.Tensor, batch_size: int = 500) -> Pattern:
    selector = build_selector(network)
    return Pattern.cat([selector(chunk) for chunk in x.split(batch_size)])
