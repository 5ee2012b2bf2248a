"""Trained networks for the benchmark: what a user re-trains is a trained network, whose dead units (and so what
`skqk.pipeline.prune` removes) differ from a randomly initialised one's.

Each zoo model is trained once on real data by Phase 1 (`skqk.pipeline.train.train`, the same code as ``skqk
train``) and cached in a folder named after its configuration; later benchmarks reuse it (a killed training
resumes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from skqk.data import Dataset
from skqk.pipeline.config import TrainConfig

# samples, epochs of Phase 1 per model: a few minutes each on one core, past AlexNet's initial plateau
TRAINING = {"lenet5": (2048, 20), "vgg8": (2048, 10), "alexnet": (2048, 15)}


def training_config(model: str) -> TrainConfig:
    samples, epochs = TRAINING.get(model, (2048, 10))
    return TrainConfig(model=model, samples=samples, epochs=epochs, eval_samples=1000)


def trained_checkpoint(model: str, dataset: Dataset, cache_dir: Path, log: Callable[[str], None]) -> Path:
    """model.pt of `model` trained on `dataset` by `training_config`, from the cache or trained now."""
    from skqk.pipeline.train import train

    cfg = training_config(model)
    key = hashlib.sha256(json.dumps({"config": cfg.to_dict(), "data": dataset.fingerprint}).encode()).hexdigest()[:12]
    out = Path(cache_dir) / "bench-trained" / f"{model}-{key}"
    if not (out / "model.pt").exists():
        log(f"{model}: training {cfg.epochs} epochs on {cfg.samples} samples of {dataset.source} (cached in {out})")
    result = train(cfg, dataset, out, resume=True, progress=False)
    log(f"{model}: trained checkpoint, val accuracy {result.history[-1]['val_accuracy']:.4f} ({out})")
    return out / "model.pt"
