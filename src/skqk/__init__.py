"""skqk: decouple structural (SK) and quantitative (QK) knowledge of ReLU networks and re-train only the QK.

The paper's objects are the top-level modules: `patterns` (the `Pattern` type), `gates`, `sites`, `selector` (the
SK), `estimator` (the QK) and `decoupled` (Phase 2: `decouple`). Around them: `pipeline` (configuration,
checkpoints, Phases 1, 3 and 4), `store` (the pattern store), `bench`, `models`, `data` and `experiments`;
`refresh` (SK staleness and refresh), `incremental` (data arriving in chunks) and `analytic` (exact re-training of
one block from statistics that add up over samples; not in the paper).
"""

import importlib
import os
import sys

__version__ = "0.1.0"

# Each public name and the module that defines it, imported on first use: ``import skqk`` loads no torch, so
# the command line starts at once and answers a Ctrl-C during its first seconds (importing torch) cleanly.
_PUBLIC = {
    "DecoupledModel": "skqk.decoupled",
    "DecouplingError": "skqk.sites",
    "Estimator": "skqk.estimator",
    "Flips": "skqk.patterns",
    "MergeError": "skqk.combine",
    "PathSelector": "skqk.selector",
    "Pattern": "skqk.patterns",
    "PatternStore": "skqk.store",
    "StoreError": "skqk.store",
    "analytic": "skqk.analytic",
    "decouple": "skqk.decoupled",
    "data": "skqk.data",
    "incremental": "skqk.incremental",
    "linear_map": "skqk.decoupled",
    "list_sites": "skqk.sites",
    "merge": "skqk.combine",
    "models": "skqk.models",
    "refresh_selector": "skqk.refresh",
    "sk_staleness": "skqk.refresh",
}

__all__ = list(_PUBLIC)


def _keep_the_current_directory_off_the_path() -> None:
    """`python -m skqk` and `python -m skqk.cli` import this package first, while Python has the current directory
    first on sys.path (and ``sys.argv[0] == "-m"``): a file there named like a module that Python or torch probe for
    and do not find (``org.py``, ``_winapi.py``) would run. Drop it; a ``--model`` import path still finds its own
    module there (`skqk.models.resolve` looks in the current directory for exactly that module)."""
    if sys.argv[:1] == ["-m"] and sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]


_keep_the_current_directory_off_the_path()


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'skqk' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if module.__name__ == f"skqk.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
