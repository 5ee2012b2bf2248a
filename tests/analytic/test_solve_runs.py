"""Solve runs on a tiny trained net and its frozen-pooling pattern store: the run folder is an ordinary decoupled
checkpoint; adding chunks, forgetting a range and merging runs equal one solve of the same samples; the block's
design is the estimator's exact linear map; what cannot be solved exactly is refused."""

from dataclasses import replace

import pytest
import torch
from pipeline_helpers import (
    assert_one_line_error,
    data_args,
    main_in_process,
    make_dataset,
    tiny_models,  # noqa: F401  (fixture: the test models)
)

from skqk.analytic import (
    BlockError,
    SolveConfig,
    StatisticsError,
    find_block,
    merge_runs,
    open_problem,
    solve,
    solve_ridge,
    statistics,
    update,
)
from skqk.analytic.run import check_held
from skqk.pipeline.checkpoint import load_for_evaluation, load_model_checkpoint
from skqk.pipeline.config import TrainConfig
from skqk.pipeline.loop import evaluate
from skqk.pipeline.record import record_from_checkpoint
from skqk.pipeline.train import train
from skqk.store import StoreError

BATCH = 10  # every solve cuts the samples at the same positions, so each sample's features are bit-identical


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("analytic")
    data_dir, cache_dir, data = make_dataset(root)
    train(TrainConfig(model="tiny", samples=60, epochs=2, batch_size=20, lr=0.05), data, root / "pre", progress=False)
    pre = root / "pre" / "model.pt"
    record_from_checkpoint(pre, data, 120, root / "frozen", pooling="frozen", progress=False)
    record_from_checkpoint(pre, data, 40, root / "live", progress=False)
    record_from_checkpoint(pre, data, 40, root / "shuffled", pooling="frozen", subset_seed=1, progress=False)
    return {"data": data, "pre": pre, "store": root / "frozen", "root": root, "args": data_args(data_dir, cache_dir)}


def run(setup, out, samples=120, start=0, **cfg):
    config = SolveConfig(samples=samples, sample_start=start, batch_size=BATCH, **cfg)
    return solve(config, setup["pre"], setup["data"], setup["store"], setup["root"] / out, progress=False)


def head_weights(run_dir) -> torch.Tensor:
    state = load_model_checkpoint(run_dir / "model.pt")["state_dict"]
    return torch.cat([state["6.weight"].double().flatten(), state["6.bias"].double()])


def assert_relative(a, b, tolerance=1e-6):
    assert ((a - b).norm() / b.norm()).item() < tolerance


def test_a_solve_run_is_a_decoupled_checkpoint_that_evaluates_and_records_its_solve(setup):
    result = run(setup, "joint")
    ckpt = load_model_checkpoint(result.run_dir / "model.pt")
    assert ckpt["kind"] == "decoupled" and ckpt["pooling"] == "frozen" and ckpt["samples"] == 120
    assert ckpt["analytic"]["block"] == "6" and ckpt["analytic"]["ridge"]["chosen_by"] == "gcv"
    assert ckpt["analytic"]["ranges"] == [[0, 120]]
    module, _ = load_for_evaluation(result.run_dir / "model.pt")
    measured = evaluate(module, setup["data"])
    assert measured["val_accuracy"] > 0.9  # three colour classes: the least-squares head separates them
    assert result.metrics == measured and ckpt["analytic"]["val_accuracy"] == measured["val_accuracy"]


def test_a_solve_measures_itself_on_eval_samples_of_the_test_split_and_its_updates_keep_them(setup):
    first = run(setup, "measured_on_6", samples=50, eval_samples=6)
    second = update(first.run_dir, setup["data"], setup["store"], setup["root"] / "measured_on_6b", add=(50, 90))
    for result in (first, second):
        module, _ = load_for_evaluation(result.run_dir / "model.pt")
        assert result.metrics == evaluate(module, setup["data"], 6) != evaluate(module, setup["data"])


def test_chunks_added_to_a_run_equal_one_solve_of_all_samples(setup):
    joint = run(setup, "all")
    first = run(setup, "chunk0", samples=50)
    second = update(first.run_dir, setup["data"], setup["store"], setup["root"] / "chunk1", add=(50, 90))
    third = update(second.run_dir, setup["data"], setup["store"], setup["root"] / "chunk2", add=(90, 120))
    assert third.stats.ranges == ((0, 120),)
    assert_relative(head_weights(third.run_dir), head_weights(joint.run_dir))


def test_forgetting_a_range_equals_a_solve_without_it(setup):
    everything = run(setup, "forget_all")
    forgotten = update(everything.run_dir, setup["data"], setup["store"], setup["root"] / "forgot", forget=(30, 60))
    without = merge_runs(
        [run(setup, "head30", samples=30).run_dir, run(setup, "tail", 120, 60).run_dir], setup["root"] / "without"
    )
    assert forgotten.stats.ranges == ((0, 30), (60, 120))
    assert_relative(head_weights(forgotten.run_dir), head_weights(without.run_dir))


def test_merging_runs_of_overlapping_samples_is_refused_writing_nothing(setup):
    a, b = run(setup, "overlap_a", samples=60), run(setup, "overlap_b", samples=90, start=40)
    with pytest.raises(StatisticsError, match="both hold samples 40:60"):
        merge_runs([a.run_dir, b.run_dir], setup["root"] / "overlap")
    assert not (setup["root"] / "overlap").exists()


def test_merging_runs_of_another_block_or_loss_is_refused(setup):
    head = run(setup, "block_head", samples=60)
    other = run(setup, "block_conv", samples=120, start=60, block="0")
    with pytest.raises(StatisticsError, match="another block"):
        merge_runs([head.run_dir, other.run_dir], setup["root"] / "mixed")
    ce = run(setup, "ce", samples=120, start=60, loss="ce")
    with pytest.raises(StatisticsError, match="another loss"):
        merge_runs([head.run_dir, ce.run_dir], setup["root"] / "mixed")
    with pytest.raises(StatisticsError, match="cross-entropy solve"):
        update(ce.run_dir, setup["data"], setup["store"], setup["root"] / "ce_more", add=(0, 60))


def test_cross_entropy_refines_the_ridge_head(setup):
    ce = run(setup, "ce_all", loss="ce")
    record = ce.solution["cross_entropy"]
    assert record["newton_decrement"] <= 1e-10 * record["objective"]
    module, _ = load_for_evaluation(ce.run_dir / "model.pt")
    assert evaluate(module, setup["data"])["val_accuracy"] > 0.9


def test_a_head_above_the_dense_hessian_limit_solves_cross_entropy_by_hessian_products(setup, monkeypatch):
    """The limit lowered below the tiny head's size: its Newton steps go through conjugate gradients on Hessian
    products and reach the dense Newton's head (float32 features; the same minimiser to rounding)."""
    dense = run(setup, "ce_dense", loss="ce")
    monkeypatch.setattr("skqk.analytic.run.MAX_NEWTON_PARAMETERS", 1)
    products = run(setup, "ce_products", loss="ce")
    assert dense.solution["cross_entropy"]["hessian"] == "dense"
    assert products.solution["cross_entropy"]["hessian"] == "products (conjugate gradients)"
    a, b = head_weights(products.run_dir), head_weights(dense.run_dir)
    assert ((a - b).norm() / b.norm()).item() < 1e-5


def test_a_conv_block_design_is_the_estimators_exact_linear_map(setup):
    problem = open_problem(setup["pre"], setup["data"], setup["store"], SolveConfig(samples=20))
    estimator = problem.estimator.double()
    block = find_block(estimator, "0")
    idx = problem.order[:5]
    x = problem.dataset.normalize(problem.dataset.train.images[idx]).double()
    pattern = problem.store.read(idx)
    jacobian, out = block.design(estimator, x, pattern)
    theta = block.theta()
    moved = theta + torch.randn_like(theta)
    block.assign(moved)
    predicted = out + ((jacobian @ (moved - theta))[..., 0])
    torch.testing.assert_close(estimator(x, pattern), predicted, rtol=1e-10, atol=1e-10)


def test_a_solve_with_the_conv_block_then_the_head_keeps_the_head_statistics(setup):
    result = run(setup, "two_blocks", block="0,6")
    assert result.stats.source.block == "6" and result.solution["blocks_before"] == ["0"]
    module, _ = load_for_evaluation(result.run_dir / "model.pt")
    assert evaluate(module, setup["data"])["val_accuracy"] > 0.9


def test_live_pooling_another_order_missing_samples_and_unknown_blocks_are_refused(setup):
    data, pre = setup["data"], setup["pre"]
    with pytest.raises(ValueError, match="needs frozen max pooling"):
        open_problem(pre, data, setup["root"] / "live", SolveConfig(samples=40))
    with pytest.raises(StoreError, match="subset"):
        open_problem(pre, data, setup["root"] / "shuffled", SolveConfig(samples=40))
    problem = open_problem(pre, data, setup["root"] / "shuffled", SolveConfig(samples=40, subset_seed=1))
    with pytest.raises(ValueError, match="lacks 10 of the samples at positions 30:50"):
        check_held(problem, torch.arange(30, 50))
    with pytest.raises(BlockError, match="unknown linear or conv layer 'classifier'"):
        find_block(problem.estimator, "classifier")


def test_an_existing_run_folder_is_not_overwritten(setup):
    run(setup, "once", samples=20)
    with pytest.raises(ValueError, match="already holds a solve run"):
        run(setup, "once", samples=20)


def test_a_config_out_of_range_is_refused():
    with pytest.raises(ValueError, match="empty or negative"):
        SolveConfig(samples=10, sample_start=10)
    with pytest.raises(ValueError, match="loss must be"):
        replace(SolveConfig(), loss="hinge")
    with pytest.raises(ValueError, match="--eval-samples"):
        SolveConfig(eval_samples=-1)


def skqk(capsys, setup, *args):
    batch = ["--batch-size", BATCH] if args[0] == "solve" else []
    return main_in_process(capsys, *args, *batch, *setup["args"])


def test_the_commands_solve_add_forget_merge_and_their_runs_evaluate_and_retrain(setup, capsys):
    root, store = setup["root"], setup["store"]
    code, out, err = skqk(
        capsys, setup, "solve", "--checkpoint", setup["pre"], "--store", store, "--samples", 60, "--out", root / "cli_a"
    )
    assert code == 0, err
    assert "block 6 solved on 60 samples (0:60), λ" in out and "(gcv)" in out and "val accuracy" in out
    code, out, err = skqk(
        capsys,
        setup,
        "solve",
        "--from",
        root / "cli_a",
        "--store",
        store,
        "--sample-range",
        "60:120",
        "--out",
        root / "cli_ab",
    )
    assert code == 0 and "120 samples (0:120)" in out, err
    code, out, err = skqk(
        capsys, setup, "solve", "--from", root / "cli_ab", "--store", store, "--forget", "0:60", "--out", root / "cli_b"
    )
    assert code == 0 and "60 samples (60:120)" in out, err
    code, out, err = skqk(capsys, setup, "merge", root / "cli_a", root / "cli_b" / "model.pt", "-o", root / "cli_m")
    assert code == 0 and "120 samples (0:120)" in out, err
    assert_relative(head_weights(root / "cli_m"), head_weights(root / "cli_ab"))
    code, out, err = main_in_process(capsys, "evaluate", "--checkpoint", root / "cli_m" / "model.pt", *setup["args"])
    assert code == 0 and "(decoupled)" in out, err
    code, out, err = main_in_process(
        capsys,
        "retrain",
        "--checkpoint",
        root / "cli_m" / "model.pt",
        "--store",
        store,
        "--samples",
        120,
        "--epochs",
        1,
        "--out",
        root / "cli_sgd",
        *setup["args"],
    )
    assert code == 0, err


def test_the_commands_refuse_in_one_line_and_write_nothing(setup, capsys):
    root, store = setup["root"], setup["store"]
    for name, samples in (("cli_x", "0:60"), ("cli_y", "40:100")):
        code, _, err = skqk(
            capsys,
            setup,
            "solve",
            "--checkpoint",
            setup["pre"],
            "--store",
            store,
            "--sample-range",
            samples,
            "--out",
            root / name,
        )
        assert code == 0, err
    code, _, err = skqk(capsys, setup, "merge", root / "cli_x", root / "cli_y", "-o", root / "cli_xy")
    assert_one_line_error(code, err, "both hold samples 40:60")
    assert not (root / "cli_xy").exists()
    code, _, err = skqk(capsys, setup, "merge", root / "cli_x", setup["pre"], "-o", root / "cli_xp")
    assert_one_line_error(code, err, "not both")
    code, _, err = skqk(
        capsys,
        setup,
        "solve",
        "--from",
        root / "cli_x",
        "--store",
        store,
        "--sample-range",
        "50:70",
        "--out",
        root / "cli_z",
    )
    assert_one_line_error(code, err, "already holds samples 50:60")
    code, _, err = skqk(
        capsys, setup, "solve", "--from", root / "cli_x", "--store", store, "--forget", "50:70", "--out", root / "cli_z"
    )
    assert_one_line_error(code, err, "does not hold samples 60:70")
    code, _, err = skqk(
        capsys,
        setup,
        "solve",
        "--from",
        root / "cli_x",
        "--block",
        "0",
        "--store",
        store,
        "--forget",
        "0:10",
        "--out",
        root / "cli_z",
    )
    assert_one_line_error(code, err, "drop --block")
    code, _, err = skqk(
        capsys,
        setup,
        "solve",
        "--checkpoint",
        setup["pre"],
        "--store",
        root / "live",
        "--samples",
        40,
        "--out",
        root / "cli_z",
    )
    assert_one_line_error(code, err, "frozen max pooling")
    assert not (root / "cli_z").exists()


def test_clients_of_a_dirichlet_split_aggregate_to_the_central_solve(setup, flower):
    from skqk.analytic.stats import aggregate
    from skqk.federated.analytic import decoupled_problem, shard_positions
    from skqk.federated.config import FederatedConfig

    ckpt = load_model_checkpoint(setup["pre"])
    cfg = FederatedConfig(samples=120, clients=3, partition="dirichlet", alpha=0.01, method="analytic")

    def problem():  # float64, so each sample's features do not depend on the batch it is computed in
        p = decoupled_problem(
            ckpt["model"], ckpt["model_kwargs"], ckpt["state_dict"], ckpt["state_dict"], setup["data"], cfg
        )
        p.decoupled.double()
        return p

    central_problem = problem()
    block = find_block(central_problem.estimator)
    parts = []
    for client in range(cfg.clients):
        p = problem()
        parts.append(statistics(p, find_block(p.estimator), shard_positions(p, cfg, client), BATCH))
    assert min(int((part.class_counts > 0).sum()) for part in parts) < 3  # a client lacks a class
    expected = central_problem.source(block, "mse")
    central = statistics(central_problem, block, torch.arange(120), BATCH)
    assert_relative(solve_ridge(aggregate(parts, expected)).theta, solve_ridge(central).theta)
    with pytest.raises(StatisticsError, match="client 1 sent statistics of another fixed QK"):
        aggregate([parts[0], replace(parts[1], source=replace(parts[1].source, qk="other"))], expected)
