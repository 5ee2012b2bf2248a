"""A reproduction's progress bars say which model, SK size n and N they are on."""

from types import SimpleNamespace

import torch
from torch.utils.data import TensorDataset

from skqk.data import from_torch
from skqk.experiments.fig5 import cached_cell
from skqk.pipeline.config import RetrainConfig, TrainConfig
from skqk.pipeline.loop import PROGRESS_LABEL, progress_label
from skqk.pipeline.train import train


def test_a_cell_runs_under_a_label_naming_its_model_n_and_N(tmp_path):
    seen = []

    def run(cell_dir):
        seen.append(PROGRESS_LABEL.get())
        metrics = {"epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0, "train_loss": 1.0, "seconds": 0.0}
        return SimpleNamespace(history=[metrics])

    key = {"model": "lenet5", "seed": 0, "n": 1024, "N": 4096, "method": "qk", "variant": "base", "pooling": "live"}
    cached_cell(tmp_path, run, key, RetrainConfig())
    assert seen == ["lenet5 seed=0 n=1024 N=4096 method=qk"]
    assert PROGRESS_LABEL.get() is None


def test_the_epoch_bar_shows_the_label(tmp_path, capsys):
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    data = from_torch(TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:]))
    cfg = TrainConfig(model="mlp", model_kwargs={"widths": [4]}, samples=30, epochs=1, batch_size=10)
    with progress_label("mlp seed=0 n=30"):
        train(cfg, data, tmp_path / "run", progress=True)
    assert "mlp seed=0 n=30" in capsys.readouterr().err
