"""Model zoo: the paper's three CIFAR-10 networks, by name, adapting to channels, image size and classes — or
the user's own network, by import path (``my_pkg.nets:build_net``), built only when the caller trusts it.

An import path is code: importing it runs its module. Checkpoints, stores and federated messages name their model,
so `resolve` is the one trust boundary every builder goes through: a zoo name is always built, an import path only
when the caller's `trust` names it (the CLI's ``--model``, a federated node's ``trust-model``), as
``trust_remote_code`` in transformers and ``trust_repo`` in torch.hub.

Example:
    >>> from skqk import models
    >>> net = models.build("vgg8", in_channels=3, image_size=32, num_classes=10)
    >>> models.list_models()
    ['alexnet', 'lenet5', 'mlp', 'vgg8']
    >>> net = models.build("mlp", in_features=12, num_classes=1, widths=[64, 32], dropout=0.1)
    >>> net = models.build("my_pkg.nets:build_net", num_classes=10, width=64, trust=["my_pkg.nets:build_net"])
"""

import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Collection

from torch import nn

from skqk._errors import one_line
from skqk.patterns import unknown_name_message

# what the data decides, not the user: images give in_channels, image_size and num_classes, tables in_features and
# num_classes (1 for regression)
DATA_ARGUMENTS = ("in_channels", "image_size", "in_features", "num_classes")

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class UntrustedModelError(ValueError):
    """An import path nobody trusted in this call: it was not imported (one-line message naming the flag)."""


def register_model(name: str):
    """Decorator adding a builder `fn(in_channels, image_size, num_classes) -> nn.Module` to the zoo."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, /, *, trust: Collection[str] = (), **options) -> nn.Module:
    """Build model `name` for the data the `DATA_ARGUMENTS` among `options` describe (none: the builder's defaults,
    CIFAR-10 images for the paper's networks), the other `options` its own (`mlp`'s widths, ...).

    `name` is a zoo name or an import path ``package.module:callable`` that `trust` names (`resolve`). The
    callable gets `options` and those of `in_channels`, `image_size`, `num_classes` its signature takes; it must
    return an `nn.Module`, checked before anything uses it. `options` recorded in a checkpoint reach only the
    callable's own parameters (Python refuses an unknown one; a callable taking ``**kwargs`` gets whatever was
    recorded) and never `trust`, which callers pass by keyword. Failures are one-line `ValueError`s.
    """
    data = {k: options.pop(k) for k in DATA_ARGUMENTS if k in options}
    builder = resolve(name, trust)
    parameters = inspect.signature(builder).parameters
    if ":" not in name:  # a zoo network gets every data argument and refuses data it is not built for
        check_options(name, options)
        unfit = sorted(set(data) - set(parameters))
        if unfit:
            raise ValueError(
                f"zoo model {name!r} is not built for data with {', '.join(unfit)}: for a table, use mlp or your "
                "own model (--model package.module:callable)"
            )
        return builder(**data, **options)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    data = {k: v for k, v in data.items() if takes_any or k in parameters}
    try:
        network = builder(**data, **options)
    except Exception as e:  # the user's code: any error becomes one line naming it
        called = f"calling it with {data | options}"
        raise ValueError(f"model {name!r}: {called} failed: {type(e).__name__}: {one_line(e)}") from None
    if not issubclass(type(network), nn.Module):  # type(), not isinstance: an object cannot pose as a module
        raise ValueError(f"model {name!r} returned a {type(network).__name__}, not a torch.nn.Module")
    return network


def check_options(name: str, options: dict) -> None:
    """A zoo model's options must be parameters of its builder (`mlp`'s widths, ...); the paper's nets take none."""
    taken = [p for p in inspect.signature(resolve(name)).parameters if p not in DATA_ARGUMENTS]
    unknown = sorted(set(options) - set(taken))
    if unknown and not taken:
        raise ValueError(f"zoo model {name!r} takes no model keyword arguments, got {', '.join(unknown)}")
    if unknown:
        raise ValueError(f"zoo model {name!r} has no option {', '.join(unknown)} (its options: {', '.join(taken)})")


def resolve(name: str, trust: Collection[str] = ()) -> Callable[..., nn.Module]:
    """The builder of zoo name `name`, or the callable of import path ``package.module:callable`` if `trust`
    names that path — the one place skqk imports a model's code.

    An untrusted import path raises `UntrustedModelError` before anything is imported. A trusted one imports only
    its module (as ``import package.module`` would, from ``sys.path``, else from the current directory: only that
    package is looked up there, never a module Python or torch probe for); nothing is unpickled.
    """
    if ":" not in name:
        if name not in _REGISTRY:
            raise ValueError(unknown_name_message("model", name, list_models()) + ", or package.module:callable")
        return _REGISTRY[name]
    if isinstance(trust, str) or name not in trust:  # a str would trust its substrings
        raise UntrustedModelError(
            f"model {name!r} is an import path, and importing it runs its code: pass --model {name} if you trust it "
            f"(in Python: trust=[{name!r}])"
        )
    module_name, _, attribute = name.partition(":")
    try:
        target = import_trusted(module_name)
    except Exception as e:  # ImportError, or any error the module raises while importing
        raise ValueError(f"model {name!r}: cannot import {module_name!r}: {type(e).__name__}: {one_line(e)}") from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise ValueError(f"model {name!r}: {module_name} has no callable {attribute!r}")
    return target


def import_trusted(module_name: str):
    """``import module_name``, its top-level package also looked for in the current directory (as ``python -m``
    would, but for this one package only: the directory never shadows or adds any other module)."""
    top = module_name.partition(".")[0]
    if top and top not in sys.modules and importlib.util.find_spec(top) is None:
        spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()])
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[top]
                raise
    return importlib.import_module(module_name)


from skqk.models import paper_nets, tabular  # noqa: E402,F401  (register the paper's networks and mlp)

__all__ = [
    "DATA_ARGUMENTS",
    "UntrustedModelError",
    "build",
    "check_options",
    "list_models",
    "register_model",
    "resolve",
]
