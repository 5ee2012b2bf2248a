"""The path selector: a frozen copy of the trained network that holds the structural knowledge (SK).

Phase 2 of the paper builds it from the trained net; Phase 3 runs it once over all n+m samples to record their
activation patterns. It is never changed by re-training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import cached_property

import torch
import torch.fx as fx
from torch import Tensor, nn

from skqk.estimator import batch_size, check_inputs
from skqk.gates import MaxPoolGate, PoolWindow
from skqk.patterns import Pattern
from skqk.sites import DecouplingError, Pooling, Site, rewrite_gates, trace


class PathSelector(nn.Module):
    """Maps a batch to its activation `Pattern`; eval mode always, no trainable parameters.

    Example:
        >>> selector, estimator = skqk.decouple(model)
        >>> pattern = selector(x)          # Pattern keyed by site name
    """

    def __init__(self, net: fx.GraphModule, sites: list[Site], pooling: Pooling, inputs: list[str]):
        super().__init__()
        self.net = net
        self.sites = [s.name for s in sites]
        self.bits = {s.name: s.bits for s in sites}  # what a unit of each site costs in a stored pattern
        gates = {s.name: net.get_submodule(s.target) for s in sites}
        self.windows: dict[str, PoolWindow] = {n: g.window for n, g in gates.items() if isinstance(g, MaxPoolGate)}
        # site -> the frozen max-pool site that alone reads its output: only the selected elements' states matter
        self.read_through = {s.name: s.read_through for s in sites if s.read_through}
        self.pooling = pooling
        self.inputs = inputs
        self.discrete = list(net.meta.get("skqk_discrete", ()))  # inputs used as indices or masks
        self.tuples = list(net.meta.get("skqk_tuples", ()))  # inputs that are tuples of batches
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> PathSelector:
        """Stay in eval mode whatever is asked: the SK must not depend on dropout or batch statistics."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, *inputs: Tensor) -> Pattern:
        check_inputs(self.inputs, inputs, "path selector", discrete=self.discrete, tuples=self.tuples)
        states = self.net(*inputs)
        samples = batch_size(inputs)
        for site, t in states.items():
            if t.dim() == 0 or len(t) != samples:
                raise DecouplingError(
                    f"site {site!r} has {tuple(t.shape)} states for a batch of {samples} samples: a reshape or index "
                    f"before it moved the batch axis, and a pattern is stored per sample"
                )
        return Pattern(states, self.bits)

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the selector's architecture, pooling mode and weights: a pattern store records it so that
        patterns are never used with another selector."""
        h = hashlib.sha256(f"{self.pooling}|{self.sites}|{self.net.code}".encode())
        for name, t in self.net.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:32]


def build_selector(
    model: nn.Module, pooling: Pooling = "live", leaf_modules: Iterable[type[nn.Module]] = ()
) -> PathSelector:
    """Phase 2, SK half: a frozen copy of `model` whose output is the pattern of every gate site.

    Everything after the last site is dropped from the graph, since the pattern does not need it.
    """
    gm = trace(model, leaf_modules)
    inputs = [n.target for n in gm.graph.nodes if n.op == "placeholder" and not n.args]
    states: dict[str, fx.Node] = {}

    def record(graph: fx.Graph, site: Site, gate, operands: tuple) -> fx.Node:
        states[site.name] = graph.call_method("pattern_of", (graph.get_attr(site.target), *operands))
        return states[site.name]

    sites = rewrite_gates(gm, pooling, record)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    output.args = (states,)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return PathSelector(gm, sites, pooling, inputs)
