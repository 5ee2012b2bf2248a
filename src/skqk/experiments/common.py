"""What every experiment saves beside its numbers: the machine, the code version, and files written atomically."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from skqk.atomic import atomic_write_text
from skqk.pipeline.provenance import machine_info


def write_results(out: Path, experiment: str, preset, model_names: list[str], dataset, started: float, **data) -> dict:
    """results.json of one invocation (qkgap-results.json for the QK-gap study, which shares Fig. 5's folder):
    what was run, on which data and machine, how long, then the numbers."""
    results = {
        "experiment": experiment,
        "preset": preset.to_dict(),
        "models": model_names,
        "data": dataset.source,
        "machine": machine_info(),
        "wall_seconds_this_invocation": time.time() - started,
        **data,
    }
    write_json(Path(out) / ("qkgap-results.json" if experiment == "qkgap" else "results.json"), results)
    return results


def write_json(path: Path, obj) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(path), buffer.getvalue())
