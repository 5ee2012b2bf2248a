"""The smoke preset of both experiments, end to end through the CLI on real CIFAR-10 (the CI test of issue 4)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from skqk.experiments import PRESETS


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


def test_fig5_smoke_default_model_then_resume_from_cache(cifar10, tmp_path):
    done = reproduce("fig5", tmp_path, cifar10)  # the smoke preset runs LeNet-5 unless --models names others
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["preset"]["name"] == "smoke" and results["preset"]["description"]  # the scaling is written
    cells = results["cells"]
    expected = {
        (m, n, N, method)
        for m, proto in PRESETS["smoke"].fig5.items()
        if m == "lenet5"
        for n in proto.sk_samples
        for N in proto.sample_counts(n)
        for method in ("qk", "traditional")
    }
    assert {(c["model"], c["n"], c["N"], c["method"]) for c in cells if c["method"] != "pretrain"} == expected
    assert all(0.0 <= c["val_accuracy"] <= 1.0 and c["val_loss"] > 0 for c in cells)
    assert (tmp_path / "fig5_lenet5.png").stat().st_size > 10_000 and not (tmp_path / "fig5_vgg8.png").exists()
    assert "| lenet5 | 256 | 512 | 1 | " in done.stdout  # both methods side by side
    assert (tmp_path / "fig5.csv").read_text().count("\n") == len(cells) + 1
    # every cell is cached: a second invocation recomputes nothing and reports the same numbers
    again = reproduce("fig5", tmp_path, cifar10)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == cells
    assert json.loads((tmp_path / "results.json").read_text())["wall_seconds_this_invocation"] < 60


def test_fig4_smoke_records_flips_every_k_steps_per_seed_and_applies_the_criterion(cifar10, tmp_path):
    done = reproduce("fig4", tmp_path, cifar10, "--models", "lenet5", "--seeds", "0,1", "--every-steps", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["preset"]["fig4_every_steps"] == 2
    runs = results["runs"]
    assert [(r["model"], r["seed"]) for r in runs] == [("lenet5", 0), ("lenet5", 1)]
    for run in runs:
        assert [e["epoch"] for e in run["epochs"]] == [1, 2, 3]
        assert all(0.0 < e["flips"] < 1.0 for e in run["epochs"])  # SGD moves some, never all, gate states
        assert set(run["epochs"][0]["flips_per_site"]) == {"features.1", "features.4", "classifier.1", "classifier.3"}
        # 256 samples in batches of 64: 4 steps per epoch, patterns compared every 2 steps
        assert [s["step"] for s in run["steps"]] == [2, 4, 6, 8, 10, 12]
        assert [s["epoch"] for s in run["steps"]] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
        assert all(0.0 < s["flips"] < 1.0 for s in run["steps"])
        # the follow-up yardstick at the same measurements: SGD moves every layer's weights a little
        assert all(0.0 < s["update"] < 1.0 and all(s["update_per_layer"].values()) for s in run["steps"])
        assert set(run["steps"][0]["update_per_layer"]) == {
            "features.0",
            "features.3",
            "classifier.0",
            "classifier.2",
            "classifier.4",
        }
        criterion = run["stabilisation"]
        assert set(criterion["decay"]) == {"patterns", "weights", "ratio", "rate_ratio"}
        assert criterion["measured_every"] == "2 steps" and criterion["flip_threshold"] == 0.01
        assert criterion["val_loss_min_epoch"] == min(run["epochs"], key=lambda e: e["val_loss"])["epoch"]
    # the seed changes the initialisation, the samples and the batch order: the two runs differ
    assert runs[0]["steps"] != runs[1]["steps"]
    assert "| lenet5 | 1 |" in done.stdout
    for suffix in ("png", "csv", "steps.csv", "per_site.csv", "steps_update_per_layer.csv"):
        assert (
            tmp_path / f"fig4_lenet5.{suffix}" if suffix in ("png", "csv") else tmp_path / f"fig4_lenet5_{suffix}"
        ).exists()


def test_fig5_cells_are_per_seed_and_cached_per_seed(cifar10, tmp_path):
    both = reproduce("fig5", tmp_path, cifar10, "--models", "lenet5", "--seeds", "0,1")
    assert both.returncode == 0, both.stderr[-2000:]
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    by_seed = {s: [c for c in cells if c["seed"] == s] for s in (0, 1)}
    assert len(by_seed[0]) == len(by_seed[1]) == 5  # pretrain + 2 N x 2 methods
    pre = {
        s: json.loads((tmp_path / "lenet5" / f"seed{s}" / "n256" / "pretrain" / "config.json").read_text())
        for s in (0, 1)
    }
    assert (pre[0]["config"]["seed"], pre[0]["config"]["subset_seed"]) == (0, 0)
    assert (pre[1]["config"]["seed"], pre[1]["config"]["subset_seed"]) == (1, 1)
    weights = [(tmp_path / "lenet5" / f"seed{s}" / "n256" / "pretrain" / "model.pt").read_bytes() for s in (0, 1)]
    assert weights[0] != weights[1]
    assert "± " in both.stdout  # two seeds: mean ± std
    # seed 1 alone comes from its cache, unchanged
    one = reproduce("fig5", tmp_path, cifar10, "--models", "lenet5", "--seeds", "1")
    assert one.returncode == 0, one.stderr[-2000:]
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["cells"] == by_seed[1] and again["wall_seconds_this_invocation"] < 30


def test_qk_gap_shares_the_fig5_cells_and_changes_one_factor_per_cell(cifar10, tmp_path):
    fig5 = reproduce("fig5", tmp_path, cifar10, "--models", "lenet5")
    assert fig5.returncode == 0, fig5.stderr[-2000:]
    base = json.loads((tmp_path / "lenet5" / "seed0" / "n256" / "N512" / "qk" / "cell.json").read_text())
    done = reproduce("qkgap", tmp_path, cifar10)
    assert done.returncode == 0, done.stderr[-2000:]
    cells = json.loads((tmp_path / "qkgap-results.json").read_text())["cells"]
    assert json.loads((tmp_path / "results.json").read_text())["experiment"] == "fig5"  # not overwritten
    by_variant = {(c["method"], c["variant"]): c for c in cells}
    assert by_variant[("qk", "base")] == base  # the Fig. 5 cell itself, from its cache
    assert set(by_variant) == {
        ("pretrain", "base"),
        ("qk", "base"),
        ("traditional", "base"),
        ("qk", "lr3x"),
        ("qk", "frozen-pooling"),
        ("qk", "sk-refresh"),
    }
    assert by_variant[("qk", "lr3x")]["config"]["lr"] == pytest.approx(3 * base["config"]["lr"])
    refreshed = by_variant[("qk", "sk-refresh")]["config"]
    assert refreshed["sk_refresh"] == "auto" and base["config"]["sk_refresh"] == "off"
    assert {k: v for k, v in refreshed.items() if k != "sk_refresh"} == {
        k: v for k, v in base["config"].items() if k != "sk_refresh"
    }
    assert by_variant[("qk", "frozen-pooling")]["pooling"] == "frozen"
    frozen = json.loads(
        (tmp_path / "lenet5" / "seed0" / "n256" / "N512" / "qk-frozen-pooling" / "config.json").read_text()
    )
    assert (
        frozen["source"]["store"]
        != json.loads((tmp_path / "lenet5" / "seed0" / "n256" / "N512" / "qk" / "config.json").read_text())["source"][
            "store"
        ]
    )
    assert (tmp_path / "qkgap_lenet5.png").exists() and (tmp_path / "qkgap.csv").exists()


@pytest.mark.parametrize(
    "option, value",
    [("--seeds", "0,x"), ("--seeds", "1,1"), ("--seeds", "-1"), ("--sk-samples", "0"), ("--max-samples", "0")],
)
def test_bad_seeds_and_sample_counts_are_a_one_line_error(cifar10, tmp_path, option, value):
    done = reproduce("fig5", tmp_path, cifar10, "--models", "lenet5", option, value)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(f"skqk: error: {option}")
    assert "Traceback" not in done.stderr and not (tmp_path / "lenet5").exists()


@pytest.mark.parametrize("figure, model", [("fig5", "resnet"), ("qkgap", "alexnet")])
def test_unknown_model_is_a_one_line_error(cifar10, tmp_path, figure, model):
    done = reproduce(figure, tmp_path, cifar10, "--models", model)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(f"skqk: error: unknown model {model!r} for {figure}")
    assert "Traceback" not in done.stderr and not (tmp_path / model).exists()


def test_fig5_successive_mode_starts_each_N_from_the_previous_result(cifar10, tmp_path):
    done = reproduce("fig5", tmp_path, cifar10, "--models", "lenet5", "--mode", "successive")
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "lenet5" / "seed0" / "n256"
    for method in ("qk", "traditional"):
        source = json.loads((folder / "N512" / method / "config.json").read_text())["source"]
        previous = hashlib.sha256((folder / "N256" / method / "model.pt").read_bytes()).hexdigest()
        assert source["checkpoint_sha256"] == previous
    first = json.loads((folder / "N256" / "qk" / "config.json").read_text())["source"]
    pretrained = hashlib.sha256((folder / "pretrain" / "model.pt").read_bytes()).hexdigest()
    assert first["checkpoint_sha256"] == pretrained
