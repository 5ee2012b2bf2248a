"""Finding the gate sites of a ReLU network with torch.fx and rewriting each into a `Gate`.

A *site* is one call of a non-linearity in the traced graph: every ReLU however it is written (`nn.ReLU`,
`F.relu`, `torch.relu`, `Tensor.relu`, their in-place forms), LeakyReLU, and — when pooling is frozen —
every 2-D max pooling. Sites are named like torchvision's feature extraction names nodes: the module path
for a module call (`features.1`), the fx node name for a function call (`relu_1`), with `_1`, `_2`, ...
for repeated calls of one module, so a ReLU module used twice (every ResNet block) is two sites.
"""

from __future__ import annotations

import copy
import inspect
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from skqk.gates import LeakyReluGate, MaxPoolGate, ReluGate

Pooling = Literal["live", "frozen"]
GATES_PREFIX = "skqk_gates"


class DecouplingError(ValueError):
    """The model cannot be split into a path selector and an estimator (the message says why)."""


@dataclass(frozen=True)
class Site:
    name: str  # readable, stable site name (the Pattern key)
    target: str  # path of its Gate module inside the rewritten GraphModule


_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_MAXPOOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d}  # those whose switches can be frozen
_ANY_MAXPOOL_FUNCTIONS = _MAXPOOL_FUNCTIONS | {
    F.max_pool1d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
_MAXPOOL_PARAMS = inspect.signature(F._max_pool2d).parameters
_NONLINEAR_MODULES = (
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Softmin,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Mish,
    nn.Softplus,
    nn.Softsign,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.ReLU6,
    nn.PReLU,
    nn.RReLU,
    nn.GLU,
    nn.Tanhshrink,
    nn.Threshold,
    nn.LogSigmoid,
    nn.Hardshrink,
    nn.Softshrink,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
_MAXPOOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_NONLINEAR_FUNCTIONS = {
    F.gelu,
    F.silu,
    F.sigmoid,
    torch.sigmoid,
    F.tanh,
    torch.tanh,
    F.softmax,
    torch.softmax,
    F.log_softmax,
    torch.log_softmax,
    F.softmin,
    F.elu,
    F.selu,
    F.celu,
    F.mish,
    F.softplus,
    F.softsign,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.relu6,
    F.prelu,
    F.rrelu,
    F.glu,
    F.threshold,
    F.logsigmoid,
    F.layer_norm,
    F.group_norm,
    F.instance_norm,
    F.normalize,
    F.local_response_norm,
    torch.exp,
    torch.log,
    torch.sqrt,
    torch.rsqrt,
    torch.abs,
    torch.clamp,
    torch.clip,
    torch.clamp_min,
    torch.clamp_max,
    torch.maximum,
    torch.minimum,
    torch.max,
    torch.min,
    torch.sign,
    torch.square,
    torch.pow,
    operator.pow,
    torch.erf,
    torch.sin,
    torch.cos,
    torch.norm,
    F.scaled_dot_product_attention,
}
_NONLINEAR_METHODS = {
    "sigmoid",
    "tanh",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "abs",
    "clamp",
    "clip",
    "clamp_min",
    "clamp_max",
    "softmax",
    "log_softmax",
    "max",
    "min",
    "maximum",
    "minimum",
    "pow",
    "square",
    "sign",
    "erf",
    "norm",
    "sin",
    "cos",
    "sigmoid_",
    "tanh_",
    "exp_",
    "clamp_",
    "abs_",
    "sqrt_",
    "pow_",
}
# Operations that are bilinear when more than one operand depends on the input (gating, attention, ...).
_PRODUCT_OPS = {
    operator.mul,
    torch.mul,
    operator.matmul,
    torch.matmul,
    torch.bmm,
    torch.mm,
    torch.einsum,
    operator.imul,
    torch.outer,
}
_DIVISION_OPS = {operator.truediv, torch.div, operator.itruediv, operator.floordiv}


def trace(model: nn.Module, leaf_modules: Iterable[type[nn.Module]] = ()) -> fx.GraphModule:
    """Symbolically trace a deep copy of `model` (the user's model is never touched)."""
    leaves = tuple(leaf_modules)
    source = copy.deepcopy(model)

    class LeafTracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    try:
        graph = LeafTracer().trace(source)
    except Exception as e:  # fx raises many types (TraceError, TypeError, NotImplementedError, ...)
        detail = " ".join(str(e).split())[:300]
        raise DecouplingError(
            f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {detail}. Usually data-dependent "
            f"Python control flow; mark the submodule that contains it as a leaf with "
            f"decouple(model, leaf_modules=[ThatModule]) (a leaf is kept whole and must contain no ReLU)"
        ) from None
    gm = fx.GraphModule(source, graph, type(model).__name__)
    _check_leaves(gm, leaves)
    return gm


def _check_leaves(gm: fx.GraphModule, leaves: tuple) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_module" and leaves and isinstance(gm.get_submodule(node.target), leaves):
            for name, sub in gm.get_submodule(node.target).named_modules():
                if isinstance(sub, (nn.ReLU, nn.LeakyReLU, *_NONLINEAR_MODULES)):
                    raise DecouplingError(
                        f"leaf module {node.target!r} contains a non-linearity ({name}: {type(sub).__name__}) "
                        f"that would stay live in the estimator; trace through it instead"
                    )


def rewrite_gates(
    gm: fx.GraphModule, pooling: Pooling, state_of: Callable[[fx.Graph, Site, fx.Node], fx.Node]
) -> list[Site]:
    """Replace every site of `gm` by ``gate(x, state)`` where ``state = state_of(graph, site, x)``.

    Raises `DecouplingError` naming the node for any non-linearity that is not a site. Returns the sites in
    graph order.
    """
    if pooling not in ("live", "frozen"):
        raise ValueError(f"pooling must be 'live' or 'frozen', got {pooling!r}")
    graph = gm.graph
    position = {node: i for i, node in enumerate(graph.nodes)}
    depends_on_input = _input_dependence(graph)
    sites: list[Site] = []
    taken: set[str] = set()
    for node in list(graph.nodes):
        found = _gate_for(node, gm, pooling, depends_on_input)
        if found is None:
            continue
        gate, x, inplace = found
        site = Site(_unique(_readable_name(node), taken), f"{GATES_PREFIX}.{node.name}")
        gm.add_submodule(site.target, gate)
        with graph.inserting_before(node):
            y = graph.call_module(site.target, (x, state_of(graph, site, x)))
        node.replace_all_uses_with(y)
        graph.erase_node(node)
        if inplace:  # later readers of an in-place ReLU's input saw the activated tensor
            for user in list(x.users):
                if user is not y and position.get(user, -1) > position[node]:
                    user.replace_input_with(x, y)
        sites.append(site)
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()  # the replaced ReLU / pooling modules: no activation function is left
    return sites


def _gate_for(node: fx.Node, gm: fx.GraphModule, pooling: Pooling, depends_on_input: set[fx.Node]):
    """(gate, input node, in-place?) when `node` is a site; None when it is linear; raise when neither."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if type(m) is nn.ReLU:
            return ReluGate(), node.args[0], m.inplace
        if type(m) is nn.LeakyReLU:
            return LeakyReluGate(m.negative_slope), node.args[0], m.inplace
        if isinstance(m, _MAXPOOL_MODULES):
            if pooling == "live":
                return None
            if type(m) is nn.MaxPool2d and not m.return_indices:
                return MaxPoolGate(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode), node.args[0], False
            raise _refuse(node, type(m).__name__, _FREEZE_HINT)
        if isinstance(m, _NONLINEAR_MODULES):
            raise _refuse(node, type(m).__name__)
        return None
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            inplace = node.target is torch.relu_ or node.kwargs.get("inplace", node.args[1:2] == (True,))
            return ReluGate(), node.args[0], bool(inplace)
        if node.target is F.leaky_relu:
            bound = inspect.signature(F.leaky_relu).bind(*node.args, **node.kwargs)
            bound.apply_defaults()
            return LeakyReluGate(bound.arguments["negative_slope"]), node.args[0], bound.arguments["inplace"]
        if node.target in _ANY_MAXPOOL_FUNCTIONS:
            if pooling == "live":
                return None
            if node.target not in _MAXPOOL_FUNCTIONS:
                raise _refuse(node, node.target.__name__, _FREEZE_HINT)
            bound = inspect.Signature(list(_MAXPOOL_PARAMS.values())).bind(*node.args, **node.kwargs)
            bound.apply_defaults()
            a = bound.arguments
            if not a["return_indices"]:
                gate = MaxPoolGate(a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
                return gate, node.args[0], False
            raise _refuse(node, "max_pool2d(return_indices=True)", _FREEZE_HINT)
        if node.target in _NONLINEAR_FUNCTIONS:
            raise _refuse(node, getattr(node.target, "__name__", str(node.target)))
        _check_multilinear(node, depends_on_input)
        return None
    if node.op == "call_method":
        if node.target in ("relu", "relu_"):
            return ReluGate(), node.args[0], node.target == "relu_"
        if node.target in _NONLINEAR_METHODS:
            raise _refuse(node, f"Tensor.{node.target}")
        if node.target in ("mul", "mul_", "matmul", "div", "div_"):
            _check_multilinear(node, depends_on_input)
    return None


def _check_multilinear(node: fx.Node, depends_on_input: set[fx.Node]) -> None:
    """Products of two input-dependent tensors (or division by one) are not linear: refuse them."""
    operands = [a for a in node.args if isinstance(a, fx.Node) and a in depends_on_input]
    is_product = node.target in _PRODUCT_OPS or node.target in ("mul", "mul_", "matmul")
    is_division = node.target in _DIVISION_OPS or node.target in ("div", "div_")
    divisor = node.args[1] if len(node.args) > 1 else None
    if (is_product and len(operands) > 1) or (is_division and divisor in depends_on_input):
        raise DecouplingError(
            f"node {node.name!r} ({getattr(node.target, '__name__', node.target)}) multiplies or divides two "
            f"input-dependent tensors, a non-linearity that an activation pattern cannot capture"
        )


def _input_dependence(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on the model's input (placeholders), by forward propagation."""
    dependent: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
    return dependent


_RELU_ONLY_HINT = "skqk decouples ReLU networks only (ReLU, LeakyReLU, max pooling)"
_FREEZE_HINT = "only nn.MaxPool2d / F.max_pool2d switches can be frozen; use pooling='live'"


def _refuse(node: fx.Node, what: str, hint: str = _RELU_ONLY_HINT) -> DecouplingError:
    return DecouplingError(f"node {_readable_name(node)!r} is a non-linearity that is not a ReLU gate: {what}; {hint}")


def _readable_name(node: fx.Node) -> str:
    return node.target if node.op == "call_module" else node.name


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
    return [s.name for s in rewrite_gates(gm, pooling, lambda graph, site, x: x)]


def has_max_pooling(gm: fx.GraphModule) -> bool:
    """Whether a live (not frozen) max pooling is left in `gm`: then it is only piecewise linear."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), _MAXPOOL_MODULES):
            return True
        if node.op == "call_function" and node.target in _ANY_MAXPOOL_FUNCTIONS:
            return True
    return False
