"""A user's own network module, for `--model user_nets:build_net` (tests/ is on the path while testing)."""

from torch import nn


def build_net(in_channels: int = 3, num_classes: int = 10, width: int = 8) -> nn.Module:
    """A ReLU6 convnet whose width is a keyword argument; it takes two of the three data arguments."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


def broken(**kwargs) -> nn.Module:
    raise RuntimeError("this builder needs a GPU")


def not_a_module(**kwargs):
    return "a string"


def gelu_net(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Trainable, but not piecewise linear: Phase 2 refuses it."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
    )


def gelu_mlp(in_features: int = 4, num_classes: int = 1) -> nn.Module:
    """Not piecewise linear: `decouple` refuses its GELU."""
    return nn.Sequential(nn.Linear(in_features, 8), nn.GELU(), nn.Linear(8, num_classes))
