"""Proof, node by node, that the estimator is affine in the input for a fixed activation pattern — or a refusal.

The paper's estimator is a linear model per activation pattern (section 3.1). That holds only if every graph
node is, once the gates' states are fixed, affine in the network input. So each node is *accepted* only for
what it is known to do, never because it is missing from a list of non-linearities:

* every node whose inputs are all fixed for a fixed pattern (parameters, shapes and Python-int arithmetic on
  them, recorded SK, discrete inputs such as masks and token ids) is fixed itself — whatever it computes,
  even a ReLU of a parameter (a constant function of the QK, trained as such);
* a node with an input-dependent operand must be a known affine operation (`_AFFINE`, `_AFFINE_MODULES`), a
  product/division with at most one input-dependent factor (never an input-dependent divisor), or a *site*:
  a piecewise-linear activation, a comparison, or a max pooling frozen into switches (`skqk.gates`);
* anything else is refused, naming the node, what it is and where it is in the user's code.

It also follows the batch axis (`Value.batch`) so that every site's states are really per sample: a gate whose
input has its samples moved or mixed is refused, and `PathSelector` checks the row count of every state at run
time (what a reshape keeps is only known then).
"""

from __future__ import annotations

import builtins
import inspect
import operator
import os
import re
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from skqk.gates import (
    ClampGate,
    ComparisonGate,
    Gate,
    LeakyReluGate,
    MaxPoolGate,
    PReluGate,
    ReluGate,
    SelectGate,
)

MIXED = "mixed"  # a batch axis that was moved or whose samples were mixed


class DecouplingError(ValueError):
    """The model cannot be split into a path selector and an estimator (the message says why)."""


@dataclass(frozen=True)
class Value:
    """What is known about one node's value.

    `dep` is 1 when the value is affine in the network input for a fixed pattern, 0 when it is fixed for a fixed
    pattern. `batch` is the axis that holds the samples (None: the same for every sample; `MIXED`: lost).
    `lost_at` names the node that lost the batch axis, for the error message.
    """

    dep: int
    batch: int | None | str
    lost_at: str = ""


@dataclass
class SiteSpec:
    """A node to replace by ``gate(*operands, state)``; `inplace` sites overwrite ``operands[0]``."""

    node: fx.Node
    gate: Gate
    operands: tuple
    inplace: bool = False
    replaces: tuple = ()  # getitem(node, 0) users to replace too (max pooling with return_indices=True)


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
GATE_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh, nn.Threshold)

# Affine operations, by how they move the batch axis (see `_batch_of`). Index/mask arguments must be fixed.
_ELEMENTWISE = {"add", "sub", "rsub", "neg", "negative", "positive", "clone", "contiguous", "float", "double", "to",
                "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
                "masked_fill", "where", "mul", "multiply", "div", "divide", "true_divide", "setitem",
                "expand_as"}  # fmt: skip
_BATCH_FIRST = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                "bilinear", "batch_norm", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                "adaptive_avg_pool2d", "adaptive_avg_pool3d", "pad", "interpolate", "upsample", "upsample_nearest",
                "upsample_bilinear", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
                "native_channel_shuffle", "embedding", "fliplr"}  # fmt: skip
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
# (product-like op, positions of its factors): at most one factor may depend on the input.
_FACTORS = {"mul": (0, 1), "multiply": (0, 1), "matmul": (0, 1), "mm": (0, 1), "bmm": (0, 1), "outer": (0, 1),
            "inner": (0, 1), "dot": (0, 1), "linear": (0, 1), "conv1d": (0, 1), "conv2d": (0, 1),
            "conv3d": (0, 1), "conv_transpose1d": (0, 1), "conv_transpose2d": (0, 1), "conv_transpose3d": (0, 1),
            "bilinear": (0, 1, 2), "addmm": (1, 2), "baddbmm": (1, 2), "addbmm": (1, 2), "addmv": (1, 2),
            "einsum": None}  # fmt: skip
# (op, positions of arguments that must be fixed for a fixed pattern: divisors, masks, indices).
_MUST_BE_FIXED = {"div": (1,), "divide": (1,), "true_divide": (1,), "masked_fill": (1, 2), "where": (0,),
                  "index_select": (2,), "gather": (2,), "take_along_dim": (1,), "embedding": (0,),
                  "setitem": (1,), "getitem": (1,)}  # fmt: skip
_AFFINE_MODULES = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.AvgPool1d, nn.AvgPool2d,
                   nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.ZeroPad1d,
                   nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
                   nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
                   nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
                   nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle,
                   nn.PixelUnshuffle, nn.ChannelShuffle, nn.Fold, nn.Unfold, nn.Embedding, nn.Flatten,
                   nn.Unflatten)  # fmt: skip
_PASS_THROUGH_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                         nn.FeatureAlphaDropout)  # fmt: skip
AFFINE_MODULES = _AFFINE_MODULES + _PASS_THROUGH_MODULES  # torch.nn modules known to be affine
_ALIASING = _RESHAPES | _STRUCTURAL - {"sum", "mean", "cumsum", "matmul", "mm", "bmm", "einsum", "outer", "inner",
                                       "dot", "addmm", "baddbmm", "addbmm", "addmv", "cat", "concat",
                                       "concatenate", "stack", "hstack", "vstack", "index_select", "gather",
                                       "take_along_dim", "repeat", "tile", "flip", "flipud", "roll", "tril",
                                       "triu"}  # fmt: skip
_ALIASING |= {"contiguous", "float", "double", "to", "dropout"}
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
        other = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        return not isinstance(other, fx.Node) and "other" not in node.kwargs
    return name in _MAX_POOLS or name in _RANDOM_POOLS


# -- the analysis -----------------------------------------------------------------------------------------------
def analyse(gm: fx.GraphModule, pooling: str, vouched_leaves: tuple) -> list[SiteSpec]:
    """The sites of `gm` in graph order; raise `DecouplingError` on the first node that is not proven affine."""
    values: dict[fx.Node, Value] = {}
    discrete = _discrete_inputs(gm.graph)
    root = {}  # node -> the node whose storage it may alias
    position = {n: i for i, n in enumerate(gm.graph.nodes)}
    sites = []
    for node in gm.graph.nodes:
        root[node] = node
        if node.op == "placeholder":
            values[node] = FIXED if node.args or node in discrete else Value(1, 0)
            continue
        if node.op in ("get_attr", "output"):
            values[node] = FIXED
            continue
        inputs = [values[a] for a in node.all_input_nodes]
        if all(v.dep == 0 for v in inputs):
            values[node] = Value(0, _merge(node, inputs))
            _track_alias(node, root)
            continue
        spec = _site(node, gm, pooling, values)
        if spec is not None:
            _check_site_batch(spec, values)
            if spec.inplace:
                _check_inplace_aliases(spec, root, position)
            sites.append(spec)
            values[node] = Value(0 if isinstance(spec.gate, ComparisonGate) else 1, _merge(node, inputs))
            for r in spec.replaces:
                values[r] = values[node]
            continue
        values[node] = _with_culprit(node, _affine_value(node, gm, pooling, values, vouched_leaves), inputs)
        _track_alias(node, root)
        _apply_inplace(node, values, root)
    return sites


def _with_culprit(node: fx.Node, value: Value, inputs: list[Value]) -> Value:
    """Remember which node first moved the batch axis away from 0 or mixed samples."""
    if value.batch in (0, None) or value.lost_at:
        return value
    inherited = next((v.lost_at for v in inputs if v.lost_at), "")
    return Value(value.dep, value.batch, inherited or node.name)


def _discrete_inputs(graph: fx.Graph) -> set[fx.Node]:
    """Inputs used as a mask or an index: they are bool/integer, fixed like the pattern, not affine inputs."""
    found = set()
    for node in graph.nodes:
        name = op_name(node)
        positions = _MUST_BE_FIXED.get(_base(name)[0], ()) if name else ()
        if node.op == "call_module":
            positions = (0,) if isinstance(node.graph.owning_module.get_submodule(node.target), nn.Embedding) else ()
        for p in positions:
            arg = _arg(node, p)
            if isinstance(arg, fx.Node) and arg.op == "placeholder" and not (name == "getitem" and p == 0):
                found.add(arg)
    return found


def _site(node: fx.Node, gm: fx.GraphModule, pooling: str, values: dict) -> SiteSpec | None:
    """A `SiteSpec` when `node` is a gate site; None when it is not one."""
    if node.op == "call_module":
        return _module_site(node, gm.get_submodule(node.target), pooling)
    name = op_name(node)
    if name is None:
        return None
    base, inplace = _base(name)
    x = node.args[0] if node.args else None
    inplace = inplace or bool(node.kwargs.get("inplace", False))
    if base == "relu":
        return SiteSpec(node, ReluGate(), (x,), inplace or (len(node.args) > 1 and node.args[1] is True))
    if base in ("leaky_relu", "relu6", "hardtanh", "threshold", "clamp", "clip", "clamp_min", "clamp_max"):
        gate, inplace_arg = _clamp_like(node, base)
        return SiteSpec(node, gate, (x,), inplace or inplace_arg)
    if base == "prelu":
        return SiteSpec(node, PReluGate(), (x, _arg(node, 1, "weight")))
    if base in ("maximum", "minimum", "max", "min") and not is_max_pooling(node, gm):
        other = _arg(node, 1, "other")
        return SiteSpec(node, SelectGate(take_larger=base in ("maximum", "max")), (x, other), inplace)
    if base in _COMPARISONS:
        return SiteSpec(node, ComparisonGate(_COMPARISONS[base]), (x, _arg(node, 1, "other")), inplace)
    if is_max_pooling(node, gm) and pooling == "frozen":
        return _frozen_pool_site(node, base, x)
    return None


def _module_site(node: fx.Node, m: nn.Module, pooling: str) -> SiteSpec | None:
    x = node.args[0]
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
    return ClampGate(low, high, inclusive=True), False  # clamp passes the gradient at its bounds


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
    """A frozen pooling that returns (values, indices) is a site if only its values are read."""
    if not with_indices:
        return spec
    users = list(spec.node.users)
    if not all(u.op == "call_function" and u.target is operator.getitem and u.args[1] == 0 for u in users):
        raise refuse(spec.node, describe(spec.node), "returns pooling indices that are read", _FREEZE_HINT)
    spec.replaces = tuple(users)
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
    _check_factors(node, base, values)
    if base == "div" and node.kwargs.get("rounding_mode") is not None:
        raise refuse(node, describe(node), "rounds", _RELU_ONLY_HINT)
    if base in _DROPOUTS and _arg(node, 2, "training", _DROPOUTS[base]):
        raise refuse(node, describe(node), "drops at random even in eval mode", "pass training=self.training")
    if base == "to" and any(isinstance(a, torch.dtype) and a not in (torch.float32, torch.float64)
                            for a in (*node.args[1:], *node.kwargs.values())):  # fmt: skip
        raise refuse(node, describe(node), "rounds to another dtype", "keep float32 or float64 inside the model")
    if base == "batch_norm" and _arg(node, 5, "training"):
        raise refuse(node, describe(node), "normalises with batch statistics", "call model.eval() first")
    return Value(1, _batch_of(node, base, inputs, values))


def _check_factors(node: fx.Node, base: str, values: dict) -> None:
    """Products with more than one input-dependent factor, and anything that divides by, masks with or
    indexes by an input-dependent tensor, are not affine."""
    if base in _FACTORS:
        positions = _FACTORS[base]
        args = node.args[1:] if positions is None else [_arg(node, p) for p in positions]
        factors = [a for a in _flat(args) if isinstance(a, fx.Node) and values[a].dep]
        if len(factors) > 1:
            names = ", ".join(repr(f.name) for f in factors)
            raise refuse(node, describe(node), f"multiplies two input-dependent tensors ({names})",
                         "an activation pattern cannot capture a product of two input-dependent values")  # fmt: skip
    for p in _MUST_BE_FIXED.get(base, ()):
        arg = _arg(node, p)
        if any(isinstance(a, fx.Node) and values[a].dep for a in _flat([arg])):
            what = "divides by" if base in ("div", "divide", "true_divide") else "masks or indexes with"
            raise refuse(node, describe(node), f"{what} an input-dependent tensor", _RELU_ONLY_HINT)


def _apply_inplace(node: fx.Node, values: dict, root: dict) -> None:
    """An in-place op changes what its first operand (and every alias of it) holds for later readers."""
    name = op_name(node)
    if name is None or not (_base(name)[1] or name == "setitem"):
        return
    target = node.args[0]
    if not isinstance(target, fx.Node):
        return
    new = values[node]
    for other in [n for n in values if root.get(n) is root[target]]:
        old = values[other]
        values[other] = Value(max(old.dep, new.dep), _merge(node, [old, new]), old.lost_at or new.lost_at)


def _track_alias(node: fx.Node, root: dict) -> None:
    name = op_name(node)
    aliasing = node.op == "call_module" and isinstance(
        node.graph.owning_module.get_submodule(node.target), _PASS_THROUGH_MODULES + (nn.Flatten, nn.Unflatten)
    )
    if aliasing or (name is not None and _base(name)[0] in _ALIASING):
        first = node.args[0] if node.args else None
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
        return b
    if base in _BATCH_FIRST:
        return _batch_first(node, inputs)
    if base in _RESHAPES:  # keeps axis 0 as the batch iff its first size is the batch size (checked at run time)
        return b if b == 0 and (base != "unflatten" or _int(_arg(node, 1, "dim"), -1) != 0) else MIXED
    if base in ("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"):
        return _axis_moves(node, base, b)
    if base in ("mm", "matmul", "addmm", "addmv", "bmm", "baddbmm", "addbmm"):
        return _product_batch(node, base, values)
    if base == "getitem":
        return b if _returns_tuple(node.args[0]) else _index_batch(node.args[1], b)
    if base == "hstack":
        return b
    dims = _dims(node, base) if base in _DIM_POSITION else None
    if dims is None:
        return MIXED  # repeat, tile, expand, einsum, outer, tril, ...: not followed, so a gate after them is refused
    ahead = [d for d in dims if d >= 0]  # see `_dims` for negative dimensions
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
    return bool(node.kwargs.get("keepdim", False)) or (len(node.args) > 2 and node.args[2] is True)


def _returns_tuple(node) -> bool:
    """Whether `node` is a tuple of tensors (chunks, or values and indices), each with the node's batch axis."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_module":
        return bool(getattr(node.graph.owning_module.get_submodule(node.target), "return_indices", False))
    name = op_name(node)
    base = _base(name)[0] if name else ""
    if base in ("chunk", "split", "tensor_split", "split_with_sizes", "unbind") or base.endswith("_with_indices"):
        return True
    if base in ("max", "min"):
        return _arg(node, 1, "dim") is not None
    return "pool" in base and bool(node.kwargs.get("return_indices", False))


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


def _dims(node: fx.Node, base: str) -> list[int] | None:
    """The dimension arguments of a structural op as written ([] if none); None when one is not a Python int.

    A negative dimension counts from the end: it is not the batch axis unless the tensor has no other axis, and
    then the row count of the pattern no longer equals the batch size (checked when patterns are recorded).
    """
    keyword = "dims" if base in ("flip", "roll") else "dim"
    d = _arg(node, _DIM_POSITION[base], keyword, 0 if base in _DIM_ZERO_DEFAULT else None)
    dims = list(d) if isinstance(d, (list, tuple)) else [] if d is None else [d]
    return dims if all(isinstance(x, int) for x in dims) else None


def _axis_moves(node: fx.Node, base: str, b: int) -> int | str:
    """Where permute / transpose / movedim put batch axis `b`; `MIXED` where a dimension is negative."""
    args = list(node.args[1:]) + list(node.kwargs.values())
    dims = list(args[0]) if base == "permute" and args and isinstance(args[0], (list, tuple)) else args
    if not dims or not all(isinstance(d, int) and d >= 0 for d in dims):
        return MIXED
    if base == "permute":
        return dims.index(b) if b in dims else MIXED
    src, dst = dims[:2]
    if base in ("movedim", "moveaxis"):
        order = [d for d in range(max(b, src, dst) + 1) if d != src]
        order.insert(dst, src)
        return order.index(b)
    return dst if b == src else src if b == dst else b


def _index_batch(index, b: int) -> int | str:
    """Where `x[index]` puts the batch axis `b` of x: None, ints and slices before it shift it; a slice at it
    keeps it (a slice that drops samples changes the row count, checked at run time); an int at it, or any
    tensor index (advanced indexing moves axes), loses it."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in items):
        return MIXED
    axis, out = 0, 0
    for item in items:
        if item is Ellipsis:  # it covers the batch axis unless the tensor has fewer axes (checked at run time)
            return out + (b - axis)
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
def _arg(node: fx.Node, position: int, keyword: str | None = None, default=None):
    if position < len(node.args):
        return node.args[position]
    return node.kwargs.get(keyword, default) if keyword else default


def _int(v, default: int) -> int:
    return v if isinstance(v, int) else default


def _flat(args) -> list:
    out = []
    for a in args:
        out.extend(_flat(a) if isinstance(a, (list, tuple)) else [a])
    return out
