"""The benchmark's machinery and the optimisations it measures: correctness only, never timings."""

import json
import threading

import pytest
import torch
import torch.nn.functional as F

from skqk import bench, decouple, models
from skqk.cli import main as cli_main
from skqk.gates import LeakyReluGate, MaxPoolGate, ReluGate
from skqk.prefetch import Prefetcher, prefetched


def test_prefetcher_yields_reads_in_order_from_another_thread():
    seen_threads = set()

    def read(k):
        seen_threads.add(threading.get_ident())
        return k * k

    p = prefetched(read, range(10), depth=3)
    assert list(p) == [k * k for k in range(10)]
    assert p.wait_s >= 0
    assert threading.get_ident() not in seen_threads


def test_prefetcher_reraises_a_failed_read_in_order():
    def read(k):
        if k == 2:
            raise KeyError(k)
        return k

    with Prefetcher(read, range(5)) as p:
        assert next(p) == 0 and next(p) == 1
        with pytest.raises(KeyError):
            next(p)


def test_prefetcher_rejects_zero_depth():
    with pytest.raises(ValueError):
        Prefetcher(lambda k: k, [], depth=0)


# -- gates: the current implementations against the previous ones (exact, values and gradients) ---------------


def _values_and_grad(gate, x, state):
    x = x.clone().requires_grad_(True)
    y = gate(x, state)
    y.backward(torch.randn_like(y, generator=torch.Generator().manual_seed(1)))
    return y.detach(), x.grad


def test_relu_gate_equals_bool_mask_multiplication():
    x = torch.randn(4, 5, 6, 6)
    x[0, 0, 0, :3] = 0.0  # ties at zero stay inactive
    state = ReluGate().pattern_of(x)
    y, g = _values_and_grad(ReluGate(), x, state)
    y_ref, g_ref = _values_and_grad(bench._MulReluGate(), x, state)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
    torch.testing.assert_close(y, torch.relu(x), rtol=0, atol=0)


def test_relu_gate_keeps_bf16():
    x = torch.randn(3, 8).bfloat16()
    assert ReluGate()(x, x > 0).dtype == torch.bfloat16


def test_leaky_relu_gate_matches_leaky_relu_and_its_gradient():
    x = torch.randn(4, 7)
    gate = LeakyReluGate(0.2)
    y, g = _values_and_grad(gate, x, gate.pattern_of(x))
    y_ref, g_ref = _values_and_grad(lambda t, s: F.leaky_relu(t, 0.2), x, None)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize(
    "kw",
    [
        {"kernel_size": 2},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 2, "stride": 1, "dilation": 2},
        {"kernel_size": (2, 3), "stride": (1, 2)},
        {"kernel_size": 3, "stride": 2, "ceil_mode": True},
    ],
)
def test_max_pool_gate_table_gather_equals_index_arithmetic(kw):
    x = torch.randn(2, 3, 9, 11)
    gate = MaxPoolGate(**kw)
    state = gate.pattern_of(x)
    previous = bench._IndexMathMaxPoolGate(**kw)
    y, g = _values_and_grad(gate, x, state)
    y_ref, g_ref = _values_and_grad(previous, x, state)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
    live = F.max_pool2d(x, gate.kernel_size, gate.stride, gate.padding, gate.dilation, kw.get("ceil_mode", False))
    torch.testing.assert_close(y, live, rtol=0, atol=0)


@pytest.mark.parametrize("pooling", ["live", "frozen"])
def test_estimator_with_previous_gates_trains_identically(pooling):
    torch.manual_seed(0)
    net = models.build("lenet5").eval()
    selector, est = decouple(net, pooling)
    _, est_prev = decouple(net, pooling)
    bench.with_previous_gates(est_prev)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    pattern = selector(x)
    grads = []
    for e in (est, est_prev):
        e.zero_grad()
        F.cross_entropy(e(x, pattern), y).backward()
        grads.append([p.grad for p in e.parameters()])
    torch.testing.assert_close(est(x, pattern), est_prev(x, pattern))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# -- the benchmark runs end to end and reports every metric -----------------------------------------------------


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
    return bench.BenchConfig(**{**base, **kw})


def test_bench_reports_every_metric():
    result = bench.run(tiny_config(), log=lambda msg: None)
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
    assert "| lenet5 |" in bench.markdown(result)
    json.dumps(result)


def test_accuracy_protocol_on_synthetic_data():
    cfg = tiny_config(levers=(), precisions=("fp32",))
    proto = bench.AccuracyProtocol(pretrain_samples=64, pretrain_epochs=1, samples=64, epochs=2, eval_samples=32)
    out = bench.accuracy_protocol(bench.synthetic_dataset(64), proto, cfg, log=lambda msg: None)
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
