"""What federated clients and the server compute, without Flower: the modules built from the weights shipped,
the split of a state into parameters and BatchNorm statistics, one client's local training, and its shard.

A QK client holds the shared SK (the selector's weights, shipped once) and the QK it receives each round; it
computes its samples' activation patterns itself, with that selector, so its data never leaves it. A
traditional client holds the whole network and trains it with its ReLUs live (the FedAvg baseline).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skqk.combine import batchnorm_layers
from skqk.data import Dataset, batches, epoch_order, subset_indices
from skqk.decoupled import DecoupledModel
from skqk.federated.config import FederatedConfig
from skqk.federated.partition import partition
from skqk.pipeline.checkpoint import (
    CheckpointError,
    build_network,
    load_estimator,
    load_model_checkpoint,
    load_selector,
    model_kwargs,
    resolve_pooling,
)
from skqk.pipeline.loop import make_optimizer, sgd_step
from skqk.pipeline.rundir import RunDirError, prepare_run_dir

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class ClientModel:
    """What a client trains (`trainable`), how a batch goes through it (`forward`), and what is evaluated."""

    trainable: nn.Module
    forward: object  # (images) -> logits
    deployed: nn.Module


def network_checkpoint(model: str, model_kwargs: dict, state: dict[str, Tensor]) -> dict:
    """Weights received in a message, in the form the pipeline's builders take (a network checkpoint)."""
    return {"kind": "network", "model": model, "model_kwargs": model_kwargs, "state_dict": state}


def client_model(
    model: str,
    model_kwargs: dict,
    method: str,
    pooling: str,
    qk: dict[str, Tensor],
    sk: dict[str, Tensor] | None,
    trust: Collection[str] = (),
) -> ClientModel:
    """The module a client trains: an estimator gated by the frozen selector built from `sk` (method "qk"),
    or the whole network (method "traditional", `sk` unused). `model` comes in a message: an import path is
    built only if `trust` (this machine's own choice) names it."""
    if method == "traditional":
        net = build_network(network_checkpoint(model, model_kwargs, qk), path="the message", trust=trust)
        return ClientModel(net, net, net)
    if sk is None:
        raise ValueError("a QK client needs the SK (the selector weights) before its first round")
    selector = load_selector(network_checkpoint(model, model_kwargs, sk), pooling, "the message", trust)
    estimator = load_estimator(network_checkpoint(model, model_kwargs, qk), pooling, "the message", trust)
    return ClientModel(estimator.net, lambda x: estimator(x, selector(x)), DecoupledModel(selector, estimator))


def split_state(state: dict[str, Tensor], batchnorm: set[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(parameters, BatchNorm running statistics): Flower's strategy aggregates the first, `skqk.combine`'s
    mixture rule pools the second (an average of variances alone would drop the spread between clients)."""
    statistics = {f"{layer}.{name}" for layer in batchnorm for name in STATISTICS}
    params = {k: v for k, v in state.items() if k not in statistics}
    return params, {k: v for k, v in state.items() if k in statistics}


def trusted_models(setting: object) -> tuple[str, ...]:
    """The import paths a node config's (or a deployment run config's) ``trust-model`` names: comma-separated."""
    return tuple(path.strip() for path in str(setting or "").split(",") if path.strip())


def batchnorm_of(model: str, model_kwargs: dict, trust: Collection[str] = ()) -> set[str]:
    """The BatchNorm layers of the network a message names (built only if `trust` allows, as `client_model`)."""
    return batchnorm_layers(build_network(network_checkpoint(model, model_kwargs, {}), None, "the message", trust))


def client_shard(dataset: Dataset, cfg: FederatedConfig, partition_id: int) -> Tensor:
    """Client `partition_id`'s sample indices: its part of the first N samples, split as `cfg` says. Every client
    computes the same split from the seeds, so no index list is ever sent."""
    if not 0 <= partition_id < cfg.clients:
        raise ValueError(f"partition-id {partition_id} is not one of the {cfg.clients} clients")
    indices = subset_indices(dataset.train.labels, cfg.samples, cfg.subset_seed, cfg.balanced)
    shards = partition(indices, dataset.train.labels, cfg.clients, cfg.partition, cfg.alpha, cfg.partition_seed)
    return shards[partition_id]


def node_refusal(task: dict, cfg: FederatedConfig, node_config: Mapping, fingerprint: str) -> str | None:
    """Why a node must not train the round `task` describes, or None. Its shard is drawn from its own data by the
    run's seeds, so it must be one of the run's K nodes and hold the run's data (the same content fingerprint):
    with other data, or other data in another order, it would train on other samples than the run's and reply
    as if nothing were wrong."""
    if int(node_config["num-partitions"]) != cfg.clients:
        return f"this node is one of {node_config['num-partitions']} partitions, the run has {cfg.clients}"
    if task.get("data") != fingerprint:
        return (
            f"this node's data (fingerprint {fingerprint[:12]}...) is not the run's ({str(task.get('data'))[:12]}...); "
            "point its node config's data-dir at the run's dataset"
        )
    return None


def round_seed(seed: int, partition_id: int, server_round: int) -> int:
    """Seed of a client's dropout in one round: the same in simulation and deployment, different per client."""
    digest = hashlib.blake2b(f"{seed}:{partition_id}:{server_round}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def local_train(
    model: ClientModel,
    dataset: Dataset,
    shard: Tensor,
    cfg: FederatedConfig,
    first_epoch: int,
    epochs: int,
    proximal_mu: float = 0.0,
) -> dict[str, float]:
    """SGD on the client's shard for `epochs` epochs, the `first_epoch`-th epoch of the run first.

    The batch order of epoch e is `epoch_order(shard, cfg.seed, e)`, the same for a QK and a traditional
    client, in a federated run and in the merge-once baseline. A fresh optimiser per call (FedAvg's clients
    keep no momentum across rounds). With `proximal_mu` (FedProx), ``mu/2 ||w - w_received||²`` is added.

    Returns:
        Mean training loss and accuracy over the epochs, and ``num-examples`` (the shard's size).
    """
    params = list(model.trainable.parameters())
    received = [p.detach().clone() for p in params] if proximal_mu else []
    opt = make_optimizer(model.trainable, cfg)
    model.trainable.train()
    loss_sum, correct = 0.0, 0
    for epoch in range(first_epoch, first_epoch + epochs):
        for x, y, _ in batches(dataset.train, dataset, epoch_order(shard, cfg.seed, epoch), cfg.batch_size):
            logits = model.forward(x)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise RuntimeError(f"local training diverged (loss {loss.item()}); try a lower --lr (now {cfg.lr})")
            sgd_step(opt, loss + proximal_term(params, received, proximal_mu) if proximal_mu else loss)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
    model.trainable.eval()
    seen = len(shard) * epochs
    return {"num-examples": len(shard), "train-loss": loss_sum / seen, "train-accuracy": correct / seen}


def proximal_term(params: list[Tensor], received: list[Tensor], mu: float) -> Tensor:
    return mu / 2 * sum((p - r).square().sum() for p, r in zip(params, received))


def prepare_federated_dir(out, cfg: FederatedConfig, source: dict, pooling: str | None) -> Path:
    """The run folder of a federated run, which does not resume: a folder holding a finished run (model.pt) is
    refused; one holding an interrupted run (config.json and metrics.jsonl, no model.pt) is started over, its rows
    removed, so the command that was interrupted can simply be run again."""
    if (Path(out) / "model.pt").exists():
        raise RunDirError(f"{out} already holds a finished federated run (model.pt); choose another --out")
    run_dir = prepare_run_dir(out, False, cfg, source, pooling)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return run_dir


def prepare_start(checkpoint, cfg: FederatedConfig, dataset: Dataset, trust: Collection[str] = ()) -> dict:
    """The pre-trained start of a run, checked before anything starts: its SK and QK state dicts, pooling and
    BatchNorm layers, every client's shard size (drawing each shard checks it can be drawn) and the data's
    fingerprint, which every node compares with its own data's before it trains.

    A network checkpoint (Phase 1) is the usual start: its weights are both the SK and the first QK. A QK
    checkpoint continues with its own selector (method "qk" only). A model named by import path is built only
    if `trust` names it.
    """
    ckpt = load_model_checkpoint(checkpoint, fits=model_kwargs(dataset))
    if ckpt["kind"] == "decoupled" and cfg.method == "traditional":
        raise CheckpointError(
            f"{checkpoint} is a QK (decoupled) checkpoint; traditional federated training needs a network one"
        )
    frozen = "frozen" if cfg.method == "analytic" else None  # the analytic solve needs the frozen switches
    pooling = resolve_pooling(ckpt, frozen, path=str(checkpoint))
    load_selector(ckpt, pooling, str(checkpoint), trust)  # refuses weights of another architecture, or a corrupt SK
    sk = ckpt["selector_state"] if ckpt["kind"] == "decoupled" else ckpt["state_dict"]
    shard_sizes = [len(client_shard(dataset, cfg, client)) for client in range(cfg.clients)]
    return {
        "model": ckpt["model"],
        "model_kwargs": ckpt["model_kwargs"],
        "pooling": pooling,
        "sk": sk,
        "qk": ckpt["state_dict"],
        "batchnorm": batchnorm_layers(build_network(ckpt, None, str(checkpoint), trust)),
        "shard_sizes": shard_sizes,
        "data": dataset.fingerprint,
    }
