"""Plots drawn from saved results only (the data is written first, as airbench does)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import numpy as np

from skqk.experiments.report import COMPARED, LABELS, aggregate, task_of

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def data_title(source: str) -> str:
    """What a plot calls the data: its source without the path ("CIFAR-10 (JPEG q75 re-encoding)", "table ...")."""
    return source.rsplit(" from ", 1)[0]


def band(ax, x, rows: list[list[float]], style: str, color: str, label: str, spread: str = "std") -> None:
    """Mean line of several seeds' curves (same x) with a band: mean ± std, or the seeds' min-max `range` (for
    log axes, where mean - std can be negative). One curve is drawn as it is."""
    values = np.array(rows, dtype=float)
    mean = np.nanmean(values, axis=0)
    ax.plot(x, mean, style, color=color, label=label + (f" (mean of {len(rows)} seeds)" if len(rows) > 1 else ""))
    if len(rows) > 1:
        if spread == "range":
            low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        else:
            std = np.nanstd(values, axis=0, ddof=1)
            low, high = mean - std, mean + std
        ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)


def plot_fig4(runs: list[dict], model: str, path: Path, preset: str, data: str) -> None:
    """Pattern change and losses against epochs, two y-axes, like the paper's Fig. 4; bands over seeds (losses:
    ± std, flips: min-max), the criterion's settle epochs and validation-loss minima as vertical marks."""
    fig, left = plt.subplots(figsize=(7.5, 4.2))
    fine = all(r["steps"] for r in runs)
    points = [r["steps"] if fine else r["epochs"] for r in runs]
    x = [p["epoch"] for p in points[0]]
    flips = [[100 * p["flips"] if p["flips"] is not None else np.nan for p in rows] for rows in points]
    every = runs[0]["stabilisation"]["measured_every"]
    band(left, x, flips, "-", "tab:red", f"gate states changed, every {every} (%), band: range", spread="range")
    if all(p.get("update") is not None for rows in points for p in rows[1:]):
        updates = [[100 * p["update"] if p.get("update") is not None else np.nan for p in rows] for rows in points]
        band(left, x, updates, "-", "tab:purple", "relative weight update ‖Δθ‖/‖θ‖ (%), band: range", spread="range")
    left.axhline(100 * runs[0]["stabilisation"]["flip_threshold"], color="tab:red", ls=":", lw=1, label="threshold")
    for r in runs:
        s = r["stabilisation"]
        if s["settle_epoch"] is not None:
            left.axvline(s["settle_epoch"], color="tab:red", ls="--", lw=0.8, alpha=0.6)
        left.axvline(s["val_loss_min_epoch"], color="tab:green", ls="--", lw=0.8, alpha=0.6)
    left.set_xlabel("epoch (dashed: patterns settle / validation loss minimum, per seed)")
    left.set_ylabel("pattern change / weight update (%)")
    left.set_yscale("log")
    right = left.twinx()
    epochs = [e["epoch"] for e in runs[0]["epochs"]]
    band(right, epochs, [[e["train_loss"] for e in r["epochs"]] for r in runs], "-", "tab:blue", "training loss")
    band(right, epochs, [[e["val_loss"] for e in r["epochs"]] for r in runs], "--", "tab:green", "validation loss")
    right.set_ylabel("CCE loss")
    lines = left.get_lines() + right.get_lines()
    labelled = [line for line in lines if not line.get_label().startswith("_")]
    left.legend(labelled, [line.get_label() for line in labelled], loc="upper right", fontsize=7)
    left.set_title(f"SK stabilisation, {model}, {data_title(data)}, preset {preset}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fig5(cells: list[dict], model: str, path: Path, preset: str, data: str) -> None:
    """Validation accuracy and CCE loss (regression: RMSE and R²) against N (log2 axis), one line per method and SK
    size n, mean ± std band over seeds."""
    compared = COMPARED[task_of(cells)][:2]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"traditional": ("tab:blue", "o-", "traditional SGD"), "qk": ("tab:red", "s-", "QK-only")}
    rows = [r for r in aggregate(cells) if r["variant"] == "base"]
    for n in sorted({r["n"] for r in rows}):
        for method, (color, marker, label) in styles.items():
            line = sorted((r for r in rows if r["n"] == n and r["method"] == method), key=lambda r: r["N"])
            if not line:
                continue
            shade = 1.0 if n == min(r["n"] for r in rows) else 0.55
            seeds = max(len(r["seeds"]) for r in line)
            for ax, key in zip(axes, compared):
                x = [r["N"] for r in line]
                mean, std = np.array([r[key] for r in line]), np.array([r[f"{key}_std"] for r in line])
                ax.plot(x, mean, marker, color=color, alpha=shade, label=f"{label}, SK from n={n}")
                if seeds > 1:
                    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2 * shade, linewidth=0)
    for ax, key in zip(axes, compared):
        ylabel = LABELS[key]
        ax.set_xscale("log", base=2)
        ax.set_xlabel("samples N = n + m")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    seeds = sorted({c.get("seed", 0) for c in cells})
    title = f"Re-training, {model}, {data_title(data)}, preset {preset}, seeds {seeds} (band: ± std)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ANALYTIC_STYLES = {  # (method, variant): colour, marker, label
    ("analytic", "mse"): ("tab:purple", "D-", "analytic head, ridge"),
    ("analytic", "ce"): ("tab:pink", "v-", "analytic head, cross-entropy"),
    ("qk", "after-ridge"): ("tab:orange", "^-", "ridge head, then SGD QK"),
    ("qk", "base"): ("tab:red", "s-", "SGD QK (final epoch)"),
    ("traditional", "base"): ("tab:blue", "o-", "traditional SGD (final epoch)"),
}


def plot_analytic_fig5(cells: list[dict], model: str, path: Path, preset: str, data: str) -> None:
    """Validation accuracy and wall time against N (log2 axes) of the analytic and SGD re-trainings, one line per
    method and SK size n, mean ± std band over seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = aggregate(cells, ("val_accuracy", "wall_seconds"))
    for n in sorted({r["n"] for r in rows}):
        for (method, variant), (color, marker, label) in ANALYTIC_STYLES.items():
            line = sorted((r for r in rows if (r["n"], r["method"], r["variant"]) == (n, method, variant)),
                          key=lambda r: r["N"])  # fmt: skip
            for ax, key in zip(axes, ("val_accuracy", "wall_seconds")):
                x = [r["N"] for r in line]
                mean, std = np.array([r[key] for r in line]), np.array([r[f"{key}_std"] for r in line])
                ax.plot(x, mean, marker, color=color, label=f"{label}, n={n}")
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log", base=2)
    seeds = sorted({c.get("seed", 0) for c in cells})
    _finish_pair(
        fig,
        axes,
        "samples N",
        ("validation accuracy", "wall seconds (recording included)"),
        f"Analytic vs SGD re-training, {model}, {data_title(data)}, preset {preset}, seeds {seeds} (band: ± std)",
        path,
    )


def plot_qk_gap(cells: list[dict], path: Path, preset: str, data: str) -> None:
    """One panel per N, one horizontal bar per re-training cell (validation accuracy or RMSE, mean ± std over seeds),
    the traditional base cell as a dashed line: each factor reads as moving QK-only towards, or past, that line."""
    metric = COMPARED[task_of(cells)][0]
    rows = [r for r in aggregate(cells) if r["method"] != "pretrain"]
    counts = sorted({r["N"] for r in rows})
    most = max(sum(r["N"] == N for r in rows) for N in counts)
    fig, axes = plt.subplots(1, len(counts), figsize=(5 * len(counts), 1.2 + 0.35 * most), squeeze=False)
    for ax, N in zip(axes[0], counts):
        at = [r for r in rows if r["N"] == N]
        accuracy, spread = np.array([r[metric] for r in at]), np.array([r[f"{metric}_std"] for r in at])
        colors = ["tab:blue" if r["method"] == "traditional" else "tab:red" for r in at]
        ax.barh(range(len(at)), accuracy, xerr=spread, color=colors, capsize=3)
        labels = [f"{r['method']}{'' if r['variant'] == 'base' else ' ' + r['variant']}" for r in at]
        ax.set_yticks(range(len(at)), labels, fontsize=8)
        ax.invert_yaxis()
        for r in at:
            if r["method"] == "traditional" and r["variant"] == "base":
                ax.axvline(r[metric], linestyle="--", color="tab:blue", linewidth=1)
        ax.set_xlim(max(0.0, (accuracy - spread).min() - 0.03), (accuracy + spread).max() + 0.01)
        ax.set_xlabel(f"{LABELS[metric]} (mean ± std over seeds)")
        ax.set_title(f"N = {N:,}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    seeds = sorted({c.get("seed", 0) for c in cells})
    fig.suptitle(
        f"QK gap factors, {cells[0]['model']}, SK from n={cells[0]['n']:,}, {data_title(data)}, preset {preset}, "
        f"seeds {seeds}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_incremental(streams: list[dict], title: str, path: Path, preset: str, data: str) -> None:
    """Average accuracy (regression: RMSE) over the chunks seen so far and average forgetting after each chunk,
    one line per arm (mean over seeds)."""
    metric = "accuracy" if any("accuracy_per_step" in s for s in streams) else "rmse"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm in dict.fromkeys(s["arm"] for s in streams):
        runs = [s for s in streams if s["arm"] == arm and "diverged" not in s]
        if not runs:
            continue
        style = "--" if arm.startswith("traditional") else "-"  # QK-only arms (SGD or analytic) solid
        for ax, key in zip(axes, (f"{metric}_per_step", "forgetting_per_step")):
            steps = range(len(runs[0][key]))
            means = [mean_or_nan([r[key][i] for r in runs]) for i in steps]
            ax.plot(list(steps), means, style, marker="o", label=arm)
    _finish_pair(
        fig,
        axes,
        "chunk trained on (0 = pre-training)",
        (
            f"average {metric if metric == 'accuracy' else 'RMSE'} over chunks seen",
            "average forgetting" + ("" if metric == "accuracy" else " (RMSE increase)"),
        ),
        f"Incremental re-training, {title}, {data_title(data)}, preset {preset}",
        path,
    )


def mean_or_nan(values: list) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else float("nan")


def plot_federated(cells: list[dict], title: str, path: Path, preset: str, data: str) -> None:
    """Global validation accuracy and CCE loss against rounds: QK-FedAvg and full-network FedAvg as lines, the
    merge-once baseline as a point at the last round; one line style per partition."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"qk-fedavg": "tab:red", "traditional-fedavg": "tab:blue", "merge-once": "tab:green",
               "analytic": "tab:purple"}  # fmt: skip
    styles = ["-", "--", ":", "-."]
    partitions = list(dict.fromkeys((c["partition"], c["alpha"]) for c in cells))
    for (kind, alpha), style in zip(partitions, styles):
        label = f"Dirichlet {alpha:g}" if kind == "dirichlet" else "IID"
        for cell in (c for c in cells if (c["partition"], c["alpha"]) == (kind, alpha)):
            colour = colours[cell["method"]]
            for ax, key in zip(axes, ("val_accuracy", "val_loss")):
                if "rounds" in cell:
                    rows = cell["rounds"]
                    ax.plot(
                        [r["round"] for r in rows],
                        [r[key] for r in rows],
                        style,
                        color=colour,
                        label=f"{cell['method']}, {label}",
                    )
                else:
                    last = cell["config"]["rounds"]
                    ax.plot(
                        [last],
                        [cell[key]],
                        "*",
                        markersize=12,
                        color=colour,
                        alpha=1 if style == "-" else 0.6,
                        label=f"merge-once, {label}",
                    )
    _finish_pair(
        fig,
        axes,
        "round",
        ("validation accuracy", "validation CCE loss"),
        f"Federated re-training, {title}, {data_title(data)}, preset {preset}",
        path,
    )


def _finish_pair(fig, axes, xlabel: str, ylabels: tuple[str, str], suptitle: str, path: Path) -> None:
    """Label, grid and save a two-panel figure (legend on the left panel), then free it."""
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(textwrap.fill(suptitle, 150), fontsize=10)  # a table's description can be long
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
