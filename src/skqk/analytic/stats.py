"""The sufficient statistics of a ridge solve of one block: sums over samples that add, subtract, save and load.

For a block whose inputs and downstream map are fixed (the SK, frozen pooling, BatchNorm in eval mode and every
other layer's QK), the network's output is affine in the block's parameters θ: ``output(x) = J(x) θ + r(x)``. The
least-squares fit of one-hot targets then needs only ``G = Σ Jᵀ J``, ``C = Σ Jᵀ (y − r)`` and ``Σ ‖y − r‖²`` —
sums over samples, so statistics of disjoint sample ranges add up to those of their union exactly (in exact
arithmetic; in float64 up to rounding), and a range's statistics subtract out of a sum they are part of
(scikit-learn's ``partial_fit``, with a downdate).

For the head (the layer whose output is the network's output) the outputs do not share parameters, so J is
``I_K ⊗ [zᵀ 1]`` with z the head's input: G is then the (d+1)² Gram of ``[z, 1]`` shared by the K classes and C
has one column per class. Other blocks keep one column and the full ``P × P`` Gram of their Jacobian.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from skqk.atomic import atomic_write
from skqk.pipeline.checkpoint import load_torch_file

FORMAT = "skqk-analytic-statistics"
VERSION = 1
Ranges = tuple[tuple[int, int], ...]  # half-open [a, b) positions in the subset order, sorted and disjoint


class StatisticsError(ValueError):
    """Statistics that cannot be combined, or a file that does not hold them (one-line message)."""


@dataclass(frozen=True)
class Source:
    """What the statistics are statistics of; sums mean something only when all of it agrees."""

    sk: str  # the selector's fingerprint: the patterns that gate every sample
    block: str  # the solved layer's module name ("classifier.4"), or several joined by "," (the last one is solved)
    loss: str  # "mse": ridge on one-hot targets
    qk: str  # fingerprint of every estimator parameter outside the block: the fixed inputs and downstream map
    data: str  # the dataset's content fingerprint
    subset: str  # the subset order's fingerprint: positions A:B name samples only within one order

    def differences(self, other: Source) -> list[str]:
        """The fields in which `other` differs, as the words an error names them with."""
        words = {"sk": "SK", "block": "block", "loss": "loss", "qk": "fixed QK", "data": "dataset"}
        words["subset"] = "subset order"
        return [words[name] for name in words if getattr(self, name) != getattr(other, name)]


@dataclass(frozen=True)
class Statistics:
    """Sums over the samples of `ranges` for the ridge solve of one block (`skqk.analytic.solve_ridge`).

    Create with `empty`, grow with `update`, combine with ``+`` (disjoint ranges) and ``−`` (a part of the
    ranges), keep with `save` / `load`.
    """

    source: Source
    gram: Tensor  # (P, P) float64: Σ Jᵀ J (the head: Σ [z 1]ᵀ [z 1])
    moment: Tensor  # (P, m) float64: Σ Jᵀ (y − r); the head: m = K columns, one per class
    target_sq: Tensor  # (m,) float64: Σ (y − r)² per column
    class_counts: Tensor  # (K,) int64: samples per class, to tell which classes the statistics have seen
    penalised: Tensor  # (P,) bool: parameters under the ridge penalty (weights); biases are not
    rows: int  # regression rows each sample gives every column: 1 for the head, K otherwise
    samples: int = 0
    ranges: Ranges = field(default=())

    @staticmethod
    def empty(
        source: Source, penalised: Tensor, columns: int, classes: int, rows: int, device: torch.device | None = None
    ) -> Statistics:
        """No samples yet, for `penalised.numel()` parameters and `columns` target columns, summed on `device`."""
        size = len(penalised)
        zeros = torch.zeros
        return Statistics(
            source,
            zeros(size, size, dtype=torch.float64, device=device),
            zeros(size, columns, dtype=torch.float64, device=device),
            zeros(columns, dtype=torch.float64, device=device),
            zeros(classes, dtype=torch.int64),
            penalised.bool().cpu(),
            rows,
        )

    def to(self, device: torch.device | str) -> Statistics:
        return replace(self, **{k: getattr(self, k).to(device) for k in ("gram", "moment", "target_sq")})

    def update(self, design: Tensor, residual: Tensor, labels: Tensor, positions: Tensor) -> Statistics:
        """These statistics plus those of one batch of samples, at `positions` of the subset order.

        Args:
            design: the head: (B, P) inputs ``[z 1]``; other blocks: (B, K, P) Jacobians. Any float dtype; summed
                in float64.
            residual: what θ must explain: the head: (B, K) one-hot targets; other blocks: (B, K) ``y − r``.
            labels: (B,) int64 classes.
            positions: (B,) int64 distinct positions of the samples, none held yet.

        Raises:
            StatisticsError: non-finite inputs (an estimator that overflows), a position given twice or held
                already (a sample is counted once; the same image at two positions is two samples).
        """
        positions = torch.as_tensor(positions, dtype=torch.int64).cpu()
        if not (len(design) == len(residual) == len(labels) == len(positions)):
            raise StatisticsError(f"a batch of {len(design)} samples with {len(positions)} positions")
        new = ranges_of(positions)
        clash = overlap(self.ranges, new)
        if sum(b - a for a, b in new) != len(positions) or clash:
            where = f"{clash[0]}:{clash[1]}" if clash else "in the batch"
            raise StatisticsError(f"duplicate samples: positions {where} are counted already")
        if not (torch.isfinite(design).all() and torch.isfinite(residual).all()):
            raise StatisticsError(
                f"non-finite block inputs for samples at positions {ranges_text(new)}: the estimator overflows on "
                "them (is the checkpoint diverged?)"
            )
        z = design.double().reshape(-1, design.shape[-1])  # head: B rows; other blocks: B·K rows
        e = residual.double().reshape(len(z), -1)
        return replace(
            self,
            gram=self.gram + z.T @ z,
            moment=self.moment + z.T @ e,
            target_sq=self.target_sq + e.square().sum(0),
            class_counts=self.class_counts + torch.bincount(labels.cpu(), minlength=len(self.class_counts)),
            samples=self.samples + len(design),
            ranges=union(self.ranges, new),
        )

    def __add__(self, other: Statistics) -> Statistics:
        self.check_combinable(other, "add")
        clash = overlap(self.ranges, other.ranges)
        if clash:
            raise StatisticsError(f"both hold samples {clash[0]}:{clash[1]}: a sample must be counted once")
        return self._with(other, 1)

    def __sub__(self, other: Statistics) -> Statistics:
        """Forget `other`'s samples (an exact downdate: these statistics are then those of the rest)."""
        self.check_combinable(other, "subtract")
        outside = difference(other.ranges, self.ranges)
        if outside:
            a, b = outside[0]
            raise StatisticsError(f"cannot forget samples {a}:{b}: they are not in the statistics")
        return self._with(other, -1)

    def _with(self, other: Statistics, sign: int) -> Statistics:
        ranges = union(self.ranges, other.ranges) if sign > 0 else difference(self.ranges, other.ranges)
        return replace(
            self,
            gram=self.gram + sign * other.gram,
            moment=self.moment + sign * other.moment,
            target_sq=(self.target_sq + sign * other.target_sq).clamp_min(0),
            class_counts=self.class_counts + sign * other.class_counts,
            samples=self.samples + sign * other.samples,
            ranges=ranges,
        )

    def check_combinable(self, other: Statistics, verb: str) -> None:
        differs = self.source.differences(other.source)
        if differs:
            raise StatisticsError(f"cannot {verb} statistics of another {', '.join(differs)}")
        if self.gram.shape != other.gram.shape or self.moment.shape != other.moment.shape or self.rows != other.rows:
            raise StatisticsError(f"cannot {verb} statistics of other shapes")

    # -- files -------------------------------------------------------------------------------------------------
    def state(self) -> dict:
        """Plain tensors and primitives, loadable with ``torch.load(weights_only=True)``."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "source": vars(self.source).copy(),
            "gram": self.gram.cpu(),
            "moment": self.moment.cpu(),
            "target_sq": self.target_sq.cpu(),
            "class_counts": self.class_counts.cpu(),
            "penalised": self.penalised.cpu(),
            "rows": self.rows,
            "samples": self.samples,
            "ranges": [list(r) for r in self.ranges],
        }

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Write atomically; `extra` (plain data: the solution's λ, the run's settings) is saved beside."""
        buffer = io.BytesIO()
        torch.save({**self.state(), "extra": extra or {}}, buffer)
        with atomic_write(path) as f:
            f.write(buffer.getbuffer())

    @staticmethod
    def from_state(state: dict, name: str = "statistics") -> Statistics:
        """Validate a loaded state into `Statistics`; anything malformed is one `StatisticsError`."""
        try:
            if state.get("format") != FORMAT or state.get("version") != VERSION:
                raise StatisticsError(f"{name} holds no skqk analytic statistics (version {VERSION})")
            stats = Statistics(
                Source(**{k: str(v) for k, v in state["source"].items()}),
                *(state[k] for k in ("gram", "moment", "target_sq", "class_counts", "penalised")),
                int(state["rows"]),
                int(state["samples"]),
                tuple((int(a), int(b)) for a, b in state["ranges"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, StatisticsError):
                raise
            raise StatisticsError(f"{name} is malformed ({type(e).__name__}: {e})") from None
        check_shapes(stats, name)
        return stats

    @staticmethod
    def load(path: str | os.PathLike) -> tuple[Statistics, dict]:
        """`Statistics` and the `extra` saved with them, loaded as data (never code)."""
        path = Path(path)
        state = load_torch_file(path, StatisticsError)
        if not isinstance(state, dict):
            raise StatisticsError(f"{path} holds no skqk analytic statistics")
        extra = state.get("extra", {})
        return Statistics.from_state(state, str(path)), extra if isinstance(extra, dict) else {}


def check_shapes(stats: Statistics, name: str) -> None:
    size = len(stats.penalised)
    expected = {
        "gram": ((size, size), torch.float64),
        "moment": ((size, stats.moment.shape[-1] if stats.moment.dim() == 2 else -1), torch.float64),
        "target_sq": ((stats.moment.shape[-1] if stats.moment.dim() == 2 else -1,), torch.float64),
        "class_counts": ((len(stats.class_counts),), torch.int64),
        "penalised": ((size,), torch.bool),
    }
    for key, (shape, dtype) in expected.items():
        value = getattr(stats, key)
        if not isinstance(value, Tensor) or tuple(value.shape) != shape or value.dtype != dtype:
            raise StatisticsError(f"{name}: {key} is not a {dtype} tensor of shape {shape}")
    if stats.samples < 0 or stats.rows <= 0 or sum(b - a for a, b in stats.ranges) != stats.samples:
        raise StatisticsError(f"{name}: its sample ranges do not hold its {stats.samples} samples")
    if union(stats.ranges, ()) != stats.ranges:
        raise StatisticsError(f"{name}: its sample ranges are not sorted and disjoint")


# -- sample ranges ---------------------------------------------------------------------------------------------
def union(first: Ranges, second: Ranges) -> Ranges:
    """Sorted, disjoint, with touching ranges joined (overlaps are the caller's to refuse)."""
    merged: list[list[int]] = []
    for a, b in sorted((*first, *second)):
        if a >= b:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return tuple((a, b) for a, b in merged)


def ranges_of(positions: Tensor) -> Ranges:
    """The runs of consecutive positions, as ranges (a position given twice is counted once: callers compare)."""
    p = torch.unique(positions)
    if not len(p):
        return ()
    breaks = (torch.diff(p) != 1).nonzero().squeeze(1) + 1
    starts = torch.cat([p[:1], p[breaks]]).tolist()
    ends = torch.cat([p[breaks - 1], p[-1:]]).add(1).tolist()
    return tuple(zip(starts, ends))


def total(parts: Sequence[Statistics]) -> Statistics:
    """The sum of several clients' or chunks' statistics."""
    if not parts:
        raise StatisticsError("no statistics to add up")
    result = parts[0]
    for part in parts[1:]:
        result = result + part
    return result


def aggregate(parts: Sequence[Statistics], expected: Source) -> Statistics:
    """What a federated server does with its clients' statistics: each must be of the `expected` source (the
    server's own SK, block, fixed QK, data and order), no two may hold one sample, and they are summed."""
    for i, part in enumerate(parts):
        differs = expected.differences(part.source)
        if differs:
            raise StatisticsError(f"client {i} sent statistics of another {', '.join(differs)}")
    return total(parts)


def intersection(first: Ranges, second: Ranges) -> Ranges:
    pieces = [(max(a, c), min(b, d)) for a, b in first for c, d in second]
    return union((), tuple(p for p in pieces if p[0] < p[1]))


def overlap(first: Ranges, second: Ranges) -> tuple[int, int] | None:
    """The first range of positions both hold, or None."""
    common = intersection(first, second)
    return common[0] if common else None


def difference(first: Ranges, second: Ranges) -> Ranges:
    """The positions of `first` that `second` does not hold."""
    result: list[tuple[int, int]] = []
    for a, b in first:
        start = a
        for c, d in second:
            if d <= start or c >= b:
                continue
            if c > start:
                result.append((start, c))
            start = max(start, d)
        if start < b:
            result.append((start, b))
    return union((), tuple(result))


def ranges_text(ranges: Ranges) -> str:
    return ",".join(f"{a}:{b}" for a, b in ranges) or "none"
