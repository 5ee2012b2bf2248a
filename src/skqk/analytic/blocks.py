"""The block a solve re-trains, and its per-sample design: what its parameters are multiplied by in the output.

With the SK fixed, max-pooling switches frozen and BatchNorm in eval mode, the estimator is affine in any one
layer's parameters θ given the other layers: ``output = J(x) θ + r(x)``. For the head (the linear layer whose
output is the network's output) J is its input ``[z 1]`` for every class; for another linear or conv layer, J is
computed exactly from the backward signal δ of each output at the layer's output and the layer's input u (the
per-sample gradient of a linear map is an outer product, Goodfellow 2015): one backward pass per class.
Everything downstream of the block, BatchNorm included, is then part of the fixed map it is solved through.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skqk.estimator import Estimator
from skqk.patterns import Pattern, unknown_name_message

MAX_BLOCK_PARAMETERS = 20_000  # a non-head block's Gram is P² float64 (3.2 GB at this size)


class BlockError(ValueError):
    """A block that cannot be solved exactly (one-line message naming it)."""


@dataclass(frozen=True)
class Block:
    """One linear or conv layer of the estimator, by module name (also its state-dict prefix)."""

    name: str
    module: nn.Linear | nn.Conv2d
    head: bool  # its output is the network's output: J = [z 1] shared by the classes

    @property
    def penalised(self) -> Tensor:
        """The statistics' rows under the ridge penalty: the weights, not the bias."""
        weights = self.module.weight.shape[1] if self.head else self.module.weight.numel()
        bias = 0 if self.module.bias is None else 1 if self.head else self.module.bias.numel()
        return torch.cat([torch.ones(weights, dtype=torch.bool), torch.zeros(bias, dtype=torch.bool)])

    def theta(self) -> Tensor:
        """The block's current parameters in the statistics' layout: (d + 1, K) for the head, (P, 1) otherwise."""
        w, b = self.module.weight.detach(), self.module.bias
        if self.head:
            return torch.cat([w.T, *([] if b is None else [b.detach()[None]])]).double()
        return torch.cat([w.reshape(-1), *([] if b is None else [b.detach()])]).double()[:, None]

    @torch.no_grad()
    def assign(self, theta: Tensor) -> None:
        """Write θ (the statistics' layout) into the layer."""
        w, b = self.module.weight, self.module.bias
        if self.head:
            w.copy_(theta[: w.shape[1]].T.to(w))
            if b is not None:
                b.copy_(theta[w.shape[1]].to(b))
            return
        flat = theta[:, 0]
        w.copy_(flat[: w.numel()].reshape(w.shape).to(w))
        if b is not None:
            b.copy_(flat[w.numel() :].to(b))

    def design(self, estimator: Estimator, x: Tensor, pattern: Pattern) -> tuple[Tensor, Tensor]:
        """``(J, out)`` for a batch: the head's ``[z 1]`` (B, d + 1) or the Jacobian (B, K, P), and the output."""
        captured: dict[str, Tensor] = {}

        def hook(module, inputs, output):
            if "input" in captured:
                raise BlockError(f"block {self.name!r} is called more than once per sample; pick another layer")
            captured["input"], captured["output"] = inputs[0], output

        handle = self.module.register_forward_hook(hook)
        try:
            with torch.set_grad_enabled(not self.head):
                out = estimator(x, pattern)
        finally:
            handle.remove()
        if self.head:
            z = captured["input"]
            if z.dim() != 2:
                raise BlockError(
                    f"head {self.name!r} takes inputs of shape {tuple(z.shape)}; it must take (batch, features)"
                )
            ones = [] if self.module.bias is None else [torch.ones(len(z), 1, dtype=z.dtype, device=z.device)]
            return torch.cat([z, *ones], 1).detach(), out.detach()
        return self.jacobian(out, captured["input"].detach(), captured["output"]), out.detach()

    def jacobian(self, out: Tensor, u: Tensor, a: Tensor) -> Tensor:
        """(B, K, P): d out_k / d θ per sample, from δ_k = d out_k / d a (exact: out is affine in a)."""
        deltas = [
            torch.autograd.grad(out[:, k].sum(), a, retain_graph=k + 1 < out.shape[1])[0] for k in range(out.shape[1])
        ]
        delta = torch.stack(deltas, 1)  # (B, K, *a.shape[1:])
        m = self.module
        if isinstance(m, nn.Linear):
            weight = delta[..., :, None] * u[:, None, None, :]
            bias = delta
        else:
            padding = 0 if m.padding == "valid" else m.padding
            columns = F.unfold(u, m.kernel_size, m.dilation, padding, m.stride)  # (B, C_in·kh·kw, L)
            flat = delta.flatten(3)  # (B, K, C_out, L)
            weight = torch.einsum("bkol,bil->bkoi", flat, columns)
            bias = flat.sum(-1)
        parts = [weight.flatten(2), *([] if m.bias is None else [bias])]
        return torch.cat(parts, 2).detach()


def find_block(estimator: Estimator, name: str | None = None) -> Block:
    """The head (`name` None or "head") or the named linear / conv layer of the estimator, checked to be
    solvable exactly: called once, conv with zero padding and one group, ≤ `MAX_BLOCK_PARAMETERS` unless head."""
    gm = estimator.net
    output = next(n for n in gm.graph.nodes if n.op == "output")
    last = output.args[0]
    head = last.target if getattr(last, "op", None) == "call_module" else None
    if name in (None, "head"):
        if head is None or not isinstance(gm.get_submodule(head), nn.Linear):
            raise BlockError(
                "the network's output is not a linear layer's output, so it has no head block; name one with --block"
            )
        name = head
    layers = {n: m for n, m in gm.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    if name not in layers:
        raise BlockError(unknown_name_message("linear or conv layer", name, list(layers)))
    module = layers[name]
    calls = sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == name)
    if calls != 1:
        raise BlockError(f"block {name!r} is called {calls} times in the network; a block must be called once")
    if isinstance(module, nn.Conv2d) and (
        module.groups != 1 or module.padding_mode != "zeros" or module.padding == "same"
    ):
        raise BlockError(f"conv block {name!r} must have groups=1 and explicit zero padding")
    size = sum(p.numel() for p in module.parameters())
    if name != head and size > MAX_BLOCK_PARAMETERS:
        raise BlockError(
            f"block {name!r} has {size:,} parameters; a non-head block's exact Gram is limited to "
            f"{MAX_BLOCK_PARAMETERS:,} (its square in float64)"
        )
    return Block(name, module, name == head)


def fixed_qk_fingerprint(estimator: Estimator, block: Block) -> str:
    """Hash of every estimator weight outside `block`: the block's inputs and downstream map, which its
    statistics depend on. Statistics from estimators that differ there are statistics of other features."""
    own = {f"{block.name}.weight", f"{block.name}.bias"}
    h = hashlib.sha256(block.name.encode())
    for key, t in estimator.net.state_dict().items():
        if key not in own:
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]
