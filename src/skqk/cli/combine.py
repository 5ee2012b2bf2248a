"""Combining re-trained copies: merge (average, task arithmetic) and federated re-training (Flower)."""

from __future__ import annotations

from skqk.cli.options import (
    add_command,
    add_data_options,
    add_sgd_options,
    add_trust_option,
    config_from_args,
    load_data,
    number_list,
    refuse_tables,
    trust_of,
)
from skqk.federated.config import FederatedConfig


def add_merge(sub) -> None:
    p = add_command(
        sub, "merge", help="combine QK checkpoints that share one SK (average, task arithmetic; solve runs: exactly)"
    )
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="model.pt files of QK runs (or merges); or `skqk solve` run folders, whose statistics are summed",
    )
    p.add_argument(
        "-o",
        "--out",
        required=True,
        help="the merged checkpoint file, refused if it exists (solve runs: a new run folder)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
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


def cmd_merge(args) -> None:
    from skqk.cli.analytic import is_solve_run, merge_solve_runs
    from skqk.combine import held_out_samples, merge_checkpoints

    solve_runs = [is_solve_run(p) for p in args.checkpoints]
    if all(solve_runs):
        return merge_solve_runs(args)
    if any(solve_runs):
        raise ValueError("solve runs (with stats.pt) merge by their statistics, QK checkpoints by averaging: not both")

    lambdas = number_list(args.lambdas, "--lambda")
    tune = None
    if args.method == "task-arithmetic" and lambdas is None and args.start is not None:
        refuse_tables(args, "tuning λ of a merge")
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
        replace=args.force,
        trust=trust_of(args),
    )
    weights = ", ".join(f"{w:.4g}" for w in record["merge"]["weights"])
    lam = record["merge"].get("lambda")
    lam = "" if lam is None else f", λ {lam:g}" if isinstance(lam, float) else f", λ {lam}"
    print(f"{args.out}: {args.method} of {len(args.checkpoints)} copies, weights {weights}{lam}")


def add_federated(sub) -> None:
    p = add_command(sub, "federated", help="federated re-training on Flower's simulation engine (needs '.[federated]')")
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
    p.add_argument("--min-clients", type=int, help="valid replies a round needs to change the model (default 0 = all)")
    p.add_argument("--round-timeout", type=float, help="seconds to wait for a round's replies (default 600)")
    p.add_argument("--threads", type=int, default=1, help="simulated clients training at a time (default 1)")
    p.add_argument("--out", required=True, help="run folder (config.json, metrics.jsonl, model.pt)")
    add_data_options(p)
    add_sgd_options(p, FederatedConfig, epochs="--local-epochs", resumable=False)


def cmd_federated(args) -> None:
    refuse_tables(args, "federated re-training")
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
    unchanged = sum(not row["kept"] for row in history[1:])
    kept = (
        f"; {unchanged} of {last['round']} rounds had too few valid replies (metrics.jsonl says why)"
        if unchanged
        else ""
    )
    print(
        f"{args.out}/model.pt: round {last['round']}, val accuracy {last['val_accuracy']:.4f}, val loss "
        f"{last['val_loss']:.4f}; {down:.1f} MiB down, {up:.1f} MiB up{kept if unchanged else ''}"
    )


def require_flower() -> None:
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        raise RuntimeError("federated re-training needs Flower: pip install -e '.[federated]'")


def add_parsers(sub) -> None:
    add_merge(sub)
    add_federated(sub)


COMMANDS = {"merge": cmd_merge, "federated": cmd_federated}
