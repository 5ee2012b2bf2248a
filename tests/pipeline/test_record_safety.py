"""`skqk record` and the stores it writes under hostile use: a store names the data and subset order it was
recorded from and refuses others; two recordings of one store are serialised by its lock; a recording killed
midway keeps its committed rounds; a folder left by a killed creation, or created empty, is recorded into."""

import signal
import subprocess
import sys
import time

import pytest
import torch
from pipeline_helpers import (
    TRAIN_SAMPLES,
    assert_one_line_error,
    cli_env,
    data_args,
    main_in_process,
    make_dataset,
    run_cli,
    snapshot,
    tiny_models,  # noqa: F401  (fixture: the test models)
    write_colour_tree,
)

from skqk.data import load_dataset, subset_fingerprint, subset_indices
from skqk.pipeline.config import TrainConfig
from skqk.pipeline.record import selector_from_checkpoint
from skqk.pipeline.train import train
from skqk.store import PatternStore


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The colour data, a same-size dataset of other pixels, and a lenet5 checkpoint (subprocesses see the real
    zoo only)."""
    root = tmp_path_factory.mktemp("record-safety")
    data_dir, cache_dir, data = make_dataset(root)
    other_dir = write_colour_tree(root / "other", seed=1)
    train(TrainConfig(model="lenet5", samples=30, epochs=1, batch_size=30), data, root / "pre", progress=False)
    return {
        "data": data,
        "args": data_args(data_dir, cache_dir),
        "other_args": data_args(other_dir, cache_dir),
        "other_data": load_dataset(other_dir, cache_dir, progress=False),
        "pre": root / "pre" / "model.pt",
    }


def record(capsys, setup, store, samples=60, *extra, data="args"):
    command = ["record", "--checkpoint", setup["pre"], "--samples", samples, "--store", store, *extra]
    return main_in_process(capsys, *command, *setup[data])


def assert_holds_the_selectors_patterns(setup, store, samples):
    opened = PatternStore.open(store)
    indices = subset_indices(setup["data"].train.labels, samples)
    assert (opened.data, opened.subset) == (setup["data"].fingerprint, subset_fingerprint(setup["data"].train.labels))
    assert opened.info()["data"] == opened.data
    assert torch.equal(opened.indices, indices.sort().values)
    selector = selector_from_checkpoint(setup["pre"])
    assert opened.read(indices) == selector(setup["data"].normalize(setup["data"].train.images[indices]))


# -- what a store was recorded from --------------------------------------------------------------------------------
def test_appending_with_other_data_of_the_same_size_is_refused(setup, tmp_path, capsys):
    store = tmp_path / "store"
    assert record(capsys, setup, store, 30)[0] == 0
    before = snapshot(store)

    code, _, err = record(capsys, setup, store, 60, data="other_args")

    assert_one_line_error(code, err, "holds the patterns of other data", "record a new store")
    assert snapshot(store) == before


def test_qk_retraining_with_other_data_than_the_store_is_refused(setup, tmp_path, capsys):
    store = tmp_path / "store"
    assert record(capsys, setup, store, 60)[0] == 0
    command = ["retrain", "--checkpoint", setup["pre"], "--store", store, "--samples", "60", "--epochs", "1"]

    code, _, err = main_in_process(capsys, *command, "--out", tmp_path / "run", *setup["other_args"])

    assert_one_line_error(code, err, "holds the patterns of other data")
    assert not (tmp_path / "run").exists()


def test_another_subset_order_is_refused_by_record_and_retrain(setup, tmp_path, capsys):
    store = tmp_path / "store"
    assert record(capsys, setup, store, 60)[0] == 0
    before = snapshot(store)

    code, _, err = record(capsys, setup, store, 90, "--subset-seed", "1")
    assert_one_line_error(code, err, "another sample subset order (--subset-seed/--balanced)")
    command = ["retrain", "--checkpoint", setup["pre"], "--store", store, "--samples", "60", "--balanced"]
    code, _, err = main_in_process(capsys, *command, "--epochs", "1", "--out", tmp_path / "run", *setup["args"])
    assert_one_line_error(code, err, "another sample subset order")
    assert snapshot(store) == before


# -- folders a store is created in ---------------------------------------------------------------------------------
def test_an_empty_pre_created_folder_is_recorded_into(setup, tmp_path, capsys):
    (tmp_path / "store").mkdir()

    code, _, err = record(capsys, setup, tmp_path / "store", 60)

    assert code == 0, err
    assert_holds_the_selectors_patterns(setup, tmp_path / "store", 60)


def test_a_folder_left_by_a_creation_killed_midway_is_recorded_into(setup, tmp_path, capsys):
    """SIGKILL while the new store's first manifest is being written: the folder holds only its temporary file,
    is not a store yet, and must not block recording ("no pattern store ... cannot read manifest.json")."""
    store = tmp_path / "store"
    command = ["record", "--checkpoint", setup["pre"], "--samples", 60, "--store", store, *setup["args"]]
    env = {**cli_env(), "SKQK_STORE_CRASH_AT": "manifest-written"}
    killed = subprocess.run([sys.executable, "-m", "skqk.cli", "-q", *map(str, command)], env=env)
    assert killed.returncode == -signal.SIGKILL
    assert store.is_dir() and not PatternStore.exists(store) and any(store.iterdir())

    code, _, err = record(capsys, setup, store, 60)

    assert code == 0, err
    assert_holds_the_selectors_patterns(setup, store, 60)
    assert sorted(p.suffix for p in store.iterdir()) == [".indices", ".json", ".records"]  # leftovers removed


# -- interruptions and concurrent writers --------------------------------------------------------------------------
def test_a_killed_recording_keeps_its_committed_rounds_and_a_rerun_records_the_rest(setup, tmp_path, capsys):
    store = tmp_path / "store"
    command = ["record", "--checkpoint", setup["pre"], "--store", store, "--batch-size", "5", *setup["args"]]
    command += ["--samples", TRAIN_SAMPLES]
    env = {**cli_env(), "SKQK_STORE_CRASH_AT": "committed"}  # SIGKILL right after the first commit
    killed = subprocess.run([sys.executable, "-m", "skqk.cli", "-q", *map(str, command)], env=env)
    assert killed.returncode == -signal.SIGKILL
    kept = len(PatternStore.open(store))
    assert 0 < kept < TRAIN_SAMPLES  # one round of 8 batches of 5, not all or nothing

    run_cli(*command)

    assert_holds_the_selectors_patterns(setup, store, TRAIN_SAMPLES)


def test_a_second_recording_of_one_store_waits_or_fails_at_once_and_never_takes_the_firsts_chunks(setup, tmp_path):
    store = tmp_path / "store"
    command = ["record", "--checkpoint", setup["pre"], "--samples", 60, "--store", store, *setup["args"]]
    run_cli(*command[:4], 30, *command[5:])
    unsaved = store / "chunk-1-0123456789abcdef.records"  # a chunk the first recording has not committed yet
    with PatternStore.lock(store):  # what the first recording holds while it works
        unsaved.write_bytes(b"written, not committed")

        refused = run_cli(*command, "--no-wait", check=False)
        waiting = subprocess.Popen(
            [sys.executable, "-m", "skqk.cli", "-q", *map(str, command)],
            env=cli_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        said = waiting.stderr.readline()
        while said and "waiting for it" not in said:  # read up to its message that it waits (or its end)
            said = waiting.stderr.readline()
        time.sleep(1)
        still_waiting = waiting.poll() is None
        assert unsaved.exists()
        unsaved.unlink()  # the first recording ends (here: without committing it)
    _, err = waiting.communicate(timeout=120)

    assert_one_line_error(refused.returncode, refused.stderr, "is being written by another process")
    assert "being written by another process; waiting for it" in said
    assert still_waiting
    assert waiting.returncode == 0, err
    assert_holds_the_selectors_patterns(setup, store, 60)


def test_lock_is_released_when_its_holder_is_killed(setup, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from skqk.store import PatternStore\n"
            "with PatternStore.lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(600)",
            store,
        ],
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "locked\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    with PatternStore.lock(store, wait=False):  # would raise if the dead holder still held it
        pass
