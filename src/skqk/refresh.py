"""SK staleness and SK refresh: the structural knowledge re-training leaves behind, and re-initialising it.

QK-only re-training keeps the selector's SK frozen while the estimator's weights move. The network those weights
define, with its ReLUs back in, would choose its own activation patterns; where they differ from the frozen
ones the SK is *stale*. The paper's section 5 expects that "a re-initialization of the SK may be needed to
address obsolete knowledge": a *refresh* makes the current estimator's network the new selector, so the pair is
again a faithful decoupling of one network and staleness drops back to 0.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from skqk.estimator import Estimator
from skqk.patterns import Flips, Pattern
from skqk.selector import PathSelector, build_selector


def network_with_qk(network: nn.Module, estimator: Estimator) -> nn.Module:
    """The traditional network the estimator's current QK defines: a copy of `network` (the architecture the pair
    was decoupled from) carrying the estimator's weights and buffers, ReLUs in place, in eval mode.

    `network` itself is not modified; only its architecture matters.
    """
    return network_with_state(network, estimator.net.state_dict())


def network_with_state(network: nn.Module, state: dict) -> nn.Module:
    """A copy of `network` with the weights and buffers `state`, in eval mode (`network` is not modified)."""
    current = copy.deepcopy(network)
    current.load_state_dict(state)
    return current.eval()


def refresh_selector(network: nn.Module, estimator: Estimator, pooling: str | None = None) -> PathSelector:
    """SK refresh: a new path selector whose SK is the one the current QK chooses.

    Args:
        network: a module of the architecture the pair was decoupled from (its weights are ignored).
        estimator: the re-trained estimator; it is not modified and keeps training with the new selector.
        pooling: the selector's pooling mode; keep the old selector's (``selector.pooling``).

    Returns:
        A selector for which ``estimator(x, selector(x))`` equals ``network_with_qk(network, estimator)(x)``:
        the pair decouples the current network exactly, as right after Phase 2.

    Example:
        >>> selector = refresh_selector(model, estimator, selector.pooling)
        >>> sk_staleness(selector, estimator, model, x_val).overall
        0.0
    """
    return build_selector(network_with_qk(network, estimator), pooling or "live")


def patterns_of(selector: PathSelector, x: Tensor, batch_size: int = 500) -> Pattern:
    """The selector's pattern of `x`, computed in batches."""
    return Pattern.cat([selector(chunk) for chunk in x.split(batch_size)])


def staleness_probe(
    selector: PathSelector, network: nn.Module, x: Tensor, batch_size: int = 500
) -> Callable[[Estimator], Flips]:
    """`sk_staleness` against one frozen selector on fixed samples `x`, with the frozen patterns computed once:
    what a QK run calls after every epoch."""
    frozen = patterns_of(selector, x, batch_size)

    @torch.no_grad()
    def staleness(estimator: Estimator) -> Flips:
        current = refresh_selector(network, estimator, selector.pooling)
        current.to(x.device)
        return patterns_of(current, x, batch_size).flips(frozen)

    return staleness


def sk_staleness(selector: PathSelector, estimator: Estimator, network: nn.Module, x: Tensor) -> Flips:
    """How stale the frozen SK is: the fraction of gate states (and, with frozen pooling, max-pool switches) where
    the pattern the estimator's own network chooses for `x` differs from the selector's, overall and per site.

    Measured on validation samples `x`. It is 0 right after decoupling and right after a refresh, and grows as
    QK-only re-training moves the weights away from the ones the SK was taken from.

    Args:
        selector: the frozen path selector.
        estimator: the (re-trained) estimator paired with it.
        network: a module of the architecture the pair was decoupled from (its weights are ignored).
        x: a batch of validation samples.
    """
    return staleness_probe(selector, network, x)(estimator)
