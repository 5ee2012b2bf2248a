"""The analytic study's runner in-process on the tiny synthetic dataset: every Fig. 5 cell kind with its wall time,
the class-incremental analytic arm equal to one joint solve, and the cache (a second run recomputes nothing). The
federated cells run Flower; `reproduce analytic --preset smoke` covers them (minutes)."""

import json

import pytest
from pipeline_helpers import (
    assert_one_line_error,
    data_args,
    main_in_process,
    make_dataset,
    tiny_models,  # noqa: F401  (fixture: the test models)
)

import skqk.experiments.analytic as analytic
from skqk.experiments.analytic import run_analytic_fig5
from skqk.experiments.incremental import run_incremental
from skqk.experiments.presets import Fig5Protocol, IncrementalProtocol, Preset
from skqk.experiments.report import summary_table

FIG5 = Preset("tiny", "Fig. 5 cells", fig5={"tiny": Fig5Protocol((40,), samples=(40, 80), pretrain_epochs=2,
                                                                 retrain_epochs=2, eval_samples=45)})  # fmt: skip
INCREMENTAL = Preset("tiny", "3 class-incremental chunks", incremental={"tiny": IncrementalProtocol(
    40, pretrain_epochs=2, retrain_epochs=1, replay=8, chunks=3, classes_per_chunk=1, eval_per_chunk=15,
    eval_samples=45, seeds=(0,), orders=("class-incremental",), arms=("analytic",))})  # fmt: skip
KINDS = {("pretrain", "base"), ("analytic", "mse"), ("analytic", "ce"), ("qk", "after-ridge"), ("qk", "base"),
         ("traditional", "base")}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))[2]


@pytest.mark.slow  # 9 training runs and 4 solves
def test_fig5_cells_of_every_kind_are_timed_and_cached(data, tmp_path):
    results = run_analytic_fig5(FIG5, ["tiny"], data, tmp_path, progress=False, seeds=(0,))

    cells = results["cells"]
    assert {(c["method"], c["variant"]) for c in cells} == KINDS
    assert len(cells) == 1 + 2 * 5
    for c in cells[1:]:
        assert 0 <= c["val_accuracy"] <= 1 and c["wall_seconds"] > 0
        if c["method"] == "analytic":
            assert c["wall_seconds"] >= c["record_seconds"] + c["solve_seconds"] - 1e-9
            assert 0 < c["test_split_evaluation_seconds"] < c["solve_seconds"]
            assert c["lambda_chosen_by"] == "gcv" and c["samples_processed"] == c["N"]
            assert (c["newton_iterations"] is None) == (c["variant"] == "mse")
        else:
            assert c["best_val_accuracy"] >= c["val_accuracy"]
    assert not (tmp_path / "tiny" / "seed0" / "n40" / "N80" / "analytic-mse" / "patterns").exists()
    assert "ridge head, then SGD QK" in summary_table(results)
    assert (tmp_path / "analytic_fig5_tiny.png").stat().st_size > 10_000

    again = run_analytic_fig5(FIG5, ["tiny"], data, tmp_path, progress=False, seeds=(0,))
    assert again["cells"] == cells and again["wall_seconds_this_invocation"] < 15
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == cells


def test_the_incremental_analytic_arm_reads_each_chunk_once_and_equals_the_joint_solve(data, tmp_path):
    results = run_incremental(INCREMENTAL, ["tiny"], data, tmp_path, progress=False)

    (stream,) = results["streams"]
    assert [len(row) for row in stream["matrix"]] == [1, 2, 3]
    assert stream["samples_processed"] == 3 * 40  # chunks 0 and 1, then chunk 2: each sample once
    cells = [json.loads((tmp_path / "tiny" / "class-incremental" / "seed0" / "analytic" / f"chunk{k}" / "cell.json")
                        .read_text()) for k in (1, 2)]  # fmt: skip
    assert cells[-1]["joint_relative_difference"] < 1e-6
    again = run_incremental(INCREMENTAL, ["tiny"], data, tmp_path, progress=False)
    assert again["streams"] == results["streams"]


def test_reproduce_analytic_takes_the_fig5_sizes_and_epochs_of_its_cells(tmp_path, capsys, monkeypatch):
    """--sk-samples, --samples, --epochs and --retrain-epochs change the study's Fig. 5 cells as they change
    `reproduce fig5`'s (the runner is stubbed: the preset it is handed is checked)."""
    data_dir, cache_dir, _ = make_dataset(tmp_path)
    handed = []
    monkeypatch.setattr(analytic, "run_analytic", lambda preset, *args: handed.append(preset) or {})
    options = ["--sk-samples", "4096", "--samples", "32768", "--epochs", "7", "--retrain-epochs", "2"]
    command = ["reproduce", "analytic", "--studies", "fig5", *options, "--out", tmp_path / "r"]
    code, _, err = main_in_process(capsys, *command, *data_args(data_dir, cache_dir))
    assert code == 0, err
    cells = handed[0].studies.fig5["lenet5"]
    assert cells.sk_samples == (4096,) and list(cells.sample_counts(4096)) == [32768]
    assert (cells.pretrain_epochs, cells.retrain_epochs) == (7, 2)
    code, _, err = main_in_process(capsys, *command[:-2], "--retrain-epochs", "0", "--out", tmp_path / "r0")
    assert_one_line_error(code, err, "--epochs and --retrain-epochs must be positive")
