"""Stick-breaking and rounding reparameterizations of the Birkhoff polytope."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from couplings.permutations.birkhoff import (
    RoundingFamily,
    StickBreakingFamily,
    round_to_permutation,
    stick_breaking,
    stick_breaking_inverse,
)
from couplings.solvers.matching import matching

F64 = torch.float64


def _assert_doubly_stochastic(x, atol):
    assert bool((x >= 0).all()), float(x.min())
    ones = torch.ones(x.shape[:-1], dtype=x.dtype)
    torch.testing.assert_close(x.sum(-1), ones, atol=atol, rtol=0)
    torch.testing.assert_close(x.sum(-2), ones, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 3, 4, 6, 9])
def test_stick_breaking_lands_in_the_polytope(n, dtype):
    gen = torch.Generator().manual_seed(n)
    k = n - 1
    uniform = torch.rand(200, k, k, generator=gen, dtype=dtype)
    binary = (torch.rand(50, k, k, generator=gen) < 0.5).to(dtype)
    # entries at the extremes 0 and 1 mixed with interior ones
    mixed = torch.where(torch.rand(50, k, k, generator=gen) < 0.5, binary,
                        torch.rand(50, k, k, generator=gen, dtype=dtype))
    extremes = torch.stack([torch.zeros(k, k, dtype=dtype), torch.ones(k, k, dtype=dtype)])
    tiny = torch.rand(50, k, k, generator=gen, dtype=dtype) * 1e-7  # close to 0 and to 1
    for beta in (uniform, binary, mixed, extremes, tiny, 1 - tiny):
        x, log_det = stick_breaking(beta)
        assert x.shape == (beta.shape[0], n, n) and x.dtype == dtype
        assert log_det.shape == (beta.shape[0],) and log_det.dtype == dtype
        assert bool(torch.isfinite(x).all()) and not bool(torch.isnan(log_det).any())
        _assert_doubly_stochastic(x, atol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("n", [2, 3, 5, 7])
def test_binary_fractions_give_permutation_matrices(n):
    gen = torch.Generator().manual_seed(0)
    beta = (torch.rand(100, n - 1, n - 1, generator=gen) < 0.4).to(F64)
    x, _ = stick_breaking(beta)
    assert bool(((x == 0) | (x == 1)).all())
    _assert_doubly_stochastic(x, atol=0)
    # and all n! vertices are reachable in principle: many distinct ones appear here
    assert len({tuple(p.argmax(-1).tolist()) for p in x}) > min(20, math.factorial(n) // 2)


def test_stick_breaking_first_row_is_the_simplex_construction():
    beta = torch.tensor([[0.3, 0.5, 0.2]] + [[0.5] * 3] * 2, dtype=F64)
    x, _ = stick_breaking(beta)
    expected = torch.tensor([0.3, 0.7 * 0.5, 0.35 * 0.2, 0.35 * 0.8], dtype=F64)
    torch.testing.assert_close(x[0], expected)


def test_bounds_are_the_papers_formulas():
    """Recompute l_mn and u_mn from X with the paper's (1-indexed) formulas, pure Python:
    l = max(0, 1 - N + n - sum_{k<n} x_mk + sum_{k<m} sum_{j>n} x_kj),
    u = min(1 - sum_{k<n} x_mk, 1 - sum_{k<m} x_kn); then (x - l) / (u - l) must be beta."""
    n_size = 5
    beta = 0.05 + 0.9 * torch.rand(4, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
    x = stick_breaking(beta)[0].tolist()
    for m in range(1, n_size):  # 1-indexed rows and columns, as in the paper
        for n in range(1, n_size):
            row_before = sum(x[m - 1][k - 1] for k in range(1, n))
            above_right = sum(x[k - 1][j - 1]
                              for k in range(1, m) for j in range(n + 1, n_size + 1))
            lower = max(0.0, 1 - n_size + n - row_before + above_right)
            upper = min(1 - row_before, 1 - sum(x[k - 1][n - 1] for k in range(1, m)))
            recovered = (x[m - 1][n - 1] - lower) / (upper - lower)
            assert math.isclose(recovered, float(beta[m - 1, n - 1]), rel_tol=1e-9), (m, n)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_log_det_matches_the_autograd_jacobian(n):
    gen = torch.Generator().manual_seed(10 + n)
    k = n - 1
    for _ in range(3):
        beta = 0.05 + 0.9 * torch.rand(k, k, generator=gen, dtype=F64)

        def free_entries(b, k=k):
            return stick_breaking(b.reshape(k, k))[0][:k, :k].reshape(-1)

        jac = torch.autograd.functional.jacobian(free_entries, beta.reshape(-1))  # (k^2, k^2)
        assert torch.allclose(jac.triu(1), torch.zeros_like(jac))  # raster order: triangular
        _, logabsdet = torch.linalg.slogdet(jac)
        _, log_det = stick_breaking(beta)
        torch.testing.assert_close(log_det, logabsdet, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [2, 4, 6])
def test_inverse_recovers_the_fractions(n):
    gen = torch.Generator().manual_seed(n)
    beta = 0.01 + 0.98 * torch.rand(20, n - 1, n - 1, generator=gen, dtype=F64)
    x, _ = stick_breaking(beta)
    torch.testing.assert_close(stick_breaking_inverse(x), beta, rtol=1e-8, atol=1e-9)


def test_stick_breaking_validates_inputs():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stick_breaking(torch.full((2, 2), 1.5))
    with pytest.raises(ValueError, match="shape"):
        stick_breaking(torch.rand(2, 3))
    with pytest.raises(TypeError, match="floating"):
        stick_breaking(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="finite"):
        stick_breaking(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="tau"):
        StickBreakingFamily(3, tau=0.0)
    with pytest.raises(ValueError, match="scale_bounds"):
        RoundingFamily(3, scale_bounds=(0.5, 0.1))
    with pytest.raises(ValueError, match="n must be >= 2"):
        StickBreakingFamily(1)


def test_round_to_permutation_is_the_nearest_permutation():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(30, 4, 4, generator=gen, dtype=F64)
    p = round_to_permutation(x)
    torch.testing.assert_close(p, matching(x).matrix)
    # brute force: the nearest of the 24 permutation matrices in Frobenius norm
    eye = torch.eye(4, dtype=F64)
    perms = torch.stack([eye[list(s)] for s in itertools.permutations(range(4))])
    dist = ((x.unsqueeze(1) - perms.unsqueeze(0)) ** 2).sum((-2, -1))  # (30, 24)
    torch.testing.assert_close(p, perms[dist.argmin(1)])


# --------------------------------------------------------------------------------------------
# the variational families


def _families(dtype=F64):
    sb = StickBreakingFamily(4, batch_shape=(3,), tau=0.4, dtype=dtype)
    rd = RoundingFamily(4, batch_shape=(3,), tau=0.3, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for fam in (sb, rd):
            for p in fam.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))
    return sb, rd


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_families_sample_shapes_dtypes_and_consistent_densities(dtype):
    for fam in _families(dtype):
        x, log_q = fam.rsample(16, generator=torch.Generator().manual_seed(1))
        assert x.shape == (16, 3, 4, 4) and log_q.shape == (16, 3)
        assert x.dtype == log_q.dtype == dtype
        assert bool(torch.isfinite(x).all() and torch.isfinite(log_q).all())
        # log_q is the density of the returned sample, evaluated by inverting the map
        tol = 1e-3 if dtype == torch.float32 else 1e-8
        torch.testing.assert_close(fam.log_prob(x.detach()), log_q.detach(), rtol=tol, atol=tol)
    sb, _ = _families(dtype)
    x, _ = sb.rsample(16)
    _assert_doubly_stochastic(x.detach(), atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_stick_breaking_density_integrates_to_one_for_n2():
    # N = 2: X = [[x, 1 - x], [1 - x, x]], one free entry x in (0, 1)
    for tau, mean, scale in [(1.0, 0.3, 0.8), (0.3, -0.2, 0.5), (0.1, 0.05, 0.2)]:
        fam = StickBreakingFamily(2, tau=tau, init_scale=scale, dtype=F64)
        with torch.no_grad():
            fam.mean.fill_(mean)

        def density(x, fam=fam):
            mat = torch.tensor([[x, 1 - x], [1 - x, x]], dtype=F64)
            with torch.no_grad():
                return math.exp(float(fam.log_prob(mat)))

        total, err = integrate.quad(density, 0, 1, limit=200, points=[0.5])
        assert abs(total - 1) < 1e-6, (tau, total, err)
        # and the mass below 1/2 is P(psi < 0) = Phi(-mean / scale)
        half, _ = integrate.quad(density, 0, 0.5, limit=200)
        assert abs(half - norm.cdf(-mean / scale)) < 1e-6


def test_rounding_density_integrates_correctly_for_n2():
    """For N = 2 with an isotropic scale v, X = t d + B w with d = (1, -1, -1, 1) / 2: the
    rounded permutation depends on t only, and both permutation matrices project to the same
    point of the orthogonal complement, so w ~ N(B^T (tau M + (1 - tau) c), tau^2 v^2 I_3) with
    c = (1/2, 1/2, 1/2, 1/2). Integrating q along t (across the hole |t| < 1 - tau) must give
    that Gaussian density of w, and the mass on the identity's side P(d . Psi > 0)."""
    tau, v = 0.4, 0.3
    fam = RoundingFamily(2, tau=tau, init_scale=v, dtype=F64)
    with torch.no_grad():
        fam.log_mean.copy_(torch.tensor([[0.7, -0.2], [0.1, 0.4]], dtype=F64))
    m = fam.mean_matrix().detach().reshape(-1).numpy()
    d = np.array([1.0, -1.0, -1.0, 1.0]) / 2
    basis = np.linalg.svd(np.eye(4) - np.outer(d, d))[0][:, :3]  # orthonormal complement of d
    centre = basis.T @ (tau * m + (1 - tau) * np.full(4, 0.5))

    def density(t, w):
        x = torch.from_numpy(t * d + basis @ w).reshape(2, 2)
        with torch.no_grad():
            return math.exp(float(fam.log_prob(x)))

    gen = np.random.default_rng(0)
    hole = 1 - tau
    for w in centre + tau * v * gen.standard_normal((3, 3)):
        expected = np.prod(norm.pdf(w, loc=centre, scale=tau * v))
        plus, _ = integrate.quad(density, hole, np.inf, args=(w,), epsabs=0, epsrel=1e-9)
        minus, _ = integrate.quad(density, -np.inf, -hole, args=(w,), epsabs=0, epsrel=1e-9)
        inside, _ = integrate.quad(density, -hole, hole, args=(w,), limit=10)
        assert inside == 0  # the hole around the boundary of the Voronoi cells
        assert math.isclose(plus + minus, expected, rel_tol=1e-6)
        assert math.isclose(plus / expected, norm.cdf(d @ m / v), rel_tol=1e-6)


def test_rounding_log_prob_is_minus_inf_outside_the_support():
    fam = RoundingFamily(3, tau=0.5, dtype=F64)
    centre = torch.full((3, 3), 1 / 3, dtype=F64)  # the barycentre: far from every vertex
    with torch.no_grad():
        assert float(fam.log_prob(centre)) == -math.inf
        assert math.isfinite(float(fam.log_prob(torch.eye(3, dtype=F64))))


def test_rsample_is_differentiable_gradcheck():
    for fam in _families(F64):
        names = [name for name, _ in fam.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_() for p in fam.parameters())

        def sample(*values, fam=fam, names=names):
            gen = torch.Generator().manual_seed(5)  # the same noise at every evaluation
            return torch.func.functional_call(fam, dict(zip(names, values, strict=True)),
                                              (4,), {"generator": gen})

        assert torch.autograd.gradcheck(sample, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_elbo_gradient_matches_central_finite_differences():
    """The reparameterized gradient of a Monte-Carlo ELBO with fixed noise, along a random
    direction, against central differences of the same estimate."""
    for fam in _families(F64):
        target = torch.eye(4, dtype=F64)[[2, 0, 3, 1]]

        def elbo(fam=fam, target=target):
            x, log_q = fam.rsample(6, generator=torch.Generator().manual_seed(9))
            return (-((x - target) ** 2).sum((-2, -1)) / 0.5 - log_q).mean()

        value = elbo()
        value.backward()
        gen = torch.Generator().manual_seed(2)
        directions = [torch.randn(p.shape, generator=gen, dtype=F64) for p in fam.parameters()]
        analytic = sum(float((p.grad * u).sum())
                       for p, u in zip(fam.parameters(), directions, strict=True))
        h = 1e-6
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, u in zip(fam.parameters(), directions, strict=True):
                    p.add_(sign * h * u)
                values.append(float(elbo()))
                for p, u in zip(fam.parameters(), directions, strict=True):
                    p.sub_(sign * h * u)
        numeric = (values[0] - values[1]) / (2 * h)
        assert math.isclose(analytic, numeric, rel_tol=1e-5, abs_tol=1e-6), (analytic, numeric)


def test_low_temperature_concentrates_on_permutations():
    gen = torch.Generator().manual_seed(4)
    for fam in (StickBreakingFamily(5, tau=0.01, init_scale=0.9, dtype=F64),
                RoundingFamily(5, tau=0.01, dtype=F64)):
        with torch.no_grad():
            x, _ = fam.rsample(200, generator=gen)
        dist = (x - round_to_permutation(x)).abs().amax((-2, -1))
        assert float(torch.quantile(dist, 0.9)) < 0.05
