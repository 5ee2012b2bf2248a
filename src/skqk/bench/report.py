"""The benchmark's result as markdown tables (its acceptance targets live in docs/benchmarks.md, not here)."""

from __future__ import annotations


def _fmt(v, digits=3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if abs(v) >= 1e9:
            return f"{v / 1e9:.1f} G"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _ratio(m: dict, key: str) -> str:
    """A ratio with its run-to-run spread: the median of the per-round ratios [smallest–largest]."""
    if m.get(key) is None:
        return "—"
    low, high = m.get("spread", {}).get(key, (None, None))
    return f"{m[key]:.3f}" + (f" [{low:.3f}–{high:.3f}]" if low is not None else "")


def markdown(result: dict) -> str:
    mach = result["machine"]
    cfg = result["config"]
    lines = [
        *(
            [
                "**Smoke run (`--quick`): rounds of one short epoch; its ratios swing between runs and are not "
                "comparable with any other run's.**",
                "",
            ]
            if cfg.get("smoke")
            else []
        ),
        f"Machine: {mach['cpu']}, {mach['usable_cores']} usable cores, torch {mach['torch']} "
        f"({mach['cpu_capability']}, flags: {', '.join(mach['cpu_flags'])}), {mach['torch_threads']} threads; "
        f"load average {mach['loadavg_start'][0]:.1f} at start, {mach['loadavg_end'][0]:.1f} at end "
        f"(shared machine).",
        f"Dense matmul peak ({mach['matmul_size']}³): fp32 {_fmt(mach['matmul_peak_flops']['fp32'])}FLOP/s, "
        f"bf16 {_fmt(mach['matmul_peak_flops']['bf16'])}FLOP/s.",
        "",
        "`pytorch`: a plain PyTorch eager fine-tune (default layout, torch.optim.SGD); `traditional` / `QK`: what "
        "`skqk retrain --method traditional` / `--method qk` run by default (fused SGD, the model's layout, "
        "QK with dead units removed).",
        "",
        f"Every ratio: the median over {cfg['repeats']} interleaved rounds (each at least {cfg['round_s']:g} s of "
        "plain PyTorch training, in whole epochs) of the per-round ratio, [smallest–largest] per-round ratio.",
        "",
        *(
            [
                f"An epoch is its training steps and an evaluation on {cfg['eval_samples']:,} test samples, as in "
                "a Fig. 5 re-training (QK from the validation patterns recorded once).",
                "",
                "| model | PyTorch eval s | skqk trad. eval s | skqk QK eval s | QK eval / trad. eval |",
                "|---|---|---|---|---|",
                *(
                    f"| {name} | {m['eval_s_median']['pytorch']:.3f} | {m['eval_s_median']['traditional']:.3f} | "
                    f"{m['eval_s_median']['qk_store']:.3f} | {_ratio(m, 'qk_eval_over_traditional_eval')} |"
                    for name, m in result["models"].items()
                ),
                "",
            ]
            if cfg.get("eval_samples")
            else []
        ),
        "| model | layout | PyTorch epoch s | skqk trad. epoch s | skqk QK epoch s | QK / PyTorch | QK / trad. "
        "| trad. / PyTorch | e2e QK / PyTorch (Phase 3 + E epochs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        lines.append(
            f"| {name} | {m['layout']} | {m['pytorch_epoch_s']:.3f} | {m['traditional_epoch_s']:.3f} | "
            f"{m['qk_epoch_s']:.3f} | **{_ratio(m, 'qk_over_pytorch')}** | {_ratio(m, 'qk_over_traditional')} | "
            f"{_ratio(m, 'traditional_over_pytorch')} | {_ratio(m, 'e2e_over_pytorch')} (E={m['e2e_epochs']}) |"
        )
    lines += [
        "",
        "| model | trad. epoch s | QK (store) epoch s | QK (on-the-fly) epoch s | QK/trad. | on-the-fly/trad. "
        "| Phase 3 samples/s | Phase 3 / training throughput | pattern bytes/sample | store read share (raw / "
        "critical path) | e2e (Phase 3 + E epochs) / trad. |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        lines.append(
            f"| {name} | {m['traditional_epoch_s']:.3f} | {m['qk_epoch_s']:.3f} | {m['qk_fly_epoch_s']:.3f} | "
            f"{_ratio(m, 'qk_over_traditional')} | {_ratio(m, 'qk_fly_over_traditional')} | "
            f"{m['phase3_samples_per_s']:,.0f} | "
            f"{m['phase3_over_training_throughput']:.2f} | {m['pattern_bytes_per_sample']:,} | "
            f"{100 * m['store_read_share_of_qk_step']:.2f}% / {100 * m['store_wait_share_of_qk_step']:.2f}% | "
            f"{_ratio(m, 'e2e_over_traditional')} (E={m['e2e_epochs']}) |"
        )
    lines += [
        "",
        "| model | trad. samples/s | QK samples/s | bf16 trad. epoch s | bf16 QK epoch s | bf16 QK/trad. "
        "| bf16/fp32 trad. | bf16/fp32 QK |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        lines.append(
            f"| {name} | {m['traditional_samples_per_s']:.1f} | {m['qk_samples_per_s']:.1f} | "
            f"{_fmt(m.get('traditional_bf16_epoch_s'))} | {_fmt(m.get('qk_bf16_epoch_s'))} | "
            f"{_ratio(m, 'qk_over_traditional_bf16')} | {_ratio(m, 'bf16_over_fp32_traditional')} | "
            f"{_ratio(m, 'bf16_over_fp32_qk')} |"
        )
    lines += [
        "",
        "| model | method | training MFLOP/sample | achieved GFLOP/s | share of matmul peak |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        for arm, a in m["achieved_flops"].items():
            lines.append(
                f"| {name} | {arm} | {m['training_flops_per_sample'][arm] / 1e6:.1f} | {a['flops_per_s'] / 1e9:.1f} | "
                f"{100 * a['share_of_matmul_peak']:.1f}% ({a['precision']}) |"
            )
    lines += ["", "| model | method | peak extra MB in one step | weights+grads+momentum MB |", "|---|---|---|---|"]
    for name, m in result["models"].items():
        for arm, mem in m["memory"].items():
            lines.append(
                f"| {name} | {arm} | {mem['step_peak_bytes'] / 2**20:.1f} | {mem['state_bytes'] / 2**20:.1f} |"
            )
    lever_rows = [
        (name, k, {**m["levers"], "spread": m.get("spread", {})})
        for name, m in result["models"].items()
        for k in m["levers"]
    ]
    if lever_rows:
        lines += ["", "| model | lever (epoch-time ratio, < 1 = pays) | ratio [spread] |", "|---|---|---|"]
        lines += [f"| {name} | {k} | {_ratio(m, k)} |" for name, k, m in lever_rows]
    for name, m in result["models"].items():
        for arm, ops in m.get("profile_top_ops", {}).items():
            lines += ["", f"Top operators, {name} {arm} (self CPU per step):", "", "| op | ms/step | share | calls |"]
            lines.append("|---|---|---|---|")
            lines += [
                f"| {o['op']} | {o['self_ms_per_step']:.2f} | {100 * o['share']:.1f}% | {o['calls_per_step']:g} |"
                for o in ops
            ]
    lines += [
        "",
        "| model | network | dead-unit share per gate site (inactive for every timed sample) | removed by `retrain` |",
        "|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        shares = ", ".join(f"{s}: {100 * v:.1f}%" for s, v in m["dead_unit_share"].items())
        removed = ", ".join(f"{s}: {r['removed']}/{r['units']}" for s, r in m["removed_units"].items()) or "none"
        lines.append(f"| {name} | {m['network']} | {shares} | {removed} |")
    acc = result.get("time_to_accuracy")
    if acc and "runs" in acc:
        p = acc["protocol"]
        lines += [
            "",
            f"Time to accuracy ({acc['data']}): {p['model']} pre-trained {p['pretrain_epochs']} epochs on "
            f"{p['pretrain_samples']} samples, then re-trained {p['epochs']} epochs on {p['samples']} samples, "
            f"validation on {p['eval_samples']} test samples after every epoch (not timed), {len(acc['runs'])} seeds; "
            "target: the traditional method's best validation accuracy of that seed; QK time includes Phase 3 and "
            "the dead-unit analysis.",
            "",
            "| precision | seed | pre-trained | target | PyTorch s | skqk trad. s | skqk QK s | QK best | QK / trad. |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for precision in ("fp32", "bf16"):
            for r in acc["runs"]:
                if precision in r:
                    a = r[precision]
                    lines.append(
                        f"| {precision} | {r['seed']} | {r['pretrained_val_accuracy']:.4f} | "
                        f"{a['traditional_best_val_accuracy']:.4f} | {_fmt(a['pytorch_seconds_to_target'])} | "
                        f"{_fmt(a['traditional_seconds_to_target'])} | {_fmt(a['qk_seconds_to_target'])} | "
                        f"{_fmt(a.get('qk_best_val_accuracy'))} | {_fmt(a['qk_over_traditional_time_to_target'])} |"
                    )
            if precision in acc:
                s = acc[precision]
                cells = [
                    f"{s[m]['reached']} reached, {_fmt(s[m]['seconds_mean'])} ± {_fmt(s[m]['seconds_std'])} s"
                    for m in ("pytorch", "traditional", "qk")
                ]
                lines.append(
                    f"| {precision} | mean ± std | | | {' | '.join(cells)} | | {_fmt(s['qk_over_traditional_mean'])} |"
                )
        diffs = [d for r in acc["runs"] for d in r.get("pruned_minus_all_units_val_accuracy", [])]
        removed = sum(r["removed"] for run in acc["runs"] for r in run["removed_units"].values())
        lines += [
            "",
            f"QK with dead units removed ({removed} units over the seeds) vs all units: largest |val accuracy "
            f"difference| over {len(diffs)} evaluations: {max(map(abs, diffs), default=0):.4f}.",
        ]
        if "bf16_minus_fp32_points" in acc:
            d = acc["bf16_minus_fp32_points"]
            lines.append("")
            lines.append(
                "bf16 − fp32 final val accuracy (points, mean over seeds): "
                + ", ".join(f"{m} {v:+.2f}" for m, v in d.items())
            )
    elif acc:
        lines += ["", f"Time to accuracy: skipped ({acc.get('skipped')})."]
    lines.append("")
    lines.append(f"Wall time of the benchmark: {result['wall_s']:.0f} s.")
    return "\n".join(lines)
