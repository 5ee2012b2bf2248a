"""Exact rewrites of the estimator for re-training (`skqk.fuse`): in-place ReLU gates give the same outputs and
gradients as out-of-place ones, and only where nothing else reads the gate's input."""

import copy

import pytest
import torch
from torch import nn

from skqk import decouple, models
from skqk.fuse import relu_gates_in_place
from skqk.gates import ReluGate


@pytest.mark.parametrize("name", ["lenet5", "vgg8"])
def test_in_place_relu_gates_train_exactly_as_out_of_place_ones(name):
    selector, estimator = decouple(models.build(name).eval())
    estimator.train()
    in_place = copy.deepcopy(estimator)
    assert relu_gates_in_place(in_place.net) == sum(type(m) is ReluGate for m in estimator.modules())
    x = torch.randn(4, 3, 32, 32)
    pattern = selector(x)
    outputs = [e(x, pattern) for e in (estimator, in_place)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)  # the same products
    for out in outputs:
        out.square().sum().backward()
    for (name_a, a), (_, b) in zip(estimator.named_parameters(), in_place.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0, msg=name_a)


class TwoReaders(nn.Module):
    """The conv output is read by the ReLU and by the sum after it: overwriting it in place would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        a = self.conv(x)
        return torch.relu(a) + a


def test_a_gate_whose_input_has_another_reader_stays_out_of_place():
    model = TwoReaders().eval()
    selector, estimator = decouple(model)
    assert relu_gates_in_place(estimator.net) == 0
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(estimator(x, selector(x)), model(x))
