"""Incremental re-training: data arriving in chunks, QK-only vs traditional fine-tuning, forgetting, SK refresh.

The paper's conclusion asks for "re-training with new samples without requiring full dataset processing". Per
model, sample order (random, class-incremental) and seed: pre-train on chunk 0, then every arm re-trains chunk
after chunk from the same pre-trained checkpoint with the same batch order; after each chunk the accuracy on
every chunk seen so far fills one row of the accuracy matrix (`skqk.incremental.metrics`). Every (arm, chunk)
cell is cached as ``cell.json`` in its run folder, so an interrupted reproduction picks up where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from skqk.atomic import atomic_write_text
from skqk.data import Dataset
from skqk.experiments.common import check_before_training, claim_results_folder, write_csv, write_json, write_results
from skqk.experiments.fig5 import cached_cell
from skqk.experiments.plots import plot_incremental
from skqk.experiments.report import mean_std
from skqk.incremental import chunk_indices, experience_eval_indices, stream_summary
from skqk.pipeline.checkpoint import load_for_evaluation
from skqk.pipeline.config import RetrainConfig, TrainConfig
from skqk.pipeline.loop import TrainingDiverged, evaluate
from skqk.pipeline.record import record, selector_from_checkpoint
from skqk.pipeline.retrain import retrain, training_indices
from skqk.pipeline.train import train

ORDERS = ("random", "class-incremental")  # the orders this study draws; "time" is a stream's own (reproduce drift)


@dataclass(frozen=True)
class Arm:
    """One way of re-training on each new chunk."""

    method: str  # "qk" or "traditional"
    data: str  # "new": the new chunk only; "all": every chunk so far (the upper bound Fig. 5 measures)
    replay: bool = False  # plus the protocol's small replay buffer of earlier samples
    sk_refresh: str = "off"  # "auto": refresh the SK when sk_staleness passes the default threshold


ARMS = {
    "qk-new": Arm("qk", "new"),
    "traditional-new": Arm("traditional", "new"),
    "qk-replay": Arm("qk", "new", replay=True),
    "traditional-replay": Arm("traditional", "new", replay=True),
    "qk-all": Arm("qk", "all"),
    "traditional-all": Arm("traditional", "all"),
    "qk-new-refresh": Arm("qk", "new", sk_refresh="auto"),
    "qk-all-refresh": Arm("qk", "all", sk_refresh="auto"),  # does refreshing close the Fig. 5 gap?
    "analytic": Arm("analytic", "new"),  # the head's ridge statistics, chunk by chunk (skqk.analytic; not the paper's)
}


def run_incremental(preset, model_names: list[str], dataset: Dataset, out: Path, progress: bool = True) -> dict:
    """Run (or pick up) every cell; write results.json, incremental.csv and one PNG per model and order."""
    out = Path(out)
    started = time.time()
    for name in model_names:
        p = preset.incremental[name]
        for order in p.orders:
            check_order(order, p, dataset)
        check_before_training(name, p.model_kwargs, dataset, [p.chunks * p.chunk_samples])
    claim_results_folder(out, "incremental", dataset, preset)
    streams = []
    for name in model_names:
        protocol = preset.incremental[name]
        for seed in protocol.seeds:  # seed by seed: `--seeds 0` first gives a complete partial result
            for order in protocol.orders:
                folder = out / name / order / f"seed{seed}"
                streams += run_stream(name, order, seed, protocol, dataset, folder, progress)
    summary = summarise(streams)
    results = write_results(out, "incremental", preset, model_names, dataset, started, streams=streams, summary=summary)
    write_csv(out / "incremental.csv", summary)
    for name in model_names:
        for order in preset.incremental[name].orders:
            rows = [s for s in streams if s["model"] == name and s["order"] == order]
            title, path = f"{name}, {order} order", out / f"incremental_{name}_{order}.png"
            plot_incremental(rows, title, path, preset.name, dataset.source)
    return results


def check_order(order: str, protocol, dataset: Dataset) -> None:
    """Refuse, in one line, a chunk order the data cannot give: drawn orders need classes and no time order; the
    time order needs a stream whose test split holds every chunk's latest rows (`skqk.data.evolving`)."""
    if order == "time":
        held_out = dataset.table.get("held_out_per_chunk")
        if held_out is None:
            raise ValueError(
                "the time order needs a stream whose test split holds each chunk's latest rows (skqk reproduce "
                "drift); for your own time-ordered table, re-train chunk by chunk with skqk retrain --sample-range A:B"
            )
        stream = (dataset.table["chunks"], dataset.table["chunk_samples"], held_out)
        if (protocol.chunks, protocol.chunk_samples, protocol.eval_per_chunk) != stream:
            raise ValueError(f"the stream has {stream[0]} chunks of {stream[1]} + {stream[2]} held-out rows")
    elif dataset.train.ordered:
        raise ValueError(
            "the incremental study draws its own chunk orders; for time-ordered rows, re-train chunk by "
            "chunk with skqk retrain --sample-range A:B"
        )
    elif dataset.task == "regression":
        raise ValueError(f"the {order} order draws chunks and test samples by class; regression has no classes")
    elif order not in ORDERS:
        raise ValueError(f"unknown chunk order {order!r}; choose from {', '.join(ORDERS)} (time: streams only)")


def metric_of(dataset: Dataset) -> str:
    """What the chunk matrices hold: accuracy, or for regression the RMSE (lower is better)."""
    return "accuracy" if dataset.task == "classification" else "rmse"


def run_stream(
    name, order, seed, protocol, dataset: Dataset, folder: Path, progress: bool, stream: str | None = None
) -> list[dict]:
    """Pre-training on chunk 0, then every arm over chunks 1.. ; one summary per arm (its accuracy matrix). A
    `stream` name (reproduce drift) is part of every cell's key, so progress bars and results name it.

    In the "time" order (a stream of `skqk.data.evolving`) chunk k is rows ``k * S .. (k + 1) * S - 1`` in time and
    its test samples are the test split's rows ``k * E .. (k + 1) * E - 1``, the latest E rows of its period."""
    S, E = protocol.chunk_samples, protocol.eval_per_chunk
    class_order = {"class_incremental": protocol.classes_per_chunk, "chunk_samples": S}
    class_order = class_order if order == "class-incremental" else {}
    common = {"seed": seed, "subset_seed": seed, "eval_samples": protocol.eval_samples, "lr": protocol.lr,
              **class_order}  # fmt: skip
    labels = dataset.train.labels
    if order == "time":
        eval_sets = list(torch.arange(protocol.chunks * E).split(E))
    else:
        chunks = [chunk_indices(labels, k, S, seed, (protocol.classes_per_chunk, S) if class_order else None)
                  for k in range(protocol.chunks)]  # fmt: skip
        chunk_classes = [labels[c].unique() for c in chunks] if class_order else None
        eval_sets = experience_eval_indices(dataset.test.labels, chunk_classes, protocol.chunks, E, seed)
    options = {"model_kwargs": protocol.model_kwargs}
    pre_cfg = TrainConfig(model=name, samples=S, epochs=protocol.pretrain_epochs, **options, **common)
    key = {"model": name, **({"stream": stream} if stream else {}), "order": order, "seed": seed}
    trust = (name,)  # the caller chose the model (reproduce --model): re-training and evaluation build it too

    def pretrain(cell_dir: Path):
        result = train(pre_cfg, dataset, cell_dir, resume=True, progress=progress)
        return result, {"row": accuracy_row(cell_dir / "model.pt", dataset, eval_sets, trust)}

    pre = cached_cell(folder / "pretrain", pretrain, {**key, "arm": "pretrain", "chunk": 0}, pre_cfg)
    pretrained = folder / "pretrain" / "model.pt"
    streams = []
    for arm_name in protocol.arms or ARMS:
        arm_key = {**key, "arm": arm_name}
        if ARMS[arm_name].method == "analytic":
            from skqk.experiments.analytic import analytic_chunks

            cells = analytic_chunks(arm_key, protocol, common, pretrained, dataset, folder / arm_name, eval_sets, trust)
        else:
            cells = sgd_chunks(
                ARMS[arm_name], arm_key, protocol, common, pretrained, dataset, folder, eval_sets, progress, trust
            )
        streams.append(stream_result(key, arm_name, pre, cells, folder / arm_name, metric_of(dataset)))
    return streams


def sgd_chunks(arm: Arm, key: dict, protocol, common: dict, pretrained: Path, dataset, folder: Path, eval_sets,
               progress: bool, trust=()) -> list[dict]:  # fmt: skip
    """One SGD arm over chunks 1.. , each chunk re-trained from the previous chunk's result."""
    S, start, cells = protocol.chunk_samples, pretrained, []
    for k in range(1, protocol.chunks):
        cfg = RetrainConfig(
            samples=(k + 1) * S,
            sample_start=k * S if arm.data == "new" else 0,
            replay=protocol.replay if arm.replay else 0,
            method=arm.method,
            sk_refresh=arm.sk_refresh,
            epochs=protocol.retrain_epochs,
            **common,
        )
        cell_dir = folder / key["arm"] / f"chunk{k}"
        run = chunk_run(cfg, start, dataset, folder, eval_sets[: k + 1], progress, trust)
        cells.append(diverged_or_cached(cell_dir, run, {**key, "chunk": k}, cfg))
        if "diverged" in cells[-1]:  # the arm's stream ends here: nothing to continue from
            break
        start = cell_dir / "model.pt"
    return cells


def diverged_or_cached(cell_dir: Path, run, key: dict, cfg: RetrainConfig) -> dict:
    """`cached_cell`, where a run whose loss became NaN is a result too (cached, so it is not retried)."""
    try:
        return cached_cell(cell_dir, run, key, cfg)
    except TrainingDiverged as e:
        cell = {**key, "diverged": str(e), "config": cfg.to_dict()}
        write_json(cell_dir / "cell.json", cell)
        return cell


def chunk_run(cfg: RetrainConfig, start: Path, dataset: Dataset, folder: Path, eval_sets, progress: bool, trust=()):
    """One chunk of one arm: Phase 3 for the patterns its SK's store lacks (QK), Phase 4 or the baseline, then the
    accuracy on every chunk so far (`eval_sets`); a model named by import path is built only if `trust` names it."""

    labels, ordered = dataset.train.labels, dataset.train.ordered

    def run(cell_dir: Path):
        store, record_seconds = None, 0.0
        if cfg.method == "qk":
            t0 = time.perf_counter()
            selector = selector_from_checkpoint(start, trust=trust)
            store = folder / "patterns" / selector.fingerprint[:16]  # one store per SK, shared by the arms
            record(selector, dataset, training_indices(labels, cfg, ordered), store, progress=False)
            record_seconds = time.perf_counter() - t0
        result = retrain(cfg, start, dataset, cell_dir, store=store, resume=True, progress=progress, trust=trust)
        refreshes = [h["sk_refresh"] for h in result.history if "sk_refresh" in h]
        return result, {
            "row": accuracy_row(cell_dir / "model.pt", dataset, eval_sets, trust),
            "record_seconds": record_seconds,
            "samples_processed": cfg.epochs * len(training_indices(labels, cfg, ordered)),
            "refreshes": len(refreshes),
            "refresh_seconds": sum(r["seconds"] for r in refreshes),
            "sk_staleness": result.history[-1].get("sk_staleness"),
        }

    return run


def accuracy_row(checkpoint: Path, dataset: Dataset, eval_sets, trust=()) -> list[float]:
    """Accuracy (regression: RMSE) of a checkpoint, as it deploys, on the test samples of every chunk in
    `eval_sets`."""
    module, _ = load_for_evaluation(checkpoint, trust=trust)
    return [evaluate(module, dataset, indices=s)[f"val_{metric_of(dataset)}"] for s in eval_sets]


def stream_result(key: dict, arm: str, pre: dict, cells: list[dict], folder: Path, metric: str = "accuracy") -> dict:
    """The accuracy matrix (regression: RMSE, `metric`) of one arm's stream, its forgetting and transfer (for an
    error: its increase on earlier chunks), and what it cost; a stream whose training diverged keeps its matrix up
    to there and gets no final numbers."""
    if "diverged" in cells[-1]:
        finished = cells[:-1]
        return {**key, "arm": arm, "diverged_at_chunk": cells[-1]["chunk"], "diverged": cells[-1]["diverged"],
                "matrix": [pre["row"][:1], *(c["row"] for c in finished)]}  # fmt: skip
    matrix = [pre["row"][:1], *(c["row"] for c in cells)]
    steps = stream_summary(matrix, metric)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "metrics.jsonl", "".join(json.dumps(s) + "\n" for s in steps))
    last = steps[-1]
    return {
        **key,
        "arm": arm,
        "matrix": matrix,
        f"final_{metric}": cells[-1][f"val_{metric}"],
        **{f"final_{m}": cells[-1][f"val_{m}"] for m in ("mae", "r2") if metric == "rmse"},
        f"average_{metric}": last[f"average_{metric}"],
        "average_forgetting": last["average_forgetting"],
        "backward_transfer": last["backward_transfer"],
        "forgetting_per_step": [s["average_forgetting"] for s in steps],
        f"{metric}_per_step": [s[f"average_{metric}"] for s in steps],
        "samples_processed": sum(c["samples_processed"] for c in cells),
        "wall_seconds": sum(c["train_seconds"] + c["record_seconds"] for c in cells),
        "refreshes": sum(c["refreshes"] for c in cells),
        "refresh_seconds": sum(c["refresh_seconds"] for c in cells),
        "sk_staleness_per_chunk": [c["sk_staleness"] for c in cells],
    }


def summarise(streams: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per (model, order, arm)."""
    scores = ("final_accuracy", "final_rmse", "final_mae", "final_r2")
    keys = ("average_forgetting", "backward_transfer", "samples_processed", "wall_seconds", "refreshes")
    groups: dict[tuple, list[dict]] = {}
    for s in streams:
        groups.setdefault((s["model"], s["order"], s["arm"]), []).append(s)
    rows = []
    for (model, order, arm), group in groups.items():
        finished = [s for s in group if "diverged" not in s]
        row = {
            "model": model,
            "order": order,
            "arm": arm,
            "seeds": len(finished),
            "diverged": len(group) - len(finished),
        }
        for k in [k for k in scores if any(k in s for s in finished)] + list(keys):
            row[k], row[f"{k}_std"] = mean_std([s[k] for s in finished]) if finished else (None, None)
        rows.append(row)
    return rows
