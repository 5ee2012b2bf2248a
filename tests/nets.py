"""Small networks for tests: a residual net mixing every way of writing a ReLU, and a tiny MLP; and a gate probe."""

import torch
import torch.nn.functional as F
from torch import nn

from skqk import models


class ResidualNet(nn.Module):
    """F.relu, in-place nn.ReLU called twice, torch.relu, Tensor.relu_, LeakyReLU, a skip add, BatchNorm,
    max and average pooling and torch.flatten: the ways real models are written."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.leaky = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8 * 4, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.pool(x)
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        out = self.relu(out)  # the same in-place module at a second site
        out = torch.relu(F.max_pool2d(out, 2)) + self.leaky(out[:, :, ::2, ::2])
        out = self.avg(out).relu_()
        return self.fc(torch.flatten(out, 1))


class TinyMLP(nn.Module):
    """Two hidden ReLU layers, small enough to enumerate every path of the paper's Fig. 1 by hand."""

    def __init__(self, sizes=(3, 4, 3, 2)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so BatchNorm is really exercised in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model


def all_models():
    """(name, model, input batch) for every model family we support: the zoo plus the residual net."""
    cases = [(name, models.build(name), torch.randn(6, 3, 32, 32)) for name in models.list_models()]
    cases.append(("residual", ResidualNet(), torch.randn(6, 3, 16, 16)))
    return [(name, randomize_batchnorm(m), x) for name, m, x in cases]


def values_and_grad(gate, x, state):
    """A gate's output and the gradient of a fixed random projection of it with respect to its input."""
    x = x.clone().requires_grad_(True)
    y = gate(x, state)
    y.backward(torch.randn_like(y, generator=torch.Generator().manual_seed(1)))
    return y.detach(), x.grad
