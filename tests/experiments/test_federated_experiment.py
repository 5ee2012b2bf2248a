"""The federated experiment's seeds: each seed its own start, samples, split and batch order, its own folder and
plot; cached per seed. The Flower runs and the pre-training are stubbed (the smoke reproduction runs them)."""

import pytest
from pipeline_helpers import make_dataset

import skqk.experiments.federated as federated
from skqk.experiments.federated import FederatedPreset, FederatedProtocol, run_federated_experiment

PRESET = FederatedPreset(
    "tiny", "two clients, one round", {"lenet5": FederatedProtocol(clients=(2,), partitions=(("iid", 0.0),),
                                                                   samples=40, rounds=1, methods=("qk-fedavg",))},
)  # fmt: skip


@pytest.fixture
def stubbed(monkeypatch):
    """What the stubs were handed: the starts, the cells' configs and starts, the plots' paths."""
    seen = {"starts": [], "cells": [], "plots": []}

    def start(name, protocol, dataset, folder, progress, seed=0):
        seen["starts"].append((folder, seed))
        return folder / "model.pt"

    def cell(cfg, start, *rest):
        seen["cells"].append((cfg, start))
        return {"val_accuracy": 0.5, "val_loss": 1.0, "bytes_down": 1, "bytes_up": 1, "rounds": []}

    monkeypatch.setattr(federated, "pretrained_start", start)
    monkeypatch.setattr(federated, "federated_cell", cell)
    monkeypatch.setattr(federated, "plot_federated", lambda cells, title, path, *rest: seen["plots"].append(path))
    return seen


def test_every_seed_has_its_start_samples_split_and_folder(stubbed, tmp_path):
    data = make_dataset(tmp_path)[2]
    results = run_federated_experiment(PRESET, ["lenet5"], data, tmp_path / "out", seeds=(0, 1))

    assert [c["seed"] for c in results["cells"]] == [0, 1]
    assert stubbed["starts"] == [(tmp_path / "out" / "lenet5" / f"seed{s}" / "pretrain", s) for s in (0, 1)]
    for seed, (cfg, start) in enumerate(stubbed["cells"]):
        assert (cfg.seed, cfg.subset_seed, cfg.partition_seed) == (seed, seed, seed)
        assert start == tmp_path / "out" / "lenet5" / f"seed{seed}" / "pretrain" / "model.pt"
    assert [p.name for p in stubbed["plots"]] == ["federated_lenet5_K2.png", "federated_lenet5_K2_seed1.png"]
    assert {"seed", "clients", "method"} <= set(results["cells"][1])

    again = run_federated_experiment(PRESET, ["lenet5"], data, tmp_path / "out", seeds=(0, 1))
    assert again["cells"] == results["cells"] and len(stubbed["cells"]) == 2  # both read from the cache


def test_a_seeds_start_is_that_seeds_pre_training(monkeypatch, tmp_path):
    handed = []
    monkeypatch.setattr(federated, "cached_cell", lambda folder, run, key, cfg: handed.append((key, cfg)))
    federated.pretrained_start("lenet5", PRESET.models["lenet5"], None, tmp_path, False, seed=2)
    key, cfg = handed[0]
    assert key == {"model": "lenet5", "seed": 2} and (cfg.seed, cfg.subset_seed) == (2, 2)
