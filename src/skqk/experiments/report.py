"""Summary tables of saved experiment results (printed by `skqk reproduce`, pasted into docs/results.md), with the
mean and spread over seeds."""

from __future__ import annotations

import statistics

CELL_KEY = ("model", "n", "N", "method", "variant")
# what the methods are compared on: (metric, its second metric, column name, gap scale, gap unit, higher is better)
COMPARED = {
    "classification": ("val_accuracy", "val_loss", "acc", 100, "points", True),
    "regression": ("val_rmse", "val_r2", "RMSE", 1, "RMSE", False),
}
LABELS = {
    "val_accuracy": "validation accuracy",
    "val_loss": "validation CCE loss",
    "val_rmse": "validation RMSE",
    "val_r2": "validation R²",
}
SECOND = {"val_loss": "CCE", "val_r2": "R²"}


def task_of(cells: list[dict]) -> str:
    """Regression cells report RMSE (and no accuracy)."""
    return "regression" if any("val_rmse" in c for c in cells) else "classification"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(cells: list[dict], metrics: tuple[str, ...] | None = None) -> list[dict]:
    """One row per (model, n, N, method, variant) with mean, std and the seeds of each metric (default: the two the
    task compares), in first-seen order."""
    metrics = metrics or COMPARED[task_of(cells)][:2]
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault(tuple(c.get(k, "base") for k in CELL_KEY), []).append(c)
    rows = []
    for key, members in groups.items():
        row = dict(zip(CELL_KEY, key)) | {"seeds": [c.get("seed", 0) for c in members]}
        for m in metrics:
            row[m], row[f"{m}_std"] = mean_std([c[m] for c in members])
        rows.append(row)
    return rows


def qk_gaps(cells: list[dict], metric: str | None = None, scale: float | None = None) -> dict[tuple, list[float]]:
    """Per QK-only row (model, n, N, "qk", variant): QK-only minus traditional validation accuracy in points (for
    regression: RMSE; or `metric` times `scale`), one value per seed, paired with the traditional cell of the same
    seed (its same-named variant where there is one, e.g. more epochs, else its base cell). Pairing by seed removes
    what the seed does to both methods alike."""
    compared, _, _, per_unit, _, _ = COMPARED[task_of(cells)]
    metric, scale = metric or compared, per_unit if scale is None else scale
    traditional = {
        (c["model"], c["n"], c["N"], c.get("variant", "base"), c.get("seed", 0)): c[metric]
        for c in cells
        if c["method"] == "traditional"
    }
    gaps: dict[tuple, list[float]] = {}
    for c in cells:
        if c["method"] != "qk":
            continue
        variant, seed = c.get("variant", "base"), c.get("seed", 0)
        at = (c["model"], c["n"], c["N"])
        baseline = traditional.get((*at, variant, seed), traditional.get((*at, "base", seed)))
        if baseline is not None:
            gaps.setdefault((*at, "qk", variant), []).append(scale * (c[metric] - baseline))
    return gaps


def gap_text(gaps: list[float], higher_is_better: bool = True) -> str:
    """ "−2.4 ± 1.1 (QK ahead 0/3)": mean ± std over seeds, and on how many seeds QK-only was ahead (a higher
    accuracy, or a lower RMSE)."""
    digits = ".2f" if higher_is_better else ".4f"
    if len(gaps) <= 1:
        return "".join(f"{g:+{digits}}" for g in gaps)
    mean, std = mean_std(gaps)
    ahead = sum(g > 0 if higher_is_better else g < 0 for g in gaps)
    return f"{mean:+{digits}} ± {std:{digits}} (QK ahead {ahead}/{len(gaps)})"


def pm(mean: float, std: float, seeds: int, fmt: str = ".4f") -> str:
    return f"{mean:{fmt}} ± {std:{fmt}}" if seeds > 1 else f"{mean:{fmt}}"


def cell_metric(row: dict | None, metric: str) -> str:
    """`metric` of an aggregated row as mean ± std over its seeds ("" for a missing row)."""
    return pm(row[metric], row[f"{metric}_std"], len(row["seeds"])) if row else ""


def summary_table(results: dict) -> str:
    """A markdown table of a results.json: per cell (mean ± std over seeds; Fig. 5 with both methods side by side)
    for Fig. 5 and the QK-gap study, the stabilisation criterion per model and seed for Fig. 4, and per cell for
    the federated experiment, per arm for the incremental one."""
    if results["experiment"] == "incremental":
        return incremental_table(results["summary"])
    if results["experiment"] == "federated":
        rows = [
            "| model | seed | K | partition | method | val acc | val CCE | MiB down | MiB up | wall s |",
            "|---" * 10 + "|",
        ]
        for c in results["cells"]:
            partition = f"Dirichlet {c['alpha']:g}" if c["partition"] == "dirichlet" else "IID"
            cell = f"| {c['model']} | {c.get('seed', 0)} | {c['clients']} | {partition} | {c['method']} |"
            if "infeasible" in c:
                rows.append(f"{cell} not run: {c['infeasible']} |")
                continue
            rows.append(
                f"{cell} {c['val_accuracy']:.4f} | "
                f"{c['val_loss']:.4f} | {c['bytes_down'] / 2**20:.1f} | {c['bytes_up'] / 2**20:.1f} | "
                f"{c['wall_seconds']:.0f} |"
            )
        return "\n".join(rows)
    if results["experiment"] == "fig5":
        return fig5_table(results["cells"])
    if results["experiment"] == "analytic-fig5":
        return analytic_fig5_table(results["cells"])
    if results["experiment"] == "qkgap":
        cells = results["cells"]
        metric, second, name, _, unit, higher = COMPARED[task_of(cells)]
        rows = [
            f"| model | n (SK) | N | method | variant | seeds | val {name} | val {SECOND[second]} | "
            f"QK − traditional ({unit}) |",
            "|---" * 9 + "|",
        ]
        gaps = qk_gaps(cells)
        for r in aggregate(cells):
            gap = gap_text(gaps.get(tuple(r[key] for key in CELL_KEY), []), higher)
            rows.append(
                f"| {r['model']} | {r['n']} | {r['N']} | {r['method']} | {r['variant']} | {len(r['seeds'])} | "
                f"{cell_metric(r, metric)} | {cell_metric(r, second)} | {gap} |"
            )
        return "\n".join(rows)
    rows = [
        "| model | seed | flips settle (epoch) | val CCE minimum (epoch) | ratio | val acc at minimum | "
        "flips < 10% of epoch 1 | updates < 10% of epoch 1 | weights / patterns | decay-rate ratio |",
        "|---" * 10 + "|",
    ]
    for run in results["runs"]:
        s = run["stabilisation"]
        decay = s.get("decay")  # results written before the follow-up yardstick have none
        follow_up = (
            [
                number(decay["patterns"]["decay_epoch"]["0.1"], ".2f", "never"),
                number(decay["weights"]["decay_epoch"]["0.1"], ".2f", "never"),
                number(decay["ratio"]["0.1"], ".2f", "n/a"),
                number(decay["rate_ratio"], ".2f", "n/a"),
            ]
            if decay
            else [""] * 4
        )
        rows.append(
            f"| {run['model']} | {run['seed']} | {number(s['settle_epoch'], '.2f', 'never')} | "
            f"{s['val_loss_min_epoch']} | {number(s['ratio'], '.2f', 'n/a')} | {s['val_accuracy_at_min']:.4f} | "
            + " | ".join(follow_up)
            + " |"
        )
    return "\n".join(rows)


def number(value: float | None, fmt: str, missing: str) -> str:
    return missing if value is None else f"{value:{fmt}}"


def fig5_table(cells: list[dict]) -> str:
    """Fig. 5 side by side: per model, SK size n and N, both methods' accuracy and CCE (regression: RMSE and R²;
    mean ± std over seeds) and QK-only minus traditional paired by seed; each n starts with its pre-trained
    network."""
    metric, second, name, _, unit, higher = COMPARED[task_of(cells)]
    other = SECOND[second]
    rows = [
        f"| model | n (SK) | N | seeds | QK-only {name} | traditional {name} | QK − traditional ({unit}) | "
        f"QK-only {other} | traditional {other} |",
        "|---" * 9 + "|",
    ]
    found = {(r["model"], r["n"], r["N"], r["method"]): r for r in aggregate(cells) if r["variant"] == "base"}
    gaps = qk_gaps(cells)
    for (model, n, N, method), r in found.items():
        k, acc, cce = len(r["seeds"]), cell_metric(r, metric), cell_metric(r, second)
        if method == "pretrain":
            rows.append(f"| {model} | {n:,} | pre-trained | {k} | {acc} | | | {cce} | |")
        elif method == "qk":
            t = found.get((model, n, N, "traditional"))
            t_acc, t_cce = cell_metric(t, metric), cell_metric(t, second)
            gap = gap_text(gaps.get((model, n, N, "qk", "base"), []), higher)
            rows.append(f"| {model} | {n:,} | {N:,} | {k} | {acc} | {t_acc} | {gap} | {cce} | {t_cce} |")
    return "\n".join(rows)


ANALYTIC_ROWS = {  # (method, variant) of the analytic study's cells: its row name
    ("analytic", "mse"): "analytic head, ridge",
    ("analytic", "ce"): "analytic head, cross-entropy",
    ("qk", "after-ridge"): "ridge head, then SGD QK",
    ("qk", "base"): "SGD QK",
    ("traditional", "base"): "traditional",
}


def spread(cells: list[dict], key: str, fmt: str = ".4f") -> str:
    return pm(*mean_std([c[key] for c in cells]), len(cells), fmt)


def analytic_fig5_table(cells: list[dict]) -> str:
    """Per (model, n, N) and method: validation accuracy (final; best epoch for SGD) and wall time, mean ± std."""
    rows = ["| model | n (SK) | N | method | seeds | val acc | best-epoch val acc | wall s |", "|---" * 8 + "|"]
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        if (c["method"], c.get("variant", "base")) in ANALYTIC_ROWS:
            groups.setdefault((c["model"], c["n"], c["N"], c["method"], c.get("variant", "base")), []).append(c)
    for (model, n, N, method, variant), members in sorted(groups.items(), key=lambda g: g[0][:3]):
        best = spread(members, "best_val_accuracy") if "best_val_accuracy" in members[0] else ""
        rows.append(
            f"| {model} | {n:,} | {N:,} | {ANALYTIC_ROWS[(method, variant)]} | {len(members)} | "
            f"{spread(members, 'val_accuracy')} | {best} | {spread(members, 'wall_seconds', '.1f')} |"
        )
    return "\n".join(rows)


def incremental_table(summary: list[dict]) -> str:
    """Per model, order and arm: mean ± std over seeds of the final accuracy (regression: RMSE, whose forgetting
    is its increase on earlier chunks), average forgetting, and the cost."""
    score = "final_accuracy" if any("final_accuracy" in r for r in summary) else "final_rmse"
    rows = [
        f"| model | order | arm | seeds | final {'acc' if score == 'final_accuracy' else 'RMSE'} | avg forgetting "
        "| BWT | samples processed | wall s | refreshes |",
        "|---" * 10 + "|",
    ]
    for r in summary:
        k = r["seeds"]
        if not k:
            rows.append(f"| {r['model']} | {r['order']} | {r['arm']} | 0 ({r['diverged']} diverged) |" + " |" * 6)
            continue
        cells = [pm(r[m], r[f"{m}_std"], k) for m in (score, "average_forgetting", "backward_transfer")]
        cells += [f"{r['samples_processed']:,.0f}", pm(r["wall_seconds"], r["wall_seconds_std"], k, ".0f")]
        cells.append(pm(r["refreshes"], r["refreshes_std"], k, ".1f"))
        seeds = f"{k} (+{r['diverged']} diverged)" if r["diverged"] else str(k)
        rows.append(f"| {r['model']} | {r['order']} | {r['arm']} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
