"""Model zoo: the paper's three CIFAR-10 networks, by name, adapting to channels, image size and classes.

Example:
    >>> from skqk import models
    >>> net = models.build("vgg8", in_channels=3, image_size=32, num_classes=10)
    >>> models.list_models()
    ['alexnet', 'lenet5', 'vgg8']
"""

from collections.abc import Callable

from torch import nn

from skqk.patterns import unknown_name_message

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator adding a builder `fn(in_channels, image_size, num_classes) -> nn.Module` to the zoo."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> nn.Module:
    """Build zoo model `name` for images of `in_channels` x `image_size` x `image_size` and `num_classes`."""
    if name not in _REGISTRY:
        raise ValueError(unknown_name_message("model", name, list_models()))
    return _REGISTRY[name](in_channels=in_channels, image_size=image_size, num_classes=num_classes)


from skqk.models import paper_nets  # noqa: E402,F401  (registers the paper's networks)

__all__ = ["build", "list_models", "register_model"]
