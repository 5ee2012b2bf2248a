"""Experiment presets: the paper's protocol, a scaled CPU protocol, and a smoke test. The scaling of a preset
is printed and written into every result file, never hidden."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class Fig5Protocol:
    """Successive re-training with a growing number of samples for one model (paper, Fig. 5)."""

    sk_samples: tuple[int, ...]  # n values the SK is obtained from (pre-training samples)
    max_samples: int = 32768  # N = n + m grows 1,024, 2,048, ... up to this
    min_samples: int = 1024
    pretrain_epochs: int = 200  # paper: 200
    retrain_epochs: int = 50  # paper: 50
    eval_samples: int = 0  # validation samples (0 = the whole test split)
    samples: tuple[int, ...] = ()  # N values given explicitly (--samples); () = the powers of two above
    model_kwargs: dict = field(default_factory=dict)  # options of the model's builder (mlp's, an imported one's)

    def sample_counts(self, n: int) -> list[int]:
        """N values for SK size n: the explicit ones >= n, else powers of two from max(n, min_samples) to
        max_samples."""
        if self.samples:
            return [N for N in self.samples if N >= n]
        counts, N = [], self.min_samples
        while N <= self.max_samples:
            if N >= n:
                counts.append(N)
            N *= 2
        return counts


@dataclass(frozen=True)
class IncrementalProtocol:
    """Data arriving in chunks for one model (`skqk.experiments.incremental`; not in the paper)."""

    chunk_samples: int  # samples per chunk; chunk 0 is the pre-training data
    pretrain_epochs: int
    retrain_epochs: int  # per chunk
    replay: int  # the small replay buffer of the replay arms
    chunks: int = 5
    classes_per_chunk: int = 2  # class-incremental order: new classes per chunk
    eval_per_chunk: int = 500  # test samples measuring each chunk (a column of the accuracy matrix)
    eval_samples: int = 2000  # validation samples after every epoch (the final accuracy)
    seeds: tuple[int, ...] = (0, 1, 2)
    orders: tuple[str, ...] = ("random", "class-incremental")
    arms: tuple[str, ...] = ()  # names from skqk.experiments.incremental.ARMS; () = every arm
    model_kwargs: dict = field(default_factory=dict)  # options of the model's builder (mlp's, an imported one's)
    lr: float = 0.01  # SGD learning rate of pre-training and every chunk (SGDConfig's default)


@dataclass(frozen=True)
class Variant:
    """One re-training cell's departure from the Fig. 5 protocol (the QK-gap study changes one factor at a time)."""

    name: str  # "base" is the Fig. 5 cell itself
    method: str = "qk"
    lr_scale: float = 1.0  # times the default learning rate
    pooling: str = "live"  # "frozen": the SK also fixes the max-pooling switches
    epochs: int = 0  # re-training epochs (0 = the protocol's)
    sk_refresh: str = "off"  # "auto": refresh the SK whenever it goes stale while re-training (RetrainConfig)
    sk_refresh_every: int = 1  # at most one refresh every this many epochs (fewer re-recordings of the patterns)


BASE = {m: Variant("base", m) for m in ("qk", "traditional")}


@dataclass(frozen=True)
class QKGapProtocol:
    """Which factor closes the gap between QK-only and traditional re-training at large N (on top of Fig. 5)."""

    model: str
    sk_samples: int  # n
    sample_counts: tuple[int, ...]  # N values
    variants: tuple[Variant, ...]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    fig5: dict[str, Fig5Protocol] = field(default_factory=dict)
    fig4_model: str = "alexnet"  # the paper's Fig. 4 network (the default of `reproduce fig4`)
    default_models: tuple[str, ...] = ()  # what `reproduce` runs without --models; () = every model of the study
    fig4_epochs: int = 200
    fig4_samples: int = 1024  # paper: 1,024 for LeNet-5 and AlexNet ...
    fig4_model_samples: dict[str, int] = field(default_factory=lambda: {"vgg8": 512})  # ... and 512 for VGG8
    fig4_val_samples: int = 1000  # validation samples whose patterns are compared epoch to epoch
    fig4_eval_samples: int = 0
    incremental: dict[str, IncrementalProtocol] = field(default_factory=dict)
    fig4_every_steps: int = 0  # also compare patterns every this many SGD steps (0 = per epoch only)
    fig4_flip_threshold: float = 0.01  # patterns "settled" once the flips per interval stay below this fraction
    qk_gap: tuple[QKGapProtocol, ...] = ()  # one study per model

    def fig4_samples_for(self, model: str) -> int:
        """The training samples of `model`'s Fig. 4 run (the paper's per-model n)."""
        return self.fig4_model_samples.get(model, self.fig4_samples)

    def to_dict(self) -> dict:
        return {**asdict(self), "scaling": self.scaling()}

    def scaling(self) -> str:
        """The protocol actually run, spelled out from the values (printed and saved with every result)."""
        lines = [f"preset {self.name}: {self.description}"]
        for name, p in self.fig5.items():
            counts = (
                f"{', '.join(f'{N:,}' for N in p.samples)}"
                if p.samples
                else (f"{p.min_samples:,}..{p.max_samples:,} (powers of 2, N >= n)")
            )
            options = f" with options {p.model_kwargs}" if p.model_kwargs else ""
            lines.append(
                f"  fig5 {name}{options}: SK from n in {list(p.sk_samples)}, pre-train {p.pretrain_epochs} epochs, "
                f"re-train {p.retrain_epochs} epochs on N = {counts}, validation on {p.eval_samples or 'all'} test "
                "samples"
            )
        lines.append(
            f"  fig4: {self.fig4_epochs} epochs on {self.fig4_samples:,} samples"
            + "".join(f" ({m}: {k:,})" for m, k in self.fig4_model_samples.items())
            + f", pattern flips and weight updates on "
            f"{self.fig4_val_samples:,} validation samples"
            + (f" every {self.fig4_every_steps} steps" if self.fig4_every_steps else " every epoch")
            + f", settled below {self.fig4_flip_threshold:.1%} flips, validation on "
            f"{self.fig4_eval_samples or 'all'} test samples"
        )
        for g in self.qk_gap:
            lines.append(
                f"  qkgap {g.model}: SK from n = {g.sk_samples:,}, N in {list(g.sample_counts)}, one factor at a "
                f"time: {', '.join(f'{v.method} {v.name}' for v in g.variants)}"
            )
        for name, p in self.incremental.items():
            lines.append(
                f"  incremental {name}: {p.chunks} chunks of {p.chunk_samples:,} samples (class-incremental: "
                f"{p.classes_per_chunk} new classes each), pre-train {p.pretrain_epochs} epochs on chunk 0, re-train "
                f"{p.retrain_epochs} epochs per chunk, replay {p.replay}, {p.eval_per_chunk} test samples per chunk, "
                f"seeds {list(p.seeds)}, orders {list(p.orders)}, arms {list(p.arms) or 'all'}"
            )
        return "\n".join(lines)


def gap_variants(more_epochs: int) -> tuple[Variant, ...]:
    """The QK-gap study's factors, one at a time: QK learning rate, frozen pooling, more re-training epochs (for
    both methods, so the comparison stays fair) and an SK refreshed whenever it goes stale (issue 12's refresh), after
    every epoch or at most every fifth (what the refreshes cost against what they bring)."""
    return (
        Variant("lr0.3x", lr_scale=0.3),
        Variant("lr3x", lr_scale=3.0),
        Variant("frozen-pooling", pooling="frozen"),
        Variant(f"{more_epochs}-epochs", epochs=more_epochs),
        Variant(f"{more_epochs}-epochs", "traditional", epochs=more_epochs),
        Variant("sk-refresh", sk_refresh="auto"),
        Variant("sk-refresh-every-5", sk_refresh="auto", sk_refresh_every=5),
    )


PAPER = Preset(
    "paper",
    "the paper's protocol exactly: pre-train 200 epochs on n (1,024 and 4,096; 512 and 4,096 for VGG8), "
    "re-train 50 epochs on N = 1,024 ... 32,768",
    fig5={
        "lenet5": Fig5Protocol((1024, 4096)),
        "alexnet": Fig5Protocol((1024, 4096)),
        "vgg8": Fig5Protocol((512, 4096), min_samples=512),
    },
)

CPU = Preset(
    "cpu",
    "scaled for a 2-core CPU: LeNet-5 keeps the paper's pre-training and N up to 32,768 with a fifth of its "
    "re-training epochs; AlexNet gets a twentieth of the pre-training, 3 of the 50 re-training epochs and N up to "
    "4,096, VGG8 the same up to 8,192; validation on 2,000 test samples. Incremental: LeNet-5 with 300-sample "
    "chunks, 15 + 3 epochs, 3 seeds; VGG8 smoke-sized (100-sample chunks, 6 + 2 epochs), 1 seed, no replay "
    "arms",
    fig5={
        "lenet5": Fig5Protocol((1024, 4096), 32768, pretrain_epochs=200, retrain_epochs=10, eval_samples=2000),
        "alexnet": Fig5Protocol((1024, 4096), 4096, pretrain_epochs=10, retrain_epochs=3, eval_samples=2000),
        "vgg8": Fig5Protocol((512, 4096), 8192, 512, pretrain_epochs=10, retrain_epochs=3, eval_samples=2000),
    },
    fig4_epochs=40,
    fig4_eval_samples=2000,
    incremental={
        "lenet5": IncrementalProtocol(
            300, pretrain_epochs=15, retrain_epochs=3, replay=30, eval_per_chunk=200, eval_samples=500
        ),
        "vgg8": IncrementalProtocol(
            100,
            pretrain_epochs=6,
            retrain_epochs=2,
            replay=10,
            eval_per_chunk=100,
            eval_samples=300,
            seeds=(0,),
            arms=("qk-new", "traditional-new", "qk-all", "traditional-all", "qk-new-refresh", "qk-all-refresh"),
        ),  # fmt: skip
    },
    fig4_every_steps=4,
    qk_gap=(
        QKGapProtocol("lenet5", 4096, (16384, 32768), gap_variants(more_epochs=25)),
        QKGapProtocol("vgg8", 512, (8192,), gap_variants(more_epochs=8)),
    ),
)

SMOKE = Preset(
    "smoke",
    "a few minutes, for CI: n = 256, N = 256 and 512, 2 pre-training and 1 re-training epochs, 500 validation "
    "samples; Fig. 4 trains 3 epochs on 256 samples; LeNet-5 unless --models names others",
    fig5={
        name: Fig5Protocol((256,), 512, 256, pretrain_epochs=2, retrain_epochs=1, eval_samples=500)
        for name in ("lenet5", "alexnet", "vgg8")
    },
    default_models=("lenet5",),  # the others on request (--models vgg8,alexnet): they take minutes more
    fig4_epochs=3,
    fig4_samples=256,
    fig4_model_samples={},
    fig4_val_samples=200,
    fig4_eval_samples=500,
    incremental={
        name: IncrementalProtocol(
            100, pretrain_epochs=2, retrain_epochs=1, replay=10, eval_per_chunk=50, eval_samples=250, seeds=(0,)
        )
        for name in ("lenet5", "vgg8")
    },
    fig4_every_steps=2,
    qk_gap=(
        QKGapProtocol(
            "lenet5",
            256,
            (512,),
            (
                Variant("lr3x", lr_scale=3.0),
                Variant("frozen-pooling", pooling="frozen"),
                Variant("sk-refresh", sk_refresh="auto"),
            ),
        ),
    ),
)

PRESETS = {p.name: p for p in (PAPER, CPU, SMOKE)}


@dataclass(frozen=True)
class Overrides:
    """What the command line changes in a preset's protocols (None: the preset's value)."""

    model: str | None = None  # run this network (a zoo name or package.module:callable) instead of the preset's
    model_kwargs: dict = field(default_factory=dict)
    sk_samples: tuple[int, ...] | None = None  # n values (qkgap: the first)
    max_samples: int | None = None
    samples: tuple[int, ...] | None = None  # N values
    epochs: int | None = None  # pre-training epochs
    retrain_epochs: int | None = None
    seeds: tuple[int, ...] | None = None  # incremental: the seeds of every protocol


def customised(preset: Preset, changes: Overrides) -> Preset:
    """`preset` with `changes` applied to its Fig. 5, QK-gap and incremental protocols; the result is what
    results.json records and the scaling prints. A `changes.model` the preset has no protocol for runs with its
    first protocol of each study as a template."""
    fig5 = dict(preset.fig5)
    gaps = list(preset.qk_gap)
    incremental = dict(preset.incremental)
    if changes.model is not None:
        name = changes.model
        fig5 = {name: replace(fig5.get(name) or next(iter(fig5.values())), model_kwargs=changes.model_kwargs)}
        template = next((g for g in gaps if g.model == name), gaps[0] if gaps else None)
        gaps = [replace(template, model=name)] if template else []
        template = incremental.get(name) or next(iter(incremental.values()), None)
        incremental = {name: replace(template, model_kwargs=changes.model_kwargs)} if template else {}
    given = lambda **values: {k: v for k, v in values.items() if v is not None}  # noqa: E731
    fig5_changes = given(
        sk_samples=changes.sk_samples,
        max_samples=changes.max_samples,
        samples=changes.samples,
        pretrain_epochs=changes.epochs,
        retrain_epochs=changes.retrain_epochs,
    )
    fig5 = {name: replace(p, **fig5_changes) for name, p in fig5.items()}
    gap_changes = given(sk_samples=changes.sk_samples and changes.sk_samples[0], sample_counts=changes.samples)
    gaps = [replace(g, **gap_changes) for g in gaps]
    chunk_changes = given(pretrain_epochs=changes.epochs, retrain_epochs=changes.retrain_epochs, seeds=changes.seeds)
    incremental = {name: replace(p, **chunk_changes) for name, p in incremental.items()}
    return replace(preset, fig5=fig5, qk_gap=tuple(gaps), incremental=incremental)
