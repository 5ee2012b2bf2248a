"""`skqk bench`: QK-only against traditional re-training, timed (the options are the benchmark's own)."""

from __future__ import annotations

from skqk.cli.options import add_command


def add_parsers(sub) -> None:
    from skqk.bench.protocol import add_arguments

    add_arguments(add_command(sub, "bench", help="benchmark QK-only against traditional re-training (medians, ratios)"))


def cmd_bench(args) -> None:
    from skqk.bench.run import main_from_args

    main_from_args(args)


COMMANDS = {"bench": cmd_bench}
