"""What the server accepts from a client: a reply is data from another machine, checked before it is aggregated.

A reply is aggregated only if it has the three records an skqk client sends (``arrays``, ``statistics``,
``metrics``) and nothing else, and

- every array has the name, shape and dtype of the global model's (no broadcasting a (1,) bias into (120,)),
  is finite, and is at most `GROWTH_BOUND` times (1 + the global array's largest magnitude) in magnitude;
  running variances are non-negative;
- its metrics are the client's four, finite numbers; ``partition-id`` is one of the run's partitions and
  ``num-examples`` an integer in [1, that partition's size], the size the server computes itself from the seeds;
- no other reply of the round claims its partition or comes from its node (then all of those are dropped: which
  one is genuine cannot be told).

Why `GROWTH_BOUND` = 1000: an honest reply is the global array moved by one round of local SGD, and SGD
(learning rate η, momentum μ, S steps) moves a weight by at most η S max|g| / (1 − μ). Local training already
refuses a non-finite loss, but nothing bounds the gradient g, so the bound cannot be derived from the settings;
instead it is set where no training that is still learning can reach: a weight a thousand times larger than the
largest weight of its layer (plus one, for layers that start at zero) is divergence, and in the tests' runs honest
replies stay within 2× (`tests/federated/test_simulation.py`). The bound also keeps FedAdam's squared updates far
inside float32's range ((1000 (1 + |w|))² ≪ 3.4e38 for any |w| < 1e15).

The module needs only numpy: an array record is any mapping whose values have ``.numpy()`` (Flower's `Array`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

GROWTH_BOUND = 1000.0
RECORDS = ("arrays", "statistics", "metrics")
METRICS = ("num-examples", "partition-id", "train-accuracy", "train-loss")


class InvalidReply(ValueError):
    """A client's reply the server cannot aggregate; the message says what is wrong with it."""


@dataclass
class Reply:
    """A checked reply: what is aggregated is what was checked (the arrays as read, not as the client sent)."""

    node: int
    partition: int
    examples: int
    arrays: dict[str, np.ndarray]
    statistics: dict[str, np.ndarray]
    metrics: dict[str, int | float]


def read_reply(
    node: int,
    content: Mapping,
    arrays: Mapping[str, np.ndarray],
    statistics: Mapping[str, np.ndarray],
    shard_sizes: Sequence[int],
) -> Reply:
    """`content` of node `node`'s reply, checked against the global `arrays` and `statistics` it was sent and
    the partitions' sizes; raises `InvalidReply` naming the first thing wrong."""
    if sorted(content.keys()) != sorted(RECORDS):
        raise InvalidReply(f"its records are {sorted(content.keys())}, not {list(RECORDS)}")
    metrics = dict(content["metrics"])
    partition, examples = check_metrics(metrics, shard_sizes)
    return Reply(
        node,
        partition,
        examples,
        check_arrays(content["arrays"], arrays, "arrays"),
        check_arrays(content["statistics"], statistics, "statistics"),
        metrics,
    )


def check_metrics(metrics: Mapping, shard_sizes: Sequence[int]) -> tuple[int, int]:
    """(partition id, number of examples) of a reply's metrics, if they are what a client sends."""
    if sorted(metrics) != list(METRICS):
        raise InvalidReply(f"its metrics are {sorted(metrics)}, not {list(METRICS)}")
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidReply(f"its {key} is {value!r}, not a finite number")
    partition, examples = metrics["partition-id"], metrics["num-examples"]
    if not isinstance(partition, int) or not 0 <= partition < len(shard_sizes):
        raise InvalidReply(f"its partition-id {partition!r} is not one of the run's {len(shard_sizes)} partitions")
    if not isinstance(examples, int) or not 1 <= examples <= shard_sizes[partition]:
        raise InvalidReply(
            f"its num-examples {examples!r} is not an integer in [1, {shard_sizes[partition]}] "
            f"(partition {partition}'s size)"
        )
    return partition, examples


def check_arrays(record: Mapping, expected: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """The arrays of `record` as numpy arrays, if they match `expected` one for one (see the module docstring)."""
    try:
        received = {name: array.numpy() for name, array in record.items()}
    except Exception as e:  # a malformed record can fail in many ways inside numpy's reader; all mean "refuse"
        raise InvalidReply(f"its {what} cannot be read ({type(e).__name__})") from None
    if received.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - received.keys()), sorted(received.keys() - expected.keys())
        raise InvalidReply(f"its {what} lack {missing} and add {extra}")
    for name, value in received.items():
        check_array(name, value, expected[name])
    return received


def check_array(name: str, value: np.ndarray, expected: np.ndarray) -> None:
    if not isinstance(value, np.ndarray) or value.shape != expected.shape or value.dtype != expected.dtype:
        got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise InvalidReply(f"{name} is {got}, the global model's is {expected.dtype} {expected.shape}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise InvalidReply(f"{name} holds NaN or infinite values")
    bound = GROWTH_BOUND * (1 + largest_magnitude(expected))
    if largest_magnitude(value) > bound:
        raise InvalidReply(f"{name} reaches {largest_magnitude(value):.3g}, over the bound {bound:.3g}")
    if name.endswith(".running_var") and value.size and value.min() < 0:
        raise InvalidReply(f"{name} holds a negative variance")


def largest_magnitude(array: np.ndarray) -> float:
    """max |x| without a copy of the array (and without int64's overflow of abs(min))."""
    return max(abs(float(array.max())), abs(float(array.min()))) if array.size else 0.0


def one_per_partition(replies: list[Reply]) -> tuple[list[Reply], list[tuple[Reply, str]]]:
    """(the replies whose partition and node no other reply shares, in partition order; the others with why)."""
    partitions = Counter(r.partition for r in replies)
    nodes = Counter(r.node for r in replies)
    kept, dropped = [], []
    for r in replies:
        if partitions[r.partition] > 1:
            dropped.append((r, f"{partitions[r.partition]} replies claim partition {r.partition}"))
        elif nodes[r.node] > 1:
            dropped.append((r, f"node {r.node} replied {nodes[r.node]} times"))
        else:
            kept.append(r)
    return sorted(kept, key=lambda r: r.partition), dropped
