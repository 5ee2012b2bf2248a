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
    """What the README's commands have made so far: run folders and files with the SK they hold, and stores with
    the SK that recorded them and their samples."""

    def __init__(self):
        self.sk: dict[str, str] = {}  # run folder or checkpoint file -> the run whose network is its SK
        self.stores: dict[str, tuple[str, int]] = {}  # store -> (SK, samples recorded)

    def sk_of(self, path: str, command: str) -> str:
        folder, _, name = path.rpartition("/")
        made = folder if name == "model.pt" and folder in self.sk else path
        assert made in self.sk, f"`skqk {command}` reads {path}, which no earlier README command makes"
        return self.sk[made]

    def record_into(self, store: str, sk: str, samples: int, command: str) -> None:
        if store in self.stores:
            assert self.stores[store][0] == sk, f"`skqk {command}` records into {store}, which another SK recorded"
        self.stores[store] = (sk, max(samples, self.stores.get(store, (sk, 0))[1]))

    def check(self, args) -> None:
        """Refuse references to what does not exist yet; then record what the command makes."""
        command = args.command
        sks = [self.sk_of(p, command) for p in [getattr(args, "checkpoint", None), getattr(args, "start", None)]
               + getattr(args, "checkpoints", []) if p is not None]  # fmt: skip
        out = getattr(args, "out", None)
        if out is not None and command in ("train", "retrain", "refresh", "federated"):  # refuse a finished run
            assert out not in self.sk or getattr(args, "resume", False), f"`skqk {command}` reuses the run {out}"
        store = getattr(args, "store", None)
        if command == "record":
            self.record_into(store, sks[0], args.samples, command)
        elif command == "refresh":
            self.record_into(store, out, args.samples, command)  # the refreshed SK is the new run's
        elif store is not None:
            assert store in self.stores, f"`skqk {command}` reads the store {store}, which no earlier command records"
            recorded_by, samples = self.stores[store]
            if command == "retrain":
                assert recorded_by == sks[0], f"`skqk retrain` reads {store}, which another SK recorded"
                needed = args.sample_range[1] if args.sample_range else args.samples or 4096
                assert samples >= needed, (
                    f"`skqk retrain` reads samples up to {needed} from {store}, which holds {samples}"
                )
        if command == "merge":
            self.sk[args.out] = sks[0]
        elif command == "train" or (command == "retrain" and args.method == "traditional"):
            self.sk[out] = out  # a network: its own SK
        elif command == "refresh":
            self.sk[out] = out
        elif out is not None:
            self.sk[out] = sks[0] if sks else out  # a QK run keeps its start's SK


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
        (
            "skqk train --out R\nskqk record --checkpoint R/model.pt --samples 10 --store S\n"
            "skqk train --out R0\nskqk record --checkpoint R0/model.pt --samples 20 --store S",
            "records into S, which another SK recorded",
        ),
        ("skqk train --out R\nskqk train --out R", "reuses the run R"),
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
    """Every `skqk` command of the README's workflow blocks (four phases, chunks, merge, the tabular path), and
    the example scripts that make their files, in order, in one folder, on CIFAR-10 from $SKQK_DATA, with one epoch
    per training command."""
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
        if words[0] in ("python", "python3") and words[1].startswith("examples/"):  # makes a file later ones read
            argv = [sys.executable, str(README.parent / words[1]), *words[2:]]
        elif words[0] == "skqk" and words[1] not in NOT_RUN:
            argv = [sys.executable, "-m", "skqk.cli", "-q", *smoke_version(words, data)[1:]]
        else:
            continue
        proc = subprocess.run(argv, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(words)} exited {proc.returncode}: {proc.stderr[-2000:]}"
        ran += 1
    assert ran >= 14


def github_anchors(markdown: Path) -> set[str]:
    """The anchors GitHub gives a file's headings (not the comments of its code blocks): lower case, punctuation
    dropped, spaces as hyphens, a repeated heading numbered."""
    anchors, seen = set(), {}
    prose = re.sub(r"^```.*?^```", "", markdown.read_text(), flags=re.M | re.S)
    for heading in re.findall(r"^#+ (.+)$", prose, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", [README, *sorted((README.parent / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_names_a_file_and_a_heading_that_exist(page):
    for target, anchor in re.findall(r"\]\((?!https?:|mailto:)([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text()):
        path = (page.parent / target) if target else page
        assert path.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in github_anchors(path), f"{page.name} links to {target}#{anchor}: no such heading"
