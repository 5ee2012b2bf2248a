"""Combining copies that share one SK: the paper's "combining multiple copies trained on different datasets".

Copies of one decoupled network re-trained on different data keep the same path selector, so they differ only
in their QK. Averaging their estimators keeps every copy's activation patterns valid for the result: the merged
estimator is still gated by the very selector each copy was trained with. Averaging ordinary networks instead
also moves the ReLUs' thresholds, so the paths the average takes are those of none of the copies.

Two ways to combine:

- ``average`` (`merge`): the weighted mean of the estimators' parameters, weighted by the samples each copy was
  trained on (FedAvg's weighting). BatchNorm running statistics are pooled as a mixture: weighted mean of the
  means, and for the variance the weighted mean of the variances plus the between-copy spread of the means.
- ``task-arithmetic`` (`task_arithmetic`, Ilharco et al. 2023): every copy starts from the same pre-trained QK,
  so ``merged = start + Σ λ_i (copy_i − start)``; λ is given or tuned on held-out samples (`tune_lambda`).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skqk.decoupled import DecoupledModel
from skqk.pipeline.checkpoint import (
    decoupled_entry,
    load_decoupled,
    load_estimator,
    load_model_checkpoint,
    load_selector,
    save_checkpoint,
)
from skqk.pipeline.rundir import file_sha256


class MergeError(ValueError):
    """Copies that cannot be combined (another SK, architecture or pooling; a traditional checkpoint)."""


def merge(copies: Sequence[DecoupledModel], weights: Sequence[float] | None = None) -> DecoupledModel:
    """The weighted average of the QK of copies that share one selector.

    Args:
        copies: decoupled networks with the same selector fingerprint (same architecture, pooling and SK).
        weights: one non-negative weight per copy, e.g. the number of samples each was trained on; None
            weighs the copies equally. Only their ratios matter.

    Returns:
        A new `DecoupledModel`: the shared selector and an estimator holding the averaged QK (BatchNorm running
        statistics pooled as a mixture). The copies are not modified.

    Example:
        >>> merged = skqk.combine([copy_a, copy_b], weights=[4096, 1024])
    """
    check_compatible(copies)
    w = normalized_weights(weights, len(copies))
    states = [c.estimator.net.state_dict() for c in copies]
    merged_state = average_states(states, w, batchnorm_layers(copies[0].estimator.net))
    return with_estimator_state(copies[0], merged_state)


def task_arithmetic(
    start: DecoupledModel,
    copies: Sequence[DecoupledModel],
    lambdas: float | Sequence[float],
    weights: Sequence[float] | None = None,
) -> DecoupledModel:
    """``start + Σ λ_i (copy_i − start)`` on the trained QK, for copies re-trained from the same start.

    BatchNorm running statistics are statistics of the data, not learned directions: they are pooled as in
    `merge`, weighted by `weights` (None: equally).

    Args:
        start: the decoupled network every copy was re-trained from (same selector).
        copies: the re-trained copies.
        lambdas: one λ for every copy, or one per copy. With one λ, ``1 / len(copies)`` is the unweighted average.
        weights: for the BatchNorm statistics only.
    """
    check_compatible([start, *copies])
    lam = [float(lambdas)] * len(copies) if isinstance(lambdas, (int, float)) else [float(x) for x in lambdas]
    if len(lam) != len(copies):
        raise MergeError(f"{len(lam)} lambdas for {len(copies)} copies")
    if not all(math.isfinite(x) for x in lam):
        raise MergeError(f"lambda must be finite, got {lam}")
    base = start.estimator.net.state_dict()
    states = [c.estimator.net.state_dict() for c in copies]
    batchnorm = batchnorm_layers(start.estimator.net)
    merged = average_states(states, normalized_weights(weights, len(copies)), batchnorm)
    statistics = {f"{m}.{b}" for m in batchnorm for b in ("running_mean", "running_var", "num_batches_tracked")}
    for key, value in base.items():
        if key in statistics or not value.is_floating_point():
            continue
        delta = sum(lam_i * (s[key].double() - value.double()) for lam_i, s in zip(lam, states))
        merged[key] = (value.double() + delta).to(value.dtype)
    return with_estimator_state(start, merged)


@torch.no_grad()
def tune_lambda(
    start: DecoupledModel,
    copies: Sequence[DecoupledModel],
    x: Tensor,
    y: Tensor,
    grid: Sequence[float],
    weights: Sequence[float] | None = None,
) -> tuple[float, DecoupledModel, list[dict]]:
    """Task arithmetic with the λ of `grid` that scores best on held-out samples `(x, y)`.

    The score is accuracy, ties broken by the lower cross-entropy. `(x, y)` must be samples none of the copies
    was trained on, and not the samples the result is reported on.

    Returns:
        ``(λ, merged, scores)``, scores holding ``{"lambda", "accuracy", "loss"}`` for every λ tried.
    """
    if not grid:
        raise MergeError("tuning λ needs at least one candidate value")
    scores, best = [], None
    for lam in grid:
        merged = task_arithmetic(start, copies, lam, weights).eval()
        logits = torch.cat([merged(chunk) for chunk in x.split(1000)]).float()
        score = {"lambda": lam, "accuracy": (logits.argmax(1) == y).float().mean().item()}
        score["loss"] = F.cross_entropy(logits, y).item()
        scores.append(score)
        if best is None or (score["accuracy"], -score["loss"]) > (best[0]["accuracy"], -best[0]["loss"]):
            best = (score, merged)
    return best[0]["lambda"], best[1], scores


def check_compatible(copies: Sequence[DecoupledModel], names: Sequence[str] | None = None) -> None:
    """Refuse copies that do not share one SK, naming the first one that differs and how."""
    if len(copies) < 2:
        raise MergeError(f"merging needs at least two copies, got {len(copies)}")
    names = list(names) if names is not None else [f"copy {i}" for i in range(len(copies))]
    first = copies[0]
    shapes = {k: v.shape for k, v in first.estimator.net.state_dict().items()}
    for name, other in zip(names[1:], copies[1:]):
        if other.selector.pooling != first.selector.pooling:
            raise MergeError(
                f"{name} was decoupled with {other.selector.pooling} pooling, {names[0]} with "
                f"{first.selector.pooling}: copies must share one SK"
            )
        if {k: v.shape for k, v in other.estimator.net.state_dict().items()} != shapes or (
            other.estimator.net.code != first.estimator.net.code
        ):
            raise MergeError(f"{name} has another architecture than {names[0]}")
        if other.selector.fingerprint != first.selector.fingerprint:
            raise MergeError(
                f"{name} has another SK than {names[0]} (selector fingerprint {other.selector.fingerprint[:12]} "
                f"vs {first.selector.fingerprint[:12]}): only copies re-trained from one selector can be merged"
            )
    for name, c in zip(names, copies):
        check_valid_qk(c.estimator.net, name)


def check_valid_qk(network: nn.Module, name: str) -> None:
    """Refuse a QK that would make the combination NaN: a non-finite value, or a negative BatchNorm variance
    (its normalisation takes the square root)."""
    for key, value in network.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise MergeError(f"{name} holds non-finite values in {key}: it cannot be combined")
    for layer in batchnorm_layers(network):
        if (network.get_buffer(f"{layer}.running_var") < 0).any():
            raise MergeError(f"{name} holds a negative BatchNorm variance ({layer}.running_var): it cannot be combined")


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    w = [float(x) for x in weights]
    if len(w) != count:
        raise MergeError(f"{len(w)} weights for {count} copies")
    if any(not 0 <= x < math.inf for x in w) or sum(w) <= 0:
        raise MergeError(f"weights must be non-negative and finite with a positive sum, got {w}")
    return [x / sum(w) for x in w]


def batchnorm_layers(network: nn.Module) -> set[str]:
    """Names of the BatchNorm layers of `network` that keep running statistics (state-dict prefixes)."""
    return {
        name
        for name, m in network.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }


def average_states(states: Sequence[dict[str, Tensor]], weights: Sequence[float], batchnorm: set[str]) -> dict:
    """Weighted mean of state dicts (weights summing to 1), in float64, each tensor back in its own dtype.

    For the BatchNorm layers named in `batchnorm`, the running statistics are those of the mixture of the
    copies' data: ``mean = Σ w_i mean_i`` and ``var = Σ w_i (var_i + (mean_i − mean)²)`` (law of total
    variance), and ``num_batches_tracked`` is the largest count. Other integer tensors must be equal.
    """
    merged: dict[str, Tensor] = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            merged[key] = sum(w * s[key].double() for w, s in zip(weights, states)).to(first.dtype)
        elif key.rsplit(".", 1)[0] in batchnorm and key.endswith("num_batches_tracked"):
            merged[key] = torch.stack([s[key] for s in states]).max()
        elif all(torch.equal(s[key], first) for s in states):
            merged[key] = first.clone()
        else:
            raise MergeError(f"the copies' integer tensor {key} differs and cannot be averaged")
    for layer in batchnorm:
        means = [s[f"{layer}.running_mean"].double() for s in states]
        variances = [s[f"{layer}.running_var"].double() for s in states]
        mean = sum(w * m for w, m in zip(weights, means))
        var = sum(w * (v + (m - mean).square()) for w, m, v in zip(weights, means, variances))
        merged[f"{layer}.running_var"] = var.to(states[0][f"{layer}.running_var"].dtype)
    return merged


def with_estimator_state(source: DecoupledModel, state: dict[str, Tensor]) -> DecoupledModel:
    """A new pair: `source`'s selector (frozen, shared) and a copy of its estimator holding `state`."""
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:  # finite copies combined with a huge λ or weight overflow
        raise MergeError(f"the combined QK is not finite (in {bad[0]}): choose a smaller --lambda")
    estimator = copy.deepcopy(source.estimator)
    estimator.net.load_state_dict(state)
    return DecoupledModel(source.selector, estimator)


# --- checkpoints ------------------------------------------------------------------------------------------------


def load_copies(
    paths: Sequence[str | os.PathLike], trust: Collection[str] = ()
) -> tuple[list[dict], list[DecoupledModel]]:
    """The QK checkpoints to merge, refused in one line when one cannot be merged with the first or is given
    twice (as another path, a link or a copy: it would count twice)."""
    ckpts = [load_model_checkpoint(p) for p in paths]
    seen: dict[object, str] = {}
    for path in paths:
        for key in (Path(path).resolve(), file_sha256(path)):
            if key in seen:
                raise MergeError(f"{path} and {seen[key]} are the same checkpoint: give each copy once")
            seen[key] = str(path)
    for path, ckpt in zip(paths, ckpts):
        if ckpt["kind"] != "decoupled":
            raise MergeError(
                f"{path} is a traditional (network) checkpoint: only QK checkpoints that share one SK can be merged"
            )
    for path, ckpt in zip(paths[1:], ckpts[1:]):
        if (ckpt["model"], ckpt["model_kwargs"]) != (ckpts[0]["model"], ckpts[0]["model_kwargs"]):
            raise MergeError(
                f"{path} holds a {ckpt['model']} {ckpt['model_kwargs']}, {paths[0]} a {ckpts[0]['model']} "
                f"{ckpts[0]['model_kwargs']}: copies must share one architecture"
            )
    copies = [load_decoupled(ckpt, str(path), trust) for path, ckpt in zip(paths, ckpts)]
    check_compatible(copies, [str(p) for p in paths])
    return ckpts, copies


def trained_samples(ckpt: dict, path: str | os.PathLike) -> int:
    """How many samples a QK checkpoint was trained on: a run's range ``sample_start .. samples - 1`` plus its
    replay buffer (`skqk.pipeline.retrain.training_indices`); what a merged one or a federated client records."""
    if "samples" in ckpt:
        samples = ckpt["samples"]
    else:
        config = ckpt.get("config") or {}
        counts = [config.get(k, 0) for k in ("samples", "sample_start", "replay")]
        samples = counts[0] - counts[1] + counts[2] if all(isinstance(c, int) for c in counts) else None
    if not isinstance(samples, int) or samples <= 0:
        raise MergeError(f"{path} records no number of training samples; pass --weights")
    return samples


def load_start(path: str | os.PathLike, pooling: str, trust: Collection[str] = ()) -> DecoupledModel:
    """The pre-trained start of task arithmetic: a network checkpoint (decoupled here) or a QK checkpoint."""
    ckpt = load_model_checkpoint(path)
    path = str(path)
    return DecoupledModel(load_selector(ckpt, pooling, path, trust), load_estimator(ckpt, pooling, path, trust))


ORDER_FIELDS = ("subset_seed", "balanced", "class_incremental", "chunk_samples")  # a run's sample permutation


def held_out_indices(paths: Sequence[str | os.PathLike], labels: Tensor, count: int) -> Tensor:
    """`count` training samples none of the copies was trained on, to tune λ on: the last `count` samples of the
    permutation (random, class-balanced or class-incremental) whose first `samples` each copy's configuration
    says it drew its range and replay buffer from.

    Refused when the copies do not record one permutation or when the samples they used leave fewer than `count`
    unseen.
    """
    from skqk.data import subset_indices

    configs = [load_model_checkpoint(p).get("config") or {} for p in paths]
    defaults = {"class_incremental": 0, "chunk_samples": 0}  # configurations saved before class-incremental order
    orders = {tuple({**defaults, **c}.get(k) for k in ORDER_FIELDS) for c in configs}
    used = [c.get("samples") for c in configs]
    if len(orders) != 1 or None in next(iter(orders)) or not all(isinstance(u, int) for u in used):
        raise MergeError("tuning λ needs copies whose configuration records one sample order; pass --lambda instead")
    seed, balanced, classes, chunk = orders.pop()
    total = len(labels)
    if not 0 < count <= total - max(used):
        raise MergeError(
            f"the copies were trained on up to {max(used)} of {total} samples; {count} held-out samples for tuning λ "
            f"do not fit (use --tune-samples <= {total - max(used)} or pass --lambda)"
        )
    return subset_indices(labels, total, seed, balanced, (classes, chunk) if classes else None)[-count:]


def held_out_samples(paths: Sequence[str | os.PathLike], dataset, count: int) -> tuple[Tensor, Tensor]:
    """The images (normalised) and labels of `held_out_indices`."""
    indices = held_out_indices(paths, dataset.train.labels, count)
    return dataset.inputs(dataset.train, indices), dataset.train.labels[indices]


def merge_checkpoints(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    weights: Sequence[float] | None = None,
    method: str = "average",
    start: str | os.PathLike | None = None,
    lambdas: float | Sequence[float] | None = None,
    tune: tuple[Tensor, Tensor, Sequence[float]] | None = None,
    replace: bool = False,
    trust: Collection[str] = (),
) -> dict:
    """`merge` or `task_arithmetic` of QK checkpoint files into a new QK checkpoint at `out` (written atomically,
    and only once every input was accepted).

    Args:
        paths: model.pt files of QK runs re-trained with one SK (or earlier merges).
        out: the merged checkpoint file; must not be one of `paths`, nor exist unless `replace`.
        weights: per copy; None weighs by the samples each was trained on.
        method: "average" or "task-arithmetic".
        start: task arithmetic: the checkpoint every copy was re-trained from.
        lambdas: task arithmetic: one λ, or one per copy.
        tune: task arithmetic without `lambdas`: held-out ``(x, y, grid)`` to choose λ from `grid`.
        replace: overwrite an existing `out` (never one of `paths`).
        trust: import paths of models that may be built (`skqk.models.resolve`); zoo names need none.

    Returns:
        What was written besides the weights: ``samples``, ``merged_from``, ``merge`` (method, weights, λ, scores).
    """
    out = Path(out)
    if any(out.resolve() == Path(p).resolve() for p in paths):
        raise MergeError(f"the output {out} is one of the inputs; choose another -o")
    if out.exists() and not replace:
        raise MergeError(f"{out} already exists; choose another -o, or pass --force to replace it")
    if method not in ("average", "task-arithmetic"):
        raise MergeError(f"method must be 'average' or 'task-arithmetic', got {method!r}")
    ckpts, copies = load_copies(paths, trust)
    if weights is None:
        weights = [trained_samples(c, p) for c, p in zip(ckpts, paths)]
    w = normalized_weights(weights, len(copies))
    info = {"method": method, "weights": w}
    if method == "average":
        merged = merge(copies, w)
    else:
        if start is None:
            raise MergeError("task arithmetic needs --start, the checkpoint every copy was re-trained from")
        pre = load_start(start, copies[0].selector.pooling, trust)
        check_compatible([copies[0], pre], [str(paths[0]), str(start)])
        if lambdas is not None:
            merged, info["lambda"] = task_arithmetic(pre, copies, lambdas, w), lambdas
        elif tune is not None:
            info["lambda"], merged, info["tuning"] = tune_lambda(pre, copies, *tune, weights=w)
        else:
            raise MergeError("task arithmetic needs --lambda, or held-out samples to tune it on")
    try:
        samples = sum(trained_samples(c, p) for c, p in zip(ckpts, paths))
    except MergeError:  # weighted by --weights: the copies need not record their samples
        samples = None
    record = {
        "samples": samples,
        "merged_from": [{"path": str(p), "sha256": file_sha256(p)} for p in paths],
        "merge": info,
    }
    first = ckpts[0]
    entry = decoupled_entry(first["model"], first["model_kwargs"], first["selector_state"], merged)
    save_checkpoint(out, {**entry, **record})
    return record
