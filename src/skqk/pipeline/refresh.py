"""SK staleness and SK refresh in runs: logged after every epoch of a QK run, refreshed when stale
(``--sk-refresh auto``), and the refresh of a finished run's checkpoint (`skqk refresh`).

The concepts live in `skqk.refresh`; this module adds what a run needs around them: fixed validation samples,
a pattern store for the refreshed SK, the cost of every refresh, and resumable state.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection
from pathlib import Path

import torch
from torch import Tensor, nn

from skqk.atomic import atomic_write_text
from skqk.data import Dataset
from skqk.decoupled import DecoupledModel
from skqk.estimator import Estimator, build_estimator
from skqk.pipeline.checkpoint import (
    build_network,
    decoupled_entry,
    load_decoupled,
    load_model_checkpoint,
    model_kwargs,
    resolve_pooling,
    save_checkpoint,
)
from skqk.pipeline.config import RetrainConfig
from skqk.pipeline.loop import ReadAhead, StepForward, evaluate, validation_indices
from skqk.pipeline.record import record
from skqk.pipeline.rundir import RunDirError, code_version, file_sha256
from skqk.refresh import network_with_qk, network_with_state, sk_staleness, staleness_probe
from skqk.selector import PathSelector, build_selector

# (selector, its pattern store) -> the QK step and what reads its input for a batch's indices (None: the indices)
MakeStep = Callable[[PathSelector, Path | None], tuple[StepForward, ReadAhead | None]]


def validation_images(dataset: Dataset, samples: int) -> Tensor:
    """The fixed (class-balanced) validation samples staleness is measured on, normalised."""
    return dataset.inputs(dataset.test, validation_indices(dataset, samples))


class SKMonitor:
    """The SK side of a QK run, epoch by epoch (an `EpochHook` of `fit`).

    After every epoch it logs ``sk_staleness`` (overall) and ``sk_staleness_per_site`` on fixed validation
    samples. With ``cfg.sk_refresh == "auto"`` it refreshes the SK when staleness passes
    ``cfg.sk_refresh_threshold``, at most every ``cfg.sk_refresh_every`` epochs: the selector becomes the current
    estimator's network, the patterns of the run's samples are recorded into ``RUN/patterns-skE`` (E: the epoch)
    and the following steps read them there; the epoch's metrics get ``sk_refresh`` with its cause and cost, and
    its ``val_accuracy`` and ``val_loss`` are measured again on the refreshed pair, the one its checkpoint holds.
    Its state (the SK in use) goes into the run's resume state, so a resumed run continues with the same SK.
    """

    def __init__(
        self,
        cfg: RetrainConfig,
        decoupled: DecoupledModel,
        network: nn.Module,
        selector_state: dict,
        dataset: Dataset,
        indices: Tensor,
        run_dir: Path,
        make_step: MakeStep,
        store: Path | None,
        validate: Callable[[], dict] | None = None,
    ):
        self.cfg, self.decoupled, self.network = cfg, decoupled, network
        self.dataset, self.indices, self.run_dir, self.make_step = dataset, indices, run_dir, make_step
        self.selector_state, self.last_refresh, self.refresh_store = selector_state, 0, None
        self.val_x = validation_images(dataset, cfg.staleness_samples) if cfg.staleness_samples else None
        self.validate = validate or (lambda: evaluate(decoupled, dataset, cfg.eval_samples, sharded=True))
        self._step, self._read = make_step(decoupled.selector, store)
        self._probe: Callable[[Estimator], object] | None = None

    def step(self, x: Tensor, ready) -> Tensor:
        """The QK step with the SK in use (it changes at a refresh)."""
        return self._step(x, ready)

    def read(self, idx: Tensor):
        """What the step with the SK in use reads for samples `idx` (their masks from its store)."""
        return self._read(idx) if self._read is not None else idx

    def __call__(self, epoch: int, estimator: nn.Module) -> dict:
        if self.val_x is None:
            return {}
        if self._probe is None:
            self._probe = staleness_probe(self.decoupled.selector, self.network, self.val_x.to(self.device))
        stale = self._probe(estimator)
        metrics = {"sk_staleness": stale.overall, "sk_staleness_per_site": stale.per_site}
        due = not self.last_refresh or epoch - self.last_refresh >= self.cfg.sk_refresh_every
        if self.cfg.sk_refresh == "auto" and stale.overall > self.cfg.sk_refresh_threshold and due:
            cause = f"sk_staleness {stale.overall:.4f} > threshold {self.cfg.sk_refresh_threshold}"
            metrics["sk_refresh"] = {"cause": cause, **self.refresh(epoch, estimator)}
            # the epoch reports what its checkpoint holds: the refreshed pair, measured again
            metrics.update(self.validate())
        return metrics

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters(), torch.empty(0)).device

    def refresh(self, epoch: int, estimator: Estimator) -> dict:
        """Refresh the SK now; returns its cost (seconds, patterns recorded) and the new store."""
        start = time.perf_counter()
        network = network_with_qk(self.network, estimator)
        selector = build_selector(network, self.decoupled.selector.pooling).to(self.device)
        store = f"patterns-sk{epoch}" if self.cfg.patterns == "store" else None  # inside the run folder
        if store is not None:
            record(selector, self.dataset, self.indices, self.run_dir / store, progress=False)
        self._install(selector, network.state_dict(), store, epoch)
        return {
            "seconds": time.perf_counter() - start,
            "patterns_recorded": len(self.indices) if store is not None else 0,
            "store": store,
        }

    def _install(self, selector: PathSelector, selector_state: dict, store: str | None, epoch: int) -> None:
        self.decoupled.selector = selector
        self.selector_state, self.last_refresh = selector_state, epoch
        self.refresh_store = store
        self._step, self._read = self.make_step(selector, self.run_dir / store if store is not None else None)
        self._probe = None

    def state_dict(self) -> dict:
        """What a resumed run needs: the SK in use, if a refresh replaced the one it started with."""
        if not self.last_refresh:
            return {}
        return {"selector_state": self.selector_state, "store": self.refresh_store, "last_refresh": self.last_refresh}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        network = network_with_state(self.network, state["selector_state"])
        selector = build_selector(network, self.decoupled.selector.pooling).to(self.device)
        self._install(selector, state["selector_state"], state["store"], state["last_refresh"])


def refresh_checkpoint(
    checkpoint: str | os.PathLike,
    dataset: Dataset,
    indices: Tensor,
    store: str | os.PathLike,
    out: str | os.PathLike,
    pooling: str | None = None,
    staleness_samples: int = 256,
    batch_size: int = 1024,
    progress: bool = True,
    trust: Collection[str] = (),
) -> dict:
    """SK refresh of a run's checkpoint (`skqk refresh`): the selector becomes the checkpoint's current network
    (a QK run's estimator with its ReLUs back in), the patterns of `indices` are recorded into `store`, and
    ``out/model.pt`` is a QK checkpoint that `retrain` continues from with that store.

    Args:
        checkpoint: a QK run's model.pt (or a network checkpoint, for which this is plain decoupling).
        dataset: the data the run trains on.
        indices: the training samples in use, whose patterns `store` gets.
        store: a new pattern store (or one this very SK recorded; another selector's is refused).
        out: the refresh's run folder: model.pt and refresh.json (cause, cost, staleness before).
        pooling: the max-pooling mode (`resolve_pooling`: a QK checkpoint keeps its own, a network's is live).
        staleness_samples: validation samples the staleness before the refresh is measured on (0: not measured).
        trust: import paths of models that may be built (`skqk.models.resolve`); zoo names need none.

    Returns:
        What ``out/refresh.json`` records.
    """
    kwargs = model_kwargs(dataset)
    ckpt = load_model_checkpoint(checkpoint, fits=kwargs)
    out = Path(out)
    if (out / "model.pt").exists():
        raise RunDirError(f"{out} already holds a run; choose another --out")
    pooling = resolve_pooling(ckpt, pooling, path=str(checkpoint))
    start = time.perf_counter()
    network = build_network(ckpt, path=str(checkpoint), trust=trust).eval()  # the current QK, ReLUs back in
    selector = build_selector(network, pooling)
    before = None
    if ckpt["kind"] == "decoupled" and staleness_samples:
        old = load_decoupled(ckpt, str(checkpoint), trust)
        before = sk_staleness(old.selector, old.estimator, network, validation_images(dataset, staleness_samples))
    record(selector, dataset, indices, store, batch_size, progress)
    decoupled = DecoupledModel(selector, build_estimator(network, pooling))
    out.mkdir(parents=True, exist_ok=True)
    entry = decoupled_entry(ckpt["model"], ckpt["model_kwargs"], network.state_dict(), decoupled)
    save_checkpoint(out / "model.pt", entry)
    summary = {
        "kind": "SKRefresh",
        "source": {"checkpoint_sha256": file_sha256(checkpoint), "store": str(store)},
        "selector_fingerprint": selector.fingerprint,
        "samples": len(indices),
        "sk_staleness_before": before.overall if before is not None else None,
        "sk_staleness_before_per_site": before.per_site if before is not None else None,
        "seconds": time.perf_counter() - start,
        "code_version": code_version(),
    }
    atomic_write_text(out / "refresh.json", json.dumps(summary, indent=2))
    return summary
