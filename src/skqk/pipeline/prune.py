"""Exact removal of dead units from the estimator for QK-only re-training.

In Phase 4 the SK is fixed: a unit whose ReLU gate is inactive in the recorded pattern of every training sample
(a neuron of a fully connected layer, or a convolution output channel inactive at every position) outputs 0 for
every sample Phase 4 trains on, so it contributes nothing to any output or loss gradient. Its producer's output
row (and bias entry) and its consumer's input columns can then be removed from the computation, for a chain

    producer (Linear | Conv2d) -> ReLU gate [fused with a frozen max-pool gate]
        -> [Dropout | MaxPool2d | max-pool gate]* -> [flatten] -> consumer (Linear | Conv2d)

(the gate's and the pooling gates' states are sliced with them). Batch norm between a convolution and its gate
stops a removal: in training mode it updates running statistics of the removed channel from inputs Phase 4 no
longer computes, which no closed form restores.

The removed weights are not thrown away: with weight decay and momentum, plain SGD still moves them (the loss
gradient is 0, the decay term is not), and a new sample whose pattern activates the unit reads them. Their update
is one linear recurrence for every element, ``v <- m v + wd w``, ``w <- w - lr v``, so `PrunedEstimator.restore`
applies it in closed form (a 2 x 2 matrix power) for the number of optimiser steps taken, from the weights *and*
momentum buffers they had when removed, and writes the full-size parameters and momentum buffers back: the result
equals unpruned training up to floating-point rounding (tests/pipeline/test_prune.py), so a run can prune and restore
around every epoch (evaluation, checkpoints and resume always see the full-size network). A dropout layer inside
a chain draws its random mask at the full width and slices it, so pruned training draws the same random numbers
as unpruned training, step for step.

Example:
    >>> active = active_units(store.read(idx) for idx in indices.split(1024))  # Phase 4's samples only
    >>> opt = torch.optim.SGD(estimator.parameters(), lr, momentum, weight_decay=wd)
    >>> pruned = prune_dead_units(estimator, active, opt)   # smaller layers; opt now updates them
    >>> ... train estimator with opt ...
    >>> pruned.restore()                                    # full-size parameters and momentum again
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import Tensor, nn

from skqk.estimator import Estimator
from skqk.gates import MaxPoolGate, ReluGate, ReluMaxPoolGate
from skqk.patterns import Pattern

_PASS_THROUGH = (nn.Dropout, nn.MaxPool2d, MaxPoolGate)  # act on each unit (channel) separately


@dataclass
class _Sliced:
    """One parameter cut along `dim` to `index`. `full` is the full-size parameter itself and `momentum` its
    momentum buffer: nothing writes them while the cut one trains, so their removed entries (`dead`) keep the
    values they had when cut, and `restore` writes the result back into them (no full-size copy is made)."""

    module: str
    name: str
    dim: int
    index: Tensor
    dead: Tensor
    full: nn.Parameter
    momentum: Tensor | None = None


@dataclass
class RemovedUnits:
    """The units of one gate site removed from the estimator."""

    site: str
    producer: str
    consumer: str
    keep: Tensor  # int64 indices of the units kept
    dead: Tensor  # int64 indices of the units removed
    sliced: list[_Sliced] = field(default_factory=list)
    dropouts: dict[str, nn.Dropout] = field(default_factory=dict)  # module target -> the original layer


class PrunedEstimator:
    """What `prune_dead_units` removed from an estimator, to put it back with `restore`."""

    def __init__(self, estimator: Estimator, removed: list[RemovedUnits], optimizer, hook):
        self.estimator = estimator
        self.removed = removed
        self.optimizer = optimizer
        self.steps = 0  # optimiser steps taken while pruned (counted by a hook on the optimiser)
        self._hook = hook

    @property
    def removed_units(self) -> dict[str, int]:
        return {r.site: int(r.dead.numel()) for r in self.removed}

    def _count_step(self, *_) -> None:
        self.steps += 1

    @torch.no_grad()
    def restore(self) -> None:
        """Full-size layers, optimiser state and graph again: kept units from the trained (pruned) layers,
        removed ones advanced by the zero-gradient SGD recurrence for `steps` steps."""
        if self.optimizer is None:
            raise RuntimeError("restore needs the optimizer that trained the pruned estimator (prune_dead_units)")
        self._hook.remove()
        gm = self.estimator.net
        for r in reversed(self.removed):  # a layer may consume one site and produce the next: undo in reverse
            for s in reversed(r.sliced):
                self._put_back(gm, s)
            for target, dropout in r.dropouts.items():
                _set_module(gm, target, dropout)
            delattr(gm, _keep_name(r.site))
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target is select_units:
                keep = node.args[1]
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                if not keep.users:
                    gm.graph.erase_node(keep)
        _order_state(self.optimizer)
        gm.graph.lint()
        gm.recompile()
        self.removed = []

    def _put_back(self, gm: fx.GraphModule, s: _Sliced) -> None:
        module = gm.get_submodule(s.module)
        param = getattr(module, s.name)
        group = _group_of(self.optimizer, param)
        (a, b), (c, d) = _zero_gradient_factors(self.steps, group)
        w0 = s.full.index_select(s.dim, s.dead)
        v0 = s.momentum.index_select(s.dim, s.dead) if s.momentum is not None else torch.zeros_like(w0)
        buffer = self.optimizer.state.get(param, {}).get("momentum_buffer")
        momentum = None
        if buffer is not None:
            momentum = s.momentum if s.momentum is not None else torch.empty_like(s.full)
            momentum.index_copy_(s.dim, s.dead, w0 * c + v0 * d).index_copy_(s.dim, s.index, buffer)
        s.full.index_copy_(s.dim, s.dead, w0 * a + v0 * b).index_copy_(s.dim, s.index, param)
        _swap_parameter(self.optimizer, group, param, s.full, momentum)
        setattr(module, s.name, s.full)
        _set_size(module)


def active_units(patterns: Pattern | Iterable[Pattern]) -> dict[str, Tensor]:
    """bool (units,) per ReLU gate site: whether the unit is active for at least one sample of `patterns` (a
    channel of a convolution site: at any position). A stream of batches keeps the memory of one batch."""
    ever: dict[str, Tensor] = {}
    for pattern in [patterns] if isinstance(patterns, Pattern) else patterns:
        for site in pattern.gate_sites:
            states = pattern[site].any(0)
            units = states.flatten(1).any(1) if states.dim() > 1 else states
            ever[site] = units if site not in ever else ever[site] | units
    return ever


def prune_dead_units(
    estimator: Estimator, active: Mapping[str, Tensor] | Pattern, optimizer: torch.optim.Optimizer | None = None
) -> PrunedEstimator:
    """Remove, in place, the units of `estimator` that are inactive for every sample Phase 4 trains on.

    `active`: `active_units` of the patterns of all those samples (or one `Pattern` of them all). With an
    `optimizer` (plain SGD over the estimator's parameters: momentum and weight decay allowed, no dampening or
    Nesterov), it is updated in place to train the smaller parameters, momentum buffers sliced with them, and
    `PrunedEstimator.restore` can put the full-size network back exactly.
    """
    if isinstance(active, Pattern):
        active = active_units(active)
    if optimizer is not None:
        _check_plain_sgd(optimizer)
    gm = estimator.net
    removed = []
    for node in list(gm.graph.nodes):
        chain = _chain_at(gm, node)
        if chain is None:
            continue
        site, producer, states, dropouts, consumer, flattened = chain
        if site not in active:
            continue
        alive = active[site]
        if alive.all() or not alive.any():
            continue
        keep, dead = torch.nonzero(alive).flatten(), torch.nonzero(~alive).flatten()
        removed.append(_remove(gm, site, keep, dead, producer, states, dropouts, consumer, flattened, optimizer))
    gm.graph.lint()
    gm.recompile()
    pruned = PrunedEstimator(estimator, removed, optimizer, None)
    if optimizer is not None:
        _order_state(optimizer)
        pruned._hook = optimizer.register_step_post_hook(pruned._count_step)
    return pruned


@contextlib.contextmanager
def dead_units_removed(
    estimator: Estimator, active: Mapping[str, Tensor], optimizer: torch.optim.Optimizer
) -> Iterator[PrunedEstimator]:
    """Inside the block `estimator` (and `optimizer`) train without the dead units; after it, also after an
    error, the full-size network is back, as unpruned training would have left it."""
    pruned = prune_dead_units(estimator, active, optimizer)
    try:
        yield pruned
    finally:
        pruned.restore()


def removal_report(estimator: Estimator, active: Mapping[str, Tensor]) -> dict[str, dict[str, int]]:
    """Per gate site with dead units: units, dead units, how many of them `prune_dead_units` removes (a dead unit
    stays when its chain is not removable, e.g. batch norm between the convolution and its gate) and the number
    of parameters that leaves out of training (producer rows and biases, consumer columns)."""
    gm = estimator.net
    chains = {c[0]: c for c in (_chain_at(gm, node) for node in gm.graph.nodes) if c is not None}
    report = {}
    for site, alive in active.items():
        dead = int((~alive).sum())
        if dead:
            removed = dead if site in chains and dead < alive.numel() else 0
            params = removed * _parameters_per_unit(gm, chains[site]) if removed else 0
            report[site] = {"units": alive.numel(), "dead": dead, "removed": removed, "parameters": params}
    return report


def _parameters_per_unit(gm: fx.GraphModule, chain) -> int:
    _, producer, _, _, consumer, _ = chain
    p, c = gm.get_submodule(producer.target), gm.get_submodule(consumer.target)
    per_row = p.weight[0].numel() + (1 if p.bias is not None else 0)
    return per_row + c.weight.numel() // p.weight.shape[0]


def _remove(gm, site, keep, dead, producer, states, dropouts, consumer, flattened, optimizer) -> RemovedUnits:
    """Slice one chain's parameters, states and dropouts to the kept units."""
    p_mod, c_mod = gm.get_submodule(producer.target), gm.get_submodule(consumer.target)
    block = c_mod.weight.shape[1] // p_mod.weight.shape[0] if flattened else 1
    columns = (keep.view(-1, 1) * block + torch.arange(block)).flatten()
    r = RemovedUnits(site, producer.target, consumer.target, keep, dead)
    cuts = [(producer.target, "weight", 0, keep), (consumer.target, "weight", 1, columns)]
    if p_mod.bias is not None:
        cuts.insert(1, (producer.target, "bias", 0, keep))
    with torch.no_grad():
        for target, name, dim, index in cuts:
            module = gm.get_submodule(target)
            param = getattr(module, name)
            buffer = optimizer.state.get(param, {}).get("momentum_buffer") if optimizer is not None else None
            dead_index = _complement(index, param.shape[dim])
            r.sliced.append(_Sliced(target, name, dim, index, dead_index, param, buffer))
            new = nn.Parameter(_in_layout_of(param.index_select(dim, index), param), requires_grad=param.requires_grad)
            if optimizer is not None:
                group = _group_of(optimizer, param)
                sliced = None if buffer is None else _in_layout_of(buffer.index_select(dim, index), buffer)
                _swap_parameter(optimizer, group, param, new, sliced)
            setattr(module, name, new)
            _set_size(module)
    gm.register_buffer(_keep_name(site), keep)
    for state in states:
        with gm.graph.inserting_after(state):
            keep_node = gm.graph.get_attr(_keep_name(site))
        with gm.graph.inserting_after(keep_node):
            sliced = gm.graph.call_function(select_units, (state, keep_node))
        for user in list(state.users):
            if user is not sliced:
                user.replace_input_with(state, sliced)
    width = len(keep) + len(dead)
    for target in dropouts:
        original = gm.get_submodule(target)
        r.dropouts[target] = original
        _set_module(gm, target, FullWidthDropout(original.p, keep, width))
    return r


def select_units(state: Tensor, keep: Tensor) -> Tensor:
    """The states of the kept units (dimension 1), in the memory layout `state` came in (channels-last masks
    stay channels-last, so the gate multiplies tensors of one layout; weights likewise)."""
    return _in_layout_of(state.index_select(1, keep), state)


def _in_layout_of(t: Tensor, like: Tensor) -> Tensor:
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    return t


class FullWidthDropout(nn.Module):
    """Dropout of the kept units of a pruned layer whose mask is drawn at the full width and then sliced: the
    same random numbers, in the same order, as the unpruned layer's dropout (CPU draws ``bernoulli_`` over a
    tensor of the input's shape), so pruned training follows unpruned training step for step."""

    def __init__(self, p: float, keep: Tensor, width: int):
        super().__init__()
        self.p, self.width = p, width
        self.register_buffer("keep", keep, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        shape = (x.shape[0], self.width, *x.shape[2:])
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        if self.p < 1:
            noise.div_(1 - self.p)
        return x * noise.index_select(1, self.keep)


def _chain_at(gm: fx.GraphModule, gate: fx.Node):
    """(site, producer node, state nodes, dropout targets, consumer node, flattened) if `gate` is the ReLU gate
    of a removable chain (see the module docstring), else None."""
    if gate.op != "call_module":
        return None
    kind = type(gm.get_submodule(gate.target))
    if kind not in (ReluGate, ReluMaxPoolGate):
        return None
    producer, states = gate.args[0], list(gate.args[1:])
    if not all(_is_state(s) for s in states):
        return None
    site = states[0].args[1]
    if not (isinstance(producer, fx.Node) and len(producer.users) == 1 and _is_layer(gm, producer)):
        return None
    dropouts, flattened, cur = [], False, gate
    while len(cur.users) == 1:
        user = next(iter(cur.users))
        if user.args[0] is not cur:
            return None
        module = gm.get_submodule(user.target) if user.op == "call_module" else None
        if type(module) in _PASS_THROUGH and not flattened:
            if type(module) is nn.Dropout:
                dropouts.append(user.target)
            elif type(module) is MaxPoolGate:
                if not _is_state(user.args[1]):
                    return None
                states.append(user.args[1])
            cur = user
            continue
        if _flattens(user, module) and not flattened:
            flattened, cur = True, user
            continue
        if module is None or not _is_layer(gm, user):
            return None
        return _matched(gm, site, producer, states, dropouts, user, flattened)
    return None


def _matched(gm, site, producer, states, dropouts, consumer, flattened):
    """The chain if the consumer reads the producer's units along its input dimension 1."""
    p, c = gm.get_submodule(producer.target), gm.get_submodule(consumer.target)
    units = p.weight.shape[0]
    if isinstance(p, nn.Conv2d) and isinstance(c, nn.Linear):
        ok = flattened and c.in_features % units == 0
    elif isinstance(p, nn.Linear):
        ok = not flattened and isinstance(c, nn.Linear) and c.in_features == units
    else:
        ok = not flattened and isinstance(c, nn.Conv2d) and c.in_channels == units
    return (site, producer, states, dropouts, consumer, flattened) if ok else None


def _flattens(node: fx.Node, module: nn.Module | None) -> bool:
    """``torch.flatten(x, 1)`` or ``nn.Flatten()``: each channel becomes a block of consecutive columns."""
    if type(module) is nn.Flatten:
        return module.start_dim == 1 and module.end_dim == -1
    return node.op == "call_function" and node.target is torch.flatten and node.args[1:] == (1,) and not node.kwargs


def _is_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    module = gm.get_submodule(node.target)
    return type(module) is nn.Linear or (type(module) is nn.Conv2d and module.groups == 1)


def _is_state(node) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_function"
        and node.target is operator.getitem
        and len(node.users) == 1
    )


def _zero_gradient_factors(steps: int, group: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """((a, b), (c, d)): after `steps` PyTorch SGD steps with zero loss gradient, ``w = a w0 + b v0`` and
    ``v = c w0 + d v0`` from weight `w0` and momentum buffer `v0` (0 for a fresh one)."""
    lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
    step = torch.tensor([[1 - lr * wd, -lr * m], [wd, m]], dtype=torch.float64)
    power = torch.linalg.matrix_power(step, steps).tolist()
    return (power[0][0], power[0][1]), (power[1][0], power[1][1])


def _complement(index: Tensor, size: int) -> Tensor:
    keep = torch.zeros(size, dtype=torch.bool)
    keep[index] = True
    return torch.nonzero(~keep).flatten()


def _check_plain_sgd(optimizer: torch.optim.Optimizer) -> None:
    if type(optimizer) is not torch.optim.SGD:
        raise ValueError(f"dead-unit removal restores plain SGD only, not {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        if group["dampening"] or group["nesterov"] or group.get("maximize"):
            raise ValueError("dead-unit removal restores SGD without dampening, Nesterov momentum or maximize")


def _group_of(optimizer: torch.optim.Optimizer, param: Tensor) -> dict:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise ValueError("the optimizer does not train this estimator's parameters")


def _swap_parameter(optimizer, group: dict, old: Tensor, new: Tensor, momentum: Tensor | None) -> None:
    """`new` takes `old`'s place in the optimiser: same group position, the given momentum buffer."""
    group["params"] = [new if p is old else p for p in group["params"]]
    optimizer.state.pop(old, None)
    if momentum is not None:
        optimizer.state[new] = {"momentum_buffer": momentum}


def _order_state(optimizer: torch.optim.Optimizer) -> None:
    """Optimiser state in parameter order, as an unpruned run builds it, so its saved state_dict is the same."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p in optimizer.state]
    states = [optimizer.state.pop(p) for p in params]
    optimizer.state.update(zip(params, states))


def _set_size(module: nn.Module) -> None:
    """Keep a sliced layer's size attributes true to its weight (its repr and any reader of them)."""
    out_units, in_units = module.weight.shape[:2]
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = out_units, in_units
    else:
        module.out_channels, module.in_channels = out_units, in_units


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _keep_name(site: str) -> str:
    return "_skqk_keep_" + site.replace(".", "_")
