"""The ridge statistics and solves on synthetic features, float64: the exactness claims of `skqk.analytic` as
tests — chunks == joint, clients of a Dirichlet(0.01) split == central, forget == never added — and against a
direct computation from the samples (the centred ridge with its bias, GCV from the hat matrix)."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from skqk.analytic import Source, Statistics, StatisticsError, solve_ridge
from skqk.analytic.solve import (
    check_dense_hessian,
    conjugate_gradients,
    cross_entropy_curvature,
    cross_entropy_sums,
    input_basis,
    newton,
)
from skqk.analytic.stats import total
from skqk.federated.partition import dirichlet

CLASSES, FEATURES = 10, 6
SOURCE = Source(sk="sk", block="head", loss="mse", qk="qk", data="data", subset="order")


def head_data(n: int, seed: int = 0, features: int = FEATURES):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    z = torch.randn(n, features, generator=g, dtype=torch.float64) + labels[:, None].double() * 0.5 + 3.0
    return z, labels


def head_stats(z, labels, positions, source=SOURCE) -> Statistics:
    empty = Statistics.empty(source, torch.tensor([True] * z.shape[1] + [False]), CLASSES, CLASSES, rows=1)
    design = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
    return empty.update(design, F.one_hot(labels, CLASSES).double(), labels, positions)


def assert_relative(a: torch.Tensor, b: torch.Tensor, tolerance: float = 1e-6) -> None:
    error = ((a - b).norm() / b.norm()).item()
    assert error < tolerance, error


def test_solve_is_the_centred_ridge_with_an_unpenalised_bias_and_its_gcv():
    z, labels = head_data(50)
    lam = 3.0
    solution = solve_ridge(head_stats(z, labels, torch.arange(50)), lam)
    y = F.one_hot(labels, CLASSES).double()
    zc, yc = z - z.mean(0), y - y.mean(0)
    w = torch.linalg.solve(zc.T @ zc + lam * torch.eye(FEATURES, dtype=torch.float64), zc.T @ yc)
    b = y.mean(0) - z.mean(0) @ w
    assert_relative(solution.theta, torch.cat([w, b[None]]), 1e-10)
    hat = torch.full((50, 50), 1 / 50, dtype=torch.float64) + zc @ torch.linalg.solve(
        zc.T @ zc + lam * torch.eye(FEATURES, dtype=torch.float64), zc.T
    )
    residual = y - hat @ y
    direct = residual.square().sum() / (50 * CLASSES) / (1 - hat.trace() / 50) ** 2
    assert math.isclose(solution.gcv, direct.item(), rel_tol=1e-9)
    assert math.isclose(solution.df, hat.trace().item(), rel_tol=1e-9)


def test_gcv_picks_the_least_score_of_its_search():
    z, labels = head_data(80)
    stats = head_stats(z, labels, torch.arange(80))
    chosen = solve_ridge(stats)
    assert chosen.chosen_by == "gcv" and chosen.lam > 0
    for factor in (0.5, 2.0, 10.0):
        assert chosen.gcv <= solve_ridge(stats, chosen.lam * factor).gcv + 1e-12


def test_chunks_added_one_by_one_solve_as_all_samples_at_once():
    z, labels = head_data(120)
    joint = solve_ridge(head_stats(z, labels, torch.arange(120)))
    running = None
    for chunk in torch.arange(120).tensor_split(5):
        part = head_stats(z[chunk], labels[chunk], chunk)
        running = part if running is None else running + part
    assert running.ranges == ((0, 120),)
    incremental = solve_ridge(running)
    assert_relative(incremental.theta, joint.theta)
    assert math.isclose(incremental.lam, joint.lam, rel_tol=1e-6)


def test_clients_of_a_dirichlet_split_sum_to_the_central_statistics():
    z, labels = head_data(400)
    shards = dirichlet(torch.arange(400), labels, clients=4, alpha=0.01, seed=0, min_samples=1)
    assert min(len(torch.unique(labels[s])) for s in shards) < CLASSES  # strongly non-IID: classes are missing
    clients = [head_stats(z[s], labels[s], s) for s in shards]
    central = solve_ridge(head_stats(z, labels, torch.arange(400)))
    assert_relative(solve_ridge(total(clients)).theta, central.theta)
    assert_relative(solve_ridge(total(clients[::-1])).theta, central.theta)


def test_forgetting_a_range_equals_never_having_added_it():
    z, labels = head_data(100)
    everything = head_stats(z, labels, torch.arange(100))
    forgotten = everything - head_stats(z[30:60], labels[30:60], torch.arange(30, 60))
    keep = torch.cat([torch.arange(30), torch.arange(60, 100)])
    assert forgotten.ranges == ((0, 30), (60, 100)) and forgotten.samples == 70
    assert_relative(solve_ridge(forgotten).theta, solve_ridge(head_stats(z[keep], labels[keep], keep)).theta)
    with pytest.raises(StatisticsError, match="cannot forget samples 30:60"):
        forgotten - head_stats(z[30:60], labels[30:60], torch.arange(30, 60))


@pytest.mark.parametrize(
    "field, words", [("sk", "SK"), ("block", "block"), ("qk", "fixed QK"), ("data", "dataset"), ("loss", "loss")]
)
def test_statistics_of_another_source_are_refused(field, words):
    z, labels = head_data(20)
    mine = head_stats(z[:10], labels[:10], torch.arange(10))
    theirs = head_stats(z[10:], labels[10:], torch.arange(10, 20), replace(SOURCE, **{field: "other"}))
    with pytest.raises(StatisticsError, match=f"another {words}"):
        mine + theirs


def test_a_chunk_in_another_subset_order_is_refused():
    z, labels = head_data(20)
    mine = head_stats(z[:10], labels[:10], torch.arange(10))
    with pytest.raises(StatisticsError, match="another subset order"):
        mine + head_stats(z[10:], labels[10:], torch.arange(10, 20), replace(SOURCE, subset="shuffled"))


def test_overlapping_ranges_and_duplicate_samples_are_refused():
    z, labels = head_data(20)
    first = head_stats(z[:12], labels[:12], torch.arange(12))
    with pytest.raises(StatisticsError, match="both hold samples 8:12"):
        first + head_stats(z[8:], labels[8:], torch.arange(8, 20))
    with pytest.raises(StatisticsError, match="duplicate samples"):
        head_stats(z[:3], labels[:3], torch.tensor([4, 5, 4]))


def test_the_same_sample_at_two_positions_counts_as_a_weight_of_two():
    z, labels = head_data(30)
    doubled = head_stats(z, labels, torch.arange(30)) + head_stats(z[:10], labels[:10], torch.arange(30, 40))
    lam = 2.0
    w = torch.ones(30, dtype=torch.float64)
    w[:10] = 2
    y = F.one_hot(labels, CLASSES).double()
    z_mean, y_mean = (w @ z) / w.sum(), (w @ y) / w.sum()
    zc, yc = z - z_mean, y - y_mean
    weights = torch.linalg.solve(
        zc.T @ (w[:, None] * zc) + lam * torch.eye(FEATURES).double(), zc.T @ (w[:, None] * yc)
    )
    bias = y_mean - z_mean @ weights
    assert doubled.samples == 40
    assert_relative(solve_ridge(doubled, lam).theta, torch.cat([weights, bias[None]]), 1e-10)


def test_fewer_samples_than_features_solves_with_a_positive_lambda():
    z, labels = head_data(8, features=40)
    solution = solve_ridge(head_stats(z, labels, torch.arange(8)))
    assert solution.lam > 0 and torch.isfinite(solution.theta).all()
    assert solution.df < 8
    with pytest.raises(StatisticsError, match="at least 2 samples"):
        solve_ridge(head_stats(z[:1], labels[:1], torch.arange(1)))


def test_a_class_absent_from_a_chunk_adds_up_and_an_absent_class_gets_zero_weights():
    z, labels = head_data(60)
    without = labels != 2
    chunk_a = torch.arange(60)[without]
    chunk_b = torch.arange(60)[~without]
    a = head_stats(z[chunk_a], labels[chunk_a], chunk_a)
    assert a.class_counts[2] == 0
    assert_relative(
        solve_ridge(a + head_stats(z[chunk_b], labels[chunk_b], chunk_b)).theta,
        solve_ridge(head_stats(z, labels, torch.arange(60))).theta,
    )
    assert torch.equal(solve_ridge(a).theta[:, 2], torch.zeros(FEATURES + 1, dtype=torch.float64))


def test_non_finite_features_are_refused_naming_the_samples():
    z, labels = head_data(10)
    z[3, 1] = float("inf")
    with pytest.raises(StatisticsError, match="non-finite block inputs for samples at positions 0:10"):
        head_stats(z, labels, torch.arange(10))


def test_saved_statistics_load_as_the_same_and_a_corrupt_file_is_refused(tmp_path):
    z, labels = head_data(40)
    stats = head_stats(z, labels, torch.arange(40))
    stats.save(tmp_path / "stats.pt", {"note": 1})
    loaded, extra = Statistics.load(tmp_path / "stats.pt")
    assert extra == {"note": 1} and loaded.source == stats.source and loaded.ranges == stats.ranges
    assert torch.equal(loaded.gram, stats.gram) and torch.equal(loaded.moment, stats.moment)
    (tmp_path / "bad.pt").write_bytes(b"not a file torch wrote")
    with pytest.raises(StatisticsError, match="unreadable"):
        Statistics.load(tmp_path / "bad.pt")
    state = stats.state()
    state["gram"] = state["gram"][:3]
    with pytest.raises(StatisticsError, match="gram is not"):
        Statistics.from_state(state)


def test_newton_reaches_the_penalised_cross_entropy_minimum_and_shards_sum_to_it():
    z, labels = head_data(200)
    design = torch.cat([z, torch.ones(200, 1, dtype=torch.float64)], 1)
    penalised = torch.tensor([True] * FEATURES + [False])
    start = torch.zeros(FEATURES + 1, CLASSES, dtype=torch.float64)
    lam = 0.5
    central = newton(lambda t: cross_entropy_sums(design, labels, t), start, penalised, lam)
    shards = torch.arange(200).tensor_split(3)

    def sharded(theta):
        return total_sums([cross_entropy_sums(design[s], labels[s], theta) for s in shards])

    federated = newton(sharded, start, penalised, lam)
    assert central.decrement <= 1e-10 * central.objective and central.iterations < 30
    assert_relative(federated.theta, central.theta, 1e-8)
    theta = central.theta.clone().requires_grad_(True)
    objective = F.cross_entropy(design @ theta, labels, reduction="sum") + lam * theta[:FEATURES].square().sum()
    (gradient,) = torch.autograd.grad(objective, theta)
    assert gradient.abs().max() < 1e-6
    assert abs(central.theta[FEATURES].sum().item()) < 1e-8  # the softmax's free shift of the biases: sum 0


def test_newton_on_hessian_products_reaches_the_dense_newton_minimum():
    """The conjugate-gradient Newton of heads too large for a dense Hessian: its products are the dense Hessian's,
    and from the same start it reaches the same minimiser, batches summed as torchrun's ranks would be."""
    z, labels = head_data(300, features=12)
    design = torch.cat([z, torch.ones(300, 1, dtype=torch.float64)], 1)
    penalised = torch.tensor([True] * 12 + [False])
    start = torch.zeros(13, CLASSES, dtype=torch.float64)
    theta = torch.randn(13, CLASSES, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.1
    batches = [(design[s], labels[s]) for s in torch.arange(300).tensor_split(4)]
    dense = cross_entropy_sums(design, labels, theta)
    basis = input_basis(batches, lambda flat: flat)
    curvature = cross_entropy_curvature(batches, theta, lambda flat: flat, basis)
    v = torch.randn(13 * CLASSES, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert_relative(curvature.product(v), dense.hessian @ v, 1e-12)
    probabilities = (design @ theta).softmax(1)
    mean = (torch.diag_embed(probabilities) - probabilities[:, :, None] * probabilities[:, None, :]).mean(0)
    assert_relative(curvature.class_curvature, mean, 1e-12)
    assert_relative(curvature.gradient, dense.gradient, 1e-12)
    assert abs(curvature.loss.item() - dense.loss.item()) < 1e-10 * dense.loss.item()
    lam = 0.5
    expected = newton(lambda t: cross_entropy_sums(design, labels, t), start, penalised, lam)
    result = newton(lambda t: cross_entropy_curvature(batches, t, lambda flat: flat, basis), start, penalised, lam)
    assert_relative(result.theta, expected.theta, 1e-8)
    assert result.hessian_products > 0 and expected.hessian_products == 0
    assert result.record()["hessian"] == "products (conjugate gradients)"
    with pytest.raises(StatisticsError, match="needs a 40970² Hessian"):
        check_dense_hessian(4097 * CLASSES)  # where the Hessian itself must travel (federated replies)


def total_sums(parts):
    result = parts[0]
    for part in parts[1:]:
        result = result + part
    return result


def test_conjugate_gradients_solve_a_definite_system_and_take_no_product_at_a_zero_gradient():
    a = torch.randn(20, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h, rhs = a @ a.T / 20 + torch.eye(20, dtype=torch.float64), torch.randn(20, dtype=torch.float64)  # κ about 5
    x, products = conjugate_gradients(lambda v: h @ v, rhs, lambda v: v)
    assert_relative(h @ x, rhs, 1e-10)
    assert 0 < products <= 20
    x, products = conjugate_gradients(lambda v: h @ v, torch.zeros(20, dtype=torch.float64), lambda v: v)
    assert products == 0 and not x.any()
