"""`skqk` command line: a thin layer over the library; options override the config dataclasses' fields.

Errors a user can cause print one line on stderr and exit non-zero (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields

from skqk._errors import one_line
from skqk.federated.config import FederatedConfig
from skqk.pipeline.config import RetrainConfig, SGDConfig, TrainConfig


def add_sgd_options(
    p: argparse.ArgumentParser, cfg_cls: type[SGDConfig], epochs: str = "--epochs", resumable: bool = True
) -> None:
    """The SGD fields as options; `epochs` names the epochs option; `resumable` adds --precision, --layout and
    --resume."""
    defaults = {f.name: f.default for f in fields(cfg_cls)}  # not cfg_cls(): its check of the model imports torch
    p.add_argument(epochs, type=int, dest="epochs", help=f"training epochs (default {defaults['epochs']})")
    p.add_argument("--batch-size", type=int, help=f"SGD batch size (default {defaults['batch_size']})")
    p.add_argument("--lr", type=float, help=f"learning rate (default {defaults['lr']})")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default {defaults['momentum']})")
    p.add_argument("--weight-decay", type=float, help=f"weight decay (default {defaults['weight_decay']})")
    p.add_argument("--seed", type=int, help="seed of initialisation, dropout and batch order (default 0)")
    p.add_argument("--subset-seed", type=int, help="seed of the nested sample subsets (default 0)")
    p.add_argument("--balanced", action="store_true", default=None, help="class-balanced sample subsets")
    p.add_argument("--eval-samples", type=int, help="validation samples per epoch (default 0 = all)")
    if resumable:
        p.add_argument("--precision", choices=["fp32", "bf16"], help="bf16: autocast with fp32 master weights")
        p.add_argument(
            "--layout",
            choices=["auto", "contiguous", "channels_last"],
            help="memory layout of activations and conv weights (default auto: channels_last where the benchmark "
            "shows it pays for that model)",
        )
        p.add_argument("--resume", action="store_true", help="continue the run in --out after an interruption")


def add_order_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--class-incremental",
        type=int,
        metavar="CLASSES",
        help="class-incremental sample order: each chunk of --chunk-samples brings this many new classes",
    )
    p.add_argument("--chunk-samples", type=int, help="samples per chunk of the class-incremental order")


def sample_range(text: str) -> tuple[int, int]:
    """`A:B` of --sample-range: samples A..B-1 of the run's permutation."""
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(start), int(stop)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B (e.g. 4096:8192), got {text!r}") from None


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        help="CIFAR-10 folder, image-folder tree or its .tar(.gz) (default: $SKQK_DATA, "
        "then the cache, downloading CIFAR-10 there if absent)",
    )
    p.add_argument("--cache-dir", help="where decoded data is cached (default: $SKQK_CACHE or ~/.cache/skqk)")


def add_selection_options(p: argparse.ArgumentParser) -> None:
    """Which samples a pattern recording covers (`record`, `refresh`): the same permutation as the runs'."""
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the nested sample subsets (default 0)")
    p.add_argument("--balanced", action="store_true", help="class-balanced sample subsets")
    add_order_options(p)
    p.add_argument("--batch-size", type=int, default=1024, help="inference batch size (default 1024)")


def class_chunks_of(args) -> tuple[int, int] | None:
    """The class-incremental order of `record` and `refresh`, checked like a run's configuration."""
    from skqk.pipeline.config import SGDConfig

    order = SGDConfig(class_incremental=args.class_incremental or 0, chunk_samples=args.chunk_samples or 0)
    return order.class_chunks


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: a GPU if CUDA is available, else the CPU (default); cuda falls back to the CPU with a "
        "message. Under torchrun each process takes GPU number LOCAL_RANK (see docs/distributed.md)",
    )


def add_trust_option(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument(
        "--model",
        metavar="PKG.MOD:CALLABLE",
        help=help
        or "your own model the checkpoint names by import path: skqk imports and runs that code only when you pass "
        "the same path here (a checkpoint holds names, not code); zoo models need no flag",
    )


def trust_of(args) -> tuple[str, ...]:
    """The import paths the user trusts in this invocation: what --model names (skqk.models.resolve)."""
    return (args.model,) if getattr(args, "model", None) else ()


def json_object(text: str, option: str) -> dict:
    """The JSON object an option such as --model-kwargs holds; anything else is a one-line error."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{option} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object like '{{\"width\": 64}}', got {text!r}")
    return value


def config_from_args(cfg_cls, args: argparse.Namespace):
    """The dataclass with its paper defaults, overridden only by the options the user gave."""
    given = {f.name: getattr(args, f.name) for f in fields(cfg_cls) if getattr(args, f.name, None) is not None}
    return cfg_cls(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skqk",
        description="Decouple structural (SK) and quantitative (QK) knowledge of ReLU networks and "
        "re-train only the QK (the paper's four phases).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="Phase 1: train a zoo network from scratch on n samples")
    p.add_argument(
        "--model",
        help="zoo model: lenet5, alexnet, vgg8 (default lenet5), or your own as package.module:callable returning "
        "an nn.Module (importable from the current directory or PYTHONPATH; it gets in_channels, image_size, "
        "num_classes where its signature takes them)",
    )
    p.add_argument(
        "--model-kwargs",
        help="JSON object of keyword arguments for an imported model, e.g. '{\"width\": 64}'; recorded in the "
        "checkpoint, so record/retrain/evaluate rebuild the model without these flags",
    )
    p.add_argument("--samples", type=int, help="n, samples to train on (default 1024)")
    p.add_argument("--out", required=True, help="run folder (model.pt, config.json, metrics.jsonl)")
    add_data_options(p)
    add_sgd_options(p, TrainConfig)
    add_order_options(p)
    add_device_option(p)

    p = sub.add_parser("record", help="Phases 2-3: the selector's activation patterns of n+m samples into a store")
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

    p = sub.add_parser("retrain", help="Phase 4 (--method qk) or the traditional baseline on n+m samples")
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

    p = sub.add_parser(
        "refresh", help="SK refresh: the selector becomes a QK run's current network; its patterns into a new store"
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

    p = sub.add_parser("evaluate", help="accuracy and CCE loss of a checkpoint on the test split")
    p.add_argument("--checkpoint", required=True)
    add_trust_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_data_options(p)

    p = sub.add_parser("merge", help="combine QK checkpoints that share one SK (average, or task arithmetic)")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="model.pt files of QK runs (or merges)")
    p.add_argument("-o", "--out", required=True, help="the merged checkpoint file")
    add_trust_option(p)
    p.add_argument("--method", choices=["average", "task-arithmetic"], default="average", help="(default average)")
    p.add_argument("--weights", help="comma-separated, one per checkpoint (default: the samples each trained on)")
    p.add_argument("--start", help="task arithmetic: the checkpoint every copy was re-trained from")
    p.add_argument("--lambda", dest="lambdas", help="task arithmetic: λ, or comma-separated one per checkpoint")
    p.add_argument(
        "--tune-samples",
        type=int,
        default=1000,
        help="task arithmetic without --lambda: held-out samples (default 1000)",
    )
    p.add_argument("--lambda-grid", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0", help="λ values tried")
    add_data_options(p)

    p = sub.add_parser("federated", help="federated re-training on Flower's simulation engine (needs '.[federated]')")
    p.add_argument("--checkpoint", required=True, help="model.pt of the pre-trained start")
    add_trust_option(
        p,
        "refuse a checkpoint of another model; your own model by import path is built (by the server and the "
        "simulated nodes) only when named here",
    )
    p.add_argument("--clients", type=int, help="K (default 4)")
    p.add_argument("--rounds", type=int, help="R (default 20)")
    p.add_argument("--samples", type=int, help="N, split among the clients (default 8192)")
    p.add_argument("--partition", choices=["iid", "dirichlet"], help="(default iid)")
    p.add_argument("--alpha", type=float, help="Dirichlet concentration (default 0.1)")
    p.add_argument("--partition-seed", type=int, help="seed of the split (default 0)")
    p.add_argument("--method", choices=["qk", "traditional"], help="qk: shared SK, QK trained (default)")
    p.add_argument("--strategy", choices=["fedavg", "fedprox", "fedadam"], help="Flower's strategy (default fedavg)")
    p.add_argument("--proximal-mu", type=float, help="FedProx's proximal weight (default 0.01)")
    p.add_argument("--server-lr", type=float, help="FedAdam's server learning rate (default 0.1)")
    p.add_argument("--min-clients", type=int, help="replies a round needs to count (default 0 = all)")
    p.add_argument("--round-timeout", type=float, help="seconds to wait for a round's replies (default 600)")
    p.add_argument("--threads", type=int, default=1, help="simulated clients training at a time (default 1)")
    p.add_argument("--out", required=True, help="run folder (config.json, metrics.jsonl, model.pt)")
    add_data_options(p)
    add_sgd_options(p, FederatedConfig, epochs="--local-epochs", resumable=False)

    p = sub.add_parser(
        "reproduce",
        help="the experiments: fig4 (SK stabilisation), fig5 (re-training), qkgap (what closes the QK gap), "
        "federated (QK-FedAvg vs FedAvg, docs/federated.md), incremental (data arriving in chunks)",
    )
    p.add_argument("figure", choices=["fig4", "fig5", "qkgap", "federated", "incremental"])
    p.add_argument(
        "--preset",
        choices=["paper", "cpu", "smoke"],
        default="cpu",
        help="paper: exact protocol; cpu: scaled for a 2-core CPU; smoke: minutes (default cpu)",
    )
    p.add_argument(
        "--models",
        help="comma-separated (default: alexnet for fig4, lenet5,alexnet,vgg8 for fig5, lenet5 for qkgap, "
        "lenet5,vgg8 for federated and incremental)",
    )
    p.add_argument(
        "--mode",
        choices=["independent", "successive"],
        default="independent",
        help="fig5: each N from the pre-trained net (default) or from the previous N's result",
    )
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="fig5: every run in this precision")
    p.add_argument(
        "--seeds",
        help="comma-separated seeds; each changes initialisation, sample choice and batch order (default 0; "
        "incremental: the preset's)",
    )
    p.add_argument("--sk-samples", help="fig5: comma-separated SK sizes n (overrides the preset's)")
    p.add_argument("--max-samples", type=int, help="fig5: largest N (overrides the preset's)")
    p.add_argument("--epochs", type=int, help="fig4: training epochs (overrides the preset's)")
    p.add_argument("--every-steps", type=int, help="fig4: also compare patterns every K SGD steps (0 = per epoch)")
    p.add_argument("--flip-threshold", type=float, help="fig4: flip fraction below which patterns count as settled")
    p.add_argument("--out", required=True, help="results folder (cells are cached there; rerun to resume)")
    add_data_options(p)

    p = sub.add_parser("bench", help="benchmark QK-only against traditional re-training (medians, ratios)")
    from skqk.bench.protocol import add_arguments as add_bench_arguments

    add_bench_arguments(p)

    p = sub.add_parser("patterns", help="inspect a pattern store")
    psub = p.add_subparsers(dest="patterns_command", required=True, metavar="SUBCOMMAND")
    info = psub.add_parser("info", help="sites, bits per sample, samples, size, active fraction per site")
    info.add_argument("store")
    info.add_argument("--json", action="store_true")
    return parser


def load_data(args):
    from skqk.data import load_dataset
    from skqk.pipeline import distributed

    with distributed.local_main_first():  # under torchrun, one process per machine fills the cache
        return load_dataset(args.data_dir, args.cache_dir, progress=not args.quiet)


def is_main() -> bool:
    """False in the processes of rank > 0 of a torchrun launch: only rank 0 prints results."""
    from skqk.pipeline import distributed

    return distributed.current().is_main


def cmd_train(args) -> None:
    from skqk.pipeline.train import train

    if args.model_kwargs is not None:
        args.model_kwargs = json_object(args.model_kwargs, "--model-kwargs")
    cfg = config_from_args(TrainConfig, args)
    result = train(cfg, load_data(args), args.out, resume=args.resume, progress=not args.quiet)
    print_final(result)


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


def print_final(result) -> None:
    if not is_main():
        return
    last = result.history[-1]
    print(
        f"{result.run_dir}/model.pt: epoch {last['epoch']}, val accuracy {last['val_accuracy']:.4f}, "
        f"val loss {last['val_loss']:.4f}"
    )


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


def cmd_refresh(args) -> None:
    from skqk.data import subset_indices
    from skqk.pipeline.refresh import refresh_checkpoint

    class_chunks = class_chunks_of(args)
    dataset = load_data(args)
    indices = subset_indices(dataset.train.labels, args.samples, args.subset_seed, args.balanced, class_chunks)
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


def cmd_evaluate(args) -> None:
    from skqk.pipeline.checkpoint import load_for_evaluation, model_kwargs
    from skqk.pipeline.loop import evaluate

    dataset = load_data(args)
    module, ckpt = load_for_evaluation(args.checkpoint, fits=model_kwargs(dataset), trust=trust_of(args))
    metrics = evaluate(module, dataset)
    result = {
        "checkpoint": args.checkpoint,
        "kind": ckpt["kind"],
        "model": ckpt["model"],
        "accuracy": metrics["val_accuracy"],
        "loss": metrics["val_loss"],
        "samples": len(dataset.test),
        "data": dataset.source,
    }
    print(
        json.dumps(result)
        if args.json
        else f"{ckpt['model']} ({ckpt['kind']}): accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f} "
        f"on {result['samples']} test samples of {dataset.source}"
    )


def parse_int_list(text: str, option: str = "--seeds") -> tuple[int, ...]:
    """Distinct non-negative integers from a comma-separated list (seeds, or sample counts)."""
    try:
        values = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None
    if len(set(values)) != len(values) or min(values) < 0:
        raise ValueError(f"{option} must be distinct non-negative integers, got {text!r}")
    return values


# the experiments that read each `reproduce` option (with its value when not given): given to another, it is refused
# rather than silently ignored
REPRODUCE_OPTIONS = {
    "mode": (("fig5",), "independent"),
    "precision": (("fig5",), "fp32"),
    "seeds": (("fig4", "fig5", "qkgap", "incremental"), None),
    "sk_samples": (("fig5",), None),
    "max_samples": (("fig5",), None),
    "epochs": (("fig4",), None),
    "every_steps": (("fig4",), None),
    "flip_threshold": (("fig4",), None),
}


def cmd_reproduce(args) -> None:
    for option, (figures, unset) in REPRODUCE_OPTIONS.items():
        if getattr(args, option) != unset and args.figure not in figures:
            flag = "--" + option.replace("_", "-")
            raise ValueError(f"{flag} applies to {', '.join(figures)}, not to reproduce {args.figure}")
    if args.figure == "federated":
        return reproduce_federated(args)
    from dataclasses import replace

    from skqk import models
    from skqk.experiments import PRESETS, run_fig4, run_fig5, run_qk_gap
    from skqk.experiments.report import summary_table

    overrides = {"fig4_epochs": args.epochs, "fig4_every_steps": args.every_steps}
    overrides["fig4_flip_threshold"] = args.flip_threshold
    if any(v is not None and v < 0 for v in overrides.values()) or args.epochs == 0:
        raise ValueError("--epochs must be positive; --every-steps and --flip-threshold non-negative")
    preset = replace(PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None})
    protocol = {}
    if args.sk_samples:
        protocol["sk_samples"] = parse_int_list(args.sk_samples, "--sk-samples")
        if 0 in protocol["sk_samples"]:
            raise ValueError(f"--sk-samples must be positive, got {args.sk_samples!r}")
    if args.max_samples is not None:
        if args.max_samples <= 0:
            raise ValueError(f"--max-samples must be positive, got {args.max_samples}")
        protocol["max_samples"] = args.max_samples
    if protocol:  # the overrides are part of the preset written into results.json and printed with its scaling
        preset = replace(preset, fig5={name: replace(p, **protocol) for name, p in preset.fig5.items()})
    seeds = parse_int_list(args.seeds or "0")
    if args.seeds:
        preset = replace(preset, incremental={n: replace(p, seeds=seeds) for n, p in preset.incremental.items()})
    default = {"fig4": "alexnet", "incremental": "lenet5,vgg8", "qkgap": "lenet5"}.get(
        args.figure, "lenet5,alexnet,vgg8"
    )
    names = (args.models or default).split(",")
    studies = {"fig5": preset.fig5, "incremental": preset.incremental, "qkgap": [g.model for g in preset.qk_gap]}
    protocols = studies.get(args.figure, models.list_models())
    for name in names:
        if name not in models.list_models() or name not in protocols:
            raise ValueError(
                f"unknown model {name!r} for {args.figure} in preset {preset.name}; choose from "
                f"{', '.join(protocols) or 'none (the preset has no such study)'}"
            )
    print(preset.scaling(), file=sys.stderr)
    dataset = load_data(args)
    if args.figure == "fig4":
        results = run_fig4(preset, names, dataset, args.out, not args.quiet, seeds)
    elif args.figure == "qkgap":
        results = run_qk_gap(preset, names, dataset, args.out, not args.quiet, seeds)
    elif args.figure == "incremental":
        from skqk.experiments.incremental import run_incremental

        results = run_incremental(preset, names, dataset, args.out, progress=not args.quiet)
    else:
        results = run_fig5(preset, names, dataset, args.out, args.mode, not args.quiet, args.precision, seeds)
    print(summary_table(results))
    print(f"results in {args.out}/{'qkgap-' if args.figure == 'qkgap' else ''}results.json")


def number_list(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, got {text!r}") from None


def cmd_merge(args) -> None:
    from skqk.combine import held_out_samples, merge_checkpoints

    lambdas = number_list(args.lambdas, "--lambda")
    tune = None
    if args.method == "task-arithmetic" and lambdas is None and args.start is not None:
        x, y = held_out_samples(args.checkpoints, load_data(args), args.tune_samples)
        tune = (x, y, number_list(args.lambda_grid, "--lambda-grid"))
    record = merge_checkpoints(
        args.checkpoints,
        args.out,
        weights=number_list(args.weights, "--weights"),
        method=args.method,
        start=args.start,
        lambdas=lambdas[0] if lambdas is not None and len(lambdas) == 1 else lambdas,
        tune=tune,
        trust=trust_of(args),
    )
    weights = ", ".join(f"{w:.4g}" for w in record["merge"]["weights"])
    lam = record["merge"].get("lambda")
    lam = "" if lam is None else f", λ {lam:g}" if isinstance(lam, float) else f", λ {lam}"
    print(f"{args.out}: {args.method} of {len(args.checkpoints)} copies, weights {weights}{lam}")


def cmd_federated(args) -> None:
    require_flower()
    from skqk.federated.simulation import run_federated
    from skqk.pipeline.checkpoint import load_model_checkpoint

    cfg = config_from_args(FederatedConfig, args)
    if args.model is not None and load_model_checkpoint(args.checkpoint)["model"] != args.model:
        raise ValueError(f"{args.checkpoint} does not hold a {args.model}")
    history = run_federated(
        cfg,
        args.checkpoint,
        args.out,
        args.data_dir,
        args.cache_dir,
        args.threads,
        progress=not args.quiet,
        trust=trust_of(args),
    )
    last = history[-1]
    down, up = (sum(row.get(key, 0) for row in history) / 2**20 for key in ("bytes_down", "bytes_up"))
    print(
        f"{args.out}/model.pt: round {last['round']}, val accuracy {last['val_accuracy']:.4f}, val loss "
        f"{last['val_loss']:.4f}; {down:.1f} MiB down, {up:.1f} MiB up"
    )


def reproduce_federated(args) -> None:
    from skqk.experiments.federated import PRESETS

    if args.preset not in PRESETS:
        raise ValueError(f"reproduce federated has the presets {', '.join(PRESETS)}, not {args.preset!r}")
    require_flower()
    from skqk.experiments.federated import run_federated_experiment as run
    from skqk.experiments.report import summary_table

    preset = PRESETS[args.preset]
    names = (args.models or ",".join(preset.models)).split(",")
    for name in names:
        if name not in preset.models:
            raise ValueError(f"unknown model {name!r} for federated; choose from {', '.join(preset.models)}")
    print(preset.scaling(), file=sys.stderr)
    results = run(preset, names, load_data(args), args.out, args.data_dir, args.cache_dir, progress=not args.quiet)
    print(summary_table(results))
    print(f"results in {args.out}/results.json")


def require_flower() -> None:
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        raise RuntimeError("federated re-training needs Flower: pip install -e '.[federated]'")


def cmd_patterns(args) -> None:
    from skqk.store import PatternStore, format_info

    info = PatternStore.open(args.store).info()
    print(json.dumps(info) if args.json else format_info(info))


def cmd_bench(args) -> None:
    from skqk.bench.run import main_from_args

    main_from_args(args)


COMMANDS = {
    "train": cmd_train,
    "record": cmd_record,
    "retrain": cmd_retrain,
    "refresh": cmd_refresh,
    "evaluate": cmd_evaluate,
    "reproduce": cmd_reproduce,
    "merge": cmd_merge,
    "federated": cmd_federated,
    "patterns": cmd_patterns,
    "bench": cmd_bench,
}


DISTRIBUTED_COMMANDS = ("train", "record", "retrain")  # run unchanged under torchrun; they have --device


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        return interrupted(None)
    if args.command not in DISTRIBUTED_COMMANDS:
        return run_command(args)
    try:
        from skqk.pipeline import distributed
    except KeyboardInterrupt:  # it imports torch: seconds on a cold start
        return interrupted(args)
    try:
        code = run_command(args, lambda: distributed.setup(args.device))  # joins torchrun's process group, if any
    finally:
        joined = distributed.current().is_distributed
        distributed.teardown()
    if joined:
        distributed.exit_process(code)
    return code


CONTINUE_HINTS = {  # how each interrupted command continues where it stopped
    "train": " (continue the run with --resume)",
    "retrain": " (continue the run with --resume)",
    "record": " (rerun the same command to record the samples still missing)",
    "reproduce": " (rerun the same command to continue)",
}


def run_command(args: argparse.Namespace, setup: Callable[[], object] | None = None) -> int:
    """Run the command; errors a user can cause become one line on stderr and exit status 1, Ctrl-C exit 130."""
    try:
        with counting_interrupts() as interrupts:
            if setup is not None:
                setup()
            COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return interrupted(args)
    except Exception as e:
        if interrupts and not args.debug:  # Ctrl-C inside an import or a library can surface as another error
            return interrupted(args)
        if args.debug or not isinstance(e, (ValueError, OSError, RuntimeError)):  # ours subclass these
            raise
        message = one_line(e) or type(e).__name__
        print(f"skqk: error: {message}", file=sys.stderr)
        return 1
    return 0


@contextmanager
def counting_interrupts() -> Iterator[list[int]]:
    """Let Ctrl-C raise KeyboardInterrupt as usual, and also count it in the yielded list. A Ctrl-C the process
    was started to ignore (a background job of a script, `nohup`) stays ignored."""
    received: list[int] = []
    in_main_thread = threading.current_thread() is threading.main_thread()  # only the main thread gets signals
    if not in_main_thread or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield received
        return

    def on_interrupt(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted(args: argparse.Namespace | None) -> int:
    print(f"skqk: interrupted{CONTINUE_HINTS.get(getattr(args, 'command', None), '')}", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
