"""What several commands share: option groups (one helper each, so a group reads the same wherever it appears), the
parsers of option values, and the data the data options name."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from skqk.pipeline.config import SGDConfig


def add_run_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """--debug and -q; before the subcommand (`suppress` False: their defaults) and after it (`suppress` True: given
    there, they override; not given, they leave the value from before the subcommand alone)."""
    default = argparse.SUPPRESS if suppress else False
    p.add_argument("--debug", action="store_true", default=default, help="show tracebacks on errors")
    p.add_argument("--quiet", "-q", action="store_true", default=default, help="no progress bars")


def add_command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand's parser, taking --debug and -q like the main parser."""
    p = sub.add_parser(name, **kwargs)
    add_run_options(p, suppress=True)
    return p


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
        help="CIFAR-10 folder, image-folder tree or its .tar(.gz); or a table: .csv or .parquet (with --target), or "
        ".npz of x_train, y_train, x_test, y_test (default: $SKQK_DATA, then the cache, downloading CIFAR-10 there "
        "if absent)",
    )
    p.add_argument("--cache-dir", help="where decoded data is cached (default: $SKQK_CACHE or ~/.cache/skqk)")
    table = p.add_argument_group("tables (--data-dir FILE.csv|.parquet|.npz; pip install -e '.[tabular]')")
    table.add_argument("--target", help="the target column of a table")
    table.add_argument("--features", help="comma-separated feature columns (default: all but target and time)")
    table.add_argument(
        "--time", help="a column that orders the rows: samples arrive in time order, the test split is the latest"
    )
    table.add_argument(
        "--task",
        choices=["classification", "regression"],
        help="regression: a numeric target, trained with MSE, reported as RMSE, MAE and R² (default classification)",
    )
    table.add_argument("--test-fraction", type=float, help="share of the rows held out for testing (default 0.2)")
    table.add_argument("--test-from", help="with --time: the rows from this time on are the test split")
    table.add_argument(
        "--missing",
        choices=["refuse", "impute"],
        help="missing feature values: refuse (default), or impute (numeric: the train median; categorical: a "
        "category of its own)",
    )


TABLE_OPTIONS = ("target", "features", "time", "task", "test_fraction", "test_from", "missing")


def table_spec(args):
    """How to read a table, from the options given; None when none was (images, or an .npz's defaults)."""
    given = {name: getattr(args, name) for name in TABLE_OPTIONS if getattr(args, name, None) is not None}
    if not given:
        return None
    from skqk.data import TableSpec

    if "features" in given:
        given["features"] = tuple(c.strip() for c in given["features"].split(",") if c.strip())
    return TableSpec(**given)


def refuse_tables(args, command: str) -> None:
    """Commands whose library side reads images with class labels only."""
    if table_spec(args) is not None:
        raise ValueError(f"{command} takes image data with class labels; the table options are for the other commands")


def add_selection_options(p: argparse.ArgumentParser) -> None:
    """Which samples a pattern recording covers (`record`, `refresh`): the same permutation as the runs'."""
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the nested sample subsets (default 0)")
    p.add_argument("--balanced", action="store_true", help="class-balanced sample subsets")
    add_order_options(p)
    p.add_argument("--batch-size", type=int, default=1024, help="inference batch size (default 1024)")


def class_chunks_of(args) -> tuple[int, int] | None:
    """The class-incremental order of `record` and `refresh`, checked like a run's configuration."""
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


def add_trust_option(p: argparse.ArgumentParser, meaning: str | None = None) -> None:
    p.add_argument(
        "--model",
        metavar="PKG.MOD:CALLABLE",
        help=meaning
        or "your own model the checkpoint names by import path: skqk imports and runs that code only when you pass "
        "the same path here (a checkpoint holds names, not code); zoo models need no flag",
    )


def trust_of(args) -> tuple[str, ...]:
    """The import paths the user trusts in this invocation: what --model names (skqk.models.resolve)."""
    return (args.model,) if args.model else ()


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


def load_data(args):
    """The command's dataset, once every checkpoint it names was found readable: a mistyped path is reported as
    such, never as a failure to fetch data it would not have used."""
    from skqk.data import load_dataset
    from skqk.pipeline import distributed
    from skqk.pipeline.checkpoint import load_model_checkpoint

    for path in [getattr(args, "checkpoint", None), getattr(args, "start", None), *getattr(args, "checkpoints", [])]:
        if path is not None:
            load_model_checkpoint(path)
    with distributed.local_main_first():  # under torchrun, one process per machine fills the cache
        return load_dataset(args.data_dir, args.cache_dir, progress=not args.quiet, table=table_spec(args))


def parse_int_list(text: str, option: str = "--seeds") -> tuple[int, ...]:
    """Distinct non-negative integers from a comma-separated list (seeds, or sample counts)."""
    try:
        values = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None
    if len(set(values)) != len(values) or min(values) < 0:
        raise ValueError(f"{option} must be distinct non-negative integers, got {text!r}")
    return values


def number_list(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, got {text!r}") from None
