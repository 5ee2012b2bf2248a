"""`skqk patterns`: what a pattern store holds."""

from __future__ import annotations

import json

from skqk.cli.options import add_command


def add_parsers(sub) -> None:
    p = add_command(sub, "patterns", help="inspect a pattern store")
    psub = p.add_subparsers(dest="patterns_command", required=True, metavar="SUBCOMMAND")
    info = add_command(psub, "info", help="sites, bits per sample, samples, size, active fraction per site")
    info.add_argument("store")
    info.add_argument("--json", action="store_true")


def cmd_patterns(args) -> None:
    from skqk.store import PatternStore, format_info

    info = PatternStore.open(args.store).info()
    print(json.dumps(info) if args.json else format_info(info))


COMMANDS = {"patterns": cmd_patterns}
