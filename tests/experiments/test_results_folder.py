"""A results folder of `skqk reproduce` records the data and settings that made it and is continued with those
only (its cached cells would otherwise mix two experiments in one table). The runs themselves are stubbed."""

import json

import pytest
from pipeline_helpers import assert_one_line_error, data_args, main_in_process, write_colour_tree

import skqk.experiments.fig5 as fig5
import skqk.experiments.report as report


@pytest.fixture
def stubbed_runs(monkeypatch):
    """Every cell finishes at once with no result: only the folder's bookkeeping runs."""
    monkeypatch.setattr(fig5.SKRun, "fig5_cells", lambda *args, **kwargs: [])
    monkeypatch.setattr(fig5, "plot_fig5", lambda *args, **kwargs: None)
    monkeypatch.setattr(report, "summary_table", lambda results: "")


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """Two image folders of the same classes and size, different pixels."""
    root = tmp_path_factory.mktemp("two")
    return [data_args(write_colour_tree(root / f"d{seed}", seed=seed), root / "cache") for seed in (0, 1)]


@pytest.mark.parametrize(
    "change, named",
    [
        ("other data", "data: "),
        (["--mode", "successive"], "mode: 'independent' -> 'successive'"),
        (["--precision", "bf16"], "precision: 'fp32' -> 'bf16'"),
        (["--preset", "paper"], "preset: 'smoke' -> 'paper'"),
    ],
)
def test_continuing_a_results_folder_with_other_data_or_settings_is_refused(
    stubbed_runs, two_datasets, tmp_path, capsys, change, named
):
    command = ["reproduce", "fig5", "--preset", "smoke", "--models", "lenet5", "--out", tmp_path / "results"]
    code, _, err = main_in_process(capsys, *command, *two_datasets[0])
    assert code == 0, err
    recorded = json.loads((tmp_path / "results" / "reproduce.json").read_text())
    assert recorded["preset"] == "smoke" and "fig5" in recorded["experiments"] and len(recorded["data"]) == 64
    code, _, err = main_in_process(capsys, *command, *two_datasets[0])
    assert code == 0, err  # the same: continues

    extra = two_datasets[1] if change == "other data" else [*two_datasets[0], *change]
    code, _, err = main_in_process(capsys, *command, *extra)

    scaling, error = err.strip().rsplit("\n", 1)  # reproduce first prints the preset's scaling
    assert_one_line_error(code, error, "holds results made with other settings", named, "choose another --out")
    assert scaling.startswith("preset ") and "Traceback" not in scaling
    assert json.loads((tmp_path / "results" / "reproduce.json").read_text()) == recorded
