"""Gates on hand-checkable inputs: expected masks and outputs written inline."""

import pytest
import torch
import torch.nn.functional as F

from skqk.gates import (
    ClampGate,
    ComparisonGate,
    LeakyReluGate,
    MaxPoolGate,
    PReluGate,
    ReluGate,
    SelectGate,
    shrink_gate,
)

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


# Every gate spelling at inputs that sit exactly on its bounds: value and input gradient equal the source's,
# because each spelling's pattern follows its own subgradient (clamp passes the gradient at a bound, hardtanh
# and threshold do not, relu gives 0 at 0).
BOUNDARY = torch.tensor([[-7.0, -1.0, -0.5, 0.0, 0.1, 0.5, 1.0, 2.0, 6.0, 7.0]])
SPELLINGS = {
    "relu": (lambda x: F.relu(x), ReluGate()),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), LeakyReluGate(0.1)),
    "relu6": (F.relu6, ClampGate(0.0, 6.0)),
    "hardtanh": (lambda x: F.hardtanh(x, -0.5, 1.0), ClampGate(-0.5, 1.0)),
    "clamp(0, 6)": (lambda x: x.clamp(0, 6), ClampGate(0, 6, inclusive=True)),
    "clamp(min=0)": (lambda x: x.clamp(min=0), ClampGate(0, None, inclusive=True)),
    "clamp_max(1)": (lambda x: x.clamp_max(1), ClampGate(None, 1, inclusive=True)),
    "threshold(0.1, -2)": (lambda x: F.threshold(x, 0.1, -2.0), ClampGate(0.1, low_value=-2.0)),
}


@pytest.mark.parametrize("name", SPELLINGS)
def test_every_gate_matches_its_source_in_value_and_gradient_even_at_its_bounds(name):
    source, gate = SPELLINGS[name]
    x = BOUNDARY.clone().requires_grad_(True)
    expected = source(x)
    expected.backward(torch.arange(1.0, 11.0).view(1, -1))
    y, grad = values_and_grad_weighted(gate, BOUNDARY)
    assert torch.equal(y, expected.detach()) and torch.equal(grad, x.grad)
    assert gate.bits == (2 if name in ("relu6", "hardtanh", "clamp(0, 6)") else 1)


def values_and_grad_weighted(gate, x):
    x = x.clone().requires_grad_(True)
    y = gate(x, gate.pattern_of(x))
    y.backward(torch.arange(1.0, 11.0).view(1, -1))
    return y.detach(), x.grad


def test_three_piece_state_is_the_piece_index_and_saturated_pieces_are_constant():
    gate = ClampGate(0.0, 6.0)
    x = torch.tensor([[-3.0, 2.0, 9.0]])
    state = gate.pattern_of(x)
    assert state.dtype == torch.uint8 and state.tolist() == [[0, 1, 2]]
    assert gate(torch.tensor([[5.0, 5.0, 5.0]]), state).tolist() == [[0.0, 5.0, 6.0]]  # affine in x, per piece


def test_prelu_slope_gradient_equals_the_source():
    """The slope is QK: the estimator trains it, with the gradient PReLU itself gives it."""
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)  # sums of 100 terms, maybe in another order: float64
    weight = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True)
    F.prelu(x, weight).pow(2).sum().backward()
    expected = weight.grad.clone()
    weight.grad = None
    gate = PReluGate()
    gate(x, weight, gate.pattern_of(x, weight)).pow(2).sum().backward()
    torch.testing.assert_close(weight.grad, expected, rtol=1e-12, atol=0)


def test_select_and_comparison_gates():
    a, b = torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[0.0, 0.0, 5.0]])
    select = SelectGate(take_larger=True)
    assert torch.equal(select(a, b, select.pattern_of(a, b)), torch.maximum(a, b))
    compare = ComparisonGate(torch.gt)
    assert compare(a, 0, compare.pattern_of(a, 0)).tolist() == [[True, False, True]]


GATES_AND_SOURCES = {  # each gate with the torch function it replaces (operands after x)
    "relu": (ReluGate(), F.relu, ()),
    "leaky_relu": (LeakyReluGate(0.1), lambda x: F.leaky_relu(x, 0.1), ()),
    "prelu": (PReluGate(), F.prelu, (torch.tensor([0.3]),)),
    "hardtanh": (ClampGate(-0.5, 0.7), lambda x: F.hardtanh(x, -0.5, 0.7), ()),
    "clamp": (ClampGate(-0.1, 0.3, inclusive=True), lambda x: x.clamp(-0.1, 0.3), ()),
    "threshold": (ClampGate(0.1, low_value=-0.3), lambda x: F.threshold(x, 0.1, -0.3), ()),
    "hardshrink": (shrink_gate(0.3, soft=False), lambda x: F.hardshrink(x, 0.3), ()),
    "softshrink": (shrink_gate(0.3, soft=True), lambda x: F.softshrink(x, 0.3), ()),
    "max_pool2d": (MaxPoolGate(2, padding=1), lambda x: F.max_pool2d(x, 2, padding=1), ()),  # windows apart: no sum
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", GATES_AND_SOURCES)
def test_gates_are_exact_in_every_floating_dtype(name, dtype):
    """Fed its own state, a gate gives the very values and gradients of what it replaces, in the input's dtype
    (a slope rounded to float32 first made LeakyReLU's float64 gate differ)."""
    gate, source, operands = GATES_AND_SOURCES[name]
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64).to(dtype).requires_grad_()
    operands = tuple(o.to(dtype) for o in operands)
    y = gate(x, *operands, gate.pattern_of(x, *operands))
    expected = source(x, *operands)
    weights = torch.randn(y.shape, dtype=torch.float64).to(dtype)
    (grad,) = torch.autograd.grad((y * weights).sum(), x)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
    assert y.dtype == dtype and torch.equal(y, expected)
    if name != "softshrink" or dtype in (torch.float32, torch.float64):  # torch's half-precision Softshrink
        assert torch.equal(grad, expected_grad)  # compares in float32 forward but in half backward: no one pattern
