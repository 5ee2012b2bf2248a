"""Helpers for the pipeline tests: a tiny learnable image-folder dataset, CLI runners, file snapshots.

Test modules import this one by name (``pythonpath = ["tests"]``). Its `tiny_models` fixture, imported into a
test module, adds two tiny networks to the zoo while that module runs, for in-process tests only (subprocesses
see the real zoo, so they use lenet5 on 16x16 images); other modules never see them.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from skqk import cli, models

CLASS_COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
IMAGE_SIZE = 16  # lenet5's two 5x5 convolutions and 2x2 pools need >= 16 pixels
TRAIN_PER_CLASS = 40
TEST_PER_CLASS = 15
TRAIN_SAMPLES = TRAIN_PER_CLASS * len(CLASS_COLOURS)
TEST_SAMPLES = TEST_PER_CLASS * len(CLASS_COLOURS)
REPO = Path(__file__).resolve().parents[1]


def tiny(in_channels: int = 3, image_size: int = 16, num_classes: int = 10, hidden: int = 16, dropout: float = 0.0):
    """Conv, ReLU, max pooling and a hidden ReLU layer: every kind of gate site, ~2k weights; with `dropout`
    after the hidden layer (like AlexNet's classifier) training consumes the RNG."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Linear(4 * (image_size // 4) ** 2, hidden),
        nn.ReLU(),
        *([nn.Dropout(dropout)] if dropout else []),
        nn.Linear(hidden, num_classes),
    )


TEST_MODELS = {"tiny": tiny, "tiny_dropout": functools.partial(tiny, hidden=32, dropout=0.5)}


@pytest.fixture(scope="module", autouse=True)
def tiny_models():
    """The test models in the zoo for one test module (import this fixture into it), removed afterwards so that
    tests that enumerate the zoo elsewhere are unaffected."""
    for name, builder in TEST_MODELS.items():
        models.register_model(name)(builder)
    yield
    for name in TEST_MODELS:
        models._REGISTRY.pop(name, None)


def write_colour_tree(root: Path, size: int = IMAGE_SIZE, seed: int = 0) -> Path:
    """`root/{train,test}/<colour>/<i>.png`: noisy images tinted by their class, so a small net learns them."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for name, colour in CLASS_COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                noise = rng.integers(-60, 61, (size, size, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def make_dataset(root: Path):
    """Write the colour tree under `root` and load it: (data_dir, cache_dir, Dataset)."""
    from skqk.data import load_dataset

    data_dir, cache_dir = write_colour_tree(root / "data"), root / "cache"
    return data_dir, cache_dir, load_dataset(data_dir, cache_dir, progress=False)


def data_args(data_dir: Path, cache_dir: Path) -> list[str]:
    return ["--data-dir", str(data_dir), "--cache-dir", str(cache_dir)]


def run_cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m skqk.cli -q ARGS` in a fresh process; with `check`, a non-zero exit fails with its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "skqk.cli", "-q", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"skqk {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def start_cli(*args: str) -> subprocess.Popen:
    """`python -m skqk.cli -q ARGS` started in the background (output discarded, so no pipe fills up)."""
    return subprocess.Popen(
        [sys.executable, "-m", "skqk.cli", "-q", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def cli_env() -> dict[str, str]:
    """This environment, with the checkout's sources first on the path (the package may not be installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def main_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """`skqk.cli.main` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(["-q", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """A user error: non-zero exit, exactly one `skqk: error:` line on stderr, no traceback."""
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("skqk: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (or `path` itself), by relative name, with its bytes."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def state_dict_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same keys and bit-identical tensors."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def assert_same_training_up_to_rounding(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], start: dict[str, torch.Tensor], sum_terms: int, steps: int
) -> None:
    """`a` and `b` come from one float32 training whose sums were taken in other orders (another layout, removed
    units): exact up to rounding only. A float32 sum of `sum_terms` terms is off by at most ``sum_terms * eps``
    relative (eps = 2**-23), so each step's update differs by at most that fraction, and `steps` updates add up:
    every tensor may differ by ``steps * sum_terms * eps`` times its largest update since `start` (first order,
    no amplification: a real difference of the training is of the order of the update itself)."""
    assert a.keys() == b.keys()
    for key in a:
        if not a[key].is_floating_point():
            assert torch.equal(a[key], b[key]), key
            continue
        update = (b[key].double() - start[key].double()).abs().max().item()
        bound = steps * sum_terms * 2.0**-23 * update
        assert (a[key].double() - b[key].double()).abs().max().item() <= bound, f"{key} differs by more than {bound}"


class RunsCodeWhenUnpickled:
    """A pickle payload that creates the folder `marker` when loaded by full unpickling (not weights_only)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def wait_for_epochs(run_dir: Path, epochs: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until `run_dir/metrics.jsonl` lists `epochs` epochs (so resume.pt holds at least one fewer)."""
    import time

    metrics = Path(run_dir) / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before epoch {epochs}: {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no epoch {epochs} within {timeout} s")
