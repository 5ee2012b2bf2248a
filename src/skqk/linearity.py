"""Proof, node by node, that the estimator is affine in the input for a fixed activation pattern — or a refusal.

The paper's estimator is a linear model per activation pattern (section 3.1). That holds only if every graph
node is, once the gates' states are fixed, affine in the network input. So each node is *accepted* only for
what it is known to do, never because it is missing from a list of non-linearities:

* every node whose inputs are all fixed for a fixed pattern (parameters, shapes and Python-int arithmetic on
  them, recorded SK, discrete inputs such as masks and token ids) is fixed itself — whatever it computes,
  even a ReLU of a parameter (a constant function of the QK, trained as such);
* a node with an input-dependent operand must be a known affine operation (`_AFFINE`, `_AFFINE_MODULES`), a
  product/division with at most one input-dependent factor (never an input-dependent divisor), or a *site*:
  a piecewise-linear activation, a comparison, or a max pooling frozen into switches (`skqk.gates`). Which of
  its arguments may depend on the input is said by name (`_OPERANDS`); each node's arguments are bound to the
  op's own schema (`skqk._schemas`), so a keyword argument is checked like a positional one;
* anything else is refused, naming the node, what it is and where it is in the user's code.

It also follows the batch axis (`Value.batch`), placing negative dimensions by the rank (`Value.rank`) where
the graph tells it, so that every site's states are really per sample: a gate whose input has its samples moved
or mixed is refused, and `PathSelector` checks the row count of every state at run time (what a reshape keeps is
only known then). Any failure while a node is analysed is a `DecouplingError` naming it.
"""

from __future__ import annotations

import builtins
import inspect
import operator
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from skqk._errors import one_line
from skqk._schemas import Call, bind
from skqk.gates import (
    ClampGate,
    ComparisonGate,
    Gate,
    LeakyReluGate,
    MaxPoolGate,
    PReluGate,
    ReluGate,
    SelectGate,
    hardsigmoid_gate,
    shrink_gate,
)

MIXED = "mixed"  # a batch axis that was moved or whose samples were mixed


class DecouplingError(ValueError):
    """The model cannot be split into a path selector and an estimator (the message says why)."""


@dataclass(frozen=True)
class Value:
    """What is known about one node's value.

    `dep` is 1 when the value is affine in the network input for a fixed pattern, 0 when it is fixed for a fixed
    pattern. `batch` is the axis that holds the samples (None: the same for every sample; `MIXED`: lost).
    `lost_at` names the node that lost the batch axis, for the error message. `rank` is the number of axes where
    it is known without running the model (None: unknown, e.g. a model input's), to place negative dimensions.
    """

    dep: int
    batch: int | None | str
    lost_at: str = ""
    rank: int | None = None


@dataclass
class SiteSpec:
    """A node to replace by ``gate(*operands, state)``; `inplace` sites overwrite ``operands[0]``."""

    node: fx.Node
    gate: Gate
    operands: tuple
    inplace: bool = False
    replaces: tuple = ()  # getitem(node, 0) users to replace too (max pooling with return_indices=True)
    indices: tuple = ()  # getitem(node, 1) users: the pooling indices, from the switches (`MaxPoolGate.indices_of`)


FIXED = Value(0, None)

# -- spellings --------------------------------------------------------------------------------------------------
_NAMESPACES = (torch, F, torch.Tensor)
_OPERATORS = {
    operator.add: "add", operator.iadd: "add_", operator.sub: "sub", operator.isub: "sub_",
    operator.mul: "mul", operator.imul: "mul_", operator.truediv: "div", operator.itruediv: "div_",
    operator.matmul: "matmul", operator.imatmul: "matmul_", operator.neg: "neg", operator.pos: "positive",
    operator.getitem: "getitem", operator.setitem: "setitem", operator.floordiv: "floor_divide",
    operator.mod: "remainder", operator.pow: "pow", operator.gt: "gt", operator.lt: "lt", operator.ge: "ge",
    operator.le: "le", operator.eq: "eq", operator.ne: "ne", builtins.getattr: "getattr", builtins.len: "len",
}  # fmt: skip
_COMPARISONS = {"gt": torch.gt, "lt": torch.lt, "ge": torch.ge, "le": torch.le, "eq": torch.eq, "ne": torch.ne,
                "greater": torch.gt, "less": torch.lt, "greater_equal": torch.ge, "less_equal": torch.le,
                "not_equal": torch.ne}  # fmt: skip
_MAX_POOLS = {"max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
              "adaptive_max_pool3d", "max", "min", "amax", "amin"}  # fmt: skip
_MAX_POOLS |= {f"{n}_with_indices" for n in _MAX_POOLS if "pool" in n}
_RANDOM_POOLS = {"fractional_max_pool2d", "fractional_max_pool3d"}
_RANDOM_POOLS |= {f"{n}_with_indices" for n in _RANDOM_POOLS}
_MAX_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                     nn.AdaptiveMaxPool3d)  # fmt: skip
_RANDOM_POOL_MODULES = (nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)
GATE_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh, nn.Threshold, nn.Hardsigmoid, nn.Hardshrink,
                nn.Softshrink, nn.RReLU)  # fmt: skip

# Affine operations, by how they move the batch axis (see `_batch_of`). Index/mask arguments must be fixed.
_ELEMENTWISE = {"add", "sub", "rsub", "neg", "negative", "positive", "clone", "contiguous", "float", "double", "to",
                "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
                "masked_fill", "where", "mul", "multiply", "div", "divide", "true_divide", "setitem",
                "expand_as", "addcmul", "addcdiv"}  # fmt: skip
_BATCH_FIRST = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                "bilinear", "batch_norm", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                "adaptive_avg_pool2d", "adaptive_avg_pool3d", "pad", "interpolate", "upsample", "upsample_nearest",
                "upsample_bilinear", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
                "native_channel_shuffle", "embedding", "fliplr", "max_unpool1d", "max_unpool2d",
                "max_unpool3d"}  # fmt: skip
_RESHAPES = {"view", "reshape", "view_as", "reshape_as", "flatten", "unflatten", "ravel", "unfold", "fold"}
_STRUCTURAL = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "squeeze", "unsqueeze",
               "expand", "repeat", "tile", "flip", "flipud", "roll", "narrow", "select", "getitem", "chunk", "split",
               "tensor_split", "split_with_sizes", "unbind", "cat", "concat", "concatenate", "stack", "hstack",
               "vstack", "index_select", "gather", "take_along_dim", "sum", "mean", "cumsum", "matmul", "mm",
               "bmm", "einsum", "outer", "inner", "dot", "addmm", "baddbmm", "addbmm", "addmv", "tril", "triu",
               "diagonal"}  # fmt: skip
_SHAPE_QUERIES = {"size", "dim", "ndimension", "numel", "nelement", "len", "new_zeros", "new_ones", "new_full",
                  "zeros_like", "ones_like", "full_like"}  # fmt: skip
_SHAPE_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad"}
_TRANSPOSE_ATTRIBUTES = {"T", "mT", "H", "mH"}
_AFFINE = _ELEMENTWISE | _BATCH_FIRST | _RESHAPES | _STRUCTURAL
# The arguments, by name, that may depend on the input: (summed, multiplied: at most one may, read for their shape
# only). Every other argument of every op (divisors, masks, indices, bounds, weights of a normalisation, ...)
# must be fixed for a fixed pattern; an op not listed takes its first argument only.
_SUMS = ("input", "other")
_WEIGHTED = (("bias",), ("input", "weight"), ())
_OPERANDS = {
    "add": (_SUMS, (), ()), "sub": (_SUMS, (), ()), "rsub": (_SUMS, (), ()), "where": (_SUMS, (), ()),
    "setitem": (("input", "value"), (), ()), "mul": ((), _SUMS, ()), "multiply": ((), _SUMS, ()),
    "matmul": ((), _SUMS, ()), "inner": ((), _SUMS, ()), "mm": ((), ("input", "mat2"), ()),
    "bmm": ((), ("input", "mat2"), ()), "outer": ((), ("input", "vec2"), ()), "dot": ((), ("input", "tensor"), ()),
    "linear": _WEIGHTED, "conv1d": _WEIGHTED, "conv2d": _WEIGHTED, "conv3d": _WEIGHTED,
    "conv_transpose1d": _WEIGHTED, "conv_transpose2d": _WEIGHTED, "conv_transpose3d": _WEIGHTED,
    "bilinear": (("bias",), ("input1", "input2", "weight"), ()), "addmm": (("input",), ("mat1", "mat2"), ()),
    "baddbmm": (("input",), ("batch1", "batch2"), ()), "addbmm": (("input",), ("batch1", "batch2"), ()),
    "addmv": (("input",), ("mat", "vec"), ()), "addcmul": (("input",), ("tensor1", "tensor2"), ()),
    "addcdiv": (("input",), ("tensor1",), ()),
    "einsum": ((), ("args", "operands"), ()), "embedding": (("weight",), (), ()),
    "expand_as": (("input",), (), ("other",)), "view_as": (("input",), (), ("other",)),
    "reshape_as": (("input",), (), ("other",)), "to": (("input",), (), ("other",)),
    "cat": (("tensors",), (), ()), "concat": (("tensors",), (), ()), "concatenate": (("tensors",), (), ()),
    "stack": (("tensors",), (), ()), "hstack": (("tensors",), (), ()), "vstack": (("tensors",), (), ()),
}  # fmt: skip
_MODULE_OPERANDS = {nn.Bilinear: ((), ("input1", "input2"), ())}
# Arguments that index or mask: a model input passed there is a discrete input (checked by dtype at run time).
_INDEX_ARGUMENTS = {"masked_fill": ("mask",), "where": ("condition",), "index_select": ("index",),
                    "gather": ("index",), "take_along_dim": ("indices",), "embedding": ("input",),
                    "getitem": ("index",), "setitem": ("index",), "max_unpool1d": ("indices",),
                    "max_unpool2d": ("indices",), "max_unpool3d": ("indices",)}  # fmt: skip
_AFFINE_MODULES = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.AvgPool1d, nn.AvgPool2d,
                   nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.ZeroPad1d,
                   nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
                   nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
                   nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
                   nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle,
                   nn.PixelUnshuffle, nn.ChannelShuffle, nn.Fold, nn.Unfold, nn.Embedding, nn.Flatten,
                   nn.Unflatten, nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d)  # fmt: skip
_PASS_THROUGH_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                         nn.FeatureAlphaDropout)  # fmt: skip
AFFINE_MODULES = _AFFINE_MODULES + _PASS_THROUGH_MODULES  # torch.nn modules known to be affine
_DROPOUTS = {
    "dropout": True,
    "dropout1d": True,
    "dropout2d": True,
    "dropout3d": True,
    "alpha_dropout": False,
    "feature_alpha_dropout": False,
}  # fmt: skip  (the default of their `training` argument)


def op_name(node: fx.Node) -> str | None:
    """The torch name of what `node` calls (in-place forms keep their trailing underscore), or None."""
    if node.op == "call_method":
        return node.target
    if node.op != "call_function":
        return None
    if node.target in _OPERATORS:
        return _OPERATORS[node.target]
    name = getattr(node.target, "__name__", None)
    for candidate in (name and name.lstrip("_"), name):  # F.threshold is F._threshold under its own name
        if candidate and any(getattr(ns, candidate, None) is node.target for ns in _NAMESPACES):
            return candidate
    return None


def _base(name: str) -> tuple[str, bool]:
    """(out-of-place twin, in-place?): `relu_` is `relu` that overwrites its input."""
    if name.endswith("_") and not name.endswith("__"):
        return name[:-1], True
    return name, False


def is_max_pooling(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Any spelling of max pooling: nn modules, F/torch functions with or without indices, max/amax over dims."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _MAX_POOL_MODULES + _RANDOM_POOL_MODULES)
    name = op_name(node)
    if name is None:
        return False
    name = _base(name)[0]
    if name in ("max", "min"):  # max(x, other) is a SelectGate; max(x), max(x, dim) pool over dimensions
        return not isinstance(_arg(node, 1, "other"), fx.Node)
    return name in _MAX_POOLS or name in _RANDOM_POOLS


# -- the analysis -----------------------------------------------------------------------------------------------
def analyse(gm: fx.GraphModule, pooling: str, vouched_leaves: tuple) -> list[SiteSpec]:
    """The sites of `gm` in graph order; raise `DecouplingError` on the first node that is not proven affine."""
    values: dict[fx.Node, Value] = {}
    discrete = _discrete_inputs(gm.graph)
    root = {}  # node -> the node whose storage it may alias
    position = {n: i for i, n in enumerate(gm.graph.nodes)}
    sites = []
    gm.meta["skqk_discrete"] = [n.target for n in discrete]  # checked by dtype when the model runs
    gm.meta["skqk_tuples"] = [n.target for n in _tuple_inputs(gm.graph)]  # checked to be tuples then
    for node in list(gm.graph.nodes):
        root[node] = node
        if node in values:  # the values or indices of a frozen pooling, set with its site
            continue
        with _refusing_any_failure(node):
            spec = _analyse_node(node, gm, pooling, values, vouched_leaves, discrete)
            rank = _rank_of(node, gm, values)
            values[node] = replace(values[node], rank=rank)
            if spec is None:
                _track_alias(node, root)
                _apply_inplace(node, values, root)
                continue
            _check_site_batch(spec, values)
            if spec.inplace:
                _check_inplace_aliases(spec, root, position)
            sites.append(spec)
            for r in spec.replaces:
                values[r] = values[node]
            for r in spec.indices:  # fixed for a fixed pattern: they are where the switches point
                values[r] = Value(0, 0, rank=rank)
    return sites


def _analyse_node(node: fx.Node, gm, pooling: str, values: dict, vouched: tuple, discrete: set) -> SiteSpec | None:
    """Set `values[node]`; return the node's `SiteSpec` if it is a site."""
    if node.op == "placeholder":
        values[node] = FIXED if node.args or node in discrete else Value(1, 0)
        return None
    if node.op in ("get_attr", "output"):
        values[node] = FIXED
        return None
    inputs = [values[a] for a in node.all_input_nodes]
    if all(v.dep == 0 for v in inputs):
        values[node] = Value(0, _merge(node, inputs))
        return None
    spec = _site(node, gm, pooling, values)
    if spec is not None:
        values[node] = Value(0 if isinstance(spec.gate, ComparisonGate) else 1, _merge(node, inputs))
        return spec
    values[node] = _with_culprit(node, _affine_value(node, gm, pooling, values, vouched), inputs)
    return None


@contextmanager
def _refusing_any_failure(node: fx.Node):
    """Whatever goes wrong while a node is analysed is a `DecouplingError` that names the node."""
    try:
        yield
    except DecouplingError:
        raise
    except Exception as e:
        raise refuse(node, describe(node), f"cannot be analysed ({type(e).__name__}: {one_line(e, 200)})",
                     _RELU_ONLY_HINT) from None  # fmt: skip


def _with_culprit(node: fx.Node, value: Value, inputs: list[Value]) -> Value:
    """Remember which node first moved the batch axis away from 0 or mixed samples."""
    if value.batch in (0, None) or value.lost_at:
        return value
    inherited = next((v.lost_at for v in inputs if v.lost_at), "")
    return Value(value.dep, value.batch, inherited or node.name)


def _discrete_inputs(graph: fx.Graph) -> set[fx.Node]:
    """Inputs passed as a mask or an index: fixed like the pattern, not affine inputs, if they are bool or integer
    tensors, which the selector and estimator check when they run (a real-valued input is never discrete)."""
    found = set()
    for node in graph.nodes:
        name = op_name(node)
        keys = _INDEX_ARGUMENTS.get(_base(name)[0], ()) if name else ()
        if node.op == "call_module":
            keys = ("input",) if isinstance(node.graph.owning_module.get_submodule(node.target), nn.Embedding) else ()
        call = _call(node)
        for key in keys:
            arg = call.arguments.get(key) if call else None
            if isinstance(arg, fx.Node) and arg.op == "placeholder":
                found.add(arg)
    return found


def _tuple_inputs(graph: fx.Graph) -> list[fx.Node]:
    """Inputs only ever indexed by a Python int (``a, b = x``): tuples of batches, each element batch first."""
    found = []
    for node in graph.nodes:
        users = list(node.users)
        by_int = [u.op == "call_function" and u.target is operator.getitem and type(u.args[1]) is int for u in users]
        if node.op == "placeholder" and not node.args and users and all(by_int):
            node.meta["skqk_tuple"] = True
            found.append(node)
    return found


def _site(node: fx.Node, gm: fx.GraphModule, pooling: str, values: dict) -> SiteSpec | None:
    """A `SiteSpec` when `node` is a gate site; None when it is not one."""
    if node.op == "call_module":
        return _module_site(node, gm.get_submodule(node.target), pooling)
    name = op_name(node)
    if name is None:
        return None
    base, inplace = _base(name)
    call = _call(node)
    x = _arg(node, 0, "input")
    inplace = inplace or bool(call and call.writes)
    if base == "relu":
        return SiteSpec(node, ReluGate(), (x,), inplace)
    if base in ("leaky_relu", "relu6", "hardtanh", "threshold", "clamp", "clip", "clamp_min", "clamp_max"):
        gate, inplace_arg = _clamp_like(node, base)
        return SiteSpec(node, gate, (x,), inplace or inplace_arg)
    if base == "prelu":
        return SiteSpec(node, PReluGate(), (x, _arg(node, 1, "weight")))
    if base in ("hardsigmoid", "hardshrink", "softshrink", "rrelu"):
        return SiteSpec(node, _three_piece(node, base, call.arguments if call else {}), (x,), inplace)
    if base in ("maximum", "minimum", "max", "min") and not is_max_pooling(node, gm):
        other = _arg(node, 1, "other")
        return SiteSpec(node, SelectGate(take_larger=base in ("maximum", "max")), (x, other), inplace)
    if base in _COMPARISONS:
        return SiteSpec(node, ComparisonGate(_COMPARISONS[base]), (x, _arg(node, 1, "other")), inplace)
    if is_max_pooling(node, gm) and pooling == "frozen":
        return _frozen_pool_site(node, base, x)
    return None


def _module_site(node: fx.Node, m: nn.Module, pooling: str) -> SiteSpec | None:
    x = _arg(node, 0)
    inplace = getattr(m, "inplace", False)
    if type(m) is nn.ReLU:
        return SiteSpec(node, ReluGate(), (x,), inplace)
    if type(m) is nn.LeakyReLU:
        return SiteSpec(node, LeakyReluGate(m.negative_slope), (x,), inplace)
    if type(m) is nn.PReLU:
        with node.graph.inserting_before(node):
            weight = node.graph.get_attr(f"{node.target}.weight")
        return SiteSpec(node, PReluGate(), (x, weight))
    if type(m) in (nn.Hardtanh, nn.ReLU6):
        return SiteSpec(node, ClampGate(m.min_val, m.max_val), (x,), inplace)
    if type(m) is nn.Threshold:
        return SiteSpec(node, ClampGate(m.threshold, low_value=m.value), (x,), inplace)
    if type(m) in (nn.Hardsigmoid, nn.Hardshrink, nn.Softshrink, nn.RReLU):
        arguments = {"lambd": getattr(m, "lambd", None), "lower": getattr(m, "lower", None),
                     "upper": getattr(m, "upper", None), "training": m.training}  # fmt: skip
        return SiteSpec(node, _three_piece(node, type(m).__name__.lower(), arguments), (x,), inplace)
    if pooling == "frozen" and type(m) is nn.MaxPool2d:
        gate = MaxPoolGate(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        return _with_indices_dropped(SiteSpec(node, gate, (x,)), m.return_indices)
    if pooling == "frozen" and isinstance(m, _MAX_POOL_MODULES + _RANDOM_POOL_MODULES):
        raise refuse(node, type(m).__name__, "is max pooling that cannot be frozen", _FREEZE_HINT)
    return None


def _clamp_like(node: fx.Node, base: str) -> tuple[Gate, bool]:
    """The gate of a LeakyReLU, ReLU6, Hardtanh, threshold or clamp spelling, and whether it works in place."""
    bound = inspect.signature(_SIGNATURES[base]).bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    a = bound.arguments
    if any(isinstance(v, fx.Node) for k, v in a.items() if k != "input"):
        raise refuse(node, describe(node), "has tensor bounds", "give its bounds as Python numbers")
    inplace = bool(a.get("inplace", False))
    if base == "leaky_relu":
        return LeakyReluGate(a["negative_slope"]), inplace
    if base == "relu6":
        return ClampGate(0.0, 6.0), inplace
    if base == "hardtanh":
        return ClampGate(a["min_val"], a["max_val"]), inplace
    if base == "threshold":
        return ClampGate(a["threshold"], low_value=a["value"]), inplace
    low, high = a.get("min"), a.get("max")
    if low is None and high is None:
        raise refuse(node, describe(node), "has no bounds", "give clamp a min or a max")
    if low is not None and high is not None and low > high:  # torch gives `max` everywhere, with no gradient
        raise refuse(node, describe(node), f"has min {low} > max {high}: it is the constant {high}",
                     "write the constant instead")  # fmt: skip
    return ClampGate(low, high, inclusive=True), False  # clamp passes the gradient at its bounds


def _three_piece(node: fx.Node, base: str, arguments: dict) -> Gate:
    """The gate of Hardsigmoid, Hardshrink, Softshrink, or RReLU in eval mode (LeakyReLU with the mean slope)."""
    if any(isinstance(arguments.get(k), fx.Node) for k in ("lambd", "lower", "upper")):
        raise refuse(node, describe(node), "has tensor bounds", "give its bounds as Python numbers")
    if base == "hardsigmoid":
        return hardsigmoid_gate()
    if base == "rrelu":
        if arguments.get("training"):
            raise refuse(node, describe(node), "draws random slopes in training mode", "call model.eval() first")
        return LeakyReluGate((arguments.get("lower", 1 / 8) + arguments.get("upper", 1 / 3)) / 2)
    lambd = arguments.get("lambd", 0.5)
    if not isinstance(lambd, (int, float)) or lambd < 0:
        raise refuse(node, describe(node), f"has lambd {lambd!r}", "give a lambd >= 0")
    return shrink_gate(lambd, soft=base == "softshrink")


# The signatures of the clamp-like spellings (F., torch., Tensor. and in-place forms share them), for binding.
_SIGNATURES = {
    "leaky_relu": lambda input, negative_slope=0.01, inplace=False: None,
    "relu6": lambda input, inplace=False: None,
    "hardtanh": lambda input, min_val=-1.0, max_val=1.0, inplace=False: None,
    "threshold": lambda input, threshold, value, inplace=False: None,
    "clamp": lambda input, min=None, max=None: None,
    "clip": lambda input, min=None, max=None: None,
    "clamp_min": lambda input, min: None,
    "clamp_max": lambda input, max: None,
}
_MAX_POOL2D = inspect.Signature(list(inspect.signature(F._max_pool2d).parameters.values()))


def _frozen_pool_site(node: fx.Node, base: str, x) -> SiteSpec:
    if base not in ("max_pool2d", "max_pool2d_with_indices"):
        raise refuse(node, describe(node), "is max pooling that cannot be frozen", _FREEZE_HINT)
    bound = _MAX_POOL2D.bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    a = bound.arguments
    gate = MaxPoolGate(a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
    with_indices = a["return_indices"] or base.endswith("_with_indices")
    return _with_indices_dropped(SiteSpec(node, gate, (x,)), with_indices)


def _with_indices_dropped(spec: SiteSpec, with_indices: bool) -> SiteSpec:
    """A frozen pooling that returns (values, indices) is a site whose indices, where read (``max_unpool2d``), are
    computed from its switches: fixed for a fixed pattern."""
    if not with_indices:
        return spec
    users = list(spec.node.users)
    if not all(u.op == "call_function" and u.target is operator.getitem and u.args[1] in (0, 1) for u in users):
        raise refuse(spec.node, describe(spec.node), "returns values and indices that are read together", _FREEZE_HINT)
    spec.replaces = tuple(u for u in users if u.args[1] == 0)
    spec.indices = tuple(u for u in users if u.args[1] == 1)
    return spec


def _affine_value(node: fx.Node, gm: fx.GraphModule, pooling: str, values: dict, vouched: tuple) -> Value:
    """The `Value` of a non-site node with an input-dependent operand, or a refusal."""
    inputs = [values[a] for a in node.all_input_nodes]
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, _PASS_THROUGH_MODULES):
            return Value(1, _merge(node, inputs))
        if isinstance(m, _AFFINE_MODULES):
            if isinstance(m, nn.Embedding):
                raise refuse(node, type(m).__name__, "looks up an input-dependent index", _DISCRETE_HINT)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
                raise refuse(node, type(m).__name__, "normalises with batch statistics even in eval mode",
                             "construct it with track_running_stats=True")  # fmt: skip
            first = next(iter(inspect.signature(m.forward).parameters))
            _check_arguments(node, _call(node), _MODULE_OPERANDS.get(type(m), ((first,), (), ())), values)
            return Value(1, _batch_first(node, inputs))
        if isinstance(m, _RANDOM_POOL_MODULES):
            raise refuse(node, type(m).__name__, "pools over random regions", "use a deterministic pooling")
        if isinstance(m, _MAX_POOL_MODULES):  # live pooling: piecewise linear, the estimator says so
            return Value(1, _batch_first(node, inputs))
        if isinstance(m, vouched):
            return Value(1, _batch_first(node, inputs))
        raise refuse(node, type(m).__name__, _NOT_AFFINE, _module_hint(m))
    name = op_name(node)
    if name is None:
        raise refuse(node, describe(node), _NOT_AFFINE, "it is not a torch operation skqk knows to be affine")
    base = _base(name)[0]
    if base == "getattr":
        attribute = node.args[1]
        if attribute in _SHAPE_ATTRIBUTES:
            return FIXED
        if attribute in _TRANSPOSE_ATTRIBUTES:
            return Value(1, _lose(node, inputs))
        raise refuse(node, f"Tensor.{attribute}", _NOT_AFFINE, _RELU_ONLY_HINT)
    if base in _SHAPE_QUERIES:
        return FIXED
    if base in _RANDOM_POOLS:
        raise refuse(node, describe(node), "pools over random regions", "use a deterministic pooling")
    if is_max_pooling(node, gm):  # live (frozen pooling made it a site or refused it)
        over_dims = base in ("max", "min", "amax", "amin")  # a reduction like sum, by its dims
        return Value(1, _batch_of(node, "sum", inputs, values) if over_dims else _batch_first(node, inputs))
    if base not in _AFFINE:
        raise refuse(node, describe(node), _NOT_AFFINE, _RELU_ONLY_HINT)
    _check_arguments(node, _call(node), _OPERANDS.get(base, (("input",), (), ())), values)
    if base == "div" and _arg(node, 2, "rounding_mode") is not None:
        raise refuse(node, describe(node), "rounds", _RELU_ONLY_HINT)
    if base in _DROPOUTS and _arg(node, 2, "training", _DROPOUTS[base]):
        raise refuse(node, describe(node), "drops at random even in eval mode", "pass training=self.training")
    if base == "to" and any(isinstance(a, torch.dtype) and a not in (torch.float32, torch.float64)
                            for a in (*node.args[1:], *node.kwargs.values())):  # fmt: skip
        raise refuse(node, describe(node), "rounds to another dtype", "keep float32 or float64 inside the model")
    if base == "batch_norm" and _arg(node, 5, "training"):
        raise refuse(node, describe(node), "normalises with batch statistics", "call model.eval() first")
    return Value(1, _batch_of(node, base, inputs, values))


def _check_arguments(node: fx.Node, call: Call | None, operands: tuple, values: dict) -> None:
    """Every argument, by name, whether passed by position or keyword: only `operands` may depend on the input,
    and of the multiplied ones only one (a product of two input-dependent values is not affine)."""
    summed, multiplied, shape_only = operands
    if call is None:  # no signature of the op fits: only a single positional input is understood
        call = Call({"input": node.args[0]} if len(node.args) == 1 and not node.kwargs else {}, ("input",))
        if not call.arguments:
            raise refuse(node, describe(node), "has arguments that fit no signature of the op", _RELU_ONLY_HINT)
    if call.arguments.get("out") is not None:
        raise refuse(node, describe(node), "writes into out=", "use the result instead of out=")
    factors = []
    for key, arg in call.arguments.items():
        dependent = [a for a in _flat([arg]) if isinstance(a, fx.Node) and values[a].dep]
        if not dependent or key in summed or key in shape_only:
            continue
        if key not in multiplied:
            raise refuse(node, describe(node), _takes(key, node), _RELU_ONLY_HINT)
        factors += dependent
    if len(factors) > 1:
        names = ", ".join(repr(f.name) for f in factors)
        raise refuse(node, describe(node), f"multiplies two input-dependent tensors ({names})",
                     "an activation pattern cannot capture a product of two input-dependent values")  # fmt: skip


def _takes(key: str, node: fx.Node) -> str:
    name = op_name(node) or ""
    if _base(name)[0] in ("div", "divide", "true_divide", "remainder", "floor_divide") and key == "other":
        return "divides by an input-dependent tensor"
    if _base(name)[0] == "addcdiv" and key == "tensor2":
        return "divides by an input-dependent tensor"
    if key in ("index", "indices", "mask", "condition") or _base(name)[0] == "embedding":
        return "masks or indexes with an input-dependent tensor"
    return f"takes an input-dependent {key!r} (only its input may depend on the network input)"


def _apply_inplace(node: fx.Node, values: dict, root: dict) -> None:
    """An in-place op changes what its first operand (and every alias of it) holds for later readers."""
    name = op_name(node)
    call = _call(node)
    if name is None or not (_base(name)[1] or (call and call.writes)):
        return
    target = _arg(node, 0)
    if not isinstance(target, fx.Node):
        return
    new = values[node]
    for other in [n for n in values if root.get(n) is root[target]]:
        old = values[other]
        values[other] = Value(max(old.dep, new.dep), _merge(node, [old, new]), old.lost_at or new.lost_at)


def _track_alias(node: fx.Node, root: dict) -> None:
    """A result that may share memory with its first argument (a view by the op's schema, or the argument itself
    after an in-place op) has the same root storage."""
    call = _call(node)
    aliasing = node.op == "call_module" and isinstance(
        node.graph.owning_module.get_submodule(node.target), _PASS_THROUGH_MODULES + (nn.Flatten, nn.Unflatten)
    )
    if aliasing or (call is not None and (call.aliases or call.writes)):
        first = _arg(node, 0)
        if isinstance(first, fx.Node):
            root[node] = root[first]


def _check_inplace_aliases(spec: SiteSpec, root: dict, position: dict) -> None:
    """An in-place gate overwrites its input. Its later readers are rewired to the gate; a view or the base of
    that tensor read afterwards would still see the old values, so it is refused (exact or refused)."""
    x = spec.operands[0]
    after = position[spec.node]
    for other, r in root.items():
        if other is x or r is not root[x]:
            continue
        late = [u for u in other.users if position.get(u, -1) > after]
        if late:
            raise refuse(spec.node, describe(spec.node),
                         f"works in place on {x.name!r}, which shares memory with {other.name!r}, read afterwards "
                         f"by {late[0].name!r}", "use the out-of-place form (relu instead of relu_)")  # fmt: skip


# -- batch axis -------------------------------------------------------------------------------------------------
def _check_site_batch(spec: SiteSpec, values: dict) -> None:
    batches = [values[a] for a in spec.operands if isinstance(a, fx.Node) and values.get(a, FIXED).dep]
    batch = _merge(spec.node, batches)
    if batch != 0:
        lost = next((v.lost_at for v in batches if v.lost_at), "")
        because = f" (lost at node {lost!r})" if lost else ""
        raise refuse(spec.node, describe(spec.node), f"is a gate whose input has its samples moved or mixed{because}",
                     "a pattern is stored per sample: a gate's first axis must be the input's batch axis")  # fmt: skip


def _merge(node: fx.Node, inputs) -> int | None | str:
    batches = {v.batch for v in inputs if v.batch is not None}
    if not batches:
        return None
    return batches.pop() if len(batches) == 1 else MIXED


def _lose(node: fx.Node, inputs) -> int | None | str:
    return None if _merge(node, inputs) is None else MIXED


def _batch_first(node: fx.Node, inputs) -> int | None | str:
    """Ops that treat axis 0 as the batch (conv, linear, pooling, padding, ...): fine only if it is."""
    b = _merge(node, inputs)
    return b if b in (0, None) else MIXED


def _batch_of(node: fx.Node, base: str, inputs, values) -> int | None | str:
    b = _merge(node, inputs)
    if b is None or b == MIXED:
        return b
    if base in _ELEMENTWISE:
        return _broadcast_batch(node, values)
    if base in _BATCH_FIRST:
        return _batch_first(node, inputs)
    if base in _RESHAPES:  # keeps axis 0 as the batch iff its first size is the batch size (checked at run time)
        keeps = base != "unflatten" or _dim(_arg(node, 1, "dim"), _input_rank(node, values)) not in (0, None)
        return b if b == 0 and keeps else MIXED
    if base in ("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"):
        return _axis_moves(node, base, b, _input_rank(node, values))
    if base in ("mm", "matmul", "addmm", "addmv", "bmm", "baddbmm", "addbmm"):
        return _product_batch(node, base, values)
    if base == "getitem":
        return b if _returns_tuple(node.args[0]) else _index_batch(node.args[1], b, _input_rank(node, values))
    if base == "hstack":
        return b
    dims = _dims(node, base, values) if base in _DIM_POSITION else None
    if dims is None:  # repeat, tile, expand, einsum, outer, tril, a negative dim of a tensor of unknown rank, ...:
        return MIXED  # not followed, so a gate after them is refused
    ahead = dims
    if base in ("unsqueeze", "stack"):
        return b + 1 if ahead and ahead[0] <= b else b
    if not dims and base in ("sum", "mean", "roll", "cumsum", "squeeze"):
        return MIXED  # a reduction over everything, a flattened roll, a squeeze of a batch of one
    if b in ahead:
        return MIXED
    if base in ("squeeze", "select", "unbind") or (base in ("sum", "mean") and not _keepdim(node)):
        return b - sum(1 for d in ahead if d < b)
    return b


def _keepdim(node: fx.Node) -> bool:
    return _arg(node, 2, "keepdim") is True


def _returns_tuple(node) -> bool:
    """Whether `node` is a tuple of tensors (chunks, or values and indices), each with the node's batch axis."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "placeholder":
        return bool(node.meta.get("skqk_tuple"))
    if node.op == "call_module":
        return bool(getattr(node.graph.owning_module.get_submodule(node.target), "return_indices", False))
    name = op_name(node)
    base = _base(name)[0] if name else ""
    if base in ("chunk", "split", "tensor_split", "split_with_sizes", "unbind") or base.endswith("_with_indices"):
        return True
    if base in ("max", "min"):
        return _arg(node, 1, "dim") is not None
    return "pool" in base and bool(_named(node, "return_indices"))


def _product_batch(node: fx.Node, base: str, values: dict) -> int | str:
    """A matrix product keeps batch axis 0 when only its first matrix has samples (``x @ W``), or for `bmm`."""
    first, second = (1, 2) if base.startswith("add") or base == "baddbmm" else (0, 1)
    a, c = (_arg(node, first), _arg(node, second))
    batch_a = values[a].batch if isinstance(a, fx.Node) else None
    batch_c = values[c].batch if isinstance(c, fx.Node) else None
    if base in ("bmm", "baddbmm") and batch_a == 0 and batch_c in (0, None):
        return 0
    return 0 if batch_a == 0 and batch_c is None else MIXED


_DIM_POSITION = {"cat": 1, "concat": 1, "concatenate": 1, "stack": 1, "chunk": 2, "split": 2, "tensor_split": 2,
                 "split_with_sizes": 2, "unbind": 1, "squeeze": 1, "unsqueeze": 1, "select": 1, "narrow": 1,
                 "cumsum": 1, "sum": 1, "mean": 1, "index_select": 1, "gather": 1, "take_along_dim": 2, "flip": 1,
                 "roll": 2}  # fmt: skip
_DIM_ZERO_DEFAULT = {"cat", "concat", "concatenate", "stack", "chunk", "split", "tensor_split", "split_with_sizes",
                     "unbind"}  # fmt: skip


def _dims(node: fx.Node, base: str, values: dict) -> list[int] | None:
    """The dimension arguments of a structural op ([] if none), negative ones counted from the end of the tensor's
    rank (one more for unsqueeze and stack: the result's); None when one is not a Python int, or is negative and
    the rank is not known before the model runs (it might be the batch axis)."""
    keyword = "dims" if base in ("flip", "roll") else "dim"
    d = _arg(node, _DIM_POSITION[base], keyword, 0 if base in _DIM_ZERO_DEFAULT else None)
    dims = list(d) if isinstance(d, (list, tuple)) else [] if d is None else [d]
    rank = _input_rank(node, values)
    if rank is not None and base in ("unsqueeze", "stack"):
        rank += 1
    normalised = [_dim(x, rank) for x in dims]
    return None if None in normalised else normalised


def _dim(d, rank: int | None) -> int | None:
    """Dimension `d` counted from the front, or None if it is not an int or is negative with an unknown rank."""
    if not isinstance(d, int) or isinstance(d, bool):
        return None
    if d >= 0:
        return d
    return d + rank if rank is not None and d + rank >= 0 else None


def _input_rank(node: fx.Node, values: dict) -> int | None:
    """The rank of `node`'s first tensor argument (the first of a list of them), if known."""
    first = _arg(node, 0)
    if isinstance(first, (list, tuple)) and first:
        first = first[0]
    return values[first].rank if isinstance(first, fx.Node) and first in values else None


def _broadcast_batch(node: fx.Node, values: dict) -> int | None | str:
    """An element-wise op broadcasts its operands from the last axis: an operand with fewer axes than the result
    has its batch axis moved back by the difference (when both ranks are known)."""
    out = _broadcast_rank(node, values)
    batches = set()
    for a in node.all_input_nodes:
        v = values[a]
        if v.batch is not None:
            shift = out - v.rank if isinstance(v.batch, int) and out is not None and v.rank is not None else 0
            batches.add(v.batch + shift if isinstance(v.batch, int) else v.batch)
    if not batches:
        return None
    return batches.pop() if len(batches) == 1 else MIXED


def _broadcast_rank(node: fx.Node, values: dict) -> int | None:
    ranks = [values[a].rank for a in node.all_input_nodes if values[a].rank != 0 or values[a].dep]
    return max(ranks) if ranks and None not in ranks else None


_SPATIAL = re.compile(r"(?:conv|conv_transpose|pool|pad|norm|upsampl)\w*?([123])d", re.IGNORECASE)


def _rank_of(node: fx.Node, gm: fx.GraphModule, values: dict) -> int | None:
    """How many axes `node`'s value has, where the graph says so without running the model (None otherwise)."""
    if node.op == "get_attr":
        t = _attribute(gm, node.target)
        return t.dim() if isinstance(t, torch.Tensor) else None
    if not node.op.startswith("call_"):
        return None
    x = _input_rank(node, values)
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.Flatten):
            return _flattened_rank(m.start_dim, m.end_dim, x)
        if isinstance(m, GATE_MODULES + _PASS_THROUGH_MODULES + (nn.Linear,)) or isinstance(m, Gate):
            return x
        spatial = _SPATIAL.search(type(m).__name__)
        return x if x is not None or not spatial else int(spatial.group(1)) + 2
    name = op_name(node)
    base = _base(name)[0] if name else ""
    call = _call(node)
    a = call.arguments if call else {}
    if base in ("view", "reshape"):
        shape = a.get("size", a.get("shape"))
        return len(shape) if isinstance(shape, (list, tuple)) else None
    if base in ("view_as", "reshape_as", "expand_as"):
        other = a.get("other")
        return values[other].rank if isinstance(other, fx.Node) else None
    if base == "flatten":
        return _flattened_rank(a.get("start_dim", 0), a.get("end_dim", -1), x)
    if x is None:
        spatial = _SPATIAL.search(base)
        return int(spatial.group(1)) + 2 if spatial else None
    if base in ("unsqueeze", "stack"):
        return x + 1
    if base in ("select", "unbind"):
        return x - 1
    if base in ("sum", "mean", "amax", "amin"):
        dims = a.get("dim")
        dims = [] if dims is None else list(dims) if isinstance(dims, (list, tuple)) else [dims]
        return x if _keepdim(node) else 0 if not dims else x - len(dims)
    if base == "getitem":
        return x if _returns_tuple(node.args[0]) else _indexed_rank(node.args[1], x)
    if base == "permute":
        return len(a["dims"]) if isinstance(a.get("dims"), (list, tuple)) else x
    if base in _ELEMENTWISE | set(_COMPARISONS) | {"maximum", "minimum"}:
        return _broadcast_rank(node, values)
    if base in _STRUCTURAL - {"transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "flip", "roll", "narrow",
                              "chunk", "split", "tensor_split", "split_with_sizes", "cat", "concat", "concatenate",
                              "cumsum", "index_select", "gather", "take_along_dim", "tril", "triu"}:  # fmt: skip
        return None
    return x  # the rest keep the rank of their input: activations, conv, linear, pooling, padding, ...


def _flattened_rank(start, end, rank: int | None) -> int | None:
    if rank is None:  # flatten(start) of a tensor of unknown rank still has start + 1 axes
        return start + 1 if isinstance(start, int) and start >= 0 and end == -1 else None
    start, end = _dim(start, rank), _dim(end, rank)
    return None if start is None or end is None else rank - (end - start)


def _indexed_rank(index, rank: int | None) -> int | None:
    items = list(index) if isinstance(index, tuple) else [index]
    if rank is None or any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in items):
        return None
    return rank - sum(isinstance(i, int) for i in items) + sum(i is None for i in items)


def _attribute(gm: fx.GraphModule, target: str):
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name, None)


def _axis_moves(node: fx.Node, base: str, b: int, rank: int | None) -> int | str:
    """Where permute / transpose / movedim put batch axis `b`; `MIXED` where a dimension cannot be placed."""
    call = _call(node)
    if call is None:
        return MIXED
    keys = ("dims",) if base == "permute" else [k for k in call.positional[1:3]]
    raw = [d for k in keys for d in (call.arguments[k] if isinstance(call.arguments[k], (list, tuple))
                                     else [call.arguments[k]])]  # fmt: skip
    if base == "permute":
        rank = len(raw)
    dims = [_dim(d, rank) for d in raw]
    if not dims or None in dims or base in ("movedim", "moveaxis") and len(dims) != 2:
        return MIXED
    if base == "permute":
        return dims.index(b) if b in dims else MIXED
    src, dst = dims[:2]
    if base in ("movedim", "moveaxis"):
        order = [d for d in range(max(b, src, dst) + 1) if d != src]
        order.insert(dst, src)
        return order.index(b)
    return dst if b == src else src if b == dst else b


def _index_batch(index, b: int, rank: int | None) -> int | str:
    """Where `x[index]` puts the batch axis `b` of x: None, ints and slices before it shift it; a slice at it
    keeps it (a slice that drops samples changes the row count, checked at run time); an int at it, or any
    tensor index (advanced indexing moves axes), loses it. An Ellipsis stands for as many full slices as the
    rank leaves; with an unknown rank, only Nones and slices may follow it."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in items):
        return MIXED
    if Ellipsis in items:
        at = items.index(Ellipsis)
        after = items[at + 1 :]
        if rank is None:
            return _index_batch_plain(items[:at], b) if all(i is None or isinstance(i, slice) for i in after) else MIXED
        covered = rank - sum(i is not None for i in items if i is not Ellipsis)
        items = [*items[:at], *[slice(None)] * max(covered, 0), *after]
    return _index_batch_plain(items, b)


def _index_batch_plain(items: list, b: int) -> int | str:
    """`_index_batch` for items without an Ellipsis (the axes after the last item are kept in order)."""
    axis, out = 0, 0
    for item in items:
        if item is None:
            out += 1
            continue
        if axis == b:
            return out if isinstance(item, slice) else MIXED
        out += 0 if isinstance(item, int) else 1
        axis += 1
    return out + (b - axis)


# -- messages ---------------------------------------------------------------------------------------------------
_NOT_AFFINE = "is not known to be affine in the input for a fixed pattern"
_RELU_ONLY_HINT = "skqk decouples piecewise-linear networks only (see docs/design.md, 'Supported activations')"
_FREEZE_HINT = "only nn.MaxPool2d / F.max_pool2d switches can be frozen; use pooling='live'"
_DISCRETE_HINT = "an index or mask must be a model input or come from parameters, not from the activations"


def _module_hint(m: nn.Module) -> str:
    if isinstance(m, (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
                      nn.TransformerEncoder, nn.TransformerDecoder)):  # fmt: skip
        return "attention multiplies input-dependent tensors (not piecewise linear)"
    if type(m).__module__.startswith("torch.nn"):
        return _RELU_ONLY_HINT
    return "fx keeps it whole (a leaf), so skqk cannot see inside; trace through it or pass it in leaf_modules"


def describe(node: fx.Node) -> str:
    """How the user wrote `node`: `torch.floor`, `F.gelu`, `Tensor.clamp_`, a module type."""
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_module":
        return type(node.graph.owning_module.get_submodule(node.target)).__name__
    target = node.target
    name = getattr(target, "__name__", str(target))
    if getattr(F, name, None) is target:
        return f"F.{name}"
    if getattr(torch, name, None) is target:
        return f"torch.{name}"
    return f"{getattr(target, '__module__', None) or 'operator'}.{name}"


def readable_name(node: fx.Node) -> str:
    return node.target if node.op == "call_module" else node.name


def location(node: fx.Node) -> str:
    """' in module 'layer1.0' at net.py:42': where `node` is in the user's code, from fx's metadata."""
    parts = []
    stack = node.meta.get("nn_module_stack") or {}
    if node.op != "call_module" and stack:
        path = list(stack.values())[-1][0]
        if path:
            parts.append(f" in module {path!r}")
    frames = re.findall(r'File "(.+?)", line (\d+)', node.stack_trace or "")
    torch_dir = os.path.dirname(torch.__file__)
    skqk_dir = os.path.dirname(__file__)
    user = [(f, line) for f, line in frames if not f.startswith((torch_dir, skqk_dir))]
    if user:
        parts.append(f" at {os.path.basename(user[-1][0])}:{user[-1][1]}")
    return "".join(parts)


def refuse(node: fx.Node, what: str, why: str, hint: str) -> DecouplingError:
    return DecouplingError(f"node {readable_name(node)!r} ({what}){location(node)} {why}; {hint}")


# -- small helpers ----------------------------------------------------------------------------------------------
def _call(node: fx.Node) -> Call | None:
    """`node`'s arguments by name (`skqk._schemas.bind`), computed once per node."""
    if "skqk_call" not in node.meta:
        target = node.graph.owning_module.get_submodule(node.target) if node.op == "call_module" else None
        node.meta["skqk_call"] = bind(node, op_name(node), target) if node.op.startswith("call_") else None
    return node.meta["skqk_call"]


def _named(node: fx.Node, keyword: str, default=None):
    """The argument called `keyword`, whether passed by position or keyword (`default` if the op has none)."""
    call = _call(node)
    value = call.arguments.get(keyword) if call else node.kwargs.get(keyword)
    return default if value is None else value


def _arg(node: fx.Node, position: int, keyword: str | None = None, default=None):
    """The argument called `keyword`, or else the one at `position`, whether passed by position or keyword."""
    call = _call(node)
    if call is None:
        if position < len(node.args):
            return node.args[position]
        return node.kwargs.get(keyword, default) if keyword else default
    if keyword in call.arguments:
        value = call.arguments[keyword]
    elif position < len(call.positional):
        value = call.arguments.get(call.positional[position])
    else:
        value = None
    return default if value is None else value


def _flat(args) -> list:
    out = []
    for a in args:
        out.extend(_flat(a) if isinstance(a, (list, tuple)) else [a])
    return out
