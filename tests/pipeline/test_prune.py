"""Exact removal of dead units (skqk.pipeline.prune): same losses, gradients and final weights as unpruned training."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skqk import decouple, models
from skqk.pipeline.prune import _zero_gradient_factors, prune_dead_units

pytestmark = pytest.mark.usefixtures("float64")  # exact up to rounding: tested at float64's (conftest.py)


def _sgd(est):
    return torch.optim.SGD(est.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)


def _train(est, x, y, pattern, steps, batch=16, opt=None):
    opt = opt or _sgd(est)
    losses = []
    for s in range(steps):
        sl = slice((s * batch) % len(x), (s * batch) % len(x) + batch)
        loss = F.cross_entropy(est(x[sl], pattern[sl]), y[sl])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def _setup(seed=0):
    torch.manual_seed(seed)
    net = models.build("lenet5")
    with torch.no_grad():  # make some classifier neurons dead for every sample
        net.classifier[0].bias[:30] = -100.0
        net.classifier[2].bias[:20] = -100.0
    net.eval()
    selector, est = decouple(net, "frozen")
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    return selector, est, x, y, selector(x)


def test_pruning_removes_dead_neurons_and_trains_identically():
    selector, est, x, y, pattern = _setup()
    assert x.dtype == next(est.parameters()).dtype == torch.float64  # exact up to float64's rounding
    est_full = copy.deepcopy(est)
    opt = _sgd(est)
    pruned = prune_dead_units(est, pattern, opt)
    removed = pruned.removed_units
    assert removed["classifier.1"] >= 30 and removed["classifier.3"] >= 20
    assert est.net.get_submodule("classifier.0").out_features == 120 - removed["classifier.1"]
    torch.testing.assert_close(est(x, pattern), est_full(x, pattern))
    losses = _train(est, x, y, pattern, 12, opt=opt)
    losses_full = _train(est_full, x, y, pattern, 12)
    torch.testing.assert_close(losses, losses_full)
    pruned.restore()
    assert est.net.get_submodule("classifier.0").out_features == 120
    for (name, a), (_, b) in zip(est.named_parameters(), est_full.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)
    other = torch.randn(8, 3, 32, 32)  # new samples may activate the removed neurons: they must be right too
    torch.testing.assert_close(est(other, selector(other)), est_full(other, selector(other)))
    assert not any(n.startswith("_skqk_keep") for n, _ in est.net.named_buffers())


def test_nothing_to_prune_leaves_the_estimator_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    selector, est = decouple(net)
    x = torch.randn(5, 4)
    with torch.no_grad():
        net[0].bias.fill_(100.0)
    selector, est = decouple(net)
    assert prune_dead_units(est, selector(x)).removed_units == {}


def test_zero_gradient_factor_matches_sgd():
    w = nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(7):
        w.grad = torch.zeros_like(w)
        opt.step()
    (a, _), _ = _zero_gradient_factors(7, opt.param_groups[0])
    assert abs(w.item() - 2.0 * a) < 1e-12
