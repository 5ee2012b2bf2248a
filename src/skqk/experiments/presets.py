"""Experiment presets: the paper's protocol, a scaled CPU protocol, and a smoke test. The scaling of a preset
is printed and written into every result file, never hidden."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Fig5Protocol:
    """Successive re-training with a growing number of samples for one model (paper, Fig. 5)."""

    sk_samples: tuple[int, ...]  # n values the SK is obtained from (pre-training samples)
    max_samples: int = 32768  # N = n + m grows 1,024, 2,048, ... up to this
    min_samples: int = 1024
    pretrain_epochs: int = 200  # paper: 200
    retrain_epochs: int = 50  # paper: 50
    eval_samples: int = 0  # validation samples (0 = the whole test split)

    def sample_counts(self, n: int) -> list[int]:
        """N values for SK size n: powers of two from max(n, min_samples) to max_samples."""
        counts, N = [], self.min_samples
        while N <= self.max_samples:
            if N >= n:
                counts.append(N)
            N *= 2
        return counts


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    fig5: dict[str, Fig5Protocol] = field(default_factory=dict)
    fig4_epochs: int = 200
    fig4_samples: int = 1024
    fig4_val_samples: int = 1000  # validation samples whose patterns are compared epoch to epoch
    fig4_eval_samples: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "scaling": self.scaling()}

    def scaling(self) -> str:
        """The protocol actually run, spelled out from the values (printed and saved with every result)."""
        lines = [f"preset {self.name}: {self.description}"]
        for name, p in self.fig5.items():
            lines.append(
                f"  fig5 {name}: SK from n in {list(p.sk_samples)}, pre-train {p.pretrain_epochs} epochs, re-train "
                f"{p.retrain_epochs} epochs on N = {p.min_samples:,}..{p.max_samples:,} (powers of 2, N >= n), "
                f"validation on {p.eval_samples or 'all'} test samples"
            )
        lines.append(
            f"  fig4: {self.fig4_epochs} epochs on {self.fig4_samples:,} samples, pattern flips on "
            f"{self.fig4_val_samples:,} validation samples, validation on {self.fig4_eval_samples or 'all'} test "
            "samples"
        )
        return "\n".join(lines)


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
    "scaled for a 2-core CPU: LeNet-5 keeps the paper's pre-training, half its re-training epochs and N up to "
    "16,384; AlexNet and VGG8 get a twentieth of the pre-training, 3 of the 50 re-training epochs and N up to "
    "8,192; validation on 2,000 test samples",
    fig5={
        "lenet5": Fig5Protocol((1024, 4096), 16384, pretrain_epochs=200, retrain_epochs=25, eval_samples=2000),
        "alexnet": Fig5Protocol((1024, 4096), 8192, pretrain_epochs=10, retrain_epochs=3, eval_samples=2000),
        "vgg8": Fig5Protocol((512, 4096), 8192, 512, pretrain_epochs=10, retrain_epochs=3, eval_samples=2000),
    },
    fig4_epochs=20,
    fig4_eval_samples=2000,
)

SMOKE = Preset(
    "smoke",
    "a few minutes, for CI: n = 256, N = 256 and 512, 2 pre-training and 1 re-training epochs, 500 validation "
    "samples; Fig. 4 trains 3 epochs on 256 samples",
    fig5={
        name: Fig5Protocol((256,), 512, 256, pretrain_epochs=2, retrain_epochs=1, eval_samples=500)
        for name in ("lenet5", "alexnet", "vgg8")
    },
    fig4_epochs=3,
    fig4_samples=256,
    fig4_val_samples=200,
    fig4_eval_samples=500,
)

PRESETS = {p.name: p for p in (PAPER, CPU, SMOKE)}
