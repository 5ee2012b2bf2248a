"""Gates on hand-checkable inputs: expected masks and outputs written inline."""

import torch
import torch.nn.functional as F

from skqk.gates import LeakyReluGate, MaxPoolGate, ReluGate

from nets import values_and_grad


def test_relu_gate_mask_and_output():
    x = torch.tensor([[-1.0, 0.0, 2.0, 3.0]])
    gate = ReluGate()
    assert gate.pattern_of(x).tolist() == [[False, False, True, True]]
    assert gate(x, gate.pattern_of(x)).tolist() == [[0.0, 0.0, 2.0, 3.0]]
    # with another sample's pattern, the gate only masks: it is linear in x
    assert gate(x, torch.tensor([[True, True, False, False]])).tolist() == [[-1.0, 0.0, 0.0, 0.0]]


def test_leaky_relu_gate_uses_slope_for_inactive():
    x = torch.tensor([[-2.0, 4.0]])
    gate = LeakyReluGate(0.25)
    assert gate.pattern_of(x).tolist() == [[False, True]]
    assert gate(x, gate.pattern_of(x)).tolist() == [[-0.5, 4.0]]
    assert torch.equal(gate(x, gate.pattern_of(x)), F.leaky_relu(x, 0.25))


def test_max_pool_gate_switches_and_routing():
    x = torch.tensor([[[[1.0, 5.0, 2.0, 0.0], [3.0, 4.0, 9.0, 1.0], [0.0, 0.0, 1.0, 1.0], [7.0, 0.0, 2.0, 8.0]]]])
    gate = MaxPoolGate(2)
    switches = gate.pattern_of(x)
    assert switches.tolist() == [[[[1, 2], [2, 3]]]]  # offsets inside each 2x2 window, row-major
    assert torch.equal(gate(x, switches), F.max_pool2d(x, 2))
    # routing with frozen switches takes the same positions from another input
    assert gate(-x, switches).tolist() == [[[[-5.0, -9.0], [-7.0, -8.0]]]]


def test_max_pool_gate_with_stride_padding_dilation():
    x = torch.randn(2, 3, 11, 9)
    for kw in [
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=2, stride=1, dilation=2),
        dict(kernel_size=(3, 2), stride=(2, 1), ceil_mode=True),
    ]:
        gate = MaxPoolGate(**kw)
        assert torch.equal(gate(x, gate.pattern_of(x)), F.max_pool2d(x, **kw)), kw


def test_relu_gate_keeps_bf16():
    x = torch.randn(3, 8).bfloat16()
    assert ReluGate()(x, x > 0).dtype == torch.bfloat16


def test_leaky_relu_gate_matches_leaky_relu_and_its_gradient():
    x = torch.randn(4, 7)
    gate = LeakyReluGate(0.2)
    y, g = values_and_grad(gate, x, gate.pattern_of(x))
    y_ref, g_ref = values_and_grad(lambda t, s: F.leaky_relu(t, 0.2), x, None)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(g, g_ref)
