"""Evaluation of a QK run without its selector: the frozen SK's patterns of the validation samples, recorded once.

A QK run's selector never changes between SK refreshes, so neither do its patterns of the fixed validation
samples: recorded once per SK (keyed by the selector's fingerprint, so a refreshed SK is recorded again), the
evaluation after every epoch runs the estimator alone. Exact: the very patterns a live selector pass gives, so the
very same outputs and metrics. Held in memory bit-packed as a pattern store packs them (1 bit per gate unit).

Example:
    >>> validation = RecordedValidation(decoupled, dataset, limit=2000)
    >>> validation()  # == evaluate(decoupled, dataset, 2000); the selector runs only the first time
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from skqk.data import Dataset, batches
from skqk.decoupled import DecoupledModel
from skqk.patterns import Pattern
from skqk.pipeline import distributed
from skqk.pipeline.loop import evaluate, validation_indices
from skqk.selector import PathSelector
from skqk.store.format import pack, unpack


class RecordedPatterns:
    """`selector`'s patterns of test samples `indices`, recorded once, bit-packed in memory; ``read(idx)`` gives
    those of any of them, bit-exact."""

    def __init__(self, selector: PathSelector, dataset: Dataset, indices: Tensor, batch_size: int = 1000):
        self.fingerprint = selector.fingerprint
        device = next(selector.parameters(), torch.empty(0)).device
        self._position = torch.full((len(dataset.test),), -1, dtype=torch.int64)
        self._position[indices] = torch.arange(len(indices))
        parts: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for x, _, _ in batches(dataset.test, dataset, indices, batch_size):
                pattern = selector(x.to(device)).to("cpu")
                for site, states in pattern.items():
                    parts.setdefault(site, []).append(pack(_rows(states), _width(states)))
                self._shapes = {site: (t.shape[1:], t.dtype) for site, t in pattern.items()}
                self._bits = pattern.bits
        self._packed = {site: np.concatenate(p) for site, p in parts.items()}

    def read(self, idx: Tensor) -> Pattern:
        rows = self._position[idx]
        if (rows < 0).any():
            raise ValueError(f"{int((rows < 0).sum())} of the {len(idx)} test samples were not recorded")
        rows = rows.numpy()
        states = {}
        for site, packed in self._packed.items():
            shape, dtype = self._shapes[site]
            width = 1 if dtype == torch.bool else 8
            values = torch.from_numpy(unpack(packed[rows], width, shape.numel()))
            states[site] = values.view(dtype).view(len(rows), *shape)
        return Pattern(states, self._bits)


def _rows(states: Tensor) -> np.ndarray:
    return states.contiguous().view(torch.uint8).reshape(len(states), -1).numpy()


def _width(states: Tensor) -> int:
    """Bits per unit when packed: 1 for bool states, 8 for uint8 ones (switches, three-piece gates)."""
    return 1 if states.dtype == torch.bool else 8


class RecordedValidation:
    """The validation metrics of `decoupled` after every epoch (``validation()``), from the patterns its selector
    gave the validation samples the first time, recorded again whenever the selector's fingerprint changes (an SK
    refresh). `prepare` turns a batch's `Pattern` into what the estimator is called with (the step's dtype and
    layout, `skqk.pipeline.retrain.for_step`)."""

    def __init__(
        self,
        decoupled: DecoupledModel,
        dataset: Dataset,
        limit: int = 0,
        prepare: Callable[[Pattern], object] = lambda pattern: pattern,
    ):
        self.decoupled, self.dataset, self.limit, self.prepare = decoupled, dataset, limit, prepare
        self.recorded: RecordedPatterns | None = None

    def patterns(self) -> RecordedPatterns:
        """The current selector's recorded patterns (recorded now if it is another SK than last time)."""
        selector = self.decoupled.selector
        if self.recorded is None or self.recorded.fingerprint != selector.fingerprint:
            share = distributed.current().share(validation_indices(self.dataset, self.limit))
            self.recorded = RecordedPatterns(selector, self.dataset, share)
        return self.recorded

    def __call__(self) -> dict[str, float]:
        recorded = self.patterns()
        device = next(self.decoupled.estimator.parameters()).device

        def forward(x: Tensor, idx: Tensor) -> Tensor:
            return self.decoupled.estimator(x, self.prepare(recorded.read(idx).to(device)))

        return evaluate(self.decoupled.estimator, self.dataset, self.limit, sharded=True, forward=forward)
