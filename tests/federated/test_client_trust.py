"""A federated message is data: the ClientApp builds a zoo model, or an import path its own node config trusts
(``trust-model``), never one only the server's task names; it replies with an error before importing anything."""

import importlib.util
import json
import os
import sys

import pytest
import torch

if importlib.util.find_spec("flwr") is None and os.environ.get("CI") != "true":  # in CI the import below fails
    pytest.skip("Flower is not installed: pip install -e '.[federated]'", allow_module_level=True)

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from pipeline_helpers import make_dataset  # noqa: E402

from skqk.federated.client_app import client_app  # noqa: E402
from skqk.federated.config import FederatedConfig  # noqa: E402
from skqk.pipeline.checkpoint import CheckpointError  # noqa: E402

pytestmark = pytest.mark.usefixtures("task_identity")  # Flower messages need a task identity


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """An importable module that leaves a file behind when imported, and that file's path."""
    created = tmp_path / "created"
    (tmp_path / "skqk_planted_net.py").write_text(
        f"open({str(created)!r}, 'w').close()\nfrom torch import nn\ndef build(**kw): return nn.Linear(3, 3)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield created
    sys.modules.pop("skqk_planted_net", None)


def task(model: str, data: str = "") -> Message:
    """A first-round task naming `model` (for the data of fingerprint `data`), as a ServerApp sends it."""
    config = {
        "config": FederatedConfig(clients=2, samples=60).to_dict(),
        "model": model,
        "model_kwargs": {},
        "pooling": "live",
        "data": data,
    }
    content = RecordDict(
        {
            "config": ConfigRecord({"skqk": json.dumps(config), "server-round": 1}),
            "arrays": ArrayRecord({"w": torch.zeros(1)}),
            "statistics": ArrayRecord({}),
            "sk": ArrayRecord({"w": torch.zeros(1)}),
        }
    )
    return Message(content, dst_node_id=0, message_type="train")


def node(**config) -> Context:
    return Context(0, 0, {"partition-id": 0, "num-partitions": 2, **config}, RecordDict(), {})


@pytest.mark.parametrize("allowed", [None, "skqk_planted_net:other", "os:system"])
def test_a_node_refuses_an_import_path_its_operator_did_not_allow_without_importing_it(planted, allowed):
    config = {"trust-model": allowed} if allowed else {}
    reply = client_app(data_dir="/nonexistent")(task("skqk_planted_net:build"), node(**config))
    assert reply.has_error() and "trust-model='skqk_planted_net:build'" in reply.error.reason
    assert not planted.exists() and "skqk_planted_net" not in sys.modules


def test_a_node_builds_an_import_path_its_node_config_allows(planted, tmp_path):
    """Allowed, the module is imported and its network built (then refused: the task's weights do not fit it)."""
    data_dir, cache_dir, data = make_dataset(tmp_path)
    allowed = node(**{"trust-model": "os:system, skqk_planted_net:build"})
    with pytest.raises(CheckpointError, match="does not fit the skqk_planted_net:build architecture"):
        client_app(str(data_dir), str(cache_dir))(task("skqk_planted_net:build", data.fingerprint), allowed)
    assert planted.exists()
