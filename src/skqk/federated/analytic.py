"""Federated analytic QK (`skqk federated --method analytic`): clients send sums of their samples, not weights.

Every client gets the shared SK and the start's QK once, computes its samples' patterns with that selector and
replies with the ridge statistics of the head (`skqk.analytic.Statistics`) over its shard; the server checks them,
adds them up and solves. Because the statistics add up exactly, the result equals the centralised solve on all
clients' samples whatever the partition — one round. For cross-entropy, every further round sends the current
head θ and gets each client's loss, gradient and Hessian sums at θ: one Newton step per round, exact over the
clients that reply (all of them must: a missing client would change the problem, so its round fails).

A reply is data from another machine: it is validated into `Statistics` (shapes, dtypes, finite values, sample
ranges within the run's N) and must carry the server's own SK, fixed-QK, data and order fingerprints; clients
are not authenticated, so a client can still lie about its sums, as it can about its weights in FedAvg.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from skqk._errors import one_line
from skqk.analytic import (
    Block,
    CrossEntropySums,
    Statistics,
    StatisticsError,
    check_dense_hessian,
    find_block,
    newton,
    solve_ridge,
)
from skqk.analytic.run import Problem, cross_entropy_sums, statistics
from skqk.analytic.stats import aggregate
from skqk.atomic import atomic_write_text
from skqk.data import Dataset, subset_fingerprint, subset_indices
from skqk.decoupled import DecoupledModel
from skqk.federated.config import FederatedConfig
from skqk.federated.task import client_shard, network_checkpoint
from skqk.pipeline.checkpoint import decoupled_entry, load_estimator, load_selector, save_checkpoint

log = logging.getLogger(__name__)
BATCH = 1024  # samples per forward pass on a client (memory only)


def decoupled_problem(
    model: str, model_kwargs: dict, sk: dict, qk: dict, dataset: Dataset, cfg: FederatedConfig, trust=()
) -> Problem:
    """The selector/estimator pair with frozen pooling built from shipped weights, with the run's sample order; a
    model named by import path is built only if `trust` (this machine's own choice) names it."""
    selector = load_selector(network_checkpoint(model, model_kwargs, sk), "frozen", "the message", trust)
    estimator = load_estimator(network_checkpoint(model, model_kwargs, qk), "frozen", "the message", trust).eval()
    order = subset_indices(dataset.train.labels, len(dataset.train.labels), cfg.subset_seed, cfg.balanced)
    subset = subset_fingerprint(dataset.train.labels, cfg.subset_seed, cfg.balanced)
    ckpt = network_checkpoint(model, model_kwargs, sk)
    return Problem(ckpt, DecoupledModel(selector, estimator), None, dataset, order, subset)


def shard_positions(problem: Problem, cfg: FederatedConfig, partition_id: int) -> torch.Tensor:
    """Where the client's samples stand in the run's order: its statistics' sample ranges."""
    position = torch.empty_like(problem.order)
    position[problem.order] = torch.arange(len(problem.order))
    return position[client_shard(problem.dataset, cfg, partition_id)].sort().values


# -- messages ------------------------------------------------------------------------------------------------
STATISTICS_ARRAYS = ("gram", "moment", "target_sq", "class_counts", "penalised")


def statistics_content(stats: Statistics, partition_id: int) -> RecordDict:
    state = stats.state()
    meta = {k: state[k] for k in ("format", "version", "source", "rows", "samples", "ranges")}
    return RecordDict(
        {
            "statistics": ArrayRecord({k: state[k] for k in STATISTICS_ARRAYS}),
            "meta": ConfigRecord({"skqk": json.dumps(meta)}),
            "metrics": MetricRecord({"partition-id": partition_id, "num-examples": stats.samples}),
        }
    )


def read_statistics(content, samples: int, name: str) -> Statistics:
    """A client's statistics validated as data; anything malformed is a `StatisticsError`."""
    try:
        meta = json.loads(str(content["meta"]["skqk"]))
        arrays = content["statistics"].to_torch_state_dict()
    except Exception as e:
        raise StatisticsError(f"{name}: its reply holds no statistics ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise StatisticsError(f"{name}: its reply holds no statistics")
    stats = Statistics.from_state({**meta, **arrays}, name)
    if not all(torch.isfinite(t).all() for t in (stats.gram, stats.moment, stats.target_sq)):
        raise StatisticsError(f"{name}: its statistics are not finite")
    if stats.ranges and (stats.ranges[0][0] < 0 or stats.ranges[-1][1] > samples) or (stats.class_counts < 0).any():
        raise StatisticsError(f"{name}: its sample ranges or class counts lie outside the run's {samples} samples")
    return stats


def sums_content(sums: CrossEntropySums) -> RecordDict:
    flat = {"loss": sums.loss.reshape(1), "gradient": sums.gradient, "hessian": sums.hessian}
    return RecordDict({"sums": ArrayRecord(flat), "metrics": MetricRecord({"num-examples": sums.samples})})


def read_sums(content, size: int, name: str) -> CrossEntropySums:
    try:
        arrays = content["sums"].to_torch_state_dict()
        sums = CrossEntropySums(
            arrays["loss"].double()[0],
            arrays["gradient"].double(),
            arrays["hessian"].double(),
            int(content["metrics"]["num-examples"]),
        )
    except Exception as e:
        raise StatisticsError(f"{name}: its reply holds no cross-entropy sums ({type(e).__name__})") from None
    if sums.gradient.shape != (size,) or sums.hessian.shape != (size, size):
        raise StatisticsError(f"{name}: its sums have the wrong shapes")
    if not all(torch.isfinite(t).all() for t in (sums.loss, sums.gradient, sums.hessian)):
        raise StatisticsError(f"{name}: its sums are not finite")
    return sums


# -- client --------------------------------------------------------------------------------------------------
def client_reply(msg: Message, context, task: dict, cfg: FederatedConfig, dataset: Dataset, trust) -> RecordDict:
    """What an analytic client answers: its statistics (first round), or its cross-entropy sums at the θ sent."""
    for key in ("sk", "qk"):
        if key in msg.content:  # the first round: kept for the Newton rounds
            context.state[key] = msg.content[key]
    sk, qk = (context.state[k].to_torch_state_dict() for k in ("sk", "qk"))
    problem = decoupled_problem(task["model"], task["model_kwargs"], sk, qk, dataset, cfg, trust)
    block = find_block(problem.estimator)
    partition_id = int(context.node_config["partition-id"])
    positions = shard_positions(problem, cfg, partition_id)
    if "theta" not in msg.content:
        return statistics_content(statistics(problem, block, positions, BATCH), partition_id)
    theta = msg.content["theta"].to_torch_state_dict()["theta"].double()
    total = None
    for part in positions.split(BATCH):
        idx = problem.order[part]
        x = dataset.normalize(dataset.train.images[idx])
        design, _ = block.design(problem.estimator, x, problem.patterns(idx, x))
        s = cross_entropy_sums(design, dataset.train.labels[idx], theta)
        total = s if total is None else total + s
    return sums_content(total)


# -- server --------------------------------------------------------------------------------------------------
def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes[:count]
        if time.monotonic() > deadline:
            raise StatisticsError(f"{len(nodes)} of the {count} clients connected within {timeout:g} s")
        time.sleep(0.5)


def exchange(grid: Grid, contents: dict[int, RecordDict], timeout: float) -> tuple[dict[int, Message], int]:
    """Send each node its content as a train message; the replies by node and the bytes sent."""
    messages = [Message(content=c, dst_node_id=node, message_type="train") for node, c in contents.items()]
    down = sum(len(a.data) for c in contents.values() for r in c.array_records.values() for a in r.values())
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(messages, timeout=timeout)}
    for node in contents:
        if node not in replies or replies[node].has_error():
            reason = "no reply" if node not in replies else one_line(replies[node].error.reason, 300)
            raise StatisticsError(f"client node {node} failed ({reason}): an exact solve needs every client's sums")
    return replies, down


def upload_bytes(message: Message) -> int:
    return sum(len(a.data) for r in message.content.array_records.values() for a in r.values())


def run_analytic_server(
    grid: Grid, cfg: FederatedConfig, start: dict, out: Path, evaluate: Callable, dataset: Dataset, trust=()
) -> list[dict]:
    """One round of statistics (ridge), then for cross-entropy one round per Newton pass; writes metrics.jsonl
    every round, and model.pt and stats.pt (the summed statistics) at the end."""
    problem = decoupled_problem(start["model"], start["model_kwargs"], start["sk"], start["qk"], dataset, cfg, trust)
    block = find_block(problem.estimator)
    if cfg.loss == "ce":
        check_dense_hessian(block.theta.numel())  # clients send the Hessian itself
    expected = problem.source(block, "mse")
    nodes = wait_for_nodes(grid, cfg.clients, cfg.round_timeout)
    task = json.dumps({k: start[k] for k in ("model", "model_kwargs", "pooling", "data")} | {"config": cfg.to_dict()})
    history: list[dict] = []
    clock = {"t": time.perf_counter()}

    def record(round_: int, replies: dict[int, Message], down: int) -> None:
        clients = [{"node": n, "bytes_up": upload_bytes(m), **dict(m.content["metrics"])} for n, m in replies.items()]
        row = {"round": round_, **evaluate(problem.decoupled.eval()), "bytes_down": down}
        row |= {"bytes_up": sum(c["bytes_up"] for c in clients), "clients": clients}
        history.append({**row, "seconds": time.perf_counter() - clock["t"]})
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        log.info("round %d: val accuracy %.4f", round_, row["val_accuracy"])
        clock["t"] = time.perf_counter()

    record(0, {}, 0)  # the start
    first = {
        "config": ConfigRecord({"skqk": task}),
        "sk": ArrayRecord(start["sk"]),
        "qk": ArrayRecord(start["qk"]),
    }
    replies, down = exchange(grid, {n: RecordDict(first) for n in nodes}, cfg.round_timeout)
    parts = [read_statistics(replies[n].content, cfg.samples, f"client node {n}") for n in nodes]
    stats = aggregate(parts, expected)
    ridge = solve_ridge(stats, cfg.ridge)
    block.assign(ridge.theta)
    solution = {"ridge": ridge.record()}
    record(1, replies, down)
    if cfg.loss == "ce":
        solution["cross_entropy"] = federated_newton(grid, cfg, nodes, task, block, ridge, record).record()
    analytic = {"block": block.name, "loss": cfg.loss, "samples": stats.samples, **solution}
    stats.save(out / "stats.pt", {"config": {"block": block.name, "ridge": cfg.ridge}, "analytic": analytic})
    entry = decoupled_entry(start["model"], start["model_kwargs"], start["sk"], problem.decoupled)
    save_checkpoint(
        out / "model.pt",
        {**entry, "samples": stats.samples, "config": cfg.to_dict(), "analytic": analytic, "history": history},
    )
    return history


def federated_newton(grid, cfg, nodes: Sequence[int], task: str, block: Block, ridge, record):
    """Newton on the summed cross-entropy: each evaluation of the sums is one round to every client."""
    rounds = {"n": 1}
    size = ridge.theta.numel()

    def sums(theta: torch.Tensor) -> CrossEntropySums:
        rounds["n"] += 1
        content = {"config": ConfigRecord({"skqk": task}), "theta": ArrayRecord({"theta": theta})}
        replies, down = exchange(grid, {n: RecordDict(content) for n in nodes}, cfg.round_timeout)
        parts = [read_sums(replies[n].content, size, f"client node {n}") for n in nodes]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        block.assign(theta)
        record(rounds["n"], replies, down)
        return total

    result = newton(sums, ridge.theta, block.penalised, ridge.lam)
    block.assign(result.theta)
    return result
