"""Incremental re-training through the library: sample ranges and replay, sk_staleness in every QK epoch, SK
refresh (automatic in a run, and of a finished run's checkpoint), on the tiny synthetic dataset."""

import json

import pytest
import torch
from pipeline_helpers import (
    TRAIN_SAMPLES,
    assert_same_tensors,
    make_dataset,
    read_metrics,
    tiny_models,  # noqa: F401  (fixture: the test models)
)

from skqk.data import subset_indices
from skqk.pipeline.checkpoint import build_network, load_decoupled, load_for_evaluation, load_model_checkpoint
from skqk.pipeline.config import RetrainConfig, TrainConfig
from skqk.pipeline.loop import evaluate
from skqk.pipeline.record import record_from_checkpoint, selector_from_checkpoint
from skqk.pipeline.refresh import refresh_checkpoint, validation_images
from skqk.pipeline.retrain import retrain, training_indices
from skqk.pipeline.train import train
from skqk.refresh import sk_staleness
from skqk.store import PatternStore, StoreError

CHUNK = 40  # the tiny dataset's 120 training samples in 3 chunks
SGD = {"batch_size": 20, "lr": 0.05, "staleness_samples": 30}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))[2]


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    """The tiny network pre-trained on the first chunk."""
    out = tmp_path_factory.mktemp("pre") / "run"
    train(TrainConfig(model="tiny", samples=CHUNK, epochs=3, batch_size=20, lr=0.05), data, out, progress=False)
    return out / "model.pt"


@pytest.fixture(scope="module")
def qk_run(pretrained, data, tmp_path_factory):
    """QK-only re-training on the second chunk only, patterns on the fly."""
    out = tmp_path_factory.mktemp("qk") / "run"
    cfg = RetrainConfig(samples=2 * CHUNK, sample_start=CHUNK, epochs=3, patterns="on-the-fly", **SGD)
    retrain(cfg, pretrained, data, out, progress=False)
    return out


def test_training_indices_are_the_new_range_then_a_replay_buffer_from_before_it(data):
    labels = data.train.labels
    order = subset_indices(labels, 100)

    indices = training_indices(labels, RetrainConfig(samples=100, sample_start=60, replay=12))

    assert torch.equal(indices[:40], order[60:])
    replay = indices[40:]
    assert set(replay.tolist()) <= set(order[:60].tolist()) and len(set(replay.tolist())) == 12
    assert torch.bincount(labels[replay], minlength=3).tolist() == [4, 4, 4]
    assert torch.equal(training_indices(labels, RetrainConfig(samples=100, sample_start=60, replay=12)), indices)
    assert torch.equal(training_indices(labels, RetrainConfig(samples=100)), order)  # --samples N is 0:N


def test_class_incremental_runs_train_on_the_chunks_classes(data):
    cfg = RetrainConfig(samples=2 * 30, sample_start=30, class_incremental=1, chunk_samples=30)

    first = training_indices(data.train.labels, RetrainConfig(samples=30, class_incremental=1, chunk_samples=30))
    second = training_indices(data.train.labels, cfg)

    assert len(data.train.labels[first].unique()) == len(data.train.labels[second].unique()) == 1
    assert data.train.labels[first][0] != data.train.labels[second][0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"samples": 40, "sample_start": 40}, "sample range 40:40"),
        ({"samples": 80, "sample_start": 40, "replay": 41}, "replay 41"),
        ({"method": "traditional", "sk_refresh": "auto"}, "needs --method qk"),
        ({"class_incremental": 2}, "class-incremental order needs both"),
        ({"sk_refresh_threshold": 1.5}, "fraction"),
    ],
)
def test_inconsistent_incremental_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        RetrainConfig(**fields)


def test_every_qk_epoch_logs_the_sk_staleness_of_the_pair_it_saves(qk_run, data):
    metrics = read_metrics(qk_run)
    ckpt = load_model_checkpoint(qk_run / "model.pt")
    pair = load_decoupled(ckpt)

    staleness = sk_staleness(pair.selector, pair.estimator, build_network(ckpt), validation_images(data, 30))

    assert [m["epoch"] for m in metrics if "sk_staleness" in m] == [1, 2, 3]
    assert metrics[-1]["sk_staleness"] == staleness.overall > 0  # the QK moved away from the frozen SK
    assert metrics[-1]["sk_staleness_per_site"] == staleness.per_site
    assert json.loads((qk_run / "config.json").read_text())["config"]["sample_start"] == CHUNK


def test_traditional_runs_log_no_staleness(pretrained, data, tmp_path):
    cfg = RetrainConfig(samples=2 * CHUNK, sample_start=CHUNK, replay=6, epochs=1, method="traditional", **SGD)
    retrain(cfg, pretrained, data, tmp_path / "run", progress=False)

    assert "sk_staleness" not in read_metrics(tmp_path / "run")[0]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["replay"] == 6


def test_auto_refresh_replaces_a_stale_sk_at_most_every_n_epochs_and_logs_cause_and_cost(pretrained, data, tmp_path):
    store, run = tmp_path / "store", tmp_path / "run"
    record_from_checkpoint(pretrained, data, TRAIN_SAMPLES, store, progress=False)
    cfg = RetrainConfig(
        samples=TRAIN_SAMPLES, sample_start=CHUNK, replay=10, epochs=4, sk_refresh="auto",
        sk_refresh_threshold=0.0, sk_refresh_every=2, **SGD,
    )  # fmt: skip

    retrain(cfg, pretrained, data, run, store=store, progress=False)

    metrics = read_metrics(run)
    refreshes = {m["epoch"]: m["sk_refresh"] for m in metrics if "sk_refresh" in m}
    assert list(refreshes) == [1, 3]  # stale after every epoch, refreshed at most every 2 epochs
    for epoch, refresh in refreshes.items():
        staleness = next(m["sk_staleness"] for m in metrics if m["epoch"] == epoch)
        assert refresh["cause"] == f"sk_staleness {staleness:.4f} > threshold 0.0"
        assert refresh["seconds"] > 0 and refresh["patterns_recorded"] == TRAIN_SAMPLES - CHUNK + 10
        assert refresh["store"] == f"patterns-sk{epoch}"
    selector = selector_from_checkpoint(run / "model.pt")  # the SK of the last refresh, in the final checkpoint
    assert PatternStore.open(run / "patterns-sk3", selector).indices.numel() == TRAIN_SAMPLES - CHUNK + 10
    with pytest.raises(StoreError):
        PatternStore.open(store, selector)


def test_refresh_of_a_qk_run_makes_its_estimators_network_the_sk(qk_run, data, tmp_path):
    store, out = tmp_path / "store", tmp_path / "refreshed"
    indices = subset_indices(data.train.labels, 2 * CHUNK)

    summary = refresh_checkpoint(qk_run / "model.pt", data, indices, store, out, staleness_samples=30, progress=False)

    assert summary["sk_staleness_before"] == read_metrics(qk_run)[-1]["sk_staleness"] > 0
    refreshed, ckpt = load_for_evaluation(out / "model.pt")
    network = build_network(load_model_checkpoint(qk_run / "model.pt")).eval()  # the QK with its ReLUs
    x = validation_images(data, 30)
    with torch.no_grad():
        torch.testing.assert_close(refreshed(x), network(x), rtol=0, atol=1e-5)
    assert sk_staleness(refreshed.selector, refreshed.estimator, network, x).overall == 0.0
    assert_same_tensors(ckpt["selector_state"], ckpt["state_dict"])
    assert PatternStore.open(store, refreshed.selector).indices.numel() == 2 * CHUNK

    cfg = RetrainConfig(samples=3 * CHUNK, sample_start=2 * CHUNK, replay=5, epochs=1, **SGD)
    record_from_checkpoint(out / "model.pt", data, 3 * CHUNK, store, progress=False)  # appends the new chunk only
    result = retrain(cfg, out / "model.pt", data, tmp_path / "next", store=store, progress=False)
    assert result.history[0]["sk_staleness"] >= 0
    with pytest.raises(ValueError, match="already holds a run"):
        refresh_checkpoint(qk_run / "model.pt", data, indices, tmp_path / "other", out, progress=False)


def test_a_configuration_saved_before_the_incremental_fields_still_matches():
    """Runs and cached cells saved by an skqk without sample ranges, replay or refresh keep resuming."""
    cfg = RetrainConfig(samples=100, epochs=3)
    saved = {k: v for k, v in cfg.to_dict().items() if k not in ("sample_start", "replay", "sk_refresh")}

    assert cfg.matches(saved)
    assert not cfg.matches({**saved, "epochs": 4})
    assert not RetrainConfig(samples=100, epochs=3, replay=0, sample_start=50).matches(saved)


def test_a_saved_training_configuration_without_a_factory_field_still_matches():
    cfg = TrainConfig(model="tiny", samples=40, epochs=3)
    saved = {k: v for k, v in cfg.to_dict().items() if k not in ("model_kwargs", "class_incremental")}

    assert cfg.matches(saved)


@pytest.mark.parametrize("patience", [0, 5])
def test_an_auto_refreshed_run_reports_what_its_model_pt_holds(pretrained, data, tmp_path, patience):
    """The last epoch refreshes the SK: its val accuracy and loss (the final line, metrics.jsonl, the best epoch of
    --patience) are those of the refreshed pair model.pt holds, not of the pair before the refresh."""
    store, run = tmp_path / "store", tmp_path / "run"
    record_from_checkpoint(pretrained, data, TRAIN_SAMPLES, store, progress=False)
    cfg = RetrainConfig(
        samples=TRAIN_SAMPLES, sample_start=CHUNK, epochs=3, sk_refresh="auto", sk_refresh_threshold=0.0,
        patience=patience, **SGD,
    )  # fmt: skip

    result = retrain(cfg, pretrained, data, run, store=store, progress=False)

    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics if "sk_refresh" in m] == [1, 2, 3]
    module, ckpt = load_for_evaluation(run / "model.pt")
    saved = evaluate(module, data)
    best = max(metrics, key=lambda m: m["val_accuracy"]) if patience else metrics[-1]
    assert ckpt.get("epoch", 3) == best["epoch"]
    assert saved["val_accuracy"] == best["val_accuracy"]
    assert saved["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)  # the same sums, up to rounding
    assert result.history == metrics and result.saved == best  # what the final line prints


def test_a_store_lacking_a_ranges_samples_names_the_recording_that_fills_it(pretrained, data, tmp_path):
    store = tmp_path / "store"
    record_from_checkpoint(pretrained, data, CHUNK, store, progress=False)
    cfg = RetrainConfig(samples=2 * CHUNK, sample_start=CHUNK, replay=5, epochs=1, **SGD)

    with pytest.raises(ValueError, match=f"lacks {CHUNK} of the {CHUNK + 5} samples.*--samples {2 * CHUNK} first"):
        retrain(cfg, pretrained, data, tmp_path / "run", store=store, progress=False)
    record_from_checkpoint(pretrained, data, 2 * CHUNK, store, progress=False)  # what the hint says
    assert retrain(cfg, pretrained, data, tmp_path / "run", store=store, progress=False).history
