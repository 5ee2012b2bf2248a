"""Pure solves from statistics: ridge with λ by generalised cross-validation, and cross-entropy by Newton.

Ridge minimises ``Σ ‖y − r − J θ‖² + λ ‖w‖²`` over the block's parameters θ = (w, bias), the bias unpenalised.
The bias is eliminated exactly first (for the head this is centring the inputs and targets), then one
eigendecomposition of the reduced Gram gives the solution, the residual sum of squares and the effective degrees
of freedom for every λ at once, so λ is chosen by generalised cross-validation (Golub, Heath & Wahba 1979, as
scikit-learn's ``RidgeCV`` does) without a validation set. Exact leave-one-out would need each sample's leverage,
i.e. the samples themselves; GCV needs only the sums the statistics keep.

Cross-entropy has no closed form: `newton` iterates exact Newton steps whose loss, gradient and Hessian are sums
over samples (`cross_entropy_sums`), so each iteration is exact over the data it sees, wherever the sums are
computed (one process, torchrun ranks, federated clients); its result depends on the weights it starts from
and the data of every iteration, so it does not add up over chunks as the ridge statistics do. A head too large
for its (P·K)² Hessian (AlexNet's 4,097 × 10) keeps the Hessian as a product over the samples
(`CrossEntropyCurvature`) and solves each Newton step by preconditioned conjugate gradients instead: the same
minimiser, each product one pass over the samples held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from skqk.analytic.stats import Statistics, StatisticsError

GCV_GRID = torch.logspace(-8, 4, 49, dtype=torch.float64)  # λ / (mean eigenvalue of the reduced Gram)


@dataclass(frozen=True)
class RidgeSolution:
    """The block's parameters (P, m) in the statistics' layout and how λ was chosen."""

    theta: Tensor
    lam: float
    chosen_by: str  # "gcv" or "given"
    gcv: float  # the GCV score at λ (mean squared residual / (1 − df/N)²)
    df: float  # effective degrees of freedom per column, bias included
    at_grid_edge: bool  # GCV kept falling beyond the searched λ range

    def record(self) -> dict:
        return {
            "lambda": self.lam,
            "chosen_by": self.chosen_by,
            "gcv": self.gcv,
            "df": self.df,
            "at_grid_edge": self.at_grid_edge,
        }


@dataclass(frozen=True)
class Reduced:
    """The ridge problem with the unpenalised parameters eliminated, in the eigenbasis of its Gram."""

    eigenvalues: Tensor  # (p,) of the reduced Gram
    vectors: Tensor  # (p, p)
    projected: Tensor  # (p, m): Vᵀ C_reduced
    rss_floor: float  # Σ ‖y − r‖² left after fitting the unpenalised parameters alone
    free_df: float  # rank of the unpenalised part (1 for the head's bias)
    observations: int  # N: rows per column


def reduce(stats: Statistics) -> Reduced:
    """Eliminate the unpenalised parameters (their normal equations solved for given w, then substituted)."""
    if stats.samples < 2:
        raise StatisticsError(f"a ridge solve needs at least 2 samples, the statistics hold {stats.samples}")
    pen, free = stats.penalised, ~stats.penalised
    G, C = stats.gram.cpu(), stats.moment.cpu()
    Gff_inv = torch.linalg.pinv(G[free][:, free], hermitian=True) if free.any() else torch.zeros(0, 0).double()
    Gpf = G[pen][:, free]
    gram = G[pen][:, pen] - Gpf @ Gff_inv @ Gpf.T
    moment = C[pen] - Gpf @ Gff_inv @ C[free]
    floor = stats.target_sq.cpu().sum() - (C[free] * (Gff_inv @ C[free])).sum()
    s, V = torch.linalg.eigh((gram + gram.T) / 2)
    free_df = float(torch.linalg.matrix_rank(G[free][:, free], hermitian=True)) if free.any() else 0.0
    return Reduced(s.clamp_min(0), V, V.T @ moment, float(floor), free_df, stats.samples * stats.rows)


def gcv(reduced: Reduced, lam: float) -> tuple[float, float]:
    """(GCV score, degrees of freedom per column) at λ; the score is inf where df reaches N."""
    s, q2 = reduced.eigenvalues, reduced.projected.square().sum(1)
    rss = reduced.rss_floor - (q2 * (s + 2 * lam) / (s + lam).square()).sum().item()
    df = reduced.free_df + (s / (s + lam)).sum().item()
    n, columns = reduced.observations, reduced.projected.shape[1]
    if df >= n - 1e-9:
        return math.inf, df
    return max(rss, 0.0) / (n * columns) / (1 - df / n) ** 2, df


def choose_lambda(reduced: Reduced) -> tuple[float, bool]:
    """The λ of least GCV: on a log grid scaled by the mean eigenvalue, refined by golden section between the
    grid neighbours of the best point. Also whether it lies at the grid's edge."""
    scale = reduced.eigenvalues.mean().item() if len(reduced.eigenvalues) else 1.0
    scale = scale if scale > 0 else 1.0
    logs = (GCV_GRID * scale).log().tolist()
    scores = [gcv(reduced, math.exp(t))[0] for t in logs]
    best = min(range(len(logs)), key=lambda i: scores[i])
    if math.isinf(scores[best]):
        raise StatisticsError(
            f"{reduced.observations} regression rows cannot fit {reduced.free_df:.0f} unpenalised parameters and "
            "choose λ: add samples or give λ"
        )
    lo, hi = logs[max(best - 1, 0)], logs[min(best + 1, len(logs) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):  # golden section on log λ
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if gcv(reduced, math.exp(a))[0] <= gcv(reduced, math.exp(b))[0]:
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2), best in (0, len(logs) - 1)


def solve_ridge(stats: Statistics, lam: float | None = None) -> RidgeSolution:
    """The ridge solution of the statistics' block (a pure function of `stats`).

    Args:
        stats: the sums of the samples to fit.
        lam: the penalty on the weights; None chooses it by GCV.

    Returns:
        θ of shape (P, m) and the λ used, recorded with how it was chosen.

    Example:
        >>> solution = skqk.analytic.solve_ridge(stats)
        >>> solution.lam, solution.theta.shape
    """
    if lam is not None and not 0 <= lam < math.inf:
        raise StatisticsError(f"λ must be non-negative and finite, got {lam}")
    reduced = reduce(stats)
    chosen_by, edge = ("given", False) if lam is not None else ("gcv", None)
    if lam is None:
        lam, edge = choose_lambda(reduced)
    s, V = reduced.eigenvalues, reduced.vectors
    inverse = torch.where(s + lam > 0, 1 / (s + lam), torch.zeros_like(s))  # λ = 0: the minimum-norm solution
    theta = torch.zeros(stats.moment.shape, dtype=torch.float64)
    pen, free = stats.penalised, ~stats.penalised
    theta[pen] = V @ (inverse[:, None] * reduced.projected)
    if free.any():
        G, C = stats.gram.cpu(), stats.moment.cpu()
        theta[free] = torch.linalg.pinv(G[free][:, free], hermitian=True) @ (C[free] - G[free][:, pen] @ theta[pen])
    score, df = gcv(reduced, lam)
    return RidgeSolution(theta, float(lam), chosen_by, score, df, bool(edge))


# -- cross-entropy -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrossEntropySums:
    """Σ over samples at one θ of the head: loss, gradient (P·K) and Hessian (P·K)², float64."""

    loss: Tensor
    gradient: Tensor
    hessian: Tensor
    samples: int

    def __add__(self, other: CrossEntropySums) -> CrossEntropySums:
        return CrossEntropySums(
            self.loss + other.loss,
            self.gradient + other.gradient,
            self.hessian + other.hessian,
            self.samples + other.samples,
        )


MAX_NEWTON_PARAMETERS = 20_000  # a dense Hessian is its square in float64 (3.2 GB); above: Hessian products


@dataclass(frozen=True)
class CrossEntropyCurvature:
    """Σ over samples at one θ: loss and gradient (P·K), and the Hessian as a product v ↦ H v (one pass over the
    samples each), for heads whose (P·K)² Hessian is not formed; `input_basis` and `class_curvature` are the two
    factors of its Kronecker approximation ``H ≈ (Σ z zᵀ) ⊗ mean(diag p − p pᵀ)``, the preconditioner."""

    loss: Tensor
    gradient: Tensor
    product: Callable[[Tensor], Tensor]
    input_basis: tuple[Tensor, Tensor]  # eigenvalues and eigenvectors of Σ z zᵀ (P × P)
    class_curvature: Tensor  # (K, K)
    samples: int


def check_dense_hessian(parameters: int) -> None:
    """Refuse sums whose Hessian would not fit (where only dense sums can travel: federated replies)."""
    if parameters > MAX_NEWTON_PARAMETERS:
        raise StatisticsError(
            f"a Newton solve of {parameters} parameters needs a {parameters}² Hessian "
            f"({parameters**2 * 8 / 2**30:.1f} GiB in float64); use the ridge solve (--loss mse) for this block"
        )


def cross_entropy_sums(design: Tensor, labels: Tensor, theta: Tensor) -> CrossEntropySums:
    """The sums of one batch for the head's inputs ``[z 1]`` (B, P) and θ (P, K), θ flattened row-major."""
    z = design.double()
    logits = z @ theta.to(z.device)
    p = logits.softmax(1)
    loss = torch.nn.functional.cross_entropy(logits, labels.to(z.device), reduction="sum")
    residual = p.clone()
    residual[torch.arange(len(z)), labels.to(z.device)] -= 1
    gradient = (z.T @ residual).reshape(-1)
    weights = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (B, K, K)
    hessian = torch.einsum("ia,ikl,ib->akbl", z, weights, z).reshape(len(gradient), len(gradient))
    return CrossEntropySums(loss, gradient, hessian, len(z))


def input_basis(batches: Sequence[tuple[Tensor, Tensor]], add_over_ranks: Callable[[Tensor], Tensor]):
    """The eigendecomposition of the head inputs' Gram ``Σ z zᵀ`` over all ranks: the input factor of the
    Hessian's Kronecker approximation, fixed over the Newton iterations (the inputs are)."""
    P = batches[0][0].shape[1] if batches else 0
    gram = sum((d.double().T @ d.double()).cpu() for d, _ in batches)
    gram = add_over_ranks(torch.as_tensor(gram, dtype=torch.float64).reshape(-1)).reshape(P, P)
    return torch.linalg.eigh(gram)


def cross_entropy_curvature(
    batches: Sequence[tuple[Tensor, Tensor]],
    theta: Tensor,
    add_over_ranks: Callable[[Tensor], Tensor],
    basis: tuple[Tensor, Tensor],
) -> CrossEntropyCurvature:
    """The sums over `batches` of head inputs ``[z 1]`` and labels at θ with the Hessian kept as products: for
    z's softmax p, ``(H v)_k = Σ z (p_k a_k − p_k Σ_l p_l a_l)`` with ``a = z V``, one pass over the batches per
    product (p kept from this evaluation). `add_over_ranks` sums a flat tensor over torchrun's ranks; `basis` is
    `input_basis` of the same batches."""
    P, K = theta.shape
    theta = theta.double()
    loss, gradient, curvature = torch.zeros(()).double(), torch.zeros(P, K).double(), torch.zeros(K, K).double()
    probabilities, samples = [], 0
    for design, labels in batches:
        z = design.double()
        logits = z @ theta.to(z.device)
        p = logits.softmax(1)
        loss += torch.nn.functional.cross_entropy(logits, labels.to(z.device), reduction="sum").cpu()
        residual = p.clone()
        residual[torch.arange(len(z)), labels.to(z.device)] -= 1
        gradient += (z.T @ residual).cpu()
        curvature += (torch.diag(p.sum(0)) - p.T @ p).cpu()
        probabilities.append(p)
        samples += len(z)
    flat = [loss.reshape(1), gradient.reshape(-1), curvature.reshape(-1), torch.tensor([float(samples)]).double()]
    total = add_over_ranks(torch.cat(flat))

    def product(v: Tensor) -> Tensor:
        out = torch.zeros(P, K).double()
        for (design, _), p in zip(batches, probabilities):
            z = design.double()
            pa = p * (z @ v.reshape(P, K).to(z.device))
            out += ((pa - p * pa.sum(1, keepdim=True)).T @ z).T.cpu()  # (Rᵀ z)ᵀ: MKL's zᵀ R is 6× slower on AMD
        return add_over_ranks(out.reshape(-1))

    mean_curvature = total[P * K + 1 : P * K + 1 + K * K].reshape(K, K) / max(total[-1].item(), 1.0)
    return CrossEntropyCurvature(total[0], total[1 : P * K + 1], product, basis, mean_curvature, samples)


@dataclass(frozen=True)
class NewtonResult:
    theta: Tensor
    lam: float
    iterations: int  # evaluations of the sums (one pass over the data, or one federated round, each)
    decrement: float  # the Newton decrement ½ gᵀ H⁻¹ g at the end: the objective's distance to its minimum
    objective: float
    hessian_products: int = 0  # conjugate-gradient products (0: the Hessian was formed and solved densely)

    def record(self) -> dict:
        return {
            "lambda": self.lam,
            "chosen_by": "ridge gcv",
            "iterations": self.iterations,
            "newton_decrement": self.decrement,
            "objective": self.objective,
            "hessian": "products (conjugate gradients)" if self.hessian_products else "dense",
            "hessian_products": self.hessian_products,
        }


def newton(
    sums: Callable[[Tensor], CrossEntropySums],
    start: Tensor,
    penalised: Tensor,
    lam: float,
    tolerance: float = 1e-10,
    max_evaluations: int = 60,
) -> NewtonResult:
    """Minimise ``Σ CE(z̃ θ, y) + λ ‖w‖²`` (the bias unpenalised) by Newton's method with step halving.

    `sums(θ)` returns the data's sums at θ; each call is one pass (or round). The softmax does not change when
    every class's bias moves by the same amount, so ``½ (Σ_k b_k)²`` is added: it changes nothing else and makes
    the Hessian definite, picking the minimiser whose biases sum to zero.

    Args:
        sums: the loss, gradient and Hessian (dense, or as products) summed over all samples at θ.
        start: θ (P, K) to start from (the ridge solution).
        penalised: (P,) bool, the rows of θ under the penalty (the weights; the bias row is not).
        lam: the penalty.
    """
    P, K = start.shape
    pen = penalised[:, None].expand(P, K).reshape(-1).double() * lam
    bias = (~penalised)[:, None].expand(P, K).reshape(-1).double()

    def objective(theta: Tensor, s: CrossEntropySums) -> float:
        flat = theta.reshape(-1)
        return s.loss.item() + (pen * flat.square()).sum().item() + 0.5 * (bias * flat).sum().item() ** 2

    theta = start.double().clone()
    best: tuple[Tensor, float] | None = None
    decrement, hessian_products = math.inf, 0
    for evaluation in range(1, max_evaluations + 1):
        s = sums(theta)
        value = objective(theta, s)
        if best is not None and not value < best[1]:  # no decrease: halve the step back towards the best point
            theta = (best[0] + theta) / 2
            continue
        flat = theta.reshape(-1)
        gradient = s.gradient.cpu() + 2 * pen * flat + bias * (bias * flat).sum()
        step, products = newton_step(s, gradient, 2 * pen, bias)
        hessian_products += products
        decrement = 0.5 * (gradient @ step).item()
        best = (theta, value)
        if decrement <= tolerance * max(1.0, abs(value)):  # within the quadratic model's accuracy: a last step
            return NewtonResult(theta - step.reshape(P, K), lam, evaluation, decrement, value, hessian_products)
        theta = theta - step.reshape(P, K)
    return NewtonResult(best[0], lam, max_evaluations, decrement, best[1], hessian_products)


def newton_step(
    s: CrossEntropySums | CrossEntropyCurvature, gradient: Tensor, shift: Tensor, bias: Tensor
) -> tuple[Tensor, int]:
    """H⁻¹ g for H = the sums' Hessian + diag(shift) + bias biasᵀ: a dense solve, or preconditioned conjugate
    gradients on Hessian products (and how many products it took)."""
    if isinstance(s, CrossEntropySums):
        hessian = s.hessian.cpu() + torch.diag(shift) + bias[:, None] * bias[None, :]
        return torch.linalg.solve(hessian, gradient), 0

    def product(v: Tensor) -> Tensor:
        return s.product(v).cpu() + shift * v + bias * (bias @ v)

    return conjugate_gradients(product, gradient, kronecker_preconditioner(s, shift))


def kronecker_preconditioner(s: CrossEntropyCurvature, shift: Tensor) -> Callable[[Tensor], Tensor]:
    """v ↦ (G ⊗ S + c I)⁻¹ v for the Gram G of the inputs, the mean class curvature S and c the largest penalty
    (K-FAC's factorisation of the softmax Hessian, exact when every sample has the same p): two P × P products
    per application, in the eigenbases of G and S."""
    sigma, U = s.input_basis
    omega, Q = torch.linalg.eigh(s.class_curvature)
    scale = (sigma.max() * omega.max()).clamp_min(1e-300)
    c = max(shift.max().item(), 1e-10 * scale.item())
    inverse = 1 / (sigma.clamp_min(0)[:, None] * omega.clamp_min(0)[None, :] + c)
    P, K = len(sigma), len(omega)

    def apply(v: Tensor) -> Tensor:
        rotated = inverse * ((v.reshape(P, K) @ Q).T @ U).T  # (Wᵀ U)ᵀ = Uᵀ W, the fast layout (as above)
        return ((rotated @ Q.T).T @ U.T).T.reshape(-1)

    return apply


def conjugate_gradients(
    product: Callable[[Tensor], Tensor],
    rhs: Tensor,
    precondition: Callable[[Tensor], Tensor],
    tolerance: float = 1e-12,
) -> tuple[Tensor, int]:
    """Solve H x = rhs for a positive definite H given as a product, preconditioned, to a residual of
    `tolerance` × ‖rhs‖ (at most len(rhs) products: exact in exact arithmetic)."""
    x = torch.zeros_like(rhs)
    if rhs.norm() == 0:  # already at the minimum: 0/0 below otherwise
        return x, 0
    r = rhs.clone()
    z = precondition(r)
    d = z.clone()
    rz = r @ z
    goal = tolerance * rhs.norm()
    for products in range(1, len(rhs) + 1):
        hd = product(d)
        alpha = rz / (d @ hd)
        x += alpha * d
        r -= alpha * hd
        if r.norm() <= goal:
            return x, products
        z = precondition(r)
        rz, previous = r @ z, rz
        d = z + (rz / previous) * d
    return x, len(rhs)
