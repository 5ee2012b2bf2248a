"""`skqk reproduce drift`: re-training on evolving data, offline (issue 22; not in the paper).

The paper motivates re-training with data that change over time (finance, insurance, maintenance). Per stream —
the bundled time-ordered tables of `skqk.data.evolving` (regression, an mlp) and a class-incremental CIFAR-10
stream (LeNet-5, new classes every chunk) — and per seed: pre-train on chunk 0, then every arm re-trains chunk
after chunk (`skqk.experiments.incremental.run_stream`, whose cells are cached, so a rerun picks up where it
stopped): QK-only on the new chunk, with replay, with SK refresh, the analytic head solve (each chunk's ridge
statistics added: exactly the solve on everything so far), traditional fine-tuning on the new chunk, and joint
traditional re-training on every chunk so far. After each chunk the error (RMSE) or accuracy on every chunk seen
so far fills a row of the chunk matrix, from which forgetting (for an error: its increase on earlier chunks) and
backward transfer follow; samples processed and wall time are summed over the chunks.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from skqk.data import Dataset, load_dataset
from skqk.data.evolving import load_stream
from skqk.experiments.common import check_before_training, claim_results_folder, write_csv, write_json, write_results
from skqk.experiments.incremental import check_order, run_stream, summarise
from skqk.experiments.plots import plot_incremental
from skqk.experiments.presets import IncrementalProtocol
from skqk.pipeline.provenance import machine_info

ARMS = ("qk-new", "qk-replay", "qk-new-refresh", "analytic", "traditional-new", "traditional-all")
IMAGES = "cifar10"  # the class-incremental image stream's name


@dataclass(frozen=True)
class DriftStream:
    """One stream of the suite and the protocol its chunks are re-trained with."""

    name: str  # a key of skqk.data.evolving.STREAMS, or "cifar10" (class-incremental, from --data-dir)
    model: str
    protocol: IncrementalProtocol  # tables: chunk_samples and eval_per_chunk are the stream's (filled in)
    held_out: float = 0.2  # tables: each period's latest share of rows, its test data

    def dataset(self, data_dir=None, cache_dir=None, progress: bool = True) -> Dataset:
        """The stream's data, never downloaded."""
        if self.name == IMAGES:
            return load_dataset(data_dir, cache_dir, download=False, progress=progress)
        return load_stream(self.name, self.protocol.chunks, self.held_out)

    def fitted(self, dataset: Dataset) -> IncrementalProtocol:
        """The protocol with a table stream's own chunk sizes and its time order."""
        if self.name == IMAGES:
            return replace(self.protocol, orders=("class-incremental",))
        t = dataset.table
        return replace(self.protocol, chunk_samples=t["chunk_samples"], eval_per_chunk=t["held_out_per_chunk"],
                       eval_samples=0, orders=("time",))  # fmt: skip


@dataclass(frozen=True)
class DriftPreset:
    name: str
    description: str
    streams: tuple[DriftStream, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {**asdict(self), "scaling": self.scaling()}

    def scaling(self) -> str:
        """The protocol actually run, spelled out from the values (printed and saved with every result)."""
        lines = [f"preset {self.name}: {self.description}"]
        for s in self.streams:
            p = s.protocol
            sizes = (f"{p.chunk_samples} samples ({p.classes_per_chunk} new classes) each" if s.name == IMAGES
                     else f"equal periods, the latest {s.held_out:.0%} of each held out")  # fmt: skip
            lines.append(
                f"  drift {s.name}: {s.model} {p.model_kwargs or ''}, {p.chunks} chunks of {sizes}, pre-train "
                f"{p.pretrain_epochs} epochs on chunk 0, re-train {p.retrain_epochs} epochs per chunk, lr {p.lr}, "
                f"replay {p.replay}, seeds {list(p.seeds)}, arms {list(p.arms)}"
            )
        return "\n".join(lines)


def table_protocol(pretrain: int, retrain: int, replay: int, seeds=(0, 1, 2), arms=ARMS, chunks=5, **model):
    return IncrementalProtocol(0, pretrain, retrain, replay, chunks=chunks, seeds=seeds, arms=arms,
                               model_kwargs=model)  # fmt: skip


CPU = DriftPreset(
    "cpu",
    "a 2-core CPU shared by five: S&P 500 (5 yearly chunks of ~201 + 50 days) and US macro quarters (5 decade "
    "chunks of 32 + 8) with an mlp; CIFAR-10 class-incremental (LeNet-5, 5 chunks of 300 samples, 2 classes "
    "each); 3 seeds, six arms",
    (
        DriftStream("sp500", "mlp", table_protocol(30, 5, 40, widths=[64, 64])),
        # at lr 0.01, 10 of the 15 SGD streams diverged (every QK one), from the 1970s chunk on: far beyond chunk 0
        DriftStream("macro", "mlp", replace(table_protocol(100, 20, 8, widths=[32, 32]), lr=0.002)),
        DriftStream(
            IMAGES, "lenet5", IncrementalProtocol(300, 15, 3, 30, eval_per_chunk=200, eval_samples=500, arms=ARMS)
        ),  # fmt: skip
    ),
)
SMOKE = DriftPreset(
    "smoke",
    "seconds: the macro stream in 3 chunks, an mlp, 2 + 1 epochs, one seed, three arms",
    (
        DriftStream(
            "macro",
            "mlp",
            table_protocol(2, 1, 4, seeds=(0,), arms=("qk-new", "analytic", "traditional-all"), chunks=3, widths=[16]),
        ),
    ),  # fmt: skip
)
PRESETS = {p.name: p for p in (CPU, SMOKE)}


def run_drift(preset: DriftPreset, names: list[str], out: Path, data_dir=None, cache_dir=None, progress: bool = True,
              seeds: tuple[int, ...] | None = None) -> dict:  # fmt: skip
    """Every stream of `names` into ``out/<stream>`` (its own results.json, drift.csv and plot), then
    ``out/results.json`` with all of them."""
    out, started = Path(out), time.time()
    chosen = [s for s in preset.streams if s.name in names]
    if seeds is not None:
        chosen = [replace(s, protocol=replace(s.protocol, seeds=tuple(seeds))) for s in chosen]
    loaded = [(s, s.dataset(data_dir, cache_dir, progress)) for s in chosen]  # every refusal before any training
    results = {}
    for stream, dataset in loaded:
        results[stream.name] = run_drift_stream(stream, dataset, out / stream.name, preset, progress)
    summary = {"experiment": "drift", "preset": preset.to_dict(), "machine": machine_info(),
               "wall_seconds_this_invocation": time.time() - started, "streams": results}  # fmt: skip
    write_json(out / "results.json", summary)
    return results


def run_drift_stream(stream: DriftStream, dataset: Dataset, out: Path, preset, progress: bool = True) -> dict:
    """One stream: every seed and arm (cells cached under `out`), its summary, CSV and plot."""
    started = time.time()
    protocol = stream.fitted(dataset)
    for order in protocol.orders:
        check_order(order, protocol, dataset)
    check_before_training(stream.model, protocol.model_kwargs, dataset, [protocol.chunks * protocol.chunk_samples])
    claim_results_folder(out, "drift", dataset, preset, stream=stream.name)
    streams = []
    for seed in protocol.seeds:
        for order in protocol.orders:
            folder = out / stream.model / order / f"seed{seed}"
            streams += run_stream(stream.model, order, seed, protocol, dataset, folder, progress, stream.name)
    summary = summarise(streams)
    results = write_results(out, "drift", preset, [stream.model], dataset, started, stream=stream.name,
                            protocol=asdict(protocol), streams=streams, summary=summary)  # fmt: skip
    write_csv(out / "drift.csv", summary)
    seeds = sorted({s["seed"] for s in streams})
    title = f"{stream.model}, {protocol.orders[0]} order, seeds {seeds}"
    plot_incremental(streams, title, out.parent / f"drift_{stream.name}.png", preset.name, dataset.source)
    return results
