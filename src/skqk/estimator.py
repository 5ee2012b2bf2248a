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
from skqk.gates import ReluGate
from skqk.linearity import DecouplingError
from skqk.sites import Pooling, Site, has_max_pooling, rewrite_gates, trace


class Estimator(nn.Module):
    """`estimator(*inputs, pattern) -> output`; same parameters as the source model (under ``.net``).

    `inputs` are the source's `forward` arguments that have no default (optional ones are fixed at their
    defaults when tracing). Its `training` flag is the source's: in train mode BatchNorm uses batch statistics
    and dropout drops, exactly as the source would, so the estimator is affine for a fixed pattern only in eval
    mode (the path selector is always in eval mode).
    """

    def __init__(self, net: fx.GraphModule, sites: list[Site], inputs: list[str]):
        super().__init__()
        self.net = net
        self.sites = [s.name for s in sites]
        self.inputs = inputs
        self.discrete = list(net.meta.get("skqk_discrete", ()))  # inputs used as indices or masks
        self.tuples = list(net.meta.get("skqk_tuples", ()))  # inputs that are tuples of batches
        self.live_pooling = has_max_pooling(net)
        self.training = net.training

    def forward(self, *inputs_and_pattern) -> Tensor:
        *inputs, pattern = inputs_and_pattern
        check_inputs(self.inputs, inputs, "estimator", " and then the pattern", self.discrete, self.tuples)
        return self.net(pattern, *inputs)


def check_inputs(
    names: list[str], given: tuple, who: str, then: str = "", discrete: Iterable[str] = (), tuples: Iterable[str] = ()
) -> None:
    """A call with the wrong number of inputs gets a clear error instead of fx's; an input the model uses as an
    index or mask (`discrete`) is fixed like the pattern only if it is an integer or bool tensor, and one the model
    only unpacks (`tuples`) must be a tuple: indexing a tensor by an int would pick a sample."""
    if len(given) != len(names) or isinstance(given and given[-1], Mapping):
        raise TypeError(
            f"the {who} takes the model's inputs {names}{then}; optional arguments of forward are fixed at their "
            f"defaults when decoupling"
        )
    for name, value in zip(names, given):
        if name in tuples and not isinstance(value, (tuple, list)):
            raise DecouplingError(
                f"input {name!r} is only unpacked by the model, so it is taken for a tuple of batches, and it is a "
                f"{type(value).__name__}: indexing a tensor by position picks a sample, not a batch"
            )
        if name in discrete and isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
            raise DecouplingError(
                f"input {name!r} is used as an index or a mask, which a pattern fixes only for integer or bool "
                f"tensors, and it is {value.dtype}: an input-dependent index is not affine"
            )


def build_estimator(
    model: nn.Module, pooling: Pooling = "live", leaf_modules: Iterable[type[nn.Module]] = (), fuse: bool = True
) -> Estimator:
    """Phase 2, QK half: a copy of `model` whose every gate site reads its state from a pattern argument.

    With `fuse` (frozen pooling only), a ReLU gate feeding a max-pool gate is applied at the pooled size
    (`skqk.fuse.fuse_relu_pool`): the same values and gradients, fewer element-wise passes.
    """
    gm = trace(model, leaf_modules)
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    with graph.inserting_before(placeholders[0]):  # first: the optional inputs after it keep their defaults
        pattern = graph.placeholder("pattern")

    def lookup(graph: fx.Graph, site: Site, gate, operands: tuple) -> fx.Node:
        return graph.call_function(operator.getitem, (pattern, site.name))

    sites = rewrite_gates(gm, pooling, lookup)
    if fuse and pooling == "frozen":
        fuse_relu_pool(gm)
    return Estimator(gm, sites, [p.target for p in placeholders if not p.args])


def batch_size(inputs) -> int:
    """The number of samples of a call: the length of its first tensor (inside a tuple input, too)."""
    for value in inputs:
        if isinstance(value, Tensor):
            return len(value)
        if isinstance(value, (tuple, list)) and value:
            return batch_size(value)
    raise TypeError("the model's inputs hold no tensor")


def mask_sites(estimator: Estimator) -> set[str]:
    """The sites whose states only ReLU gates read, as 0/1 masks they multiply by (``x * mask``): a step can be
    given them already as masks of its dtype (`skqk.pipeline.retrain.for_step`). The other gates select with
    their bool or uint8 states (``torch.where``, a gather) and keep them."""
    gm = estimator.net
    pattern = next(n for n in gm.graph.nodes if n.op == "placeholder")  # `build_estimator` puts it first
    readers: dict[str, list[bool]] = {}
    for node in pattern.users:
        if node.target is operator.getitem:
            readers[node.args[1]] = [
                u.op == "call_module" and type(gm.get_submodule(u.target)) is ReluGate and u.args[-1] is node
                for u in node.users
            ]
    return {site for site, by_relu in readers.items() if by_relu and all(by_relu)}
