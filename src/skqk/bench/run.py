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
import contextlib
import copy
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from skqk import models
from skqk.bench.arms import Arm, interleaved_epoch, make_arms, synthetic_dataset, timed_evaluation
from skqk.bench.measure import (
    dead_units,
    matmul_flops,
    peak_memory,
    state_bytes,
    step_flops,
    top_operators,
)
from skqk.bench.protocol import AccuracyProtocol, BenchConfig, add_arguments, config_from_args
from skqk.bench.report import markdown
from skqk.bench.trained import trained_checkpoint
from skqk.data import Dataset, epoch_order, subset_indices
from skqk.data.cache import cache_root
from skqk.data.sampling import batch_indices
from skqk.decoupled import DecoupledModel
from skqk.pipeline.checkpoint import build_network, load_model_checkpoint, model_kwargs
from skqk.pipeline.config import SGDConfig
from skqk.pipeline.provenance import machine_info
from skqk.pipeline.record import record
from skqk.selector import build_selector


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_model(
    name: str, cfg: BenchConfig, peaks: dict[str, float], log: Callable[[str], None], real: Dataset | None = None
) -> dict:
    """Every arm of `name` timed on the same batches. With `real` data and ``cfg.trained``: the network trained
    on it (`skqk.bench.trained`, cached) and its first ``cfg.samples`` training samples; else a randomly
    initialised network on synthetic data (the same cost per step, but other dead units)."""
    torch.manual_seed(cfg.seed)
    if real is not None and cfg.trained:
        checkpoint = trained_checkpoint(name, real, cache_root(), log)
        net = build_network(load_model_checkpoint(checkpoint, fits=model_kwargs(real)), path=str(checkpoint))
        dataset, indices = real, subset_indices(real.train.labels, cfg.samples, 0)
    else:
        checkpoint, net = None, models.build(name)
        dataset = synthetic_dataset(cfg.samples, cfg.seed, test_samples=max(64, cfg.eval_samples))
        indices = torch.arange(cfg.samples)
    tmp = Path(tempfile.mkdtemp(prefix="skqk-bench-"))
    other = "frozen" if cfg.pooling == "live" else "live"
    poolings = [cfg.pooling] + ([other] if {"pooling", "fusion"} & set(cfg.levers) else [])
    selectors, stores = {}, {}
    try:
        for pooling in poolings:
            selectors[pooling] = build_selector(copy.deepcopy(net).eval(), pooling)
            stores[pooling] = record(selectors[pooling], dataset, indices, tmp / f"store-{pooling}", progress=False)
        arms = make_arms(net, cfg, selectors, stores, indices, name)
        log(f"{name}: {len(arms)} arms x {cfg.repeats} rounds (+1 warm-up) of {cfg.samples} samples")
        times: dict[str, list[float]] = {a.name: [] for a in arms}
        waits: dict[str, list[float]] = {a.name: [] for a in arms}
        evals: dict[str, list[float]] = {a.name: [] for a in arms}
        evaluations = [timed_evaluation(a, dataset, cfg.eval_samples) for a in arms] if cfg.eval_samples else []
        phase3: list[float] = []
        reads: list[float] = []
        epochs_per_round = 1
        for r in range(cfg.repeats + 1):
            seconds, read_waits, eval_s = [0.0] * len(arms), [0.0] * len(arms), [0.0] * len(arms)
            for e in range(epochs_per_round):
                order = epoch_order(indices, cfg.seed, r * epochs_per_round + e)
                for i, (sec, wait) in enumerate(zip(*interleaved_epoch(arms, dataset, order, cfg.batch_size, r + e))):
                    seconds[i], read_waits[i] = seconds[i] + sec, read_waits[i] + wait
                if evaluations:  # the epoch's evaluation, arm by arm in a rotating order
                    shift = (r + e) % len(arms)
                    for i in [*range(shift, len(arms)), *range(shift)]:
                        spent, _ = evaluations[i]()
                        seconds[i], eval_s[i] = seconds[i] + spent, eval_s[i] + spent
            if not r:  # the warm-up round sizes the timed ones: whole epochs, `cfg.round_s` of plain PyTorch
                plain = seconds[[a.name for a in arms].index("pytorch")]
                epochs_per_round = max(1, math.ceil(cfg.round_s / plain))
                log(f"  rounds of {epochs_per_round} epoch(s) of {cfg.samples} samples per arm")
            else:  # per epoch: the mean over the round's epochs
                for arm, sec, wait, ev in zip(arms, seconds, read_waits, eval_s):
                    times[arm.name].append(sec / epochs_per_round)
                    waits[arm.name].append(wait / epochs_per_round)
                    evals[arm.name].append(ev / epochs_per_round)
            start = time.perf_counter()
            record(selectors[cfg.pooling], dataset, indices, tmp / f"phase3-{r}", progress=False)
            if r:
                phase3.append(time.perf_counter() - start)
            shutil.rmtree(tmp / f"phase3-{r}", ignore_errors=True)
            start = time.perf_counter()
            for idx in batch_indices(order, cfg.batch_size):
                stores[cfg.pooling].read(idx)
            if r:
                reads.append(time.perf_counter() - start)
            if r:
                log(f"  round {r}: " + ", ".join(f"{a.name} {times[a.name][-1]:.2f}s" for a in arms))
        by_name = {a.name: a for a in arms}
        idx = indices[: cfg.batch_size]
        flops, memory = {}, {}
        for n in ("pytorch", "traditional", "qk_store", "qk_fly", "traditional_bf16", "qk_store_bf16"):
            if n in by_name:
                arm = by_name[n]
                x, y = arm.inputs(dataset, idx)
                with in_epoch(arm):  # QK as it trains: dead units removed
                    flops[n] = step_flops(arm, dataset, idx)
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
            for n in ("pytorch", "traditional", "qk_store", "qk_store_frozen"):
                if n in by_name:
                    with in_epoch(by_name[n]):
                        profiles[n] = top_operators(by_name[n], dataset, idx)
        dead = dead_units(stores[cfg.pooling], indices)
        store = stores[cfg.pooling]
        setup_s = by_name["qk_store"].setup_s
        metrics = _model_metrics(cfg, times, waits, phase3, reads, flops, memory, peaks, store, dead, setup_s)
        if evaluations:  # the epochs above include them; their own share, QK's from its recorded patterns
            metrics["eval_samples"] = cfg.eval_samples
            metrics["eval_s_median"] = {n: _median(v) for n, v in evals.items()}
            per_round = [q / t for q, t in zip(evals["qk_store"], evals["traditional"])]
            metrics["qk_eval_over_traditional_eval"] = _median(per_round)
            metrics["spread"]["qk_eval_over_traditional_eval"] = [min(per_round), max(per_round)]
        metrics["network"] = str(checkpoint) if checkpoint else "random initialisation"
        metrics["data"] = dataset.source
        metrics["layout"] = "channels_last" if by_name["traditional"].channels_last else "contiguous"
        metrics["removed_units"] = by_name["qk_store"].removed_units
        metrics["dead_unit_analysis_s"] = by_name["qk_store"].setup_s
        metrics["removal_s_per_epoch"] = removal_seconds(by_name["qk_store"])
        if profiles:
            metrics["profile_top_ops"] = profiles
        return metrics
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def in_epoch(arm: Arm) -> contextlib.AbstractContextManager:
    """The state `arm` trains in during an epoch (for QK: without its dead units)."""
    return arm.epoch_context(arm.opt) if arm.epoch_context is not None else contextlib.nullcontext()


def removal_seconds(arm: Arm, repeats: int = 3) -> float:
    """Median seconds of removing the dead units and restoring the full-size network once (no step between):
    the per-epoch cost of dead-unit removal, included in the QK epoch times."""
    if arm.epoch_context is None:
        return 0.0
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with arm.epoch_context(arm.opt):
            pass
        times.append(time.perf_counter() - start)
    return _median(times)


def _model_metrics(cfg, times, waits, phase3, reads, flops, memory, peaks, store, dead, setup_s) -> dict:
    """Medians and ratios; end-to-end QK = Phase 3 + the dead-unit analysis (`setup_s`) + E epochs.

    A ratio of two arms is the median of its per-round ratios (the arms of a round ran interleaved, under the same
    load), and its run-to-run spread, the smallest and largest per-round ratio, goes into ``spread`` by its key.
    """
    med = {n: _median(v) for n, v in times.items()}
    spread: dict[str, list[float]] = {}

    def ratio(key: str, arm: str, base: str) -> float:
        per_round = [a / b for a, b in zip(times[arm], times[base])]
        spread[key] = [min(per_round), max(per_round)]
        return _median(per_round)

    def e2e(key: str, base: str) -> float:  # Phase 3 was timed in every round too
        per_round = [(p + setup_s + e * q) / (e * b) for p, q, b in zip(phase3, times["qk_store"], times[base])]
        spread[key] = [min(per_round), max(per_round)]
        return _median(per_round)

    steps = -(-cfg.samples // cfg.batch_size)
    plain, trad, qk, fly = med["pytorch"], med["traditional"], med["qk_store"], med["qk_fly"]
    phase3_s = _median(phase3)
    train_sps = cfg.samples / trad
    e = cfg.e2e_epochs
    e2e_qk = phase3_s + setup_s + e * qk
    out = {
        "pytorch_epoch_s": plain,
        "qk_over_pytorch": ratio("qk_over_pytorch", "qk_store", "pytorch"),
        "traditional_over_pytorch": ratio("traditional_over_pytorch", "traditional", "pytorch"),
        "e2e_over_pytorch": e2e("e2e_over_pytorch", "pytorch"),
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
        "qk_over_traditional": ratio("qk_over_traditional", "qk_store", "traditional"),
        "qk_fly_over_traditional": ratio("qk_fly_over_traditional", "qk_fly", "traditional"),
        "phase3_s": phase3_s,
        "phase3_samples_per_s": cfg.samples / phase3_s,
        "phase3_over_training_throughput": (cfg.samples / phase3_s) / train_sps,
        "pattern_bytes_per_sample": store.bytes_per_sample,
        "pattern_sites": len(store.sites),
        "store_read_s_per_step": _median(reads) / steps,
        "store_read_share_of_qk_step": _median(reads) / qk,
        "store_wait_share_of_qk_step": _median(waits["qk_store"]) / qk,
        "e2e_epochs": cfg.e2e_epochs,
        "e2e_qk_s": e2e_qk,
        "e2e_traditional_s": e * trad,
        "e2e_over_traditional": e2e("e2e_over_traditional", "traditional"),
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
        out["qk_over_traditional_bf16"] = ratio("qk_over_traditional_bf16", "qk_store_bf16", "traditional_bf16")
        out["bf16_over_fp32_traditional"] = ratio("bf16_over_fp32_traditional", "traditional_bf16", "traditional")
        out["bf16_over_fp32_qk"] = ratio("bf16_over_fp32_qk", "qk_store_bf16", "qk_store")
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
        **{
            f"{n} threads / {torch.get_num_threads()} threads, {label}": (f"{arm}_{n}threads", arm)
            for n in (1, os.cpu_count())
            for arm, label in (("traditional", "traditional"), ("qk_store", "QK"))
        },
    }.items():
        if arm in med and base in med:
            levers[name] = ratio(name, arm, base)
    if "qk_store_all_units" in med:
        out["qk_all_units_over_traditional"] = ratio(
            "qk_all_units_over_traditional", "qk_store_all_units", "traditional"
        )
        name = "dead units removed / all units, QK"
        levers[name] = ratio(name, "qk_store", "qk_store_all_units")
    if "qk_store_frozen" in med:
        out["qk_frozen_over_traditional"] = ratio("qk_frozen_over_traditional", "qk_store_frozen", "traditional")
    if cfg.pooling == "frozen" and "qk_store_frozen_unfused" in med:
        name = "fused ReLU+pool gate / separate gates (frozen pooling), QK"
        levers[name] = ratio(name, "qk_store", "qk_store_frozen_unfused")
    for arm, base, name in (
        ("traditional_cl", "traditional", "channels_last / contiguous, traditional"),
        ("qk_store_cl", "qk_store", "channels_last / contiguous, QK"),
        ("traditional", "traditional_contiguous", "channels_last / contiguous, traditional"),
        ("qk_store", "qk_store_contiguous", "channels_last / contiguous, QK"),
        ("qk_store", "qk_store_nchw_masks", "masks in the activations' layout / NCHW masks, QK channels_last"),
        ("traditional", "traditional_loop_sgd", "fused SGD / for-loop SGD, traditional"),
        ("qk_store", "qk_store_loop_sgd", "fused SGD / for-loop SGD, QK"),
        ("traditional", "pytorch", "skqk traditional (all levers) / plain PyTorch"),
    ):
        if arm in med and base in med:
            levers[name] = ratio(name, arm, base)
    out["levers"] = levers
    out["spread"] = spread
    return out


def accuracy_protocol(dataset: Dataset, proto: AccuracyProtocol, cfg: BenchConfig, log) -> dict:
    """For each of `proto.seeds` seeds: pre-train briefly, record the patterns (Phase 3, timed), then re-train
    with every method epoch by epoch, interleaved, evaluating after each epoch (evaluation not timed). The time
    to reach the traditional method's best validation accuracy is reported per seed and as mean and spread; QK
    time includes Phase 3 and the dead-unit analysis (`Arm.setup_s`)."""
    runs = [_accuracy_run(dataset, proto, cfg, seed, log) for seed in range(cfg.seed, cfg.seed + proto.seeds)]
    out: dict = {"protocol": asdict(proto), "data": dataset.source, "runs": runs}
    for precision in cfg.precisions:
        per_seed = [r[precision] for r in runs]
        summary = {}
        for method in ("pytorch", "traditional", "qk"):
            times = [r[f"{method}_seconds_to_target"] for r in per_seed]
            reached = [t for t in times if t is not None]
            summary[method] = {
                "reached": f"{len(reached)}/{len(times)}",
                "seconds_mean": statistics.mean(reached) if reached else None,
                "seconds_std": statistics.stdev(reached) if len(reached) > 1 else None,
            }
        ratios = [r["qk_over_traditional_time_to_target"] for r in per_seed if r["qk_over_traditional_time_to_target"]]
        summary["qk_over_traditional_mean"] = statistics.mean(ratios) if ratios else None
        out[precision] = summary
    if "bf16" in cfg.precisions and "fp32" in cfg.precisions:
        out["bf16_minus_fp32_points"] = {
            m: statistics.mean(r["bf16_minus_fp32_points"][m] for r in runs) for m in ("traditional", "qk")
        }
    return out


def _accuracy_run(dataset: Dataset, proto: AccuracyProtocol, cfg: BenchConfig, seed: int, log) -> dict:
    from skqk.pipeline.loop import evaluate

    kwargs = model_kwargs(dataset)
    torch.manual_seed(seed)
    net = models.build(proto.model, **kwargs)
    pre_idx = subset_indices(dataset.train.labels, proto.pretrain_samples, 0)
    pre = Arm("pretrain", net, lambda x, p: net(x), sgd=SGDConfig())  # the protocol's optimiser: SGDConfig's
    for e in range(proto.pretrain_epochs):
        pre.epoch(dataset, epoch_order(pre_idx, seed, e), cfg.batch_size)
    pretrained = evaluate(net, dataset, proto.eval_samples)["val_accuracy"]
    log(f"accuracy protocol, seed {seed}: pre-trained {proto.model}, val accuracy {pretrained:.4f}")
    idx = subset_indices(dataset.train.labels, proto.samples, 0)
    tmp = Path(tempfile.mkdtemp(prefix="skqk-bench-acc-"))
    try:
        selector = build_selector(copy.deepcopy(net).eval(), cfg.pooling)
        start = time.perf_counter()
        store = record(selector, dataset, idx, tmp / "store", progress=False)
        phase3_s = time.perf_counter() - start
        arms = make_arms(
            net,
            replace(cfg, levers=("prune",), lr=SGDConfig.lr),
            {cfg.pooling: selector},
            {cfg.pooling: store},
            idx,
            proto.model,
        )
        fp32 = "fp32" in cfg.precisions
        arms = [a for a in arms if a.name == "pytorch" or a.name.endswith("_bf16") or (fp32 and a.name != "qk_fly")]
        evals = {a.name: a.trainable if a.read is None else DecoupledModel(selector, a.trainable) for a in arms}
        curves = {a.name: [] for a in arms}
        clock = {a.name: phase3_s + a.setup_s if a.read is not None else 0.0 for a in arms}
        for e in range(proto.epochs):
            order = epoch_order(idx, seed, e)
            seconds, _ = interleaved_epoch(arms, dataset, order, cfg.batch_size, e)
            for a, sec in zip(arms, seconds):
                clock[a.name] += sec
                acc = evaluate(evals[a.name], dataset, proto.eval_samples)["val_accuracy"]
                curves[a.name].append({"epoch": e + 1, "seconds": clock[a.name], "val_accuracy": acc})
            log(f"  epoch {e + 1}: " + ", ".join(f"{n} {c[-1]['val_accuracy']:.4f}" for n, c in curves.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"seed": seed, "pretrained_val_accuracy": pretrained, "phase3_s": phase3_s, "curves": curves}
    out["removed_units"] = next(a.removed_units for a in arms if a.name == "qk_store")
    if "qk_store_all_units" in curves:  # dead-unit removal is exact: the same accuracy after every epoch
        out["pruned_minus_all_units_val_accuracy"] = [
            a["val_accuracy"] - b["val_accuracy"] for a, b in zip(curves["qk_store"], curves["qk_store_all_units"])
        ]
    for precision in cfg.precisions:
        suffix = "" if precision == "fp32" else "_bf16"
        names = {"pytorch": "pytorch", "traditional": "traditional" + suffix, "qk": "qk_store" + suffix}
        target = max(c["val_accuracy"] for c in curves[names["traditional"]])
        row = {"traditional_best_val_accuracy": target}
        for method, name in names.items():
            if name not in curves:
                row[f"{method}_seconds_to_target"] = None
                continue
            reached = next((c for c in curves[name] if c["val_accuracy"] >= target), None)
            row[f"{method}_seconds_to_target"] = reached["seconds"] if reached else None
            row[f"{method}_best_val_accuracy"] = max(c["val_accuracy"] for c in curves[name])
        qk_s, trad_s = row["qk_seconds_to_target"], row["traditional_seconds_to_target"]
        row["qk_over_traditional_time_to_target"] = qk_s / trad_s if qk_s is not None else None
        out[precision] = row
    if "bf16" in cfg.precisions and "fp32" in cfg.precisions:
        out["bf16_minus_fp32_points"] = {
            m: 100 * (curves[n + "_bf16"][-1]["val_accuracy"] - curves[n][-1]["val_accuracy"])
            for m, n in (("traditional", "traditional"), ("qk", "qk_store"))
        }
    return out


def run(cfg: BenchConfig, dataset: Dataset | None = None, log: Callable[[str], None] = print) -> dict:
    """All measurements of `cfg`; `dataset` (real data) gives trained networks to time (``cfg.trained``) and the
    time-to-accuracy protocol."""
    started = time.perf_counter()
    machine = {**machine_info(), "loadavg_start": list(os.getloadavg())}
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
        result["models"][name] = bench_model(name, cfg, peaks, log, dataset)
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
    if cfg.accuracy is not None or cfg.trained:
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
