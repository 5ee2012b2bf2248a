"""Model zoo: the paper's three CIFAR-10 networks, by name, adapting to channels, image size and classes — or
the user's own network, by import path (``my_pkg.nets:build_net``).

Example:
    >>> from skqk import models
    >>> net = models.build("vgg8", in_channels=3, image_size=32, num_classes=10)
    >>> models.list_models()
    ['alexnet', 'lenet5', 'vgg8']
    >>> net = models.build("my_pkg.nets:build_net", num_classes=10, width=64)
"""

import importlib
import inspect
from collections.abc import Callable

from torch import nn

from skqk._errors import one_line
from skqk.patterns import unknown_name_message

DATA_ARGUMENTS = ("in_channels", "image_size", "num_classes")  # what the data decides, not the user

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator adding a builder `fn(in_channels, image_size, num_classes) -> nn.Module` to the zoo."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, **options) -> nn.Module:
    """Build model `name` for images of `in_channels` x `image_size` x `image_size` and `num_classes`.

    `name` is a zoo name or an import path ``package.module:callable``: the callable gets `options` and those of
    `in_channels`, `image_size`, `num_classes` its signature takes, and must return an `nn.Module`. Failures
    are one-line `ValueError`s.
    """
    data = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
    builder = resolve(name)
    if ":" not in name:
        if options:
            raise ValueError(f"zoo model {name!r} takes no model keyword arguments, got {sorted(options)}")
        return builder(**data)
    parameters = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    data = {k: v for k, v in data.items() if takes_any or k in parameters}
    try:
        network = builder(**data, **options)
    except Exception as e:  # the user's code: any error becomes one line naming it
        called = f"calling it with {data | options}"
        raise ValueError(f"model {name!r}: {called} failed: {type(e).__name__}: {one_line(e)}") from None
    if not isinstance(network, nn.Module):
        raise ValueError(f"model {name!r} returned a {type(network).__name__}, not a torch.nn.Module")
    return network


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


from skqk.models import paper_nets  # noqa: E402,F401  (registers the paper's networks)

__all__ = ["DATA_ARGUMENTS", "build", "list_models", "register_model", "resolve"]
