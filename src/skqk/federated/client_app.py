"""The Flower `ClientApp`: re-train the received weights on this client's shard and send them back.

A QK client keeps the SK it received in its first round in the node's context (Flower keeps a node's
`Context.state` across rounds), builds the frozen selector from it, and computes its own samples' activation
patterns: neither its data nor its patterns leave the node. Every round it gets the global QK, trains the
estimator for E epochs and replies with the QK parameters, the BatchNorm statistics and its metrics.

Which shard is the node's comes from its node config (``partition-id``, ``num-partitions``; the simulation
engine sets them, a SuperNode gets them from ``--node-config``), and so does where its data lies
(``data-dir``, ``cache-dir``; default ``$SKQK_DATA`` and the cache) and which user models it may build
(``trust-model``: comma-separated import paths). Everything else arrives in the message, which also names the
run's data fingerprint: a node whose data is other data replies with an error instead of training
(`node_refusal`). A message is data: a node builds a zoo model or an import path its own operator trusts, and
replies with an error, importing nothing, when the server names any other.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from skqk.data import Dataset, load_dataset
from skqk.federated.analytic import client_reply
from skqk.federated.config import FederatedConfig
from skqk.federated.task import (
    batchnorm_of,
    client_model,
    client_shard,
    local_train,
    node_refusal,
    round_seed,
    split_state,
    trusted_models,
)
from skqk.models import UntrustedModelError, resolve


@functools.lru_cache(maxsize=2)
def node_dataset(data_dir: str | None, cache_dir: str | None) -> Dataset:
    """Loaded once per process (a simulated node is a long-lived actor; a SuperNode's app process runs once)."""
    return load_dataset(data_dir, cache_dir, progress=False)


def client_app(data_dir: str | None = None, cache_dir: str | None = None, trust: Collection[str] = ()) -> ClientApp:
    """A ClientApp whose nodes read their data from `data_dir` unless their node config names another, and build
    the user models `trust` and their node config's ``trust-model`` name (the operator's consent, not the
    server's)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        task = json.loads(str(msg.content["config"]["skqk"]))
        cfg = FederatedConfig.from_dict(task["config"])
        trusted = (*trust, *trusted_models(context.node_config.get("trust-model")))
        try:  # first of all: what the server names is built only if this node's operator allowed it
            resolve(task["model"], trusted)
        except UntrustedModelError:
            reason = (
                f"the server asks this node to build {task['model']!r}, an import path (code) its operator did not "
                f"allow: start the SuperNode with --node-config \"trust-model='{task['model']}'\" if you trust it"
            )
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
        dataset = node_dataset(
            context.node_config.get("data-dir", data_dir), context.node_config.get("cache-dir", cache_dir)
        )
        refusal = node_refusal(task, cfg, context.node_config, dataset.fingerprint)
        if refusal is not None:
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=refusal), reply_to=msg)
        if cfg.method == "analytic":
            return Message(content=client_reply(msg, context, task, cfg, dataset, trusted), reply_to=msg)
        partition_id = int(context.node_config["partition-id"])
        if "sk" in msg.content:  # the first round: the shared SK, kept for the rounds to come
            context.state["sk"] = msg.content["sk"]
        sk = context.state["sk"].to_torch_state_dict() if "sk" in context.state else None
        qk = {**msg.content["arrays"].to_torch_state_dict(), **msg.content["statistics"].to_torch_state_dict()}
        shard = client_shard(dataset, cfg, partition_id)
        model = client_model(task["model"], task["model_kwargs"], cfg.method, task["pooling"], qk, sk, trusted)
        server_round = int(msg.content["config"]["server-round"])
        torch.manual_seed(round_seed(cfg.seed, partition_id, server_round))
        mu = float(msg.content["config"].get("proximal-mu", 0.0))
        metrics = local_train(model, dataset, shard, cfg, (server_round - 1) * cfg.epochs, cfg.epochs, mu)
        params, statistics = split_state(
            model.trainable.state_dict(), batchnorm_of(task["model"], task["model_kwargs"], trusted)
        )
        reply = RecordDict(
            {
                "arrays": ArrayRecord(params),
                "statistics": ArrayRecord(statistics),
                "metrics": MetricRecord({**metrics, "partition-id": partition_id}),
            }
        )
        return Message(content=reply, reply_to=msg)

    return app


app = client_app()  # what a SuperNode runs (pyproject's [tool.flwr.app.components] clientapp)
