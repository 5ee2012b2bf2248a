"""The four phases on a table through `skqk`: an mlp on a time-ordered CSV, classification and regression, QK-only
re-training on a new period, evaluation in the targets' units, and the refusals."""

import json

import numpy as np
import pytest
from pipeline_helpers import assert_one_line_error, main_in_process

from skqk.data import TableSpec, load_dataset
from skqk.pipeline.checkpoint import load_for_evaluation

pd = pytest.importorskip("pandas")

SGD = ["--epochs", "2", "--batch-size", "16", "--lr", "0.01"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    rows = 160
    frame = pd.DataFrame({"x1": rng.normal(size=rows), "x2": rng.normal(size=rows), "day": np.arange(rows)[::-1]})
    frame["sector"] = rng.choice(["energy", "tech"], rows)
    frame["ret"] = frame.x1 - 0.5 * frame.x2 + (frame.sector == "tech") + 0.1 * rng.normal(size=rows)
    frame["up"] = np.where(frame.ret > 0.5, "up", "down")
    path = tmp_path_factory.mktemp("table") / "prices.csv"
    frame.drop(columns="up").assign(up=frame.up).to_csv(path, index=False)
    return path


def table_args(path, target, *extra):
    return ["--data-dir", path, "--target", target, "--features", "x1,x2,sector", "--time", "day", *extra]


@pytest.mark.parametrize(("target", "task"), [("ret", "regression"), ("up", "classification")])
def test_the_four_phases_on_a_time_ordered_table(table, tmp_path, capsys, target, task):
    data = table_args(table, target, "--task", task)
    pre, store, qk = tmp_path / "pre", tmp_path / "store", tmp_path / "qk"
    model = ["--model", "mlp", "--model-kwargs", '{"widths": [16, 8], "batchnorm": true}']
    code, out, err = main_in_process(capsys, "train", *model, *data, "--samples", "64", *SGD, "--out", pre)
    assert code == 0, err
    assert ("val rmse" in out) == (task == "regression")
    code, _, err = main_in_process(
        capsys, "record", "--checkpoint", pre / "model.pt", *data, "--samples", "128", "--store", store
    )
    assert code == 0, err
    retrain = ["retrain", "--checkpoint", pre / "model.pt", *data, "--sample-range", "64:128", "--store", store]
    code, _, err = main_in_process(capsys, *retrain, *SGD, "--out", qk)
    assert code == 0, err
    code, out, err = main_in_process(capsys, "evaluate", "--checkpoint", qk / "model.pt", *data, "--json")
    assert code == 0, err
    result = json.loads(out)
    history = [json.loads(line) for line in (qk / "metrics.jsonl").read_text().splitlines()]
    if task == "regression":
        assert {"rmse", "mae", "r2", "loss"} <= set(result) and "accuracy" not in result
        assert result["rmse"] == pytest.approx(history[-1]["val_rmse"])
        assert 0 <= result["mae"] <= result["rmse"]
    else:
        assert result["accuracy"] == pytest.approx(history[-1]["val_accuracy"])
    dataset = load_dataset(
        table, table=TableSpec(target=target, features=("x1", "x2", "sector"), time="day", task=task)
    )
    module, ckpt = load_for_evaluation(qk / "model.pt")
    assert ckpt["model_kwargs"]["in_features"] == 4 and ckpt["model_kwargs"]["num_classes"] == dataset.num_classes


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--model", "lenet5"], "not built for data with in_features"),
        (["--model", "mlp", "--balanced"], "would reorder time-ordered samples"),
        (["--model", "mlp", "--model-kwargs", '{"colour": 1}'], "has no option colour"),
    ],
)
def test_refusals_on_a_table_are_one_line_errors(table, tmp_path, capsys, argv, fragment):
    data = table_args(table, "up")
    code, _, err = main_in_process(capsys, "train", *argv, *data, "--samples", "32", *SGD, "--out", tmp_path / "r")
    assert_one_line_error(code, err, fragment)


def test_a_regression_table_refuses_class_counting_orders(table, tmp_path, capsys):
    data = ["--data-dir", table, "--target", "ret", "--task", "regression"]
    code, _, err = main_in_process(
        capsys, "train", "--model", "mlp", *data, "--samples", "32", "--balanced", *SGD, "--out", tmp_path / "r"
    )
    assert_one_line_error(code, err, "regression targets have none")


def test_the_cross_entropy_head_is_refused_for_a_regression_target(table, tmp_path, capsys):
    data, pre = table_args(table, "ret", "--task", "regression"), tmp_path / "pre"
    code, _, err = main_in_process(capsys, "train", "--model", "mlp", *data, "--samples", "32", *SGD, "--out", pre)
    assert code == 0, err
    retrain = ["retrain", "--checkpoint", pre / "model.pt", *data, "--samples", "64", "--patterns", "on-the-fly"]
    code, _, err = main_in_process(capsys, *retrain, "--optimizer", "ce-head", *SGD, "--out", tmp_path / "qk")
    assert_one_line_error(code, err, "ce-head is for classes")
    assert not (tmp_path / "qk").exists()
