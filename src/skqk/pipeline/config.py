"""Run configurations: one dataclass per kind of run, defaults are the paper's values (section 5).

The paper states the sample counts and epochs (pre-training 200 epochs on n = 1,024 samples, 512 for VGG8;
re-training 50 epochs on n + m samples) and plain SGD; it does not state learning rate, momentum, weight decay
or batch size, so those defaults are ours and documented as such.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
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
    class_incremental: int = 0  # > 0: class-incremental order, each chunk brings this many new classes
    chunk_samples: int = 0  # samples per chunk of the class-incremental permutation
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
        if (
            self.class_incremental < 0
            or self.chunk_samples < 0
            or (self.class_incremental > 0) != (self.chunk_samples > 0)
        ):
            raise ValueError("the class-incremental order needs both classes per chunk and samples per chunk, positive")
        if self.class_incremental and self.balanced:
            raise ValueError("choose the class-balanced or the class-incremental order, not both")
        if self.layout not in ("auto", "contiguous", "channels_last"):
            raise ValueError(f"layout must be 'auto', 'contiguous' or 'channels_last', got {self.layout!r}")

    @property
    def class_chunks(self) -> tuple[int, int] | None:
        """``(classes per chunk, samples per chunk)`` of the class-incremental order, or None (random order)."""
        return (self.class_incremental, self.chunk_samples) if self.class_incremental else None

    def to_dict(self) -> dict:
        return asdict(self)

    def matches(self, saved: dict) -> bool:
        """Whether a saved configuration (config.json, a cached cell) is this one; a field added since it was
        saved counts as its default, so runs and cells saved before it still resume and stay cached."""
        defaults = {f.name: f.default_factory() if f.default is MISSING else f.default for f in fields(self)}
        return {**defaults, **saved} == self.to_dict()


@dataclass
class TrainConfig(SGDConfig):
    """Phase 1: initial training of the network from scratch on n samples."""

    model: str = "lenet5"  # a name from skqk.models.list_models(), or an import path package.module:callable
    model_kwargs: dict = field(default_factory=dict)  # options of the model's builder (mlp's, an imported one's)
    samples: int = 1024  # n; paper: 1,024 (LeNet-5, AlexNet), 512 (VGG8), and 4,096 for the larger SK
    epochs: int = 200  # paper: 200 pre-training epochs

    def __post_init__(self):
        super().__post_init__()
        from skqk.models import DATA_ARGUMENTS, check_options, resolve  # not at the top: the zoo imports torch

        resolve(self.model, trust=(self.model,))  # the caller's choice; refused here, before a run folder exists
        taken = sorted(set(self.model_kwargs) & set(DATA_ARGUMENTS))
        if ":" not in self.model and not taken:
            check_options(self.model, self.model_kwargs)
        if taken:
            raise ValueError(f"model keyword arguments cannot set {', '.join(taken)}: the data decides them")


@dataclass
class RetrainConfig(SGDConfig):
    """Phase 4 (method "qk") or the traditional baseline, from a pre-trained checkpoint on n + m samples."""

    samples: int = 4096  # n + m: re-train on samples sample_start .. samples - 1 of the permutation
    sample_start: int = 0  # 0: all n + m samples (the paper); A > 0: only the new samples A.. (data in chunks)
    replay: int = 0  # with sample_start A: K of the samples before A revisited, class-balanced (not in the paper)
    method: Method = "qk"  # "qk": estimator only, SK fixed; "traditional": the whole network with its ReLUs
    patterns: Literal["store", "on-the-fly"] = "store"  # where a QK step gets its batch's patterns
    prune: bool = True  # qk: remove units dead for every training sample while training (exact, skqk.pipeline.prune)
    patience: int = 0  # stop after this many epochs without a better val accuracy, keep the best (0 = off)
    # qk: "ridge-head" first sets the head to its exact ridge solution on the run's samples (one-hot targets, λ by
    # GCV: skqk.analytic), "ce-head" to its exact cross-entropy optimum (Newton from the ridge solution, same λ),
    # then SGD trains as "sgd" does; ours, not in the paper (docs/benchmarks.md)
    optimizer: Literal["sgd", "ridge-head", "ce-head"] = "sgd"
    staleness_samples: int = 256  # validation samples sk_staleness is measured on after every QK epoch
    sk_refresh: Literal["off", "auto"] = "off"  # auto: refresh the SK when sk_staleness passes the threshold
    sk_refresh_threshold: float = 0.05  # ours, from a calibration run (docs/results.md, incremental); not in the paper
    sk_refresh_every: int = 1  # at most one SK refresh every this many epochs

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.sample_start < self.samples:
            raise ValueError(f"the sample range {self.sample_start}:{self.samples} is empty or negative")
        if not 0 <= self.replay <= self.sample_start:
            raise ValueError(f"replay {self.replay} must lie in 0..{self.sample_start} (the samples before the range)")
        if self.staleness_samples < 0 or self.sk_refresh_every <= 0:
            raise ValueError("staleness_samples must be non-negative and sk_refresh_every positive")
        if self.sk_refresh not in ("off", "auto"):
            raise ValueError(f"sk_refresh must be 'off' or 'auto', got {self.sk_refresh!r}")
        if self.sk_refresh == "auto" and (self.method != "qk" or not self.staleness_samples):
            raise ValueError("--sk-refresh auto needs --method qk and staleness samples to measure")
        if not 0 <= self.sk_refresh_threshold <= 1:
            raise ValueError(f"sk_refresh_threshold is a fraction of gate states, got {self.sk_refresh_threshold}")
        if self.method not in ("qk", "traditional"):
            raise ValueError(f"method must be 'qk' or 'traditional', got {self.method!r}")
        if self.patterns not in ("store", "on-the-fly"):
            raise ValueError(f"patterns must be 'store' or 'on-the-fly', got {self.patterns!r}")
        if self.optimizer not in ("sgd", "ridge-head", "ce-head"):
            raise ValueError(f"optimizer must be 'sgd', 'ridge-head' or 'ce-head', got {self.optimizer!r}")
        if self.optimizer != "sgd" and self.method != "qk":
            raise ValueError(f"--optimizer {self.optimizer} needs --method qk (the SK it solves through is fixed)")
        if self.patience < 0:
            raise ValueError(f"patience must be non-negative, got {self.patience}")
