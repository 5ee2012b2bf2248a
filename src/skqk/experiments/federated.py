"""Federated re-training: does sharing one frozen SK make averaging copies work better than averaging networks?

For each model, number of clients K and partition of the N samples, three ways to use K clients' data from the
same pre-trained start, with the same local SGD, batch order and epochs per client:

- ``qk-fedavg``: Flower FedAvg over R rounds of E local epochs, clients re-train the QK with the shared SK;
- ``traditional-fedavg``: the same rounds, clients re-train whole networks (ReLUs live): plain FedAvg;
- ``merge-once``: every client re-trains its QK alone for R x E epochs, then one `skqk merge` (weighted by
  samples), so the copies are averaged once instead of every round;
- ``analytic`` (where the protocol names it; `skqk.analytic`, not in the paper): one round in which every client
  sends the ridge statistics of the head over its shard and the server solves: the centralised solve, exactly.

Every cell is cached as ``cell.json`` in its own folder; an interrupted reproduction reruns only the cells
without one (an interrupted federated cell restarts from its first round).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from skqk.combine import merge_checkpoints
from skqk.data import Dataset
from skqk.experiments.common import claim_results_folder, write_csv, write_json, write_results
from skqk.experiments.fig5 import cached_cell
from skqk.experiments.plots import plot_federated
from skqk.federated.config import FederatedConfig
from skqk.federated.task import client_model, client_shard, local_train, prepare_start, round_seed
from skqk.pipeline.checkpoint import decoupled_entry, load_for_evaluation, save_checkpoint
from skqk.pipeline.config import TrainConfig
from skqk.pipeline.loop import evaluate
from skqk.pipeline.train import train

METHODS = ("qk-fedavg", "traditional-fedavg", "merge-once", "analytic")
CONFIG_METHOD = {"qk-fedavg": "qk", "traditional-fedavg": "traditional", "merge-once": "qk", "analytic": "analytic"}


@dataclass(frozen=True)
class FederatedProtocol:
    """One model's federated experiment."""

    clients: tuple[int, ...] = (4, 8)  # K values
    partitions: tuple[tuple[str, float], ...] = (("iid", 0.0), ("dirichlet", 0.1))  # (kind, alpha)
    samples: int = 8192  # N, split among the clients (the first N of the seeded permutation)
    rounds: int = 20  # R
    local_epochs: int = 1  # E
    pretrain_samples: int = 1024  # the start: trained from scratch on the first n samples
    pretrain_epochs: int = 200
    eval_samples: int = 2000  # validation samples of the global model, every round
    methods: tuple[str, ...] = METHODS[:3]  # from METHODS; analytic: one round of the head's ridge statistics


@dataclass(frozen=True)
class FederatedPreset:
    name: str
    description: str
    models: dict[str, FederatedProtocol] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "scaling": self.scaling()}

    def scaling(self) -> str:
        lines = [f"preset {self.name}: {self.description}"]
        for name, p in self.models.items():
            parts = ", ".join(
                f"{kind} (alpha {alpha})" if kind == "dirichlet" else kind for kind, alpha in p.partitions
            )
            lines.append(
                f"  federated {name}: start pre-trained {p.pretrain_epochs} epochs on {p.pretrain_samples:,} samples; "
                f"N = {p.samples:,} samples split among K in {list(p.clients)} clients ({parts}); {p.rounds} rounds "
                f"of {p.local_epochs} local epoch(s); validation on {p.eval_samples or 'all'} test samples"
            )
        return "\n".join(lines)


PRESETS = {
    "cpu": FederatedPreset(
        "cpu",
        "scaled for a 2-core CPU: the issue's 20 rounds, K = 4 and 8, IID and Dirichlet 0.1, on N = 8,192 samples; "
        "VGG8 gets a short pre-training (10 epochs on 512 samples) and 10 rounds",
        {
            "lenet5": FederatedProtocol(),
            "vgg8": FederatedProtocol(rounds=10, pretrain_samples=512, pretrain_epochs=10),
        },
    ),
    "smoke": FederatedPreset(
        "smoke",
        "a few minutes, for CI: LeNet-5 pre-trained 2 epochs on 256 samples, N = 512, K = 2, IID and Dirichlet 0.1, "
        "2 rounds of 1 epoch, 500 validation samples",
        {
            "lenet5": FederatedProtocol(
                clients=(2,), samples=512, rounds=2, pretrain_samples=256, pretrain_epochs=2, eval_samples=500
            )
        },
    ),
}


def run_federated_experiment(
    preset: FederatedPreset,
    model_names: list[str],
    dataset: Dataset,
    out: Path,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    seeds: tuple[int, ...] = (0,),
) -> dict:
    """Run (or pick up) every cell of every seed into out/MODEL/seedS; write results.json, federated.csv and one
    plot per model, K and seed. A seed changes the start's initialisation and samples (as a Fig. 5 seed does: the
    start is that seed's Fig. 5 pre-training), the N samples, their split and the batch order."""
    out = Path(out)
    started = time.time()
    claim_results_folder(out, "federated", dataset, preset)
    cells = []
    for seed in seeds:
        for name in model_names:
            protocol = preset.models[name]
            root = out / name / f"seed{seed}"
            start = pretrained_start(name, protocol, dataset, root / "pretrain", progress, seed)
            for method in protocol.methods:  # method by method: the one-round analytic cells first when listed so
                for clients in protocol.clients:
                    for kind, alpha in protocol.partitions:
                        folder = root / (f"K{clients}-{kind}" + (f"{alpha:g}" if kind == "dirichlet" else ""))
                        cfg = FederatedConfig(
                            epochs=protocol.local_epochs,
                            samples=protocol.samples,
                            clients=clients,
                            rounds=protocol.rounds if method != "analytic" else 1,
                            partition=kind,
                            alpha=alpha if kind == "dirichlet" else FederatedConfig.alpha,
                            method=CONFIG_METHOD[method],
                            eval_samples=protocol.eval_samples,
                            seed=seed,
                            subset_seed=seed,
                            partition_seed=seed,
                        )
                        key = {"model": name, "seed": seed, "clients": clients, "partition": kind, "alpha": alpha}
                        run = merge_once_cell if method == "merge-once" else federated_cell
                        context = (start, dataset, data_dir, cache_dir, progress)
                        cells.append(cached(folder / method, {**key, "method": method}, cfg, run, context))
                        write_results(out, "federated", preset, model_names, dataset, started, cells=cells)
    results = write_results(out, "federated", preset, model_names, dataset, started, cells=cells)
    write_csv(out / "federated.csv", [{k: v for k, v in c.items() if k not in ("rounds", "config")} for c in cells])
    for seed in seeds:
        for name in model_names:
            for clients in preset.models[name].clients:
                mine = [c for c in cells if (c["model"], c["clients"], c["seed"]) == (name, clients, seed)]
                mine = [c for c in mine if "infeasible" not in c]
                path = out / f"federated_{name}_K{clients}{f'_seed{seed}' if seed else ''}.png"
                title = f"{name}, K = {clients}" + (f", seed {seed}" if len(seeds) > 1 else "")
                plot_federated(mine, title, path, preset.name, dataset.source)
    return results


def pretrained_start(
    name: str, protocol: FederatedProtocol, dataset: Dataset, folder: Path, progress: bool, seed: int = 0
) -> Path:
    """The start every method of a seed shares: `name` trained from scratch on the protocol's n samples of the
    seed's order (cached)."""
    cfg = TrainConfig(
        model=name,
        samples=protocol.pretrain_samples,
        epochs=protocol.pretrain_epochs,
        eval_samples=protocol.eval_samples,
        seed=seed,
        subset_seed=seed,
    )
    run = lambda d: train(cfg, dataset, d, resume=True, progress=progress)  # noqa: E731
    cached_cell(folder, run, {"model": name, "seed": seed}, cfg)
    return folder / "model.pt"


def cached(cell_dir: Path, key: dict, cfg: FederatedConfig, run, context: tuple) -> dict:
    """The cell's saved result, or compute it in a fresh folder and save it (another configuration is refused)."""
    cell_file = cell_dir / "cell.json"
    if cell_file.exists():
        cell = json.loads(cell_file.read_text())
        if not cfg.matches(cell.get("config", {})):
            raise ValueError(f"{cell_dir} holds a result of another configuration; use another --out")
        return cell
    if cell_dir.exists():  # an interrupted federated run does not resume: start the cell again
        shutil.rmtree(cell_dir)
    start, dataset, data_dir, cache_dir, progress = context
    try:
        client_shard(dataset, cfg, 0)  # the split is drawn before anything trains: e.g. Dirichlet 0.01 over 20
    except ValueError as e:  # clients leaves some without samples, a result of the setting, cached like one
        cell = {**key, "infeasible": str(e), "config": cfg.to_dict()}
        write_json(cell_file, cell)
        return cell
    started = time.perf_counter()
    result = run(cfg, start, dataset, cell_dir, data_dir, cache_dir, progress)
    cell = {**key, **result, "wall_seconds": time.perf_counter() - started, "config": cfg.to_dict()}
    write_json(cell_file, cell)
    return cell


def federated_cell(cfg, start, dataset, cell_dir, data_dir, cache_dir, progress) -> dict:
    from skqk.federated.simulation import run_federated

    history = run_federated(cfg, start, cell_dir, data_dir, cache_dir, progress=progress)
    rounds = [{k: v for k, v in row.items() if k != "clients"} for row in history]
    return {
        "val_accuracy": history[-1]["val_accuracy"],
        "val_loss": history[-1]["val_loss"],
        "bytes_down": sum(r.get("bytes_down", 0) for r in history),
        "bytes_up": sum(r.get("bytes_up", 0) for r in history),
        "rounds": rounds,
        "client_train_accuracy": [[c.get("train-accuracy") for c in row["clients"]] for row in history[1:]],
        "bytes_up_per_client": [[c.get("bytes_up") for c in row["clients"]] for row in history[1:]],
    }


def merge_once_cell(cfg, start, dataset, cell_dir, data_dir, cache_dir, progress) -> dict:
    """Each client alone for R x E epochs from the start (same batches as its federated epochs), then one merge."""
    begin = prepare_start(start, cfg, dataset)
    paths, alone = [], []
    for client in range(cfg.clients):
        torch.manual_seed(round_seed(cfg.seed, client, 0))
        model = client_model(begin["model"], begin["model_kwargs"], "qk", begin["pooling"], begin["qk"], begin["sk"])
        shard = client_shard(dataset, cfg, client)
        local_train(model, dataset, shard, cfg, 0, cfg.rounds * cfg.epochs)
        path = cell_dir / f"client{client}.pt"
        entry = decoupled_entry(begin["model"], begin["model_kwargs"], begin["sk"], model.deployed)
        save_checkpoint(path, {**entry, "samples": len(shard), "config": cfg.to_dict()})
        paths.append(path)
        alone.append(evaluate(model.deployed, dataset, cfg.eval_samples)["val_accuracy"])
    merge_checkpoints(paths, cell_dir / "model.pt", replace=True)  # the cell's own folder, rerun after a kill
    metrics = evaluate(load_for_evaluation(cell_dir / "model.pt")[0], dataset, cfg.eval_samples)
    size = sum(t.numel() * t.element_size() for t in begin["qk"].values())
    return {
        **metrics,
        "clients_alone_val_accuracy": alone,
        "bytes_down": 2 * size * cfg.clients,  # SK and the start QK, once
        "bytes_up": size * cfg.clients,  # each client's QK, once
    }
