"""Gates: what replaces each non-linearity of a ReLU network once SK and QK are decoupled.

Shape contract: ``gate(x, *operands, state) -> y``. `x` is the tensor the original non-linearity received,
batch first; `operands` are its other arguments (a PReLU's slope, the other side of a `maximum` or of a
comparison); `state` is this site's slice of a `Pattern` (one state per *output* element, same batch size).
For a fixed state a gate is affine in `x`, so the estimator built from gates is an affine model per activation
pattern (paper, section 3.2). ``gate.pattern_of(x, *operands)`` is the state the original non-linearity takes:
the path selector records it, and ``gate(x, *operands, gate.pattern_of(x, *operands))`` equals the original
non-linearity exactly, in value and in gradient (Hardsigmoid's gradient up to rounding: `PiecewiseGate`).

Every piecewise-linear activation is a gate whose state says which linear piece each unit is on: two pieces (ReLU,
LeakyReLU, PReLU, threshold, a one-sided clamp, `maximum`) cost 1 bit per unit, three pieces (ReLU6, Hardtanh, a
two-sided clamp, Hardsigmoid, Hardshrink, Softshrink) 2 bits; a frozen max-pool switch is a uint8 in memory
(`bits`), and a pattern store packs it to the bits its window needs (`PoolWindow.switch_bits`).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skqk.patterns import SWITCH_DTYPE


class Gate(nn.Module):
    """Base class: subclasses define `pattern_of` (SK of an input) and `forward` (affine for a fixed SK)."""

    bits = 1  # what one unit's state costs in a stored pattern

    def pattern_of(self, x: Tensor, *operands) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, *operands_and_state) -> Tensor:
        raise NotImplementedError


class ReluGate(Gate):
    """ReLU: the state is the derivative of the activation (1 where the neuron is active).

    With `inplace` (`skqk.fuse.relu_gates_in_place`, only where nothing else reads `x`) the mask multiplies `x`
    in place, as ``nn.ReLU(inplace=True)`` does: the same products without a new tensor.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def pattern_of(self, x: Tensor) -> Tensor:
        return x > 0

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        mask = as_mask(state, x.dtype)
        return x.mul_(mask) if self.inplace else x * mask

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class LeakyReluGate(Gate):
    """LeakyReLU: same on/off bit as ReLU, but an inactive neuron passes `negative_slope` times its input."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def pattern_of(self, x: Tensor) -> Tensor:
        return x > 0

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        return torch.where(state, x, x * self.negative_slope)  # the slope as a Python number: exact in any dtype

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class PReluGate(Gate):
    """PReLU: the on/off bit of ReLU; an inactive unit passes its input times the slope, an operand of the gate
    (the source's `weight` parameter, so the estimator trains it: the slope is QK)."""

    def pattern_of(self, x: Tensor, weight: Tensor) -> Tensor:
        return x > 0

    def forward(self, x: Tensor, weight: Tensor, state: Tensor) -> Tensor:
        slope = weight if weight.numel() == 1 or x.dim() < 2 else weight.view(-1, *[1] * (x.dim() - 2))
        return torch.where(state, x, x * slope)


class ClampGate(Gate):
    """Threshold, one- and two-sided clamp, Hardtanh, ReLU6: linear between the bounds, constant outside.

    ``y = x`` on the linear piece, `low_value` below `low`, `high_value` above `high` (either bound may be
    absent). The state is a bool "on the linear piece" with one bound (1 bit per unit), and with two bounds a
    uint8 piece index, 0 below / 1 linear / 2 above (2 bits per unit). `inclusive` says whether a unit exactly
    at a bound is on the linear piece: `torch.clamp` passes its gradient there, `hardtanh`/`threshold` do not,
    and the pattern follows the source so that gradients match even at the bounds.
    """

    def __init__(self, low=None, high=None, low_value=None, high_value=None, inclusive=False):
        super().__init__()
        self.low, self.high, self.inclusive = low, high, inclusive
        self.low_value = low if low_value is None else low_value
        self.high_value = high if high_value is None else high_value
        self.bits = 2 if low is not None and high is not None else 1

    def pattern_of(self, x: Tensor) -> Tensor:
        above_low = (x >= self.low if self.inclusive else x > self.low) if self.low is not None else None
        below_high = (x <= self.high if self.inclusive else x < self.high) if self.high is not None else None
        if below_high is None:
            return above_low
        if above_low is None:
            return below_high
        return torch.where(above_low, torch.where(below_high, 1, 2), 0).to(torch.uint8)

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        if self.bits == 1:
            constant = self.low_value if self.low is not None else self.high_value
            return torch.where(state, x, torch.as_tensor(constant, dtype=x.dtype, device=x.device))
        low = torch.as_tensor(self.low_value, dtype=x.dtype, device=x.device)
        high = torch.as_tensor(self.high_value, dtype=x.dtype, device=x.device)
        return torch.where(state == 1, x, torch.where(state == 0, low, high))

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}, inclusive={self.inclusive}"


class PiecewiseGate(Gate):
    """Hardsigmoid, Hardshrink, Softshrink: affine on each of three pieces, below `low`, between, above `high`.

    On piece k, ``y = (x * slope_k + offset_k) / divisor_k`` — written as the source computes it, so that the
    values are bit for bit the source's (Hardsigmoid's ``(x + 3) / 6``); the gradient is exact up to rounding
    (the source multiplies by 1/6 where autograd divides by 6). The state is the uint8 piece index, 0 / 1 / 2 (2
    bits per unit). `closed` says whether the middle piece holds its bounds, as the source's gradient does there.
    """

    bits = 2

    def __init__(self, low: float, high: float, pieces: tuple, closed: bool, wide_bounds: bool = False):
        super().__init__()
        self.low, self.high, self.pieces, self.closed = low, high, tuple(pieces), closed
        self.wide_bounds = wide_bounds

    def pattern_of(self, x: Tensor) -> Tensor:
        if self.wide_bounds:  # torch's Softshrink compares half and bfloat16 inputs with its bounds in float32
            x = x.to(torch.promote_types(x.dtype, torch.float32))
        below = x < self.low if self.closed else x <= self.low
        above = x > self.high if self.closed else x >= self.high
        return torch.where(below, 0, torch.where(above, 2, 1)).to(torch.uint8)

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)  # as torch computes half and bfloat16: in float32
        slope, offset, divisor = (torch.tensor(c, dtype=wide, device=x.device)[state.long()] for c in zip(*self.pieces))
        return ((x.to(wide) * slope + offset) / divisor).to(x.dtype)

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}, pieces={self.pieces}, closed={self.closed}"


def hardsigmoid_gate() -> PiecewiseGate:
    """0 up to -3, ``(x + 3) / 6`` strictly between, 1 from 3 (torch passes no gradient at ±3)."""
    return PiecewiseGate(-3.0, 3.0, ((0, 0, 1), (1, 3, 6), (0, 1, 1)), closed=False)


def shrink_gate(lambd: float, soft: bool) -> PiecewiseGate:
    """Hardshrink (x outside [-λ, λ], 0 inside) or Softshrink (x + λ below, 0 inside, x - λ above)."""
    shift = lambd if soft else 0.0
    return PiecewiseGate(-lambd, lambd, ((1, shift, 1), (0, 0, 1), (1, -shift, 1)), closed=True, wide_bounds=soft)


class SelectGate(Gate):
    """``torch.maximum(a, b)`` / ``torch.minimum(a, b)``: the state says which operand wins, so the output is
    that operand, affine in both. A tie passes the gradient to `a` only (the source splits it in half)."""

    def __init__(self, take_larger: bool):
        super().__init__()
        self.take_larger = take_larger

    def pattern_of(self, a: Tensor, b) -> Tensor:
        return a >= b if self.take_larger else a <= b

    def forward(self, a: Tensor, b, state: Tensor) -> Tensor:
        return torch.where(state, a, b)


class ComparisonGate(Gate):
    """A comparison of an input-dependent tensor (``x > 0`` in ``torch.where(x > 0, x, 0)`` or ``x * (x > 0)``):
    its bool result is piecewise constant in the input, so it is SK: recorded, then read from the pattern."""

    def __init__(self, compare):
        super().__init__()
        self.compare = compare

    def pattern_of(self, a, b) -> Tensor:
        return self.compare(a, b)

    def forward(self, a, b, state: Tensor) -> Tensor:
        return state

    def extra_repr(self) -> str:
        return getattr(self.compare, "__name__", str(self.compare))


@dataclass(frozen=True)
class PoolWindow:
    """Where the windows of a frozen 2-D max pooling lie: what its switches (offsets inside a window) mean."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def size(self) -> int:
        """Elements per window: a switch is one of ``0 .. size - 1``."""
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def switch_bits(self) -> int:
        """Bits that hold any switch: ceil(log2(size)), at least 1 (2 for 2x2 windows, 4 for 3x3)."""
        return max(1, (self.size - 1).bit_length())

    def positions(self, h_out: int, w_out: int, device=None) -> tuple[Tensor, Tensor]:
        """int64 (size, h_out * w_out) each: the input row and column that window offset k of output position p
        selects (outside ``0 .. H-1`` / ``0 .. W-1`` where a window reaches into the padding)."""
        k = torch.arange(self.size, device=device)
        kh, kw = k // self.kernel_size[1], k % self.kernel_size[1]
        rows = torch.arange(h_out, device=device) * self.stride[0] - self.padding[0]
        cols = torch.arange(w_out, device=device) * self.stride[1] - self.padding[1]
        r = rows.view(1, -1, 1) + (kh * self.dilation[0]).view(-1, 1, 1)
        c = cols.view(1, 1, -1) + (kw * self.dilation[1]).view(-1, 1, 1)
        shape = (self.size, h_out * w_out)
        return r.expand(-1, -1, w_out).reshape(shape), c.expand(-1, h_out, -1).reshape(shape)


class MaxPoolGate(Gate):
    """Frozen 2-D max pooling: the state is the switch (offset of the max inside its window), so the
    estimator routes the same input element without comparing values: a gather, linear in `x`."""

    bits = 8  # a uint8 window offset

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride not in (None, []) else kernel_size)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.ceil_mode = ceil_mode
        if self.kernel_size[0] * self.kernel_size[1] > torch.iinfo(SWITCH_DTYPE).max + 1:
            raise ValueError(f"max-pool window {self.kernel_size} is too large to freeze (switches are uint8)")

    @property
    def window(self) -> PoolWindow:
        return PoolWindow(self.kernel_size, self.stride, self.padding, self.dilation)

    def pattern_of(self, x: Tensor) -> Tensor:
        _, flat = F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, return_indices=True
        )
        rows, cols = self._window_origins(x, flat)
        kh = (torch.div(flat, x.shape[-1], rounding_mode="floor") - rows) // self.dilation[0]
        kw = (flat % x.shape[-1] - cols) // self.dilation[1]
        return (kh * self.kernel_size[1] + kw).to(SWITCH_DTYPE)

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        flat = self.switch_positions(x, state)
        return torch.gather(x.flatten(-2), -1, flat).view(state.shape)

    def indices_of(self, x: Tensor, state: Tensor) -> Tensor:
        """What ``F.max_pool2d(x, ..., return_indices=True)`` returns as indices (for ``max_unpool2d``), from the
        switches: fixed for a fixed pattern."""
        return self.switch_positions(x, state).view(state.shape)

    def switch_positions(self, x: Tensor, state: Tensor) -> Tensor:
        """int64 (..., h_out * w_out): the flat position in x's (H, W) plane that each output's switch selects.

        From a small table of (window offset, output position) -> flat position: one int64 copy of the
        switches and one gather, instead of element-wise index arithmetic on the whole output.
        """
        h_out, w_out = state.shape[-2:]
        rows, cols = self.window.positions(h_out, w_out, x.device)
        table = rows * x.shape[-1] + cols  # (windows, h_out * w_out)
        n = state.numel() // (h_out * w_out)
        offsets = state.reshape(n, 1, h_out * w_out).long()
        return torch.gather(table.expand(n, -1, -1), 1, offsets).view(*x.shape[:-2], h_out * w_out)

    def _window_origins(self, x: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """Top-left input coordinate of every pooling window, broadcastable against the output."""
        h_out, w_out = out.shape[-2:]
        rows = torch.arange(h_out, device=x.device) * self.stride[0] - self.padding[0]
        cols = torch.arange(w_out, device=x.device) * self.stride[1] - self.padding[1]
        return rows.view(-1, 1), cols.view(1, -1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class ReluMaxPoolGate(Gate):
    """A ReLU gate whose only reader is a frozen max-pool gate, applied in one pass at the pooled size.

    ``pool(relu_gate(x, m), s) == where(m[s], x[s], 0)``: only the elements the switches select are ever read,
    so the mask is gathered with them instead of being applied to the whole pre-pooling tensor. Exact in
    values and gradients; the states are the two sites' unchanged states (see `skqk.fuse`).
    """

    def __init__(self, pool: MaxPoolGate):
        super().__init__()
        self.pool = pool

    def forward(self, x: Tensor, relu_state: Tensor, switches: Tensor) -> Tensor:
        flat = self.pool.switch_positions(x, switches)
        selected = torch.gather(x.flatten(-2), -1, flat)
        active = torch.gather(relu_state.flatten(-2), -1, flat)
        return (selected * as_mask(active, selected.dtype)).view(switches.shape)


def as_mask(state: Tensor, dtype: torch.dtype) -> Tensor:
    """A bool state as a 0/1 mask of `dtype`, so the gate is one same-dtype multiplication.

    Measured on CPU (torch 2.13): ``x * bool_state`` first copies the bool tensor to float through a slow
    type-promotion path, in the forward and again in the backward, and ``torch.where(state, x, 0)`` is slower
    still; a uint8 view converts with a vectorised cast, once (autograd keeps the mask for the backward).
    """
    return state.view(torch.uint8).to(dtype) if state.dtype == torch.bool else state.to(dtype)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)
