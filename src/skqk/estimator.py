"""The estimator: the quantitative knowledge (QK), a copy of the network without activation functions.

Each gate multiplies by the state the path selector recorded, so for a fixed pattern the estimator is linear
in its input and gradients flow through the same masks as in the original network. Phase 4 re-trains it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping

import torch.fx as fx
from torch import Tensor, nn

from skqk.fuse import fuse_relu_pool
from skqk.sites import Pooling, Site, has_max_pooling, rewrite_gates, trace


class Estimator(nn.Module):
    """`estimator(x, pattern) -> output`; same parameters as the source model (under ``.net``)."""

    def __init__(self, net: fx.GraphModule, sites: list[Site], pattern_arg: str):
        super().__init__()
        self.net = net
        self.sites = [s.name for s in sites]
        self._pattern_arg = pattern_arg
        self.live_pooling = has_max_pooling(net)

    def forward(self, x: Tensor, pattern: Mapping[str, Tensor]) -> Tensor:
        return self.net(x, **{self._pattern_arg: pattern})


def build_estimator(
    model: nn.Module, pooling: Pooling = "live", leaf_modules: Iterable[type[nn.Module]] = (), fuse: bool = True
) -> Estimator:
    """Phase 2, QK half: a copy of `model` whose every gate site reads its state from a pattern argument.

    With `fuse` (frozen pooling only), a ReLU gate feeding a max-pool gate is applied at the pooled size
    (`skqk.fuse.fuse_relu_pool`): the same values and gradients, fewer element-wise passes.
    """
    gm = trace(model, leaf_modules)
    graph = gm.graph
    last_placeholder = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(last_placeholder):
        pattern = graph.placeholder("pattern")

    def lookup(graph: fx.Graph, site: Site, x: fx.Node) -> fx.Node:
        return graph.call_function(operator.getitem, (pattern, site.name))

    sites = rewrite_gates(gm, pooling, lookup)
    if fuse and pooling == "frozen":
        fuse_relu_pool(gm)
    return Estimator(gm, sites, pattern.target)
