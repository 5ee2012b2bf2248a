"""The smoke preset of both experiments, end to end through the CLI on real CIFAR-10 (the CI test of issue 4)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skqk.experiments import PRESETS


@pytest.fixture(scope="module")
def cifar10() -> str:
    path = os.environ.get("SKQK_DATA")
    if not path or not Path(path).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but CIFAR-10 is missing: SKQK_DATA={path!r}")
        pytest.skip("set SKQK_DATA to the CIFAR-10 folder or tar.gz to run the smoke reproduction")
    return path


def reproduce(figure: str, out: Path, data: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "skqk.cli",
        "-q",
        "reproduce",
        figure,
        "--preset",
        "smoke",
        "--data-dir",
        data,
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_fig5_smoke_all_models_then_resume_from_cache(cifar10, tmp_path):
    done = reproduce("fig5", tmp_path, cifar10)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["preset"]["name"] == "smoke" and results["preset"]["description"]  # the scaling is written
    cells = results["cells"]
    expected = {
        (m, n, N, method)
        for m, proto in PRESETS["smoke"].fig5.items()
        for n in proto.sk_samples
        for N in proto.sample_counts(n)
        for method in ("qk", "traditional")
    }
    assert {(c["model"], c["n"], c["N"], c["method"]) for c in cells if c["method"] != "pretrain"} == expected
    assert all(0.0 <= c["val_accuracy"] <= 1.0 and c["val_loss"] > 0 for c in cells)
    for name in ("lenet5", "alexnet", "vgg8"):
        assert (tmp_path / f"fig5_{name}.png").stat().st_size > 10_000
    assert "| lenet5 | 256 | 512 | qk |" in done.stdout
    assert (tmp_path / "fig5.csv").read_text().count("\n") == len(cells) + 1
    # every cell is cached: a second invocation recomputes nothing and reports the same numbers
    again = reproduce("fig5", tmp_path, cifar10)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == cells
    assert json.loads((tmp_path / "results.json").read_text())["wall_seconds_this_invocation"] < 60


def test_fig4_smoke_records_pattern_flips(cifar10, tmp_path):
    done = reproduce("fig4", tmp_path, cifar10, "--models", "lenet5")
    assert done.returncode == 0, done.stderr[-2000:]
    epochs = json.loads((tmp_path / "results.json").read_text())["epochs"]["lenet5"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert all(0.0 < e["flips"] < 1.0 for e in epochs)  # SGD moves some, never all, gate states
    assert set(epochs[0]["flips_per_site"]) == {"features.1", "features.4", "classifier.1", "classifier.3"}
    assert (tmp_path / "fig4_lenet5.png").exists() and (tmp_path / "fig4_lenet5.csv").exists()


def test_unknown_model_is_a_one_line_error(cifar10, tmp_path):
    done = reproduce("fig5", tmp_path, cifar10, "--models", "resnet")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("skqk: error: unknown model 'resnet'")
    assert "Traceback" not in done.stderr


def test_fig5_successive_mode_starts_each_N_from_the_previous_result(cifar10, tmp_path):
    done = reproduce("fig5", tmp_path, cifar10, "--models", "lenet5", "--mode", "successive")
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "lenet5" / "n256"
    for method in ("qk", "traditional"):
        source = json.loads((folder / "N512" / method / "config.json").read_text())["source"]
        previous = hashlib.sha256((folder / "N256" / method / "model.pt").read_bytes()).hexdigest()
        assert source["checkpoint_sha256"] == previous
    first = json.loads((folder / "N256" / "qk" / "config.json").read_text())["source"]
    pretrained = hashlib.sha256((folder / "pretrain" / "model.pt").read_bytes()).hexdigest()
    assert first["checkpoint_sha256"] == pretrained
