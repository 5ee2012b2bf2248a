"""Phase 3 through `skqk record`: appending m new samples records only theirs and never touches the chunks already
written; patterns read back are the selector's; a store is only ever used with the selector that recorded it."""

import json

import numpy as np
import pytest
import torch
from pipeline_helpers import (
    TRAIN_SAMPLES,
    assert_one_line_error,
    data_args,
    main_in_process,
    make_dataset,
    snapshot,
    tiny_models,  # noqa: F401  (fixture: the test models)
)

from skqk.data import subset_indices
from skqk.pipeline.config import RetrainConfig, TrainConfig
from skqk.pipeline.record import record_from_checkpoint, selector_from_checkpoint
from skqk.pipeline.retrain import retrain
from skqk.pipeline.train import train
from skqk.store import PatternStore


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("record")
    data_dir, cache_dir, data = make_dataset(root)
    cfg = TrainConfig(model="tiny", samples=60, epochs=1, batch_size=20, lr=0.05)
    train(cfg, data, root / "pre", progress=False)
    train(TrainConfig(**{**cfg.to_dict(), "seed": 1}), data, root / "other", progress=False)
    return {
        "data": data,
        "args": data_args(data_dir, cache_dir),
        "pre": root / "pre" / "model.pt",
        "other": root / "other" / "model.pt",
    }


def record(capsys, setup, checkpoint, samples, store, *extra):
    return main_in_process(
        capsys, "record", "--checkpoint", checkpoint, "--samples", samples, "--store", store, *extra, *setup["args"]
    )


def selector_patterns(selector, data, indices):
    return selector(data.normalize(data.train.images[indices]))


def assert_same_patterns(a, b):
    assert list(a) == list(b)
    for site in a:
        assert torch.equal(a[site], b[site]), site


def test_appending_records_only_the_new_samples_and_leaves_old_chunks_untouched(setup, tmp_path, capsys):
    store = tmp_path / "store"
    code, out, err = record(capsys, setup, setup["pre"], 60, store, "--batch-size", "25")
    assert code == 0, err
    assert "60 samples" in out
    first = snapshot(store)

    code, out, err = record(capsys, setup, setup["pre"], TRAIN_SAMPLES, store, "--batch-size", "25")
    assert code == 0, err
    second = snapshot(store)

    old_chunks = {name: content for name, content in first.items() if name != "manifest.json"}
    assert old_chunks and all(second.get(name) == content for name, content in old_chunks.items())
    order = subset_indices(setup["data"].train.labels, TRAIN_SAMPLES)
    new_files = set(second) - set(first)
    appended = np.concatenate([np.frombuffer(second[name], "<i8") for name in new_files if name.endswith(".indices")])
    assert sorted(appended.tolist()) == sorted(order[60:].tolist())  # only the m new samples were written

    selector = selector_from_checkpoint(setup["pre"])
    opened = PatternStore.open(store, selector)
    assert len(opened) == TRAIN_SAMPLES
    shuffled = order[torch.randperm(TRAIN_SAMPLES)]
    assert_same_patterns(opened.read(shuffled), selector_patterns(selector, setup["data"], shuffled))


def test_recording_samples_already_held_again_changes_nothing(setup, tmp_path, capsys):
    store = tmp_path / "store"
    assert record(capsys, setup, setup["pre"], 60, store)[0] == 0
    before = snapshot(store)
    code, _, err = record(capsys, setup, setup["pre"], 45, store)  # all held already: nothing to write
    assert code == 0, err
    assert snapshot(store) == before


def test_recording_with_another_selector_into_a_store_is_refused(setup, tmp_path, capsys):
    store = tmp_path / "store"
    assert record(capsys, setup, setup["pre"], 60, store)[0] == 0
    before = snapshot(store)
    code, _, err = record(capsys, setup, setup["other"], TRAIN_SAMPLES, store)
    assert_one_line_error(code, err, "another selector")
    code, _, err = record(capsys, setup, setup["pre"], TRAIN_SAMPLES, store, "--pooling", "frozen")
    assert_one_line_error(code, err, "another selector")  # frozen pooling switches are a different SK
    assert snapshot(store) == before


def test_recording_more_samples_than_exist_is_refused(setup, tmp_path, capsys):
    store = tmp_path / "store"
    assert record(capsys, setup, setup["pre"], 60, store)[0] == 0
    before = snapshot(store)
    code, _, err = record(capsys, setup, setup["pre"], TRAIN_SAMPLES + 1, store)
    assert_one_line_error(code, err, f"cannot take a subset of {TRAIN_SAMPLES + 1} samples")
    code, _, err = record(capsys, setup, setup["pre"], TRAIN_SAMPLES, store, "--batch-size", "0")
    assert_one_line_error(code, err, "batch_size must be positive")
    assert snapshot(store) == before
    code, _, err = record(capsys, setup, setup["pre"], 0, tmp_path / "new")
    assert_one_line_error(code, err)
    assert not (tmp_path / "new").exists()


def test_a_qk_checkpoint_records_with_the_unchanged_selector_of_its_pretrained_net(setup, tmp_path, capsys):
    store = tmp_path / "store"
    assert record(capsys, setup, setup["pre"], 60, store)[0] == 0
    cfg = RetrainConfig(samples=TRAIN_SAMPLES, epochs=2, batch_size=20, lr=0.05, patterns="on-the-fly")
    retrain(cfg, setup["pre"], setup["data"], tmp_path / "qk", progress=False)

    code, _, err = record(capsys, setup, tmp_path / "qk" / "model.pt", TRAIN_SAMPLES, store)
    assert code == 0, err
    selector = selector_from_checkpoint(setup["pre"])
    opened = PatternStore.open(store, selector)
    everything = subset_indices(setup["data"].train.labels, TRAIN_SAMPLES)
    assert_same_patterns(opened.read(everything), selector_patterns(selector, setup["data"], everything))


def test_qk_retraining_refuses_a_store_of_another_selector_or_lacking_samples(setup, tmp_path, capsys):
    store = tmp_path / "store"
    assert record(capsys, setup, setup["pre"], 60, store)[0] == 0
    before = snapshot(store)
    common = ["retrain", "--method", "qk", "--store", store, "--epochs", "1", *setup["args"]]

    code, _, err = main_in_process(
        capsys, *common, "--checkpoint", setup["other"], "--samples", 60, "--out", tmp_path / "a"
    )
    assert_one_line_error(code, err, "another selector")
    code, _, err = main_in_process(
        capsys, *common, "--checkpoint", setup["pre"], "--samples", TRAIN_SAMPLES, "--out", tmp_path / "b"
    )
    assert_one_line_error(code, err, f"lacks {TRAIN_SAMPLES - 60} of the {TRAIN_SAMPLES} samples", "skqk record")
    assert snapshot(store) == before
    assert not (tmp_path / "a" / "model.pt").exists() and not (tmp_path / "b" / "model.pt").exists()


def test_pooling_follows_checkpoint_store_and_flag_and_a_conflict_is_a_one_line_error(setup, tmp_path, capsys):
    store = tmp_path / "store"
    assert record(capsys, setup, setup["pre"], 60, store)[0] == 0  # recorded with live pooling (the default)
    before = snapshot(store)
    common = ["retrain", "--checkpoint", setup["pre"], "--samples", 60, "--epochs", "1", "--batch-size", "20"]
    common += setup["args"]

    code, _, err = main_in_process(capsys, *common, "--store", store, "--pooling", "frozen", "--out", tmp_path / "a")
    assert_one_line_error(code, err, "conflicting max-pooling modes", "recorded with live", "--pooling is frozen")
    assert snapshot(store) == before and not (tmp_path / "a").exists()

    code, _, err = main_in_process(capsys, *common, "--store", store, "--out", tmp_path / "b")  # the store's
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "config.json").read_text())["pooling"] == "live"
    code, _, err = record(capsys, setup, tmp_path / "b" / "model.pt", 60, tmp_path / "s", "--pooling", "frozen")
    assert_one_line_error(code, err, "conflicting max-pooling modes", "holds live", "--pooling is frozen")
    assert not (tmp_path / "s").exists()

    fly = [*common, "--patterns", "on-the-fly", "--out", tmp_path / "c"]
    assert main_in_process(capsys, *fly, "--pooling", "frozen")[0] == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["pooling"] == "frozen"
    code, _, err = main_in_process(capsys, *fly, "--resume")  # live by default: not what the run started with
    assert_one_line_error(code, err, "--resume with other settings", "pooling: 'frozen' -> 'live'")


def test_record_and_retrain_say_how_large_the_store_is_before_they_start(setup, tmp_path, capsys):
    store = tmp_path / "store"
    record_from_checkpoint(setup["pre"], setup["data"], 60, store, progress=True)
    per_sample = PatternStore.open(store).bytes_per_sample
    size = f"{per_sample:,} bytes per sample x 60 samples"
    assert f"pattern store {store}: {size}" in capsys.readouterr().err
    cfg = RetrainConfig(method="qk", samples=60, epochs=1, batch_size=20, patterns="on-the-fly")
    retrain(cfg, setup["pre"], setup["data"], tmp_path / "fly", progress=True)
    assert f"patterns on the fly: a store of them would take {size}" in capsys.readouterr().err
    cfg = RetrainConfig(method="qk", samples=60, epochs=1, batch_size=20)
    retrain(cfg, setup["pre"], setup["data"], tmp_path / "read", store=store, progress=True)
    err = capsys.readouterr().err
    assert f"pattern store {store}: {size} = " in err and "it fits in memory" in err
