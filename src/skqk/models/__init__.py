"""Model zoo: the paper's three CIFAR-10 networks, by name, adapting to channels, image size and classes, and
`mlp` for tables — or the user's own network, by import path (``my_pkg.nets:build_net``).

Example:
    >>> from skqk import models
    >>> net = models.build("vgg8", in_channels=3, image_size=32, num_classes=10)
    >>> models.list_models()
    ['alexnet', 'lenet5', 'mlp', 'vgg8']
    >>> net = models.build("mlp", in_features=12, num_classes=1, widths=[64, 32], dropout=0.1)
    >>> net = models.build("my_pkg.nets:build_net", num_classes=10, width=64)
"""

import importlib
import inspect
from collections.abc import Callable

from torch import nn

from skqk._errors import one_line
from skqk.patterns import unknown_name_message

# what the data decides, not the user: images give in_channels, image_size and num_classes, tables in_features and
# num_classes (1 for regression)
DATA_ARGUMENTS = ("in_channels", "image_size", "in_features", "num_classes")

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator adding a builder `fn(in_channels, image_size, num_classes, **options) -> nn.Module` to the zoo (a
    builder for tables takes `in_features` instead of, or beside, `in_channels` and `image_size`)."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, **arguments) -> nn.Module:
    """Build model `name` for the data `arguments` name (of `DATA_ARGUMENTS`; none: the builder's defaults, CIFAR-10
    images for the paper's networks) with the other `arguments` as its options.

    `name` is a zoo name or an import path ``package.module:callable``: the callable gets the options and those
    data arguments its signature takes, and must return an `nn.Module`. A zoo network gets every data argument and
    refuses data it is not built for (an image network a table). Failures are one-line `ValueError`s.
    """
    data = {k: arguments.pop(k) for k in DATA_ARGUMENTS if k in arguments}
    builder = resolve(name)
    parameters = inspect.signature(builder).parameters
    if ":" not in name:
        check_options(name, arguments)
        unfit = sorted(set(data) - set(parameters))
        if unfit:
            raise ValueError(
                f"zoo model {name!r} is not built for data with {', '.join(unfit)}: for a table, use mlp or your "
                "own model (--model package.module:callable)"
            )
        return builder(**data, **arguments)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    data = {k: v for k, v in data.items() if takes_any or k in parameters}
    try:
        network = builder(**data, **arguments)
    except Exception as e:  # the user's code: any error becomes one line naming it
        called = f"calling it with {data | arguments}"
        raise ValueError(f"model {name!r}: {called} failed: {type(e).__name__}: {one_line(e)}") from None
    if not isinstance(network, nn.Module):
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


def resolve(name: str) -> Callable[..., nn.Module]:
    """The builder of zoo name `name`, or the callable an import path ``package.module:callable`` names.

    Only the module named is imported (as ``import package.module`` would); nothing is unpickled.
    """
    if ":" not in name:
        if name not in _REGISTRY:
            raise ValueError(unknown_name_message("model", name, list_models()) + ", or package.module:callable")
        return _REGISTRY[name]
    module_name, _, attribute = name.partition(":")
    try:
        target = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or any error the module raises while importing
        raise ValueError(f"model {name!r}: cannot import {module_name!r}: {type(e).__name__}: {one_line(e)}") from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise ValueError(f"model {name!r}: {module_name} has no callable {attribute!r}")
    return target


from skqk.models import paper_nets, tabular  # noqa: E402,F401  (register the paper's networks and mlp)

__all__ = ["DATA_ARGUMENTS", "build", "check_options", "list_models", "register_model", "resolve"]
