"""Run configurations: one dataclass per kind of run, defaults are the paper's values (section 5).

The paper states the sample counts and epochs (pre-training 200 epochs on n = 1,024 samples, 512 for VGG8;
re-training 50 epochs on n + m samples) and plain SGD; it does not state learning rate, momentum, weight decay
or batch size, so those defaults are ours and documented as such.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

Method = Literal["qk", "traditional"]


@dataclass
class SGDConfig:
    """What both phases that train share: the optimiser and the batches."""

    epochs: int = 50  # paper: 50 re-training epochs
    batch_size: int = 64  # not stated in the paper
    lr: float = 0.01  # not stated in the paper
    momentum: float = 0.9  # not stated in the paper
    weight_decay: float = 5e-4  # not stated in the paper
    seed: int = 0  # weight initialisation, dropout and batch order
    subset_seed: int = 0  # which samples: subset(n) is a prefix of one permutation fixed by this seed
    balanced: bool = False  # class-balanced prefixes of that permutation
    eval_samples: int = 0  # validation samples evaluated after each epoch (0 = the whole test split)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast, master weights fp32
    layout: Literal["auto", "contiguous", "channels_last"] = "auto"  # activations; auto: where it pays (benchmarks)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "samples"):  # samples: in both kinds of run
            if getattr(self, name, 1) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.lr < math.inf:  # comparisons with NaN are false, so NaN is refused too
            raise ValueError(f"lr must be positive and finite, got {self.lr}")
        if not 0 <= self.momentum < 1:  # momentum 1 or more never forgets a gradient: SGD cannot settle
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be non-negative and finite, got {self.weight_decay}")
        if self.eval_samples < 0:
            raise ValueError(f"eval_samples must be non-negative, got {self.eval_samples}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.layout not in ("auto", "contiguous", "channels_last"):
            raise ValueError(f"layout must be 'auto', 'contiguous' or 'channels_last', got {self.layout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainConfig(SGDConfig):
    """Phase 1: initial training of the network from scratch on n samples."""

    model: str = "lenet5"  # a name from skqk.models.list_models()
    samples: int = 1024  # n; paper: 1,024 (LeNet-5, AlexNet), 512 (VGG8), and 4,096 for the larger SK
    epochs: int = 200  # paper: 200 pre-training epochs

    def __post_init__(self):
        super().__post_init__()
        from skqk.models import list_models  # not at the top: the zoo imports torch
        from skqk.patterns import unknown_name_message

        if self.model not in list_models():  # refused here, before a run folder is created for it
            raise ValueError(unknown_name_message("model", self.model, list_models()))


@dataclass
class RetrainConfig(SGDConfig):
    """Phase 4 (method "qk") or the traditional baseline, from a pre-trained checkpoint on n + m samples."""

    samples: int = 4096  # n + m
    method: Method = "qk"  # "qk": estimator only, SK fixed; "traditional": the whole network with its ReLUs
    patterns: Literal["store", "on-the-fly"] = "store"  # where a QK step gets its batch's patterns
    prune: bool = True  # qk: remove units dead for every training sample while training (exact, skqk.pipeline.prune)
    patience: int = 0  # stop after this many epochs without a better val accuracy, keep the best (0 = off)

    def __post_init__(self):
        super().__post_init__()
        if self.method not in ("qk", "traditional"):
            raise ValueError(f"method must be 'qk' or 'traditional', got {self.method!r}")
        if self.patterns not in ("store", "on-the-fly"):
            raise ValueError(f"patterns must be 'store' or 'on-the-fly', got {self.patterns!r}")
        if self.patience < 0:
            raise ValueError(f"patience must be non-negative, got {self.patience}")
