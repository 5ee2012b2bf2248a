"""`skqk federated`: one federated run on Flower's simulation engine (K virtual SuperNodes on this machine).

The ServerApp and ClientApp are the ones a real deployment runs (`docs/federated.md`); the simulation engine
(Ray) runs each virtual node's ClientApp in a worker process, `threads` of them at a time, with every Ray port on
127.0.0.1 (`bind_ray_to_loopback`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path

from skqk.data import load_dataset
from skqk.data.loading import DATA_ENV
from skqk.federated.config import FederatedConfig
from skqk.federated.task import prepare_federated_dir, prepare_start
from skqk.pipeline.loop import evaluate
from skqk.pipeline.rundir import file_sha256

# Ray's single-machine mode (its default on macOS and Windows): the node's address is 127.0.0.1, so its GCS, raylet,
# object manager and runtime-env agent, which take connections without authentication, listen on loopback only.
RAY_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def bind_ray_to_loopback() -> None:
    """Make the Ray instance the simulation starts listen on 127.0.0.1, not on the machine's LAN address (Ray's
    default on Linux). Ray reads the switch when it is imported, and its workers inherit it from the environment."""
    os.environ.update(RAY_LOOPBACK)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and constants.ENABLE_RAY_CLUSTER:
        raise RuntimeError(
            "Ray was imported before the federated simulation could bind it to 127.0.0.1; set "
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing it"
        )


@contextlib.contextmanager
def engine_output(progress: bool) -> Iterator[None]:
    """Flower's and Ray's log lines and warnings: their INFO progress with `progress`, else errors only (``-q``: their
    deprecation and start-up warnings say nothing about the run)."""
    levels = {name: logging.getLogger(name).level for name in ("flwr", "ray")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.INFO if progress else logging.ERROR)
    try:
        with warnings.catch_warnings():
            if not progress:
                warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def backend_config(threads: int, progress: bool) -> dict:
    """Flower's Ray backend: `threads` single-threaded workers, no dashboard, no GPU."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1 (simulated clients training at a time), got {threads}")
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": threads, "num_gpus": 0, "include_dashboard": False, "log_to_driver": progress},
    }


class RunStopped(RuntimeError):
    """The simulation ended (Ctrl-C, or its engine died) while the ServerApp was still using the grid."""


def stop_with(grid, stop: threading.Event) -> None:
    """Make the ServerApp's `grid` raise `RunStopped` at its next use once `stop` is set. Flower's in-memory grid
    waits for replies (polling `pull_messages`) until the round timeout, and for nodes (`get_node_ids`) without
    end, in the ServerApp's thread, which the process waits for before it exits: after a Ctrl-C it hung."""
    for name in ("get_node_ids", "push_messages", "pull_messages"):
        setattr(grid, name, unless_stopped(getattr(grid, name), stop))


def unless_stopped(method, stop: threading.Event):
    def checked(*args, **kwargs):
        if stop.is_set():
            raise RunStopped("the federated simulation stopped")
        return method(*args, **kwargs)

    return checked


def run_federated(
    cfg: FederatedConfig,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    threads: int = 1,
    progress: bool = True,
    trust: Collection[str] = (),
) -> list[dict]:
    """Run `cfg.rounds` rounds with `cfg.clients` simulated clients from `checkpoint`; write the run folder `out`
    (config.json, metrics.jsonl with one row per round, model.pt: the global model). A run does not resume: an
    interrupted one (no model.pt) is started over in the same folder (`prepare_federated_dir`). A model named by
    import path is built, by the server and by every simulated node (all this machine's), only if `trust` names it.

    Returns:
        One row per round: validation accuracy and loss of the global model, bytes down and up, seconds, and
        each client's local training metrics (round 0: the start).
    """
    backend = backend_config(threads, progress)  # refused before any data is read
    bind_ray_to_loopback()
    from flwr.simulation import run_simulation

    from skqk.federated.client_app import client_app
    from skqk.federated.server_app import run_server, server_app

    data_dir = str(data_dir or os.environ.get(DATA_ENV) or "") or None  # the worker processes get it explicitly
    cache_dir = str(cache_dir) if cache_dir else None
    dataset = load_dataset(data_dir, cache_dir, progress=progress)
    start = prepare_start(checkpoint, cfg, dataset, trust)  # every refusal comes before the run folder exists
    source = {"checkpoint_sha256": file_sha256(checkpoint), "store": None}
    run_dir = prepare_federated_dir(out, cfg, source, start["pooling"] if cfg.method == "qk" else None)
    outcome: dict = {}
    stop = threading.Event()

    def main(grid, context) -> None:
        stop_with(grid, stop)
        try:
            outcome["history"] = run_server(
                grid, cfg, start, Path(run_dir), lambda module: evaluate(module, dataset, cfg.eval_samples), trust
            )
        except BaseException as e:  # the engine only logs a ServerApp's error; re-raised below
            outcome["error"] = e
            raise

    try:
        with engine_output(progress):
            run_simulation(
                server_app(main),
                client_app(data_dir, cache_dir, tuple(trust)),
                num_supernodes=cfg.clients,
                backend_config=backend,
            )
    finally:
        stop.set()  # after a Ctrl-C or an engine crash the ServerApp's thread ends too, so the process can exit
    if "error" in outcome:
        raise outcome["error"]
    if "history" not in outcome:
        raise RuntimeError("the Flower simulation ended without a result (its log above says why)")
    return outcome["history"]
