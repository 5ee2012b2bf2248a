"""The user's alternative as a benchmark arm: the fine-tuning loop one writes by hand in plain PyTorch.

`nn.Module` in its default layout, tensor batches (the same ones every arm gets), ``torch.optim.SGD`` with its
defaults for the device, eager mode, and no skqk code in the step. `skqk retrain` is worth using for speed only
where it beats this arm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from skqk.bench.arms import Arm


class PlainPyTorchArm(Arm):
    """``loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()``."""

    def __post_init__(self):
        cfg = self.sgd  # the hyperparameters of the other arms
        self.opt = torch.optim.SGD(
            self.trainable.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )

    def step(self, x: Tensor, y: Tensor, pattern) -> Tensor:
        loss = F.cross_entropy(self.trainable(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.detach()
