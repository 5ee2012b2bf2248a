"""What every experiment saves beside its numbers: the machine, the code version, and files written atomically."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from skqk.atomic import atomic_write_text
from skqk.pipeline.provenance import machine_info
from skqk.pipeline.rundir import changed_settings


def check_before_training(
    model: str, model_kwargs: dict, dataset, sample_counts: list[int], poolings: tuple[str, ...] = ("live",)
) -> None:
    """What would fail hours into an experiment, checked before anything trains: `model` builds for the data and
    decouples with each of `poolings` (a refusal names the node), and every sample count fits the training split.

    Raises:
        ValueError: one line naming the model and what to change.
    """
    from skqk import models
    from skqk.decoupled import decouple
    from skqk.pipeline.checkpoint import model_kwargs as data_arguments

    available = len(dataset.train)
    too_many = sorted({n for n in sample_counts if n > available})
    if too_many:
        raise ValueError(
            f"{model}: {', '.join(f'{n:,}' for n in too_many)} samples asked for, the training split has "
            f"{available:,}; pass --sk-samples and --samples that fit"
        )
    network = models.build(
        model, trust=(model,), **data_arguments(dataset), **model_kwargs
    ).eval()  # chosen by the caller
    for pooling in poolings:
        try:
            decouple(network, pooling)
        except ValueError as error:  # DecouplingError names the node and where it is in the source
            raise ValueError(f"{model} cannot be decoupled with {pooling} pooling: {error}") from None


def claim_results_folder(out: Path, experiment: str, dataset, preset, **settings) -> None:
    """Record in ``out/reproduce.json`` the data, preset and `settings` of `experiment` in a results folder, or,
    when it has them, refuse to continue it with others: its cached cells would mix two experiments in one table.

    The data and preset are shared by every experiment of the folder (fig5 and qkgap share cells); `settings`
    (e.g. fig5's mode and precision) are `experiment`'s own. Models, seeds and sample counts may be added later
    (the preset is compared by name: each cached cell also checks its own configuration).

    Raises:
        ValueError: `out` holds results of other settings; the message names each difference.
    """
    path = Path(out) / "reproduce.json"
    shared = {"data": dataset.fingerprint, "preset": preset.name}
    own = json.loads(json.dumps(settings))  # as read back: tuples become lists
    claimed = json.loads(path.read_text()) if path.exists() else {**shared, "experiments": {}}
    changed = changed_settings({key: claimed.get(key) for key in shared}, json.loads(json.dumps(shared)))
    if experiment in claimed["experiments"]:
        changed += changed_settings(claimed["experiments"][experiment], own)
    if changed:
        raise ValueError(
            f"{out} holds results made with other settings: {'; '.join(changed)}; rerun with the same ones "
            "to continue them, or choose another --out"
        )
    if experiment not in claimed["experiments"]:
        claimed["experiments"][experiment] = own
        write_json(path, claimed)


def write_results(out: Path, experiment: str, preset, model_names: list[str], dataset, started: float, **data) -> dict:
    """results.json of one invocation (qkgap-results.json for the QK-gap study, which shares Fig. 5's folder):
    what was run, on which data and machine, how long, then the numbers."""
    results = {
        "experiment": experiment,
        "preset": preset.to_dict(),
        "models": model_names,
        "data": dataset.source,
        "data_fingerprint": dataset.fingerprint,
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
