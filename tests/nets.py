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


class InvertedResidual(nn.Module):
    """MobileNet-V2's block: 1x1 expansion, ReLU6, depthwise 3x3, ReLU6, linear 1x1 projection, skip if it fits."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.skip else self.block(x)


class MobileNetV2Like(nn.Module):
    """MobileNet-V2 in miniature: ReLU6 stem, inverted residuals (with and without skip), ReLU6 head, dropout."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
            InvertedResidual(8, 8, 1), InvertedResidual(8, 12, 2), InvertedResidual(12, 12, 1),
            nn.Conv2d(12, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6(inplace=True),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(24, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """ResNet's basic block; the second activation spelled `clamp(min=0)`, the shortcut a 1x1 conv when needed."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).clamp(min=0)


class TinyResNet(nn.Module):
    """A ResNet: stem, max pool, two stages of basic blocks, average pool, and a flatten written with shape
    arithmetic on Python ints (``n, c, h, w = x.shape``)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))
        self.fc = nn.Linear(16 * 2 * 2, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.pool(self.stem(x))))
        x = F.avg_pool2d(x, 2)
        n, c, h, w = x.shape
        return self.fc(x.reshape(n, c * h * w))


class EveryGate(nn.Module):
    """One site of every supported gate type and spelling, so gradients (PReLU slopes included) are compared."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 if i < 3 else 6, 6, 3, padding=1) for i in range(6))
        self.prelu = nn.PReLU(6, init=0.2)
        self.scalar_prelu = nn.PReLU(init=-0.3)
        self.hardtanh = nn.Hardtanh(-0.5, 0.8)
        self.threshold = nn.Threshold(0.1, -0.4)
        self.floor = nn.Parameter(torch.full((6, 1, 1), -0.2))
        self.fc = nn.Linear(6 * 4 * 4, num_classes)

    def forward(self, x):
        c = self.convs
        h = self.prelu(c[0](x)) + F.leaky_relu(c[1](x), 0.05) + F.relu6(c[2](x) * 4)
        h = self.hardtanh(c[3](h)) + torch.clamp(h, -1.0, 2.0) + self.threshold(h) + self.scalar_prelu(h)
        h = torch.maximum(c[4](h), self.floor) + torch.where(h > 0, h, 0) + h * (h < 1) + F.threshold(h, 0.2, 0.0)
        h = F.max_pool2d(F.hardtanh(c[5](h), 0.0, 1.5), 2) + F.max_pool2d(h.clamp_min(0.1), 2)
        return self.fc(torch.flatten(F.max_pool2d(h, 2), 1))


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
    """(name, model, input batch) for every model family we support: the zoo, the residual net, MobileNet-V2-
    and ResNet-shaped nets and a net with every gate type."""
    cases = [(name, models.build(name), torch.randn(6, 3, 32, 32)) for name in models.list_models()]
    cases.append(("residual", ResidualNet(), torch.randn(6, 3, 16, 16)))
    cases.append(("mobilenet_v2", MobileNetV2Like(), torch.randn(6, 3, 16, 16)))
    cases.append(("resnet", TinyResNet(), torch.randn(6, 3, 16, 16)))
    cases.append(("every_gate", EveryGate(), torch.randn(6, 3, 16, 16)))
    return [(name, randomize_batchnorm(m), x) for name, m, x in cases]


def values_and_grad(gate, x, state):
    """A gate's output and the gradient of a fixed random projection of it with respect to its input."""
    x = x.clone().requires_grad_(True)
    y = gate(x, state)
    y.backward(torch.randn_like(y, generator=torch.Generator().manual_seed(1)))
    return y.detach(), x.grad
