"""The SGD loop of Phases 1 and 4 and the traditional baseline, through the library on a tiny synthetic dataset:
run folder contents, determinism, the controlled QK-vs-traditional comparison, store vs on-the-fly patterns and
bit-identical resumption after an interruption (dropout included)."""

import json
import math

import pytest
import torch
from pipeline_helpers import (
    TEST_SAMPLES,
    TRAIN_SAMPLES,
    assert_same_tensors,
    make_dataset,
    read_metrics,
    state_dict_of,
    tiny_models,  # noqa: F401  (fixture: the test models)
)

import skqk.pipeline.validation as validation_module
from skqk import __version__
from skqk.pipeline.checkpoint import load_checkpoint, load_for_evaluation
from skqk.pipeline.config import RetrainConfig, TrainConfig
from skqk.pipeline.loop import evaluate
from skqk.pipeline.record import record_from_checkpoint
from skqk.pipeline.retrain import retrain
from skqk.pipeline.train import train


class Interrupt(Exception):
    """Stands in for a crash in the middle of a run."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))[2]


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    """model.pt of a briefly trained `tiny` network (no dropout), the start of every re-training here."""
    out = tmp_path_factory.mktemp("pre") / "run"
    train(TrainConfig(model="tiny", samples=60, epochs=2, batch_size=20, lr=0.05), data, out, progress=False)
    return out / "model.pt"


def flat_delta(after: dict, before: dict) -> torch.Tensor:
    return torch.cat([(after[k] - before[k]).flatten() for k in before])


def test_train_writes_model_config_and_per_epoch_metrics(data, tmp_path):
    cfg = TrainConfig(model="tiny", samples=TRAIN_SAMPLES, epochs=4, batch_size=20, lr=0.05)
    result = train(cfg, data, tmp_path / "run", progress=False)

    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"] == cfg.to_dict() and saved["config"]["momentum"] == 0.9  # resolved, defaults included
    assert saved["kind"] == "TrainConfig"
    assert saved["code_version"].startswith(__version__)

    metrics = read_metrics(tmp_path / "run")
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert metrics == result.history
    for m in metrics:
        assert 0 <= m["val_accuracy"] <= 1 and math.isfinite(m["val_loss"]) and m["val_loss"] >= 0
    assert metrics[-1]["val_accuracy"] > 0.8  # the colours are learnable: it really trained

    module, ckpt = load_for_evaluation(tmp_path / "run" / "model.pt")
    assert ckpt["kind"] == "network" and ckpt["model"] == "tiny" and ckpt["config"] == cfg.to_dict()
    assert ckpt["history"] == metrics
    final = evaluate(module, data)
    assert final["val_accuracy"] == metrics[-1]["val_accuracy"]
    assert final["val_loss"] == pytest.approx(metrics[-1]["val_loss"], rel=1e-6)


def test_same_seed_gives_identical_weights_another_seed_does_not(data, tmp_path):
    cfg = TrainConfig(model="tiny_dropout", samples=90, epochs=2, batch_size=16, lr=0.05)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(TrainConfig(**{**cfg.to_dict(), "seed": seed}), data, tmp_path / name, progress=False)
    a, b, c = (state_dict_of(tmp_path / name / "model.pt") for name in "abc")
    assert_same_tensors(a, b)
    assert not torch.equal(a["0.weight"], c["0.weight"])
    assert without_seconds(read_metrics(tmp_path / "a")) == without_seconds(read_metrics(tmp_path / "b"))


def without_seconds(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]


def retrain_weights(pretrained, data, out, **overrides) -> dict:
    cfg = RetrainConfig(**{"samples": TRAIN_SAMPLES, "patterns": "on-the-fly", "lr": 0.05, **overrides})
    retrain(cfg, pretrained, data, out, progress=False)
    return state_dict_of(out / "model.pt")


def test_qk_equals_traditional_after_one_step_and_departs_from_it_later(pretrained, data, tmp_path):
    # one full-batch step: the selector's patterns are the network's own, so both take the same gradient step
    # (bit for bit without dead-unit removal: smaller matmuls round differently, see test_pruned_qk_...)
    one = {"epochs": 1, "batch_size": TRAIN_SAMPLES, "prune": False}
    qk = retrain_weights(pretrained, data, tmp_path / "qk1", method="qk", **one)
    traditional = retrain_weights(pretrained, data, tmp_path / "tr1", method="traditional", **one)
    assert_same_tensors(qk, traditional)
    assert not torch.equal(qk["0.weight"], state_dict_of(pretrained)["0.weight"])  # it did take a step

    # later steps: the traditional net's ReLUs follow its new weights, the QK run keeps the recorded SK
    several = {"epochs": 5, "batch_size": TRAIN_SAMPLES}
    qk = retrain_weights(pretrained, data, tmp_path / "qk5", method="qk", **several)
    traditional = retrain_weights(pretrained, data, tmp_path / "tr5", method="traditional", **several)
    assert max((qk[k] - traditional[k]).abs().max().item() for k in qk) > 1e-3


def test_qk_and_traditional_see_the_same_batches_in_the_same_order(pretrained, data, tmp_path):
    """With steps too small to flip activations, a QK run's updates are the traditional run's, mini-batch by
    mini-batch. With momentum the sum of the updates depends on the batch order, which another seed changes:
    that difference is far larger than the QK/traditional one, so the two methods visit the same batches in the
    same order in every epoch."""
    before = state_dict_of(pretrained)
    small = {"epochs": 2, "batch_size": 8, "lr": 1e-5}
    qk, traditional, reordered = (
        flat_delta(retrain_weights(pretrained, data, tmp_path / name, method=method, seed=seed, **small), before)
        for name, method, seed in (("qk", "qk", 0), ("tr", "traditional", 0), ("tr1", "traditional", 1))
    )
    assert traditional.norm() > 0
    assert (qk - traditional).norm() / traditional.norm() < 3e-3
    assert (reordered - traditional).norm() / traditional.norm() > 1e-2

    # and the same hyperparameters reached the optimiser
    groups = [load_checkpoint(tmp_path / name / "resume.pt")["optimizer"]["param_groups"] for name in ("qk", "tr")]
    assert [{k: v for k, v in g.items() if k != "params"} for g in groups[0]] == [
        {k: v for k, v in g.items() if k != "params"} for g in groups[1]
    ]
    configs = [load_checkpoint(tmp_path / name / "model.pt")["config"] for name in ("qk", "tr")]
    assert {**configs[0], "method": None} == {**configs[1], "method": None}


def test_store_and_on_the_fly_patterns_train_the_same_estimator(pretrained, data, tmp_path):
    store = record_from_checkpoint(pretrained, data, TRAIN_SAMPLES, tmp_path / "store", progress=False)
    common = {"method": "qk", "epochs": 3, "batch_size": 32}
    cfg = RetrainConfig(samples=TRAIN_SAMPLES, lr=0.05, patterns="store", **common)
    retrain(cfg, pretrained, data, tmp_path / "store-run", store=tmp_path / "store", progress=False)
    from_store = state_dict_of(tmp_path / "store-run" / "model.pt")
    on_the_fly = retrain_weights(pretrained, data, tmp_path / "fly-run", **common)
    for key in on_the_fly:
        torch.testing.assert_close(from_store[key], on_the_fly[key], rtol=0, atol=1e-6)

    # the QK run changed the estimator only: the selector's weights (the SK) are the pre-trained ones
    ckpt = load_checkpoint(tmp_path / "store-run" / "model.pt")
    assert ckpt["kind"] == "decoupled" and ckpt["selector_fingerprint"] == store.fingerprint
    assert_same_tensors(ckpt["selector_state"], state_dict_of(pretrained))
    assert not torch.equal(ckpt["state_dict"]["0.weight"], state_dict_of(pretrained)["0.weight"])


def test_train_resumes_bit_identically_after_an_interruption_with_dropout(data, tmp_path, monkeypatch):
    cfg = TrainConfig(model="tiny_dropout", samples=64, epochs=4, batch_size=16, lr=0.05)
    train(cfg, data, tmp_path / "straight", progress=False)

    def crash_in_epoch_3(epoch, module):
        if epoch == 3:
            raise Interrupt
        return {}

    with pytest.raises(Interrupt):
        train(cfg, data, tmp_path / "resumed", progress=False, on_epoch=crash_in_epoch_3)
    assert not (tmp_path / "resumed" / "model.pt").exists()
    assert len(load_checkpoint(tmp_path / "resumed" / "resume.pt")["history"]) == 2

    with monkeypatch.context() as patch:  # control: resuming without restoring the RNG changes the dropout masks
        patch.setattr(torch, "set_rng_state", lambda state: None)
        train(cfg, data, tmp_path / "resumed-no-rng", progress=False, on_epoch=lambda e, m: {})
    for name in ("resume.pt", "config.json", "metrics.jsonl"):
        (tmp_path / "resumed-no-rng" / name).write_bytes((tmp_path / "resumed" / name).read_bytes())
    (tmp_path / "resumed-no-rng" / "model.pt").unlink()
    with monkeypatch.context() as patch:
        patch.setattr(torch, "set_rng_state", lambda state: None)
        train(cfg, data, tmp_path / "resumed-no-rng", resume=True, progress=False)

    epochs_run = []
    train(
        cfg, data, tmp_path / "resumed", resume=True, progress=False, on_epoch=lambda e, m: epochs_run.append(e) or {}
    )
    assert epochs_run == [3, 4]  # continued, did not start over
    assert_same_tensors(
        state_dict_of(tmp_path / "resumed" / "model.pt"), state_dict_of(tmp_path / "straight" / "model.pt")
    )
    assert not torch.equal(
        state_dict_of(tmp_path / "resumed-no-rng" / "model.pt")["4.weight"],
        state_dict_of(tmp_path / "straight" / "model.pt")["4.weight"],
    )
    assert without_seconds(read_metrics(tmp_path / "resumed")) == without_seconds(read_metrics(tmp_path / "straight"))


def test_qk_retrain_resumes_bit_identically_after_an_interruption_with_dropout(data, tmp_path, monkeypatch):
    pre = tmp_path / "pre"
    train(TrainConfig(model="tiny_dropout", samples=60, epochs=2, batch_size=20, lr=0.05), data, pre, progress=False)
    cfg = RetrainConfig(samples=64, epochs=4, batch_size=16, lr=0.05, patterns="on-the-fly")
    retrain(cfg, pre / "model.pt", data, tmp_path / "straight", progress=False)

    calls = []

    def evaluate_then_crash_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Interrupt
        return evaluate(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(validation_module, "evaluate", evaluate_then_crash_in_epoch_3)  # a QK run's evaluation
        with pytest.raises(Interrupt):
            retrain(cfg, pre / "model.pt", data, tmp_path / "resumed", progress=False)
    assert len(load_checkpoint(tmp_path / "resumed" / "resume.pt")["history"]) == 2

    calls.clear()
    with monkeypatch.context() as patch:
        patch.setattr(validation_module, "evaluate", lambda *a, **k: calls.append(1) or evaluate(*a, **k))
        retrain(cfg, pre / "model.pt", data, tmp_path / "resumed", resume=True, progress=False)
    assert len(calls) == 2  # epochs 3 and 4 only
    straight = load_checkpoint(tmp_path / "straight" / "model.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "model.pt")
    assert resumed["kind"] == "decoupled"
    assert_same_tensors(resumed["state_dict"], straight["state_dict"])
    assert_same_tensors(resumed["selector_state"], straight["selector_state"])
    assert len(resumed["history"]) == 4


def test_evaluate_on_a_limited_balanced_subset(pretrained, data):
    module, _ = load_for_evaluation(pretrained)
    full = evaluate(module, data)
    assert evaluate(module, data, limit=TEST_SAMPLES) == full
    part = evaluate(module, data, limit=9)
    assert part == evaluate(module, data, limit=9)  # a fixed subset
    assert part["val_accuracy"] * 9 == pytest.approx(round(part["val_accuracy"] * 9))


def test_resume_removes_the_temporary_files_of_a_save_killed_midway(data, tmp_path):
    cfg = TrainConfig(model="tiny", samples=20, epochs=2, batch_size=20, lr=0.05)

    def crash(epoch, module):
        raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, data, tmp_path / "run", progress=False, on_epoch=crash)
    # what SIGKILL during atomic saves leaves (torch.save had written part of the file)
    leftovers = [".resume.pt.k1ll3d.part", ".model.pt.x0x0x0.part", ".metrics.jsonl.abcdef.part"]
    for name in leftovers:
        (tmp_path / "run" / name).write_bytes(b"half a file")
    (tmp_path / "run" / ".notes.part").write_text("not ours")

    result = train(cfg, data, tmp_path / "run", resume=True, progress=False)

    assert len(result.history) == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".notes.part",
        "config.json",
        "metrics.jsonl",
        "model.pt",
        "resume.pt",
    ]
