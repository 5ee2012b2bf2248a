"""`skqk retrain` speed levers: dead-unit removal on by default (same training as without it) and early stopping
(`--patience`) keeping the best checkpoint."""

import json

import pytest
import torch
from pipeline_helpers import (
    assert_one_line_error,
    assert_same_tensors,
    assert_same_training_up_to_rounding,
    main_in_process,
    make_dataset,
    read_metrics,
    state_dict_of,
    tiny_models,  # noqa: F401  (fixture: the test models)
)

import skqk.pipeline.validation as validation_module
from skqk.pipeline.checkpoint import load_checkpoint, load_for_evaluation, save_checkpoint
from skqk.pipeline.config import RetrainConfig, TrainConfig
from skqk.pipeline.loop import evaluate
from skqk.pipeline.record import record_from_checkpoint
from skqk.pipeline.retrain import retrain, training_indices
from skqk.pipeline.train import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))[2]


@pytest.fixture(scope="module", params=["tiny", "tiny_dropout"])
def pretrained(request, data, tmp_path_factory):
    """A briefly trained tiny net with a dead conv channel and dead hidden neurons (on every sample)."""
    out = tmp_path_factory.mktemp("pre") / "run"
    train(TrainConfig(model=request.param, samples=60, epochs=2, batch_size=20, lr=0.05), data, out, progress=False)
    ckpt = load_checkpoint(out / "model.pt")
    ckpt["state_dict"]["0.bias"][1] = -100.0
    ckpt["state_dict"]["4.bias"][:5] = -100.0
    save_checkpoint(out / "model.pt", ckpt)
    return out / "model.pt"


def test_pruned_qk_retraining_equals_unpruned_and_reports_what_it_removed(pretrained, data, tmp_path):
    """Both exact levers at once: dead units removed in channels-last vs all units in the contiguous layout."""
    cfg = {"samples": 64, "epochs": 3, "batch_size": 16, "lr": 0.05, "patterns": "on-the-fly"}
    retrain(RetrainConfig(**cfg, layout="channels_last"), pretrained, data, tmp_path / "pruned", progress=False)
    retrain(RetrainConfig(**cfg, prune=False, layout="contiguous"), pretrained, data, tmp_path / "full", progress=False)
    pruned, full = state_dict_of(tmp_path / "pruned" / "model.pt"), state_dict_of(tmp_path / "full" / "model.pt")
    # 12 steps; the longest sums: a batch of 16 samples times the hidden layer's 64 inputs
    assert_same_training_up_to_rounding(pruned, full, state_dict_of(pretrained), sum_terms=16 * 64, steps=12)
    assert not torch.equal(pruned["4.weight"], state_dict_of(pretrained)["4.weight"])  # it trained
    metrics, metrics_full = read_metrics(tmp_path / "pruned"), read_metrics(tmp_path / "full")
    assert [m["val_accuracy"] for m in metrics] == [m["val_accuracy"] for m in metrics_full]
    assert [m["train_accuracy"] for m in metrics] == [m["train_accuracy"] for m in metrics_full]
    removal = json.loads((tmp_path / "pruned" / "config.json").read_text())["dead_unit_removal"]
    removed = removal["sites"]
    assert removal["applied"] and removal["parameter_share"] >= 0.1
    assert {k: removed["1"][k] for k in ("units", "dead", "removed")} == {"units": 4, "dead": 1, "removed": 1}
    assert removed["1"]["parameters"] == 3 * 3 * 3 + 1 + 16 * removed["5"]["units"]  # conv row + 16 columns per channel
    assert removed["5"]["units"] in (16, 32)
    assert removed["5"]["removed"] == removed["5"]["dead"] >= 5
    assert all(m["removed_units"] == {"1": 1, "5": removed["5"]["removed"]} for m in metrics)
    assert "dead_unit_removal" not in json.loads((tmp_path / "full" / "config.json").read_text())
    assert "removed_units" not in metrics_full[0]


def test_patience_stops_early_and_keeps_the_best_epoch(pretrained, data, tmp_path):
    cfg = RetrainConfig(samples=64, epochs=12, batch_size=16, lr=0.5, patience=2, patterns="on-the-fly")
    retrain(cfg, pretrained, data, tmp_path / "r", progress=False)
    metrics = read_metrics(tmp_path / "r")
    accuracies = [m["val_accuracy"] for m in metrics]
    best = accuracies.index(max(accuracies))
    assert len(metrics) == best + 1 + 2 < 12, accuracies  # two epochs without improvement, then stop
    model = load_checkpoint(tmp_path / "r" / "model.pt")
    assert model["epoch"] == best + 1 and len(model["history"]) == len(metrics)
    assert model["state_dict"].keys() == load_checkpoint(tmp_path / "r" / "best.pt")["state_dict"].keys()
    for key, value in load_checkpoint(tmp_path / "r" / "best.pt")["state_dict"].items():
        assert torch.equal(model["state_dict"][key], value)
    assert evaluate(load_for_evaluation(tmp_path / "r" / "model.pt")[0], data)["val_accuracy"] == max(accuracies)


class Interrupt(Exception):
    """Stands in for a crash in the middle of a run."""


def test_pruned_channels_last_qk_retraining_resumes_bit_identically(pretrained, data, tmp_path, monkeypatch):
    """Resume restores the full-size network and optimiser state saved after the interrupted run's last epoch,
    and pruning starts again from it: the same bits as a run that was never interrupted."""
    record_from_checkpoint(pretrained, data, 64, tmp_path / "store")
    cfg = RetrainConfig(samples=64, epochs=3, batch_size=16, lr=0.05, layout="channels_last")
    retrain(cfg, pretrained, data, tmp_path / "straight", store=tmp_path / "store", progress=False)
    calls = []

    def evaluate_then_crash_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupt
        return evaluate(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(validation_module, "evaluate", evaluate_then_crash_in_epoch_2)  # a QK run's evaluation
        with pytest.raises(Interrupt):
            retrain(cfg, pretrained, data, tmp_path / "resumed", store=tmp_path / "store", progress=False)
    retrain(cfg, pretrained, data, tmp_path / "resumed", store=tmp_path / "store", resume=True, progress=False)
    straight, resumed = (state_dict_of(tmp_path / name / "model.pt") for name in ("straight", "resumed"))
    assert_same_tensors(resumed, straight)


def test_negative_patience_is_a_one_line_error(pretrained, capsys, tmp_path):
    code, _, err = main_in_process(
        capsys, "retrain", "--checkpoint", pretrained, "--patience", "-1", "--out", tmp_path / "r"
    )
    assert_one_line_error(code, err, "patience must be non-negative")
    assert not (tmp_path / "r").exists()


def head_problem(pretrained, data, cfg: RetrainConfig) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The head's name, its input on the run's samples with a ones column (the bias), computed independently from
    the pre-trained network's penultimate layer in float64, and the samples' labels."""
    network = load_for_evaluation(pretrained)[0].double().eval()
    idx = training_indices(data.train.labels, cfg)
    with torch.no_grad():
        z = network[:-1](data.inputs(data.train, idx).double())
    return str(len(network) - 1), torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], 1), data.train.labels[idx]


def ridge_theta(z: torch.Tensor, labels: torch.Tensor, classes: int, lam: float) -> torch.Tensor:
    y = torch.nn.functional.one_hot(labels, classes).double()
    penalty = torch.diag(torch.cat([torch.full((z.shape[1] - 1,), lam), torch.zeros(1)]))
    return torch.linalg.solve(z.T @ z + penalty, z.T @ y)


def trained_theta(run_dir, head: str) -> torch.Tensor:
    trained = state_dict_of(run_dir / "model.pt")
    return torch.cat([trained[f"{head}.weight"].T, trained[f"{head}.bias"][None]]).double()


def test_ridge_head_optimizer_starts_sgd_from_the_heads_exact_ridge_solution(pretrained, data, tmp_path):
    """With a learning rate too small to move anything, the trained head is the ridge solution with the λ the run
    recorded, solved here independently from the pre-trained network's penultimate features."""
    cfg = RetrainConfig(samples=64, epochs=1, batch_size=16, lr=1e-30, optimizer="ridge-head", patterns="on-the-fly")
    retrain(cfg, pretrained, data, tmp_path / "run", progress=False)
    solve = json.loads((tmp_path / "run" / "config.json").read_text())["head_solve"]
    head, z, labels = head_problem(pretrained, data, cfg)
    assert solve["block"] == head and solve["chosen_by"] == "gcv" and solve["seconds"] > 0
    theta = ridge_theta(z, labels, data.num_classes, solve["lambda"])
    torch.testing.assert_close(trained_theta(tmp_path / "run", head), theta, rtol=1e-4, atol=1e-5)


def test_ce_head_optimizer_starts_sgd_from_the_heads_cross_entropy_optimum(pretrained, data, tmp_path):
    """The trained head (learning rate too small to move it) zeroes the gradient of the penalised cross-entropy
    ``Σ CE(z θ, y) + λ ‖W‖² + ½ (Σ b)²`` computed here independently in float64: its norm is below 1e-4 of the
    gradient's at the ridge solution the Newton iterations start from (float32 weights round at ~1e-7)."""
    cfg = RetrainConfig(samples=64, epochs=1, batch_size=16, lr=1e-30, optimizer="ce-head", patterns="on-the-fly")
    retrain(cfg, pretrained, data, tmp_path / "run", progress=False)
    solve = json.loads((tmp_path / "run" / "config.json").read_text())["head_solve"]
    head, z, labels = head_problem(pretrained, data, cfg)
    assert solve["block"] == head and solve["cross_entropy"]["iterations"] > 1
    lam, y = solve["lambda"], torch.nn.functional.one_hot(labels, data.num_classes).double()

    def gradient(theta: torch.Tensor) -> torch.Tensor:
        penalty = torch.cat([torch.full_like(theta[:-1], 2 * lam), torch.zeros_like(theta[-1:])])
        bias_sum = torch.cat([torch.zeros_like(theta[:-1]), torch.full_like(theta[-1:], theta[-1].sum().item())])
        return z.T @ (torch.softmax(z @ theta, 1) - y) + penalty * theta + bias_sum

    start = gradient(ridge_theta(z, labels, data.num_classes, lam)).norm()
    assert gradient(trained_theta(tmp_path / "run", head)).norm() < 1e-4 * start


def test_ridge_head_optimizer_needs_the_qk_method():
    with pytest.raises(ValueError, match="needs --method qk"):
        RetrainConfig(method="traditional", optimizer="ridge-head")
