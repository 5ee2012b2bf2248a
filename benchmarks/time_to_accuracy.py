"""Time to the traditional method's best validation accuracy on a frozen SK: every `skqk retrain` method and the
plain PyTorch fine-tune a user writes by hand (`skqk.bench.plain`) from one checkpoint, same samples, same seed,
the methods of a seed run one after the other in an order that rotates with the seed (interleaved by run: a slow
phase of a shared machine does not hit one method only).

An epoch's time is what the run logs (training and evaluation, the Fig. 5 protocol); a QK method's clock starts
with, for ``ridge-head`` and ``ce-head``, the head's solve (config.json), and adds every SK refresh's cost
(re-recording the patterns) to the epoch it happened in. Recording the patterns (Phase 3) is timed once and
reported beside: one store serves every seed and method, and every later run on that SK. Ratios are to the
traditional run and to the plain fine-tune of the same seed; where the plain fine-tune never reaches the target,
its whole run is the reference and the ratios are upper bounds (``pytorch_reached`` false).

Usage: ``python benchmarks/time_to_accuracy.py --checkpoint RUN/model.pt --samples 16384 --seeds 0,1,2
--out /tmp/tta`` writes OUT/results.json and OUT/anytime.png (validation accuracy against wall time per method).
A stopped run continues with ``--resume`` (same checkpoint, N, epochs, validation samples and patience; other
seeds or methods may be added): finished runs are kept, a `retrain` run continues from its last epoch, an
unfinished plain fine-tune starts again; every epoch keeps the seconds it took when it ran.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from skqk.atomic import atomic_write_text
from skqk.bench.plain import PlainPyTorchArm
from skqk.data import epoch_order, load_dataset
from skqk.pipeline.checkpoint import build_network, load_model_checkpoint, model_kwargs
from skqk.pipeline.config import RetrainConfig
from skqk.pipeline.loop import evaluate
from skqk.pipeline.record import record_from_checkpoint
from skqk.pipeline.retrain import retrain, training_indices
from skqk.pipeline.rundir import file_sha256

# name -> RetrainConfig fields; "patience" is set from --patience for the QK methods with early stopping;
# "pytorch" is not a retrain method but the plain fine-tune (`plain_fine_tune`) with the same settings
METHODS = {
    "traditional": {"method": "traditional"},
    "pytorch": {"method": "traditional"},
    "qk-sgd": {"method": "qk"},
    "qk-ridge-head": {"method": "qk", "optimizer": "ridge-head", "patience": None},
    "qk-ce-head": {"method": "qk", "optimizer": "ce-head", "patience": None},
    "qk-sgd-refresh": {"method": "qk", "sk_refresh": "auto"},  # `retrain --sk-refresh auto`
}


def plain_fine_tune(cfg: RetrainConfig, checkpoint: str, dataset, run_dir: Path) -> None:
    """The checkpoint's network fine-tuned by `PlainPyTorchArm` (torch.optim.SGD, default layout, eager) on the
    run's samples in its batch order; each epoch's metrics and seconds (training + evaluation) go to
    ``run_dir/metrics.jsonl`` as `retrain` logs them."""
    net = build_network(load_model_checkpoint(checkpoint, fits=model_kwargs(dataset)), path=checkpoint)
    torch.manual_seed(cfg.seed)  # dropout, as `retrain` seeds it
    arm = PlainPyTorchArm("pytorch", net, lambda x, p: net(x), sgd=cfg)
    indices = training_indices(dataset.train.labels, cfg, dataset.train.ordered)
    run_dir.mkdir(parents=True)
    lines = []
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        arm.epoch(dataset, epoch_order(indices, cfg.seed, epoch), cfg.batch_size)
        metrics = evaluate(net, dataset, cfg.eval_samples)
        lines.append(json.dumps({"epoch": epoch + 1, **metrics, "seconds": time.perf_counter() - start}) + "\n")
        atomic_write_text(run_dir / "metrics.jsonl", "".join(lines))  # whole epochs only: `finished` counts them


def finished(run_dir: Path, epochs: int) -> bool:
    log = run_dir / "metrics.jsonl"
    return log.exists() and len(log.read_text().splitlines()) == epochs


def curve(run_dir: Path, start_s: float) -> list[dict]:
    """(epoch, its seconds, cumulative seconds, validation accuracy) of a finished run, the clock starting at
    `start_s`; an SK refresh's seconds count in its epoch's."""
    clock, points = start_s, []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        seconds = m["seconds"] + m.get("sk_refresh", {}).get("seconds", 0.0)
        clock += seconds
        points.append({"epoch": m["epoch"], "epoch_s": seconds, "seconds": clock, "val_accuracy": m["val_accuracy"]})
    return points


def seconds_to(points: list[dict], target: float) -> float | None:
    return next((p["seconds"] for p in points if p["val_accuracy"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="model.pt of the pre-trained run (the SK)")
    parser.add_argument("--samples", type=int, default=16384, help="N: samples re-trained on (default 16384)")
    parser.add_argument("--epochs", type=int, default=10, help="re-training epochs (default 10)")
    parser.add_argument("--eval-samples", type=int, default=2000, help="validation samples per epoch (default 2000)")
    parser.add_argument(
        "--patience", type=int, default=3, help="early stopping of qk-ridge-head and qk-ce-head (default 3)"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated re-training seeds (default 0,1,2)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default {','.join(METHODS)})")
    parser.add_argument("--out", required=True, help="results folder (results.json, anytime.png, the runs)")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs in --out, continue the others")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    protocol = {k: getattr(args, k) for k in ("samples", "epochs", "eval_samples", "patience")}
    protocol["checkpoint_sha256"] = file_sha256(args.checkpoint)
    saved = out / "protocol.json"
    if args.resume and saved.exists() and json.loads(saved.read_text()) != protocol:
        parser.error(f"--resume: {out} holds runs of another checkpoint or protocol ({saved}); choose another --out")
    atomic_write_text(saved, json.dumps(protocol, indent=2))
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
            if name == "pytorch":
                if not (args.resume and finished(run_dir, cfg.epochs)):
                    shutil.rmtree(run_dir, ignore_errors=True)
                    plain_fine_tune(cfg, args.checkpoint, dataset, run_dir)
                curves[name] = curve(run_dir, 0.0)
            else:
                if not args.resume:
                    shutil.rmtree(run_dir, ignore_errors=True)
                store = out / "store" if cfg.method == "qk" else None
                retrain(cfg, args.checkpoint, dataset, run_dir, store=store, resume=args.resume, progress=False)
                solve = json.loads((run_dir / "config.json").read_text()).get("head_solve", {})
                curves[name] = curve(run_dir, solve.get("seconds", 0.0))
            print(f"seed {seed} {name}: best {max(p['val_accuracy'] for p in curves[name]):.4f}", flush=True)
        runs.append(compare(seed, curves, phase3_s))
        result = {"command": vars(args), "data": dataset.source, "phase3_s": phase3_s, "runs": runs}
        result["summary"] = summarise(runs, names)  # after every seed: a stopped run keeps what finished
        atomic_write_text(out / "results.json", json.dumps(result, indent=2))
        plot(runs, out / "anytime.png")
    print(json.dumps(result["summary"], indent=2))


def compare(seed: int, curves: dict[str, list[dict]], phase3_s: float) -> dict:
    """One seed's seconds to the target (the traditional run's best) and their ratios to the traditional run and
    to the plain fine-tune; ``_with_phase3``: a QK method's time with recording its store added."""
    target = max(p["val_accuracy"] for p in curves["traditional"])
    to_target = {n: seconds_to(c, target) for n, c in curves.items()}
    references = {"traditional": to_target["traditional"]}
    run = {"seed": seed, "target": target, "seconds_to_target": to_target}
    if "pytorch" in curves:  # never reached: its whole run, so the ratios over it are upper bounds
        references["pytorch"] = to_target["pytorch"] or curves["pytorch"][-1]["seconds"]
        run["pytorch_reached"] = to_target["pytorch"] is not None
    for ref, ref_s in references.items():
        run[f"over_{ref}"] = {n: t / ref_s if t is not None else None for n, t in to_target.items()}
        run[f"over_{ref}_with_phase3"] = {
            n: (t + phase3_s * (METHODS[n]["method"] == "qk")) / ref_s if t is not None else None
            for n, t in to_target.items()
        }
    epoch_s = {n: statistics.median(p["epoch_s"] for p in c) for n, c in curves.items()}
    run["best_val_accuracy"] = {n: max(p["val_accuracy"] for p in c) for n, c in curves.items()}
    run["epoch_s_median"] = epoch_s
    run["curves"] = curves
    return run


def summarise(runs: list[dict], names: list[str]) -> dict:
    """Per method over the seeds: how often it reached the target, median and range of its ratios."""
    summary = {}
    for name in names:
        reached = [r for r in runs if r["seconds_to_target"][name] is not None]
        summary[name] = {"reached": f"{len(reached)}/{len(runs)}"}
        for ref in ("traditional", "pytorch"):
            if f"over_{ref}" not in runs[0]:
                continue
            ratios = [r[f"over_{ref}"][name] for r in reached]
            summary[name][f"over_{ref}_median"] = statistics.median(ratios) if ratios else None
            summary[name][f"over_{ref}_range"] = [min(ratios), max(ratios)] if ratios else None
            summary[name][f"over_{ref}_with_phase3_median"] = (
                statistics.median(r[f"over_{ref}_with_phase3"][name] for r in reached) if reached else None
            )
            summary[name][f"epoch_over_{ref}"] = [r["epoch_s_median"][name] / r["epoch_s_median"][ref] for r in runs]
        summary[name]["best_val_accuracy_mean"] = statistics.mean(r["best_val_accuracy"][name] for r in runs)
    return summary


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colours = dict(zip(METHODS, ("tab:gray", "black", "tab:blue", "tab:orange", "tab:red", "tab:green")))
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
    ax.set_xlabel("wall time, s (train + evaluate, + head solve, + SK refreshes; no Phase 3)")
    ax.set_ylabel("validation accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
