"""The activation pattern: a batch's structural knowledge (SK), one state per gate output.

A `Pattern` maps each gate site (the fx node name of a ReLU, LeakyReLU or frozen max-pool) to a batch-first
tensor of states:

* ``torch.bool`` for a two-piece gate (ReLU, LeakyReLU, PReLU, threshold, one-sided clamp, ``maximum``, a
  comparison): ``True`` where the unit is on its linear piece (a ReLU's input is positive), i.e. the derivative
  of the activation function that the paper's Fig. 2 calls the SK — 1 bit per unit;
* ``torch.uint8`` for a three-piece gate (ReLU6, Hardtanh, two-sided clamp): 0 below, 1 linear, 2 above — 2 bits;
* ``torch.uint8`` for a frozen max-pool site: the max-pooling switch, the offset of the winning element inside
  each pooling window (row-major), so the estimator can route the same input element without taking a max — 8 bits.

What a unit costs is carried per site (`Pattern.bits`), so a store can pack each site at its real cost.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

SWITCH_DTYPE = torch.uint8
SWITCH_BITS = 8


@dataclass(frozen=True)
class Flips:
    """Fraction of states that differ between two patterns of the same samples (the metric of Fig. 4)."""

    overall: float
    per_site: dict[str, float]


class Pattern(Mapping[str, Tensor]):
    """Activation pattern of a batch, keyed by gate site name; batch-first tensors.

    Indexing with a site name returns that site's states; indexing with an int, slice, index list or tensor
    selects samples and returns a new `Pattern`.

    Example:
        >>> p = selector(x)            # Pattern of a batch of 8
        >>> p["features.1"].shape      # bool mask of the first ReLU
        >>> p[:4].batch_size, p.gate_bits_per_sample
    """

    def __init__(self, states: Mapping[str, Tensor], bits: Mapping[str, int] | None = None):
        sizes = {t.shape[0] for t in states.values()}
        if len(sizes) > 1:
            raise ValueError(f"pattern sites disagree on the batch size: {sorted(sizes)}")
        for site, t in states.items():
            if t.dtype not in (torch.bool, SWITCH_DTYPE):
                raise ValueError(f"site {site!r}: states must be bool (gate) or uint8 (switch), got {t.dtype}")
        self._states = dict(states)
        given = dict(bits or {})
        self.bits = {s: given.get(s, 1 if t.dtype == torch.bool else SWITCH_BITS) for s, t in states.items()}
        for site, b in self.bits.items():
            if b not in (1, 2, SWITCH_BITS) or (b == 1) != (states[site].dtype == torch.bool):
                raise ValueError(f"site {site!r}: {b} bits per unit does not fit its {states[site].dtype} states")

    # -- mapping over sites ----------------------------------------------------------------------------------
    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return self._states[key]
            except KeyError:
                raise ValueError(unknown_name_message("gate site", key, list(self._states))) from None
        if isinstance(key, int):  # keep the batch dimension: a pattern of one sample
            key = [key]
        return Pattern({site: t[key] for site, t in self._states.items()}, self.bits)

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def __repr__(self) -> str:
        return f"Pattern(batch_size={self.batch_size}, sites={len(self)}, gate_bits={self.gate_bits_per_sample})"

    def __eq__(self, other) -> bool:
        if not isinstance(other, Pattern):
            return NotImplemented
        return list(self) == list(other) and all(torch.equal(self[s], other[s]) for s in self)

    __hash__ = None  # mutable tensors inside: not hashable

    @property
    def sites(self) -> list[str]:
        return list(self._states)

    @property
    def batch_size(self) -> int:
        return next(iter(self._states.values())).shape[0] if self._states else 0

    @property
    def gate_sites(self) -> list[str]:
        """Sites of piecewise-linear activations (two or three pieces), as opposed to max-pool switches."""
        return [s for s, b in self.bits.items() if b != SWITCH_BITS]

    @property
    def switch_sites(self) -> list[str]:
        return [s for s, b in self.bits.items() if b == SWITCH_BITS]

    @property
    def gate_bits_per_sample(self) -> int:
        """Bits of gate state per sample: one per unit of a two-piece gate, two per unit of a three-piece gate."""
        return sum(self._states[s][0].numel() * self.bits[s] for s in self.gate_sites) if self.batch_size else 0

    @property
    def switches_per_sample(self) -> int:
        """Number of max-pooling switches per sample (0 unless pooling is frozen)."""
        return sum(self._states[s][0].numel() for s in self.switch_sites) if self.batch_size else 0

    # -- batch operations ------------------------------------------------------------------------------------
    @staticmethod
    def cat(patterns: Sequence[Pattern]) -> Pattern:
        """Concatenate patterns of the same sites along the batch dimension."""
        if not patterns:
            raise ValueError("Pattern.cat needs at least one pattern")
        sites = patterns[0].sites
        for p in patterns[1:]:
            if p.sites != sites:
                raise ValueError("Pattern.cat: patterns have different sites")
        return Pattern({s: torch.cat([p[s] for p in patterns]) for s in sites}, patterns[0].bits)

    def to(self, device) -> Pattern:
        return Pattern({s: t.to(device, non_blocking=True) for s, t in self._states.items()}, self.bits)

    # -- statistics ------------------------------------------------------------------------------------------
    def active_fraction(self) -> dict[str, float]:
        """Per gate site, the fraction of units on the linear piece (active) over the whole batch."""
        return {s: (self._states[s] == 1).float().mean().item() for s in self.gate_sites}

    def flips(self, other: Pattern) -> Flips:
        """Fraction of states that differ from `other` (same samples), overall and per site.

        Every gate bit and every pooling switch counts as one state; `overall` weighs sites by their size.
        """
        if self.sites != other.sites:
            raise ValueError("flips: the patterns have different sites (built from different networks?)")
        changed = total = 0
        per_site = {}
        for s in self.sites:
            a, b = self._states[s], other[s]
            if a.shape != b.shape:
                raise ValueError(f"flips: site {s!r} has shape {tuple(a.shape)} vs {tuple(b.shape)}")
            n_changed = (a != b).sum().item()
            per_site[s] = n_changed / max(a.numel(), 1)
            changed += n_changed
            total += a.numel()
        return Flips(overall=changed / max(total, 1), per_site=per_site)


def unknown_name_message(what: str, name: str, choices: Sequence[str]) -> str:
    """One-line error for a wrong name (site, model, ...), with the closest real names as a hint."""
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f"; known: {', '.join(list(choices)[:8])}"
    return f"unknown {what} {name!r}{hint}"
