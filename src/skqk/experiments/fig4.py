"""Fig. 4: SK stabilisation — how many gate states flip while the losses still move, and when they settle.

After every epoch (and, with ``every_steps``, every that many SGD steps: the paper's "every k steps") a path
selector is built from the current weights and its pattern of fixed validation samples is compared with the
previous one's (the first comparison is with the initial weights).

The paper's claim, that "the activation pattern stabilizes much earlier than the validation loss", is measured
with one stated criterion: the patterns have *settled* at the first measurement from which every later
comparison flips fewer than `threshold` of the gate states, and the validation loss has *stabilised* at the
epoch of its minimum. Their ratio (val-loss epoch / settle epoch) is reported per model and seed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn

from skqk import models
from skqk.data import Dataset
from skqk.experiments.common import claim_results_folder, write_csv, write_results
from skqk.experiments.plots import plot_fig4
from skqk.experiments.presets import Preset
from skqk.patterns import Pattern
from skqk.pipeline.checkpoint import model_kwargs
from skqk.pipeline.config import TrainConfig
from skqk.pipeline.loop import validation_indices
from skqk.pipeline.train import train
from skqk.selector import build_selector

SENSITIVITY = (0.005, 0.01, 0.02)  # thresholds the settle epoch is also reported at


def run_fig4(
    preset: Preset,
    model_names: list[str],
    dataset: Dataset,
    out: Path,
    progress: bool = True,
    seeds: tuple[int, ...] = (0,),
) -> dict:
    """Train each model from scratch once per seed, log pattern flips, losses and accuracy, apply the criterion."""
    out = Path(out)
    started = time.time()
    claim_results_folder(out, "fig4", dataset, preset)
    runs = []
    for name in model_names:
        for seed in seeds:
            epochs, steps, per_epoch = stabilisation_run(preset, name, seed, dataset, out, progress)
            criterion = stabilisation(epochs, steps, preset.fig4_flip_threshold, per_epoch)
            runs.append({"model": name, "seed": seed, "stabilisation": criterion, "epochs": epochs, "steps": steps})
    results = write_results(out, "fig4", preset, model_names, dataset, started, seeds=list(seeds), runs=runs)
    for name in model_names:
        mine = [r for r in runs if r["model"] == name]
        write_csv(
            out / f"fig4_{name}.csv",
            [
                {"seed": r["seed"], **{k: v for k, v in e.items() if k != "flips_per_site"}}
                for r in mine
                for e in r["epochs"]
            ],
        )
        write_csv(
            out / f"fig4_{name}_per_site.csv",
            [
                {"seed": r["seed"], "epoch": e["epoch"], **(e["flips_per_site"] or {})}
                for r in mine
                for e in r["epochs"]
            ],
        )
        if any(r["steps"] for r in mine):
            write_csv(out / f"fig4_{name}_steps.csv", [{"seed": r["seed"], **s} for r in mine for s in r["steps"]])
        plot_fig4(mine, name, out / f"fig4_{name}.png", preset.name)
    return results


def stabilisation_run(
    preset: Preset, name: str, seed: int, dataset: Dataset, out: Path, progress: bool
) -> tuple[list[dict], list[dict], int]:
    """Per-epoch rows, per-k-steps rows and the steps per epoch of one training run (resumable)."""
    cfg = TrainConfig(
        model=name,
        samples=preset.fig4_samples,
        epochs=preset.fig4_epochs,
        eval_samples=preset.fig4_eval_samples,
        seed=seed,
        subset_seed=seed,
    )
    run_dir = out / name / f"seed{seed}" / "fig4"
    val_x = dataset.normalize(dataset.test.images[validation_indices(dataset, preset.fig4_val_samples)])
    fresh = not (run_dir / "resume.pt").exists()  # a fresh run compares its first patterns with the initial weights
    first = pattern_of(initial_network(cfg, dataset), val_x) if fresh else None
    per_epoch, per_steps = FlipTracker(val_x, first), FlipTracker(val_x, first)
    every = preset.fig4_every_steps

    def on_epoch(epoch: int, network: nn.Module) -> dict:
        flips = per_epoch(network)
        return {"flips": flips.overall if flips else None, "flips_per_site": flips.per_site if flips else None}

    def on_step(step: int, network: nn.Module) -> dict | None:
        if step % every:
            return None
        flips = per_steps(network)
        return {"flips": flips.overall if flips else None}

    result = train(
        cfg, dataset, run_dir, resume=True, progress=progress, on_epoch=on_epoch, on_step=on_step if every else None
    )
    steps_per_epoch = math.ceil(cfg.samples / cfg.batch_size)
    keys = ("epoch", "flips", "train_loss", "val_loss", "val_accuracy", "flips_per_site")
    epochs = [{k: h.get(k) for k in keys} for h in result.history]
    steps = [{**s, "epoch": s["step"] / steps_per_epoch} for h in result.history for s in h.get("steps", [])]
    return epochs, steps, steps_per_epoch


class FlipTracker:
    """The flips between the pattern of the network it is called with and the one of its previous call."""

    def __init__(self, x: torch.Tensor, first: Pattern | None):
        self.x, self.previous = x, first

    def __call__(self, network: nn.Module):
        pattern = pattern_of(network, self.x)
        flips = pattern.flips(self.previous) if self.previous is not None else None
        self.previous = pattern
        return flips


def stabilisation(epochs: list[dict], steps: list[dict], threshold: float, steps_per_epoch: int) -> dict:
    """The stated criterion: the epoch the patterns settle at (on the finest measurements available: every k
    steps if recorded, else every epoch), the epoch of the validation-loss minimum, and their ratio.

    A run whose flips never stay below `threshold` has ``settle_epoch`` None; one whose validation loss is
    lowest at its last epoch has not reached its plateau (``val_loss_still_falling``), so its ratio is a bound.
    """
    points = [(s["epoch"], s["flips"]) for s in steps] or [(e["epoch"], e["flips"]) for e in epochs]
    points = [(x, f) for x, f in points if f is not None]
    best = min(epochs, key=lambda e: e["val_loss"])
    settle = settle_epoch(points, threshold)
    return {
        "flip_threshold": threshold,
        "measured_every": f"{steps[1]['step'] - steps[0]['step']} steps" if len(steps) > 1 else "epoch",
        "steps_per_epoch": steps_per_epoch,
        "settle_epoch": settle,
        "settle_epoch_at": {str(t): settle_epoch(points, t) for t in SENSITIVITY},
        "val_loss_min_epoch": best["epoch"],
        "val_loss_min": best["val_loss"],
        "val_accuracy_at_min": best["val_accuracy"],
        "val_loss_still_falling": best["epoch"] == epochs[-1]["epoch"],
        "ratio": best["epoch"] / settle if settle else None,
    }


def settle_epoch(points: list[tuple[float, float]], threshold: float) -> float | None:
    """The first point from which every later flip fraction is below `threshold` (None if the last is not)."""
    settle = None
    for x, flips in reversed(points):
        if flips >= threshold:
            break
        settle = x
    return settle


def initial_network(cfg: TrainConfig, dataset: Dataset) -> nn.Module:
    """The very weights `train` starts from (same seed, same builder), without touching the caller's RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return models.build(cfg.model, **model_kwargs(dataset))


def pattern_of(network: nn.Module, x: torch.Tensor, batch_size: int = 500) -> Pattern:
    selector = build_selector(network)
    return Pattern.cat([selector(chunk) for chunk in x.split(batch_size)])
