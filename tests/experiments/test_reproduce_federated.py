"""`skqk reproduce federated --preset smoke` end to end through the CLI on real CIFAR-10: every cell, the plot and
the table; a rerun reads every cell from the cache. Four Flower simulations, so a slow test."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from skqk.experiments.federated import PRESETS


def reproduce(out: Path, data: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "skqk.cli", "-q", "reproduce", "federated", "--data-dir", data, "--out", str(out)]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_federated_smoke_then_resume_from_cache(flower, cifar10, tmp_path):
    done = reproduce(tmp_path, cifar10, "--preset", "smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    protocol = PRESETS["smoke"].models["lenet5"]
    expected = {
        (k, kind, method) for k in protocol.clients for kind, _ in protocol.partitions for method in protocol.methods
    }
    cells = results["cells"]
    assert {(c["clients"], c["partition"], c["method"]) for c in cells} == expected
    for cell in cells:
        assert 0 <= cell["val_accuracy"] <= 1 and cell["bytes_down"] > 0 and cell["bytes_up"] > 0
        if cell["method"] != "merge-once":
            assert [r["round"] for r in cell["rounds"]] == list(range(protocol.rounds + 1))
    qk = next(c for c in cells if c["method"] == "qk-fedavg")
    full = next(c for c in cells if c["method"] == "traditional-fedavg")
    assert qk["bytes_up"] == full["bytes_up"] and qk["bytes_down"] > full["bytes_down"]  # + the SK, once
    assert (tmp_path / "federated_lenet5_K2.png").stat().st_size > 10_000
    assert "qk-fedavg" in done.stdout and (tmp_path / "federated.csv").exists()

    again = reproduce(tmp_path, cifar10, "--preset", "smoke")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == cells


def test_federated_has_no_paper_preset(tmp_path):
    done = reproduce(tmp_path, "unused", "--preset", "paper")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "skqk: error: reproduce federated has the presets cpu, smoke, not 'paper'"
    ]
