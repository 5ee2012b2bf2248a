"""The analytic solve on a time-ordered regression table (an mlp, no images): adding a chunk equals one solve of
the same rows, the head fits the standardised target (least squares, the loss training uses), and the
cross-entropy solve is refused for regression."""

import pytest
import torch

from skqk.analytic import SolveConfig, solve, update
from skqk.data import Dataset, TableData
from skqk.pipeline.config import TrainConfig
from skqk.pipeline.loop import evaluate
from skqk.pipeline.record import record_from_checkpoint
from skqk.pipeline.train import train


def series(n: int, seed: int) -> TableData:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    y = 3 * x[:, 0].clamp_min(0) - x[:, 1] + 0.1 * torch.randn(n, generator=generator) + 5
    return TableData(x, y, [], ["a", "b", "c"], ordered=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    data = Dataset.from_splits(series(120, 0), series(40, 1), "table series (regression)")
    cfg = TrainConfig(model="mlp", model_kwargs={"widths": [16]}, samples=60, epochs=2, batch_size=20)
    train(cfg, data, root / "pre", progress=False)
    record_from_checkpoint(root / "pre" / "model.pt", data, 120, root / "store", pooling="frozen", progress=False)
    return data, root


def head(result) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in result.decoupled.estimator.parameters()][-2:])


def test_adding_a_chunk_of_rows_equals_one_solve_of_them_and_fits_the_target(setup):
    data, root = setup
    pre, store = root / "pre" / "model.pt", root / "store"
    first = solve(SolveConfig(samples=60, batch_size=30), pre, data, store, root / "a", progress=False)
    added = update(root / "a", data, store, root / "b", add=(60, 120), progress=False)
    joint = solve(SolveConfig(samples=120, batch_size=30), pre, data, store, root / "joint", progress=False)

    assert ((head(added) - head(joint)).norm() / head(joint).norm()).item() < 1e-6
    assert added.stats.samples == 120 and first.stats.samples == 60
    solved = evaluate(joint.decoupled, data)
    assert solved["val_rmse"] < 0.5 * data.test.labels.std().item()  # far better than predicting the mean


def test_the_cross_entropy_solve_is_refused_for_regression(setup):
    data, root = setup
    with pytest.raises(ValueError, match="cross-entropy solve is for classes"):
        solve(SolveConfig(samples=60, loss="ce"), root / "pre" / "model.pt", data, root / "store", root / "ce", False)
