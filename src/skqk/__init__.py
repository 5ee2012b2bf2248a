"""skqk: decouple structural (SK) and quantitative (QK) knowledge of ReLU networks and re-train only the QK.

The paper's objects are the top-level modules: `patterns` (the `Pattern` type), `gates`, `sites`, `selector` (the
SK), `estimator` (the QK) and `decoupled` (Phase 2: `decouple`). Around them: `pipeline` (configuration,
checkpoints, Phases 1, 3 and 4), `store` (the pattern store), `bench`, `models`, `data` and `experiments`.

The public names below are imported on first use (PEP 562), so ``import skqk`` and ``skqk --help`` do not pay for
torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {
    "DecoupledModel": "skqk.decoupled",
    "DecouplingError": "skqk.sites",
    "Estimator": "skqk.estimator",
    "Flips": "skqk.patterns",
    "PathSelector": "skqk.selector",
    "Pattern": "skqk.patterns",
    "PatternStore": "skqk.store",
    "StoreError": "skqk.store",
    "decouple": "skqk.decoupled",
    "linear_map": "skqk.decoupled",
    "list_sites": "skqk.sites",
}
_SUBPACKAGES = ("data", "models")

__all__ = [
    "DecoupledModel",
    "DecouplingError",
    "Estimator",
    "Flips",
    "PathSelector",
    "Pattern",
    "PatternStore",
    "StoreError",
    "decouple",
    "data",
    "linear_map",
    "list_sites",
    "models",
]

if TYPE_CHECKING:
    from skqk import data, models
    from skqk.decoupled import DecoupledModel, decouple, linear_map
    from skqk.estimator import Estimator
    from skqk.patterns import Flips, Pattern
    from skqk.selector import PathSelector
    from skqk.sites import DecouplingError, list_sites
    from skqk.store import PatternStore, StoreError


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"skqk.{name}")
    else:
        raise AttributeError(f"module 'skqk' has no attribute {name!r}")
    globals()[name] = value  # later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
