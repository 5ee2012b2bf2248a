"""The benchmark runs end to end and reports every metric: correctness only, never timings."""

import copy
import json

import pytest
import torch

from skqk import models
from skqk.bench.arms import make_arms, synthetic_dataset, timed_evaluation
from skqk.bench.protocol import AccuracyProtocol, BenchConfig
from skqk.bench.report import markdown
from skqk.bench.run import accuracy_protocol, run
from skqk.cli import main as cli_main
from skqk.pipeline.record import record
from skqk.selector import build_selector


def tiny_config(**kw):
    base = {
        "models": ("lenet5",),
        "samples": 64,
        "batch_size": 32,
        "repeats": 1,
        "levers": ("prefetch", "pooling", "gates", "prune", "channels_last", "sgd"),
        "accuracy": None,
        "matmul_size": 64,
        "round_s": 0.0,  # rounds of one epoch: these tests check what is reported, never timings
    }
    return BenchConfig(**{**base, **kw})


def test_bench_reports_every_metric():
    result = run(tiny_config(), log=lambda msg: None)
    m = result["models"]["lenet5"]
    for key in (
        "pytorch_epoch_s",
        "qk_over_pytorch",
        "traditional_over_pytorch",
        "e2e_over_pytorch",
        "qk_all_units_over_traditional",
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
    flops = m["training_flops_per_sample"]
    assert flops["pytorch"] == flops["traditional"] > flops["qk_store"]  # QK trains without its dead units
    assert m["memory"]["traditional"]["step_peak_bytes"] > 0
    assert set(result["machine"]["matmul_peak_flops"]) == {"fp32", "bf16"}
    assert any("previous bool-mul gates" in k for k in m["levers"])
    assert m["layout"] == "channels_last"  # lenet5's auto layout
    assert {
        "fused SGD / for-loop SGD, QK",
        "channels_last / contiguous, QK",
        "dead units removed / all units, QK",
    } <= set(m["levers"])
    assert any(r["removed"] for r in m["removed_units"].values())  # a random lenet5 has dead classifier neurons
    assert "| lenet5 |" in markdown(result)
    json.dumps(result)


def test_accuracy_protocol_on_synthetic_data():
    cfg = tiny_config(levers=(), precisions=("fp32",))
    proto = AccuracyProtocol(pretrain_samples=64, pretrain_epochs=1, samples=64, epochs=2, eval_samples=32, seeds=2)
    out = accuracy_protocol(synthetic_dataset(64), proto, cfg, log=lambda msg: None)
    assert [r["seed"] for r in out["runs"]] == [0, 1]
    run0 = out["runs"][0]
    assert set(run0["curves"]) == {"pytorch", "traditional", "qk_store", "qk_store_all_units"}
    assert any(r["removed"] for r in run0["removed_units"].values())
    assert run0["pruned_minus_all_units_val_accuracy"] == [0.0, 0.0]  # removal is exact
    assert [c["epoch"] for c in run0["curves"]["qk_store"]] == [1, 2]
    assert run0["curves"]["qk_store"][0]["seconds"] >= run0["phase3_s"]
    assert run0["fp32"]["traditional_seconds_to_target"] is not None  # its own best is always reached
    assert out["fp32"]["traditional"]["reached"] == "2/2"
    assert (
        "time to accuracy"
        in markdown({**run(tiny_config(precisions=("fp32",)), log=lambda m: None), "time_to_accuracy": out}).lower()
    )


def test_bench_epochs_with_evaluation_include_every_arms_evaluation(monkeypatch):
    """--eval-samples: every arm's epoch is its training steps plus its evaluation, as in a Fig. 5 re-training;
    the evaluation seconds are reported beside. Each evaluation runs (QK's from the validation patterns it
    recorded once) and is made to report 1,000 s here, so the epochs must hold them."""
    import skqk.bench.run as bench_run

    def slow(arm, dataset, limit):
        evaluation = timed_evaluation(arm, dataset, limit)
        return lambda: (1000.0, evaluation()[1])

    monkeypatch.setattr(bench_run, "timed_evaluation", slow)
    result = run(tiny_config(levers=(), precisions=("fp32",), eval_samples=100), log=lambda msg: None)
    m = result["models"]["lenet5"]
    assert m["eval_samples"] == 100 and set(m["eval_s_median"]) == set(m["epoch_s_median"])
    for arm, eval_s in m["eval_s_median"].items():
        assert eval_s == 1000.0 < m["epoch_s_median"][arm] < 1100.0, arm
    assert m["qk_eval_over_traditional_eval"] == 1.0 and "qk_eval_over_traditional_eval" in m["spread"]
    assert "evaluation on 100 test samples" in markdown(result)


def test_bench_epochs_are_training_only_by_default():
    m = run(tiny_config(levers=(), precisions=("fp32",)), log=lambda msg: None)["models"]["lenet5"]
    assert "eval_s_median" not in m and m["qk_epoch_s"] < 100.0


def test_timed_evaluation_of_qk_from_recorded_patterns_scores_as_the_network(tmp_path):
    """The bench's QK evaluation is `retrain`'s: the estimator from its selector's recorded validation patterns.
    Before any training every arm holds the same weights and the estimator fed its own patterns is the network,
    so every arm scores the same."""
    net, cfg = models.build("lenet5"), tiny_config(levers=(), precisions=("fp32",))
    dataset, indices = synthetic_dataset(64, test_samples=100), torch.arange(64)
    selectors = {"live": build_selector(copy.deepcopy(net).eval(), "live")}
    stores = {"live": record(selectors["live"], dataset, indices, tmp_path / "store", progress=False)}
    arms = make_arms(net, cfg, selectors, stores, indices, "lenet5")
    scores = {a.name: timed_evaluation(a, dataset, 100)()[1] for a in arms}
    assert {"pytorch", "traditional", "qk_store", "qk_fly"} <= set(scores)
    for name, metrics in scores.items():
        assert metrics["val_accuracy"] == scores["pytorch"]["val_accuracy"], name
        assert metrics["val_loss"] == pytest.approx(scores["pytorch"]["val_loss"], rel=1e-5), name


def test_bench_config_rejects_a_negative_evaluation_size():
    with pytest.raises(ValueError, match="eval_samples"):
        tiny_config(eval_samples=-1)


def test_bench_config_rejects_unknown_names():
    with pytest.raises(ValueError):
        tiny_config(models=("resnet",))
    with pytest.raises(ValueError):
        tiny_config(levers=("magic",))


def test_cli_quick_bench_writes_the_comparison_with_plain_pytorch(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--samples", "64", "--batch-size", "32", "--repeats", "1", "--precision", "fp32"]
    assert cli_main([*argv, "--json", str(out)]) == 0
    m = json.loads(out.read_text())["models"]["lenet5"]
    for key in ("pytorch_epoch_s", "traditional_epoch_s", "qk_epoch_s", "qk_over_pytorch", "qk_over_traditional"):
        assert m[key] > 0, key
    assert m["qk_over_pytorch"] == m["qk_epoch_s"] / m["pytorch_epoch_s"]
    assert m["network"] == "random initialisation"  # --quick: no training
    assert "traditional_bf16_epoch_s" not in m


def test_bench_times_a_trained_network_cached_on_real_data(tmp_path, monkeypatch):
    from pipeline_helpers import make_dataset

    import skqk.bench.trained as trained

    monkeypatch.setenv("SKQK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(trained, "TRAINING", {"lenet5": (60, 2)})
    data = make_dataset(tmp_path / "data")[2]
    logs: list[str] = []
    cfg = tiny_config(levers=(), precisions=("fp32",), samples=64)
    m = run(cfg, data, log=logs.append)["models"]["lenet5"]
    assert m["network"].endswith("model.pt") and str(tmp_path / "cache") in m["network"]
    assert m["data"] == data.source
    assert set(m["dead_unit_share"]) == {"features.1", "features.4", "classifier.1", "classifier.3"}
    assert sum("training 2 epochs" in line for line in logs) == 1
    logs.clear()
    assert run(cfg, data, log=logs.append)["models"]["lenet5"]["network"] == m["network"]
    assert not any("training 2 epochs" in line for line in logs)  # cached
