"""Graph rewriting: site naming, refusals with clear errors, and the user's model left untouched."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skqk

from nets import ResidualNet


def test_sites_are_named_like_fx_nodes_and_a_reused_relu_is_two_sites():
    sites = skqk.list_sites(ResidualNet(), pooling="frozen")
    assert sites[:2] == ["relu", "pool"]
    assert "relu_1" in sites and sites.count("relu") == 1  # nn.ReLU module `relu` called twice
    assert len(sites) == len(set(sites))
    assert skqk.list_sites(skqk.models.build("lenet5")) == ["features.1", "features.4", "classifier.1", "classifier.3"]


def test_inplace_relu_semantics_are_kept_for_later_readers():
    class ReadsAfterInplace(nn.Module):
        def forward(self, x):
            y = F.relu(x, inplace=True)
            return x + 2 * y  # x was overwritten by the in-place ReLU: result is 3 * relu(x)

    model = ReadsAfterInplace()
    x = torch.randn(4, 5)
    selector, estimator = skqk.decouple(model)
    torch.testing.assert_close(estimator(x, selector(x)), 3 * torch.relu(x))


@pytest.mark.parametrize("act", [nn.GELU(), nn.Sigmoid(), nn.Tanh(), nn.SiLU(), nn.Softmax(dim=1)])
def test_other_nonlinearities_are_refused_naming_the_node(act):
    model = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 2))
    with pytest.raises(skqk.DecouplingError, match=rf"node '1' \({type(act).__name__}\) is not known to be affine"):
        skqk.decouple(model)


def test_functional_nonlinearity_and_gating_products_are_refused():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x) * self.b(x)

    class Tanh(nn.Module):
        def forward(self, x):
            return torch.tanh(x)

    with pytest.raises(skqk.DecouplingError, match="node 'mul'.*two input-dependent"):
        skqk.decouple(Gated())
    with pytest.raises(skqk.DecouplingError, match="node 'tanh'"):
        skqk.decouple(Tanh())
    scaled = nn.Sequential(nn.Linear(4, 4), nn.ReLU())  # multiplication by a constant stays fine
    skqk.decouple(scaled)


def test_only_max_pool2d_can_be_frozen():
    model = nn.Sequential(nn.Conv1d(2, 2, 3), nn.ReLU(), nn.MaxPool1d(2))
    skqk.decouple(model, pooling="live")
    with pytest.raises(skqk.DecouplingError, match="can be frozen"):
        skqk.decouple(model, pooling="frozen")
    with pytest.raises(ValueError, match="'live' or 'frozen'"):
        skqk.decouple(model, pooling="sometimes")


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # python control flow on a traced value
            return F.relu(self.fc(x))
        return self.fc(x)


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.head = inner, nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.relu(self.inner(x)))


def test_untraceable_model_gets_an_explaining_error():
    with pytest.raises(skqk.DecouplingError, match="cannot trace DataDependent.forward itself"):
        skqk.decouple(DataDependent())


def test_untraceable_submodule_is_named_and_a_leaf_suggested_only_without_a_gate():
    """The culprit is the innermost submodule whose forward failed; it may be a leaf only if it holds no gate."""

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    class WithGate(Branchy):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()

    outer = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Identity(), Branchy()))
    with pytest.raises(skqk.DecouplingError, match=r"submodule '1.1' \(Branchy\).*leaf_modules=\[Branchy\]"):
        skqk.decouple(outer)
    with pytest.raises(skqk.DecouplingError, match=r"'1' \(WithGate\).*contains the gate 1.act \(ReLU\)"):
        skqk.decouple(nn.Sequential(nn.Linear(4, 4), WithGate()))


def test_leaf_modules_are_kept_whole_but_must_not_hide_a_relu():
    class NoRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    selector, estimator = skqk.decouple(Wrapper(NoRelu()), leaf_modules=[NoRelu])
    assert selector.sites == ["relu"]
    hidden = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(skqk.DecouplingError, match="leaf module 'inner' contains a non-linearity"):
        skqk.decouple(Wrapper(hidden), leaf_modules=[nn.Sequential])


def test_users_model_is_never_modified_even_after_an_error():
    model = ResidualNet().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    skqk.decouple(model, pooling="frozen")
    bad = nn.Sequential(model, nn.GELU())
    with pytest.raises(skqk.DecouplingError):
        skqk.decouple(bad)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert isinstance(model.relu, nn.ReLU) and not hasattr(model, "skqk_gates")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
