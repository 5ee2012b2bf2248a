"""Tables and arrays: CSV, Parquet and .npz files the tests write, read into datasets — one-hot categories,
missing values refused or imputed, time order, regression targets — and the refusals."""

import math

import numpy as np
import pytest
import torch

from skqk.data import DataError, TableSpec, load_dataset, subset_indices
from skqk.data.sampling import replay_indices

pd = pytest.importorskip("pandas")


def loans(rows: int = 40) -> "pd.DataFrame":
    """A tiny loan table: a numeric and a categorical feature, a class target, a numeric target, a month."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "income": rng.normal(50, 10, rows).round(1),
            "grade": rng.choice(["A", "B", "C"], rows),
            "month": rng.permutation(rows),
        }
    )
    frame["default"] = np.where(frame.grade == "C", "yes", "no")
    frame["rate"] = 0.1 * frame.income + (frame.grade == "B") * 2.0
    return frame


def write(frame, path):
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_table_becomes_standardised_numeric_and_one_hot_categorical_features(tmp_path, suffix):
    path = write(loans(), tmp_path / f"loans{suffix}")
    data = load_dataset(path, table=TableSpec(target="default", features=("income", "grade")))

    assert data.task == "classification" and data.train.classes == ["no", "yes"]
    assert data.train.feature_names == ["income", "grade=A", "grade=B", "grade=C"]
    assert (len(data.train), len(data.test)) == (32, 8)
    x = data.inputs(data.train, torch.arange(len(data.train)))
    torch.testing.assert_close(x[:, 0].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)  # standardised from train
    torch.testing.assert_close(x[:, 0].std(unbiased=False), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert torch.equal(x[:, 1:].sum(1), torch.ones(len(x)))  # one-hot, kept as 0/1
    grade_c = x[:, 3] == 1
    assert torch.equal(data.train.labels == 1, grade_c)


def test_the_one_hot_mapping_is_part_of_the_fingerprint(tmp_path):
    frame = loans()
    spec = TableSpec(target="default", features=("income", "grade"))
    first = load_dataset(write(frame, tmp_path / "a.csv"), table=spec)
    frame["grade"] = frame.grade.map({"A": "A+", "B": "B", "C": "C"})  # the same 0/1 columns, another name
    second = load_dataset(write(frame, tmp_path / "b.csv"), table=spec)
    assert torch.equal(first.train.features, second.train.features)
    assert first.fingerprint != second.fingerprint


def test_missing_values_are_refused_by_default_and_imputed_on_request(tmp_path):
    frame = loans()
    frame.loc[[0, 1], "income"] = np.nan
    frame.loc[2, "grade"] = None
    path = write(frame, tmp_path / "gaps.csv")
    with pytest.raises(DataError, match="missing values.*impute"):
        load_dataset(path, table=TableSpec(target="default", features=("income", "grade"), time="month"))

    spec = TableSpec(target="default", features=("income", "grade"), time="month", missing="impute")
    data = load_dataset(path, table=spec)
    assert data.train.feature_names[-1] == "grade=<missing>"
    order = frame.sort_values("month", kind="stable").reset_index(drop=True)
    train = order.iloc[: len(data.train)]
    median = train.income.median()
    imputed = data.train.features[torch.tensor(train.income.isna().tolist()), 0]
    assert imputed.tolist() == pytest.approx([median] * len(imputed))


def test_a_time_column_orders_the_samples_and_the_test_split_is_the_latest_period(tmp_path):
    frame = loans()
    path = write(frame, tmp_path / "loans.csv")
    data = load_dataset(path, table=TableSpec(target="rate", features=("income",), time="month", task="regression"))
    by_month = frame.sort_values("month")
    assert data.train.features[:, 0].tolist() == pytest.approx(by_month.income[:32].tolist())
    assert data.test.features[:, 0].tolist() == pytest.approx(by_month.income[32:].tolist())  # months 32..39
    assert data.train.ordered
    # chunks follow time whatever the seed: the first n samples are the earliest n
    assert torch.equal(subset_indices(data.train.labels, 10, seed=5, ordered=True), torch.arange(10))

    later = load_dataset(path, table=TableSpec(target="rate", time="month", task="regression", test_from="30"))
    assert len(later.test) == 10  # months 30..39


def test_regression_targets_are_standardised_for_training_and_refuse_class_counting_orders(tmp_path):
    path = write(loans(), tmp_path / "loans.parquet")
    data = load_dataset(path, table=TableSpec(target="rate", features=("income", "grade"), task="regression"))
    assert data.task == "regression" and data.num_classes == 1
    z = data.targets(data.train, torch.arange(len(data.train)))
    assert abs(z.mean().item()) < 1e-5 and z.std().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DataError, match="regression targets have none"):
        subset_indices(data.train.labels, 8, balanced=True)
    with pytest.raises(DataError, match="regression targets have none"):
        subset_indices(data.train.labels, 8, class_chunks=(1, 4))
    replay = replay_indices(data.train.labels, torch.arange(20), 5)  # adapts: a uniform draw
    assert len(set(replay.tolist())) == 5 and replay.max() < 20


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (TableSpec(), "name its target column"),
        (TableSpec(target="nope"), "no column 'nope'"),
        (TableSpec(target="grade", task="regression"), "numeric target"),
        (TableSpec(target="default", features=("default",)), "cannot also be a feature"),
        (TableSpec(target="default", time="month", test_from="99"), "0 test"),
    ],
)
def test_bad_table_options_are_one_line_errors(tmp_path, spec, fragment):
    with pytest.raises(DataError, match=fragment):
        load_dataset(write(loans(), tmp_path / "loans.csv"), table=spec)


def test_a_test_category_unseen_in_training_is_refused(tmp_path):
    frame = loans()
    frame.loc[frame.month >= 32, "grade"] = "Z"
    with pytest.raises(DataError, match="values the train split lacks: Z"):
        load_dataset(
            write(frame, tmp_path / "t.csv"), table=TableSpec(target="income", time="month", task="regression")
        )


def test_npz_arrays_give_a_table_or_images_with_classes_or_regression_targets(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(30, 3)),
        "y_train": rng.integers(0, 3, 30).astype(np.float64),  # integer-valued floats are classes
        "x_test": rng.normal(size=(10, 3)),
        "y_test": rng.integers(0, 3, 10),
    }
    np.savez(tmp_path / "a.npz", **arrays)
    data = load_dataset(tmp_path / "a.npz")
    assert data.train.classes == ["0", "1", "2"] and data.in_features == 3
    assert torch.equal(data.test.labels, torch.as_tensor(arrays["y_test"]))

    np.savez(tmp_path / "r.npz", **{**arrays, "y_train": rng.normal(size=30)})
    with pytest.raises(DataError, match="--task regression"):
        load_dataset(tmp_path / "r.npz")
    assert load_dataset(tmp_path / "r.npz", table=TableSpec(task="regression")).task == "regression"

    images = {"x_train": rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8), "y_train": np.arange(6) % 2}
    np.savez(tmp_path / "i.npz", **images, x_test=images["x_train"][:2], y_test=images["y_train"][:2])
    assert load_dataset(tmp_path / "i.npz").image_size == 4

    np.savez(tmp_path / "bad.npz", x_train=arrays["x_train"], y_train=arrays["y_train"])
    with pytest.raises(DataError, match="lacks the arrays x_test, y_test"):
        load_dataset(tmp_path / "bad.npz")


def test_regression_metrics_are_rmse_mae_and_r2_in_the_targets_units(tmp_path):
    """A network that predicts a constant: every metric is hand-checkable."""
    from torch import nn

    from skqk.pipeline.loop import evaluate

    y_test = np.array([1.0, 2.0, 3.0, 6.0])
    np.savez(
        tmp_path / "r.npz",
        x_train=np.zeros((3, 1)),
        y_train=np.array([0.0, 2.0, 4.0]),
        x_test=np.zeros((4, 1)),
        y_test=y_test,
    )
    data = load_dataset(tmp_path / "r.npz", table=TableSpec(task="regression"))
    constant = nn.Linear(1, 1)
    nn.init.zeros_(constant.weight)
    nn.init.zeros_(constant.bias)  # predicts the train mean, 2.0, in the targets' units
    metrics = evaluate(constant, data)
    errors = 2.0 - y_test
    assert metrics["val_rmse"] == pytest.approx(math.sqrt(np.mean(errors**2)))
    assert metrics["val_mae"] == pytest.approx(np.mean(np.abs(errors)))
    assert metrics["val_r2"] == pytest.approx(1 - np.sum(errors**2) / np.sum((y_test - y_test.mean()) ** 2))
    assert metrics["val_loss"] == pytest.approx(np.mean((errors / data.target_std) ** 2))
