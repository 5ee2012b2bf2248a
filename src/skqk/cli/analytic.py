"""Analytic QK (an extension, not in the paper): `solve` re-trains one block of the QK exactly from statistics that
add up over samples; `--from` adds or forgets samples, `skqk merge` of solve runs sums their statistics."""

from __future__ import annotations

from pathlib import Path

from skqk.cli.options import (
    add_command,
    add_data_options,
    add_device_option,
    add_order_options,
    add_trust_option,
    config_from_args,
    load_data,
    sample_range,
    trust_of,
)

CONTINUED = ("block", "loss", "ridge", "subset_seed", "balanced", "class_incremental", "chunk_samples")


def add_solve(sub) -> None:
    p = add_command(
        sub,
        "solve",
        help="analytic QK (not in the paper): solve one block of the QK exactly (ridge on one-hot targets) from a "
        "frozen-pooling pattern store",
    )
    p.add_argument("--checkpoint", help="model.pt of the pre-trained run (or of a QK run) the store was recorded from")
    p.add_argument("--from", dest="from_run", metavar="RUN", help="a solve run to add samples to or forget them from")
    p.add_argument("--store", required=True, help="pattern store recorded with --pooling frozen from that checkpoint")
    p.add_argument("--samples", type=int, help="solve on the first N samples (default 4096)")
    p.add_argument("--sample-range", type=sample_range, metavar="A:B", help="samples A..B-1 (with --from: added)")
    p.add_argument("--forget", type=sample_range, metavar="A:B", help="with --from: remove samples A..B-1 exactly")
    p.add_argument(
        "--block",
        help="head (default: the layer whose output is the network's), or linear/conv layer names solved one "
        "after the other, e.g. 0,6 (non-head layers of at most 20,000 parameters)",
    )
    p.add_argument(
        "--loss",
        choices=["mse", "ce"],
        help="mse: ridge on one-hot targets, exact under adding, merging and forgetting (default); ce: Newton on "
        "cross-entropy from the ridge solution (head only; not additive)",
    )
    p.add_argument("--ridge", type=float, metavar="LAMBDA", help="penalty on the weights (default: chosen by GCV)")
    p.add_argument("--subset-seed", type=int, help="seed of the nested sample subsets (default 0)")
    p.add_argument("--balanced", action="store_true", default=None, help="class-balanced sample subsets")
    add_order_options(p)
    p.add_argument("--batch-size", type=int, help="samples per forward pass (default 1024; memory only)")
    p.add_argument("--eval-samples", type=int, help="test samples the solved model is measured on (default 0 = all)")
    p.add_argument("--out", required=True, help="run folder: model.pt (a QK checkpoint), stats.pt, config.json")
    add_trust_option(p)
    add_data_options(p)
    add_device_option(p)


def cmd_solve(args) -> None:
    from skqk.analytic import SolveConfig, solve, update

    if args.from_run is None:
        if args.checkpoint is None or args.forget is not None:
            raise ValueError("solve needs --checkpoint (or --from RUN to add samples to a run or forget some)")
        if args.sample_range is not None:
            if args.samples is not None:
                raise ValueError("give --samples N or --sample-range A:B, not both")
            args.sample_start, args.samples = args.sample_range
        cfg = config_from_args(SolveConfig, args)
        dataset = load_data(args)
        result = solve(cfg, args.checkpoint, dataset, args.store, args.out, not args.quiet, trust_of(args))
    else:
        given = [name for name in ("checkpoint", "samples", *CONTINUED) if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(
                f"--from RUN continues with the run's own model, block, loss, λ rule and order; drop {flags}"
            )
        result = update(
            args.from_run,
            load_data(args),
            args.store,
            args.out,
            add=args.sample_range,
            forget=args.forget,
            progress=not args.quiet,
            trust=trust_of(args),
        )
    print_solved(result)


def print_solved(result) -> None:
    from skqk.analytic.stats import ranges_text
    from skqk.pipeline.distributed import current

    if not current().is_main:
        return
    record = result.solution
    ridge = record["ridge"]
    ce = record.get("cross_entropy")
    how = f"λ {ridge['lambda']:.4g} ({ridge['chosen_by']})" + (
        f", then {ce['iterations']} Newton passes on cross-entropy" if ce else ""
    )
    metrics = ""
    if "val_accuracy" in record:
        metrics = f", val accuracy {record['val_accuracy']:.4f}, val loss {record['val_loss']:.4f}"
    print(
        f"{result.run_dir}/model.pt: block {record['block']} solved on {record['samples']} samples "
        f"({ranges_text(result.stats.ranges)}), {how}{metrics}"
    )


def is_solve_run(path: str) -> bool:
    """A `skqk solve` run folder, or its model.pt: a stats.pt lies beside it."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    return (folder / "stats.pt").is_file()


def merge_solve_runs(args) -> None:
    """`skqk merge RUN_A RUN_B -o RUN`: the statistics summed, solved again (what `skqk merge` does for solve runs)."""
    from skqk.analytic import merge_runs

    if any(value is not None for value in (args.weights, args.start, args.lambdas)) or args.method != "average":
        raise ValueError(
            "merging solve runs sums their statistics: --method, --weights, --start, --lambda do not apply"
        )
    folders = [str(Path(p) if Path(p).is_dir() else Path(p).parent) for p in args.checkpoints]
    args.checkpoints = [str(Path(f) / "model.pt") for f in folders]  # what load_data checks first
    dataset = load_data(args) if args.data_dir is not None else None
    print_solved(merge_runs(folders, args.out, dataset, trust_of(args)))


def add_parsers(sub) -> None:
    add_solve(sub)


COMMANDS = {"solve": cmd_solve}
