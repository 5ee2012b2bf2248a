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
        model: any torch.fx-traceable module whose every operation is affine in its input except
            piecewise-linear activations (the list is in docs/design.md) and max pooling; anything else is
            refused with a `DecouplingError` naming the node and its place in the source. It is not modified:
            both halves are copies. Optional `forward` arguments are fixed at their defaults. The estimator's
            `training` flag is the model's; the selector is always in eval mode.
        pooling: "live" keeps max pooling as is (the paper's setup); "frozen" makes its switches part of the
            SK, so the estimator is exactly affine in its input for a fixed pattern.
        leaf_modules: module types fx should not trace into. skqk cannot look inside them: passing one vouches
            that it is affine in its input (a leaf that holds a gate or a non-affine torch.nn module is refused).

    Returns:
        ``(selector, estimator)``: ``selector(*inputs)`` is the batch's `Pattern`; ``estimator(*inputs,
        pattern)`` the output.

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

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.estimator(*inputs, self.selector(*inputs))

    @torch.no_grad()
    def predict(self, *inputs: Tensor) -> Tensor:
        """Predicted class of every sample of the batch."""
        return self(*inputs).argmax(dim=1)


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
    if len(decoupled.estimator.inputs) != 1:
        raise ValueError(f"linear_map takes models of one input; this one has {decoupled.estimator.inputs}")
    sample = x.detach().reshape(1, *x.shape[1:] if x.dim() > 1 and x.shape[0] == 1 else x.shape)
    pattern = decoupled.selector(sample)

    def output(flat: Tensor) -> Tensor:
        return decoupled.estimator(flat.view_as(sample), pattern).flatten()

    A = torch.autograd.functional.jacobian(output, sample.flatten())
    c = output(torch.zeros_like(sample.flatten())).detach()
    return A, c
