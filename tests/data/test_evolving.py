"""Evolving streams: a time-ordered table cut into equal periods whose latest rows are each chunk's test data,
standardised on chunk 0 alone; the bundled files are read as CSV (never a pickle) and nothing is downloaded."""

import numpy as np
import pytest

from skqk.data import DataError
from skqk.data.evolving import STREAMS, Bundled, bundled_file, load_stream, stream_from_frame

pd = pytest.importorskip("pandas")

SPEC = Bundled("none", "none.csv", "y", "t", "a tiny test series")


def series(rows: int = 50) -> "pd.DataFrame":
    rng = np.random.default_rng(0)
    t = rng.permutation(rows)  # shuffled on disk: the stream orders by time
    return pd.DataFrame({"t": t, "x": t + rng.normal(size=rows), "y": 2.0 * t})


def test_each_chunk_trains_on_its_period_and_is_tested_on_the_period_s_latest_rows(tmp_path):
    data = stream_from_frame(series(), "tiny", SPEC, chunks=5, held_out=0.2, path=tmp_path / "tiny.csv")

    assert data.table["chunk_samples"] == 8 and data.table["held_out_per_chunk"] == 2 and data.train.ordered
    times = data.train.labels.numpy() / 2  # y = 2 t
    assert times.tolist() == sorted(times.tolist())
    assert (data.test.labels.numpy() / 2).tolist() == [8, 9, 18, 19, 28, 29, 38, 39, 48, 49]
    assert data.target_mean == pytest.approx(np.mean(2.0 * np.arange(8)))  # chunk 0's rows only


def test_a_stream_shipped_only_as_a_pickle_or_not_bundled_is_refused_in_one_line():
    with pytest.raises(DataError, match="as a pickle, and reading a pickle runs code"):
        bundled_file("loans")
    with pytest.raises(DataError, match="no bundled stream 'weather'.*nothing is downloaded"):
        bundled_file("weather")


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_the_bundled_streams_are_read_from_the_package_s_csv(name):
    pytest.importorskip(STREAMS[name].package)
    data = load_stream(name, chunks=5)

    assert bundled_file(name).suffix in (".csv", ".gz") and data.task == "regression"
    assert len(data.test) == 5 * data.table["held_out_per_chunk"] and len(data.train) == 5 * data.table["chunk_samples"]
