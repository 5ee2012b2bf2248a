"""The `skqk` parser: --debug and -q mean the same before and after the subcommand."""

import pytest

from skqk import cli


@pytest.mark.parametrize(
    "argv",
    [
        ["-q", "--debug", "train", "--out", "x"],
        ["train", "--out", "x", "-q", "--debug"],
        ["--debug", "train", "-q", "--out", "x"],
        ["patterns", "info", "store", "--quiet", "--debug"],
    ],
)
def test_debug_and_quiet_are_taken_before_or_after_the_subcommand(argv):
    args = cli.build_parser().parse_args(argv)
    assert (args.quiet, args.debug) == (True, True)


@pytest.mark.parametrize("argv", [["train", "--out", "x"], ["patterns", "info", "store"]])
def test_debug_and_quiet_default_to_off(argv):
    args = cli.build_parser().parse_args(argv)
    assert (args.quiet, args.debug) == (False, False)


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path, capsys):
    argv = ["patterns", "info", str(tmp_path / "no-store")]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.startswith("skqk: error: ")
    with pytest.raises((ValueError, OSError)):
        cli.main([*argv, "--debug"])
