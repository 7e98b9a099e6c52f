"""Newton steps that finish a Sinkhorn solve (``sinkhorn(..., newton=True)``)."""

import math
import warnings

import pytest
import torch

from couplings import ConvergenceWarning, PointCloud, pad_problems, sinkhorn

F64 = torch.float64


def _crawling(n=200, m=200, seed=0):
    """Points where Sinkhorn's error falls like 1 / k at eps = 0.003 x the mean cost: 2-D
    Gaussians against a stretched, shifted Gaussian (the benchmark's gauss2d)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=F64)
    y = torch.randn(m, 2, generator=g, dtype=F64) * torch.tensor([0.5, 2.0], dtype=F64) + 1.0
    cost = torch.cdist(x, y) ** 2
    return cost, 0.003 * float(cost.mean())


def _exact_error(res, cost):
    """The L1 marginal error of the plan of the returned potentials, evaluated afresh."""
    plan = res.a[..., :, None] * res.b[..., None, :] * torch.exp(
        (res.f[..., :, None] + res.g[..., None, :] - cost) / res.eps)
    return ((plan.sum(-1) - res.a).abs().sum(-1) + (plan.sum(-2) - res.b).abs().sum(-1))


def test_newton_finishes_where_the_iterations_crawl():
    cost, eps = _crawling()
    with pytest.warns(ConvergenceWarning):  # the iterations alone: far above tol
        plain = sinkhorn(cost, eps=eps, tol=1e-9, max_iter=1000)
    assert float(plain.error) > 1e-6 and plain.newton_steps is None
    res = sinkhorn(cost, eps=eps, tol=1e-9, max_iter=1000, newton=True)
    assert bool(res.converged) and 0 < int(res.newton_steps) <= 30
    assert float(_exact_error(res, cost)) <= 1e-9  # the error is the plan's, not a claim
    assert float(res.error) == pytest.approx(float(_exact_error(res, cost)), rel=1e-3, abs=1e-12)
    # the certificate closes: primal and dual objectives agree far below the plain solve's gap
    assert abs(float(res.gap)) < 1e-8 < float(plain.gap)
    # and the value is the one the plain iterations tend to
    assert float(res.value) == pytest.approx(float(plain.value), abs=10 * float(plain.gap))


def test_newton_leaves_converged_problems_alone_and_handles_a_ragged_batch():
    hard, eps = _crawling(30, 40, seed=1)
    easy = torch.rand(25, 20, generator=torch.Generator().manual_seed(2), dtype=F64)
    cost, a, b, sizes = pad_problems([hard, easy * float(hard.mean())])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        before = sinkhorn(cost, a, b, eps=eps, tol=1e-10, max_iter=200)
    res = sinkhorn(cost, a, b, eps=eps, tol=1e-10, max_iter=200, newton=True)
    assert not bool(before.converged[0]) and bool(before.converged[1])
    assert res.newton_steps.tolist()[1] == 0 and res.newton_steps.tolist()[0] > 0
    assert bool(res.converged.all())
    assert torch.equal(res.f[1], before.f[1]) and torch.equal(res.g[1], before.g[1])
    # the padded problem equals the problem alone: the zero weights took no part
    alone = sinkhorn(hard, eps=eps, tol=1e-10, max_iter=200, newton=True)
    first, _ = res.unpad(sizes)
    assert torch.allclose(first.f, alone.f, atol=1e-9) and torch.allclose(first.g, alone.g,
                                                                          atol=1e-9)
    assert float(_exact_error(alone, hard)) <= 1e-10


@pytest.mark.parametrize("n, m", [(60, 25), (25, 60)])
def test_newton_on_either_side_and_its_gradient_is_the_plan(n, m):
    cost, eps = _crawling(n, m, seed=3)
    cost.requires_grad_(True)
    res = sinkhorn(cost, eps=eps, tol=1e-10, max_iter=50, newton=True)
    assert bool(res.converged) and int(res.newton_steps) > 0
    res.value.backward()  # d value / d C is the plan at the optimum (implicit gradients)
    assert torch.allclose(cost.grad, res.plan.detach(), atol=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rho=1.0), "balanced"),
    (dict(symmetric=True), "not symmetric"),
    (dict(grad="unroll"), "unroll"),
])
def test_newton_rejects_what_it_does_not_cover(kwargs, match):
    cost = torch.rand(6, 6, dtype=F64)
    cost = cost + cost.T
    with pytest.raises(ValueError, match=match):
        sinkhorn(cost, eps=0.1, newton=True, **kwargs)
    with pytest.raises(ValueError, match="online"):
        sinkhorn(PointCloud(torch.rand(5, 2), torch.rand(6, 2)), eps=0.1, backend="online",
                 newton=True)
    with pytest.raises(TypeError, match="newton must be a bool"):
        sinkhorn(cost, eps=0.1, newton="yes")


def test_newton_steps_ascend_the_semi_dual():
    """Each step of the polish raises the semi-dual (or lowers the error where the change is
    below rounding): from the 30th Sinkhorn iterate, the objective after k + 1 steps is at
    least the one after k, and the error falls by orders of magnitude."""
    from couplings.solvers._newton import _column_update, newton_polish

    cost, eps = _crawling(40, 50, seed=4)
    a = torch.full((1, 40), 1 / 40, dtype=F64)
    b = torch.full((1, 50), 1 / 50, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = sinkhorn(cost, eps=eps, max_iter=30)
    values, errors = [], []
    for k in range(14):
        fk, gk, err, _ = newton_polish(cost[None], a, b, start.f[None], start.g[None], eps,
                                       tol=0.0, max_steps=k)
        assert torch.allclose(gk, _column_update(cost[None], a.log(), fk, eps))
        values.append(float((a * fk).sum() + (b * gk).sum()))
        errors.append(float(err))
    slack = 1e-12 * max(abs(v) for v in values)
    assert all(v1 >= v0 - slack for v0, v1 in zip(values, values[1:], strict=False))
    assert errors[-1] < 1e-10 * errors[0] and math.isfinite(errors[-1])  # 6e-2 to 1e-14


def test_newton_in_float32_stops_at_the_float_resolution():
    """With the default tol, a float32 problem stops at the resolution of its potentials, as
    the iterations do: Newton steps cannot certify an error below it."""
    cost, eps = _crawling(120, 100, seed=5)
    cost = cost.float()
    res = sinkhorn(cost, eps=eps / 3, max_iter=100, newton=True)  # eps_rel 0.001
    assert bool(res.converged) and float(res.error) <= float(res.resolution)
    # in float64 the same call reaches the default tol itself (1e-6), checked on its plan
    double = sinkhorn(cost.double(), eps=eps / 3, max_iter=100, newton=True)
    assert bool(double.converged) and float(_exact_error(double, cost.double())) <= 1e-6


def _underflowing():
    """A 45 x 20 problem (uniform weights, eps_rel 0.003) whose 100th iterate has a row of
    zero mass: its plan entries all underflowed."""
    g = torch.Generator().manual_seed(0)
    for shape in ((40, 2), (50, 2)):  # (the draws of the case as first found)
        torch.randn(*shape, generator=g, dtype=F64)
    torch.rand(40, generator=g, dtype=F64), torch.rand(50, generator=g, dtype=F64)
    torch.randn(30, 2, generator=g, dtype=F64)
    x = torch.randn(45, 2, generator=g, dtype=F64)
    torch.randn(35, 2, generator=g, dtype=F64)
    y = torch.randn(20, 2, generator=g, dtype=F64) * 2 + 1
    return torch.cdist(x, y) ** 2


@pytest.mark.parametrize("backend", ["kernel", "tensorized"])
@pytest.mark.parametrize("weights", ["uniform", "random"])
def test_newton_from_an_early_iterate_with_rows_whose_mass_underflowed(weights, backend):
    """From the 100th iterate at eps_rel 0.003 (mostly annealing) a row of the plan has
    underflowed to zero mass: the Newton system is singular there, and an undamped solve gave
    a descent direction 1e13 eps long (no step was taken). Damped and bounded, the steps
    converge; with random weights too."""
    cost = _underflowing()
    g = torch.Generator().manual_seed(1)
    a, b = (torch.rand(k, generator=g, dtype=F64) + 0.1 if weights == "random" else
            torch.ones(k, dtype=F64) for k in cost.shape)
    a, b = a / a.sum(), b / b.sum()
    eps = 0.003 * float(cost.mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = sinkhorn(cost, a, b, eps=eps, tol=1e-10, max_iter=100, backend=backend)
    assert float(start.error) > 1e-3
    res = sinkhorn(cost, a, b, eps=eps, tol=1e-10, max_iter=100, backend=backend, newton=True)
    assert bool(res.converged) and float(_exact_error(res, cost)) <= 1e-10


def test_sinkhorn_divergence_passes_newton_to_its_cross_solve():
    """At eps_rel 0.003 in float64 the cross solve crawls (a ConvergenceWarning within 1000
    iterations) while the two symmetric self solves converge; newton=True finishes the cross
    solve, and the divergence equals the one of a long plain run to its accuracy."""
    from couplings import sinkhorn_divergence

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g, dtype=F64)
    y = torch.randn(200, 2, generator=g, dtype=F64) * torch.tensor([0.5, 2.0], dtype=F64) + 1
    eps = 0.003 * float((torch.cdist(x, y) ** 2).mean())
    with pytest.warns(ConvergenceWarning):
        plain = sinkhorn_divergence(x, y, eps=eps, tol=1e-9, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # every solve converges
        finished = sinkhorn_divergence(x, y, eps=eps, tol=1e-9, max_iter=1000, newton=True)
        with pytest.raises(ValueError, match="balanced"):
            sinkhorn_divergence(x, y, eps=eps, rho=1.0, newton=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        long = sinkhorn_divergence(x, y, eps=eps, tol=1e-9, max_iter=30_000)
    # (the value is first-order insensitive to the potentials' error, so the gaps are small:
    # measured 1.4e-8 for the 1000 plain iterations, 4e-10 once finished)
    assert abs(float(finished) - float(long)) < 2e-9 < 5e-9 < abs(float(plain) - float(long))
