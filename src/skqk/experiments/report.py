"""Summary tables of saved experiment results (printed by `skqk reproduce`, pasted into docs/results.md)."""

from __future__ import annotations


def summary_table(results: dict) -> str:
    """A markdown table of a results.json: per cell for Fig. 5, per epoch for Fig. 4."""
    if results["experiment"] == "incremental":
        return incremental_table(results["summary"])
    if results["experiment"] == "fig5":
        rows = ["| model | n (SK) | N | method | val acc | val CCE | train s | record s |", "|---" * 8 + "|"]
        for c in results["cells"]:
            record = f"{c['record_seconds']:.1f}" if "record_seconds" in c else ""
            rows.append(
                f"| {c['model']} | {c['n']} | {c['N']} | {c['method']} | {c['val_accuracy']:.4f} | "
                f"{c['val_loss']:.4f} | {c['train_seconds']:.1f} | {record} |"
            )
        return "\n".join(rows)
    rows = ["| model | epoch | gate states changed | train CCE | val CCE | val acc |", "|---" * 6 + "|"]
    for name, epochs in results["epochs"].items():
        for r in epochs:
            flips = f"{100 * r['flips']:.2f}%" if r["flips"] is not None else "n/a (resumed)"
            rows.append(
                f"| {name} | {r['epoch']} | {flips} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | "
                f"{r['val_accuracy']:.4f} |"
            )
    return "\n".join(rows)


def incremental_table(summary: list[dict]) -> str:
    """Per model, order and arm: mean ± std over seeds of the final accuracy, average forgetting, and the cost."""
    rows = [
        "| model | order | arm | seeds | final acc | avg forgetting | BWT | samples processed | wall s | refreshes |",
        "|---" * 10 + "|",
    ]
    for r in summary:
        cells = [pm(r, "final_accuracy", 4), pm(r, "average_forgetting", 4), pm(r, "backward_transfer", 4)]
        cells += [f"{r['samples_processed_mean']:,.0f}", pm(r, "wall_seconds", 0), pm(r, "refreshes", 1)]
        rows.append(f"| {r['model']} | {r['order']} | {r['arm']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def pm(row: dict, key: str, digits: int) -> str:
    """`mean ± std` of a summary row (the mean alone for one seed)."""
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
