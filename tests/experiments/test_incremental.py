"""The incremental experiment in-process on the tiny synthetic dataset: every arm's accuracy matrix, forgetting
computed from it, the cost columns, and the cache (a second run recomputes nothing)."""

import json

import pytest
from pipeline_helpers import make_dataset, tiny_models  # noqa: F401  (fixture: the test models)

from skqk.experiments.incremental import ARMS, ORDERS, diverged_or_cached, run_incremental, stream_result, summarise
from skqk.experiments.presets import IncrementalProtocol, Preset
from skqk.incremental import average_forgetting
from skqk.pipeline.config import RetrainConfig
from skqk.pipeline.loop import TrainingDiverged

ARMS_RUN = ("qk-new", "traditional-replay", "traditional-all", "qk-all-refresh")  # every kind of arm, once
PROTOCOL = IncrementalProtocol(
    40, pretrain_epochs=2, retrain_epochs=2, replay=8, chunks=3, classes_per_chunk=1, eval_per_chunk=15,
    eval_samples=45, seeds=(0,), arms=ARMS_RUN,
)  # fmt: skip
PRESET = Preset("tiny", "3 chunks of the tiny dataset", incremental={"tiny": PROTOCOL})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))[2]


@pytest.mark.slow  # 16 re-training runs
def test_every_arm_gets_an_accuracy_matrix_forgetting_and_costs_then_the_cache_answers(data, tmp_path):
    results = run_incremental(PRESET, ["tiny"], data, tmp_path, progress=False)

    streams = results["streams"]
    assert {(s["order"], s["arm"]) for s in streams} == {(o, a) for o in ORDERS for a in ARMS_RUN}
    for s in streams:
        assert [len(row) for row in s["matrix"]] == [1, 2, 3]
        assert s["average_forgetting"] == pytest.approx(average_forgetting(s["matrix"]))
        assert s["backward_transfer"] == pytest.approx(-s["average_forgetting"])
        per_chunk = {"new": 40 + (8 if ARMS[s["arm"]].replay else 0), "all": None}[ARMS[s["arm"]].data]
        expected = 2 * (2 * per_chunk if per_chunk else 80 + 120)  # epochs x samples visited, chunks 1 and 2
        assert s["samples_processed"] == expected
        if ARMS[s["arm"]].sk_refresh == "off":
            assert s["refreshes"] == 0
        assert (tmp_path / "tiny" / s["order"] / "seed0" / s["arm"] / "metrics.jsonl").exists()
    class_incremental = next(s for s in streams if s["order"] == "class-incremental" and s["arm"] == "qk-new")
    assert all(0 <= a <= 1 for row in class_incremental["matrix"] for a in row)
    assert all(s["sk_staleness_per_chunk"][0] is not None for s in streams if ARMS[s["arm"]].method == "qk")
    assert (tmp_path / "incremental_tiny_random.png").stat().st_size > 10_000
    assert len(results["summary"]) == len(ORDERS) * len(ARMS_RUN)

    again = run_incremental(PRESET, ["tiny"], data, tmp_path, progress=False)
    assert again["streams"] == streams and again["wall_seconds_this_invocation"] < 15
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == again["summary"]


def test_a_diverged_chunk_is_cached_as_a_result_and_left_out_of_the_means(tmp_path):
    cfg = RetrainConfig(samples=80, sample_start=40, epochs=1)
    key = {"model": "tiny", "order": "random", "seed": 0, "arm": "qk-new", "chunk": 1}

    def diverges(cell_dir):
        raise TrainingDiverged("loss became nan in epoch 1")

    cell = diverged_or_cached(tmp_path / "chunk1", diverges, key, cfg)
    again = diverged_or_cached(tmp_path / "chunk1", lambda d: pytest.fail("a cached cell ran again"), key, cfg)

    assert cell == again and cell["diverged"] == "loss became nan in epoch 1"
    pre = {"row": [0.5, 0.1]}
    stream = stream_result({k: key[k] for k in ("model", "order", "seed")}, "qk-new", pre, [cell], tmp_path / "arm")
    assert stream["diverged_at_chunk"] == 1 and stream["matrix"] == [[0.5]] and "final_accuracy" not in stream
    finished = {**stream, "seed": 1, "final_accuracy": 0.3, "average_forgetting": 0.1, "backward_transfer": -0.1}
    finished |= {"samples_processed": 40, "wall_seconds": 1.0, "refreshes": 0}
    del finished["diverged"]
    (row,) = summarise([stream, finished])
    assert (row["seeds"], row["diverged"], row["final_accuracy"]) == (1, 1, 0.3)


def test_a_model_named_by_import_path_is_trusted_through_every_chunk(data, tmp_path):
    """`reproduce incremental --model user_nets:build_net` is the user's consent: re-training, recording and the
    evaluation of every chunk build the network too, not only the pre-training."""
    name = "user_nets:build_net"
    protocol = IncrementalProtocol(
        40, pretrain_epochs=1, retrain_epochs=1, replay=0, chunks=2, eval_per_chunk=10, eval_samples=20,
        seeds=(0,), orders=("random",), arms=("qk-new", "traditional-new", "analytic"), model_kwargs={"width": 4},
    )  # fmt: skip
    results = run_incremental(Preset("tiny", "2 chunks", incremental={name: protocol}), [name], data, tmp_path, False)
    assert [(s["arm"], len(s["matrix"])) for s in results["streams"]] == [
        ("qk-new", 2),
        ("traditional-new", 2),
        ("analytic", 2),
    ]
