"""Time to the traditional method's best validation accuracy on a frozen SK: every `skqk retrain` method from one
checkpoint, same samples, same seed, the methods of a seed run one after the other in an order that rotates with
the seed (interleaved by run: a slow phase of a shared machine does not hit one method only).

An epoch's time is what the run logs (training and evaluation, the Fig. 5 protocol); a QK method's clock starts
with, for ``ridge-head``, the head's solve (config.json). Recording the patterns (Phase 3) is timed once and
reported beside: one store serves every seed and method, and every later run on that SK.

Usage: ``python benchmarks/time_to_accuracy.py --checkpoint RUN/model.pt --samples 16384 --seeds 0,1,2
--out /tmp/tta`` writes OUT/results.json and OUT/anytime.png (validation accuracy against wall time per method).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from skqk.data import load_dataset
from skqk.pipeline.config import RetrainConfig
from skqk.pipeline.record import record_from_checkpoint
from skqk.pipeline.retrain import retrain

# name -> RetrainConfig fields; "patience" is set from --patience for the QK methods with early stopping
METHODS = {
    "traditional": {"method": "traditional"},
    "qk-sgd": {"method": "qk"},
    "qk-ridge-head": {"method": "qk", "optimizer": "ridge-head", "patience": None},
}


def curve(run_dir: Path, start_s: float) -> list[dict]:
    """(epoch, its seconds, cumulative seconds, validation accuracy) of a finished run, the clock starting at
    `start_s`."""
    clock, points = start_s, []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        clock += m["seconds"]
        points.append(
            {"epoch": m["epoch"], "epoch_s": m["seconds"], "seconds": clock, "val_accuracy": m["val_accuracy"]}
        )
    return points


def seconds_to(points: list[dict], target: float) -> float | None:
    return next((p["seconds"] for p in points if p["val_accuracy"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="model.pt of the pre-trained run (the SK)")
    parser.add_argument("--samples", type=int, default=16384, help="N: samples re-trained on (default 16384)")
    parser.add_argument("--epochs", type=int, default=10, help="re-training epochs (default 10)")
    parser.add_argument("--eval-samples", type=int, default=2000, help="validation samples per epoch (default 2000)")
    parser.add_argument("--patience", type=int, default=3, help="early stopping of qk-ridge-head (default 3)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated re-training seeds (default 0,1,2)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default {','.join(METHODS)})")
    parser.add_argument("--out", required=True, help="results folder (results.json, anytime.png, the runs)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(progress=False)
    shutil.rmtree(out / "store", ignore_errors=True)
    start = time.perf_counter()
    record_from_checkpoint(args.checkpoint, dataset, args.samples, out / "store", progress=False)
    phase3_s = time.perf_counter() - start
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.methods.split(",")
    if "traditional" not in names or not set(names) <= set(METHODS):
        parser.error(f"--methods: traditional and any of {', '.join(METHODS)}")
    runs = []
    for turn, seed in enumerate(seeds):
        curves = {}
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            fields = {k: args.patience if v is None else v for k, v in METHODS[name].items()}
            cfg = RetrainConfig(
                samples=args.samples, epochs=args.epochs, eval_samples=args.eval_samples, seed=seed, **fields
            )
            run_dir = out / f"seed{seed}-{name}"
            shutil.rmtree(run_dir, ignore_errors=True)
            store = out / "store" if cfg.method == "qk" else None
            retrain(cfg, args.checkpoint, dataset, run_dir, store=store, progress=False)
            solve = json.loads((run_dir / "config.json").read_text()).get("head_solve", {})
            curves[name] = curve(run_dir, solve.get("seconds", 0.0))
            print(f"seed {seed} {name}: best {max(p['val_accuracy'] for p in curves[name]):.4f}", flush=True)
        target = max(p["val_accuracy"] for p in curves["traditional"])
        to_target = {n: seconds_to(c, target) for n, c in curves.items()}
        ratio = {n: t / to_target["traditional"] if t is not None else None for n, t in to_target.items()}
        with_phase3 = {
            n: (t + phase3_s * (n != "traditional")) / to_target["traditional"] if t is not None else None
            for n, t in to_target.items()
        }
        best = {n: max(p["val_accuracy"] for p in c) for n, c in curves.items()}
        epoch_s = {n: statistics.median(p["epoch_s"] for p in c) for n, c in curves.items()}
        runs.append(
            {
                "seed": seed,
                "target": target,
                "seconds_to_target": to_target,
                "over_traditional": ratio,
                "over_traditional_with_phase3": with_phase3,
                "best_val_accuracy": best,
                "epoch_s_median": epoch_s,
                "curves": curves,
            }
        )
    summary = {}
    for name in names:
        ratios = [r["over_traditional"][name] for r in runs if r["over_traditional"][name] is not None]
        summary[name] = {
            "reached": f"{len(ratios)}/{len(runs)}",
            "over_traditional_median": statistics.median(ratios) if ratios else None,
            "over_traditional_range": [min(ratios), max(ratios)] if ratios else None,
            "over_traditional_with_phase3_median": statistics.median(
                [r["over_traditional_with_phase3"][name] for r in runs if r["over_traditional"][name] is not None]
                or [float("nan")]
            ),
            "best_val_accuracy_mean": statistics.mean(r["best_val_accuracy"][name] for r in runs),
            "epoch_over_traditional": [r["epoch_s_median"][name] / r["epoch_s_median"]["traditional"] for r in runs],
        }
    result = {"command": vars(args), "data": dataset.source, "phase3_s": phase3_s, "runs": runs, "summary": summary}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    plot(runs, out / "anytime.png")
    print(json.dumps(summary, indent=2))


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colours = dict(zip(METHODS, ("tab:gray", "tab:blue", "tab:orange")))
    for r in runs:
        for name, points in r["curves"].items():
            ax.plot(
                [p["seconds"] for p in points],
                [p["val_accuracy"] for p in points],
                marker=".",
                color=colours[name],
                alpha=0.8,
                label=name if r is runs[0] else None,
            )
        ax.axhline(r["target"], color="tab:gray", lw=0.5, ls=":")
    ax.set_xlabel("wall time, s (training + evaluation per epoch; ridge-head: + its solve; Phase 3 not included)")
    ax.set_ylabel("validation accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
