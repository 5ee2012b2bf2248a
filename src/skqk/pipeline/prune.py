"""Exact removal of dead units from the estimator for QK-only re-training.

A neuron of a ``Linear -> ReLU gate -> [Dropout] -> Linear`` chain that is inactive in the recorded pattern of
every training sample contributes nothing to any output or to any loss gradient during Phase 4: its gate is
always 0. So its row of the first Linear (and bias entry) and its column of the second Linear can be removed
from the computation. They are not thrown away: with weight decay and momentum, plain SGD still moves them (the
loss gradient is 0, the decay term is not), and a new sample whose pattern activates the neuron reads them. The
update of such a weight is the same linear recurrence for every element, ``v <- m v + wd w``,
``w <- w - lr v``, so `PrunedEstimator.restore` applies it in closed form (a 2 x 2 matrix power) for the number
of steps taken and writes the full-size parameters back: the result equals unpruned training up to
floating-point rounding (see tests/pipeline/test_prune.py). With dropout between the layers the pruned net draws fewer
random numbers, so training is equal in distribution rather than step for step.

Example:
    >>> pruned = prune_dead_units(estimator, store.read(indices))   # Phase 4 on stored samples only
    >>> ... train estimator with SGD(lr, momentum, weight_decay), counting steps ...
    >>> pruned.restore(steps, lr, momentum, weight_decay)          # full-size parameters again
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import Tensor, nn

from skqk.estimator import Estimator
from skqk.gates import ReluGate


@dataclass
class PrunedChain:
    site: str
    first: str  # module target of the Linear before the gate
    second: str  # module target of the Linear after it
    keep: Tensor  # int64 indices of the units kept
    dead: Tensor  # int64 indices of the units removed
    first_weight: Tensor  # full-size parameters when pruned
    first_bias: Tensor | None
    second_weight: Tensor


class PrunedEstimator:
    """What `prune_dead_units` removed from an estimator, to put it back with `restore`."""

    def __init__(self, estimator: Estimator, chains: list[PrunedChain]):
        self.estimator = estimator
        self.chains = chains

    @property
    def removed_units(self) -> dict[str, int]:
        return {c.site: int(c.dead.numel()) for c in self.chains}

    @torch.no_grad()
    def restore(self, steps: int, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        """Full-size Linear layers again: kept units from the trained (pruned) layers, removed ones advanced by
        `steps` SGD steps with zero loss gradient from their values at pruning time (fresh optimizer state)."""
        decay = _zero_gradient_factor(steps, lr, momentum, weight_decay)
        gm = self.estimator.net
        for c in reversed(self.chains):  # a Linear may end one chain and start the next: undo in reverse
            first, second = gm.get_submodule(c.first), gm.get_submodule(c.second)
            w1 = c.first_weight.clone() * decay
            w1[c.keep] = first.weight
            b1 = None
            if c.first_bias is not None:
                b1 = c.first_bias.clone() * decay
                b1[c.keep] = first.bias
            w2 = c.second_weight.clone() * decay
            w2[:, c.keep] = second.weight
            _set_module(gm, c.first, _linear(w1, b1))
            _set_module(gm, c.second, _linear(w2, second.bias))
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target is torch.index_select and node.meta.get("skqk_prune"):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
        for node in list(gm.graph.nodes):
            if node.op == "get_attr" and node.target.startswith("_skqk_keep_") and not node.users:
                gm.graph.erase_node(node)
        for c in self.chains:
            delattr(gm, _keep_name(c.site))
        gm.graph.lint()
        gm.recompile()
        self.chains = []


def dead_units(states: Tensor) -> Tensor:
    """bool (units,): units of a (N, units) gate site inactive for every sample."""
    return ~states.any(0)


def prune_dead_units(estimator: Estimator, pattern) -> PrunedEstimator:
    """Remove, in place, the neurons of `estimator`'s Linear-gate-[Dropout]-Linear chains that are inactive in
    every sample of `pattern` (the patterns of all the samples Phase 4 will train on)."""
    gm = estimator.net
    chains = []
    for node in list(gm.graph.nodes):
        chain = _chain_at(gm, node)
        if chain is None:
            continue
        first_node, site, state_node, second_node = chain
        dead = dead_units(pattern[site])
        if not dead.any() or dead.all():
            continue
        keep, dead_idx = torch.nonzero(~dead).flatten(), torch.nonzero(dead).flatten()
        first, second = gm.get_submodule(first_node.target), gm.get_submodule(second_node.target)
        chains.append(
            PrunedChain(
                site,
                first_node.target,
                second_node.target,
                keep,
                dead_idx,
                first.weight.detach().clone(),
                None if first.bias is None else first.bias.detach().clone(),
                second.weight.detach().clone(),
            )
        )
        with torch.no_grad():
            _set_module(
                gm, first_node.target, _linear(first.weight[keep], None if first.bias is None else first.bias[keep])
            )
            _set_module(gm, second_node.target, _linear(second.weight[:, keep], second.bias))
        gm.register_buffer(_keep_name(site), keep)
        with gm.graph.inserting_after(state_node):
            keep_node = gm.graph.get_attr(_keep_name(site))
        with gm.graph.inserting_after(keep_node):
            sliced = gm.graph.call_function(torch.index_select, (state_node, 1, keep_node))
        sliced.meta["skqk_prune"] = True
        node.replace_input_with(state_node, sliced)
    gm.graph.lint()
    gm.recompile()
    return PrunedEstimator(estimator, chains)


def _chain_at(gm: fx.GraphModule, gate: fx.Node):
    """(first Linear node, site, state node, second Linear node) if `gate` is a ReLU gate in such a chain."""
    if gate.op != "call_module" or type(gm.get_submodule(gate.target)) is not ReluGate:
        return None
    x, state = gate.args
    if not (isinstance(x, fx.Node) and x.op == "call_module" and type(gm.get_submodule(x.target)) is nn.Linear):
        return None
    if len(x.users) != 1 or not (state.op == "call_function" and state.target is operator.getitem):
        return None
    cur = gate
    while len(cur.users) == 1:
        user = next(iter(cur.users))
        if user.op == "call_module" and type(gm.get_submodule(user.target)) is nn.Dropout and user.args[0] is cur:
            cur = user
            continue
        if user.op == "call_module" and type(gm.get_submodule(user.target)) is nn.Linear and user.args[0] is cur:
            return x, state.args[1], state, user
        return None
    return None


def _zero_gradient_factor(steps: int, lr: float, momentum: float, weight_decay: float) -> float:
    """w_T / w_0 after `steps` PyTorch SGD steps with zero loss gradient and a fresh momentum buffer."""
    m = torch.tensor([[1 - lr * weight_decay, -lr * momentum], [weight_decay, momentum]], dtype=torch.float64)
    state = torch.linalg.matrix_power(m, steps) @ torch.tensor([1.0, 0.0], dtype=torch.float64)
    return float(state[0])


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _keep_name(site: str) -> str:
    return "_skqk_keep_" + site.replace(".", "_")
