"""Analytic QK: exact re-training of one block of the estimator from statistics that add up over samples.

An extension beside the paper's SGD re-training (issue 20; not in the paper). With the SK fixed, max-pooling
switches frozen and BatchNorm in eval mode, the estimator is affine in any one layer's parameters given the
others, so re-training that layer (the head by default) by ridge regression on one-hot targets needs only sums
over samples (`Statistics`): adding a chunk, merging copies, a federated round and forgetting a chunk are then
exact, and `solve_ridge` is a pure function of the sums, with λ chosen by generalised cross-validation.
Cross-entropy (`newton`) is exact per Newton iteration over the data it sees, but not additive over chunks; a head
too large for a dense Hessian takes its Newton steps by conjugate gradients on Hessian products.

    >>> stats = skqk.analytic.statistics(problem, block, (0, 4096))   # or Statistics.empty(...).update(...)
    >>> solution = skqk.analytic.solve_ridge(stats)                  # θ and the λ GCV chose
"""

from skqk.analytic.blocks import MAX_BLOCK_PARAMETERS, Block, BlockError, find_block, fixed_qk_fingerprint
from skqk.analytic.run import SolveConfig, SolveResult, merge_runs, open_problem, solve, statistics, update
from skqk.analytic.solve import (
    CrossEntropyCurvature,
    CrossEntropySums,
    NewtonResult,
    RidgeSolution,
    check_dense_hessian,
    cross_entropy_curvature,
    cross_entropy_sums,
    newton,
    solve_ridge,
)
from skqk.analytic.stats import Source, Statistics, StatisticsError

__all__ = [
    "MAX_BLOCK_PARAMETERS",
    "Block",
    "BlockError",
    "CrossEntropyCurvature",
    "CrossEntropySums",
    "NewtonResult",
    "RidgeSolution",
    "SolveConfig",
    "SolveResult",
    "Source",
    "Statistics",
    "StatisticsError",
    "check_dense_hessian",
    "cross_entropy_curvature",
    "cross_entropy_sums",
    "find_block",
    "fixed_qk_fingerprint",
    "merge_runs",
    "newton",
    "open_problem",
    "solve",
    "solve_ridge",
    "statistics",
    "update",
]
