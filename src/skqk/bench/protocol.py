"""What the benchmark measures and its command line: `BenchConfig`, the time-to-accuracy protocol, the levers.

Imports neither torch nor the rest of skqk at module level, so ``skqk --help`` can build the ``bench`` parser
without paying for them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace

LEVERS = ("prune", "channels_last", "sgd", "prefetch", "pooling", "fusion", "gates", "threads")
# what `skqk retrain` decides by default (dead-unit removal, layout, fused SGD) and whether to prefetch; the
# others measured gates and pooling modes kept since (see docs/benchmarks.md), threads is slow on a shared machine
DEFAULT_LEVERS = ("prune", "channels_last", "sgd", "prefetch")


@dataclass
class AccuracyProtocol:
    """Time to reach the traditional method's final validation accuracy: a fixed small protocol."""

    model: str = "lenet5"
    pretrain_samples: int = 1024
    pretrain_epochs: int = 10
    samples: int = 4096  # n + m re-trained on
    epochs: int = 6
    eval_samples: int = 2000
    seeds: int = 3  # pre-training and re-training seeds: mean and spread of the time to accuracy


@dataclass
class BenchConfig:
    models: tuple[str, ...] = ("lenet5", "alexnet", "vgg8")
    samples: int = 512  # training samples per timed epoch
    # 0: an epoch is its training steps; K: each epoch also evaluates on K test samples, as a Fig. 5 re-training
    # epoch does (QK from the validation patterns recorded once, `skqk.pipeline.validation`)
    eval_samples: int = 0
    batch_size: int = 64  # SGDConfig's default
    lr: float = 1e-3  # SGD learning rate of the timed arms (the time of a step does not depend on it)
    repeats: int = 5  # timed rounds (plus one warm-up round); every ratio: the median of its per-round ratios
    round_s: float = 3.0  # at least this many seconds of the plain PyTorch arm per round (whole epochs, repeated)
    e2e_epochs: int = 50  # the paper's re-training epochs
    pooling: str = "live"  # the paper's setup; the other mode is measured as the "pooling" lever
    precisions: tuple[str, ...] = ("fp32", "bf16")
    prefetch: bool = True  # read patterns in a background thread, as skqk retrain does
    trained: bool = True  # time trained networks on real data (cached Phase 1 runs) when real data is given
    levers: tuple[str, ...] = DEFAULT_LEVERS
    accuracy: AccuracyProtocol | None = field(default_factory=AccuracyProtocol)
    seed: int = 0
    matmul_size: int = 1024
    profile: bool = False  # top operators of one traditional and one QK step (torch.profiler), for misses
    smoke: bool = False  # --quick: says that its ratios are not comparable between runs

    def __post_init__(self):
        from skqk import models  # not at the top: the zoo imports torch

        if self.round_s < 0:
            raise ValueError(f"round_s must be non-negative, got {self.round_s}")

        for name in self.models:
            if name not in models.list_models():
                raise ValueError(f"unknown model {name!r}; choose from {', '.join(models.list_models())}")
        for p in self.precisions:
            if p not in ("fp32", "bf16"):
                raise ValueError(f"precision must be fp32 or bf16, got {p!r}")
        for lever in self.levers:
            if lever not in LEVERS:
                raise ValueError(f"unknown lever {lever!r}; choose from {', '.join(LEVERS)}")
        if self.pooling not in ("live", "frozen"):
            raise ValueError(f"pooling must be live or frozen, got {self.pooling!r}")
        if self.samples < self.batch_size or self.repeats < 1:
            raise ValueError("samples must be at least one batch and repeats at least 1")
        if self.eval_samples < 0:
            raise ValueError(f"eval_samples must be non-negative, got {self.eval_samples}")


def quick_config(**overrides) -> BenchConfig:
    """A smoke run, under a minute for lenet5: fewer samples and repeats, rounds of one short epoch, no levers, no
    accuracy protocol, the matmul peaks on 256 x 256 (a 1024 x 1024 bf16 matmul takes 3 s on a CPU without bf16
    instructions, e.g. an AMD EPYC: 74 of a quick run's 83 s). Its rounds are too short for its ratios to be
    comparable between runs."""
    base = BenchConfig(
        models=("lenet5",), samples=128, repeats=3, round_s=0.0, levers=(), accuracy=None, trained=False, smoke=True,
        matmul_size=256,
    )  # fmt: skip
    return replace(base, **overrides)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", help="comma-separated (default lenet5,alexnet,vgg8; --quick: lenet5)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run, under a minute for lenet5 (rounds of one short epoch): its ratios are not comparable",
    )
    p.add_argument("--json", dest="json_path", help="write the results to this JSON file")
    p.add_argument("--markdown", help="write the markdown tables to this file (always printed)")
    p.add_argument("--samples", type=int, help="training samples per timed epoch (default 512; quick 128)")
    p.add_argument(
        "--eval-samples",
        type=int,
        help="also evaluate on this many test samples in every timed epoch, as a Fig. 5 re-training epoch does "
        "(default 0: training steps only)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="time randomly initialised networks on synthetic data (default: trained checkpoints on real data, "
        "trained once and cached, when real data is found; --quick: random)",
    )
    p.add_argument("--repeats", type=int, help="timed rounds, after one warm-up round (default 5; quick 3)")
    p.add_argument(
        "--round-seconds",
        type=float,
        dest="round_s",
        help="seconds of plain PyTorch training per round at least, in whole epochs (default 3; quick 0: one epoch)",
    )
    p.add_argument("--batch-size", type=int, help="SGD batch size (default 64)")
    p.add_argument("--epochs", type=int, help="re-training epochs of the end-to-end comparison (default 50)")
    p.add_argument("--precision", default=None, help="comma-separated precisions to time: fp32,bf16 (default both)")
    p.add_argument("--pooling", choices=["live", "frozen"], help="max pooling of the estimator (default live)")
    p.add_argument("--no-prefetch", action="store_true", help="read patterns on the critical path")
    p.add_argument(
        "--levers", help=f"comma-separated levers to measure: {','.join(LEVERS)} (default all but threads; quick none)"
    )
    p.add_argument("--no-accuracy", action="store_true", help="skip the time-to-accuracy protocol (real data)")
    p.add_argument("--accuracy-epochs", type=int, help="re-training epochs of the time-to-accuracy protocol")
    p.add_argument("--profile", action="store_true", help="also report the top operators of a step (torch.profiler)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads before measuring (default: torch's choice)")
    p.add_argument("--data-dir", help="real data for the time-to-accuracy protocol (default $SKQK_DATA)")
    p.add_argument("--cache-dir", help="decoded-data cache (default $SKQK_CACHE)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    cfg = quick_config() if args.quick else BenchConfig()
    over: dict = {}
    if args.models:
        over["models"] = tuple(args.models.split(","))
    for key in ("samples", "eval_samples", "repeats", "round_s", "batch_size", "pooling"):
        if getattr(args, key, None) is not None:
            over[key] = getattr(args, key)
    if args.epochs is not None:
        over["e2e_epochs"] = args.epochs
    if args.precision:
        over["precisions"] = tuple(args.precision.split(","))
    if args.profile:
        over["profile"] = True
    if args.no_prefetch:
        over["prefetch"] = False
    if args.levers is not None:
        over["levers"] = tuple(x for x in args.levers.split(",") if x)
    if args.random_init:
        over["trained"] = False
    if args.no_accuracy:
        over["accuracy"] = None
    elif args.accuracy_epochs:
        over["accuracy"] = replace(cfg.accuracy or AccuracyProtocol(), epochs=args.accuracy_epochs)
    return replace(cfg, **over)
