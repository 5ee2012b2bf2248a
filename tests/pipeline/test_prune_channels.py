"""Exact removal of dead convolution channels and restore around every epoch (skqk.pipeline.prune).

Pruned and unpruned QK training must give the same losses step by step, the same final weights and momentum
buffers after `restore`, and the same training afterwards on samples that activate the removed units.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skqk import models
from skqk.estimator import build_estimator
from skqk.pipeline.prune import FullWidthDropout, active_units, prune_dead_units, removal_report
from skqk.selector import build_selector

pytestmark = pytest.mark.usefixtures("float64")  # exact up to rounding: tested at float64's (conftest.py)
DEAD_CONV = {"features.0": [0, 3], "features.3": [1, 5, 9, 12]}  # output channels dead on the stored samples


def _sgd(module):
    return torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)


def _lenet(pooling, seed=0):
    """LeNet-5 whose chosen conv channels are inactive for small inputs but active for large ones."""
    torch.manual_seed(seed)
    net = models.build("lenet5")
    with torch.no_grad():
        for layer, channels in DEAD_CONV.items():
            net.get_submodule(layer).bias[channels] = -2.0
        net.classifier[0].bias[:30] = -100.0
    net.eval()
    return build_selector(copy.deepcopy(net), pooling), build_estimator(net, pooling)


def _steps(est, opt, x, y, pattern, steps, batch=16):
    losses = []
    for s in range(steps):
        sl = slice((s * batch) % len(x), (s * batch) % len(x) + batch)
        loss = F.cross_entropy(est(x[sl], pattern[sl]), y[sl])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def _assert_same_training_state(est, opt, est_full, opt_full):
    for (name, a), (_, b) in zip(est.named_parameters(), est_full.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    bufs = [opt.state[p]["momentum_buffer"] for p in est.parameters()]
    bufs_full = [opt_full.state[p]["momentum_buffer"] for p in est_full.parameters()]
    for a, b in zip(bufs, bufs_full, strict=True):
        torch.testing.assert_close(a, b)
    assert list(opt.state_dict()["state"]) == list(opt_full.state_dict()["state"])


@pytest.mark.parametrize("pooling", ["live", "frozen"])
def test_dead_channels_removed_and_restored_exactly_around_every_epoch(pooling):
    selector, est = _lenet(pooling)
    assert est.net.get_submodule("features.0").weight.dtype == torch.float64  # exact up to float64's rounding
    est_full = copy.deepcopy(est)
    x, y = 0.05 * torch.randn(48, 3, 32, 32), torch.randint(0, 10, (48,))
    pattern = selector(x)
    opt, opt_full = _sgd(est), _sgd(est_full)
    for epoch in range(3):  # prune, train an epoch, restore: momentum carries over between epochs
        active = active_units(pattern[i : i + 16] for i in range(0, 48, 16))
        report = removal_report(est, active)
        pruned = prune_dead_units(est, active, opt)
        removed = pruned.removed_units
        assert {site: r["removed"] for site, r in report.items() if r["removed"]} == removed
        assert set(DEAD_CONV["features.0"]) <= set(pruned.removed[0].dead.tolist())
        assert removed["features.1"] >= 2 and removed["features.4"] >= 4 and removed["classifier.1"] >= 30
        assert est.net.get_submodule("features.3").in_channels == 6 - removed["features.1"]
        assert est.net.get_submodule("classifier.0").in_features == 25 * (16 - removed["features.4"])
        losses = _steps(est, opt, x, y, pattern, 3)
        losses_full = _steps(est_full, opt_full, x, y, pattern, 3)
        torch.testing.assert_close(losses, losses_full, msg=f"epoch {epoch}")
        pruned.restore()
        assert est.net.get_submodule("features.0").out_channels == 6
        _assert_same_training_state(est, opt, est_full, opt_full)
    assert not any(n.startswith("_skqk_keep") for n, _ in est.net.named_buffers())
    assert "select_units" not in est.net.code

    other = 10 * torch.randn(32, 3, 32, 32)  # large inputs activate the removed channels (Glorot-init LeNet-5)
    other_pattern = selector(other)
    assert other_pattern["features.1"][:, DEAD_CONV["features.0"]].any()
    expected = est_full(other, other_pattern)  # tolerance: 1e-5 x the output scale, as the core invariants
    torch.testing.assert_close(est(other, other_pattern), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    y_other = torch.randint(0, 10, (32,))
    torch.testing.assert_close(
        _steps(est, opt, other, y_other, other_pattern, 2), _steps(est_full, opt_full, other, y_other, other_pattern, 2)
    )
    _assert_same_training_state(est, opt, est_full, opt_full)


def _mlp_with_dropout():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4)
    )
    with torch.no_grad():
        net[0].bias[:10] = -100.0
        net[3].bias[5:12] = -100.0
    net.eval()
    return build_selector(copy.deepcopy(net)), build_estimator(net)


def test_dropout_between_pruned_layers_draws_the_same_masks():
    selector, est = _mlp_with_dropout()
    est_full = copy.deepcopy(est)
    x, y = torch.randn(64, 12), torch.randint(0, 4, (64,))
    pattern = selector(x)
    opt, opt_full = _sgd(est), _sgd(est_full)
    pruned = prune_dead_units(est, pattern, opt)
    removed = pruned.removed_units
    assert set(removed) == {"1", "4"} and removed["1"] >= 10 and removed["4"] >= 7
    assert sum(type(m) is FullWidthDropout for m in est.modules()) == 2
    est.train(), est_full.train()
    torch.manual_seed(7)
    losses = _steps(est, opt, x, y, pattern, 6)
    torch.manual_seed(7)
    losses_full = _steps(est_full, opt_full, x, y, pattern, 6)
    torch.testing.assert_close(losses, losses_full)
    pruned.restore()
    assert sum(type(m) is nn.Dropout for m in est.modules()) == 2
    _assert_same_training_state(est, opt, est_full, opt_full)


def test_batch_norm_channels_are_kept():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    with torch.no_grad():
        net[1].bias[:2] = -100.0
    selector, est = build_selector(copy.deepcopy(net)), build_estimator(net)
    pattern = selector(torch.randn(8, 3, 8, 8))
    assert not active_units(pattern)["2"][:2].any()
    assert prune_dead_units(est, pattern, _sgd(est)).removed_units == {}


def test_restore_refuses_an_untracked_optimizer_and_unsupported_sgd():
    selector, est = _lenet("live")
    pattern = selector(0.05 * torch.randn(8, 3, 32, 32))
    with pytest.raises(ValueError, match="Nesterov"):
        prune_dead_units(est, pattern, torch.optim.SGD(est.parameters(), lr=0.1, momentum=0.9, nesterov=True))
    with pytest.raises(RuntimeError, match="optimizer"):
        prune_dead_units(est, pattern).restore()


def test_channels_last_layout_is_kept_through_removal_and_restore():
    selector, est = _lenet("frozen")
    selector.to(memory_format=torch.channels_last)
    est.to(memory_format=torch.channels_last)
    est_full = copy.deepcopy(est)
    x = (0.05 * torch.randn(16, 3, 32, 32)).contiguous(memory_format=torch.channels_last)
    y, pattern = torch.randint(0, 10, (16,)), selector(x)
    assert pattern["features.1"].is_contiguous(memory_format=torch.channels_last)
    opt, opt_full = _sgd(est), _sgd(est_full)
    pruned = prune_dead_units(est, pattern, opt)
    conv = est.net.get_submodule("features.3")
    assert conv.in_channels < 6 and conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_steps(est, opt, x, y, pattern, 2), _steps(est_full, opt_full, x, y, pattern, 2))
    pruned.restore()
    assert est.net.get_submodule("features.3").weight.is_contiguous(memory_format=torch.channels_last)
    _assert_same_training_state(est, opt, est_full, opt_full)
