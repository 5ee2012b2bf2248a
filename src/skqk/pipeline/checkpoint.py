"""Checkpoints: atomic writes, safe loads (never executes code), and the two kinds a run produces.

A *network* checkpoint holds an ordinary zoo network (Phase 1, traditional re-training). A *decoupled*
checkpoint holds the selector's weights (the SK, unchanged) and the estimator's weights (the QK), and evaluates
as the paper deploys it. Both are plain dicts of tensors and primitives, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skqk import models
from skqk.atomic import atomic_write
from skqk.decoupled import DecoupledModel
from skqk.estimator import build_estimator
from skqk.selector import build_selector

FORMAT = "skqk-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or of another architecture (one-line message)."""


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    with atomic_write(path) as f:
        torch.save({"format": FORMAT, "version": VERSION, **checkpoint}, f)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt?): {type(e).__name__}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an skqk checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt.get('version')}, this skqk reads {VERSION}")
    return ckpt


MODEL_KEYS = {
    "network": ("model", "model_kwargs", "state_dict"),
    "decoupled": ("model", "model_kwargs", "state_dict", "selector_state", "selector_fingerprint", "pooling"),
}


def load_model_checkpoint(path: str | os.PathLike, fits: dict | None = None) -> dict[str, Any]:
    """`load_checkpoint` for a checkpoint that must hold a model (a run's model.pt, not its resume.pt).

    With `fits` (the data's ``in_channels``, ``image_size`` and ``num_classes``), a net trained for other data
    is refused here, in one line, instead of failing deep inside torch or scoring nonsense.
    """
    ckpt = load_checkpoint(path)
    kind = ckpt.get("kind")
    if kind not in MODEL_KEYS:
        hint = " (a run's resume state)" if "trainable" in ckpt else ""
        raise CheckpointError(f"{path} holds no model{hint}; pass the model.pt of a run")
    missing = [key for key in MODEL_KEYS[kind] if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is an incomplete {kind} checkpoint: it lacks {', '.join(missing)}")
    if fits is not None and ckpt["model_kwargs"] != fits:
        raise CheckpointError(f"{path} was trained for {ckpt['model_kwargs']}, the data is {fits}")
    return ckpt


def model_kwargs(dataset) -> dict:
    """What a checkpoint records about the data its network was built for."""
    return {"in_channels": dataset.in_channels, "image_size": dataset.image_size, "num_classes": dataset.num_classes}


def network_entry(name: str, model_kwargs: dict, network: nn.Module) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds a zoo network with its weights."""
    return {"kind": "network", "model": name, "model_kwargs": model_kwargs, "state_dict": network.state_dict()}


def decoupled_entry(name: str, model_kwargs: dict, selector_state: dict, decoupled: DecoupledModel) -> dict:
    return {
        "kind": "decoupled",
        "model": name,
        "model_kwargs": model_kwargs,
        "pooling": decoupled.selector.pooling,
        "selector_state": selector_state,
        "selector_fingerprint": decoupled.selector.fingerprint,
        "state_dict": decoupled.estimator.net.state_dict(),  # same keys as the network's
    }


def build_network(ckpt: dict[str, Any], state_key: str = "state_dict", path: str = "checkpoint") -> nn.Module:
    """The zoo network of `ckpt` with the weights under `state_key`; a mismatch is a one-line error."""
    try:
        network = models.build(ckpt["model"], **ckpt["model_kwargs"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild its network ({e})") from None
    try:
        network.load_state_dict(ckpt[state_key])
    except (RuntimeError, KeyError) as e:
        # torch's first line only says "Error(s) in loading state_dict for ...:"; the mismatches follow it
        lines = str(e).strip().splitlines()
        detail = " ".join(" ".join(lines[1:] if len(lines) > 1 else lines).split())
        detail = detail if len(detail) <= 300 else detail[:299] + "…"
        raise CheckpointError(f"{path} does not fit the {ckpt['model']} architecture: {detail}") from None
    return network


def load_decoupled(ckpt: dict[str, Any], path: str = "checkpoint") -> DecoupledModel:
    """Selector from the stored SK weights, estimator from the stored QK weights."""
    pooling = ckpt.get("pooling", "live")
    selector = build_selector(build_network(ckpt, "selector_state", path).eval(), pooling)
    if selector.fingerprint != ckpt["selector_fingerprint"]:
        raise CheckpointError(f"{path}: its selector weights do not match their recorded fingerprint (corrupt?)")
    estimator = build_estimator(build_network(ckpt, "state_dict", path), pooling)
    return DecoupledModel(selector, estimator)


def load_for_evaluation(path: str | os.PathLike, fits: dict | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The module that maps images to logits, as the checkpoint's kind deploys it, in eval mode."""
    ckpt = load_model_checkpoint(path, fits)
    if ckpt["kind"] == "decoupled":
        return load_decoupled(ckpt, str(path)).eval(), ckpt
    return build_network(ckpt, path=str(path)).eval(), ckpt
