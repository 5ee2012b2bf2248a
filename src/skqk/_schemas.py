"""Every argument of an fx node by name, whether it was passed by position or by keyword, from the op's own schema.

`skqk.linearity` decides what an argument is (the input, a factor, a divisor, an index, a dimension) by its name in
the op's signature: the ATen schema for torch operators and Tensor methods (``self`` is called ``input``, as in
Python), `inspect.signature` for Python functions (most of ``torch.nn.functional``) and module ``forward``\\ s. The
same ATen schema says whether the result may share memory with the first argument (a view) and whether the op
writes into it (in place), from its alias annotations (``Tensor(a) self -> Tensor(a)``, ``Tensor(a!) self``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.fx as fx


@dataclass(frozen=True)
class Call:
    """The arguments of one call, by name, in signature order, with the defaults of those not passed."""

    arguments: dict
    positional: tuple[str, ...]  # the names that can be passed by position, in order
    aliases: bool = False  # the result may share memory with the first argument
    writes: bool = False  # the op writes into its first argument


_PYTHON_ONLY = {  # operators and Tensor methods with no ATen schema of their own
    "getitem": ("input", "index"),
    "setitem": ("input", "index", "value"),
    "getattr": ("input", "name"),
    "len": ("input",),
}
# Python-level ops that may return their input itself or a view of it
_VIEWS_WITHOUT_SCHEMA = {"getitem", "float", "double", "half", "bfloat16", "dropout", "feature_alpha_dropout",
                         "alpha_dropout", "dropout1d", "dropout2d", "dropout3d"}  # fmt: skip


def bind(node: fx.Node, name: str | None, target=None) -> Call | None:
    """The `Call` of `node` (`name`: its torch name, see `skqk.linearity.op_name`; `target`: the module it calls),
    or None when no signature of the op accepts these arguments."""
    if node.op == "call_module":
        return _bind_signature(inspect.signature(target.forward), node.args, node.kwargs)
    if name is None:
        return None
    if name in _PYTHON_ONLY or getattr(node.target, "__module__", None) == "_operator":
        names = _PYTHON_ONLY.get(name, ("input", "other")[: len(node.args)])  # `2 * h` is `h.__rmul__(2)`
        if len(node.args) > len(names) or node.kwargs:
            return None
        writes = name == "setitem" or name.endswith("_")  # operator.iadd, ...: `h += g`
        return Call(dict(zip(names, node.args)), names, aliases=name == "getitem", writes=writes)
    if node.op == "call_function" and _is_python_function(node.target):  # operator.*: ATen's, by `name`
        call = _bind_signature(_python_signature(node.target, name), node.args, node.kwargs)
        if call is not None and name in _VIEWS_WITHOUT_SCHEMA:
            call = Call(call.arguments, call.positional, aliases=True)
        return call
    call = _bind_aten(name, node.args, node.kwargs)
    if call is None and name in _VIEWS_WITHOUT_SCHEMA and not node.kwargs:  # Tensor.float() and its kin
        call = Call({"input": node.args[0]}, ("input",), aliases=True) if len(node.args) == 1 else None
    return call


def _is_python_function(target) -> bool:
    if getattr(target, "__module__", None) == "_operator":
        return False
    try:
        inspect.signature(target)
    except (TypeError, ValueError):  # a builtin: its schema is ATen's
        return False
    return True


def _python_signature(target, name: str) -> inspect.Signature:
    """Its signature; for the functions torch dispatches on a flag (``F.max_pool2d(..., return_indices)``), which
    take ``*args, **kwargs``, that of the function they dispatch to (``F._max_pool2d``)."""
    signature = inspect.signature(target)
    kinds = {p.kind for p in signature.parameters.values()}
    twin = getattr(torch.nn.functional, f"_{name}", None)
    if kinds == {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} and callable(twin):
        return inspect.signature(twin)
    return signature


def _bind_signature(signature: inspect.Signature, args: tuple, kwargs: dict) -> Call | None:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = tuple(p.name for p in signature.parameters.values() if p.kind in kinds)
    return Call(dict(bound.arguments), positional, writes=bound.arguments.get("inplace") is True)


def _bind_aten(name: str, args: tuple, kwargs: dict) -> Call | None:
    """The first overload of ``aten::name`` that these arguments fit: first with every fx node taken for a tensor,
    then with a node allowed where a number is expected (a size computed from shapes)."""
    schemas = torch._C._jit_get_schemas_for_operator(f"aten::{name}")
    for loose in (False, True):
        for schema in schemas:
            call = _bind_schema(schema, args, kwargs, loose)
            if call is not None:
                return call
    return None


def _bind_schema(schema, args: tuple, kwargs: dict, loose: bool) -> Call | None:
    params = schema.arguments
    names = ["input" if p.name == "self" else p.name for p in params]
    positional = [i for i, p in enumerate(params) if not p.kwarg_only]
    args = list(args)
    if len(args) > len(positional) and positional and _int_list(params[positional[-1]].type):
        last = len(positional) - 1  # Tensor.view(2, 3): the trailing integers are the list
        args = [*args[:last], tuple(args[last:])]
    if len(args) > len(positional):
        return None
    given = {names[i]: v for i, v in zip(positional, args)}
    for key, v in kwargs.items():
        if key not in names or key in given:
            return None
        given[key] = v
    arguments = {}
    for n, p in zip(names, params):
        if n in given:
            if not _fits(p.type, given[n], loose):
                return None
            arguments[n] = given[n]
        elif p.has_default_value():
            arguments[n] = p.default_value
        else:
            return None
    first = params[0].alias_info if params else None
    returns = schema.returns[0].alias_info if schema.returns else None
    aliases = bool(first and returns and first.before_set & returns.before_set)
    writes = bool(first and first.is_write)
    return Call(arguments, tuple(names[i] for i in positional), aliases, writes)


def _int_list(t) -> bool:
    return t.kind() == "ListType" and t.getElementType().kind() in ("IntType", "SymIntType")


def _fits(t, v, loose: bool) -> bool:
    """Whether value `v` (an fx node, or a constant fx recorded) can be passed where the schema expects type `t`."""
    kind = t.kind()
    if kind == "OptionalType":
        return v is None or _fits(t.getElementType(), v, loose)
    if isinstance(v, fx.Node):
        return kind == "TensorType" or loose and kind not in ("StringType", "NoneType")
    if kind == "TensorType":
        return isinstance(v, torch.Tensor)
    if kind == "ListType":
        element = t.getElementType()
        if isinstance(v, (list, tuple)):
            return all(_fits(element, x, loose) for x in v)
        return _int_list(t) and _fits(element, v, loose)  # an int where an int[1] is expected
    return _CONSTANTS.get(kind, lambda v: True)(v)


_CONSTANTS = {
    "IntType": lambda v: isinstance(v, (int, torch.dtype, torch.memory_format, torch.layout)),
    "SymIntType": lambda v: isinstance(v, int),
    "FloatType": lambda v: isinstance(v, (int, float)),
    "NumberType": lambda v: isinstance(v, (int, float, complex)),
    "BoolType": lambda v: isinstance(v, (bool, int)),
    "StringType": lambda v: isinstance(v, str),
    "DeviceObjType": lambda v: isinstance(v, (str, int, torch.device)),
    "GeneratorType": lambda v: isinstance(v, torch.Generator),
    "NoneType": lambda v: v is None,
}
