"""`skqk` on a tiny synthetic image-folder dataset: the four phases end to end, one-line errors for bad input that
leave existing files intact, diverged training, and resumption of runs killed with SIGKILL (real processes)."""

import contextlib
import io
import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from pipeline_helpers import (
    TEST_SAMPLES,
    TRAIN_SAMPLES,
    assert_one_line_error,
    assert_same_tensors,
    data_args,
    main_in_process,
    make_dataset,
    read_metrics,
    run_cli,
    snapshot,
    start_cli,
    state_dict_of,
    tiny_models,  # noqa: F401  (fixture: the test models)
    wait_for_epochs,
    write_colour_tree,
)

from skqk import __version__, cli
from skqk.pipeline.checkpoint import load_checkpoint, save_checkpoint
from skqk.pipeline.config import RetrainConfig, TrainConfig
from skqk.pipeline.record import selector_from_checkpoint

SGD = ["--epochs", "3", "--batch-size", "20", "--lr", "0.05"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data_dir, cache_dir, data = make_dataset(root)
    return {"root": root, "data_dir": data_dir, "data": data, "args": data_args(data_dir, cache_dir)}


@pytest.fixture(scope="module")
def pipeline(setup):
    """The four phases and the baseline through `skqk.cli.main`, once: {step: (exit code, stdout, stderr)}."""
    root, args = setup["root"], setup["args"]
    steps = {
        "train": ["train", "--model", "tiny", "--samples", "60", *SGD, "--out", root / "pre"],
        "record": ["record", "--checkpoint", root / "pre/model.pt", "--samples", TRAIN_SAMPLES, "--store", root / "st"],
        "qk": ["retrain", "--method", "qk", "--store", root / "st", "--checkpoint", root / "pre/model.pt"]
        + ["--samples", TRAIN_SAMPLES, *SGD, "--out", root / "qk"],
        "traditional": ["retrain", "--method", "traditional", "--checkpoint", root / "pre/model.pt"]
        + ["--samples", TRAIN_SAMPLES, *SGD, "--out", root / "traditional"],
        **{f"evaluate {run}": ["evaluate", "--json", "--checkpoint", root / run / "model.pt"] for run in RUNS},
        "info": ["patterns", "info", "--json", root / "st"],
    }
    return {name: run_main(command + (args if name != "info" else [])) for name, command in steps.items()}


RUNS = ("pre", "qk", "traditional")


def run_main(argv):
    """`skqk.cli.main` with stdout and stderr captured (module-scoped fixtures cannot use capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["-q", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def test_every_phase_succeeds(pipeline):
    for name, (code, _, err) in pipeline.items():
        assert code == 0, f"{name}: {err}"


def test_runs_write_model_resolved_config_and_per_epoch_metrics(pipeline, setup):
    expected = {
        "pre": TrainConfig(model="tiny", samples=60, epochs=3, batch_size=20, lr=0.05),
        "qk": RetrainConfig(samples=TRAIN_SAMPLES, method="qk", epochs=3, batch_size=20, lr=0.05),
        "traditional": RetrainConfig(samples=TRAIN_SAMPLES, method="traditional", epochs=3, batch_size=20, lr=0.05),
    }
    for run, cfg in expected.items():
        run_dir = setup["root"] / run
        assert {"model.pt", "config.json", "metrics.jsonl"} <= {p.name for p in run_dir.iterdir()}
        saved = json.loads((run_dir / "config.json").read_text())
        assert saved["config"] == cfg.to_dict()  # every field, the defaults resolved
        assert saved["kind"] == type(cfg).__name__ and saved["code_version"].startswith(__version__)
        metrics = read_metrics(run_dir)
        assert [m["epoch"] for m in metrics] == [1, 2, 3]
        for m in metrics:
            assert 0 <= m["val_accuracy"] <= 1 and math.isfinite(m["val_loss"])
        ckpt = load_checkpoint(run_dir / "model.pt")
        assert ckpt["kind"] == ("decoupled" if run == "qk" else "network")
        assert ckpt["history"] == metrics
    assert f"{setup['root'] / 'pre'}/model.pt: epoch 3" in pipeline["train"][1]


def test_evaluate_json_prints_one_object_matching_the_run(pipeline, setup):
    for run in RUNS:
        code, out, _ = pipeline[f"evaluate {run}"]
        lines = out.strip().splitlines()
        assert len(lines) == 1
        result = json.loads(lines[0])
        assert 0 <= result["accuracy"] <= 1 and math.isfinite(result["loss"]) and result["loss"] >= 0
        assert result["kind"] == ("decoupled" if run == "qk" else "network") and result["model"] == "tiny"
        assert result["samples"] == TEST_SAMPLES
        last = read_metrics(setup["root"] / run)[-1]  # eval_samples 0: the whole test split, like evaluate
        assert result["accuracy"] == last["val_accuracy"]
        assert result["loss"] == pytest.approx(last["val_loss"], rel=1e-6)


def test_patterns_info_json_describes_the_recorded_store(pipeline, setup):
    code, out, _ = pipeline["info"]
    info = json.loads(out)
    selector = selector_from_checkpoint(setup["root"] / "pre" / "model.pt")
    assert info["samples"] == TRAIN_SAMPLES and info["pooling"] == "live"
    assert info["fingerprint"] == selector.fingerprint
    assert info["fingerprint"] == load_checkpoint(setup["root"] / "qk" / "model.pt")["selector_fingerprint"]
    assert [site["name"] for site in info["sites"]] == selector.sites
    gates = [site for site in info["sites"] if site["kind"] == "gate"]
    assert gates and all(0 < site["active_fraction"] < 1 for site in gates)
    assert info["bytes_per_sample"] == sum(-(-site["bits_per_sample"] // 8) for site in info["sites"])


def test_evaluate_json_and_errors_in_a_real_process(setup, tmp_path, capsys):
    # a subprocess knows only the zoo, not the test models: a briefly trained lenet5
    command = ["train", "--model", "lenet5", "--samples", "30", "--epochs", "1", "--out", tmp_path / "pre"]
    assert main_in_process(capsys, *command, *setup["args"])[0] == 0
    proc = run_cli("evaluate", "--json", "--checkpoint", tmp_path / "pre" / "model.pt", *setup["args"])
    result = json.loads(proc.stdout)  # stdout holds the one object and nothing else
    assert result["model"] == "lenet5" and result["accuracy"] == read_metrics(tmp_path / "pre")[-1]["val_accuracy"]
    proc = run_cli("train", "--out", tmp_path / "run", "--data-dir", tmp_path / "missing", check=False)
    assert_one_line_error(proc.returncode, proc.stderr, "does not exist")
    assert proc.stdout == ""


def test_evaluate_json_of_a_network_with_nan_outputs_is_valid_json(pipeline, setup, tmp_path, capsys):
    ckpt = load_checkpoint(setup["root"] / "pre" / "model.pt")
    next(iter(ckpt["state_dict"].values())).fill_(float("nan"))
    save_checkpoint(tmp_path / "nan.pt", ckpt)

    code, out, err = main_in_process(capsys, "evaluate", "--json", "--checkpoint", tmp_path / "nan.pt", *setup["args"])

    assert code == 0, err
    result = json.loads(out, parse_constant=lambda name: pytest.fail(f"bare {name} in {out}"))
    assert result["loss"] is None and result["finite"] is False
    assert pipeline["evaluate pre"][0] == 0 and json.loads(pipeline["evaluate pre"][1])["finite"] is True


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "--checkpoint", "{missing}"],
        ["record", "--checkpoint", "{missing}", "--samples", "10", "--store", "{tmp}/store"],
        ["retrain", "--checkpoint", "{missing}", "--out", "{tmp}/run"],
        ["refresh", "--checkpoint", "{missing}", "--samples", "10", "--store", "{tmp}/s", "--out", "{tmp}/r"],
        ["merge", "{pre}", "{missing}", "-o", "{tmp}/m.pt", "--method", "task-arithmetic", "--start", "{pre}"],
        ["merge", "{qk}", "{qk2}", "-o", "{tmp}/m.pt", "--method", "task-arithmetic", "--start", "{missing}"],
    ],
)
def test_a_mistyped_checkpoint_is_reported_before_any_data_is_fetched(
    pipeline, setup, tmp_path, capsys, monkeypatch, command
):
    """Without --data-dir a command would fetch CIFAR-10 first; the missing file is what it must report."""
    import skqk.data

    monkeypatch.setattr(skqk.data, "load_dataset", lambda *a, **k: pytest.fail("data fetched before the check"))
    root = setup["root"]
    names = {"missing": tmp_path / "mdoel.pt", "tmp": tmp_path, "pre": root / "pre/model.pt"}
    names |= {"qk": root / "qk/model.pt", "qk2": root / "traditional/model.pt"}
    command = [part.format(**names) for part in command]

    code, _, err = main_in_process(capsys, *command)

    assert_one_line_error(code, err, f"checkpoint {tmp_path / 'mdoel.pt'} does not exist")


# -- bad input ----------------------------------------------------------------------------------------------------
def bad_inputs(root, args):
    """{case: (command line without --out, fragment of the expected message)}."""
    retrain = ["retrain", "--checkpoint", root / "pre" / "model.pt", "--patterns", "on-the-fly", "--samples", "30"]
    return {
        "missing data": (["train", "--data-dir", root / "missing", "--cache-dir", root / "cache"], "does not exist"),
        "malformed data": (["train", "--data-dir", root / "not-a-dataset", "--cache-dir", root / "cache"], "no single"),
        "unknown model": (["train", "--model", "lenet6", *args], "unknown model 'lenet6'"),
        "too many samples": (["train", "--model", "tiny", "--samples", TRAIN_SAMPLES + 1, *args], "cannot take"),
        "zero epochs": (["train", "--epochs", "0", *args], "epochs must be positive"),
        "negative epochs": ([*retrain, "--epochs", "-2", *args], "epochs must be positive"),
        "zero batch size": (["train", "--batch-size", "0", *args], "batch_size must be positive"),
        "zero lr": (["train", "--lr", "0", *args], "lr must be positive"),
        "negative lr": ([*retrain, "--lr", "-0.1", *args], "lr must be positive"),
        "nan lr": (["train", "--lr", "nan", *args], "lr must be positive"),
        "infinite lr": (["train", "--lr", "inf", *args], "lr must be positive and finite, got inf"),
        "nan momentum": (["train", "--momentum", "nan", *args], "momentum must lie in [0, 1), got nan"),
        "momentum 1": ([*retrain, "--momentum", "1", *args], "momentum must lie in [0, 1), got 1.0"),
        "nan weight decay": ([*retrain, "--weight-decay", "nan", *args], "weight_decay must be non-negative"),
        "negative weight decay": (["train", "--weight-decay", "-1", *args], "weight_decay must be non-negative"),
        "zero retrain samples": ([*retrain[:-1], "0", *args], "samples must be positive"),
        "more new classes than the data has": (
            ["train", "--model", "tiny", "--samples", "30", "--class-incremental", "4", "--chunk-samples", "30", *args],
            "chunks of 4 new classes: the data has 3",
        ),
    }


@pytest.mark.parametrize("case", list(bad_inputs(Path("."), [])))
def test_bad_input_is_one_line_error_and_leaves_files_intact(pipeline, setup, tmp_path, capsys, case):
    root = setup["root"]
    (root / "not-a-dataset").mkdir(exist_ok=True)
    (root / "not-a-dataset" / "readme.txt").write_text("no train/ or test/ folders here")
    command, message = bad_inputs(root, setup["args"])[case]
    before = {run: snapshot(root / run) for run in (*RUNS, "st")}
    out = tmp_path / "new-run"
    code, stdout, err = main_in_process(capsys, *command, "--out", out)
    assert_one_line_error(code, err, message)
    assert stdout == ""
    assert not (out / "model.pt").exists() and not (out / "resume.pt").exists()
    if case != "too many samples":  # the others are refused before the run folder is made
        assert not out.exists()
    assert {run: snapshot(root / run) for run in (*RUNS, "st")} == before


def test_bad_input_aimed_at_an_existing_run_leaves_it_intact(pipeline, setup, capsys):
    pre = setup["root"] / "pre"
    before = snapshot(pre)
    same = ["train", "--model", "tiny", "--samples", "60", *SGD, "--out", pre, "--resume"]
    for command, message in (
        ([*same, "--data-dir", setup["root"] / "missing"], "does not exist"),
        ([*same, *setup["args"], "--samples", TRAIN_SAMPLES + 1], "cannot take a subset"),
        ([*same, *setup["args"], "--epochs", "0"], "epochs must be positive"),
    ):
        code, _, err = main_in_process(capsys, *command)
        assert_one_line_error(code, err, message)
    assert snapshot(pre) == before


def test_output_under_a_regular_file_is_refused(pipeline, setup, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    code, _, err = main_in_process(
        capsys, "train", "--model", "tiny", "--samples", "30", "--out", blocker / "run", *setup["args"]
    )
    assert_one_line_error(code, err, "cannot write to output folder")
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the file variant covers root")
def test_read_only_output_folder_is_refused(pipeline, setup, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = main_in_process(
            capsys, "train", "--model", "tiny", "--samples", "30", "--out", locked / "run", *setup["args"]
        )
        assert_one_line_error(code, err, "cannot write to output folder")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_finished_run_is_not_overwritten_and_resume_needs_the_same_config(pipeline, setup, capsys):
    pre = setup["root"] / "pre"
    before = snapshot(pre)
    command = ["train", "--model", "tiny", "--samples", "60", *SGD, "--out", pre, *setup["args"]]
    code, _, err = main_in_process(capsys, *command)
    assert_one_line_error(code, err, "already holds a run", "--resume")
    code, _, err = main_in_process(capsys, *command, "--resume", "--lr", "0.01")
    assert_one_line_error(code, err, "--resume with other settings", "lr: 0.05 -> 0.01")
    assert snapshot(pre) == before


@pytest.mark.parametrize("kind", ["train", "traditional", "qk"])
def test_resume_with_other_data_of_the_same_size_is_refused_naming_it(pipeline, setup, tmp_path, capsys, kind):
    """Same classes, same size, other pixels: resuming on it would mix two datasets in one history."""
    other = data_args(write_colour_tree(tmp_path / "other", seed=1), tmp_path / "cache")
    run = tmp_path / "run"
    command = {
        "train": ["train", "--model", "tiny", "--samples", "60"],
        "traditional": ["retrain", "--method", "traditional", "--checkpoint", setup["root"] / "pre/model.pt"],
        "qk": ["retrain", "--patterns", "on-the-fly", "--checkpoint", setup["root"] / "pre/model.pt"],
    }[kind] + ["--epochs", "1", "--out", run]
    if kind != "train":
        command += ["--samples", "60"]
    assert main_in_process(capsys, *command, *setup["args"])[0] == 0
    (run / "model.pt").unlink()  # as if killed after its last epoch
    before = snapshot(run)

    code, _, err = main_in_process(capsys, *command, "--resume", *other)

    assert_one_line_error(code, err, "--resume with other settings", "data: ")
    assert snapshot(run) == before


def test_diverged_training_stops_with_advice_and_keeps_the_last_good_epoch(setup, tmp_path, capsys):
    huge = ["train", "--model", "tiny", "--samples", TRAIN_SAMPLES, "--batch-size", TRAIN_SAMPLES, "--lr", "1e6"]
    code, _, err = main_in_process(capsys, *huge, "--epochs", "20", "--out", tmp_path / "run", *setup["args"])
    assert_one_line_error(code, err, "lower learning rate", "--lr")
    diverged_in = int(re.search(r"in epoch (\d+)", err).group(1))
    assert 2 <= diverged_in < 20  # one full-batch step per epoch: epoch 1 starts from the finite initial weights
    assert not (tmp_path / "run" / "model.pt").exists()

    state = load_checkpoint(tmp_path / "run" / "resume.pt")
    assert [m["epoch"] for m in state["history"]] == list(range(1, diverged_in))
    assert len(read_metrics(tmp_path / "run")) == diverged_in - 1
    # it is the state after the epoch before: the same run stopped there ends with these very weights
    code, _, err = main_in_process(
        capsys, *huge, "--epochs", diverged_in - 1, "--out", tmp_path / "short", *setup["args"]
    )
    assert code == 0, err
    assert_same_tensors(state["trainable"], state_dict_of(tmp_path / "short" / "model.pt"))


def test_resuming_a_retraining_from_another_checkpoint_is_refused(pipeline, setup, tmp_path, capsys):
    root = setup["root"]
    other = ["train", "--model", "tiny", "--samples", "60", "--epochs", "1", "--seed", "1", "--out", tmp_path / "b"]
    assert main_in_process(capsys, *other, *setup["args"])[0] == 0
    retrain = ["retrain", "--patterns", "on-the-fly", "--samples", "60", "--epochs", "2", "--out", tmp_path / "r"]
    assert main_in_process(capsys, *retrain, "--checkpoint", root / "pre" / "model.pt", *setup["args"])[0] == 0
    (tmp_path / "r" / "model.pt").unlink()  # as if killed after its last epoch
    code, _, err = main_in_process(
        capsys, *retrain, "--resume", "--checkpoint", tmp_path / "b" / "model.pt", *setup["args"]
    )
    assert_one_line_error(code, err)


def test_divergence_in_the_first_epoch_claims_no_checkpoint(setup, tmp_path, capsys):
    code, _, err = main_in_process(
        capsys, "train", "--model", "tiny", "--samples", TRAIN_SAMPLES, "--batch-size", "8", "--lr", "1e6",
        "--epochs", "5", "--out", tmp_path / "run", *setup["args"],
    )  # fmt: skip
    assert_one_line_error(code, err, "lower learning rate")
    assert "in epoch 1" in err and not (tmp_path / "run" / "resume.pt").exists()
    assert "checkpoint is kept" not in err and "nothing was saved" in err


def test_refused_retraining_creates_no_run_folder(setup, tmp_path, capsys):
    """Inputs are checked before anything is written: a refused command leaves no half-made --out behind."""
    root = setup["root"]
    for bad in (["--samples", "100000"], ["--method", "qk"]):  # too many samples; QK without --store
        out = tmp_path / f"r{len(bad[1])}"
        code, _, err = main_in_process(
            capsys, "retrain", "--checkpoint", root / "pre" / "model.pt", *bad, "--out", out, *setup["args"]
        )
        assert_one_line_error(code, err)
        assert not out.exists()


# -- resumption after SIGKILL ---------------------------------------------------------------------------------------
EPOCHS, KILL_SAMPLES = 10, 72  # killed after epoch 2: 8 epochs of margin even on a fast machine


def kill_resume_and_compare(command, run_dir, reference_dir, capsys):
    """Start `command` in a process, SIGKILL it after two epochs, resume it in another process, and check the
    result against an uninterrupted run of the same command."""
    proc = start_cli(*command, "--out", run_dir)
    try:
        wait_for_epochs(run_dir, 2, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "model.pt").exists(), "the run finished before it was killed: give it more epochs"
    saved = load_checkpoint(run_dir / "resume.pt")["history"]
    assert 1 <= len(saved) < EPOCHS

    run_cli(*command, "--out", run_dir, "--resume")
    code, _, err = main_in_process(capsys, *command, "--out", reference_dir)
    assert code == 0, err

    resumed, straight = load_checkpoint(run_dir / "model.pt"), load_checkpoint(reference_dir / "model.pt")
    assert_same_tensors(resumed["state_dict"], straight["state_dict"])
    metrics = read_metrics(run_dir)
    assert metrics[: len(saved)] == saved  # the epochs before the kill were kept, not trained again
    assert [without_seconds(m) for m in metrics] == [without_seconds(m) for m in read_metrics(reference_dir)]
    return resumed, straight


def without_seconds(metrics: dict) -> dict:
    """An epoch's metrics without its timings (those of an SK refresh included), the only part that may differ."""
    return {k: without_seconds(v) if isinstance(v, dict) else v for k, v in metrics.items() if k != "seconds"}


def test_killed_training_resumes_to_bit_identical_weights(setup, tmp_path, capsys):
    command = ["train", "--model", "lenet5", "--samples", KILL_SAMPLES, "--epochs", EPOCHS, "--batch-size", "24"]
    kill_resume_and_compare([*command, *setup["args"]], tmp_path / "killed", tmp_path / "straight", capsys)


def test_killed_qk_retraining_resumes_to_bit_identical_weights(setup, tmp_path, capsys):
    pre, store = tmp_path / "pre", tmp_path / "store"
    command = ["train", "--model", "lenet5", "--samples", "60", "--epochs", "2", "--out", pre, *setup["args"]]
    assert main_in_process(capsys, *command)[0] == 0
    command = ["record", "--checkpoint", pre / "model.pt", "--samples", KILL_SAMPLES, "--store", store]
    assert main_in_process(capsys, *command, *setup["args"])[0] == 0

    command = ["retrain", "--method", "qk", "--checkpoint", pre / "model.pt", "--store", store]
    command += ["--samples", KILL_SAMPLES, "--epochs", EPOCHS, "--batch-size", "24", *setup["args"]]
    resumed, straight = kill_resume_and_compare(command, tmp_path / "killed", tmp_path / "straight", capsys)
    assert resumed["kind"] == "decoupled"
    assert_same_tensors(resumed["selector_state"], state_dict_of(pre / "model.pt"))
    assert not torch.equal(resumed["state_dict"]["features.0.weight"], straight["selector_state"]["features.0.weight"])


def test_killed_chunked_qk_retraining_with_replay_and_auto_refresh_resumes_to_bit_identical_weights(
    setup, tmp_path, capsys
):
    pre, store = tmp_path / "pre", tmp_path / "store"
    command = ["train", "--model", "lenet5", "--samples", "24", "--epochs", "2", "--out", pre, *setup["args"]]
    assert main_in_process(capsys, *command)[0] == 0
    command = ["record", "--checkpoint", pre / "model.pt", "--samples", KILL_SAMPLES, "--store", store]
    assert main_in_process(capsys, *command, *setup["args"])[0] == 0

    command = ["retrain", "--method", "qk", "--checkpoint", pre / "model.pt", "--store", store]
    command += ["--sample-range", f"24:{KILL_SAMPLES}", "--replay", "9", "--sk-refresh", "auto"]
    command += ["--sk-refresh-threshold", "0", "--sk-refresh-every", "3", "--staleness-samples", "30"]
    command += ["--epochs", EPOCHS, "--batch-size", "24", *setup["args"]]
    resumed, straight = kill_resume_and_compare(command, tmp_path / "killed", tmp_path / "straight", capsys)

    refreshed = [m["epoch"] for m in read_metrics(tmp_path / "killed") if "sk_refresh" in m]
    assert refreshed[0] == 1 and len(refreshed) >= 3  # refreshes before and after the kill
    assert_same_tensors(resumed["selector_state"], straight["selector_state"])
    config = json.loads((tmp_path / "killed" / "config.json").read_text())["config"]
    assert (config["sample_start"], config["samples"], config["replay"]) == (24, KILL_SAMPLES, 9)


def test_refresh_command_gives_a_qk_checkpoint_that_retrain_continues(setup, tmp_path, capsys):
    root, args = tmp_path, setup["args"]
    steps = [
        ["train", "--model", "tiny", "--samples", "40", *SGD, "--out", root / "pre"],
        ["retrain", "--checkpoint", root / "pre/model.pt", "--patterns", "on-the-fly", "--sample-range", "40:80"]
        + [*SGD, "--out", root / "qk"],  # sk_staleness on the default validation samples, as refresh
        ["refresh", "--checkpoint", root / "qk/model.pt", "--samples", "80", "--store", root / "new"]
        + ["--out", root / "refreshed"],
        ["record", "--checkpoint", root / "refreshed/model.pt", "--samples", "120", "--store", root / "new"],
        ["retrain", "--checkpoint", root / "refreshed/model.pt", "--store", root / "new", "--sample-range", "80:120"]
        + ["--replay", "10", *SGD, "--out", root / "next"],
    ]
    for step in steps:
        code, out, err = main_in_process(capsys, *step, *args)
        assert code == 0, err

    summary = json.loads((root / "refreshed" / "refresh.json").read_text())
    assert summary["sk_staleness_before"] == read_metrics(root / "qk")[-1]["sk_staleness"]
    assert summary["samples"] == 80 and load_checkpoint(root / "refreshed/model.pt")["kind"] == "decoupled"
    assert [m["epoch"] for m in read_metrics(root / "next")] == [1, 2, 3]

    kept = snapshot(root / "refreshed")
    code, _, err = main_in_process(capsys, *steps[2], *args)  # the refreshed run exists already
    assert_one_line_error(code, err, "already holds a run")
    old_store = ["--store", root / "st", "--out", root / "again"]
    code, _, err = main_in_process(
        capsys, "record", "--checkpoint", root / "pre/model.pt", "--samples", "40", *old_store[:2], *args
    )
    assert code == 0, err
    code, _, err = main_in_process(capsys, *steps[2][:5], *old_store, *args)  # another SK's store
    assert_one_line_error(code, err, "selector")
    assert snapshot(root / "refreshed") == kept and not (root / "again" / "model.pt").exists()
    code, _, err = main_in_process(capsys, *steps[1][:7], "--samples", "80", "--out", root / "x", *args)
    assert_one_line_error(code, err, "not both")
