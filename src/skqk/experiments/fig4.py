"""Fig. 4: SK stabilisation — how many gate states flip while the losses still move, and when they settle.

After every epoch (and, with ``every_steps``, every that many SGD steps: the paper's "every k steps") a path
selector is built from the current weights and its pattern of fixed validation samples is compared with the
previous one's (the first comparison is with the initial weights).

The paper's claim, that "the activation pattern stabilizes much earlier than the validation loss", is measured
with one stated criterion: the patterns have *settled* at the first measurement from which every later
comparison flips fewer than `threshold` of the gate states, and the validation loss has *stabilised* at the
epoch of its minimum. Their ratio (val-loss epoch / settle epoch) is reported per model and seed.

Beside it, the authors' follow-up yardstick (the Regime Change Hypothesis): at the same measurements the relative
size of the weight update since the previous one, ‖Δθ‖/‖θ‖ (overall and per layer), and for both series the epoch
from which they stay below a fraction of their first-epoch mean (`DECAY_FRACTIONS`) and an exponential decay rate
fitted to them; the ratio weight epoch / pattern epoch is > 1 when the patterns stop changing first.
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
DECAY_FRACTIONS = (0.1, 0.01)  # the follow-up yardstick: a series has decayed below this fraction of its first epoch


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
    if dataset.task == "regression":
        raise ValueError(
            "Fig. 4 (pattern flips against the validation accuracy) needs classes; regression data has none"
        )
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
        write_csv(out / f"fig4_{name}.csv", [scalars(e, r["seed"]) for r in mine for e in r["epochs"]])
        write_csv(
            out / f"fig4_{name}_per_site.csv",
            [
                {"seed": r["seed"], "epoch": e["epoch"], **(e["flips_per_site"] or {})}
                for r in mine
                for e in r["epochs"]
            ],
        )
        if any(r["steps"] for r in mine):
            write_csv(out / f"fig4_{name}_steps.csv", [scalars(m, r["seed"]) for r in mine for m in r["steps"]])
            write_csv(
                out / f"fig4_{name}_steps_update_per_layer.csv",
                [
                    {"seed": r["seed"], "step": m["step"], "epoch": m["epoch"], **(m.get("update_per_layer") or {})}
                    for r in mine
                    for m in r["steps"]
                ],
            )
        plot_fig4(mine, name, out / f"fig4_{name}.png", preset.name, dataset.source)
    return results


def scalars(row: dict, seed: int) -> dict:
    """A measurement as a CSV row: its scalar columns (per-site flips and per-layer updates have CSVs of their own)."""
    return {"seed": seed, **{k: v for k, v in row.items() if not isinstance(v, dict)}}


def stabilisation_run(
    preset: Preset, name: str, seed: int, dataset: Dataset, out: Path, progress: bool
) -> tuple[list[dict], list[dict], int]:
    """Per-epoch rows, per-k-steps rows and the steps per epoch of one training run (resumable)."""
    cfg = TrainConfig(
        model=name,
        samples=preset.fig4_samples_for(name),
        epochs=preset.fig4_epochs,
        eval_samples=preset.fig4_eval_samples,
        seed=seed,
        subset_seed=seed,
    )
    run_dir = out / name / f"seed{seed}" / "fig4"
    val_x = dataset.inputs(dataset.test, validation_indices(dataset, preset.fig4_val_samples))
    fresh = not (run_dir / "resume.pt").exists()  # a fresh run compares its first patterns with the initial weights
    first = pattern_of(initial_network(cfg, dataset), val_x) if fresh else None
    first_weights = UpdateTracker.snapshot(initial_network(cfg, dataset)) if fresh else None
    per_epoch, per_steps = FlipTracker(val_x, first), FlipTracker(val_x, first)
    epoch_updates, step_updates = UpdateTracker(first_weights), UpdateTracker(first_weights)
    every = preset.fig4_every_steps

    def on_epoch(epoch: int, network: nn.Module) -> dict:
        flips, update = per_epoch(network), epoch_updates(network)
        return {
            "flips": flips.overall if flips else None,
            "flips_per_site": flips.per_site if flips else None,
            "update": update["overall"] if update else None,
            "update_per_layer": update["per_layer"] if update else None,
        }

    def on_step(step: int, network: nn.Module) -> dict | None:
        if step % every:
            return None
        flips, update = per_steps(network), step_updates(network)
        return {
            "flips": flips.overall if flips else None,
            "update": update["overall"] if update else None,
            "update_per_layer": update["per_layer"] if update else None,
        }

    result = train(
        cfg, dataset, run_dir, resume=True, progress=progress, on_epoch=on_epoch, on_step=on_step if every else None
    )
    steps_per_epoch = math.ceil(cfg.samples / cfg.batch_size)
    keys = ("epoch", "flips", "update", "train_loss", "val_loss", "val_accuracy", "flips_per_site", "update_per_layer")
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


class UpdateTracker:
    """The relative size of the weight update between the network it is called with and its previous call,
    ‖θ − θ_prev‖ / ‖θ_prev‖ over all parameters and per layer (float64): the follow-up's weight-update magnitude."""

    def __init__(self, first: dict[str, torch.Tensor] | None):
        self.previous = first

    @staticmethod
    def snapshot(network: nn.Module) -> dict[str, torch.Tensor]:
        return {name: p.detach().to(torch.float64, copy=True) for name, p in network.named_parameters()}

    def __call__(self, network: nn.Module) -> dict | None:
        current = self.snapshot(network)
        previous, self.previous = self.previous, current
        if previous is None:
            return None
        layers: dict[str, list[float]] = {}
        for name, value in current.items():
            layer = layers.setdefault(name.rpartition(".")[0] or name, [0.0, 0.0])
            layer[0] += float((value - previous[name]).square().sum())
            layer[1] += float(previous[name].square().sum())
        change, size = sum(c for c, _ in layers.values()), sum(s for _, s in layers.values())
        return {
            "overall": math.sqrt(change / size) if size else None,
            "per_layer": {layer: math.sqrt(c / s) if s else None for layer, (c, s) in layers.items()},
        }


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
        "decay": decay_yardstick(steps or epochs),
    }


def decay_yardstick(points: list[dict]) -> dict:
    """The follow-up's quantity on one time axis: for the pattern flips and the relative weight updates, the epoch
    from which each stays below each of `DECAY_FRACTIONS` of its first-epoch mean and a fitted exponential decay
    rate (per epoch), and the ratios weights / patterns (> 1: the patterns stop changing first)."""
    series = {
        kind: [(p["epoch"], p[key]) for p in points if p.get(key) is not None]
        for kind, key in (("patterns", "flips"), ("weights", "update"))
    }
    out: dict = {}
    for kind, values in series.items():
        early = [v for x, v in values if x <= 1] or [v for _, v in values[:1]]
        reference = sum(early) / len(early) if early else None
        out[kind] = {
            "first_epoch_mean": reference,
            "decay_epoch": {
                str(f): settle_epoch(values, f * reference) if reference else None for f in DECAY_FRACTIONS
            },
            "decay_rate_per_epoch": decay_rate(values),
        }
    out["ratio"] = {
        str(f): ratio(out["weights"]["decay_epoch"][str(f)], out["patterns"]["decay_epoch"][str(f)])
        for f in DECAY_FRACTIONS
    }
    rates = out["patterns"]["decay_rate_per_epoch"], out["weights"]["decay_rate_per_epoch"]
    out["rate_ratio"] = ratio(*rates) if all(r is not None and r > 0 for r in rates) else None  # both must decay
    return out


def decay_rate(values: list[tuple[float, float]]) -> float | None:
    """The least-squares slope of −log(value) against epoch (points with value > 0): an exponential decay
    e^(−rate·epoch) has this rate; None with fewer than two such points."""
    points = [(x, math.log(v)) for x, v in values if v > 0]
    if len(points) < 2:
        return None
    mx, my = sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return -sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


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
