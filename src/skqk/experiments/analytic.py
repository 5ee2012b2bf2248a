"""The analytic QK (`skqk.analytic`, issue 20; not in the paper) against the paper's SGD re-training, three studies:

- ``fig5``: per model, seed, SK size n and N, the validation accuracy and wall time of the head solved by ridge
  (and by Newton on cross-entropy), of the paper's SGD QK started from the ridge head, of SGD QK and of
  traditional re-training, all from one pre-trained network (the SGD cells are Fig. 5's, `SKRun`);
- ``incremental``: the class-incremental stream of `skqk.experiments.incremental` with the ``analytic`` arm (each
  chunk's statistics added to the last solve's) beside SGD QK on the new chunk only, with replay, traditional
  with replay, and traditional on all chunks so far (joint);
- ``federated``: one round of head statistics (``analytic``) against QK-FedAvg and FedAvg over R rounds, for
  every K and partition (`skqk.experiments.federated`).

Every cell is cached as ``cell.json``; rerun the command to pick up where it stopped. The analytic cells record
their own frozen-pooling store, so their wall time includes the selector pass over all N samples and the
estimator's pass computing the head's inputs.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from skqk.analytic import SolveConfig, find_block, solve, update
from skqk.data import Dataset, subset_fingerprint, subset_indices
from skqk.experiments.common import check_before_training, claim_results_folder, write_csv, write_json, write_results
from skqk.experiments.federated import FederatedPreset, FederatedProtocol, run_federated_experiment
from skqk.experiments.fig5 import SKRun
from skqk.experiments.incremental import accuracy_row, run_incremental
from skqk.experiments.plots import plot_analytic_fig5
from skqk.experiments.presets import BASE, CPU, SMOKE, Fig5Protocol, Preset, Variant
from skqk.pipeline.loop import evaluate
from skqk.pipeline.record import record, selector_from_checkpoint

STUDIES = ("fig5", "incremental", "federated")
SOLVES = ("mse", "ce")  # the analytic cells' losses: ridge on one-hot targets, Newton on cross-entropy
AFTER_RIDGE = Variant("after-ridge", pooling="frozen")  # SGD QK (frozen switches, as the solve) from the ridge head
INCREMENTAL_ARMS = ("analytic", "qk-new", "qk-replay", "traditional-replay", "traditional-all")
PARTITIONS = (("iid", 0.0), ("dirichlet", 0.01), ("dirichlet", 0.1), ("dirichlet", 1.0))


@dataclass(frozen=True)
class AnalyticPreset:
    """The protocols of the three studies; Fig. 5's and the incremental one's in a `Preset`."""

    name: str
    studies: Preset  # fig5 and incremental protocols
    federated: FederatedPreset


PRESETS = {
    "cpu": AnalyticPreset(
        "cpu",
        Preset(
            "cpu",
            "scaled for a 2-core CPU shared by five: Fig. 5 cells of LeNet-5 with SK from n = 1,024 (the paper's "
            "200 pre-training epochs), N = 1,024, 4,096, 16,384, 32,768, SGD cells with the cpu preset's 10 re-"
            "training epochs; VGG8 (n = 512, N up to 8,192) and AlexNet (n = 1,024, N up to 4,096) with the cpu "
            "preset's short schedules, on request; the class-incremental stream of the cpu preset (LeNet-5, 5 "
            "chunks of 300 samples, 15 + 3 epochs), five arms",
            fig5={
                "lenet5": Fig5Protocol(
                    (1024,),
                    samples=(1024, 4096, 16384, 32768),
                    pretrain_epochs=200,
                    retrain_epochs=10,
                    eval_samples=2000,
                ),
                "vgg8": Fig5Protocol(
                    (512,), samples=(512, 2048, 8192), pretrain_epochs=10, retrain_epochs=3, eval_samples=2000
                ),
                "alexnet": Fig5Protocol(
                    (1024,), samples=(1024, 4096), pretrain_epochs=10, retrain_epochs=3, eval_samples=2000
                ),
            },  # fmt: skip
            default_models=("lenet5",),
            incremental={
                "lenet5": replace(CPU.incremental["lenet5"], orders=("class-incremental",), arms=INCREMENTAL_ARMS)
            },
        ),
        FederatedPreset(
            "cpu",
            "scaled for a 2-core CPU shared by five: LeNet-5 pre-trained 200 epochs on 1,024 samples, N = 4,096 "
            "samples split among K = 4, 8, 20 clients (IID, Dirichlet 0.01, 0.1, 1); analytic: one round; "
            "QK-FedAvg and FedAvg: 20 rounds of 1 local epoch; the seeds of --seeds (default 0)",
            {
                "lenet5": FederatedProtocol(
                    clients=(4, 8, 20),
                    partitions=PARTITIONS,
                    samples=4096,
                    methods=("analytic", "qk-fedavg", "traditional-fedavg"),
                )
            },
        ),
    ),
    "smoke": AnalyticPreset(
        "smoke",
        replace(
            SMOKE,
            incremental={
                "lenet5": replace(
                    SMOKE.incremental["lenet5"], orders=("class-incremental",), chunks=3, arms=("analytic", "qk-new")
                )
            },  # fmt: skip
        ),
        FederatedPreset(
            "smoke",
            "a few minutes: LeNet-5 pre-trained 2 epochs on 256 samples, N = 512, K = 2, Dirichlet 0.01, analytic "
            "and 1 round of QK-FedAvg",
            {
                "lenet5": FederatedProtocol(
                    clients=(2,),
                    partitions=(("dirichlet", 0.01),),
                    samples=512,
                    rounds=1,
                    pretrain_samples=256,
                    pretrain_epochs=2,
                    eval_samples=500,
                    methods=("analytic", "qk-fedavg"),
                )
            },
        ),
    ),
}


# -- Fig. 5 cells ----------------------------------------------------------------------------------------------
def run_analytic_fig5(
    preset: Preset, model_names: list[str], dataset: Dataset, out: Path, progress: bool, seeds: tuple[int, ...]
) -> dict:
    """Every Fig. 5 cell of the analytic study; results.json is rewritten after each cell, so a stopped run leaves
    what it has; fig5.csv and one PNG per model at the end."""
    out, started = Path(out), time.time()
    for name in model_names:
        p = preset.fig5[name]
        check_before_training(name, p.model_kwargs, dataset, [*p.sk_samples, *p.sample_counts(0)], ("live", "frozen"))
    claim_results_folder(out, "analytic-fig5", dataset, preset)
    cells: list[dict] = []

    def keep(cell: dict) -> None:
        cells.append(cell)
        write_results(out, "analytic-fig5", preset, model_names, dataset, started, seeds=list(seeds), cells=cells)

    for seed in seeds:
        for name in model_names:
            protocol = preset.fig5[name]
            for n in protocol.sk_samples:
                run = SKRun(name, n, seed, protocol, dataset, out, progress)
                keep(run.pretrain())
                for N in protocol.sample_counts(n):
                    for loss in SOLVES:
                        keep(analytic_cell(run, N, loss))
                    ridge = run.folder / f"N{N}" / "analytic-mse" / "run" / "model.pt"
                    keep(timed(run.retrain_cell(N, AFTER_RIDGE, ridge)))
                    for method in ("qk", "traditional"):
                        keep(timed(run.retrain_cell(N, BASE[method])))
    results = write_results(out, "analytic-fig5", preset, model_names, dataset, started, seeds=list(seeds), cells=cells)
    write_csv(out / "fig5.csv", [{k: v for k, v in c.items() if k != "config"} for c in cells])
    for name in model_names:
        mine = [c for c in cells if c["model"] == name and c["method"] != "pretrain"]
        plot_analytic_fig5(mine, name, out / f"analytic_fig5_{name}.png", preset.name, dataset.source)
    return results


def timed(cell: dict) -> dict:
    """An SGD cell with its wall time: the epochs, plus the recording of its patterns for QK."""
    return {**cell, "wall_seconds": cell["train_seconds"] + cell.get("record_seconds", 0.0)}


def analytic_cell(run: SKRun, N: int, loss: str) -> dict:
    """The head of `run`'s pre-trained network solved on its first N samples; timed from the recording of a
    frozen-pooling store of its own (the selector's pass) to the solved run folder (the estimator's pass, the
    solve, and the solve's evaluation on the whole test split, also timed on its own), then measured on the
    protocol's validation samples like the SGD cells."""
    cfg = SolveConfig(samples=N, loss=loss, subset_seed=run.seed)
    cell_dir = run.folder / f"N{N}" / f"analytic-{loss}"
    key = {**run.key(N, "analytic", loss), "pooling": "frozen"}

    def compute(folder: Path) -> dict:
        labels = run.dataset.train.labels
        store = folder / "patterns"
        t0 = time.perf_counter()
        indices = subset_indices(labels, N, run.seed)
        subset = subset_fingerprint(labels, run.seed)
        record(run.selector("frozen"), run.dataset, indices, store, progress=False, subset=subset)
        t1 = time.perf_counter()
        result = solve(cfg, run.pretrained, run.dataset, store, folder / "run", run.progress, trust=(run.model,))
        t2 = time.perf_counter()
        shutil.rmtree(store)  # the cell's result is the run folder; the store was only its input
        metrics = evaluate(result.decoupled, run.dataset, run.protocol.eval_samples)
        return {**metrics, **solve_record(result.solution), "record_seconds": t1 - t0, "solve_seconds": t2 - t1,
                "test_split_evaluation_seconds": result.evaluation_seconds, "wall_seconds": t2 - t0,
                "samples_processed": N}  # fmt: skip

    return solve_cell(cell_dir, key, asdict(cfg), compute)


def solve_record(solution: dict) -> dict:
    ce = solution.get("cross_entropy", {})
    return {"lambda": solution["ridge"]["lambda"], "lambda_chosen_by": solution["ridge"]["chosen_by"],
            "newton_iterations": ce.get("iterations"), "hessian_products": ce.get("hessian_products")}  # fmt: skip


def solve_cell(cell_dir: Path, key: dict, config: dict, compute) -> dict:
    """The cell's saved result, or `compute(cell_dir)` in a fresh folder (a solve leaves no partial state worth
    resuming), saved as cell.json; a cached cell of another configuration is refused."""
    cell_file = cell_dir / "cell.json"
    if cell_file.exists():
        cell = json.loads(cell_file.read_text())
        if cell.get("config") != json.loads(json.dumps(config)):
            raise ValueError(f"{cell_dir} holds a result of another configuration; use another --out")
        return cell
    if cell_dir.exists():
        shutil.rmtree(cell_dir)
    cell = {**key, **compute(cell_dir), "config": config}
    write_json(cell_file, cell)
    return cell


# -- incremental -----------------------------------------------------------------------------------------------
def analytic_chunks(key: dict, protocol, common: dict, pretrained: Path, dataset: Dataset, folder: Path,
                    eval_sets, trust=()) -> list[dict]:  # fmt: skip
    """The incremental stream's analytic arm: the pre-trained head solved by ridge on chunks 0 and 1, then each new
    chunk's statistics added to the previous solve's (`skqk solve --from RUN --sample-range`), so every chunk is
    read once and every step equals the ridge solve on all chunks so far (checked after the last chunk against
    one joint solve). The SK stays the pre-trained one; the store holds only the chunks read so far. A model named by
    import path is built only if `trust` names it."""
    S, seed = protocol.chunk_samples, common["subset_seed"]
    chunks = (common.get("class_incremental", 0), common.get("chunk_samples", 0))
    labels, ordered, class_chunks = dataset.train.labels, dataset.train.ordered, chunks if chunks[0] else None
    order = subset_indices(labels, protocol.chunks * S, seed, class_chunks=class_chunks, ordered=ordered)
    subset = subset_fingerprint(labels, seed, class_chunks=class_chunks, ordered=ordered)
    selector, store = selector_from_checkpoint(pretrained, "frozen", trust=trust), folder / "patterns"
    base = {"subset_seed": seed, "class_incremental": chunks[0], "chunk_samples": chunks[1]}
    cells: list[dict] = []
    for k in range(1, protocol.chunks):
        start = 0 if k == 1 else k * S
        cfg = SolveConfig(samples=(k + 1) * S, sample_start=start, eval_samples=protocol.eval_samples, **base)
        cell_dir = folder / f"chunk{k}"

        def compute(cell_dir: Path, k=k, start=start, cfg=cfg) -> dict:
            t0 = time.perf_counter()
            record(selector, dataset, order[start : (k + 1) * S], store, progress=False, subset=subset)
            t1 = time.perf_counter()
            if k == 1:
                result = solve(cfg, pretrained, dataset, store, cell_dir / "run", False, trust)
            else:
                previous = folder / f"chunk{k - 1}" / "run"
                result = update(previous, dataset, store, cell_dir / "run", add=cfg.span, progress=False, trust=trust)
            t2 = time.perf_counter()
            checkpoint = cell_dir / "run" / "model.pt"
            extra = {}
            if k == protocol.chunks - 1:
                extra["joint_relative_difference"] = joint_difference(
                    result, pretrained, dataset, store, cfg, folder, trust
                )
            return {
                **result.metrics,  # the solve's own measurement, on the protocol's validation samples
                **solve_record(result.solution),
                "row": accuracy_row(checkpoint, dataset, eval_sets[: k + 1], trust),
                "samples_processed": (k + 1) * S - start,  # each sample read once, by the selector and the estimator
                "record_seconds": t1 - t0,
                "train_seconds": t2 - t1,
                "refreshes": 0,
                "refresh_seconds": 0.0,
                "sk_staleness": None,
                **extra,
            }

        cells.append(solve_cell(cell_dir, {**key, "chunk": k}, asdict(cfg), compute))
    return cells


def joint_difference(result, pretrained: Path, dataset: Dataset, store: Path, cfg: SolveConfig, folder: Path,
                     trust=()) -> float:  # fmt: skip
    """‖θ_incremental − θ_joint‖ / ‖θ_joint‖ of the head, θ_joint solved once on every chunk so far."""
    joint_dir = folder / "joint"
    shutil.rmtree(joint_dir, ignore_errors=True)
    joint = solve(replace(cfg, sample_start=0), pretrained, dataset, store, joint_dir, False, trust)
    a, b = (find_block(r.decoupled.estimator).theta() for r in (result, joint))
    return ((a - b).norm() / b.norm()).item()


# -- the command -----------------------------------------------------------------------------------------------
def run_analytic(
    preset: AnalyticPreset,
    model_names: list[str],
    dataset: Dataset,
    out: Path,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    seeds: tuple[int, ...] = (0,),
    studies: Sequence[str] = STUDIES,
) -> dict[str, dict]:
    """The `studies` one after the other into out/fig5, out/incremental and out/federated (the latter two for the
    models their protocols have, LeNet-5); their results by study."""
    out = Path(out)
    protocols = preset.studies
    incremental = replace(protocols, incremental={
        name: replace(p, seeds=seeds) for name, p in protocols.incremental.items()
    })  # fmt: skip
    results = {}
    if "fig5" in studies:
        results["fig5"] = run_analytic_fig5(protocols, model_names, dataset, out / "fig5", progress, seeds)
    names = [n for n in model_names if n in incremental.incremental]
    if names and "incremental" in studies:
        results["incremental"] = run_incremental(incremental, names, dataset, out / "incremental", progress)
    names = [n for n in model_names if n in preset.federated.models]
    if names and "federated" in studies:
        results["federated"] = run_federated_experiment(
            preset.federated, names, dataset, out / "federated", data_dir, cache_dir, progress, seeds
        )
    return results
