"""`skqk federated --method analytic` end to end on Flower's simulation engine (slow: it starts Ray): one round of
statistics gives the head the centralised solve of all clients' samples; cross-entropy runs one Newton step per
round; each client's upload is reported. On the tiny colour images with lenet5 (the simulated clients run in other
processes, which see the real zoo only)."""

import json

import pytest
import torch
from pipeline_helpers import data_args, main_in_process, make_dataset

from skqk.analytic import SolveConfig, solve
from skqk.pipeline.checkpoint import load_model_checkpoint
from skqk.pipeline.config import TrainConfig
from skqk.pipeline.record import record_from_checkpoint
from skqk.pipeline.train import train

pytestmark = pytest.mark.slow


def head(path) -> torch.Tensor:
    state = load_model_checkpoint(path)["state_dict"]
    return torch.cat([state["classifier.4.weight"].flatten(), state["classifier.4.bias"]]).double()


def test_one_round_of_client_statistics_solves_as_all_samples_at_once(tmp_path, capsys, flower):
    data_dir, cache_dir, data = make_dataset(tmp_path)
    pre = tmp_path / "pre"
    train(TrainConfig(model="lenet5", samples=60, epochs=2, batch_size=20, lr=0.05), data, pre, progress=False)
    record_from_checkpoint(pre / "model.pt", data, 90, tmp_path / "store", pooling="frozen", progress=False)
    central = solve(SolveConfig(samples=90), pre / "model.pt", data, tmp_path / "store", tmp_path / "central", False)
    args = ["federated", "--checkpoint", pre / "model.pt", "--clients", 2, "--samples", 90, "--method", "analytic"]
    args += ["--partition", "dirichlet", "--alpha", 0.01, *data_args(data_dir, cache_dir)]
    code, out, err = main_in_process(capsys, *args, "--out", tmp_path / "fed")
    assert code == 0, err
    assert "upload per client: " in out
    rows = [json.loads(line) for line in (tmp_path / "fed" / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1] and len(rows[1]["clients"]) == 2
    fed = head(tmp_path / "fed" / "model.pt")
    assert ((fed - head(central.run_dir / "model.pt")).norm() / fed.norm()).item() < 1e-4  # float32 features
    code, out, err = main_in_process(capsys, *args, "--loss", "ce", "--out", tmp_path / "fed_ce")
    assert code == 0, err
    record = load_model_checkpoint(tmp_path / "fed_ce" / "model.pt")["analytic"]["cross_entropy"]
    rows = (tmp_path / "fed_ce" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 + record["iterations"]  # the start, the statistics, one round per Newton pass
