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


def test_inplace_gate_on_a_view_whose_base_is_read_afterwards_is_refused():
    """``h[:, :2].relu_()`` changes `h`; the estimator's gate cannot write back into `h`, so: refused."""

    class ViewRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            h[:, :2].relu_()
            return h

    class ChunkRelu(ViewRelu):
        def forward(self, x):
            a, b = self.fc(x).chunk(2, dim=1)
            a.relu_()
            return torch.cat([a, b], 1)

    with pytest.raises(skqk.DecouplingError, match=r"node 'relu_' \(Tensor.relu_\).*in place on 'getitem'.*'fc'"):
        skqk.decouple(ViewRelu())
    with pytest.raises(skqk.DecouplingError, match="shares memory with"):
        skqk.decouple(ChunkRelu())


def test_refusals_name_the_node_and_its_place_in_the_source():
    class Floors(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

        def forward(self, x):
            return torch.floor(self.fc(x))

    with pytest.raises(skqk.DecouplingError, match=r"node 'floor' \(torch.floor\) at test_sites.py:\d+ is not known"):
        skqk.decouple(Floors())
    with pytest.raises(skqk.DecouplingError, match=r"node '2' \(MultiheadAttention\)"):
        mha = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.MultiheadAttention(4, 1))
        skqk.decouple(mha)


def test_a_gate_on_moved_or_mixed_samples_is_refused_and_reshapes_are_checked_when_recording():
    class Transposed(nn.Module):
        def forward(self, x):
            return F.relu(x.transpose(0, 1))

    class Flattened(nn.Module):
        def forward(self, x):
            return F.relu(x.view(-1, 4))  # rows of 4 features: several rows per sample of 8 features

    with pytest.raises(skqk.DecouplingError, match="samples moved or mixed.*lost at node 'transpose'"):
        skqk.decouple(Transposed())
    selector, _ = skqk.decouple(Flattened())
    with pytest.raises(skqk.DecouplingError, match=r"site 'relu' has \(6, 4\) states for a batch of 3 samples"):
        selector(torch.randn(3, 8))


def test_a_relu_of_a_parameter_is_a_function_of_the_qk_not_a_site():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.scale = nn.Linear(4, 4), nn.Parameter(torch.randn(4))

        def forward(self, x):
            return F.relu(self.fc(x)) * F.relu(self.scale)

    model = Scaled()
    selector, estimator = skqk.decouple(model)
    assert selector.sites == ["relu"]
    x = torch.randn(5, 4)
    model(x).sum().backward()
    estimator(x, selector(x)).sum().backward()
    assert torch.equal(estimator(x, selector(x)), model(x))
    assert torch.equal(estimator.net.scale.grad, model.scale.grad)


def test_several_inputs_and_optional_arguments():
    """Optional arguments are fixed at their defaults; every input without a default is an estimator input."""

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

        def forward(self, x, x2, mask=None, scale=2.0):
            h = F.relu(self.a(x)) + F.relu(self.b(x2))
            return h * scale if mask is None else h * mask

    model = TwoInputs()
    x, x2 = torch.randn(5, 4), torch.randn(5, 2)
    selector, estimator = skqk.decouple(model)
    pattern = selector(x, x2)
    assert torch.equal(estimator(x, x2, pattern), model(x, x2))
    assert torch.equal(skqk.DecoupledModel(selector, estimator)(x, x2), model(x, x2))
    assert torch.equal(estimator(x[1:2], x2[1:2], pattern[1]), model(x[1:2], x2[1:2]))
    with pytest.raises(TypeError, match=r"takes the model's inputs \['x', 'x2'\] and then the pattern"):
        estimator(x, pattern)
    with pytest.raises(TypeError, match="optional arguments of forward are fixed at their defaults"):
        selector(x, x2, torch.ones(5, 3))
