"""Benchmark: QK-only re-training against traditional re-training, measured side by side in one process.

Every timed quantity is a median over interleaved repeats: each round runs one epoch of every method (the
"arms") in a rotating order, so a slow phase of a shared machine hits all methods alike; methods are compared
only as ratios of those medians, never across runs. Throughput uses synthetic CIFAR-10-shaped data (random
uint8 images, random labels; a random-initialised network), which costs exactly what real data costs; the
time-to-accuracy protocol uses real data when it is available.

Example:
    >>> result = run(BenchConfig(models=("lenet5",), samples=256, repeats=3))
    >>> result["models"]["lenet5"]["qk_over_traditional"]
    >>> print(markdown(result))

Command line: ``skqk bench --quick --json bench.json`` or ``python benchmarks/bench.py ...``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from skqk import models
from skqk.bench.arms import Arm, interleaved_epoch, make_arms, synthetic_dataset
from skqk.bench.measure import (
    dead_units,
    machine_info,
    matmul_flops,
    peak_memory,
    state_bytes,
    step_flops,
    top_operators,
)
from skqk.bench.protocol import AccuracyProtocol, BenchConfig, add_arguments, config_from_args
from skqk.bench.report import markdown, targets
from skqk.data import Dataset, epoch_order, subset_indices
from skqk.decoupled import DecoupledModel
from skqk.estimator import build_estimator
from skqk.pipeline.record import record
from skqk.selector import build_selector


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_model(name: str, cfg: BenchConfig, peaks: dict[str, float], log: Callable[[str], None]) -> dict:
    torch.manual_seed(cfg.seed)
    net = models.build(name)
    dataset = synthetic_dataset(cfg.samples, cfg.seed)
    indices = torch.arange(cfg.samples)
    tmp = Path(tempfile.mkdtemp(prefix="skqk-bench-"))
    other = "frozen" if cfg.pooling == "live" else "live"
    poolings = [cfg.pooling] + ([other] if {"pooling", "fusion"} & set(cfg.levers) else [])
    selectors, stores = {}, {}
    try:
        for pooling in poolings:
            selectors[pooling] = build_selector(copy.deepcopy(net).eval(), pooling)
            stores[pooling] = record(selectors[pooling], dataset, indices, tmp / f"store-{pooling}", progress=False)
        arms = make_arms(net, cfg, selectors, stores, indices)
        log(f"{name}: {len(arms)} arms x {cfg.repeats} rounds (+1 warm-up) of {cfg.samples} samples")
        times: dict[str, list[float]] = {a.name: [] for a in arms}
        waits: dict[str, list[float]] = {a.name: [] for a in arms}
        phase3: list[float] = []
        reads: list[float] = []
        for r in range(cfg.repeats + 1):
            order = epoch_order(indices, cfg.seed, r)
            seconds, read_waits = interleaved_epoch(arms, dataset, order, cfg.batch_size, r)
            if r:
                for arm, sec, wait in zip(arms, seconds, read_waits):
                    times[arm.name].append(sec)
                    waits[arm.name].append(wait)
            start = time.perf_counter()
            record(selectors[cfg.pooling], dataset, indices, tmp / f"phase3-{r}", progress=False)
            if r:
                phase3.append(time.perf_counter() - start)
            shutil.rmtree(tmp / f"phase3-{r}", ignore_errors=True)
            start = time.perf_counter()
            for idx in order.split(cfg.batch_size):
                stores[cfg.pooling].read(idx)
            if r:
                reads.append(time.perf_counter() - start)
            if r:
                log(f"  round {r}: " + ", ".join(f"{a.name} {times[a.name][-1]:.2f}s" for a in arms))
        by_name = {a.name: a for a in arms}
        idx = indices[: cfg.batch_size]
        flops = {n: step_flops(by_name[n], dataset, idx) for n in ("traditional", "qk_store", "qk_fly")}
        for n in ("traditional_bf16", "qk_store_bf16"):
            if n in by_name:
                flops[n] = step_flops(by_name[n], dataset, idx)
        memory = {}
        for n in ("traditional", "qk_store", "qk_fly", "traditional_bf16", "qk_store_bf16"):
            if n in by_name:
                arm = by_name[n]
                x, y = arm.inputs(dataset, idx)
                memory[n] = {
                    "step_peak_bytes": peak_memory(
                        lambda arm=arm, x=x, y=y: arm.step(x, y, arm.read(idx) if arm.read else None)
                    ),
                    "state_bytes": state_bytes(arm),
                }
        memory["phase3"] = {
            "step_peak_bytes": peak_memory(
                lambda: record(selectors[cfg.pooling], dataset, indices, tmp / "phase3-mem", progress=False)
            ),
            "state_bytes": sum(t.numel() * t.element_size() for t in selectors[cfg.pooling].state_dict().values()),
        }
        profiles = {}
        if cfg.profile:
            for n in ("traditional", "qk_store", "qk_store_frozen"):
                if n in by_name:
                    profiles[n] = top_operators(by_name[n], dataset, idx)
        dead = dead_units(stores[cfg.pooling], indices)
        store = stores[cfg.pooling]
        metrics = _model_metrics(cfg, times, waits, phase3, reads, flops, memory, peaks, store, dead)
        if profiles:
            metrics["profile_top_ops"] = profiles
        return metrics
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _model_metrics(cfg, times, waits, phase3, reads, flops, memory, peaks, store, dead) -> dict:
    med = {n: _median(v) for n, v in times.items()}
    steps = -(-cfg.samples // cfg.batch_size)
    trad, qk, fly = med["traditional"], med["qk_store"], med["qk_fly"]
    phase3_s = _median(phase3)
    train_sps = cfg.samples / trad
    out = {
        "samples_per_epoch": cfg.samples,
        "batch_size": cfg.batch_size,
        "pooling": cfg.pooling,
        "prefetch": cfg.prefetch,
        "traditional_epoch_s": trad,
        "qk_epoch_s": qk,
        "qk_fly_epoch_s": fly,
        "traditional_samples_per_s": train_sps,
        "qk_samples_per_s": cfg.samples / qk,
        "qk_fly_samples_per_s": cfg.samples / fly,
        "qk_over_traditional": qk / trad,
        "qk_fly_over_traditional": fly / trad,
        "phase3_s": phase3_s,
        "phase3_samples_per_s": cfg.samples / phase3_s,
        "phase3_over_training_throughput": (cfg.samples / phase3_s) / train_sps,
        "pattern_bytes_per_sample": store.bytes_per_sample,
        "pattern_sites": len(store.sites),
        "store_read_s_per_step": _median(reads) / steps,
        "store_read_share_of_qk_step": _median(reads) / qk,
        "store_wait_share_of_qk_step": _median(waits["qk_store"]) / qk,
        "e2e_epochs": cfg.e2e_epochs,
        "e2e_qk_s": phase3_s + cfg.e2e_epochs * qk,
        "e2e_traditional_s": cfg.e2e_epochs * trad,
        "e2e_over_traditional": (phase3_s + cfg.e2e_epochs * qk) / (cfg.e2e_epochs * trad),
        "training_flops_per_sample": {n: f / cfg.batch_size for n, f in flops.items()},
        "memory": memory,
        "dead_unit_share": dead,
        "epoch_s_all": {n: v for n, v in times.items()},
        "epoch_s_median": med,
    }
    achieved = {}
    for n, f in flops.items():
        precision = "bf16" if n.endswith("bf16") else "fp32"
        rate = f * steps / med[n]
        achieved[n] = {"flops_per_s": rate, "precision": precision, "share_of_matmul_peak": rate / peaks[precision]}
    out["achieved_flops"] = achieved
    if "traditional_bf16" in med:
        out["traditional_bf16_epoch_s"] = med["traditional_bf16"]
        out["qk_bf16_epoch_s"] = med["qk_store_bf16"]
        out["qk_over_traditional_bf16"] = med["qk_store_bf16"] / med["traditional_bf16"]
        out["bf16_over_fp32_traditional"] = med["traditional_bf16"] / trad
        out["bf16_over_fp32_qk"] = med["qk_store_bf16"] / qk
    levers = {}
    for name, (arm, base) in {
        "prefetch (with / without)": ("qk_store", "qk_store_noprefetch"),
        "prefetch (without / with)": ("qk_store", "qk_store_prefetch"),
        "frozen pooling (gather) / live max, QK": ("qk_store_frozen", "qk_store"),
        "live max / frozen pooling (gather), QK": ("qk_store_live", "qk_store"),
        "fused ReLU+pool gate / separate gates (frozen pooling), QK": ("qk_store_frozen", "qk_store_frozen_unfused"),
        "uint8-cast mask gates / previous bool-mul gates, QK": ("qk_store", "qk_store_previous_gates"),
        "table-gather frozen pooling / previous index-maths gather, QK": (
            "qk_store_frozen",
            "qk_store_frozen_previous_gates",
        ),
        "channels_last / contiguous, traditional": ("traditional_cl", "traditional"),
        "channels_last / contiguous, QK": ("qk_store_cl", "qk_store"),
        **{
            f"{n} threads / {torch.get_num_threads()} threads, {label}": (f"{arm}_{n}threads", arm)
            for n in (1, os.cpu_count())
            for arm, label in (("traditional", "traditional"), ("qk_store", "QK"))
        },
    }.items():
        if arm in med and base in med:
            levers[name] = med[arm] / med[base]
    if "qk_store_pruned" in med:
        out["qk_pruned_over_traditional"] = med["qk_store_pruned"] / trad
        e = cfg.e2e_epochs
        out["e2e_pruned_over_traditional"] = (phase3_s + e * med["qk_store_pruned"]) / (e * trad)
        levers["dead units removed / all units, QK"] = med["qk_store_pruned"] / qk
    if "qk_store_frozen" in med:
        out["qk_frozen_over_traditional"] = med["qk_store_frozen"] / trad
    if cfg.pooling == "frozen" and "qk_store_frozen_unfused" in med:
        levers["fused ReLU+pool gate / separate gates (frozen pooling), QK"] = qk / med["qk_store_frozen_unfused"]
    if "qk_store_cl" in med:
        levers["QK channels_last / traditional channels_last"] = med["qk_store_cl"] / med["traditional_cl"]
    out["levers"] = levers
    return out


def accuracy_protocol(dataset: Dataset, proto: AccuracyProtocol, cfg: BenchConfig, log) -> dict:
    """Pre-train briefly, record the patterns (Phase 3, timed), then re-train both methods epoch by epoch,
    interleaved, evaluating after each epoch (evaluation not timed). QK time includes Phase 3."""
    from skqk.pipeline.loop import evaluate

    kwargs = {"in_channels": dataset.in_channels, "image_size": dataset.image_size, "num_classes": dataset.num_classes}
    torch.manual_seed(cfg.seed)
    net = models.build(proto.model, **kwargs)
    pre_idx = subset_indices(dataset.train.labels, proto.pretrain_samples, 0)
    pre = Arm("pretrain", net, lambda x, p: net(x))
    pre.opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for e in range(proto.pretrain_epochs):
        pre.epoch(dataset, epoch_order(pre_idx, cfg.seed, e), cfg.batch_size)
    pretrained = evaluate(net, dataset, proto.eval_samples)["val_accuracy"]
    log(f"accuracy protocol: pre-trained {proto.model}, val accuracy {pretrained:.4f}")
    idx = subset_indices(dataset.train.labels, proto.samples, 0)
    tmp = Path(tempfile.mkdtemp(prefix="skqk-bench-acc-"))
    try:
        selector = build_selector(copy.deepcopy(net).eval(), cfg.pooling)
        start = time.perf_counter()
        store = record(selector, dataset, idx, tmp / "store", progress=False)
        phase3_s = time.perf_counter() - start
        arms, evals = [], {}
        for precision in cfg.precisions:
            suffix = "" if precision == "fp32" else "_bf16"
            m = copy.deepcopy(net)
            est = build_estimator(copy.deepcopy(net), cfg.pooling)
            arms.append(Arm("traditional" + suffix, m, lambda x, p, m=m: m(x), precision=precision))
            arms.append(
                Arm("qk" + suffix, est, lambda x, p, e=est: e(x, p), store.read, cfg.prefetch, precision=precision)
            )
            evals["traditional" + suffix], evals["qk" + suffix] = m, DecoupledModel(selector, est)
        for a in arms:  # the protocol's optimiser: the SGDConfig defaults
            a.opt = torch.optim.SGD(a.trainable.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        curves = {a.name: [] for a in arms}
        clock = {a.name: phase3_s if a.name.startswith("qk") else 0.0 for a in arms}
        for e in range(proto.epochs):
            order = epoch_order(idx, cfg.seed, e)
            seconds, _ = interleaved_epoch(arms, dataset, order, cfg.batch_size, e)
            for a, sec in zip(arms, seconds):
                clock[a.name] += sec
                acc = evaluate(evals[a.name], dataset, proto.eval_samples)["val_accuracy"]
                curves[a.name].append({"epoch": e + 1, "seconds": clock[a.name], "val_accuracy": acc})
            log(f"  epoch {e + 1}: " + ", ".join(f"{n} {c[-1]['val_accuracy']:.4f}" for n, c in curves.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"protocol": asdict(proto), "data": dataset.source, "pretrained_val_accuracy": pretrained}
    out["phase3_s"] = phase3_s
    out["curves"] = curves
    for precision in cfg.precisions:
        suffix = "" if precision == "fp32" else "_bf16"
        trad, qk = curves["traditional" + suffix], curves["qk" + suffix]
        target = trad[-1]["val_accuracy"]
        trad_s = next(c["seconds"] for c in trad if c["val_accuracy"] >= target)
        reached = next((c for c in qk if c["val_accuracy"] >= target), None)
        out[precision] = {
            "traditional_final_val_accuracy": target,
            "traditional_seconds_to_target": trad_s,
            "qk_final_val_accuracy": qk[-1]["val_accuracy"],
            "qk_best_val_accuracy": max(c["val_accuracy"] for c in qk),
            "qk_seconds_to_target": reached["seconds"] if reached else None,
            "qk_over_traditional_time_to_target": reached["seconds"] / trad_s if reached else None,
        }
    if "bf16" in cfg.precisions and "fp32" in cfg.precisions:
        out["bf16_minus_fp32_points"] = {
            m: 100 * (curves[m + "_bf16"][-1]["val_accuracy"] - curves[m][-1]["val_accuracy"])
            for m in ("traditional", "qk")
        }
    return out


def run(cfg: BenchConfig, dataset: Dataset | None = None, log: Callable[[str], None] = print) -> dict:
    """All measurements of `cfg`; `dataset` (real data) is needed for the time-to-accuracy protocol only."""
    started = time.perf_counter()
    machine = machine_info()
    machine["note"] = (
        "timings are medians of interleaved repeats in one process; compare them only as ratios within this run"
    )
    peak_samples: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def measure_peaks() -> None:
        for _ in range(2):
            peak_samples["fp32"] += matmul_flops(torch.float32, cfg.matmul_size)
            peak_samples["bf16"] += matmul_flops(torch.bfloat16, cfg.matmul_size)

    measure_peaks()
    peaks = {p: max(v) for p, v in peak_samples.items()}  # updated after the models, below
    result: dict = {"machine": machine, "config": _config_dict(cfg), "models": {}}
    for name in cfg.models:
        result["models"][name] = bench_model(name, cfg, peaks, log)
    measure_peaks()
    final = {p: max(v) for p, v in peak_samples.items()}
    for metrics in result["models"].values():  # re-base shares on the peak over the whole run
        for a in metrics["achieved_flops"].values():
            a["share_of_matmul_peak"] = a["flops_per_s"] / final[a["precision"]]
    machine["matmul_peak_flops"] = final
    machine["matmul_median_flops"] = {p: statistics.median(v) for p, v in peak_samples.items()}
    machine["matmul_size"] = cfg.matmul_size
    if cfg.accuracy is not None:
        if dataset is None:
            result["time_to_accuracy"] = {"skipped": "no real data given"}
        else:
            result["time_to_accuracy"] = accuracy_protocol(dataset, cfg.accuracy, cfg, log)
    machine["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - started
    result["targets"] = targets(result)
    return result


def _config_dict(cfg: BenchConfig) -> dict:
    d = asdict(cfg)
    d["models"], d["precisions"], d["levers"] = list(cfg.models), list(cfg.precisions), list(cfg.levers)
    return d


def main_from_args(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    dataset = None
    if cfg.accuracy is not None:
        from skqk.data import load_dataset

        if args.data_dir or os.environ.get("SKQK_DATA"):
            dataset = load_dataset(args.data_dir, args.cache_dir, download=False, progress=False)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = run(cfg, dataset, log)
    result["command"] = " ".join(["skqk bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv)
    table = markdown(result)
    print(table)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description="QK-only vs traditional re-training benchmark")
    add_arguments(parser)
    main_from_args(parser.parse_args(argv))
    return 0
