"""SK staleness and SK refresh: 0 right after decoupling and after a refresh, counted unit by unit, and a refreshed
selector decouples the estimator's own network exactly (on every model family)."""

import copy

import pytest
import torch
import torch.nn.functional as F

import skqk
from skqk.refresh import network_with_qk, refresh_selector, sk_staleness

from nets import TinyMLP, all_models

CASES = all_models()
IDS = [name for name, _, _ in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    name, model, x = request.param
    return name, model.eval(), x


def qk_steps(selector, estimator, x, steps=2, lr=0.1):
    """QK-only re-training on random labels: the estimator moves, the selector's SK stays."""
    opt = torch.optim.SGD(estimator.parameters(), lr=lr)
    y = torch.arange(len(x)) % 10
    estimator.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(estimator(x, selector(x)), y).backward()
        opt.step()
    estimator.eval()


@pytest.mark.parametrize("pooling", ["live", "frozen"])
def test_staleness_is_zero_right_after_decoupling(case, pooling):
    _, model, x = case
    selector, estimator = skqk.decouple(model, pooling=pooling)

    staleness = sk_staleness(selector, estimator, model, x)

    assert staleness.overall == 0.0
    assert set(staleness.per_site) == set(selector.sites) and all(v == 0.0 for v in staleness.per_site.values())


@pytest.mark.parametrize("pooling", ["live", "frozen"])
def test_refresh_reproduces_the_estimators_own_network_and_clears_staleness(case, pooling):
    _, model, x = case
    original = copy.deepcopy(model.state_dict())
    selector, estimator = skqk.decouple(model, pooling=pooling)
    qk_steps(selector, estimator, x)
    assert sk_staleness(selector, estimator, model, x).overall > 0  # the QK moved away from the frozen SK

    refreshed = refresh_selector(model, estimator, selector.pooling)

    with torch.no_grad():
        expected = network_with_qk(model, estimator)(x)  # ReLUs back in, the estimator's weights
        actual = estimator(x, refreshed(x))
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * scale)
    assert not torch.allclose(estimator(x, selector(x)), expected, atol=1e-5 * scale)  # the stale SK did not
    assert sk_staleness(refreshed, estimator, model, x).overall == 0.0
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # the template is untouched
    assert refreshed.pooling == pooling and refreshed.fingerprint != selector.fingerprint


def test_staleness_counts_the_units_whose_sign_the_current_qk_flips():
    """Switching one first-layer unit off for good: on site 0 exactly the samples where it was active count, as
    1 unit of that site's 4; the weighting of `overall` is by site size."""
    model = TinyMLP((3, 4, 3, 2)).eval()
    x = torch.randn(200, 3)
    selector, estimator = skqk.decouple(model)
    frozen = selector(x)
    first, second = selector.sites
    with torch.no_grad():
        dict(estimator.net.named_parameters())["layers.0.bias"][0] = -1e3  # unit 0 never fires again

    staleness = sk_staleness(selector, estimator, model, x)

    was_active = frozen[first][:, 0].float().mean().item()
    assert 0 < was_active < 1
    assert staleness.per_site[first] == pytest.approx(was_active / 4)
    current = refresh_selector(model, estimator)(x)
    second_flips = (current[second] != frozen[second]).float().mean().item()
    assert staleness.per_site[second] == pytest.approx(second_flips)
    assert staleness.overall == pytest.approx((was_active / 4 * 4 + second_flips * 3) / 7)
