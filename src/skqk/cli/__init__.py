"""`skqk` command line: a thin layer over the library; options override the config dataclasses' fields.

One module per command family, each command's parser next to the function that runs it: `phases` (train, record,
retrain, refresh, evaluate), `analytic` (solve), `combine` (merge, federated), `experiments` (reproduce), `claims`,
`bench`, `inspection` (patterns); `options` holds what they share. Errors a user can cause print one line on stderr
and exit non-zero (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from skqk._errors import one_line
from skqk.cli import analytic, bench, claims, combine, experiments, inspection, phases
from skqk.cli.options import add_run_options

FAMILIES = (
    phases,
    analytic,
    combine,
    experiments,
    claims,
    bench,
    inspection,
)  # in the order `skqk --help` lists their commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skqk",
        description="Decouple structural (SK) and quantitative (QK) knowledge of ReLU networks and "
        "re-train only the QK (the paper's four phases).",
    )
    add_run_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


COMMANDS = {name: command for family in FAMILIES for name, command in family.COMMANDS.items()}


DISTRIBUTED_COMMANDS = ("train", "record", "retrain", "solve")  # run unchanged under torchrun; they have --device


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
    "federated": " (a federated run does not resume: rerun the same command to start it over in the same --out)",
    "solve": " (rerun the same command: a run folder without model.pt is unfinished and is written again)",
}


def run_command(args: argparse.Namespace, setup: Callable[[], object] | None = None) -> int:
    """Run the command; errors a user can cause become one line on stderr and exit status 1, Ctrl-C exit 130."""
    try:
        with counting_interrupts() as interrupts, warnings.catch_warnings():
            warnings.showwarning = show_warning
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


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, like an error (not Python's ``file:line: UserWarning`` and the source line)."""
    print(f"skqk: warning: {one_line(message)}", file=sys.stderr)


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
