"""Shared fixtures: every test starts from a known seed and leaves global RNG state as it found it; `float64`
runs a test in double precision; `flower` skips a test where Flower (the `federated` extra) is not installed,
except in CI, which must install it (as the CIFAR-10 tests need SKQK_DATA)."""

import importlib.util
import os
import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def seeded_rng():
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


@pytest.fixture
def float64():
    """Tensors and modules a test creates are float64: an equality that holds up to rounding only (two orders of
    summation, as a pruned and an unpruned convolution take) is then tested at float64's rounding, on any CPU and
    thread count, instead of float32's, which a few SGD steps amplify past any fixed float32 tolerance."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def flower() -> None:
    missing = [name for name in ("flwr", "ray") if importlib.util.find_spec(name) is None]
    if not missing:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must install the federated extra (pip install -e '.[federated]'); missing {missing}")
    pytest.skip(f"Flower's simulation engine is not installed ({', '.join(missing)}): pip install -e '.[federated]'")


@pytest.fixture
def task_identity(flower):
    """Messages need the identity of the task creating them, which Flower sets in its own processes."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved
