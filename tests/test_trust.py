"""Trust: a checkpoint, a federated message or the current directory never makes skqk run code. A model named
by import path is built only when the user names that same path in this invocation (``--model``; in Python,
``trust=``); otherwise every command refuses in one line, before anything is imported, and leaves no trace."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pipeline_helpers import assert_one_line_error, cli_env, data_args, main_in_process, make_dataset

from skqk import models
from skqk.decoupled import DecoupledModel, decouple
from skqk.pipeline.checkpoint import build_network, decoupled_entry, save_checkpoint

DATA = {"in_channels": 3, "image_size": 16, "num_classes": 3}  # the colour tree's: fits every data check


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data, and two QK checkpoints of one lenet5 SK (the copies a `merge --start` needs)."""
    root = tmp_path_factory.mktemp("trust")
    data_dir, cache_dir, _ = make_dataset(root)
    net = models.build("lenet5", **DATA).eval()
    copies = []
    for i in range(2):
        pair = DecoupledModel(*decouple(net))
        with torch.no_grad():
            next(pair.estimator.parameters()).add_(0.01 * i)
        copies.append(root / f"copy{i}.pt")
        save_checkpoint(copies[-1], {**decoupled_entry("lenet5", DATA, net.state_dict(), pair), "samples": 60})
    return {"args": data_args(data_dir, cache_dir), "copies": copies}


class Traces:
    """Files a call could create, truncate or delete; `untouched()` says none of that happened."""

    def __init__(self, root: Path):
        self.created = root / "created"
        self.victim = root / "victim.txt"
        self.victim.write_text("keep me")
        self.folder = root / "folder"
        (self.folder / "inner").mkdir(parents=True)
        self.script = root / "payload.py"
        self.script.write_text(f"open({str(self.created)!r}, 'w').close()\n")
        self.hub = root / "hub"
        self.hub.mkdir()
        (self.hub / "hubconf.py").write_text(f"open({str(self.created)!r}, 'w').close()\ndef net(**kw): pass\n")

    def untouched(self) -> bool:
        return not self.created.exists() and self.victim.read_text() == "keep me" and (self.folder / "inner").is_dir()


HOSTILE = {  # callable: the keyword arguments a crafted checkpoint gives it, each leaving a trace if it ran
    "os:system": lambda t: {"command": f"touch {t.created}"},
    "subprocess:getoutput": lambda t: {"cmd": f"touch {t.created}"},
    "subprocess:Popen": lambda t: {"args": ["touch", str(t.created)]},
    "os:popen": lambda t: {"cmd": f"touch {t.created}"},
    "runpy:run_path": lambda t: {"path_name": str(t.script)},
    "torch.hub:load": lambda t: {"repo_or_dir": str(t.hub), "model": "net", "source": "local", "trust_repo": True},
    "builtins:open": lambda t: {"file": str(t.victim), "mode": "w"},
    "shutil:rmtree": lambda t: {"path": str(t.folder)},
}


def crafted(path: Path, model: str, kwargs: dict, samples: int = 60) -> Path:
    """A checkpoint with every field a QK checkpoint has, whose model is `model` called with `kwargs`."""
    junk = {"w": torch.zeros(1)}
    save_checkpoint(
        path,
        {
            "kind": "decoupled",
            "model": model,
            "model_kwargs": {**DATA, **kwargs},
            "pooling": "live",
            "selector_state": junk,
            "selector_fingerprint": "0" * 16,
            "state_dict": junk,
            "samples": samples,
        },
    )
    return path


def commands(ckpt: Path, other: Path, tmp: Path, copies: list[Path]) -> dict[str, list]:
    """Every command that loads a checkpoint, given `ckpt` (and `other`, a second copy for `merge`)."""
    return {
        "evaluate": ["evaluate", "--checkpoint", ckpt],
        "record": ["record", "--checkpoint", ckpt, "--samples", "30", "--store", tmp / "store"],
        "retrain": ["retrain", "--checkpoint", ckpt, "--samples", "30", "--patterns", "on-the-fly", "--out", tmp / "r"],
        "refresh": ["refresh", "--checkpoint", ckpt, "--samples", "30", "--store", tmp / "s2", "--out", tmp / "f"],
        "merge": ["merge", ckpt, other, "-o", tmp / "merged.pt"],
        "merge --start": ["merge", *copies, "--method", "task-arithmetic", "--start", ckpt, "--lambda", "1"]
        + ["-o", tmp / "ta.pt"],
    }


@pytest.mark.parametrize("command", ["evaluate", "record", "retrain", "refresh", "merge", "merge --start"])
@pytest.mark.parametrize("target", list(HOSTILE))
def test_a_checkpoint_naming_a_callable_is_refused_by_every_command_and_runs_nothing(
    setup, tmp_path, capsys, target, command
):
    traces = Traces(tmp_path)
    ckpt = crafted(tmp_path / "model.pt", target, HOSTILE[target](traces))
    other = crafted(tmp_path / "other.pt", target, HOSTILE[target](traces), samples=61)
    argv = commands(ckpt, other, tmp_path, setup["copies"])[command]
    code, out, err = main_in_process(capsys, *argv, *(setup["args"] if command != "merge" else []))
    assert_one_line_error(code, err, f"--model {target}")
    assert traces.untouched()
    assert not any((tmp_path / name).exists() for name in ("store", "s2", "r", "f", "merged.pt", "ta.pt"))


def test_the_skqk_command_refuses_a_crafted_checkpoint_in_one_line_with_a_non_zero_exit(setup, tmp_path):
    traces = Traces(tmp_path)
    ckpt = crafted(tmp_path / "model.pt", "os:system", HOSTILE["os:system"](traces))
    proc = skqk_command(tmp_path, "evaluate", "--checkpoint", ckpt, *setup["args"])
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"skqk: error: {ckpt}: model 'os:system' is an import path, and importing it runs its code: pass "
        "--model os:system if you trust it (in Python: trust=['os:system'])"
    ]
    assert traces.untouched()


def skqk_command(cwd: Path, *args) -> subprocess.CompletedProcess:
    """The installed `skqk` command as pip writes it (a script whose folder, not the current one, is first on
    sys.path), run in `cwd`."""
    script = cwd / "bin" / "skqk"
    script.parent.mkdir(exist_ok=True)
    script.write_text("import sys\nfrom skqk.cli import main\nsys.exit(main())\n")
    run = [sys.executable, script, "-q", *map(str, args)]
    return subprocess.run(run, cwd=cwd, capture_output=True, text=True, timeout=120, env=cli_env())


def python_m(module: str):
    """`python -m skqk` or `python -m skqk.cli`, run in `cwd`: Python puts the current directory first on sys.path."""

    def run(cwd: Path, *args) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", module, "-q", *map(str, args)]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, env=cli_env())

    return run


ENTRY_POINTS = {"skqk": skqk_command, "python -m skqk": python_m("skqk"), "python -m skqk.cli": python_m("skqk.cli")}


@pytest.mark.parametrize("command", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
def test_modules_planted_in_the_current_directory_never_run(tmp_path, command):
    """`org` (copy.py probes for Jython's) and `_winapi` (Windows-only) are modules Python looks for and does not
    find on Linux; in the folder skqk runs from they must stay unimported, whatever the command and entry point."""
    created = tmp_path / "created"
    for name in ("org", "_winapi", "lenet5"):
        (tmp_path / f"{name}.py").write_text(f"open({str(created)!r}, 'a').write({name!r})\n")
    nodata = ["--data-dir", tmp_path / "nodata"]
    for args in (["--help"], ["patterns", "info", tmp_path / "nothing"], ["evaluate", "--checkpoint", "x.pt", *nodata]):
        proc = command(tmp_path, *args)
        assert not created.exists(), (args, created.read_text())
        assert proc.returncode == (0 if args == ["--help"] else 1), proc.stderr


def test_a_trusted_model_is_imported_from_the_current_directory_and_only_that_module(tmp_path, capsys):
    created = tmp_path / "created"
    (tmp_path / "mynet.py").write_text(
        textwrap.dedent("""
        from torch import nn
        def build(num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, num_classes))
        """)
    )
    (tmp_path / "org.py").write_text(f"open({str(created)!r}, 'w').close()\n")
    network = {"kind": "network", "model": "mynet:build", "model_kwargs": DATA}
    code = f"""
import copy, sys
from skqk.pipeline.checkpoint import build_network
network = build_network({network!r}, None, trust=["mynet:build"])
copy.deepcopy(network)  # copy.py imports org lazily
print(type(network).__name__, "mynet" in sys.modules, "org" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=cli_env(), timeout=120)  # fmt: skip
    assert proc.stdout.split() == ["Sequential", "True", "False"], proc.stderr
    assert not created.exists()


def test_recorded_keyword_arguments_cannot_widen_what_is_trusted(tmp_path):
    traces = Traces(tmp_path)
    ckpt = {"kind": "network", "model": "os:system", "model_kwargs": {"command": f"touch {traces.created}"}}
    for kwargs in ({"trust": ["os:system"]}, {"trust": "os:system"}, {"name": "lenet5"}):
        with pytest.raises(ValueError, match="not keywords|import path"):
            build_network({**ckpt, "model_kwargs": {**ckpt["model_kwargs"], **kwargs}}, None)
    with pytest.raises(models.UntrustedModelError):
        models.resolve("os:system", trust="os:system")  # a string is not a list of paths
    assert traces.untouched()
