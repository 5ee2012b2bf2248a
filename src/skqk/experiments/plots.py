"""Plots drawn from saved results only (the data is written first, as airbench does)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DATA_NOTE = "CIFAR-10 (JPEG q75 re-encoding)"


def plot_fig4(rows: list[dict], model: str, path: Path, preset: str) -> None:
    """Pattern change and losses against epochs, two y-axes, like the paper's Fig. 4."""
    epochs = [r["epoch"] for r in rows]
    fig, left = plt.subplots(figsize=(7, 4))
    flips = [100 * r["flips"] if r["flips"] is not None else float("nan") for r in rows]
    left.plot(epochs, flips, "o-", color="tab:red", label="gate states changed (%)")
    left.set_xlabel("epoch")
    left.set_ylabel("activation pattern change vs previous epoch (%)", color="tab:red")
    right = left.twinx()
    right.plot(epochs, [r["train_loss"] for r in rows], color="tab:blue", label="training loss")
    right.plot(epochs, [r["val_loss"] for r in rows], "--", color="tab:green", label="validation loss")
    right.set_ylabel("CCE loss")
    lines = left.get_lines() + right.get_lines()
    left.legend(lines, [line.get_label() for line in lines], loc="upper right")
    left.set_title(f"SK stabilisation, {model}, {DATA_NOTE}, preset {preset}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fig5(cells: list[dict], model: str, path: Path, preset: str) -> None:
    """Validation accuracy and CCE loss against N (log2 axis), one line per method and SK size n."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"traditional": ("tab:blue", "o-", "traditional SGD"), "qk": ("tab:red", "s-", "QK-only")}
    for n in sorted({c["n"] for c in cells}):
        for method, (color, marker, label) in styles.items():
            line = sorted((c for c in cells if c["n"] == n and c["method"] == method), key=lambda c: c["N"])
            if not line:
                continue
            shade = 1.0 if n == min(c["n"] for c in cells) else 0.55
            for ax, key in zip(axes, ("val_accuracy", "val_loss")):
                ax.plot(
                    [c["N"] for c in line],
                    [c[key] for c in line],
                    marker,
                    color=color,
                    alpha=shade,
                    label=f"{label}, SK from n={n}",
                )
    for ax, ylabel in zip(axes, ("validation accuracy", "validation CCE loss")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("samples N = n + m")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Re-training, {model}, {DATA_NOTE}, preset {preset}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_incremental(streams: list[dict], title: str, path: Path, preset: str) -> None:
    """Average accuracy over the chunks seen so far and average forgetting after each chunk, one line per arm
    (mean over seeds)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm in dict.fromkeys(s["arm"] for s in streams):
        runs = [s for s in streams if s["arm"] == arm]
        style = "-" if arm.startswith("qk") else "--"
        for ax, key in zip(axes, ("accuracy_per_step", "forgetting_per_step")):
            steps = range(len(runs[0][key]))
            means = [mean_or_nan([r[key][i] for r in runs]) for i in steps]
            ax.plot(list(steps), means, style, marker="o", label=arm)
    for ax, ylabel in zip(axes, ("average accuracy over chunks seen", "average forgetting")):
        ax.set_xlabel("chunk trained on (0 = pre-training)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Incremental re-training, {title}, {DATA_NOTE}, preset {preset}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mean_or_nan(values: list) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else float("nan")
