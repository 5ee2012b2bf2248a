"""Checkpoints: safe loading (weights only, never code), atomic saving, and one-line refusals of checkpoints
that are corrupt, hold no model, or belong to another architecture or other data, leaving files untouched."""

import errno
import os
import re

import pytest
import torch
from pipeline_helpers import (
    RunsCodeWhenUnpickled,
    assert_one_line_error,
    data_args,
    main_in_process,
    make_dataset,
    snapshot,
    tiny_models,  # noqa: F401  (fixture: the test models)
)

from skqk import models
from skqk.decoupled import DecoupledModel
from skqk.pipeline.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_for_evaluation,
    network_entry,
    save_checkpoint,
)
from skqk.pipeline.config import RetrainConfig, TrainConfig
from skqk.pipeline.retrain import retrain
from skqk.pipeline.train import train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data, a pre-trained `tiny` checkpoint, and the folder they live in."""
    root = tmp_path_factory.mktemp("ckpt")
    data_dir, cache_dir, data = make_dataset(root)
    train(TrainConfig(model="tiny", samples=60, epochs=2, batch_size=20, lr=0.05), data, root / "pre", progress=False)
    return {"root": root, "data": data, "args": data_args(data_dir, cache_dir), "pre": root / "pre" / "model.pt"}


def refused_by_every_command(capsys, setup, tmp_path, checkpoint, *fragments):
    """evaluate, record and retrain (both methods) all refuse `checkpoint` in one line and change no file."""
    before = snapshot(checkpoint)
    commands = [
        ["evaluate", "--json"],
        ["record", "--samples", "30", "--store", tmp_path / "store"],
        ["retrain", "--method", "qk", "--patterns", "on-the-fly", "--samples", "30", "--out", tmp_path / "qk"],
        ["retrain", "--method", "traditional", "--samples", "30", "--out", tmp_path / "traditional"],
    ]
    for command in commands:
        code, out, err = main_in_process(capsys, *command, "--checkpoint", checkpoint, *setup["args"])
        assert_one_line_error(code, err, *fragments)
        assert out == ""
    assert snapshot(checkpoint) == before
    assert not (tmp_path / "store").exists()
    for run in ("qk", "traditional"):
        assert not (tmp_path / run / "model.pt").exists()


def test_pickled_code_in_a_checkpoint_is_refused_and_never_run(setup, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "skqk-checkpoint", "version": 1, "kind": "network", "x": RunsCodeWhenUnpickled(marker)}, path)

    with pytest.raises(CheckpointError, match="unreadable") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)
    refused_by_every_command(capsys, setup, tmp_path, path, "unreadable")
    assert not marker.exists()

    torch.load(path, weights_only=False)  # control: the payload is live, full unpickling runs it
    assert marker.is_dir()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_refused(setup, tmp_path, capsys, damage):
    content = setup["pre"].read_bytes()
    damaged = {"truncated": content[: len(content) // 2], "garbage": b"\x00not a zip" * 100, "empty": b""}[damage]
    path = tmp_path / "model.pt"
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    refused_by_every_command(capsys, setup, tmp_path, path, "unreadable")


def test_missing_checkpoint_is_refused(setup, tmp_path, capsys):
    code, _, err = main_in_process(capsys, "evaluate", "--checkpoint", tmp_path / "nope.pt", *setup["args"])
    assert_one_line_error(code, err, "does not exist")


def test_torch_file_that_is_no_skqk_checkpoint_is_refused(setup, tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save(torch.load(setup["pre"], weights_only=True)["state_dict"], path)  # a bare state dict
    with pytest.raises(CheckpointError, match="not an skqk checkpoint"):
        load_checkpoint(path)
    refused_by_every_command(capsys, setup, tmp_path, path, "not an skqk checkpoint")


def test_resume_state_is_not_taken_for_a_model(setup, tmp_path, capsys):
    refused_by_every_command(capsys, setup, tmp_path, setup["pre"].parent / "resume.pt", "holds no model", "model.pt")


def edited(setup, tmp_path, **changes):
    ckpt = torch.load(setup["pre"], weights_only=True)
    ckpt.update(changes)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return path


def test_checkpoint_claiming_another_architecture_is_refused(setup, tmp_path, capsys):
    path = edited(setup, tmp_path, model="vgg8")
    with pytest.raises(CheckpointError, match="does not fit the vgg8 architecture"):
        load_for_evaluation(path)
    refused_by_every_command(capsys, setup, tmp_path, path, "does not fit the vgg8 architecture")


def test_checkpoint_with_mismatching_weight_shapes_is_refused(setup, tmp_path, capsys):
    state = torch.load(setup["pre"], weights_only=True)["state_dict"]
    path = edited(setup, tmp_path, state_dict={**state, "0.weight": torch.zeros(5, 3, 3, 3)})
    refused_by_every_command(capsys, setup, tmp_path, path, "does not fit the tiny architecture", "size mismatch")


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.bool])
def test_weights_of_another_dtype_are_refused_not_cast(setup, tmp_path, capsys, dtype):
    """An int64 state would load truncated and a float64 one rounded: the network would not be the saved one."""
    state = torch.load(setup["pre"], weights_only=True)["state_dict"]
    path = edited(setup, tmp_path, state_dict={**state, "0.weight": (state["0.weight"] * 100).to(dtype)})
    refused_by_every_command(capsys, setup, tmp_path, path, f"0.weight is saved as {dtype}", "holds torch.float32")


def test_checkpoint_for_other_data_is_refused(setup, tmp_path, capsys):
    """A net for 10 classes (or for 32x32 images) must not be scored or re-trained on 3-class 16x16 data."""
    for kwargs in ({"num_classes": 10}, {"image_size": 32}):
        kwargs = {"in_channels": 3, "image_size": 16, "num_classes": 3, **kwargs}
        path = tmp_path / f"{kwargs['num_classes']}-{kwargs['image_size']}.pt"
        save_checkpoint(path, network_entry("tiny", kwargs, models.build("tiny", **kwargs)))
        refused_by_every_command(capsys, setup, tmp_path, path, "was trained for", "the data is")


def test_save_is_atomic_a_failed_write_keeps_the_old_checkpoint(setup, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(setup["pre"].read_bytes())

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"kind": "network"})
    monkeypatch.undo()
    assert path.read_bytes() == setup["pre"].read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind
    assert load_checkpoint(path)["kind"] == "network"


def fill_disk_for(monkeypatch, name: str) -> None:
    """Every write to a file whose name contains `name` fails as on a full disk (ENOSPC), wherever it comes from
    (torch's checkpoint writer included); the file is found from its descriptor (Linux /proc)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("files are told apart by /proc/self/fd")
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        file = real_fdopen(fd, *args, **kwargs)
        if name in os.readlink(f"/proc/self/fd/{fd}"):

            def write(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            file.write = write
        return file

    monkeypatch.setattr(os, "fdopen", fdopen)


def test_full_disk_while_saving_a_checkpoint_says_so_and_keeps_the_old_one(setup, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(setup["pre"].read_bytes())
    fill_disk_for(monkeypatch, "model.pt")

    with pytest.raises(OSError, match=f"disk full: cannot write {re.escape(str(path))} "):
        save_checkpoint(path, {"kind": "network"})

    assert path.read_bytes() == setup["pre"].read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_full_disk_during_training_is_one_line_naming_the_checkpoint(setup, tmp_path, monkeypatch, capsys):
    fill_disk_for(monkeypatch, "resume.pt")
    command = ["train", "--model", "tiny", "--samples", "30", "--epochs", "1", "--out", tmp_path / "run"]

    code, _, err = main_in_process(capsys, *command, *setup["args"])

    assert_one_line_error(code, err, f"disk full: cannot write {tmp_path / 'run' / 'resume.pt'}")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "metrics.jsonl"]


def test_qk_checkpoint_evaluates_as_trained_and_a_tampered_selector_is_refused(setup, tmp_path):
    cfg = RetrainConfig(samples=60, epochs=1, batch_size=20, patterns="on-the-fly")
    result = retrain(cfg, setup["pre"], setup["data"], tmp_path / "qk", progress=False)
    module, ckpt = load_for_evaluation(tmp_path / "qk" / "model.pt")
    assert isinstance(module, DecoupledModel) and ckpt["kind"] == "decoupled"
    x = setup["data"].normalize(setup["data"].test.images[:8])
    assert torch.equal(module(x), result.module.eval()(x))

    state = dict(ckpt["selector_state"])
    state["0.weight"] = state["0.weight"] + 1  # an SK the recorded fingerprint does not belong to
    tampered = tmp_path / "tampered.pt"
    torch.save({**ckpt, "selector_state": state}, tampered)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_for_evaluation(tampered)
