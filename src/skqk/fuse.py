"""Exact rewrites of the estimator's graph that make Phase 4 steps cheaper.

`fuse_relu_pool`: with frozen pooling, a ReLU gate read only by a max-pool gate becomes one `ReluMaxPoolGate`
that works at the pooled size (a quarter of the elements for 2x2 pooling): the traditional network must take
the max over every window and apply its ReLU to every element; the estimator, whose switches and masks are
known in advance, only touches the elements the switches select.
"""

from __future__ import annotations

import torch.fx as fx

from skqk.gates import MaxPoolGate, ReluGate, ReluMaxPoolGate


def fuse_relu_pool(gm: fx.GraphModule) -> int:
    """Fuse every ``MaxPoolGate(ReluGate(x, m), s)`` whose ReLU output has no other reader; returns how many."""
    fused = 0
    for node in list(gm.graph.nodes):
        if not _is(gm, node, MaxPoolGate):
            continue
        relu = node.args[0]
        if not (isinstance(relu, fx.Node) and _is(gm, relu, ReluGate) and len(relu.users) == 1):
            continue
        target = f"{node.target}_with_relu"
        gm.add_submodule(target, ReluMaxPoolGate(gm.get_submodule(node.target)))
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(target, (relu.args[0], relu.args[1], node.args[1]))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        gm.graph.erase_node(relu)
        fused += 1
    if fused:
        gm.graph.lint()
        gm.recompile()
        gm.delete_all_unused_submodules()
    return fused


def _is(gm: fx.GraphModule, node: fx.Node, cls: type) -> bool:
    return node.op == "call_module" and type(gm.get_submodule(node.target)) is cls
