"""Fig. 5: QK-only vs traditional re-training as the number of samples N grows, for each model and SK size n.

Every cell (model, n, N, method) is cached as ``cell.json`` in its own run folder, so an interrupted
reproduction picks up where it stopped (an interrupted cell resumes from its last epoch).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from skqk.data import Dataset, subset_indices
from skqk.experiments.common import write_csv, write_json, write_results
from skqk.experiments.plots import plot_fig5
from skqk.experiments.presets import Preset
from skqk.pipeline.config import RetrainConfig, TrainConfig
from skqk.pipeline.record import record, selector_from_checkpoint
from skqk.pipeline.retrain import retrain
from skqk.pipeline.train import train

METHODS = ("qk", "traditional")


def run_fig5(
    preset: Preset,
    model_names: list[str],
    dataset: Dataset,
    out: Path,
    mode: Literal["independent", "successive"] = "independent",
    progress: bool = True,
    precision: Literal["fp32", "bf16"] = "fp32",
) -> dict:
    """Run (or pick up) every cell of Fig. 5 and write results.json, fig5.csv and one PNG per model.

    In "independent" mode each N re-trains from the pre-trained checkpoint (the paper); in "successive" mode
    each N starts from the previous N's result of the same method. `precision` applies to every training run.
    """
    out = Path(out)
    started = time.time()
    cells = []
    for name in model_names:
        protocol = preset.fig5[name]
        for n in protocol.sk_samples:
            cells += run_sk_size(name, n, protocol, dataset, out / name / f"n{n}", mode, progress, precision)
    results = write_results(
        out, "fig5", preset, model_names, dataset, started, mode=mode, precision=precision, cells=cells
    )
    write_csv(out / "fig5.csv", [{k: v for k, v in c.items() if k != "config"} for c in cells])
    for name in model_names:
        plot_fig5([c for c in cells if c["model"] == name], name, out / f"fig5_{name}.png", preset.name)
    return results


def run_sk_size(name, n, protocol, dataset, folder: Path, mode, progress, precision="fp32") -> list[dict]:
    """The pre-training on n samples, then both re-training methods for every N >= n."""
    common = {"eval_samples": protocol.eval_samples, "precision": precision}
    pre_cfg = TrainConfig(model=name, samples=n, epochs=protocol.pretrain_epochs, **common)
    pre = cached_cell(
        folder / "pretrain",
        lambda d: train(pre_cfg, dataset, d, resume=True, progress=progress),
        {"model": name, "n": n, "N": n, "method": "pretrain"},
        pre_cfg,
    )
    cells = [pre]
    pretrained = folder / "pretrain" / "model.pt"
    start = dict.fromkeys(METHODS, pretrained)
    selector = selector_from_checkpoint(pretrained)
    for N in protocol.sample_counts(n):
        cfg = {m: RetrainConfig(samples=N, epochs=protocol.retrain_epochs, method=m, **common) for m in METHODS}

        def qk_run(d, N=N, cfg=cfg):  # Phase 3 for the samples the store lacks, then Phase 4
            t0 = time.perf_counter()
            record(selector, dataset, subset_indices(dataset.train.labels, N), folder / "patterns", progress=progress)
            record_seconds = time.perf_counter() - t0
            result = retrain(
                cfg["qk"], start["qk"], dataset, d, store=folder / "patterns", resume=True, progress=progress
            )
            return result, {"record_seconds": record_seconds}

        runs = {
            "qk": qk_run,
            "traditional": lambda d, cfg=cfg: retrain(
                cfg["traditional"], start["traditional"], dataset, d, resume=True, progress=progress
            ),
        }
        for method in METHODS:
            cell_dir = folder / f"N{N}" / method
            key = {"model": name, "n": n, "N": N, "method": method}
            cells.append(cached_cell(cell_dir, runs[method], key, cfg[method]))
            if mode == "successive":
                start[method] = cell_dir / "model.pt"
    return cells


def cached_cell(cell_dir: Path, run, key: dict, cfg) -> dict:
    """The cell's saved result, or run it (resuming an interrupted run) and save its result.

    A cached cell of another configuration (another preset in the same folder) is refused, never reused.
    """
    cell_file = cell_dir / "cell.json"
    if cell_file.exists():
        cell = json.loads(cell_file.read_text())
        if cell.get("config") != cfg.to_dict():
            raise ValueError(f"{cell_dir} holds a result of another configuration; use another --out")
        return cell
    outcome = run(cell_dir)
    result, extra = outcome if isinstance(outcome, tuple) else (outcome, {})
    last = result.history[-1]
    cell = {
        **key,
        "val_accuracy": last["val_accuracy"],
        "val_loss": last["val_loss"],
        "train_loss": last["train_loss"],
        "epochs": last["epoch"],
        "train_seconds": sum(h["seconds"] for h in result.history),
        **extra,
        "config": cfg.to_dict(),
    }
    write_json(cell_file, cell)
    (cell_dir / "resume.pt").unlink(missing_ok=True)  # the cell is cached; its optimiser state is not needed
    return cell
