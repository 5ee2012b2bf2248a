"""Exact or refused, by construction: a generated sweep over the torch operations one can enumerate.

Every case puts one operation between two gated layers, ``conv -> relu -> OP -> relu -> linear``. A case that
`decouple` accepts must be faithful, affine for a fixed pattern (frozen pooling, eval mode), per-sample
sliceable, and `linear_map` must reproduce it; a case it does not accept must be refused with a
`DecouplingError`. A case that is neither fails.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skqk

SCALE_TOL = 1e-4  # relative to the output scale: float32 rounding through a few layers


class Between(nn.Module):
    """conv -> relu -> op(h, *extra) -> relu -> flatten -> linear; `extra` may name a second branch."""

    def __init__(self, op, second: str | None = None, to_float: bool = False, features: int = 1):
        super().__init__()
        self.conv, self.conv2 = nn.Conv2d(2, 4, 3), nn.Conv2d(2, 4, 3)
        self.op, self.second, self.to_float = op, second, to_float
        self.head = nn.Linear(features, 3)
        self.weight = nn.Parameter(torch.rand(4, 4, 4) + 0.5)

    def forward(self, x):
        h = F.relu(self.conv(x))
        if self.second == "branch":
            y = self.op(h, self.conv2(x))
        elif self.second == "parameter":
            y = self.op(h, self.weight)
        elif self.second == "scalar":
            y = self.op(h, 0.5)
        else:
            y = self.op(h)
        if self.to_float:
            y = y.float()
        return self.head(torch.relu(y).reshape(x.shape[0], -1))


_SOLVERS = {"lobpcg"}  # an iterative eigensolver: seconds per call, and not an activation


def _candidates():
    """(name, op, second) for every callable of F, torch and Tensor called on one tensor, and binary forms."""
    seen = set()
    for name in sorted(dir(torch.Tensor)):  # methods and their in-place forms
        if not name.startswith("_") and callable(getattr(torch.Tensor, name)):
            seen.add(name)
            yield f"Tensor.{name}", (lambda h, *a, name=name: getattr(h, name)(*a)), None
    overridable = torch.overrides.get_overridable_functions()  # the functions fx can record
    for prefix, namespace in (("F", F), ("torch", torch)):  # functions, where not a method of the same name
        for name in sorted(dir(namespace)):
            fn = getattr(namespace, name)
            if name.startswith("_") or fn not in overridable.get(namespace, ()) or name in seen | _SOLVERS:
                continue
            seen.add(name)
            yield f"{prefix}.{name}", fn, None
    binary = [
        "add",
        "sub",
        "mul",
        "div",
        "maximum",
        "minimum",
        "max",
        "min",
        "where_gt",
        "matmul",
        "gt",
        "ge",
        "lt",
        "le",
        "pow",
        "remainder",
        "floor_divide",
        "fmax",
        "atan2",
        "hypot",
        "clamp_min",
        "clamp_max",
    ]
    for name in binary:
        fn = getattr(torch, name, None) or (lambda h, o: torch.where(h > o, h, o))
        for second in ("branch", "parameter", "scalar"):
            yield f"torch.{name}({second})", fn, second
    yield "operator.mul(branch)", (lambda h, o: h * o), "branch"
    yield "operator.truediv(branch)", (lambda h, o: h / o), "branch"
    yield "operator.truediv(parameter)", (lambda h, o: h / o), "parameter"


def _modules():
    """Every torch.nn module class that builds with no arguments, plus a few that need one size."""
    for name in sorted(nn.modules.__all__):
        cls = getattr(nn, name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield f"nn.{name}()", cls()
        except Exception:  # needs constructor arguments
            continue
    yield "nn.RMSNorm(4)", nn.RMSNorm(4)
    yield "nn.LayerNorm(4)", nn.LayerNorm(4)
    yield "nn.GroupNorm(2, 4)", nn.GroupNorm(2, 4)
    yield "nn.PReLU(4)", nn.PReLU(4)


def _usable_cases():
    """The candidates the source model itself runs on (a dense floating or bool result with finite outputs)."""
    torch.manual_seed(0)
    probe = Between(None)
    x = torch.randn(3, 2, 6, 6)
    h, other = torch.relu(probe.conv(x)).detach(), probe.conv2(x).detach()
    extra = {"branch": (other,), "parameter": (probe.weight.detach(),), "scalar": (0.5,), None: ()}
    cases = []
    for name, op, second in [*_candidates(), *((n, m, None) for n, m in _modules())]:
        try:  # cheap first look on the tensor itself, so that only real candidates build a model
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                y = op(h.clone(), *extra[second])
            dense = isinstance(y, torch.Tensor) and y.layout == torch.strided and not y.is_mkldnn
            if not (dense and y.dtype in (torch.float32, torch.bool) and y.numel() % 3 == 0 and y.numel()):
                continue
            if not torch.isfinite(y.float()).all():
                continue
        except Exception:  # not callable this way
            continue
        torch.manual_seed(0)
        model = Between(op, second, y.dtype == torch.bool, y.numel() // 3).eval()
        cases.append(pytest.param(model, id=name + (".float()" if y.dtype == torch.bool else "")))
    return cases


CASES = _usable_cases()


def _scaled_close(actual, expected, tol=SCALE_TOL):
    scale = max(expected.abs().max().item(), 1e-6)
    return actual.shape == expected.shape and bool(((actual - expected).abs() <= tol * scale).all())


def check_exact_or_refused(model: nn.Module, x: torch.Tensor, pooling: str = "frozen") -> str:
    """'refused', or 'accepted' after checking every property; raise AssertionError naming what failed."""
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            selector, estimator = skqk.decouple(model, pooling=pooling)
    except skqk.DecouplingError:
        return "refused"
    with torch.no_grad():
        try:
            pattern = selector(x)
        except skqk.DecouplingError:
            return "refused"  # the batch axis check at recording time
        expected = model(x)
        assert _scaled_close(estimator(x, pattern), expected), "accepted but not faithful"
        for i in range(len(x)):
            alone = estimator(x[i : i + 1], pattern[i])
            assert _scaled_close(alone, model(x[i : i + 1])), f"accepted but sample {i} is not per-sample"
        if estimator.live_pooling:
            return "accepted"
        g = torch.Generator().manual_seed(1)
        x1, x2 = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
        y1, y2 = estimator(x1, pattern), estimator(x2, pattern)
        for a in (0.3, 1.7, -2.0):
            mixed = estimator(a * x1 + (1 - a) * x2, pattern)
            assert _scaled_close(mixed, a * y1 + (1 - a) * y2), "accepted but not affine for a fixed pattern"
    decoupled = skqk.DecoupledModel(selector, estimator)
    A, c = skqk.linear_map(decoupled, x[0])
    with torch.no_grad():
        assert _scaled_close(A @ x[0].flatten() + c, expected[0]), "accepted but linear_map is wrong"
    return "accepted"


@pytest.mark.parametrize("model", CASES)
def test_every_operation_is_exact_or_refused(model):
    check_exact_or_refused(model, torch.randn(3, 2, 6, 6))


# The spellings of piecewise-linear activations and affine glue a plain network is written with: accepted.
MUST_ACCEPT = {
    "F.relu": F.relu, "F.relu(inplace)": lambda h: F.relu(h, inplace=True), "torch.relu_": torch.relu_,
    "Tensor.relu_": lambda h: h.relu_(), "clamp(min=0)": lambda h: h.clamp(min=0),
    "torch.clamp_min": lambda h: torch.clamp_min(h, 0), "Tensor.clamp_min_": lambda h: h.clamp_min_(0),
    "torch.maximum(x, 0)": lambda h: torch.maximum(h, torch.tensor(0.0)), "F.threshold": lambda h: F.threshold(h, 0, 0),
    "torch.where(x > 0, x, 0)": lambda h: torch.where(h > 0, h, 0), "x * (x > 0)": lambda h: h * (h > 0),
    "F.leaky_relu_": lambda h: F.leaky_relu_(h, 0.1), "F.hardtanh_": F.hardtanh_, "F.relu6": F.relu6,
    "clamp(0, 6)": lambda h: h.clamp(0, 6), "torch.clip": lambda h: torch.clip(h, -0.5, 0.5),
    "nn.ReLU6": nn.ReLU6(), "nn.Hardtanh": nn.Hardtanh(-0.5, 0.5), "nn.PReLU": nn.PReLU(4),
    "nn.LeakyReLU(inplace)": nn.LeakyReLU(0.2, inplace=True), "nn.Threshold": nn.Threshold(0.1, -1.0),
    "shape arithmetic": lambda h: h.reshape(h.shape[0], h.shape[1] * h.shape[2] * h.shape[3]),
    "F.avg_pool2d": lambda h: F.avg_pool2d(h, 2), "F.max_pool2d(return_indices)[0]":
        lambda h: F.max_pool2d(h, 2, return_indices=True)[0], "x[:, :2]": lambda h: h[:, :2],
    "permute there and back": lambda h: h.permute(0, 2, 3, 1).permute(0, 3, 1, 2),
    "F.dropout(training=False)": lambda h: F.dropout(h, 0.5, training=False),
    "F.max_pool2d indices read": lambda h: F.max_pool2d(h, 2, return_indices=True)[1].float(),  # the switches: SK
}  # fmt: skip
# Not affine for a fixed pattern (several were accepted before issue 15), or samples mixed before a gate.
MUST_REFUSE = {
    "torch.floor": torch.floor, "torch.tanh": torch.tanh, "F.gelu": F.gelu, "F.softmax": lambda h: h.softmax(1),
    "nn.SiLU": nn.SiLU(), "nn.Hardswish": nn.Hardswish(), "nn.RMSNorm": nn.RMSNorm(4),
    "nn.LayerNorm": nn.LayerNorm(4), "nn.GroupNorm": nn.GroupNorm(2, 4), "torch.abs": torch.abs,
    "Tensor.exp_": lambda h: h.exp_(), "sign": lambda h: torch.sign(h), "x * x": lambda h: h * h,
    "x / x": lambda h: h / (h + 1), "F.dropout": F.dropout, "x ** 2": lambda h: h**2,
    "nn.MaxPool1d (frozen)": lambda h: F.max_pool1d(h.flatten(2), 2).view(h.shape[0], -1),
    "F.adaptive_max_pool2d (frozen)": lambda h: F.adaptive_max_pool2d(h, 2),
    "amax (frozen)": lambda h: h.amax(-1), "mean over the batch": lambda h: h - h.mean(0),
    "transpose of the batch": lambda h: h.transpose(0, 1), "flip of the batch": lambda h: h.flip(0),
    "x.half()": lambda h: h.half().float(), "x.long()": lambda h: h.long().float(),
    "torch.div(rounding_mode)": lambda h: torch.div(h, 0.3, rounding_mode="floor"),
    "leaky_relu_ on a view of a read tensor": lambda h: h + F.leaky_relu_(h[:, :2], 0.1).sum(),
}  # fmt: skip


def _between(op) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        y = op(torch.relu(Between(None).conv(torch.randn(3, 2, 6, 6))))
    torch.manual_seed(0)
    return Between(op, to_float=y.dtype == torch.bool, features=y.numel() // 3)


@pytest.mark.parametrize("name", list(MUST_ACCEPT) + list(MUST_REFUSE))
def test_known_cases_go_the_right_way(name):
    """Accepted and exact for the common spellings; refused for the non-affine ones."""
    model = _between(MUST_ACCEPT.get(name) or MUST_REFUSE[name])
    outcome = check_exact_or_refused(model, torch.randn(3, 2, 6, 6))
    assert outcome == ("accepted" if name in MUST_ACCEPT else "refused")


def test_the_sweep_is_not_empty():
    assert len(CASES) > 250


# -- issue 19: the corners --------------------------------------------------------------------------------------
class Probe(nn.Module):
    """A two-branch MLP on (N, 6) inputs: ``head(relu(op(relu(a(x)), b(x))))``; `op` sees both branches."""

    def __init__(self, op):
        super().__init__()
        self.a, self.b, self.op, self.head = nn.Linear(6, 4), nn.Linear(6, 4), op, nn.Linear(4, 3)

    def forward(self, x):
        return self.head(F.relu(self.op(F.relu(self.a(x)), self.b(x))))


def _inplace_on_an_expanded_view(h, g):
    v = h.expand_as(h)
    h.relu_()
    return v + h


# Each refused, naming the node that is not affine (or whose batch axis is lost before a gate).
CORNERS_REFUSED = {
    "torch.mul(h, other=g)": (lambda h, g: torch.mul(h, other=g), "'mul'"),
    "torch.mul(input=h, other=g)": (lambda h, g: torch.mul(input=h, other=g), "'mul'"),
    "h.mul(other=g)": (lambda h, g: h.mul(other=g), "'mul'"),
    "torch.div(h, other=g)": (lambda h, g: torch.div(h, other=g), "'div'"),
    "torch.matmul(input=h, other=g.T)": (lambda h, g: torch.matmul(input=h, other=g.T)[:, :4], "'matmul'"),
    "h.flip(-2)": (lambda h, g: h.flip(-2), "'flip'"),
    "h.flatten(1).flip(-2)": (lambda h, g: h.flatten(1).flip(-2), "'flip'"),
    "torch.flip(h, dims=(-2,))": (lambda h, g: torch.flip(h, dims=(-2,)), "'flip'"),
    "h.transpose(-1, -2) twice": (lambda h, g: h.transpose(-1, -2).transpose(-1, -2), "'transpose'"),
    "h - h.sum(-2, keepdim=True)": (lambda h, g: h - h.sum(-2, keepdim=True), "'sum_1'"),
    "h.roll(1, dims=-2)": (lambda h, g: h.roll(1, dims=-2), "'roll'"),
    "h.expand_as(h); h.relu_()": (_inplace_on_an_expanded_view, "'relu_'"),
    "h.clamp(min=1, max=-1)": (lambda h, g: h.clamp(min=1, max=-1) + h, "'clamp'"),
    "torch.add(h, g, out=h)": (lambda h, g: torch.add(h, g, out=h), "'add'"),
}  # fmt: skip
CORNERS_ACCEPTED = {
    "h * torch.gt(input=h, other=0)": lambda h, g: h * torch.gt(input=h, other=0),
    "torch.relu(input=h)": lambda h, g: torch.relu(input=h) + g,
    "torch.add(input=h, other=g, alpha=2)": lambda h, g: torch.add(input=h, other=g, alpha=2),
    "h.flatten(1).flip(-1)": lambda h, g: h.flatten(1).flip(-1),
    "h.flatten(1)[..., :2] padded": lambda h, g: F.pad(h.flatten(1)[..., :2], (0, 2)),
    "torch.mul(h, other=2.0)": lambda h, g: torch.mul(h, other=2.0),
    "h.flatten(1).unsqueeze(-1).sum(-1)": lambda h, g: h.flatten(1).unsqueeze(-1).sum(-1),
}


def _refusal(model: nn.Module) -> str:
    with pytest.raises(skqk.DecouplingError) as refused:
        selector, _ = skqk.decouple(model, pooling="frozen")
        selector(torch.randn(5, 6, dtype=torch.float64))  # the batch-axis check at recording time
    return str(refused.value)


@pytest.mark.parametrize("name", CORNERS_REFUSED)
def test_corners_are_refused_naming_the_node(name):
    """Keywords, negative dimensions of the batch axis, views of a tensor a gate overwrites, constant clamps:
    each was accepted and wrong before issue 19."""
    op, culprit = CORNERS_REFUSED[name]
    torch.manual_seed(0)
    assert culprit in _refusal(Probe(op).double().eval())


def assert_exact(model: nn.Module, *inputs: torch.Tensor, pooling: str = "frozen") -> None:
    """Fed the selector's own pattern, the estimator gives the network's outputs and parameter gradients (float64),
    and for that pattern it is affine in its input."""
    model = model.double().eval()
    selector, estimator = skqk.decouple(model, pooling=pooling)
    pattern = selector(*inputs)
    y, expected = estimator(*inputs, pattern), model(*inputs)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(y.shape, dtype=torch.float64)
    names, parameters = zip(*model.named_parameters())
    ours = dict(estimator.net.named_parameters())
    grads = torch.autograd.grad((y * weights).sum(), [ours[n] for n in names], materialize_grads=True)
    expected_grads = torch.autograd.grad((expected * weights).sum(), parameters, materialize_grads=True)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-12)  # 1e-7: torch's Hardsigmoid multiplies by a float 1/6
    floating = [i for i, t in enumerate(inputs) if t.is_floating_point()]
    if floating and not estimator.live_pooling:
        k = floating[0]
        other = [*inputs[:k], torch.randn_like(inputs[k]), *inputs[k + 1 :]]
        mixed = [*inputs[:k], 0.3 * inputs[k] + 0.7 * other[k], *inputs[k + 1 :]]
        with torch.no_grad():
            affine = 0.3 * estimator(*inputs, pattern) + 0.7 * estimator(*other, pattern)
            torch.testing.assert_close(estimator(*mixed, pattern), affine, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", CORNERS_ACCEPTED)
def test_corners_that_are_affine_are_accepted_and_exact(name):
    torch.manual_seed(0)
    assert_exact(Probe(CORNERS_ACCEPTED[name]), torch.randn(5, 6, dtype=torch.float64))


class BigPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(17)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def test_every_failure_during_analysis_is_a_decoupling_error():
    """A frozen 17x17 window has more offsets than a uint8 switch holds: refused, not a ValueError."""
    with pytest.raises(skqk.DecouplingError, match="'pool'.*too large"):
        skqk.decouple(BigPool(), pooling="frozen")


class ModuleProbe(nn.Module):
    """``head(relu(module(relu(a(x)), b(x))))`` (or of one operand): a module's own flags decide."""

    def __init__(self, module: nn.Module, operands: str = "h"):
        super().__init__()
        self.a, self.b, self.module, self.operands, self.head = (
            nn.Linear(6, 4),
            nn.Linear(6, 4),
            module,
            operands,
            nn.Linear(4, 3),
        )
        self.weight = nn.Parameter(torch.randn(5, 4))

    def forward(self, x):
        h, g = F.relu(self.a(x)), self.b(x)
        args = {"h": (h,), "hg": (h, g), "hh": (h, h), "hw": (h, self.weight)}[self.operands]
        return self.head(F.relu(self.module(*args)[:, :4]))


MODULES_REFUSED = {
    "BatchNorm1d(track_running_stats=False)": (nn.BatchNorm1d(4, track_running_stats=False), "h"),
    "Bilinear(h, g)": (nn.Bilinear(4, 4, 4), "hg"),
    "Bilinear(h, h)": (nn.Bilinear(4, 4, 4), "hh"),
}
MODULES_ACCEPTED = {
    "BatchNorm1d": (nn.BatchNorm1d(4), "h"),
    "Bilinear(h, parameter)": (nn.Bilinear(4, 4, 4), "hw"),
}


@pytest.mark.parametrize("name", MODULES_REFUSED)
def test_a_module_is_affine_only_under_its_own_flags(name):
    """Batch statistics even in eval mode, and a bilinear form of two input-dependent operands, are refused."""
    module, operands = MODULES_REFUSED[name]
    torch.manual_seed(0)
    assert "'module'" in _refusal(ModuleProbe(module, operands).double().eval())


@pytest.mark.parametrize("name", MODULES_ACCEPTED)
def test_affine_modules_are_accepted_and_exact(name):
    module, operands = MODULES_ACCEPTED[name]
    torch.manual_seed(0)
    assert_exact(ModuleProbe(module, operands), torch.randn(5, 6, dtype=torch.float64))


class BasicModel4MultiArgs(nn.Module):
    """captum's ``BasicModel4_MultiArgs``: a real-valued third input divides."""

    def forward(self, input1, input2, additional_input1, additional_input2=0):
        relu_out1 = F.relu(input1 - 1)
        relu_out2 = F.relu(input2)
        relu_out2 = relu_out2.div(additional_input1)
        return F.relu(relu_out1 - relu_out2)[:, additional_input2]


def test_a_real_valued_input_is_never_taken_for_a_discrete_one():
    """Dividing by a model input is dividing by an input-dependent value: refused, naming the division."""
    with pytest.raises(skqk.DecouplingError, match="'div'.*divides by"):
        skqk.decouple(BasicModel4MultiArgs())


class Lookup(nn.Module):
    """Rows of a real input picked by an index input: affine in the first, the index is discrete."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(6, 4), nn.Linear(4, 3)

    def forward(self, x, index):
        return self.head(F.relu(torch.index_select(F.relu(self.fc(x)), 1, index)))


def test_a_discrete_input_is_discrete_by_its_dtype():
    """An input used as an index is fixed like the pattern if it is an integer tensor; a real-valued one is refused
    when the model runs (its dtype is only known then)."""
    torch.manual_seed(0)
    x, index = torch.randn(5, 6, dtype=torch.float64), torch.tensor([3, 0, 1, 1])
    assert_exact(Lookup(), x, index)
    selector, estimator = skqk.decouple(Lookup().double())
    with pytest.raises(skqk.DecouplingError, match="'index'.*float64"):
        selector(x, index.double())
    with pytest.raises(skqk.DecouplingError, match="'index'.*float64"):
        estimator(x, index.double(), selector(x, index))


# Piecewise linear, refused before issue 19: each a gate (or affine), exact with the selector's own pattern.
NEWLY_ACCEPTED = {
    "nn.Hardsigmoid": nn.Hardsigmoid(),
    "F.hardsigmoid(inplace)": lambda t: F.hardsigmoid(t, inplace=True),
    "nn.Hardshrink(0.3)": nn.Hardshrink(0.3),
    "Tensor.hardshrink": lambda t: t.hardshrink(0.2),
    "nn.Softshrink(0.2)": nn.Softshrink(0.2),
    "F.softshrink": lambda t: F.softshrink(t, lambd=0.4),
    "nn.RReLU (eval)": nn.RReLU(0.1, 0.3),
    "F.rrelu": lambda t: F.rrelu(t, 0.05, 0.2),
    "torch.addcmul(g, g, w)": lambda t: torch.addcmul(t, t, torch.linspace(0.5, 1.5, 4), value=0.5),
    "torch.addcdiv(g, g, w)": lambda t: torch.addcdiv(t, t, torch.linspace(0.5, 1.5, 4)),
}


class OnPreactivation(nn.Module):
    """``head(relu(op(b(x)) + relu(a(x))))``: `op` sees a pre-activation, so every piece is visited."""

    def __init__(self, op):
        super().__init__()
        self.a, self.b, self.op, self.head = nn.Linear(6, 4), nn.Linear(6, 4), op, nn.Linear(4, 3)

    def forward(self, x):
        return self.head(F.relu(self.op(2 * self.b(x)) + F.relu(self.a(x))))


@pytest.mark.parametrize("name", NEWLY_ACCEPTED)
def test_piecewise_linear_activations_are_accepted_and_exact(name):
    torch.manual_seed(0)
    assert_exact(OnPreactivation(NEWLY_ACCEPTED[name]), torch.randn(64, 6, dtype=torch.float64))


def test_rrelu_in_training_mode_is_refused():
    with pytest.raises(skqk.DecouplingError, match="random slopes"):
        skqk.decouple(OnPreactivation(lambda t: F.rrelu(t, training=True)))


class SqueezeExcite(nn.Module):
    """timm's SE block, ``x * hardsigmoid(fc(pool(x)))``: the product of two input-dependent terms is not affine."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.gate = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 1), nn.Hardsigmoid()

    def forward(self, x):
        h = F.relu(self.conv(x))
        return (h * self.gate(self.fc(F.adaptive_avg_pool2d(h, 1)))).flatten(1)


def test_a_refusal_names_the_node_that_is_not_affine():
    """Not the Hardsigmoid (piecewise linear) but the product after it."""
    with pytest.raises(skqk.DecouplingError, match=r"^node 'mul' .*multiplies two input-dependent tensors"):
        skqk.decouple(SqueezeExcite())


class Unpool(nn.Module):
    """conv -> relu -> max pool with indices -> max unpool -> conv -> relu, as modules or as functions."""

    def __init__(self, functional: bool):
        super().__init__()
        self.conv, self.conv2, self.functional = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3), functional
        self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)

    def forward(self, x):
        h = F.relu(self.conv(x))
        if self.functional:
            values, indices = F.max_pool2d(h, 2, return_indices=True)
            up = F.max_unpool2d(values, indices, 2)
        else:
            values, indices = self.pool(h)
            up = self.unpool(values, indices)
        return F.relu(self.conv2(up)).flatten(1)


@pytest.mark.parametrize("functional", [False, True], ids=["modules", "functions"])
def test_max_unpool_after_frozen_pooling_reads_indices_from_the_switches(functional):
    """Frozen switches fix the pooling indices, so unpooling is a fixed scatter: affine. Live, it is refused."""
    torch.manual_seed(0)
    assert_exact(Unpool(functional), torch.randn(4, 2, 8, 8, dtype=torch.float64))
    with pytest.raises(skqk.DecouplingError, match="unpool.*indexes with an input-dependent tensor"):
        skqk.decouple(Unpool(functional), pooling="live")


class TupleInput(nn.Module):
    """``forward(self, x)`` with ``x = (a, b)``."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 4), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        a, b = x
        return self.head(F.relu(F.relu(self.a(a)) + self.b(b)))


def test_a_tuple_input_is_a_tuple_of_batches():
    torch.manual_seed(0)
    x = (torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64))
    model = TupleInput().double().eval()
    selector, estimator = skqk.decouple(model)
    pattern = selector(x)
    assert pattern.batch_size == 5
    torch.testing.assert_close(estimator(x, pattern), model(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(skqk.DecouplingError, match="'x' is only unpacked"):
        selector(torch.randn(2, 5, 6, dtype=torch.float64))  # a tensor unpacked by position: two samples
