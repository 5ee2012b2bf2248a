"""The zoo's documented initialisation: Keras/PyDTNN Glorot-uniform (LeNet-5, AlexNet) and He-uniform (VGG8)
weights, zero biases."""

import math

import pytest
import torch
from torch import nn

from skqk import models

SCHEMES = {"lenet5": "glorot_uniform", "alexnet": "glorot_uniform", "vgg8": "he_uniform"}


def fans(layer: nn.Module) -> tuple[int, int]:
    receptive = layer.weight[0, 0].numel() if layer.weight.dim() > 2 else 1
    return layer.weight.shape[1] * receptive, layer.weight.shape[0] * receptive


def bound(layer: nn.Module, scheme: str) -> float:
    fan_in, fan_out = fans(layer)
    return math.sqrt(6 / (fan_in + fan_out)) if scheme == "glorot_uniform" else math.sqrt(6 / fan_in)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_every_weight_is_uniform_within_its_scheme_bound_and_biases_are_zero(name):
    torch.manual_seed(0)
    layers = [m for m in models.build(name).modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert layers
    for layer in layers:
        b, w = bound(layer, SCHEMES[name]), layer.weight.detach()
        assert w.abs().max() <= b
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
        if w.numel() >= 2000:  # a uniform on [-b, b]: nearly reaches b, standard deviation b / sqrt(3)
            assert w.abs().max() > 0.95 * b
            assert w.std().item() == pytest.approx(b / math.sqrt(3), rel=0.05)


def test_pytorch_default_would_fail_the_glorot_bound():
    """The check above can fail: PyTorch's own default init (Kaiming-uniform, a = sqrt(5)) of AlexNet's wide
    classifier layer does not have the Glorot spread."""
    layer = nn.Linear(1024, 4096)  # PyTorch default init
    assert layer.weight.std().item() != pytest.approx(bound(layer, "glorot_uniform") / math.sqrt(3), rel=0.05)
