"""The paper's four phases on your own data, in Python: train a network on the first n samples, record its
activation patterns (the SK), then re-train only the QK on n + m samples and compare with traditional re-training.

Here the data are a synthetic regression table wrapped as torch datasets; put your own
``torch.utils.data.Dataset`` of (tensor, target) pairs in their place (or `skqk.data.load_dataset("table.csv",
table=TableSpec(target="y"))` for a file). Run: ``python examples/retrain_own_data.py runs/example``.
"""

import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from skqk.data import from_torch
from skqk.pipeline.config import RetrainConfig, TrainConfig
from skqk.pipeline.record import record_from_checkpoint
from skqk.pipeline.retrain import retrain
from skqk.pipeline.train import train


def synthetic_table(samples: int = 1200, features: int = 8) -> tuple[TensorDataset, TensorDataset]:
    """A piecewise-linear target of a few features, plus noise: what a ReLU network can fit."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, features, generator=g)
    y = x[:, 0] - 2 * x[:, 1].clamp(min=0) + 0.5 * x[:, 2] * (x[:, 3] > 0) + 0.1 * torch.randn(samples, generator=g)
    split = samples * 5 // 6
    return TensorDataset(x[:split], y[:split]), TensorDataset(x[split:], y[split:])


def main(out: Path, n: int = 256, n_plus_m: int = 1000, epochs: int = 20, progress: bool = True) -> dict:
    data = from_torch(*synthetic_table(), task="regression")
    mlp = {"widths": [64, 32]}
    pre = train(
        TrainConfig(model="mlp", model_kwargs=mlp, samples=n, epochs=epochs), data, out / "pre", progress=progress
    )
    checkpoint = pre.run_dir / "model.pt"
    record_from_checkpoint(checkpoint, data, n_plus_m, out / "store", progress=progress)  # Phases 2-3: the SK
    rmse = {"pre-trained": pre.saved["val_rmse"]}
    for method in ("qk", "traditional"):  # Phase 4, and the baseline it is compared with
        cfg = RetrainConfig(samples=n_plus_m, epochs=epochs, method=method)
        run = retrain(cfg, checkpoint, data, out / method, store=out / "store", progress=progress)
        rmse[method] = run.saved["val_rmse"]
    print(", ".join(f"{name}: test RMSE {value:.3f}" for name, value in rmse.items()))
    return rmse


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/example"))
