"""The server's check of a client's reply, as pure functions on numpy arrays: what an honest client sends passes,
and each kind of bad reply a hostile or broken client can send is refused with its reason."""

import math

import numpy as np
import pytest

from skqk.federated.replies import GROWTH_BOUND, InvalidReply, Reply, one_per_partition, read_reply

SHARDS = [30, 10]


class Sent:
    """An array as a record holds it (Flower's `Array` has `.numpy()`)."""

    def __init__(self, value):
        self.value = value

    def numpy(self):
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


def global_arrays():
    return {"fc.weight": np.full((120, 4), 0.5, np.float32), "fc.bias": np.zeros(120, np.float32)}


def global_statistics():
    return {
        "bn.running_mean": np.zeros(3, np.float32),
        "bn.running_var": np.ones(3, np.float32),
        "bn.num_batches_tracked": np.array(40, np.int64),
    }


def content(arrays=None, statistics=None, **metrics):
    arrays = global_arrays() if arrays is None else arrays
    statistics = global_statistics() if statistics is None else statistics
    return {
        "arrays": {k: Sent(v) for k, v in arrays.items()},
        "statistics": {k: Sent(v) for k, v in statistics.items()},
        "metrics": {"num-examples": 30, "partition-id": 0, "train-loss": 1.2, "train-accuracy": 0.4, **metrics},
    }


def read(c) -> Reply:
    return read_reply(7, c, global_arrays(), global_statistics(), SHARDS)


def with_array(name, value):
    return {**global_arrays(), name: value}


def test_an_honest_reply_is_read_as_sent():
    trained = with_array("fc.weight", np.full((120, 4), -3.0, np.float32))
    reply = read(content(trained))
    assert (reply.node, reply.partition, reply.examples) == (7, 0, 30)
    assert np.array_equal(reply.arrays["fc.weight"], trained["fc.weight"])
    assert reply.statistics.keys() == global_statistics().keys()


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        (with_array("fc.bias", np.zeros(1, np.float32)), "fc.bias is float32 (1,)"),  # would broadcast into (120,)
        (with_array("fc.bias", np.zeros((120, 1), np.float32)), "fc.bias is float32 (120, 1)"),
        (with_array("fc.bias", np.zeros(120, np.float64)), "fc.bias is float64"),
        (with_array("fc.bias", np.zeros(120, ">f4")), "fc.bias is >f4"),  # another byte order
        (with_array("fc.bias", np.full(120, np.nan, np.float32)), "NaN or infinite"),
        (with_array("fc.bias", np.full(120, np.inf, np.float32)), "NaN or infinite"),
        (with_array("fc.weight", np.full((120, 4), 0.5e30, np.float32)), "over the bound"),  # the global ×1e30
        ({"fc.weight": global_arrays()["fc.weight"]}, "lack ['fc.bias']"),
        ({**global_arrays(), "extra": np.zeros(1, np.float32)}, "add ['extra']"),
        ({**global_arrays(), "fc.bias": ValueError("bad npy header")}, "cannot be read (ValueError)"),
    ],
)
def test_arrays_that_do_not_match_the_global_model_are_refused(arrays, fragment):
    with pytest.raises(InvalidReply) as refused:
        read(content(arrays))
    assert fragment in str(refused.value)


def test_the_magnitude_bound_is_relative_to_the_global_array():
    """max |w| ≤ GROWTH_BOUND (1 + max |w_global|): 1500 for a layer whose largest weight is 0.5."""
    bound = GROWTH_BOUND * 1.5
    read(content(with_array("fc.weight", np.full((120, 4), np.float32(bound) * (1 - 1e-6), np.float32))))
    with pytest.raises(InvalidReply, match="over the bound"):
        read(content(with_array("fc.weight", np.full((120, 4), -bound * 1.001, np.float32))))
    read(content(with_array("fc.bias", np.full(120, 999.0, np.float32))))  # a bias starting at zero may move
    with pytest.raises(InvalidReply, match="over the bound"):
        read(content(with_array("fc.bias", np.full(120, 1001.0, np.float32))))


def test_statistics_are_checked_like_parameters_and_variances_are_non_negative():
    with pytest.raises(InvalidReply, match="negative variance"):
        read(content(statistics={**global_statistics(), "bn.running_var": np.array([1, -0.1, 1], np.float32)}))
    with pytest.raises(InvalidReply, match="bn.num_batches_tracked is int32"):
        read(content(statistics={**global_statistics(), "bn.num_batches_tracked": np.array(40, np.int32)}))
    with pytest.raises(InvalidReply, match="over the bound"):
        read(content(statistics={**global_statistics(), "bn.num_batches_tracked": np.array(2**62, np.int64)}))


@pytest.mark.parametrize(
    "metrics, fragment",
    [
        ({"num-examples": 10**12}, "num-examples 1000000000000 is not an integer in [1, 30]"),
        ({"num-examples": 1e12}, "not an integer"),
        ({"num-examples": -50}, "not an integer in [1, 30]"),
        ({"num-examples": 0}, "not an integer in [1, 30]"),
        ({"num-examples": 30.0}, "not an integer"),
        ({"num-examples": True}, "not a finite number"),
        ({"partition-id": 1}, "not an integer in [1, 10] (partition 1's size)"),  # 30 examples, partition of 10
        ({"partition-id": 2}, "not one of the run's 2 partitions"),
        ({"partition-id": -1}, "not one of the run's 2 partitions"),
        ({"train-loss": math.nan}, "train-loss is nan"),
        ({"train-accuracy": math.inf}, "train-accuracy is inf"),
        ({"train-loss": [1.0]}, "not a finite number"),
        ({"extra": 1}, "its metrics are"),
    ],
)
def test_metrics_a_client_cannot_have_are_refused(metrics, fragment):
    with pytest.raises(InvalidReply) as refused:
        read(content(**metrics))
    assert fragment in str(refused.value)


def test_a_reply_with_other_records_is_refused():
    c = content()
    with pytest.raises(InvalidReply, match="its records are"):
        read({**c, "config": {}})
    with pytest.raises(InvalidReply, match="its records are"):
        read({k: v for k, v in c.items() if k != "statistics"})


def reply(node, partition):
    return Reply(node, partition, 5, {}, {}, {})


def test_two_replies_claiming_one_partition_are_both_dropped_and_the_rest_sorted():
    kept, dropped = one_per_partition([reply(3, 2), reply(1, 0), reply(2, 0), reply(4, 1)])
    assert [(r.node, r.partition) for r in kept] == [(4, 1), (3, 2)]
    assert [(r.node, why) for r, why in dropped] == [
        (1, "2 replies claim partition 0"),
        (2, "2 replies claim partition 0"),
    ]
    kept, dropped = one_per_partition([reply(1, 0), reply(1, 1)])
    assert kept == [] and [why for _, why in dropped] == ["node 1 replied 2 times"] * 2
