"""The core invariants of decoupling (issue: core), on every model family we support."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skqk

from nets import MobileNetV2Like, TinyMLP, all_models, randomize_batchnorm

CASES = all_models()
IDS = [name for name, _, _ in CASES]
TOL = 1e-5  # relative to the output (or gradient) scale


def assert_close_scaled(actual, expected, tol=TOL):
    scale = expected.abs().max().clamp_min(1e-12).item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=tol * scale)


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    name, model, x = request.param
    return name, model.eval(), x


@pytest.mark.parametrize("pooling", ["live", "frozen"])
def test_faithfulness(case, pooling):
    """Invariant 1: the estimator fed the selector's own pattern reproduces the network."""
    _, model, x = case
    selector, estimator = skqk.decouple(model, pooling=pooling)
    estimator.eval()
    with torch.no_grad():
        assert_close_scaled(estimator(x, selector(x)), model(x))
        assert_close_scaled(skqk.DecoupledModel(selector, estimator)(x), model(x))


@pytest.mark.parametrize("pooling", ["live", "frozen"])
def test_same_gradients(case, pooling):
    """Invariant 2: for the same batch and loss, parameter gradients equal the original network's."""
    _, model, x = case
    selector, estimator = skqk.decouple(model, pooling=pooling)
    estimator.eval()
    y = torch.arange(len(x)) % 10
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(estimator(x, selector(x)), y).backward()
    estimator_params = dict(estimator.net.named_parameters())
    for name, p in model.named_parameters():
        assert_close_scaled(estimator_params[name].grad, p.grad)
    model.zero_grad()


@pytest.mark.parametrize("pooling", ["live", "frozen"])
def test_patterns_are_per_sample(case, pooling):
    """Invariant 7: sample i's slice of a batch's pattern drives the estimator on sample i alone to the
    network's output on sample i alone (every gate's batch axis is the input's).

    In float64: in float32 a batch and a single sample may take other convolution algorithms, so a pre-activation
    within rounding of 0 can switch between them on some CPUs and thread counts."""
    _, model, x = case
    model, x = copy.deepcopy(model).double(), x.double()
    selector, estimator = skqk.decouple(model, pooling=pooling)
    estimator.eval()
    with torch.no_grad():
        pattern = selector(x)
        for i in range(len(x)):
            assert_close_scaled(estimator(x[i : i + 1], pattern[i]), model(x[i : i + 1]))
            assert selector(x[i : i + 1]) == pattern[i]


def test_selector_is_frozen_under_estimator_training(case):
    """Invariant 3: optimiser steps on the estimator never change the selector's weights or patterns."""
    _, model, x = case
    selector, estimator = skqk.decouple(model)
    before_state = {k: v.clone() for k, v in selector.state_dict().items()}
    before_pattern, before_fp = selector(x), selector.fingerprint
    estimator.train()
    selector.train()  # asking does not leave eval mode
    opt = torch.optim.SGD(estimator.parameters(), lr=0.1, momentum=0.9)
    pattern = selector(x)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(estimator(x, pattern), torch.arange(len(x)) % 10).backward()
        opt.step()
    assert not selector.training
    assert not any(p.requires_grad for p in selector.parameters())
    for k, v in selector.state_dict().items():
        assert torch.equal(v, before_state[k]), k
    assert selector(x) == before_pattern
    assert type(selector).fingerprint.func(selector) == before_fp
    changed = any(not torch.equal(p, q) for p, q in zip(estimator.net.parameters(), model.parameters()))
    assert changed, "the estimator did train"


def test_linear_map_reproduces_output(case):
    """Invariant 4a: output == A @ x + c for the sample's own pattern (frozen pooling, eval mode)."""
    _, model, x = case
    decoupled = skqk.DecoupledModel(*skqk.decouple(model, pooling="frozen")).eval()
    A, c = skqk.linear_map(decoupled, x[0])
    with torch.no_grad():
        assert_close_scaled(A @ x[0].flatten() + c, model(x[:1])[0], tol=1e-4)


def test_linear_map_equals_sum_over_active_paths():
    """Invariant 4b: on a tiny MLP, (A, c) equal the paper's explicit sum over active full and bias paths."""
    mlp = TinyMLP().double().eval()
    x = torch.randn(3, dtype=torch.float64)
    A, c = skqk.linear_map(skqk.DecoupledModel(*skqk.decouple(mlp)).eval(), x)
    (W0, b0), (W1, b1), (W2, b2) = [(m.weight.detach(), m.bias.detach()) for m in mlp.layers]
    h1 = [W0[a] @ x + b0[a] for a in range(4)]
    active1 = [v > 0 for v in h1]
    h2 = [sum(W1[b, a] * h1[a] * active1[a] for a in range(4)) + b1[b] for b in range(3)]
    active2 = [v > 0 for v in h2]
    A_paths = torch.zeros(2, 3, dtype=torch.float64)
    c_paths = b2.clone()
    for k in range(2):
        for b in range(3):
            if not active2[b]:
                continue
            c_paths[k] += W2[k, b] * b1[b]  # bias path from layer-2 neuron b
            for a in range(4):
                if not active1[a]:
                    continue
                c_paths[k] += W2[k, b] * W1[b, a] * b0[a]  # bias path from layer-1 neuron a
                for i in range(3):
                    A_paths[k, i] += W2[k, b] * W1[b, a] * W0[a, i]  # full path i -> a -> b -> k
    torch.testing.assert_close(A, A_paths, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, c_paths, rtol=1e-12, atol=1e-12)


def test_linear_map_refuses_training_mode_and_live_pooling():
    model = skqk.models.build("lenet5")
    with pytest.raises(ValueError, match="eval mode"):
        skqk.linear_map(skqk.DecoupledModel(*skqk.decouple(model)).train(), torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="pooling='frozen'"):
        skqk.linear_map(skqk.DecoupledModel(*skqk.decouple(model)).eval(), torch.randn(3, 32, 32))


def test_estimator_is_affine_for_a_fixed_pattern(case):
    """Invariant 6: no non-linearity is left live, however the ReLU was written in the source model."""
    _, model, x = case
    selector, estimator = skqk.decouple(model, pooling="frozen")
    estimator.eval()
    live = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.Threshold, nn.MaxPool2d)
    assert not any(isinstance(m, live) for m in estimator.modules())
    pattern = selector(x[:1])
    x1, x2, x3 = (3 * torch.randn_like(x[:1]) for _ in range(3))
    alpha, beta, gamma = 0.7, -1.3, 1.6  # sum to 1: an affine combination
    with torch.no_grad():
        combined = estimator(alpha * x1 + beta * x2 + gamma * x3, pattern)
        separate = sum(w * estimator(xi, pattern) for w, xi in zip((alpha, beta, gamma), (x1, x2, x3)))
    assert_close_scaled(combined, separate, tol=1e-4)


def test_estimator_mirrors_the_source_training_mode():
    """The estimator's `training` flag is the source's (BatchNorm then uses batch statistics, as in Phase 4); the
    selector is always in eval mode, so the pair reproduces the network in eval mode."""
    model = randomize_batchnorm(MobileNetV2Like()).train()
    selector, estimator = skqk.decouple(model)
    assert estimator.training and all(m.training for m in estimator.net.modules()) and not selector.training
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert_close_scaled(estimator.eval()(x, selector(x)), model.eval()(x))
    selector, estimator = skqk.decouple(model)
    assert not estimator.training and not any(m.training for m in estimator.modules())


def test_decoupled_model_predicts_like_the_network(case):
    _, model, x = case
    decoupled = skqk.DecoupledModel(*skqk.decouple(model)).eval()
    assert torch.equal(decoupled.predict(x), model(x).argmax(1))
