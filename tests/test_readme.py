"""The README runs as written (docs stay true to the code): its Python example, and every `skqk` command of its
shell blocks, which must parse and use only runs, stores and files that an earlier command of the README made
(a store with enough samples for the re-training that reads it)."""

import re
import shlex
from pathlib import Path

import pytest

from skqk.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
OTHER_PROGRAMS = {"python3", "pip", "python", "."}  # install and test commands, not run here


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README lost its Python example"
    exec(compile(blocks[0], "README.md", "exec"), {})


def shell_commands(text: str) -> list[list[str]]:
    """The commands of every ```bash block, in order, comments dropped, environment assignments kept in front."""
    commands = []
    for _, block in re.findall(r"^( *)```bash\n(.*?)^\1```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line.split(" #")[0]):
                words = shlex.split(part, comments=True)
                if words:
                    commands.append(words)
    return commands


class ReadmeState:
    """What the README's commands have made so far: run folders, files, and stores with their recorded samples."""

    def __init__(self):
        self.runs: set[str] = set()
        self.files: set[str] = set()
        self.stores: dict[str, int] = {}

    def check_checkpoint(self, path: str, command: str) -> None:
        folder, _, name = path.rpartition("/")
        made = (folder in self.runs and name == "model.pt") or path in self.files
        assert made, f"`skqk {command}` reads {path}, which no earlier README command makes"

    def check(self, args) -> None:
        """Refuse references to what does not exist yet; then record what the command makes."""
        command = args.command
        for path in [
            getattr(args, "checkpoint", None),
            getattr(args, "start", None),
            *getattr(args, "checkpoints", []),
        ]:
            if path is not None:
                self.check_checkpoint(path, command)
        store = getattr(args, "store", None)
        if command in ("record", "refresh"):
            self.stores[store] = max(self.stores.get(store, 0), args.samples)
        elif store is not None:
            assert store in self.stores, f"`skqk {command}` reads the store {store}, which no earlier command records"
            if command == "retrain":
                needed = args.sample_range[1] if args.sample_range else args.samples or 4096
                assert self.stores[store] >= needed, (
                    f"`skqk retrain` reads samples up to {needed} from {store}, which holds {self.stores[store]}"
                )
        if command == "merge":
            self.files.add(args.out)
        elif getattr(args, "out", None) is not None:
            self.runs.add(args.out)


def test_every_readme_command_parses_and_uses_only_what_earlier_commands_made():
    commands = shell_commands(README.read_text())
    state, parser = ReadmeState(), build_parser()
    skqk_commands = 0
    for words in commands:
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # SKQK_DATA=... python -m pytest
            words = words[1:]
        if words[0] in OTHER_PROGRAMS:
            continue
        assert words[0] == "skqk", f"the README runs {' '.join(words)!r}: a program this test does not know"
        try:
            args = parser.parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"the README's {' '.join(words)!r} does not parse")
        state.check(args)
        skqk_commands += 1
    assert skqk_commands >= 15


@pytest.mark.parametrize(
    "block, message",
    [
        ("skqk record --checkpoint RUN_X/model.pt --samples 10 --store S", "RUN_X/model.pt, which no earlier"),
        (
            "skqk train --out R\nskqk record --checkpoint R/model.pt --samples 10 --store S\n"
            "skqk retrain --checkpoint R/model.pt --store S --sample-range 10:20 --out Q",
            "samples up to 20 from S, which holds 10",
        ),
        ("skqk train --out R\nskqk merge R/model.pt RUN_D/model.pt -o M.pt", "RUN_D/model.pt"),
        ("skqk train --out R --epochz 3", "does not parse"),
    ],
)
def test_the_readme_check_finds_what_a_fresh_user_would_trip_over(block, message):
    """The mistakes a fresh clone's user met in the README (an undefined RUN_D, a store lacking samples)."""
    state, parser = ReadmeState(), build_parser()
    with pytest.raises((AssertionError, pytest.fail.Exception), match=re.escape(message)):
        for words in shell_commands(f"```bash\n{block}\n```\n"):
            try:
                args = parser.parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"{' '.join(words)!r} does not parse")
            state.check(args)


SMOKE = ["--epochs", "1", "--eval-samples", "500"]  # the smoke configuration of every training command
NOT_RUN = {"reproduce", "bench", "federated"}  # long; their smoke runs are tests/experiments/ and tests/federated/


def smoke_version(words: list[str], data: str) -> list[str]:
    """A README command as written, on the data in $SKQK_DATA, with one epoch for the commands that train."""
    words = [data if w == "DIR" else w for w in words]
    if words[1] in ("train", "retrain"):
        if "--epochs" in words:
            at = words.index("--epochs")
            words = words[:at] + words[at + 2 :]
        words += SMOKE
    return words


@pytest.mark.slow
def test_readme_command_blocks_run_as_written_in_a_smoke_configuration(tmp_path):
    """Every `skqk` command of the README's workflow blocks (four phases, chunks, merge), in order, in one folder,
    on CIFAR-10 from $SKQK_DATA, with one epoch per training command."""
    import os
    import subprocess
    import sys

    from pipeline_helpers import cli_env

    data = os.environ.get("SKQK_DATA")
    if not data or not Path(data).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but CIFAR-10 is missing: SKQK_DATA={data!r}")
        pytest.skip("set SKQK_DATA to CIFAR-10 to run the README's commands")
    ran = 0
    for words in shell_commands(README.read_text()):
        if words[0] != "skqk" or words[1] in NOT_RUN:
            continue
        command = smoke_version(words, data)
        proc = subprocess.run(
            [sys.executable, "-m", "skqk.cli", "-q", *command[1:]], cwd=tmp_path, env=cli_env(),
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, f"{' '.join(words)} exited {proc.returncode}: {proc.stderr[-2000:]}"
        ran += 1
    assert ran >= 14
