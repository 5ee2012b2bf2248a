"""The benchmark's "gates" lever: the previous gate implementations equal the current ones exactly."""

import pytest
import torch
import torch.nn.functional as F

from skqk import decouple, models
from skqk.bench.levers import _IndexMathMaxPoolGate, _MulReluGate, with_previous_gates
from skqk.gates import MaxPoolGate, ReluGate

from nets import values_and_grad


def test_relu_gate_equals_bool_mask_multiplication():
    x = torch.randn(4, 5, 6, 6)
    x[0, 0, 0, :3] = 0.0  # ties at zero stay inactive
    state = ReluGate().pattern_of(x)
    y, g = values_and_grad(ReluGate(), x, state)
    y_ref, g_ref = values_and_grad(_MulReluGate(), x, state)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
    torch.testing.assert_close(y, torch.relu(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kw",
    [
        {"kernel_size": 2},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 2, "stride": 1, "dilation": 2},
        {"kernel_size": (2, 3), "stride": (1, 2)},
        {"kernel_size": 3, "stride": 2, "ceil_mode": True},
    ],
)
def test_max_pool_gate_table_gather_equals_index_arithmetic(kw):
    x = torch.randn(2, 3, 9, 11)
    gate = MaxPoolGate(**kw)
    state = gate.pattern_of(x)
    previous = _IndexMathMaxPoolGate(**kw)
    y, g = values_and_grad(gate, x, state)
    y_ref, g_ref = values_and_grad(previous, x, state)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
    live = F.max_pool2d(x, gate.kernel_size, gate.stride, gate.padding, gate.dilation, kw.get("ceil_mode", False))
    torch.testing.assert_close(y, live, rtol=0, atol=0)


@pytest.mark.usefixtures("float64")  # the two estimators may sum in other orders: compared at float64's rounding
@pytest.mark.parametrize("pooling", ["live", "frozen"])
def test_estimator_with_previous_gates_trains_identically(pooling):
    torch.manual_seed(0)
    net = models.build("lenet5").eval()
    selector, est = decouple(net, pooling)
    _, est_prev = decouple(net, pooling)
    with_previous_gates(est_prev)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    pattern = selector(x)
    grads = []
    for e in (est, est_prev):
        e.zero_grad()
        F.cross_entropy(e(x, pattern), y).backward()
        grads.append([p.grad for p in e.parameters()])
    torch.testing.assert_close(est(x, pattern), est_prev(x, pattern))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
