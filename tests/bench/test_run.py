"""The benchmark runs end to end and reports every metric: correctness only, never timings."""

import json

import pytest

from skqk.bench.arms import synthetic_dataset
from skqk.bench.protocol import AccuracyProtocol, BenchConfig
from skqk.bench.report import markdown
from skqk.bench.run import accuracy_protocol, run
from skqk.cli import main as cli_main


def tiny_config(**kw):
    base = {
        "models": ("lenet5",),
        "samples": 64,
        "batch_size": 32,
        "repeats": 1,
        "levers": ("prefetch", "pooling", "gates", "prune"),
        "accuracy": None,
        "matmul_size": 64,
    }
    return BenchConfig(**{**base, **kw})


def test_bench_reports_every_metric():
    result = run(tiny_config(), log=lambda msg: None)
    m = result["models"]["lenet5"]
    for key in (
        "traditional_epoch_s",
        "qk_epoch_s",
        "qk_fly_epoch_s",
        "qk_over_traditional",
        "phase3_samples_per_s",
        "pattern_bytes_per_sample",
        "store_read_share_of_qk_step",
        "e2e_over_traditional",
        "qk_over_traditional_bf16",
    ):
        assert m[key] > 0, key
    assert set(m["achieved_flops"]) >= {"traditional", "qk_store", "qk_fly", "traditional_bf16", "qk_store_bf16"}
    assert m["training_flops_per_sample"]["traditional"] == m["training_flops_per_sample"]["qk_store"]
    assert m["memory"]["traditional"]["step_peak_bytes"] > 0
    assert set(result["machine"]["matmul_peak_flops"]) == {"fp32", "bf16"}
    assert any("previous bool-mul gates" in k for k in m["levers"])
    assert m["qk_pruned_over_traditional"] > 0
    assert result["targets"] and all("met" in t for t in result["targets"])
    assert "| lenet5 |" in markdown(result)
    json.dumps(result)


def test_accuracy_protocol_on_synthetic_data():
    cfg = tiny_config(levers=(), precisions=("fp32",))
    proto = AccuracyProtocol(pretrain_samples=64, pretrain_epochs=1, samples=64, epochs=2, eval_samples=32)
    out = accuracy_protocol(synthetic_dataset(64), proto, cfg, log=lambda msg: None)
    assert [c["epoch"] for c in out["curves"]["qk"]] == [1, 2]
    assert out["curves"]["qk"][0]["seconds"] >= out["phase3_s"]
    assert 0 <= out["fp32"]["traditional_final_val_accuracy"] <= 1


def test_bench_config_rejects_unknown_names():
    with pytest.raises(ValueError):
        tiny_config(models=("resnet",))
    with pytest.raises(ValueError):
        tiny_config(levers=("magic",))


def test_cli_bench_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "lenet5", "--samples", "64", "--batch-size", "32", "--repeats", "1"]
    argv += ["--levers", "", "--no-accuracy", "--precision", "fp32", "--json", str(out)]
    assert cli_main(argv) == 0
    result = json.loads(out.read_text())
    assert result["models"]["lenet5"]["qk_over_traditional"] > 0
    assert "traditional_bf16_epoch_s" not in result["models"]["lenet5"]
