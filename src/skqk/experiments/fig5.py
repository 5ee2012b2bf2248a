"""Fig. 5: QK-only vs traditional re-training as the number of samples N grows, for each model, SK size n and seed;
and the QK-gap study, which re-runs one Fig. 5 cell changing one factor at a time.

Every cell (model, seed, n, N, method, variant) is cached as ``cell.json`` in its own run folder, so an
interrupted reproduction picks up where it stopped (an interrupted cell resumes from its last epoch). The seed
changes the initialisation, which samples are drawn (the nested subsets) and the batch order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from skqk.data import Dataset, subset_fingerprint, subset_indices
from skqk.experiments.common import check_before_training, claim_results_folder, write_csv, write_json, write_results
from skqk.experiments.plots import plot_fig5, plot_qk_gap
from skqk.experiments.presets import BASE, Fig5Protocol, Preset, Variant
from skqk.pipeline.config import RetrainConfig, SGDConfig, TrainConfig
from skqk.pipeline.loop import progress_label
from skqk.pipeline.record import record, selector_from_checkpoint
from skqk.pipeline.retrain import retrain
from skqk.pipeline.train import train

METHODS = ("qk", "traditional")
CELL_METRICS = ("val_accuracy", "val_loss", "val_rmse", "val_mae", "val_r2")  # classification's, regression's


def run_fig5(
    preset: Preset,
    model_names: list[str],
    dataset: Dataset,
    out: Path,
    mode: Literal["independent", "successive"] = "independent",
    progress: bool = True,
    precision: Literal["fp32", "bf16"] = "fp32",
    seeds: tuple[int, ...] = (0,),
) -> dict:
    """Run (or pick up) every cell of Fig. 5 for every seed and write results.json, fig5.csv and one PNG per model.

    In "independent" mode each N re-trains from the pre-trained checkpoint (the paper); in "successive" mode
    each N starts from the previous N's result of the same method. `precision` applies to every training run.
    """
    out = Path(out)
    started = time.time()
    for name in model_names:
        p = preset.fig5[name]
        check_before_training(name, p.model_kwargs, dataset, [*p.sk_samples, *p.sample_counts(0)])
    claim_results_folder(out, "fig5", dataset, preset, mode=mode, precision=precision)
    cells = []
    for seed in seeds:
        for name in model_names:
            protocol = preset.fig5[name]
            for n in protocol.sk_samples:
                cells += SKRun(name, n, seed, protocol, dataset, out, progress, precision).fig5_cells(mode)
    results = write_results(
        out,
        "fig5",
        preset,
        model_names,
        dataset,
        started,
        mode=mode,
        precision=precision,
        seeds=list(seeds),
        cells=cells,
    )
    write_csv(out / "fig5.csv", [{k: v for k, v in c.items() if k != "config"} for c in cells])
    for name in model_names:
        mine = [c for c in cells if c["model"] == name]
        plot_fig5(mine, name, out / f"fig5_{name}.png", preset.name, dataset.source)
    return results


def run_qk_gap(
    preset: Preset,
    model_names: list[str],
    dataset: Dataset,
    out: Path,
    progress: bool = True,
    seeds: tuple[int, ...] = (0,),
) -> dict:
    """The Fig. 5 cells of the preset's QK-gap study of each model and, beside them, one cell per factor changed.

    The cells share their folders with `run_fig5`'s, so a Fig. 5 run in the same `out` provides the base cells.
    """
    studies = [g for g in preset.qk_gap if g.model in model_names]
    if not studies:
        raise ValueError(f"preset {preset.name} has no QK-gap study of {', '.join(model_names)}")
    out, started = Path(out), time.time()
    for gap in studies:
        poolings = tuple(dict.fromkeys(["live", *(v.pooling for v in gap.variants)]))
        counts = [gap.sk_samples, *gap.sample_counts]
        check_before_training(gap.model, preset.fig5[gap.model].model_kwargs, dataset, counts, poolings)
    claim_results_folder(out, "qkgap", dataset, preset)
    cells = []
    for seed in seeds:
        for gap in studies:
            run = SKRun(gap.model, gap.sk_samples, seed, preset.fig5[gap.model], dataset, out, progress)
            cells.append(run.pretrain())
            for N in gap.sample_counts:
                cells += [run.retrain_cell(N, BASE[m]) for m in METHODS]
                cells += [run.retrain_cell(N, v) for v in gap.variants]
    names = [g.model for g in studies]
    results = write_results(out, "qkgap", preset, names, dataset, started, seeds=list(seeds), cells=cells)
    write_csv(out / "qkgap.csv", [{k: v for k, v in c.items() if k != "config"} for c in cells])
    for name in names:
        plot_qk_gap([c for c in cells if c["model"] == name], out / f"qkgap_{name}.png", preset.name, dataset.source)
    return results


class SKRun:
    """One SK: the pre-training of `model` on n samples with one seed, and the re-training cells built on it."""

    def __init__(
        self,
        model: str,
        n: int,
        seed: int,
        protocol: Fig5Protocol,
        dataset: Dataset,
        out: Path,
        progress: bool,
        precision: str = "fp32",
    ):
        self.model, self.n, self.seed, self.protocol, self.dataset = model, n, seed, protocol, dataset
        self.folder = Path(out) / model / f"seed{seed}" / f"n{n}"
        self.progress = progress
        self.common = {
            "eval_samples": protocol.eval_samples,
            "precision": precision,
            "seed": seed,  # initialisation, dropout and batch order
            "subset_seed": seed,  # which samples (subset(n) is still a prefix of subset(N))
        }
        self.pretrained = self.folder / "pretrain" / "model.pt"
        self._selectors: dict = {}

    def key(self, N: int, method: str, variant: str = "base") -> dict:
        return {"model": self.model, "seed": self.seed, "n": self.n, "N": N, "method": method, "variant": variant}

    def pretrain(self) -> dict:
        cfg = TrainConfig(
            model=self.model,
            model_kwargs=self.protocol.model_kwargs,
            samples=self.n,
            epochs=self.protocol.pretrain_epochs,
            **self.common,
        )
        run = lambda d: train(cfg, self.dataset, d, resume=True, progress=self.progress)  # noqa: E731
        return cached_cell(self.folder / "pretrain", run, self.key(self.n, "pretrain"), cfg)

    def fig5_cells(self, mode: str) -> list[dict]:
        """The pre-training, then both re-training methods for every N >= n."""
        cells = [self.pretrain()]
        start = dict.fromkeys(METHODS, self.pretrained)
        for N in self.protocol.sample_counts(self.n):
            for method in METHODS:
                cells.append(self.retrain_cell(N, BASE[method], start[method]))
                if mode == "successive":
                    start[method] = self.cell_dir(N, BASE[method]) / "model.pt"
        return cells

    def cell_dir(self, N: int, variant: Variant) -> Path:
        name = variant.method if variant.name == "base" else f"{variant.method}-{variant.name}"
        return self.folder / f"N{N}" / name

    def retrain_cell(self, N: int, variant: Variant, start: Path | None = None) -> dict:
        """Re-training on N samples from `start` (default: the pre-trained net); QK cells first record the
        patterns the store lacks (Phase 3, timed as ``record_seconds``)."""
        self.pretrain()
        start = start or self.pretrained
        cfg = RetrainConfig(
            samples=N,
            epochs=variant.epochs or self.protocol.retrain_epochs,
            method=variant.method,
            lr=SGDConfig.lr * variant.lr_scale,
            sk_refresh=variant.sk_refresh,
            sk_refresh_every=variant.sk_refresh_every,
            **self.common,
        )

        def run(d: Path):
            if variant.method == "traditional":
                return retrain(cfg, start, self.dataset, d, resume=True, progress=self.progress, trust=(self.model,))
            store = self.folder / ("patterns" if variant.pooling == "live" else f"patterns-{variant.pooling}")
            t0 = time.perf_counter()
            labels = self.dataset.train.labels
            ordered = self.dataset.train.ordered
            indices = subset_indices(labels, N, self.seed, ordered=ordered)
            subset = subset_fingerprint(labels, self.seed, ordered=ordered)
            record(self.selector(variant.pooling), self.dataset, indices, store, progress=self.progress, subset=subset)
            record_seconds = time.perf_counter() - t0
            result = retrain(
                cfg, start, self.dataset, d, store=store, resume=True, progress=self.progress, trust=(self.model,)
            )
            return result, {"record_seconds": record_seconds}

        key = {**self.key(N, variant.method, variant.name), "pooling": variant.pooling}
        return cached_cell(self.cell_dir(N, variant), run, key, cfg)

    def selector(self, pooling: str):
        if pooling not in self._selectors:
            self._selectors[pooling] = selector_from_checkpoint(self.pretrained, pooling, trust=(self.model,))
        return self._selectors[pooling]


def best_epoch(history: list[dict]) -> dict:
    """The epoch of highest validation accuracy and that accuracy (classification; the final one is the cell's)."""
    scored = [h for h in history if "val_accuracy" in h]
    if not scored:
        return {}
    best = max(scored, key=lambda h: h["val_accuracy"])
    return {"best_val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"]}


def cached_cell(cell_dir: Path, run, key: dict, cfg) -> dict:
    """The cell's saved result, or run it (resuming an interrupted run) and save its result.

    A cached cell of another configuration (another preset in the same folder) is refused, never reused.
    """
    cell_file = cell_dir / "cell.json"
    if cell_file.exists():
        cell = json.loads(cell_file.read_text())
        if "config" not in cell or not cfg.matches(cell["config"]):
            raise ValueError(f"{cell_dir} holds a result of another configuration; use another --out")
        return cell
    named = [f"{k}={v}" for k, v in key.items() if k != "model" and v not in ("base", "live")]  # not the defaults
    with progress_label(" ".join([str(key["model"]), *named])):
        outcome = run(cell_dir)
    result, extra = outcome if isinstance(outcome, tuple) else (outcome, {})
    last = result.history[-1]
    cell = {
        **key,
        **{metric: last[metric] for metric in CELL_METRICS if metric in last},
        "train_loss": last["train_loss"],
        "epochs": last["epoch"],
        **best_epoch(result.history),
        "train_seconds": sum(h["seconds"] for h in result.history),
        **extra,
        "config": cfg.to_dict(),
    }
    write_json(cell_file, cell)
    (cell_dir / "resume.pt").unlink(missing_ok=True)  # the cell is cached; its optimiser state is not needed
    return cell
