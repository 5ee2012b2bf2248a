"""`skqk reproduce fig5|qkgap` for any network and any data: an mlp on a tiny regression table, with the sample
sizes and epochs as options, tables and plots in RMSE and titled from the data; a network `decouple` refuses fails
before anything trains."""

import json

import matplotlib.figure
import numpy as np
import pytest
from pipeline_helpers import assert_one_line_error, main_in_process

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=120), "kind": rng.choice(["a", "b"], 120), "t": np.arange(120)})
    frame["y"] = 2 * frame.x.clip(lower=0) + (frame.kind == "b") + 0.1 * rng.normal(size=120)
    path = tmp_path_factory.mktemp("table") / "series.csv"
    frame.to_csv(path, index=False)
    return ["--data-dir", str(path), "--target", "y", "--task", "regression", "--time", "t"]


@pytest.fixture
def titles(monkeypatch):
    """The titles of the figures saved."""
    saved = []
    real = matplotlib.figure.Figure.savefig

    def savefig(figure, *args, **kwargs):
        saved.append(figure._suptitle.get_text() if figure._suptitle else "")
        return real(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return saved


SIZES = ["--sk-samples", "32", "--samples", "32,64", "--epochs", "1", "--retrain-epochs", "1", "--seeds", "0"]


@pytest.mark.parametrize("figure", ["fig5", "qkgap"])
def test_reproduce_runs_an_mlp_on_a_regression_table(table, tmp_path, capsys, titles, figure):
    model = ["--model", "mlp", "--model-kwargs", '{"widths": [8]}']
    out = tmp_path / figure
    code, stdout, err = main_in_process(capsys, "reproduce", figure, "--preset", "smoke", *model, *table, *SIZES,
                                        "--out", out)  # fmt: skip
    assert code == 0, err
    results = json.loads((out / ("qkgap-results.json" if figure == "qkgap" else "results.json")).read_text())
    cells = [c for c in results["cells"] if c["method"] != "pretrain"]
    assert {c["N"] for c in cells} == {32, 64}
    assert all({"val_rmse", "val_mae", "val_r2"} <= set(c) and "val_accuracy" not in c for c in cells)
    assert "RMSE" in stdout and "acc" not in stdout
    assert results["preset"]["fig5"]["mlp"]["model_kwargs"] == {"widths": [8]}
    assert titles and all("table series.csv" in title and "CIFAR" not in title for title in titles)


def test_a_network_decouple_refuses_fails_before_anything_trains(table, tmp_path, capsys):
    out = tmp_path / "refused"
    code, _, err = main_in_process(capsys, "reproduce", "fig5", "--preset", "smoke", "--model", "user_nets:gelu_mlp",
                                   *table, *SIZES, "--out", out)  # fmt: skip
    assert_one_line_error(code, err.strip().splitlines()[-1], "user_nets:gelu_mlp cannot be decoupled", "gelu")
    assert not out.exists() or not any(out.rglob("model.pt"))


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["fig4", "--retrain-epochs", "2"], "--retrain-epochs applies to fig5, qkgap, incremental"),
        (["fig5", "--model-kwargs", "{}"], "give the model too"),
        (["fig5", "--model", "mlp", "--models", "lenet5"], "not both"),
        (["fig5", "--model", "mlp", "--sk-samples", "4096"], "the training split has 96"),
    ],
)
def test_reproduce_option_refusals(table, tmp_path, capsys, argv, fragment):
    code, _, err = main_in_process(capsys, "reproduce", *argv, "--preset", "smoke", *table, "--out", tmp_path / "o")
    assert_one_line_error(code, err.strip().splitlines()[-1], fragment)
