"""Summary tables of saved experiment results (printed by `skqk reproduce`, pasted into docs/results.md)."""

from __future__ import annotations


def summary_table(results: dict) -> str:
    """A markdown table of a results.json: per cell for Fig. 5, per epoch for Fig. 4."""
    if results["experiment"] == "federated":
        rows = ["| model | K | partition | method | val acc | val CCE | MiB down | MiB up | wall s |", "|---" * 9 + "|"]
        for c in results["cells"]:
            partition = f"Dirichlet {c['alpha']:g}" if c["partition"] == "dirichlet" else "IID"
            rows.append(
                f"| {c['model']} | {c['clients']} | {partition} | {c['method']} | {c['val_accuracy']:.4f} | "
                f"{c['val_loss']:.4f} | {c['bytes_down'] / 2**20:.1f} | {c['bytes_up'] / 2**20:.1f} | "
                f"{c['wall_seconds']:.0f} |"
            )
        return "\n".join(rows)
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
