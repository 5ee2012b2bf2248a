"""LeNet-5, AlexNet (CIFAR variant) and VGG8 as in the paper's experiments (section 5).

Initialisation follows the paper's framework where it is documented. The paper initialised and trained with
TensorFlow 2.6 (section 5), whose Keras layers default to Glorot-uniform weights and zero biases; PyDTNN [3]
has the same defaults for its `Conv2D`/`FC` layers and its CIFAR AlexNet keeps them, while its VGG models ask for
He-uniform weights (`weights_initializer="he_uniform"`). So LeNet-5 and AlexNet start Glorot-uniform and VGG8
He-uniform, every bias at zero (PyTorch's own default, Kaiming-uniform with a = sqrt(5), is a third choice
that left AlexNet on its initial plateau for ~13 epochs in our `cpu` preset).
"""

from typing import Literal

import torch
from torch import nn

from skqk.models import register_model


def conv_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int = 1, bn: bool = False):
    layers = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    return [*layers, nn.ReLU(inplace=True)]


def flat_features(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Width of the classifier's input, found by a dry run so every image size works."""
    with torch.no_grad():
        out = features(torch.zeros(1, in_channels, image_size, image_size))
    if out.numel() == 0:
        raise ValueError(f"image_size {image_size} is too small for this network")
    return out.numel()


Init = Literal["glorot_uniform", "he_uniform"]


def initialise(network: nn.Module, scheme: Init) -> nn.Module:
    """Keras/PyDTNN initialisers on every conv and linear layer: `glorot_uniform` draws from +-sqrt(6 / (fan_in +
    fan_out)), `he_uniform` from +-sqrt(6 / fan_in) (fans count the kernel's receptive field); biases are zero."""
    for layer in network.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            if scheme == "glorot_uniform":
                nn.init.xavier_uniform_(layer.weight)
            else:
                nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return network


class ConvNet(nn.Module):
    """A feature extractor followed by a classifier on its flattened output."""

    def __init__(
        self,
        features: list[nn.Module],
        classifier_widths: list[int],
        num_classes: int,
        in_channels: int,
        image_size: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.features = nn.Sequential(*features)
        widths = [flat_features(self.features, in_channels, image_size), *classifier_widths]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.classifier = nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("lenet5")
def lenet5(in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> nn.Module:
    features = [
        *conv_relu(in_channels, 6, 5, padding=0),
        nn.MaxPool2d(2),
        *conv_relu(6, 16, 5, padding=0),
        nn.MaxPool2d(2),
    ]
    return initialise(ConvNet(features, [120, 84], num_classes, in_channels, image_size), "glorot_uniform")


@register_model("alexnet")
def alexnet(in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> nn.Module:
    features = [
        *conv_relu(in_channels, 64, stride=2),
        nn.MaxPool2d(2),
        *conv_relu(64, 192),
        nn.MaxPool2d(2),
        *conv_relu(192, 384),
        *conv_relu(384, 256),
        *conv_relu(256, 256),
        nn.MaxPool2d(2),
    ]
    net = ConvNet(features, [4096, 4096], num_classes, in_channels, image_size, dropout=0.5)
    return initialise(net, "glorot_uniform")


@register_model("vgg8")
def vgg8(in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> nn.Module:
    features: list[nn.Module] = []
    c_in = in_channels
    for width in (32, 64, 128):
        features += [*conv_relu(c_in, width, bn=True), *conv_relu(width, width, bn=True), nn.MaxPool2d(2)]
        c_in = width
    return initialise(ConvNet(features, [128], num_classes, in_channels, image_size), "he_uniform")
