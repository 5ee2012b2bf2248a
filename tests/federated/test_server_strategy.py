"""The server's strategy wrapper without the simulation engine: the SK goes to each node once, replies are
checked and aggregated by Flower's own FedAvg / FedAdam in client order, BatchNorm statistics are pooled as a
mixture, a round with too few valid replies keeps the global model (no client can stop the run), and every array
sent is counted."""

import importlib.util
import json
import os

import pytest
import torch

if importlib.util.find_spec("flwr") is None and os.environ.get("CI") != "true":  # in CI the import below fails
    pytest.skip("Flower is not installed: pip install -e '.[federated]'", allow_module_level=True)

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402

from skqk.federated.config import FederatedConfig  # noqa: E402
from skqk.federated.server_app import FederatedError, SharedSK, array_bytes, inner_strategy, run_server  # noqa: E402

pytestmark = pytest.mark.usefixtures("task_identity")  # Flower messages need a task identity


class Grid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


def reply(
    message: Message, partition: int, examples: int, weight: float, mean: float, var: float, w: torch.Tensor = None
) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": torch.full((2,), weight) if w is None else w}),
            "statistics": ArrayRecord(
                {
                    "bn.running_mean": torch.tensor([mean]),
                    "bn.running_var": torch.tensor([var]),
                    "bn.num_batches_tracked": torch.tensor(3),
                }
            ),
            "metrics": MetricRecord(
                {"num-examples": examples, "partition-id": partition, "train-loss": 1.0, "train-accuracy": 0.5}
            ),
        }
    )
    return Message(content=content, reply_to=message)


def strategy(cfg: FederatedConfig) -> SharedSK:
    statistics = ArrayRecord(
        {"bn.running_mean": torch.zeros(1), "bn.running_var": torch.ones(1), "bn.num_batches_tracked": torch.tensor(0)}
    )
    sk = ArrayRecord({"w": torch.zeros(2)})
    return SharedSK(inner_strategy(cfg), sk, statistics, {"bn"}, cfg.required_clients, [30, 10])


def test_sk_once_client_order_mixture_statistics_and_bytes():
    s = strategy(FederatedConfig(clients=2))
    grid = Grid([11, 22])
    first = list(s.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), grid))
    assert all("sk" in m.content and "statistics" in m.content for m in first)
    qk = array_bytes(ArrayRecord({"w": torch.zeros(2)}))
    assert s.round["bytes_down"] == 2 * (2 * qk + array_bytes(s.statistics))
    by_node = {m.metadata.dst_node_id: m for m in first}
    # replies arrive out of client order; 30 and 10 examples
    replies = [reply(by_node[22], 1, 10, 5.0, 4.0, 3.0), reply(by_node[11], 0, 30, 1.0, 0.0, 1.0)]
    arrays, _ = s.aggregate_train(1, replies)
    torch.testing.assert_close(arrays["w"].numpy(), torch.full((2,), 2.0).numpy())  # 0.75 * 1 + 0.25 * 5
    pooled = s.statistics.to_torch_state_dict()
    torch.testing.assert_close(pooled["bn.running_mean"], torch.tensor([1.0]))
    torch.testing.assert_close(pooled["bn.running_var"], torch.tensor([4.5]))  # 0.75 (1 + 1) + 0.25 (3 + 9)
    assert [c["partition-id"] for c in s.round["clients"]] == [0, 1]
    second = list(s.configure_train(2, arrays, ConfigRecord(), grid))
    assert not any("sk" in m.content for m in second)  # the SK was shipped once


def test_a_round_with_too_few_replies_keeps_the_global_model():
    s = strategy(FederatedConfig(clients=2, min_clients=2))
    messages = list(s.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), Grid([11, 22])))
    failed = Message(Error(code=0, reason="client crashed"), reply_to=messages[1])
    arrays, metrics = s.aggregate_train(1, [reply(messages[0], 0, 30, 1.0, 0.0, 1.0), failed])
    assert arrays is None and metrics is None
    assert s.round["kept"] is False and s.round["failures"] == 1
    assert s.statistics.to_torch_state_dict()["bn.running_var"].item() == 1.0  # unchanged

    tolerant = strategy(FederatedConfig(clients=2, min_clients=1))
    messages = list(tolerant.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), Grid([11, 22])))
    failed = Message(Error(code=0, reason="client crashed"), reply_to=messages[1])
    arrays, _ = tolerant.aggregate_train(1, [failed, reply(messages[0], 0, 30, 1.0, 0.0, 1.0)])
    torch.testing.assert_close(arrays["w"].numpy(), torch.ones(2).numpy())  # the surviving client's weights


def test_fedprox_and_fedadam_are_flowers_own():
    prox = strategy(FederatedConfig(clients=2, strategy="fedprox", proximal_mu=0.5))
    messages = list(prox.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), Grid([11, 22])))
    assert all(m.content["config"]["proximal-mu"] == 0.5 for m in messages)

    adam = strategy(FederatedConfig(clients=2, strategy="fedadam", server_lr=0.1))
    messages = list(adam.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), Grid([11, 22])))
    replies = [reply(messages[0], 0, 30, 1.0, 0.0, 1.0), reply(messages[1], 1, 10, 5.0, 4.0, 3.0)]
    arrays, _ = adam.aggregate_train(1, replies)
    # FedAdam's first step moves the start by about eta in the direction of the average (2.0), not onto it
    w = arrays["w"].numpy()
    assert 0.0 < w[0] < 2.0


def first_round(s: SharedSK) -> list[Message]:
    return list(s.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), Grid([11, 22])))


@pytest.mark.parametrize(
    "bad",
    [
        {"w": torch.tensor([9.0])},  # a (1,)-shaped parameter, which numpy would broadcast into (2,)
        {"w": torch.tensor([float("nan"), 1.0])},
        {"w": torch.tensor([1e30, 1e30])},
        {"examples": 10**12},
        {"examples": -50},
        {"partition": 0},  # claims the other client's partition: both are dropped
    ],
)
def test_a_bad_reply_is_dropped_logged_and_the_others_aggregated(bad, caplog):
    s = strategy(FederatedConfig(clients=2, min_clients=1))
    messages = first_round(s)
    good = reply(messages[0], 0, 30, 1.0, 0.0, 1.0)
    hostile = reply(messages[1], bad.get("partition", 1), bad.get("examples", 10), 5.0, 4.0, 3.0, bad.get("w"))
    arrays, _ = s.aggregate_train(1, [good, hostile])
    if "partition" in bad:
        assert arrays is None and s.round["kept"] is False and s.round["failures"] == 2
        assert "2 replies claim partition 0" in s.round["dropped"][0]["reason"]
        return
    torch.testing.assert_close(arrays["w"].numpy(), torch.ones(2).numpy())  # the honest client's weights alone
    assert s.round["failures"] == 1 and s.round["kept"] is True
    assert [c["partition-id"] for c in s.round["clients"]] == [0]
    assert s.round["dropped"][0]["node"] == messages[1].metadata.dst_node_id
    assert "is dropped" in caplog.text
    assert s.statistics.to_torch_state_dict()["bn.running_var"].item() == 1.0  # the honest client's statistics


def test_a_round_without_a_valid_reply_keeps_the_global_model():
    s = strategy(FederatedConfig(clients=2, min_clients=1))
    messages = first_round(s)
    failed = [Message(Error(code=0, reason="client crashed\nTraceback ..."), reply_to=m) for m in messages]
    assert s.aggregate_train(1, failed) == (None, None)
    assert s.round["kept"] is False and s.round["failures"] == 2
    assert s.round["dropped"][0]["reason"] == "it failed: client crashed Traceback ..."  # one line
    assert s.aggregate_train(1, []) == (None, None)  # nothing came back before the timeout
    # the nodes never trained with the SK, so the next round sends it again
    assert all("sk" in m.content for m in first_round(s))


class AnsweringGrid(Grid):
    """A grid whose nodes answer every message with `answer(message)`, as Flower's grids do, minus the network."""

    def __init__(self, nodes, answer):
        super().__init__(nodes)
        self.answer = answer

    def send_and_receive(self, messages, *, timeout=None):
        return [self.answer(m) for m in messages]


def test_a_run_in_which_no_round_had_a_valid_reply_saves_nothing_and_says_why(tmp_path):
    from skqk import models

    state = models.build("lenet5").state_dict()
    start = {
        "model": "lenet5",
        "model_kwargs": {},
        "pooling": "live",
        "sk": state,
        "qk": state,
        "batchnorm": set(),
        "shard_sizes": [30, 10],
        "data": "f" * 64,
    }
    grid = AnsweringGrid([11, 22], lambda m: Message(Error(code=0, reason="wrong data"), reply_to=m))
    cfg = FederatedConfig(clients=2, rounds=2, method="traditional")
    with pytest.raises(FederatedError, match="no round of 2 had 2 valid replies"):
        run_server(grid, cfg, start, tmp_path, lambda module: {"val_accuracy": 0.1, "val_loss": 2.3})
    assert not (tmp_path / "model.pt").exists()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["kept"] for row in rows[1:]] == [False, False]
    assert rows[1]["dropped"][0]["reason"] == "it failed: wrong data"
