"""Combining copies that share one SK: the averaging and task-arithmetic math checked by hand on a tiny net,
BatchNorm statistics pooled exactly, one-line refusals that write nothing, and merged checkpoints that evaluate,
re-train and merge again."""

import copy
import os

import pytest
import torch
from pipeline_helpers import (
    assert_one_line_error,
    data_args,
    main_in_process,
    make_dataset,
    snapshot,
    tiny_models,  # noqa: F401  (fixture: the test models)
)
from torch import nn

from skqk import decouple
from skqk.combine import MergeError, held_out_indices, merge, merge_checkpoints, task_arithmetic, tune_lambda
from skqk.decoupled import DecoupledModel
from skqk.pipeline.checkpoint import load_for_evaluation, load_model_checkpoint, save_checkpoint
from skqk.pipeline.config import RetrainConfig, TrainConfig
from skqk.pipeline.loop import evaluate
from skqk.pipeline.retrain import retrain, training_indices
from skqk.pipeline.train import train


def tiny_bn_net() -> nn.Module:
    """Linear(2, 2) -> BatchNorm -> ReLU -> Linear(2, 1): few enough numbers to average by hand."""
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Linear(2, 1)).eval()


def copy_with(pair, weight: list, bn_mean: list, bn_var: list):
    """A copy of the decoupled pair sharing its selector, with the first layer's weight and BN stats set."""
    selector, estimator = pair
    estimator = copy.deepcopy(estimator)
    state = estimator.net.state_dict()
    state["0.weight"] = torch.tensor(weight)
    state["1.running_mean"] = torch.tensor(bn_mean)
    state["1.running_var"] = torch.tensor(bn_var)
    estimator.net.load_state_dict(state)
    return DecoupledModel(selector, estimator)


def test_average_and_batchnorm_statistics_checked_by_hand():
    pair = decouple(tiny_bn_net())
    a = copy_with(pair, [[1.0, 2.0], [0.0, -4.0]], [0.0, 2.0], [1.0, 1.0])
    b = copy_with(pair, [[5.0, -2.0], [8.0, 4.0]], [4.0, 2.0], [3.0, 5.0])
    merged = merge([a, b], weights=[300, 100])  # 3 : 1
    state = merged.estimator.net.state_dict()
    # 0.75 * a + 0.25 * b
    torch.testing.assert_close(state["0.weight"], torch.tensor([[2.0, 1.0], [2.0, -2.0]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(state["1.running_mean"], torch.tensor([1.0, 2.0]), rtol=0, atol=1e-6)
    # 0.75 (1 + (0-1)^2) + 0.25 (3 + (4-1)^2) = 4.5;  0.75 (1 + 0) + 0.25 (5 + 0) = 2.0
    torch.testing.assert_close(state["1.running_var"], torch.tensor([4.5, 2.0]), rtol=0, atol=1e-6)
    assert merged.selector is a.selector  # the shared SK, untouched
    assert torch.equal(a.estimator.net.state_dict()["0.weight"], torch.tensor([[1.0, 2.0], [0.0, -4.0]]))


def test_pooled_batchnorm_statistics_are_those_of_all_the_data():
    """Each copy's running stats set to its own data's exact statistics: weighting by sample counts gives the
    exact mean and (population) variance of the union of the data."""
    pair = decouple(tiny_bn_net())
    data = [torch.randn(300, 2) * 2 + 1, torch.randn(100, 2) * 0.5 - 3]
    copies = [
        copy_with(pair, [[1.0, 0.0], [0.0, 1.0]], d.mean(0).tolist(), d.var(0, unbiased=False).tolist()) for d in data
    ]
    state = merge(copies, weights=[300, 100]).estimator.net.state_dict()
    union = torch.cat(data)
    torch.testing.assert_close(state["1.running_mean"], union.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state["1.running_var"], union.var(0, unbiased=False), rtol=1e-5, atol=1e-5)


def test_task_arithmetic_checked_by_hand():
    pair = decouple(tiny_bn_net())
    start = copy_with(pair, [[1.0, 1.0], [1.0, 1.0]], [0.0, 0.0], [1.0, 1.0])
    a = copy_with(pair, [[3.0, 1.0], [1.0, 1.0]], [0.0, 0.0], [1.0, 1.0])
    b = copy_with(pair, [[5.0, 1.0], [1.0, -1.0]], [2.0, 0.0], [1.0, 1.0])
    merged = task_arithmetic(start, [a, b], 0.5).estimator.net.state_dict()
    # 1 + 0.5 (2 + 4) = 4;  1 + 0.5 (0 - 2) = 0
    torch.testing.assert_close(merged["0.weight"], torch.tensor([[4.0, 1.0], [1.0, 0.0]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(merged["1.running_mean"], torch.tensor([1.0, 0.0]), rtol=0, atol=1e-6)  # pooled
    per_copy = task_arithmetic(start, [a, b], [1.0, 0.0]).estimator.net.state_dict()
    assert torch.equal(per_copy["0.weight"], a.estimator.net.state_dict()["0.weight"])
    # λ = 1/K is the unweighted average of the trained parameters
    plain = merge([a, b]).estimator.net.state_dict()
    torch.testing.assert_close(
        task_arithmetic(start, [a, b], 0.5).estimator.net.state_dict()["0.weight"], plain["0.weight"]
    )


def test_tuned_lambda_is_the_best_of_its_grid():
    torch.manual_seed(1)
    pair = decouple(tiny_bn_net())
    start, a, b = (copy_with(pair, torch.randn(2, 2).tolist(), [0.0, 0.0], [1.0, 1.0]) for _ in range(3))
    x, y = torch.randn(64, 2), torch.zeros(64, dtype=torch.long)
    lam, merged, scores = tune_lambda(start, [a, b], x, y, [0.0, 0.5, 1.0])
    assert [s["lambda"] for s in scores] == [0.0, 0.5, 1.0]
    best = max(scores, key=lambda s: (s["accuracy"], -s["loss"]))
    assert lam == best["lambda"]
    expected = task_arithmetic(start, [a, b], lam).estimator.net.state_dict()
    for key, value in merged.estimator.net.state_dict().items():
        assert torch.equal(value, expected[key])


def test_copies_with_another_sk_are_refused():
    pair = decouple(tiny_bn_net())
    other = decouple(tiny_bn_net())  # other initial weights: another SK
    a = copy_with(pair, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [1.0, 1.0])
    b = copy_with(other, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(MergeError, match="another SK"):
        merge([a, b])
    with pytest.raises(MergeError, match="at least two"):
        merge([a])
    with pytest.raises(MergeError, match="non-negative"):
        merge([a, a], weights=[1, -1])


# --- checkpoints, on the tiny colour dataset -------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A pre-trained `tiny` net, two QK copies re-trained from it on different samples, a QK copy from another
    pre-training (another SK), a frozen-pooling copy, a traditional copy, and a `tiny_dropout` QK copy."""
    root = tmp_path_factory.mktemp("merge")
    data_dir, cache_dir, data = make_dataset(root)
    sgd = {"epochs": 2, "batch_size": 20, "lr": 0.05}
    for name, model, seed in (("pre", "tiny", 0), ("pre_other", "tiny", 1), ("pre_dropout", "tiny_dropout", 0)):
        train(TrainConfig(model=model, samples=60, seed=seed, **sgd), data, root / name, progress=False)

    def qk(out, pre="pre", samples=90, subset_seed=0, pooling="live", method="qk", **order):
        cfg = RetrainConfig(
            samples=samples, subset_seed=subset_seed, method=method, patterns="on-the-fly", **order, **sgd
        )
        retrain(cfg, root / pre / "model.pt", data, root / out, pooling=pooling, progress=False)
        return root / out / "model.pt"

    paths = {
        "a": qk("a", samples=90, subset_seed=1),
        "b": qk("b", samples=30, subset_seed=2),
        "c": qk("c", samples=60, subset_seed=1),
        "other_sk": qk("other_sk", pre="pre_other"),
        "frozen": qk("frozen", pooling="frozen"),
        "traditional": qk("traditional", method="traditional"),
        "dropout": qk("dropout", pre="pre_dropout"),
        "range": qk("range", samples=90, subset_seed=1, sample_start=60, replay=6),  # 36 samples
        # two chunks of the class-incremental order: one class each
        "chunk0": qk("chunk0", samples=30, class_incremental=1, chunk_samples=30),
        "chunk1": qk("chunk1", samples=60, sample_start=30, replay=3, class_incremental=1, chunk_samples=30),
        "pre": root / "pre" / "model.pt",
    }
    return {"root": root, "data": data, "paths": paths, "data_args": data_args(data_dir, cache_dir)}


def test_merged_checkpoint_weighs_by_samples_and_is_a_normal_qk_checkpoint(runs, tmp_path):
    p, data = runs["paths"], runs["data"]
    out = tmp_path / "merged.pt"
    record = merge_checkpoints([p["a"], p["b"]], out)
    assert record["merge"]["weights"] == [0.75, 0.25]  # 90 and 30 samples
    assert record["samples"] == 120
    ckpt = load_model_checkpoint(out)
    a, b = (load_model_checkpoint(p[k]) for k in "ab")
    for key, value in ckpt["state_dict"].items():
        if value.is_floating_point() and not key.endswith("running_var"):
            torch.testing.assert_close(value, 0.75 * a["state_dict"][key] + 0.25 * b["state_dict"][key])
    assert ckpt["selector_fingerprint"] == a["selector_fingerprint"]
    # evaluate
    module, _ = load_for_evaluation(out)
    metrics = evaluate(module, data)
    assert 0 <= metrics["val_accuracy"] <= 1
    # continue re-training from it (a QK run from a QK checkpoint keeps its SK)
    cfg = RetrainConfig(samples=60, epochs=1, batch_size=20, lr=0.05, patterns="on-the-fly")
    result = retrain(cfg, out, data, tmp_path / "continued", progress=False)
    assert result.module.selector.fingerprint == a["selector_fingerprint"]
    # and merge again: the merged checkpoint counts as its 120 samples
    again = merge_checkpoints([out, p["a"]], tmp_path / "again.pt")
    assert again["merge"]["weights"] == [120 / 210, 90 / 210]


@pytest.mark.parametrize(
    "other, fragment",
    [
        ("other_sk", "another SK"),
        ("frozen", "pooling"),
        ("traditional", "traditional"),
        ("dropout", "architecture"),
    ],
)
def test_refusals_write_nothing(runs, tmp_path, other, fragment):
    p = runs["paths"]
    before = {k: snapshot(v) for k, v in p.items()}
    out = tmp_path / "merged.pt"
    with pytest.raises(MergeError, match=fragment) as error:
        merge_checkpoints([p["a"], p[other]], out)
    assert "\n" not in str(error.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert {k: snapshot(v) for k, v in p.items()} == before


def test_task_arithmetic_from_the_pre_trained_checkpoint(runs, tmp_path):
    p = runs["paths"]
    record = merge_checkpoints(
        [p["a"], p["b"]], tmp_path / "ta.pt", method="task-arithmetic", start=p["pre"], lambdas=0.0
    )
    assert record["merge"]["lambda"] == 0.0
    merged = load_model_checkpoint(tmp_path / "ta.pt")["state_dict"]
    pre = load_model_checkpoint(p["pre"])["state_dict"]
    for key, value in pre.items():  # λ = 0: the start's trained QK
        assert torch.equal(merged[key], value), key
    with pytest.raises(MergeError, match="another SK"):
        merge_checkpoints(
            [p["a"], p["b"]],
            tmp_path / "x.pt",
            method="task-arithmetic",
            start=runs["root"] / "pre_other" / "model.pt",
            lambdas=0.5,
        )
    with pytest.raises(MergeError, match="--lambda"):
        merge_checkpoints([p["a"], p["b"]], tmp_path / "x.pt", method="task-arithmetic", start=p["pre"])
    assert not (tmp_path / "x.pt").exists()


# --- the command line -------------------------------------------------------------------------------------------


def test_cli_merge_evaluate_and_merge_again(runs, tmp_path, capsys):
    p = runs["paths"]
    code, out, err = main_in_process(capsys, "merge", p["a"], p["b"], "-o", tmp_path / "m.pt")
    assert code == 0, err
    assert "m.pt" in out and "0.75" in out
    assert load_model_checkpoint(tmp_path / "m.pt")["samples"] == 120
    code, out, err = main_in_process(
        capsys, "merge", tmp_path / "m.pt", p["a"], "-o", tmp_path / "m2.pt", "--weights", "1,3"
    )
    assert code == 0, err
    assert load_model_checkpoint(tmp_path / "m2.pt")["merge"]["weights"] == [0.25, 0.75]


@pytest.mark.parametrize(
    "copies, options, fragment",
    [
        (["a", "other_sk"], [], "another SK"),
        (["a", "frozen"], [], "pooling"),
        (["a", "traditional"], [], "traditional"),
        (["a", "dropout"], [], "architecture"),
        (["a"], [], "at least two"),
        (["a", "b"], ["--weights", "1"], "1 weights for 2 copies"),
        (["a", "b"], ["--method", "task-arithmetic", "--start", "{pre}"], "--lambda"),
        (["a", "b"], ["--method", "task-arithmetic", "--lambda", "0.5"], "--start"),
        (["a", "c"], ["--method", "task-arithmetic", "--start", "{pre}", "--tune-samples", "40"], "--tune-samples"),
        (["a", "b"], ["--method", "task-arithmetic", "--start", "{pre}", "--tune-samples", "20"], "sample order"),
    ],
)
def test_cli_refusals_are_one_line_and_write_nothing(runs, tmp_path, capsys, copies, options, fragment):
    p = runs["paths"]
    options = [o.format(pre=p["pre"]) for o in options]
    before = snapshot(runs["root"])
    code, _, err = main_in_process(
        capsys, "merge", *(p[c] for c in copies), "-o", tmp_path / "m.pt", *options, *runs["data_args"]
    )
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []
    assert snapshot(runs["root"]) == before


def test_cli_task_arithmetic_tunes_lambda_on_unseen_samples(runs, tmp_path, capsys):
    """Copies a (90 samples) and c (60) of one sample order: the last 20 of the 120 are unseen by both."""
    p = runs["paths"]
    code, out, err = main_in_process(
        capsys,
        "merge",
        p["a"],
        p["c"],
        "-o",
        tmp_path / "ta.pt",
        "--method",
        "task-arithmetic",
        "--start",
        p["pre"],
        "--tune-samples",
        "20",
        "--lambda-grid",
        "0,0.5,1",
        *runs["data_args"],
    )
    assert code == 0, err
    info = load_model_checkpoint(tmp_path / "ta.pt")["merge"]
    assert [s["lambda"] for s in info["tuning"]] == [0.0, 0.5, 1.0]
    assert info["lambda"] == max(info["tuning"], key=lambda s: (s["accuracy"], -s["loss"]))["lambda"]
    assert f"{info['lambda']:g}" in out


# --- what a merge may not do silently ---------------------------------------------------------------------------


def test_default_weights_are_the_samples_each_copy_trained_on(runs, tmp_path):
    """A --sample-range 60:90 run with 6 replayed samples trained on 36 samples, not 90."""
    p = runs["paths"]
    record = merge_checkpoints([p["a"], p["range"]], tmp_path / "m.pt")

    assert record["merge"]["weights"] == [90 / 126, 36 / 126]
    assert record["samples"] == 126


@pytest.mark.parametrize("spelling", ["same path", "symlink", "hardlink", "copy"])
def test_one_checkpoint_given_twice_is_refused(runs, tmp_path, spelling):
    a = runs["paths"]["a"]
    twin = {
        "same path": lambda t: a,
        "symlink": lambda t: t.symlink_to(a) or t,
        "hardlink": lambda t: t.hardlink_to(a) or t,
    }
    twin["copy"] = lambda t: t.write_bytes(a.read_bytes()) and t
    other = twin[spelling](tmp_path / "twin.pt")

    with pytest.raises(MergeError, match="same checkpoint"):
        merge_checkpoints([a, other], tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def qk_with(checkpoint, tmp_path, name, key, value) -> os.PathLike:
    """A copy of the QK checkpoint with one value of its QK replaced."""
    ckpt = load_model_checkpoint(checkpoint)
    ckpt["state_dict"][key].view(-1)[0] = value
    save_checkpoint(tmp_path / name, ckpt)
    return tmp_path / name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_copy_with_non_finite_weights_is_refused(runs, tmp_path, value):
    bad = qk_with(runs["paths"]["b"], tmp_path, "bad.pt", "0.weight", value)

    with pytest.raises(MergeError, match="non-finite values in 0.weight"):
        merge_checkpoints([runs["paths"]["a"], bad], tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_a_negative_batchnorm_variance_is_refused():
    pair = decouple(tiny_bn_net())
    a = copy_with(pair, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [1.0, 1.0])
    b = copy_with(pair, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [1.0, -0.5])

    with pytest.raises(MergeError, match="negative BatchNorm variance"):
        merge([a, b])
    with pytest.raises(MergeError, match="negative BatchNorm variance"):
        task_arithmetic(a, [a, b], 0.5)


@pytest.mark.parametrize("lam", [float("nan"), float("inf"), [0.5, float("nan")]])
def test_a_non_finite_lambda_is_refused(lam):
    pair = decouple(tiny_bn_net())
    a = copy_with(pair, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [1.0, 1.0])

    with pytest.raises(MergeError, match="finite"):
        task_arithmetic(a, [a, a], lam)
    with pytest.raises(MergeError, match="not finite"):  # finite, but the result overflows
        task_arithmetic(a, [copy_with(pair, [[3e38, 0.0], [0.0, 1.0]], [0.0, 0.0], [1.0, 1.0])] * 2, 1e30)


@pytest.mark.parametrize("copies", [("a", "c"), ("chunk0", "chunk1")])
def test_lambda_is_tuned_on_samples_no_copy_trained_on(runs, copies):
    """Also in the class-incremental order, whose permutation is not the random one."""
    p, labels = runs["paths"], runs["data"].train.labels
    seen = set()
    for name in copies:
        cfg = RetrainConfig(**load_model_checkpoint(p[name])["config"])
        seen |= set(training_indices(labels, cfg).tolist())

    held_out = held_out_indices([p[c] for c in copies], labels, 20)

    assert len(set(held_out.tolist())) == 20 and not seen & set(held_out.tolist())


def test_an_existing_output_is_not_replaced_without_force(runs, tmp_path, capsys):
    p = runs["paths"]
    (tmp_path / "run").mkdir()
    other_run = tmp_path / "run" / "model.pt"
    other_run.write_bytes(b"another run's model")

    code, _, err = main_in_process(capsys, "merge", p["a"], p["b"], "-o", other_run)
    assert_one_line_error(code, err, "already exists", "--force")
    assert other_run.read_bytes() == b"another run's model"

    code, _, err = main_in_process(capsys, "merge", p["a"], p["b"], "-o", other_run, "--force")
    assert code == 0, err
    assert load_model_checkpoint(other_run)["samples"] == 120


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--method", "task-arithmetic", "--start", "{pre}", "--lambda", "nan"], "lambda must be finite"),
        (["--weights", "nan,1"], "finite"),
        (["--weights", "inf,1"], "finite"),
    ],
)
def test_cli_non_finite_numbers_are_one_line_refusals(runs, tmp_path, capsys, options, fragment):
    p = runs["paths"]
    options = [o.format(pre=p["pre"]) for o in options]

    code, _, err = main_in_process(capsys, "merge", p["a"], p["b"], "-o", tmp_path / "m.pt", *options)

    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "m.pt").exists()
