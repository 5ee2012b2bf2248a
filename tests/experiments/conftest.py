"""The real CIFAR-10 the end-to-end reproductions run on."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cifar10() -> str:
    """$SKQK_DATA; skipped where it is not set, except in CI, which must provide it."""
    path = os.environ.get("SKQK_DATA")
    if not path or not Path(path).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but CIFAR-10 is missing: SKQK_DATA={path!r}")
        pytest.skip("set SKQK_DATA to the CIFAR-10 folder or tar.gz to run the smoke reproduction")
    return path
