"""A results folder of `skqk reproduce` records the data and settings that made it and is continued with those
only (its cached cells would otherwise mix two experiments in one table). The runs themselves are stubbed."""

import json

import pytest
from pipeline_helpers import assert_one_line_error, data_args, main_in_process, write_colour_tree

import skqk.experiments.fig5 as fig5
import skqk.experiments.report as report
from skqk.experiments import PRESETS


@pytest.fixture
def stubbed_runs(monkeypatch):
    """Every cell finishes at once with no result: only the folder's bookkeeping runs."""
    monkeypatch.setattr(fig5.SKRun, "fig5_cells", lambda *args, **kwargs: [])
    monkeypatch.setattr(fig5, "check_before_training", lambda *args, **kwargs: None)
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


def test_incremental_and_federated_results_folders_are_claimed_too(monkeypatch, two_datasets, tmp_path):
    """Their cached cells would mix two datasets just as Fig. 5's would (the runs are stubbed: no model, no cell)."""
    import skqk.experiments.federated as federated
    import skqk.experiments.incremental as incremental
    from skqk.data import load_dataset

    datasets = [load_dataset(args[1], args[3], progress=False) for args in two_datasets]
    runs = {
        "incremental": lambda data, out: incremental.run_incremental(PRESETS["smoke"], [], data, out),
        "federated": lambda data, out: federated.run_federated_experiment(federated.PRESETS["smoke"], [], data, out),
    }
    for experiment, run in runs.items():
        out = tmp_path / experiment
        run(datasets[0], out)
        recorded = json.loads((out / "reproduce.json").read_text())
        assert list(recorded["experiments"]) == [experiment] and recorded["data"] == datasets[0].fingerprint
        run(datasets[0], out)  # the same data: continues
        with pytest.raises(ValueError, match="holds results made with other settings: data: "):
            run(datasets[1], out)
        assert json.loads((out / "reproduce.json").read_text()) == recorded


@pytest.mark.parametrize(
    "figure, option",
    [
        ("federated", ["--samples", "1024"]),
        ("qkgap", ["--max-samples", "1024"]),
        ("incremental", ["--samples", "1024"]),
        ("fig4", ["--mode", "successive"]),
        ("fig5", ["--every-steps", "4"]),
    ],
)
def test_an_option_the_experiment_does_not_read_is_refused(two_datasets, tmp_path, capsys, figure, option):
    command = ["reproduce", figure, "--preset", "smoke", *option, "--out", tmp_path / "results", *two_datasets[0]]
    code, _, err = main_in_process(capsys, *command)
    assert_one_line_error(code, err.strip(), f"{option[0]} applies to", f"not to reproduce {figure}")
    assert not (tmp_path / "results").exists()
