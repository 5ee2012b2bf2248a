"""The drift suite on a tiny synthetic time-ordered table: every arm gets an RMSE matrix per chunk in time order,
forgetting is the increase of earlier chunks' error, the analytic arm equals the joint solve, the cache answers a
rerun; the command refuses what it cannot run in one line."""

import json

import numpy as np
import pytest
from pipeline_helpers import assert_one_line_error, main_in_process

from skqk.data.evolving import Bundled, stream_from_frame
from skqk.experiments.drift import DriftPreset, DriftStream, run_drift_stream, table_protocol
from skqk.incremental import average_forgetting

pd = pytest.importorskip("pandas")
ARMS = ("qk-new", "qk-replay", "analytic", "traditional-new", "traditional-all")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    t = np.arange(90)
    frame = pd.DataFrame({"t": t, "a": rng.normal(size=90), "b": rng.normal(size=90)})
    frame["y"] = np.maximum(frame.a, 0) * (1 + t / 30) - frame.b + 0.05 * rng.normal(size=90)  # drifts with t
    path = tmp_path_factory.mktemp("drift") / "series.csv"
    return stream_from_frame(frame, "series", Bundled("none", "series.csv", "y", "t", "a drifting series"), 3, 0.2,
                             path)  # fmt: skip


def test_every_arm_gets_an_error_matrix_in_time_order_and_the_cache_answers(data, tmp_path):
    stream = DriftStream("series", "mlp", table_protocol(2, 2, 4, seeds=(0,), arms=ARMS, chunks=3, widths=[8]))
    preset = DriftPreset("tiny", "3 chunks of a tiny series", (stream,))
    results = run_drift_stream(stream, data, tmp_path / "series", preset, progress=False)

    streams = {s["arm"]: s for s in results["streams"]}
    assert set(streams) == set(ARMS)
    for s in streams.values():
        assert [len(row) for row in s["matrix"]] == [1, 2, 3] and (s["order"], s["stream"]) == ("time", "series")
        assert s["average_forgetting"] == pytest.approx(average_forgetting(s["matrix"], higher_is_better=False))
        assert {"final_rmse", "final_mae", "final_r2"} <= set(s) and "final_accuracy" not in s
    assert streams["traditional-new"]["samples_processed"] == 2 * (24 + 24)  # 2 epochs x the 24 rows of chunks 1, 2
    assert streams["qk-replay"]["samples_processed"] == 2 * (28 + 28)
    assert streams["traditional-all"]["samples_processed"] == 2 * (48 + 72)
    assert streams["analytic"]["samples_processed"] == 48 + 24  # chunks 0 and 1 once, then chunk 2
    assert streams["analytic"]["matrix"][0] == streams["qk-new"]["matrix"][0]  # one pre-training for every arm
    last = json.loads(
        (tmp_path / "series" / "mlp" / "time" / "seed0" / "analytic" / "chunk2" / "cell.json").read_text()
    )
    assert last["joint_relative_difference"] < 1e-6  # chunk by chunk == one solve of every chunk so far
    assert (tmp_path / "drift_series.png").stat().st_size > 10_000
    assert (tmp_path / "series" / "drift.csv").exists()

    again = run_drift_stream(stream, data, tmp_path / "series", preset, progress=False)
    assert again["streams"] == results["streams"] and again["wall_seconds_this_invocation"] < 15


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--preset", "paper"], "reproduce drift has the presets cpu, smoke"),
        (["--streams", "weather"], "preset smoke has no stream weather"),
        (["--models", "lenet5"], "--models applies to"),
        (["--target", "y"], "the table options are for the other commands"),
    ],
)
def test_reproduce_drift_refusals(tmp_path, capsys, argv, fragment):
    code, _, err = main_in_process(capsys, "reproduce", "drift", "--preset", "smoke", *argv, "--out", tmp_path / "o")
    assert_one_line_error(code, err.strip().splitlines()[-1], fragment)
