"""skqk: decouple structural (SK) and quantitative (QK) knowledge of ReLU networks and re-train only the QK.

The paper's phases map to modules: `decoupled` (Phase 2: `decouple`), `selector` (the SK), `estimator` (the QK),
`patterns` (the `Pattern` type).
"""

from skqk import data, models
from skqk.decoupled import DecoupledModel, decouple, linear_map
from skqk.estimator import Estimator
from skqk.merge import MergeError, merge  # the function; its module stays importable as skqk.merge
from skqk.patterns import Flips, Pattern
from skqk.selector import PathSelector
from skqk.sites import DecouplingError, list_sites
from skqk.store import PatternStore, StoreError

__version__ = "0.1.0"

__all__ = [
    "DecoupledModel",
    "DecouplingError",
    "Estimator",
    "Flips",
    "MergeError",
    "PathSelector",
    "Pattern",
    "PatternStore",
    "StoreError",
    "decouple",
    "data",
    "linear_map",
    "list_sites",
    "merge",
    "models",
]
