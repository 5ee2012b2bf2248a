"""`skqk reproduce`: the paper's experiments and the studies built on them, cells cached in the results folder."""

from __future__ import annotations

import sys

from skqk.cli.combine import require_flower
from skqk.cli.options import add_command, add_data_options, json_object, load_data, parse_int_list, refuse_tables


def add_parsers(sub) -> None:
    p = add_command(
        sub,
        "reproduce",
        help="the experiments: fig4 (SK stabilisation), fig5 (re-training), qkgap (what closes the QK gap), "
        "federated (QK-FedAvg vs FedAvg, docs/federated.md), incremental (data arriving in chunks), analytic (the "
        "analytic QK of `skqk solve` against SGD: Fig. 5 cells, class-incremental, federated; not in the paper), "
        "drift (evolving data bundled in packages, offline: pip install -e '.[drift]')",
    )
    p.add_argument("figure", choices=["fig4", "fig5", "qkgap", "federated", "incremental", "analytic", "drift"])
    p.add_argument(
        "--preset",
        choices=["paper", "cpu", "smoke"],
        default="cpu",
        help="paper: exact protocol; cpu: scaled for a 2-core CPU; smoke: minutes (default cpu)",
    )
    p.add_argument(
        "--models",
        help="comma-separated (default: the preset's; paper and cpu: alexnet for fig4, lenet5,alexnet,vgg8 for "
        "fig5, lenet5 for qkgap, lenet5,vgg8 for federated and incremental; smoke: lenet5 only)",
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
        help="comma-separated seeds; each changes initialisation, sample choice and batch order (federated: also "
        "the split among clients) (default 0; incremental: the preset's)",
    )
    p.add_argument(
        "--model",
        help="fig5, qkgap, incremental: one network instead of the preset's, a zoo name (mlp, ...) or your own as "
        "package.module:callable (as for `skqk train`); it runs with the preset's protocol for it, else its first "
        "one, changed by the options below",
    )
    p.add_argument("--model-kwargs", help="JSON object of options for --model, e.g. '{\"widths\": [64, 32]}'")
    p.add_argument(
        "--sk-samples",
        help="fig5, qkgap, analytic's Fig. 5 cells: comma-separated SK sizes n (qkgap: one; overrides the preset's)",
    )
    p.add_argument(
        "--samples",
        help="fig5, qkgap, analytic's Fig. 5 cells: comma-separated re-training sizes N, e.g. 1024,2048,4096",
    )
    p.add_argument(
        "--max-samples",
        type=int,
        help="fig5, analytic's Fig. 5 cells: largest N of the powers of two (overrides the preset's)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="fig4: training epochs; fig5, qkgap, incremental, analytic (its Fig. 5 cells and incremental stream): "
        "pre-training epochs (overrides)",
    )
    p.add_argument(
        "--retrain-epochs",
        type=int,
        help="fig5, qkgap, incremental, analytic (its Fig. 5 cells and incremental stream): re-training epochs "
        "(overrides)",
    )
    p.add_argument("--every-steps", type=int, help="fig4: also compare patterns every K SGD steps (0 = per epoch)")
    p.add_argument("--flip-threshold", type=float, help="fig4: flip fraction below which patterns count as settled")
    p.add_argument(
        "--studies", help="analytic: comma-separated studies of fig5, incremental, federated (default: all three)"
    )
    p.add_argument("--streams", help="drift: comma-separated streams of sp500, macro, cifar10 (default: the preset's)")
    p.add_argument("--out", required=True, help="results folder (cells are cached there; rerun to resume)")
    add_data_options(p)


# the experiments that read each `reproduce` option (with its value when not given): given to another, it is refused
# rather than silently ignored
REPRODUCE_OPTIONS = {
    "mode": (("fig5",), "independent"),
    "precision": (("fig5",), "fp32"),
    "seeds": (("fig4", "fig5", "qkgap", "incremental", "analytic", "drift", "federated"), None),
    "model": (("fig5", "qkgap", "incremental"), None),
    "model_kwargs": (("fig5", "qkgap", "incremental"), None),
    "sk_samples": (("fig5", "qkgap", "analytic"), None),
    "samples": (("fig5", "qkgap", "analytic"), None),
    "max_samples": (("fig5", "analytic"), None),
    "epochs": (("fig4", "fig5", "qkgap", "incremental", "analytic"), None),
    "retrain_epochs": (("fig5", "qkgap", "incremental", "analytic"), None),
    "every_steps": (("fig4",), None),
    "flip_threshold": (("fig4",), None),
    "studies": (("analytic",), None),
    "streams": (("drift",), None),
    "models": (("fig4", "fig5", "qkgap", "federated", "incremental", "analytic"), None),
}


def cmd_reproduce(args) -> None:
    for option, (figures, unset) in REPRODUCE_OPTIONS.items():
        if getattr(args, option) != unset and args.figure not in figures:
            flag = "--" + option.replace("_", "-")
            raise ValueError(f"{flag} applies to {', '.join(figures)}, not to reproduce {args.figure}")
    overrides = {"fig4_epochs": args.epochs, "fig4_every_steps": args.every_steps}
    overrides["fig4_flip_threshold"] = args.flip_threshold
    if any(v is not None and v < 0 for v in overrides.values()) or args.epochs == 0 or args.retrain_epochs == 0:
        raise ValueError(
            "--epochs and --retrain-epochs must be positive; --every-steps and --flip-threshold non-negative"
        )
    if args.figure == "federated":
        return reproduce_federated(args)
    if args.figure == "analytic":
        return reproduce_analytic(args)
    if args.figure == "drift":
        return reproduce_drift(args)
    from dataclasses import replace

    from skqk import models
    from skqk.experiments import PRESETS, run_fig4, run_fig5, run_qk_gap
    from skqk.experiments.presets import customised
    from skqk.experiments.report import summary_table

    preset = PRESETS[args.preset]
    if args.figure == "fig4":
        preset = replace(preset, **{k: v for k, v in overrides.items() if v is not None})
    else:  # the changes are part of the preset written into results.json and printed with its scaling
        preset = customised(preset, protocol_changes(args))
    seeds = parse_int_list(args.seeds or "0")
    default = (
        ",".join(preset.default_models)
        or {  # else every model of the study
            "fig4": preset.fig4_model,
            "fig5": ",".join(preset.fig5),
            "qkgap": ",".join(g.model for g in preset.qk_gap[:1]),
            "incremental": ",".join(preset.incremental),
        }[args.figure]
    )
    if args.model_kwargs is not None and args.model is None:
        raise ValueError("--model-kwargs are the options of --model; give the model too")
    if args.model is not None and args.models is not None:
        raise ValueError("give --model (one network, any) or --models (the preset's), not both")
    names = [args.model] if args.model is not None else (args.models or default).split(",")
    studies = {"fig5": preset.fig5, "incremental": preset.incremental, "qkgap": [g.model for g in preset.qk_gap]}
    protocols = studies.get(args.figure, models.list_models())
    for name in names:
        if args.model is not None:
            models.resolve(name, trust=(name,))  # --model is the user's consent; imported now, before the data
        elif name not in models.list_models() or name not in protocols:
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


def protocol_changes(args):
    """The options that change the Fig. 5, QK-gap and incremental protocols, checked."""
    from skqk.experiments.presets import Overrides

    sizes = {}
    for option in ("sk_samples", "samples"):
        text = getattr(args, option)
        if text is not None:
            flag = "--" + option.replace("_", "-")
            sizes[option] = parse_int_list(text, flag)
            if 0 in sizes[option]:
                raise ValueError(f"{flag} must be positive, got {text!r}")
    if args.max_samples is not None and args.max_samples <= 0:
        raise ValueError(f"--max-samples must be positive, got {args.max_samples}")
    options = json_object(args.model_kwargs, "--model-kwargs") if args.model_kwargs is not None else {}
    return Overrides(
        model=args.model,
        model_kwargs=options,
        max_samples=args.max_samples,
        epochs=args.epochs,
        retrain_epochs=args.retrain_epochs,
        seeds=parse_int_list(args.seeds) if args.seeds else None,
        **sizes,
    )


def reproduce_federated(args) -> None:
    from skqk.experiments.federated import PRESETS

    if args.preset not in PRESETS:
        raise ValueError(f"reproduce federated has the presets {', '.join(PRESETS)}, not {args.preset!r}")
    refuse_tables(args, "reproduce federated")
    require_flower()
    from skqk.experiments.federated import run_federated_experiment as run
    from skqk.experiments.report import summary_table

    preset = PRESETS[args.preset]
    names = (args.models or ",".join(preset.models)).split(",")
    for name in names:
        if name not in preset.models:
            raise ValueError(f"unknown model {name!r} for federated; choose from {', '.join(preset.models)}")
    print(preset.scaling(), file=sys.stderr)
    seeds = parse_int_list(args.seeds or "0")
    data = load_data(args)
    results = run(preset, names, data, args.out, args.data_dir, args.cache_dir, progress=not args.quiet, seeds=seeds)
    print(summary_table(results))
    print(f"results in {args.out}/results.json")


def reproduce_analytic(args) -> None:
    from dataclasses import replace

    from skqk.experiments.analytic import PRESETS, STUDIES, run_analytic
    from skqk.experiments.presets import customised
    from skqk.experiments.report import summary_table

    if args.preset not in PRESETS:
        raise ValueError(f"reproduce analytic has the presets {', '.join(PRESETS)}, not {args.preset!r}")
    refuse_tables(args, "reproduce analytic")
    require_flower()
    preset = PRESETS[args.preset]  # the sizes and epochs options change its Fig. 5 cells (and incremental epochs)
    preset = replace(preset, studies=customised(preset.studies, protocol_changes(args)))
    names = (args.models or ",".join(preset.studies.default_models)).split(",")
    for name in names:
        if name not in preset.studies.fig5:
            raise ValueError(f"unknown model {name!r} for analytic; choose from {', '.join(preset.studies.fig5)}")
    print(preset.studies.scaling(), preset.federated.scaling(), sep="\n", file=sys.stderr)
    seeds = parse_int_list(args.seeds or "0")
    studies = (args.studies or ",".join(STUDIES)).split(",")
    if not set(studies) <= set(STUDIES):
        raise ValueError(f"--studies takes {', '.join(STUDIES)}, got {args.studies!r}")
    data = load_data(args)
    results = run_analytic(preset, names, data, args.out, args.data_dir, args.cache_dir, not args.quiet, seeds, studies)
    for study, result in results.items():
        print(f"{study}:\n{summary_table(result)}")
    print(f"results in {args.out}/{{{','.join(results)}}}/results.json")


def reproduce_drift(args) -> None:
    from skqk.experiments.drift import PRESETS, run_drift
    from skqk.experiments.report import incremental_table

    if args.preset not in PRESETS:
        raise ValueError(f"reproduce drift has the presets {', '.join(PRESETS)}, not {args.preset!r}")
    refuse_tables(args, "reproduce drift")
    preset = PRESETS[args.preset]
    offered = [s.name for s in preset.streams]
    names = args.streams.split(",") if args.streams else offered
    unknown = [n for n in names if n not in offered]
    if unknown:
        raise ValueError(f"preset {preset.name} has no stream {', '.join(unknown)}; choose from {', '.join(offered)}")
    print(preset.scaling(), file=sys.stderr)
    seeds = parse_int_list(args.seeds) if args.seeds else None
    results = run_drift(preset, names, args.out, args.data_dir, args.cache_dir, not args.quiet, seeds)
    for name, result in results.items():
        print(f"{name}: {result['data']}\n{incremental_table(result['summary'])}")
    print(f"results in {args.out}/results.json (each stream: {args.out}/STREAM/results.json)")


COMMANDS = {"reproduce": cmd_reproduce}
