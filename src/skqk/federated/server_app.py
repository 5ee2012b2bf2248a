"""The Flower `ServerApp`: ship the SK once, aggregate the QK every round with one of Flower's strategies.

`SharedSK` wraps Flower's FedAvg, FedProx or FedAdam. The wrapped strategy samples the nodes and aggregates
the trained parameters with its own rule; the wrapper adds what sharing one SK needs and what the report
measures: the selector weights go to a node with its first message only, BatchNorm running statistics travel
beside the parameters and are pooled with `skqk.combine`'s mixture rule, every reply is checked before it counts
(`skqk.federated.replies`; a bad one is dropped and logged like a failed client), replies are put in client order
(so the sum is the same in simulation and deployment), a round with fewer than `min_clients` valid replies leaves
the global model as it was, and every message's bytes and every client's metrics are recorded. No client can
stop the run; a run in which no round had enough valid replies ends with an error and saves no model.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from skqk._errors import one_line
from skqk.atomic import atomic_write_text
from skqk.combine import average_states
from skqk.federated.config import FederatedConfig
from skqk.federated.replies import InvalidReply, Reply, one_per_partition, read_reply
from skqk.federated.task import client_model, split_state, trusted_models
from skqk.pipeline.checkpoint import decoupled_entry, network_entry, save_checkpoint

log = logging.getLogger(__name__)


class FederatedError(RuntimeError):
    """A federated run that ran but produced nothing to save."""


def array_bytes(record: ArrayRecord) -> int:
    """Bytes of a record's arrays as Flower serialises them."""
    return sum(len(array.data) for array in record.values())


def read_message(message: Message, sent: dict, statistics: dict, shard_sizes: list[int]) -> Reply:
    """A reply message checked by `read_reply`; a failed client's error is a reason to drop it, like any other."""
    if message.has_error():
        raise InvalidReply(f"it failed: {one_line(message.error.reason, 300)}")  # a client's text: one bounded line
    if not message.has_content():
        raise InvalidReply("it has no content")
    return read_reply(message.metadata.src_node_id, message.content, sent, statistics, shard_sizes)


def checked_message(reply: Reply, message: Message) -> Message:
    """`message` holding what was checked, in the form Flower's strategies aggregate: the parameters as read
    (not as sent) and the metrics; the statistics are pooled by `SharedSK` itself."""
    message.content = RecordDict(
        {
            "arrays": ArrayRecord({name: Array(value) for name, value in reply.arrays.items()}),
            "metrics": MetricRecord(reply.metrics),
        }
    )
    return message


class SharedSK(Strategy):
    """One of Flower's strategies, plus the shared SK, pooled BatchNorm statistics, the check of every reply
    (`skqk.federated.replies`) and the round's accounting."""

    def __init__(
        self,
        inner: Strategy,
        sk: ArrayRecord | None,
        statistics: ArrayRecord,
        batchnorm: set[str],
        min_clients: int,
        shard_sizes: list[int],
    ):
        self.inner = inner
        self.sk = sk
        self.statistics = statistics
        self.batchnorm = batchnorm
        self.min_clients = min_clients
        self.shard_sizes = shard_sizes  # what each partition's num-examples may be at most
        self.has_sk: set[int] = set()  # nodes that hold the SK: they trained a round with it
        self.sent: dict[str, np.ndarray] = {}  # the global arrays of this round, which replies must match
        self.round: dict = {}

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.round = {"bytes_down": 0, "bytes_up": 0, "clients": [], "dropped": [], "kept": True}
        self.sent = {name: array.numpy() for name, array in arrays.items()}
        messages = []
        for message in self.inner.configure_train(server_round, arrays, config, grid):
            node = message.metadata.dst_node_id
            content = RecordDict({**message.content, "statistics": self.statistics})
            if self.sk is not None and node not in self.has_sk:
                content["sk"] = self.sk
            self.round["bytes_down"] += sum(array_bytes(r) for r in content.array_records.values())
            messages.append(Message(content=content, message_type=message.metadata.message_type, dst_node_id=node))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner strategy's aggregate of the replies that pass `read_reply`, one per partition, in partition
        order (so the sum is the same in simulation and deployment). A dropped reply is logged and counted like a
        failed client; with fewer than `min_clients` left (none, at worst) the global model is kept."""
        statistics = {name: array.numpy() for name, array in self.statistics.items()}
        checked, dropped, by_node = [], [], {}
        for message in replies:
            node = message.metadata.src_node_id
            try:
                checked.append(read_message(message, self.sent, statistics, self.shard_sizes))
                by_node[node] = message
            except InvalidReply as e:
                dropped.append((node, str(e)))
        accepted, duplicates = one_per_partition(checked)
        dropped += [(r.node, why) for r, why in duplicates]
        for node, why in dropped:
            log.warning("round %d: the reply of node %d is dropped: %s", server_round, node, why)
        self.round["dropped"] = [{"node": node, "reason": why} for node, why in dropped]
        self.round["failures"] = len(dropped)
        self.has_sk.update(r.node for r in accepted)
        for r in accepted:
            content = by_node[r.node].content
            self.round["bytes_up"] += array_bytes(content["arrays"]) + array_bytes(content["statistics"])
            self.round["clients"].append({**r.metrics, "node": r.node})
        if len(accepted) < self.min_clients:
            log.warning(
                "round %d: %d valid replies of the %d needed; the global model is kept",
                server_round,
                len(accepted),
                self.min_clients,
            )
            self.round["kept"] = False
            return None, None
        arrays, metrics = self.inner.aggregate_train(
            server_round, [checked_message(r, by_node[r.node]) for r in accepted]
        )
        if self.statistics and arrays is not None:
            weights = [r.examples for r in accepted]
            states = [{k: torch.from_numpy(v) for k, v in r.statistics.items()} for r in accepted]
            pooled = average_states(states, [w / sum(weights) for w in weights], self.batchnorm)
            self.statistics = ArrayRecord(pooled)
        return arrays, metrics

    def configure_evaluate(self, server_round, arrays, config, grid) -> Iterable[Message]:
        return []  # the server evaluates the global model itself; clients report their training metrics

    def aggregate_evaluate(self, server_round, replies) -> MetricRecord | None:
        return None


def inner_strategy(cfg: FederatedConfig) -> Strategy:
    """Flower's own strategy for the parameters; every node trains each round, none evaluates."""
    nodes = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": cfg.required_clients,
        "min_available_nodes": cfg.required_clients,
    }
    if cfg.strategy == "fedprox":
        return FedProx(proximal_mu=cfg.proximal_mu, **nodes)
    if cfg.strategy == "fedadam":
        return FedAdam(eta=cfg.server_lr, **nodes)
    return FedAvg(**nodes)


def run_server(
    grid: Grid, cfg: FederatedConfig, start: dict, out: Path, evaluate: Callable, trust: Collection[str] = ()
) -> list[dict]:
    """The whole federated run on `grid`; writes ``metrics.jsonl`` every round and ``model.pt`` at the end.

    Args:
        start: the pre-trained start: ``model``, ``model_kwargs``, ``pooling``, ``sk`` and ``qk`` state dicts,
            ``batchnorm`` layer names, and the checkpoint fields the result keeps (``selector_state``).
        evaluate: (module in eval mode) -> {"val_accuracy", "val_loss"} on the validation subset.
        trust: the import paths `prepare_start` was given (a zoo model needs none). Each node builds only what
            its own operator trusts (`skqk.federated.client_app`).

    Returns:
        One row per round (round 0: the start).
    """
    params, statistics = split_state(start["qk"], start["batchnorm"])
    strategy = SharedSK(
        inner_strategy(cfg),
        ArrayRecord(start["sk"]) if cfg.method == "qk" else None,
        ArrayRecord(statistics),
        start["batchnorm"],
        cfg.required_clients,
        start["shard_sizes"],
    )
    history: list[dict] = []
    clock = {"t": time.perf_counter()}

    def global_model(arrays: ArrayRecord):
        qk = {**arrays.to_torch_state_dict(), **strategy.statistics.to_torch_state_dict()}
        return client_model(start["model"], start["model_kwargs"], cfg.method, start["pooling"], qk, start["sk"], trust)

    def evaluate_round(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = evaluate(global_model(arrays).deployed.eval())
        row = {"round": server_round, **metrics, "seconds": time.perf_counter() - clock["t"]}
        if server_round > 0:
            keys = ("bytes_down", "bytes_up", "failures", "dropped", "kept", "clients")
            row.update({k: strategy.round[k] for k in keys})
        history.append(row)
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        log.info(
            "round %d: val accuracy %.4f, val loss %.4f", server_round, metrics["val_accuracy"], metrics["val_loss"]
        )
        clock["t"] = time.perf_counter()
        return MetricRecord(metrics)

    task = {
        "config": cfg.to_dict(),
        "data": start["data"],  # a node whose data has another fingerprint refuses to train
        "model": start["model"],
        "model_kwargs": start["model_kwargs"],
        "pooling": start["pooling"],
    }
    result = strategy.start(
        grid,
        ArrayRecord(params),
        num_rounds=cfg.rounds,
        timeout=cfg.round_timeout,
        train_config=ConfigRecord({"skqk": json.dumps(task)}),
        evaluate_fn=evaluate_round,
    )
    if not any(row["kept"] for row in history[1:]):
        raise FederatedError(
            f"no round of {cfg.rounds} had {cfg.required_clients} valid replies, so the global model never changed "
            f"and no model.pt is saved; why each reply was dropped is in {out / 'metrics.jsonl'}"
        )
    final = global_model(result.arrays if len(result.arrays) else ArrayRecord(params))
    entry = (
        decoupled_entry(start["model"], start["model_kwargs"], start["sk"], final.deployed)
        if cfg.method == "qk"
        else network_entry(start["model"], start["model_kwargs"], final.trainable)
    )
    save_checkpoint(out / "model.pt", {**entry, "samples": cfg.samples, "config": cfg.to_dict(), "history": history})
    return history


def server_app(run: Callable[[Grid, Context], None]) -> ServerApp:
    app = ServerApp()
    app.main()(run)
    return app


def run_from_run_config(grid: Grid, context: Context) -> None:
    """A deployment's ServerApp: the run is described by the run config (``flwr run --run-config``):
    ``checkpoint``, ``out``, optionally ``data-dir`` / ``cache-dir``, ``trust-model`` (the import path of a user's
    model the checkpoint names, which the run's submitter trusts on this machine; nodes need their own consent),
    and any `FederatedConfig` field with dashes (``clients``, ``rounds``, ``local-epochs``, ``samples``, ...)."""
    from skqk.data import load_dataset
    from skqk.federated.task import prepare_federated_dir, prepare_start
    from skqk.pipeline.loop import evaluate
    from skqk.pipeline.rundir import file_sha256

    given = {str(k).replace("-", "_"): v for k, v in context.run_config.items()}
    if not given.get("checkpoint") or not given.get("out"):
        raise ValueError("the run config must name the start checkpoint and the out folder")
    given["epochs"] = given.pop("local_epochs", given.get("epochs", 1))
    cfg = FederatedConfig.from_dict(given)
    dataset = load_dataset(given.get("data_dir") or None, given.get("cache_dir") or None, progress=False)
    trust = trusted_models(given.get("trust_model"))
    start = prepare_start(given["checkpoint"], cfg, dataset, trust)
    source = {"checkpoint_sha256": file_sha256(given["checkpoint"]), "store": None}
    run_dir = prepare_federated_dir(
        given["out"], cfg, source, start["pooling"] if cfg.method != "traditional" else None
    )
    if cfg.method == "analytic":
        from skqk.federated.analytic import run_analytic_server

        run_analytic_server(
            grid, cfg, start, run_dir, lambda module: evaluate(module, dataset, cfg.eval_samples), dataset, trust
        )
        return
    run_server(grid, cfg, start, run_dir, lambda module: evaluate(module, dataset, cfg.eval_samples), trust)


app = server_app(run_from_run_config)  # what a SuperLink runs (pyproject's [tool.flwr.app.components] serverapp)
