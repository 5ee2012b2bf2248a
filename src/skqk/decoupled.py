"""Phase 2 as one call: split a trained ReLU network into path selector (SK) and estimator (QK).

Also the deployed form of the pair (`DecoupledModel`) and the per-sample "globally linear model" view
(`linear_map`) of the paper's section 3.1: for one sample's pattern the network is ``A @ x + c``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from skqk.estimator import Estimator, build_estimator
from skqk.selector import PathSelector, build_selector
from skqk.sites import Pooling


def decouple(
    model: nn.Module, pooling: Pooling = "live", leaf_modules: Iterable[type[nn.Module]] = ()
) -> tuple[PathSelector, Estimator]:
    """Build the path selector and the estimator from a trained ReLU network (paper, Phase 2).

    Args:
        model: any torch.fx-traceable module whose non-linearities are ReLU / LeakyReLU (and max pooling).
            It is not modified: both halves are copies.
        pooling: "live" keeps max pooling as is (the paper's setup); "frozen" makes its switches part of the
            SK, so the estimator is exactly linear in its input for a fixed pattern.
        leaf_modules: module types fx should not trace into (they must contain no ReLU).

    Returns:
        ``(selector, estimator)``: ``selector(x)`` is the batch's `Pattern`; ``estimator(x, pattern)`` the output.

    Example:
        >>> selector, estimator = skqk.decouple(model.eval())
        >>> torch.testing.assert_close(estimator(x, selector(x)), model(x))
    """
    leaves = tuple(leaf_modules)
    return build_selector(model, pooling, leaves), build_estimator(model, pooling, leaves)


class DecoupledModel(nn.Module):
    """Inference as the paper deploys it: the selector picks the active paths, the estimator computes."""

    def __init__(self, selector: PathSelector, estimator: Estimator):
        super().__init__()
        self.selector = selector
        self.estimator = estimator

    def forward(self, x: Tensor) -> Tensor:
        return self.estimator(x, self.selector(x))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Predicted class of every sample of the batch."""
        return self(x).argmax(dim=1)


def linear_map(decoupled: DecoupledModel, x: Tensor) -> tuple[Tensor, Tensor]:
    """The linear model a single sample's pattern selects: ``output == A @ x.flatten() + c``.

    Args:
        decoupled: in eval mode (dropout off, BatchNorm affine), built with ``pooling="frozen"`` if the net
            max-pools (live pooling is only piecewise linear).
        x: one sample, with or without a leading batch dimension of 1.

    Returns:
        ``(A, c)`` with ``A`` of shape (outputs, x.numel()) and ``c`` of shape (outputs,).
    """
    if decoupled.estimator.training:
        raise ValueError("linear_map needs eval mode (dropout and batch statistics are not linear): call .eval()")
    if decoupled.estimator.live_pooling:
        raise ValueError("linear_map needs decouple(model, pooling='frozen'): live max pooling is not linear")
    sample = x.detach().reshape(1, *x.shape[1:] if x.dim() > 1 and x.shape[0] == 1 else x.shape)
    pattern = decoupled.selector(sample)

    def output(flat: Tensor) -> Tensor:
        return decoupled.estimator(flat.view_as(sample), pattern).flatten()

    A = torch.autograd.functional.jacobian(output, sample.flatten())
    c = output(torch.zeros_like(sample.flatten())).detach()
    return A, c
