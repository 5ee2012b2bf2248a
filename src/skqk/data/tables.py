"""Tabular data: a CSV or Parquet table (read by pandas / pyarrow, the `tabular` extra) or NumPy ``.npz`` arrays.

Everything is validated into tensors here, at one boundary: numeric columns become float32 features (standardised
by `Dataset.normalize` with the train split's statistics, as images are), categorical ones one-hot columns named
``column=value`` (the mapping is part of the feature names, so the content fingerprint changes with it), and the
target becomes class indices or, for regression, float32 values. Missing values are refused by default; with
``missing="impute"`` a numeric column gets its train-split median and a categorical one a category of its own,
``column=<missing>``. A time column orders the rows (the samples then arrive in time order, not a seeded
permutation) and the test split is the latest period.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from skqk.data.dataset import DataError, Dataset, ImageData, TableData

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
ARRAY_SUFFIXES = (".npz",)
Task = Literal["classification", "regression"]
MISSING_CATEGORY = "<missing>"


@dataclass(frozen=True)
class TableSpec:
    """How a table becomes a dataset: which column is the target and which are features, the task, the split."""

    target: str | None = None  # the target column (a table needs one; an .npz has y_train / y_test)
    features: tuple[str, ...] = ()  # () = every column but the target and the time column
    time: str | None = None  # orders the rows; the test split is then the latest period
    task: Task = "classification"
    test_fraction: float = 0.2  # share of the rows held out as test split (the latest ones with `time`)
    test_from: str | None = None  # with `time`: rows at or after this time are the test split
    missing: Literal["refuse", "impute"] = "refuse"

    def __post_init__(self):
        if self.task not in ("classification", "regression"):
            raise DataError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.missing not in ("refuse", "impute"):
            raise DataError(f"missing values are 'refuse'd or 'impute'd, got {self.missing!r}")
        if not 0 < self.test_fraction < 1:
            raise DataError(f"the test fraction must lie strictly between 0 and 1, got {self.test_fraction}")
        if self.test_from is not None and self.time is None:
            raise DataError("a test start time (--test-from) needs a time column (--time)")

    def describe(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass
class Columns:
    """The encoding of the feature columns, fitted on the train split and applied to both."""

    numeric: list[str] = field(default_factory=list)
    medians: dict[str, float] = field(default_factory=dict)  # imputed values of numeric columns
    categories: dict[str, list[str]] = field(default_factory=dict)  # categorical column -> its one-hot values

    @property
    def names(self) -> list[str]:
        return self.numeric + [f"{c}={v}" for c, values in self.categories.items() for v in values]


def is_table(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TABLE_SUFFIXES + ARRAY_SUFFIXES


def read_table(path: Path, spec: TableSpec) -> Dataset:
    """The dataset of a CSV/Parquet table or an .npz file of arrays.

    Raises:
        DataError: unreadable file, unknown or missing columns, missing values (unless imputed), a target unfit
            for the task, or an empty split.
    """
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return read_arrays(path, spec)
    if spec.target is None:
        raise DataError(f"{path} is a table: name its target column (--target COL)")
    frame = read_frame(path)
    frame = ordered_rows(frame, spec, path)
    features = feature_columns(frame, spec, path)
    test = test_rows(frame, spec, path)
    train_frame, test_frame = frame[~test], frame[test]
    check_target(frame[spec.target], spec, path)
    columns = fit_columns(train_frame[features], spec, path)
    classes = class_names(train_frame[spec.target].unique()) if spec.task == "classification" else []
    train, test_data = (split_data(part, columns, spec, classes, path) for part in (train_frame, test_frame))
    described = f"table {path.name} (target {spec.target}, {spec.task}, {len(columns.names)} features)"
    return Dataset.from_splits(train, test_data, f"{described} from {path}", table=spec.describe())


def read_frame(path: Path):
    if importlib.util.find_spec("pandas") is None or (
        path.suffix.lower() != ".csv" and importlib.util.find_spec("pyarrow") is None
    ):
        raise DataError(f"reading {path.name} needs pandas and pyarrow: pip install -e '.[tabular]'")
    import pandas as pd

    try:
        return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as error:  # pandas and pyarrow raise many kinds; all mean "not a readable table"
        raise DataError(f"cannot read table {path}: {type(error).__name__}: {error}") from None


def ordered_rows(frame, spec: TableSpec, path: Path):
    """The rows in time order (stable, so rows of one time keep their file order), or as in the file."""
    if spec.time is None:
        return frame
    check_columns(frame, [spec.time], path)
    if frame[spec.time].isna().any():
        raise DataError(f"{path}: the time column {spec.time!r} has missing values")
    return frame.sort_values(spec.time, kind="stable").reset_index(drop=True)


def feature_columns(frame, spec: TableSpec, path: Path) -> list[str]:
    check_columns(frame, [spec.target, *spec.features], path)
    chosen = list(spec.features) or [c for c in frame.columns if c not in (spec.target, spec.time)]
    if spec.target in chosen or (spec.time is not None and spec.time in spec.features):
        raise DataError(f"{path}: the target (and the time column) cannot also be a feature")
    if not chosen:
        raise DataError(f"{path}: no feature columns besides the target {spec.target!r}")
    return chosen


def check_columns(frame, wanted: list[str], path: Path) -> None:
    unknown = [c for c in wanted if c not in frame.columns]
    if unknown:
        raise DataError(f"{path} has no column {', '.join(map(repr, unknown))}; it has {', '.join(frame.columns)}")


def test_rows(frame, spec: TableSpec, path: Path) -> np.ndarray:
    """Which rows form the test split: those from `test_from` on, else the last `test_fraction` of the rows (the
    latest ones when time-ordered, as forecasting evaluates on the future; else a fixed random share)."""
    n = len(frame)
    if spec.test_from is not None:
        times = frame[spec.time]
        try:
            start = np.array([spec.test_from]).astype(times.dtype)[0] if times.dtype.kind in "iuf" else spec.test_from
            test = (times >= start).to_numpy()
        except (TypeError, ValueError):
            raise DataError(f"{path}: --test-from {spec.test_from!r} is not comparable with {spec.time!r}") from None
    elif spec.time is not None:
        test = np.arange(n) >= n - round(n * spec.test_fraction)
    else:
        test = np.zeros(n, dtype=bool)
        test[np.random.default_rng(0).permutation(n)[: round(n * spec.test_fraction)]] = True
    if test.all() or not test.any():
        raise DataError(f"{path}: the split leaves {int(test.sum())} test and {int((~test).sum())} train rows")
    return test


def check_target(target, spec: TableSpec, path: Path) -> None:
    if target.isna().any():
        raise DataError(f"{path}: the target {spec.target!r} has missing values; drop those rows")
    if spec.task == "regression" and target.dtype.kind not in "iuf":
        raise DataError(f"{path}: regression needs a numeric target, {spec.target!r} is {target.dtype}")


def fit_columns(frame, spec: TableSpec, path: Path) -> Columns:
    """Numeric columns kept (with their train medians, to impute), the others one-hot over their train values."""
    columns = Columns()
    for name in frame.columns:
        values = frame[name]
        if values.isna().any() and spec.missing == "refuse":
            raise DataError(
                f"{path}: column {name!r} has {int(values.isna().sum())} missing values in the train split; "
                "drop them, or impute them (--missing impute: numeric medians, a category of their own)"
            )
        if values.dtype.kind in "iufb":
            columns.numeric.append(name)
            columns.medians[name] = float(values.median()) if values.notna().any() else 0.0
        else:
            found = sorted(map(str, values.dropna().unique()))
            columns.categories[name] = found + ([MISSING_CATEGORY] if values.isna().any() else [])
    return columns


def split_data(frame, columns: Columns, spec: TableSpec, classes: list[str], path: Path) -> TableData:
    """One split as float32 features and targets; a test value unseen in training is refused, not dropped."""
    parts = []
    for name in columns.numeric:
        values = frame[name]
        if values.isna().any() and spec.missing == "refuse":
            raise DataError(f"{path}: column {name!r} has missing values in the test split")
        parts.append(values.fillna(columns.medians[name]).to_numpy(np.float64)[:, None])
    for name, values in columns.categories.items():
        text = frame[name].map(lambda v: MISSING_CATEGORY if v != v or v is None else str(v))  # NaN != NaN
        unseen = sorted(set(text) - set(values))
        if unseen:
            raise DataError(f"{path}: column {name!r} has values the train split lacks: {', '.join(unseen[:5])}")
        parts.append((text.to_numpy()[:, None] == np.array(values)[None, :]).astype(np.float64))
    features = np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0))
    if not np.isfinite(features).all():
        raise DataError(f"{path}: the features hold infinite values")
    return TableData(
        torch.from_numpy(features.astype(np.float32)),
        targets(frame[spec.target].to_numpy(), classes, path),
        classes,
        columns.names,
        ordered=spec.time is not None,
    )


def class_name(value) -> str:
    """A target value as a class name: 3, 3.0 and "3" are all class "3"."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and float(value).is_integer():
        return str(int(value))
    return str(value)


def class_names(values) -> list[str]:
    """The classes, in numeric order when they are numbers (2 before 10), else alphabetical."""
    numeric = all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
    return [class_name(v) for v in sorted(set(values), key=float if numeric else str)]


def targets(values, classes: list[str], path: Path) -> torch.Tensor:
    """Class indices into `classes`, or for regression (`classes` empty) the float32 values."""
    values = np.asarray(values)
    if not classes:
        if values.dtype.kind not in "iuf" or not np.isfinite(values.astype(np.float64)).all():
            raise DataError(f"{path}: regression targets must be finite numbers")
        return torch.from_numpy(values.astype(np.float32))
    index = {name: i for i, name in enumerate(classes)}
    names = [class_name(v) for v in values.tolist()]
    unseen = sorted(set(names) - set(index))
    if unseen:
        raise DataError(f"{path}: test classes without train rows: {', '.join(unseen[:5])}")
    return torch.tensor([index[name] for name in names], dtype=torch.int64)


def read_arrays(path: Path, spec: TableSpec) -> Dataset:
    """An .npz of ``x_train``, ``y_train``, ``x_test``, ``y_test``: (N, F) features, or (N, C, H, W) uint8 images."""
    try:
        with np.load(path, allow_pickle=False) as arrays:  # no pickle: data never runs code
            found = {name: arrays[name] for name in ("x_train", "y_train", "x_test", "y_test") if name in arrays}
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    missing = sorted({"x_train", "y_train", "x_test", "y_test"} - set(found))
    if missing:
        raise DataError(f"{path} lacks the arrays {', '.join(missing)} (it needs x_train, y_train, x_test, y_test)")
    y_train, y_test = (found[f"y_{s}"].reshape(len(found[f"y_{s}"]), -1) for s in ("train", "test"))
    if y_train.shape[1] != 1 or y_test.shape[1] != 1:
        raise DataError(f"{path}: y_train and y_test must hold one target per sample")
    classes = array_classes(y_train[:, 0], spec, path)
    splits = []
    for s, y in (("train", y_train[:, 0]), ("test", y_test[:, 0])):
        x = found[f"x_{s}"]
        if len(x) != len(y) or not len(x):
            raise DataError(f"{path}: x_{s} has {len(x)} samples and y_{s} {len(y)}; they must match, non-empty")
        labels = targets(y, classes, path)
        if x.ndim == 4 and x.dtype == np.uint8:
            splits.append(ImageData(torch.from_numpy(np.ascontiguousarray(x)), labels, classes))
        elif x.ndim == 2 and x.dtype.kind in "iufb" and np.isfinite(x).all():
            names = [f"x{i}" for i in range(x.shape[1])]
            splits.append(TableData(torch.from_numpy(x.astype(np.float32)), labels, classes, names))
        else:
            raise DataError(
                f"{path}: x_{s} must be finite numbers (N, features) or uint8 images (N, C, H, W), "
                f"got {x.dtype} {list(x.shape)}"
            )
    return Dataset.from_splits(*splits, f"arrays {path.name} ({spec.task}) from {path}", table=spec.describe())


def array_classes(y: np.ndarray, spec: TableSpec, path: Path) -> list[str]:
    if spec.task == "regression":
        return []
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise DataError(f"{path}: y_train holds non-integer values; for those, pass --task regression")
    return class_names(y.tolist())
