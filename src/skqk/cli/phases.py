"""The paper's four phases as commands: train (1), record (2-3), retrain (4, or the traditional baseline), refresh
(a new SK from a QK run) and evaluate."""

from __future__ import annotations

import json
import math

from skqk.cli.options import (
    add_command,
    add_data_options,
    add_device_option,
    add_order_options,
    add_selection_options,
    add_sgd_options,
    add_trust_option,
    class_chunks_of,
    config_from_args,
    json_object,
    load_data,
    sample_range,
    trust_of,
)
from skqk.pipeline.config import RetrainConfig, TrainConfig


def add_train(sub) -> None:
    p = add_command(sub, "train", help="Phase 1: train a zoo network from scratch on n samples")
    p.add_argument(
        "--model",
        help="zoo model: lenet5, alexnet, vgg8 (default lenet5), mlp (tables), or your own as "
        "package.module:callable returning an nn.Module (importable from the current directory or PYTHONPATH; it "
        "gets in_channels, image_size (images) or in_features (tables) and num_classes (1 for regression) where "
        "its signature takes them)",
    )
    p.add_argument(
        "--model-kwargs",
        help="JSON object of options for mlp (width, depth, widths, batchnorm, dropout) or an imported model, e.g. "
        "'{\"widths\": [64, 32]}'; recorded in the checkpoint, so record/retrain/evaluate rebuild the model "
        "without these flags",
    )
    p.add_argument("--samples", type=int, help="n, samples to train on (default 1024)")
    p.add_argument("--out", required=True, help="run folder (model.pt, config.json, metrics.jsonl)")
    add_data_options(p)
    add_sgd_options(p, TrainConfig)
    add_order_options(p)
    add_device_option(p)


def cmd_train(args) -> None:
    from skqk.pipeline.train import train

    if args.model_kwargs is not None:
        args.model_kwargs = json_object(args.model_kwargs, "--model-kwargs")
    cfg = config_from_args(TrainConfig, args)
    result = train(cfg, load_data(args), args.out, resume=args.resume, progress=not args.quiet)
    print_final(result)


def add_record(sub) -> None:
    p = add_command(sub, "record", help="Phases 2-3: the selector's activation patterns of n+m samples into a store")
    p.add_argument("--checkpoint", required=True, help="model.pt of a run")
    add_trust_option(p)
    p.add_argument("--samples", type=int, required=True, help="n+m: record the first this many samples")
    p.add_argument("--store", required=True, help="pattern store folder (created, or appended to)")
    p.add_argument(
        "--pooling",
        choices=["live", "frozen"],
        help="frozen: max-pooling switches become part of the SK (default: a QK checkpoint's own, else live, as "
        "the paper)",
    )
    add_selection_options(p)
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="fail at once if another process is writing the store (default: wait for it to finish)",
    )
    add_data_options(p)
    add_device_option(p)


def cmd_record(args) -> None:
    from skqk.pipeline.record import record_from_checkpoint

    dataset = load_data(args)
    store = record_from_checkpoint(
        args.checkpoint,
        dataset,
        args.samples,
        args.store,
        args.pooling,
        args.subset_seed,
        args.balanced,
        args.batch_size,
        progress=not args.quiet,
        wait=not args.no_wait,
        class_chunks=class_chunks_of(args),
        trust=trust_of(args),
    )
    if is_main():
        print(f"{args.store}: {len(store)} samples, {store.bytes_per_sample} bytes per sample")


def add_retrain(sub) -> None:
    p = add_command(sub, "retrain", help="Phase 4 (--method qk) or the traditional baseline on n+m samples")
    p.add_argument("--checkpoint", required=True, help="model.pt of the pre-trained run")
    add_trust_option(p)
    p.add_argument("--samples", type=int, help="n+m (default 4096)")
    p.add_argument(
        "--sample-range",
        type=sample_range,
        metavar="A:B",
        help="re-train on samples A..B-1 only (the new ones of data arriving in chunks); --samples N is 0:N",
    )
    p.add_argument("--replay", type=int, help="with --sample-range A:B: K of the samples before A, class-balanced")
    p.add_argument("--method", choices=["qk", "traditional"], help="qk: estimator only, SK fixed (default)")
    p.add_argument("--store", help="pattern store recorded by `skqk record` from the same checkpoint")
    p.add_argument("--patterns", choices=["store", "on-the-fly"], help="where QK steps get patterns (default store)")
    p.add_argument(
        "--pooling",
        choices=["live", "frozen"],
        help="max pooling of the selector/estimator pair (default: what a QK checkpoint or the store recorded, "
        "else live); a conflict with them is an error",
    )
    p.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        default=None,
        help="qk: train all units (default: remove those dead for every training sample, exactly; skqk.pipeline.prune)",
    )
    p.add_argument(
        "--patience", type=int, help="stop after this many epochs without a better val accuracy, keep the best"
    )
    p.add_argument(
        "--optimizer",
        choices=["sgd", "ridge-head", "ce-head"],
        help="qk: sgd (the paper's, default); ridge-head: the head's exact ridge solution on the samples first "
        "(skqk.analytic), then SGD; ce-head: the head's exact cross-entropy optimum first (Newton from the ridge "
        "solution), then SGD; with --patience the best epoch is kept",
    )
    defaults = RetrainConfig()
    p.add_argument(
        "--staleness-samples",
        type=int,
        help=f"validation samples sk_staleness is measured on after every QK epoch (default "
        f"{defaults.staleness_samples}; 0: not measured)",
    )
    p.add_argument("--sk-refresh", choices=["off", "auto"], help="auto: refresh the SK when it is stale (default off)")
    p.add_argument(
        "--sk-refresh-threshold",
        type=float,
        help=f"sk_staleness above which auto refreshes (default {defaults.sk_refresh_threshold})",
    )
    p.add_argument("--sk-refresh-every", type=int, help="at most one refresh every this many epochs (default 1)")
    p.add_argument("--out", required=True, help="run folder")
    add_data_options(p)
    add_sgd_options(p, RetrainConfig)
    add_order_options(p)
    add_device_option(p)


def cmd_retrain(args) -> None:
    from skqk.pipeline.retrain import retrain

    if args.sample_range is not None:
        if args.samples is not None:
            raise ValueError("give --samples N or --sample-range A:B, not both (--samples N is --sample-range 0:N)")
        args.sample_start, args.samples = args.sample_range
    cfg = config_from_args(RetrainConfig, args)
    dataset = load_data(args)
    result = retrain(
        cfg,
        args.checkpoint,
        dataset,
        args.out,
        store=args.store,
        pooling=args.pooling,
        resume=args.resume,
        progress=not args.quiet,
        trust=trust_of(args),
    )
    print_final(result)


def add_refresh(sub) -> None:
    p = add_command(
        sub,
        "refresh",
        help="SK refresh: the selector becomes a QK run's current network; its patterns into a new store",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt of a QK run (or of any run)")
    add_trust_option(p)
    p.add_argument("--samples", type=int, required=True, help="record the patterns of the first this many samples")
    p.add_argument("--store", required=True, help="new pattern store folder for the refreshed SK")
    p.add_argument("--out", required=True, help="run folder: model.pt (a QK checkpoint) and refresh.json")
    p.add_argument(
        "--pooling", choices=["live", "frozen"], help="for a network checkpoint (default live; a QK checkpoint's own)"
    )
    add_selection_options(p)
    add_data_options(p)


def cmd_refresh(args) -> None:
    from skqk.data import subset_indices
    from skqk.pipeline.refresh import refresh_checkpoint

    class_chunks = class_chunks_of(args)
    dataset = load_data(args)
    order = (args.subset_seed, args.balanced, class_chunks, dataset.train.ordered)
    indices = subset_indices(dataset.train.labels, args.samples, *order)
    summary = refresh_checkpoint(
        args.checkpoint,
        dataset,
        indices,
        args.store,
        args.out,
        args.pooling,
        batch_size=args.batch_size,
        progress=not args.quiet,
        trust=trust_of(args),
    )
    before = summary["sk_staleness_before"]
    stale = f"sk_staleness before {before:.4f}, " if before is not None else ""
    print(
        f"{args.out}/model.pt: SK refreshed ({stale}{summary['samples']} patterns recorded into {args.store} "
        f"in {summary['seconds']:.1f} s)"
    )


def add_evaluate(sub) -> None:
    p = add_command(sub, "evaluate", help="accuracy and CCE loss of a checkpoint on the test split")
    p.add_argument("--checkpoint", required=True)
    add_trust_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_data_options(p)


def cmd_evaluate(args) -> None:
    from skqk.pipeline.checkpoint import load_for_evaluation, model_kwargs
    from skqk.pipeline.loop import evaluate

    dataset = load_data(args)
    module, ckpt = load_for_evaluation(args.checkpoint, fits=model_kwargs(dataset), trust=trust_of(args))
    metrics = evaluate(module, dataset, progress=not args.quiet)
    result = {"checkpoint": args.checkpoint, "kind": ckpt["kind"], "model": ckpt["model"]}
    finite = math.isfinite(metrics["val_loss"])  # false: the outputs are NaN or infinite
    # JSON has no NaN or infinity: such a metric is null
    result |= {name.removeprefix("val_"): value if math.isfinite(value) else None for name, value in metrics.items()}
    result |= {"finite": finite, "samples": len(dataset.test), "data": dataset.source}
    print(
        json.dumps(result, allow_nan=False)
        if args.json
        else f"{ckpt['model']} ({ckpt['kind']}): {metrics_text(metrics)} on {result['samples']} test samples of "
        f"{dataset.source}"
    )


def metrics_text(metrics: dict) -> str:
    """'accuracy 0.5123, loss 1.3456', or for regression 'rmse …, mae …, r2 …, loss …' (the standardised MSE)."""
    names = ("val_accuracy", "val_loss") if "val_accuracy" in metrics else ("val_rmse", "val_mae", "val_r2", "val_loss")
    return ", ".join(f"{name.removeprefix('val_')} {metrics[name]:.4f}" for name in names)


def print_final(result) -> None:
    if not is_main():
        return
    last = result.saved  # the epoch model.pt holds (the best one with --patience)
    metrics = ", ".join(f"val {part}" for part in metrics_text(last).split(", "))
    print(f"{result.run_dir}/model.pt: epoch {last['epoch']}, {metrics}")


def is_main() -> bool:
    """False in the processes of rank > 0 of a torchrun launch: only rank 0 prints results."""
    from skqk.pipeline import distributed

    return distributed.current().is_main


def add_parsers(sub) -> None:
    for add in (add_train, add_record, add_retrain, add_refresh, add_evaluate):
        add(sub)


COMMANDS = {
    "train": cmd_train,
    "record": cmd_record,
    "retrain": cmd_retrain,
    "refresh": cmd_refresh,
    "evaluate": cmd_evaluate,
}
