"""Finding the gate sites of a piecewise-linear network with torch.fx and rewriting each into a `Gate`.

A *site* is one call of a piecewise-linear activation in the traced graph — ReLU however it is written (`nn.ReLU`,
`F.relu`, `torch.relu`, `Tensor.relu`, in-place forms, `clamp(min=0)`, `clamp_min`, `F.threshold`, `torch.maximum`,
`torch.where(x > 0, x, 0)`, `x * (x > 0)`), LeakyReLU, PReLU, RReLU in eval mode, ReLU6 / Hardtanh / two-sided
clamp, Hardsigmoid, Hardshrink, Softshrink — a comparison of an input-dependent tensor, and, when pooling is
frozen, every 2-D max pooling. Which nodes are sites and that every other node is affine is proven by
`skqk.linearity`. Sites are named like torchvision's feature extraction names nodes: the module path for a module
call (`features.1`), the fx node name for a function call (`relu_1`), with `_1`, `_2`, ... for repeated calls of
one module, so a ReLU module used twice (every ResNet block) is two sites.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal

import torch.fx as fx
from torch import nn

from skqk.gates import Gate, MaxPoolGate
from skqk.linearity import (
    AFFINE_MODULES,
    GATE_MODULES,
    DecouplingError,
    analyse,
    is_max_pooling,
    readable_name,
)

Pooling = Literal["live", "frozen"]
GATES_PREFIX = "skqk_gates"

__all__ = ["DecouplingError", "Pooling", "Site", "has_max_pooling", "list_sites", "rewrite_gates", "trace"]


@dataclass(frozen=True)
class Site:
    name: str  # readable, stable site name (the Pattern key)
    target: str  # path of its Gate module inside the rewritten GraphModule
    bits: int = 1  # what one unit's state costs (Gate.bits)
    read_through: str | None = None  # the frozen max-pool site that is this site's output's only reader, if any


def trace(model: nn.Module, leaf_modules: Iterable[type[nn.Module]] = ()) -> fx.GraphModule:
    """Symbolically trace a deep copy of `model` (the user's model is never touched).

    Optional arguments of `forward` are fixed at their defaults (fx's `concrete_args`): the traced model takes
    only the tensors without a default. Each node keeps its place in the user's source (`node.stack_trace`).
    """
    leaves = tuple(leaf_modules)
    source = copy.deepcopy(model)
    tracer = _Tracer(leaves)
    try:
        graph = tracer.trace(source, concrete_args=_defaults(source) or None)
    except Exception as e:  # fx raises many types (TraceError, TypeError, NotImplementedError, ...)
        raise _untraceable(model, tracer.path, e) from None
    gm = fx.GraphModule(source, graph, type(model).__name__)
    gm.training = source.training  # the root's own flag; its submodules keep theirs
    _check_leaves(gm, leaves)
    gm.meta["skqk_leaves"] = leaves  # the user vouches they are affine: `analyse` accepts them
    return gm


class _Tracer(fx.Tracer):
    """Records stack traces, keeps the user's leaf types whole and remembers which submodule it is inside."""

    def __init__(self, leaves: tuple):
        super().__init__()
        self.leaves = leaves
        self.record_stack_traces = True
        self.path: list[str] = []  # submodules being traced, innermost last: the culprit when tracing fails

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.path.append(self.path_of_module(m))
        out = super().call_module(m, forward, args, kwargs)
        self.path.pop()
        return out


def _defaults(model: nn.Module) -> dict:
    parameters = inspect.signature(model.forward).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _untraceable(model: nn.Module, path: list[str], e: Exception) -> DecouplingError:
    """Name the submodule whose forward fx could not trace, and say whether it may be kept whole as a leaf."""
    detail = " ".join(str(e).split())[:300]
    if not path or not path[-1]:
        return DecouplingError(
            f"torch.fx cannot trace {type(model).__name__}.forward itself: {type(e).__name__}: {detail}. Usually "
            f"Python control flow on tensor values; move it into a submodule or out of the model"
        )
    culprit = model.get_submodule(path[-1])
    gates = [(n, type(m).__name__) for n, m in culprit.named_modules() if isinstance(m, GATE_MODULES)]
    where = f"the forward of submodule {path[-1]!r} ({type(culprit).__name__})"
    if gates:
        advice = (
            f"it cannot be kept whole as a leaf because it contains the gate {path[-1]}.{gates[0][0]} "
            f"({gates[0][1]}); make its forward traceable"
        )
    else:
        advice = (
            f"mark exactly it as a leaf, decouple(model, leaf_modules=[{type(culprit).__name__}]), if it is affine "
            f"in its input (skqk cannot look inside a leaf)"
        )
    return DecouplingError(
        f"torch.fx cannot trace {type(model).__name__}: {where} fails: {type(e).__name__}: {detail}. Usually "
        f"Python control flow on tensor values; {advice}"
    )


def _check_leaves(gm: fx.GraphModule, leaves: tuple) -> None:
    """A leaf is kept whole, so it must hide no gate and no torch.nn module that is not affine."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and leaves and isinstance(gm.get_submodule(node.target), leaves):
            for name, sub in gm.get_submodule(node.target).named_modules():
                torch_module = type(sub).__module__.startswith("torch.nn.modules")
                known = isinstance(sub, AFFINE_MODULES + (nn.Sequential, nn.ModuleList))
                if isinstance(sub, GATE_MODULES) or (torch_module and not known):
                    raise DecouplingError(
                        f"leaf module {node.target!r} contains a non-linearity ({name}: {type(sub).__name__}) "
                        f"that would stay live in the estimator; trace through it instead"
                    )


def rewrite_gates(
    gm: fx.GraphModule, pooling: Pooling, state_of: Callable[[fx.Graph, Site, Gate, tuple], fx.Node]
) -> list[Site]:
    """Replace every site of `gm` by ``gate(*operands, state)`` where ``state = state_of(graph, site, gate,
    operands)``.

    Raises `DecouplingError` naming the node for any node not proven affine for a fixed pattern
    (`skqk.linearity.analyse`). Returns the sites in graph order.
    """
    if pooling not in ("live", "frozen"):
        raise ValueError(f"pooling must be 'live' or 'frozen', got {pooling!r}")
    graph = gm.graph
    position = {node: i for i, node in enumerate(graph.nodes)}
    sites: list[Site] = []
    taken: set[str] = set()
    calls: dict[str, fx.Node] = {}  # site name -> its gate call
    states: set[fx.Node] = set()  # the nodes `state_of` made: they record states, they do not read a gate's output
    now: dict[fx.Node, list[tuple[int, fx.Node]]] = {}  # node -> (from graph position, node that replaces it)
    for spec in analyse(gm, pooling, gm.meta.get("skqk_leaves", ())):
        node = spec.node
        operands = tuple(_current(o, position[node], now) for o in spec.operands)
        site = Site(_unique(readable_name(node), taken), f"{GATES_PREFIX}.{node.name}", spec.gate.bits)
        gm.add_submodule(site.target, spec.gate.train(gm.training))
        with graph.inserting_before(node):
            state = state_of(graph, site, spec.gate, operands)
            y = graph.call_module(site.target, (*operands, state))
        states.add(state)
        calls[site.name] = y
        for index in spec.indices:  # a frozen pooling's indices, read by max_unpool: where its switches point
            with graph.inserting_before(node):
                where = graph.call_method("indices_of", (graph.get_attr(site.target), operands[0], state))
            index.replace_all_uses_with(where)
            graph.erase_node(index)
        for replaced in (*spec.replaces, node):
            replaced.replace_all_uses_with(y)
            graph.erase_node(replaced)
            now.setdefault(replaced, []).append((-1, y))
        if spec.inplace:  # later readers of an in-place gate's input saw the activated tensor
            x = operands[0]
            for user in list(x.users):
                if user is not y and position.get(user, -1) > position[node]:
                    user.replace_input_with(x, y)
            now.setdefault(x, []).append((position[node], y))
        sites.append(site)
    sites = _with_pool_readers(gm, sites, calls, states)
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()  # the replaced activation / pooling modules
    for m in gm.modules():  # the containers fx and add_submodule create hold no mode of their own: the source's
        if type(m) is nn.Module:
            m.training = gm.training
    return sites


def _with_pool_readers(
    gm: fx.GraphModule, sites: list[Site], calls: dict[str, fx.Node], states: set[fx.Node]
) -> list[Site]:
    """Mark each non-pool site whose output only a frozen max-pool gate reads: of its states, only those at the
    elements the pool's switches select ever reach an output, so a pattern store keeps only those."""
    pools = {calls[s.name]: s.name for s in sites if isinstance(gm.get_submodule(s.target), MaxPoolGate)}
    marked = []
    for site in sites:
        y = calls[site.name]
        readers = [user for user in y.users if user not in states]
        only = readers[0] if len(readers) == 1 else None
        read_by_pool = y not in pools and only in pools and only.args[0] is y and y not in only.args[1:]
        marked.append(replace(site, read_through=pools[only]) if read_by_pool and not only.kwargs else site)
    return marked


def _current(operand, at: int, now: dict):
    """What `operand` is at graph position `at` once earlier sites were rewritten (replaced or overwritten)."""
    while isinstance(operand, fx.Node) and operand in now:
        later = [y for since, y in now[operand] if since < at]
        if not later:
            break
        operand = later[-1]
    return operand


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate


def list_sites(model: nn.Module, pooling: Pooling = "live", leaf_modules: Iterable[type[nn.Module]] = ()):
    """Names of the gate sites of `model`, in graph order: the keys its patterns will have.

    Example:
        >>> list_sites(skqk.models.build("lenet5"), pooling="frozen")
        ['features.1', 'features.2', 'features.4', 'features.5', 'classifier.1', 'classifier.3']
    """
    gm = trace(model, leaf_modules)
    return [s.name for s in rewrite_gates(gm, pooling, lambda graph, site, gate, operands: operands[0])]


def has_max_pooling(gm: fx.GraphModule) -> bool:
    """Whether a live (not frozen) max pooling, in any spelling, is left in `gm`: then it is only piecewise
    linear, and `linear_map` refuses it."""
    return any(is_max_pooling(node, gm) for node in gm.graph.nodes)
