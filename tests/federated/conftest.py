"""Tests that need Flower (the `federated` extra) use the `flower` fixture: skipped where Flower is not
installed, except in CI, which must install it (as the CIFAR-10 tests need SKQK_DATA)."""

import importlib.util
import os

import pytest


@pytest.fixture(scope="session")
def flower() -> None:
    missing = [name for name in ("flwr", "ray") if importlib.util.find_spec(name) is None]
    if not missing:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must install the federated extra (pip install -e '.[federated]'); missing {missing}")
    pytest.skip(f"Flower's simulation engine is not installed ({', '.join(missing)}): pip install -e '.[federated]'")
