"""Checkpoints: atomic writes, safe loads, and the two kinds a run produces.

A *network* checkpoint holds an ordinary zoo network (Phase 1, traditional re-training). A *decoupled*
checkpoint holds the selector's weights (the SK, unchanged) and the estimator's weights (the QK), and evaluates
as the paper deploys it. Both are plain dicts of tensors and primitives, loaded with ``weights_only=True``, so
reading one runs no code. The model is recorded by name: a zoo name is rebuilt from the zoo; an import path
(``my_pkg.nets:build_net``, the user's code) only when the caller's `trust` names it (`skqk.models.resolve`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skqk import models
from skqk._errors import one_line
from skqk.atomic import atomic_write
from skqk.data.dataset import TableData
from skqk.decoupled import DecoupledModel
from skqk.estimator import Estimator, build_estimator
from skqk.selector import PathSelector, build_selector

FORMAT = "skqk-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or of another architecture (one-line message)."""


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write `checkpoint` to `path` atomically; a full disk is reported as such, naming `path`."""
    serialized = io.BytesIO()  # torch's writer turns a failed write into "enforce fail ... file write failed"
    torch.save({"format": FORMAT, "version": VERSION, **checkpoint}, serialized)
    with atomic_write(path) as f:
        f.write(serialized.getbuffer())


def load_torch_file(path: Path, error: type[Exception], label: str = "") -> Any:
    """The content of a torch file loaded as data (``weights_only``: never code), a missing or unreadable file
    raised as one line of `error`, the file named after `label`."""
    if not path.is_file():
        raise error(f"{label}{path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise error(f"{label}{path} is unreadable (truncated or corrupt?): {type(e).__name__}") from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    ckpt = load_torch_file(path, CheckpointError, "checkpoint ")
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
    if not isinstance(ckpt["model"], str) or not is_keywords(ckpt["model_kwargs"]):
        raise CheckpointError(
            f"{path} records its model as {ckpt['model']!r} {ckpt['model_kwargs']!r}, not a name and keyword arguments"
        )
    built_for = {k: ckpt["model_kwargs"].get(k) for k in fits or ()}  # the rest: an imported model's options
    if fits is not None and built_for != fits:
        raise CheckpointError(f"{path} was trained for {built_for}, the data is {fits}")
    return ckpt


def is_keywords(kwargs) -> bool:
    """Whether `kwargs` can be a model's recorded keyword arguments: identifiers, none of them `build`'s
    ``trust`` (a file never widens what the caller trusts)."""
    return isinstance(kwargs, dict) and all(isinstance(k, str) and k.isidentifier() and k != "trust" for k in kwargs)


def model_kwargs(dataset) -> dict:
    """What a checkpoint records about the data its network was built for (beside the model's options): the image
    shape or a table's feature count, and the outputs (one per class, or 1 for regression)."""
    if isinstance(dataset.train, TableData):
        return {"in_features": dataset.in_features, "num_classes": dataset.num_classes}
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


def build_network(
    ckpt: dict[str, Any], state_key: str | None = "state_dict", path: str = "checkpoint", trust: Collection[str] = ()
) -> nn.Module:
    """The network of `ckpt` with the weights under `state_key` (None: as built); a mismatch is a one-line error.

    The network is rebuilt by name: a zoo name, or an import path that `trust` names (`skqk.models.resolve`)."""
    if not is_keywords(ckpt["model_kwargs"]):
        raise CheckpointError(f"{path}: its model keyword arguments {ckpt['model_kwargs']!r} are not keywords")
    try:
        network = models.build(ckpt["model"], trust=trust, **ckpt["model_kwargs"])
    except models.UntrustedModelError as e:
        raise models.UntrustedModelError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild its network ({one_line(e)})") from None
    if state_key is None:
        return network
    check_dtypes(network, ckpt.get(state_key), path)
    try:
        network.load_state_dict(ckpt[state_key])
    except (RuntimeError, KeyError) as e:
        # torch's first line only says "Error(s) in loading state_dict for ...:"; the mismatches follow it
        lines = str(e).strip().splitlines()
        detail = one_line(" ".join(lines[1:] if len(lines) > 1 else lines), limit=300)
        raise CheckpointError(f"{path} does not fit the {ckpt['model']} architecture: {detail}") from None
    return network


def check_dtypes(network: nn.Module, state: object, path: str) -> None:
    """Refuse saved tensors of another dtype than the network's: `load_state_dict` would cast them silently (an
    int64 state truncated, a float64 one rounded), and the network would not be the one that was saved."""
    if not isinstance(state, dict):
        return  # load_state_dict reports it
    own = network.state_dict()
    for key, value in state.items():
        if key in own and isinstance(value, torch.Tensor) and value.dtype != own[key].dtype:
            raise CheckpointError(
                f"{path}: {key} is saved as {value.dtype}, the {type(network).__name__} holds {own[key].dtype}"
            )


def resolve_pooling(
    ckpt: dict[str, Any], requested: str | None = None, store_pooling: str | None = None, path: str = "checkpoint"
) -> str:
    """The one rule for the max-pooling mode of a checkpoint's selector/estimator pair.

    A decoupled checkpoint recorded its pooling with its SK, a pattern store recorded the pooling of the patterns
    it holds, and the user may ask for one (``--pooling``). Whichever of them say something must agree (a
    conflict is a one-line error, never a silent override); when none does, pooling is live, as in the paper.
    """
    said = {}
    if ckpt["kind"] == "decoupled":
        said[f"the checkpoint {path} holds {ckpt['pooling']}"] = ckpt["pooling"]
    if store_pooling is not None:
        said[f"the pattern store was recorded with {store_pooling}"] = store_pooling
    if requested is not None:
        said[f"--pooling is {requested}"] = requested
    if len(set(said.values())) > 1:
        raise CheckpointError(f"conflicting max-pooling modes: {', '.join(said)}; drop --pooling or make them agree")
    return next(iter(said.values()), "live")


def load_selector(
    ckpt: dict[str, Any], pooling: str, path: str = "checkpoint", trust: Collection[str] = ()
) -> PathSelector:
    """The path selector of a checkpoint: its network's SK, or a decoupled checkpoint's unchanged selector
    (checked against its recorded fingerprint)."""
    decoupled = ckpt["kind"] == "decoupled"
    selector = build_selector(
        build_network(ckpt, "selector_state" if decoupled else "state_dict", path, trust).eval(), pooling
    )
    if decoupled and selector.fingerprint != ckpt["selector_fingerprint"]:
        raise CheckpointError(f"{path}: its selector weights do not match their recorded fingerprint (corrupt?)")
    return selector


def load_estimator(
    ckpt: dict[str, Any], pooling: str, path: str = "checkpoint", trust: Collection[str] = ()
) -> Estimator:
    """The estimator of a checkpoint: its network's weights (a decoupled checkpoint's QK) without activations."""
    return build_estimator(build_network(ckpt, "state_dict", path, trust), pooling)


def load_decoupled(ckpt: dict[str, Any], path: str = "checkpoint", trust: Collection[str] = ()) -> DecoupledModel:
    """Selector from the stored SK weights, estimator from the stored QK weights, with the recorded pooling."""
    pooling = resolve_pooling(ckpt, path=path)
    return DecoupledModel(load_selector(ckpt, pooling, path, trust), load_estimator(ckpt, pooling, path, trust))


def load_for_evaluation(
    path: str | os.PathLike, fits: dict | None = None, trust: Collection[str] = ()
) -> tuple[nn.Module, dict[str, Any]]:
    """The module that maps images to logits, as the checkpoint's kind deploys it, in eval mode."""
    ckpt = load_model_checkpoint(path, fits)
    if ckpt["kind"] == "decoupled":
        return load_decoupled(ckpt, str(path), trust).eval(), ckpt
    return build_network(ckpt, path=str(path), trust=trust).eval(), ckpt
