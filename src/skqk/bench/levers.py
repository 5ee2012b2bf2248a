"""Benchmark-only levers: the previous gate implementations, kept to measure the current gates against."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from skqk.gates import MaxPoolGate, ReluGate


class _MulReluGate(ReluGate):
    """The previous ReLU gate, ``x * state`` with a bool state (a slow bool-to-float promotion in the forward and
    again in the backward): the "gates" lever measures the current gates against it."""

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        return x * state


class _IndexMathMaxPoolGate(MaxPoolGate):
    """The previous frozen-pooling gate: flat positions by element-wise index arithmetic, then a gather."""

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        offset = state.long()
        rows, cols = self._window_origins(x, offset)
        kh, kw = torch.div(offset, self.kernel_size[1], rounding_mode="floor"), offset % self.kernel_size[1]
        flat = (rows + kh * self.dilation[0]) * x.shape[-1] + cols + kw * self.dilation[1]
        out = torch.gather(x.flatten(-2), -1, flat.flatten(-2))
        return out.view(*x.shape[:-2], *state.shape[-2:])


def with_previous_gates(estimator: nn.Module) -> nn.Module:
    """Swap the estimator's gates for their previous implementations (same states, same results)."""
    for module in estimator.modules():
        if type(module) is ReluGate:
            module.__class__ = _MulReluGate
        elif type(module) is MaxPoolGate:
            module.__class__ = _IndexMathMaxPoolGate
    return estimator
