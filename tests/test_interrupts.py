"""Ctrl-C: exit status 130 and one line saying how the command continues, whatever the interrupt hit."""

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from skqk import cli


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal, also when the tests run as a background job (which
    starts with SIGINT ignored, and passes that on to the processes it starts)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_the_process_ignores_stays_ignored(monkeypatch, capsys):
    """A background job (`skqk train ... &` in a script, `nohup`) is started with SIGINT ignored: skqk must not
    make it interruptible again."""

    def command(args):
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setitem(cli.COMMANDS, "train", command)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    assert cli.main(["train", "--out", "x"]) == 0
    assert capsys.readouterr().err == ""
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def interrupt_turned_into(error: Exception):
    """A command hit by Ctrl-C inside a library that reports it as another error (seen: a dataclass error, a
    RecursionError in an interrupted import)."""

    def command(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            raise error from None

    return command


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["reproduce", "fig5", "--out", "x"], "rerun the same command to continue"),
        (["train", "--out", "x"], "continue the run with --resume"),
        (["evaluate", "--checkpoint", "x"], None),
    ],
)
def test_interrupt_reported_as_another_error_still_says_interrupted(monkeypatch, capsys, argv, hint):
    monkeypatch.setitem(cli.COMMANDS, argv[0], interrupt_turned_into(TypeError("non-default argument follows")))

    code = cli.main(argv)

    assert code == 130
    assert capsys.readouterr().err == f"skqk: interrupted{f' ({hint})' if hint else ''}\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the command


def test_an_error_without_an_interrupt_is_still_an_error(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "train", lambda args: (_ for _ in ()).throw(ValueError("bad input")))

    assert cli.main(["train", "--out", "x"]) == 1
    assert capsys.readouterr().err == "skqk: error: bad input\n"


@pytest.mark.parametrize(
    "argv, hint", [(["reproduce", "fig5"], "rerun the same command to continue"), (["train"], "continue the run")]
)
def test_ctrl_c_while_importing_torch_at_start_up_says_interrupted(tmp_path, argv, hint):
    """The first seconds of every command import torch; Ctrl-C there must not print a traceback."""
    script = textwrap.dedent(
        """
        import builtins, os, signal, sys
        real_import = builtins.__import__
        def interrupting_import(name, *args, **kwargs):
            if name == "torch" and "torch" not in sys.modules:
                os.kill(os.getpid(), signal.SIGINT)
            return real_import(name, *args, **kwargs)
        builtins.__import__ = interrupting_import
        sys.argv = ["skqk", *sys.argv[1:]]
        from skqk.cli import main
        sys.exit(main())
        """
    )
    command = [sys.executable, "-c", script, *argv, "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True)

    assert done.returncode == 130
    assert re.fullmatch(rf"skqk: interrupted( \({hint}[^)]*\))?\n", done.stderr), done.stderr
