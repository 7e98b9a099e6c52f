"""The Gaussian initializer: its potentials, and the solver's use of them."""

import numpy as np
import pytest
import torch

from couplings import PointCloud, sinkhorn
from couplings.maps import bures_wasserstein_distance
from couplings.solvers._initializers import _curvature, _potentials, gaussian_potentials


def _clouds(seed, n=300, m=250, d=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randn(m, d, generator=g, dtype=dtype) @ torch.tensor(
        [[1.5, 0.4], [0.0, 0.6]], dtype=dtype)[:d, :d] + 2.0
    return x, y


def _moments(p, w):
    mean = (w[:, None] * p).sum(0)
    c = p - mean
    return mean, (c * w[:, None]).T @ c


def test_the_potentials_are_dual_feasible_and_reach_the_gaussian_distance():
    """f + g <= C everywhere, and <a, f> + <b, g> is the squared Bures-Wasserstein distance
    between the weighted Gaussian fits (the potentials are exact for Gaussians), up to the
    covariance ridge."""
    x, y = _clouds(0)
    a = torch.rand(300, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = a / a.sum()
    b = torch.full((250,), 1 / 250, dtype=torch.float64)
    f, g = gaussian_potentials(x[None], y[None], a[None], b[None])
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    assert float((f[0, :, None] + g[0, None, :] - cost).max()) <= 1e-9
    w2 = bures_wasserstein_distance(*_moments(x, a), *_moments(y, b), squared=True)
    dual = (a * f[0]).sum() + (b * g[0]).sum()
    assert float(dual) == pytest.approx(float(w2), rel=1e-5)


def test_degenerate_clouds_give_finite_potentials():
    x = torch.zeros(1, 4, 2, dtype=torch.float64)  # one point, four times
    y = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]], dtype=torch.float64)  # a line
    w4, w3 = torch.full((1, 4), 0.25, dtype=torch.float64), torch.full((1, 3), 1 / 3,
                                                                      dtype=torch.float64)
    for p, q, wp, wq in ((x, y, w4, w3), (y, x, w3, w4), (x, x, w4, w4)):
        f, g = gaussian_potentials(p, q, wp, wq)
        assert bool(torch.isfinite(f).all()) and bool(torch.isfinite(g).all())
        res = sinkhorn(PointCloud(p[0], q[0]), wp[0], wq[0], eps=0.5, tol=1e-9)
        assert bool(res.converged)


@pytest.mark.parametrize("eps", [0.5, 0.05])
def test_point_cloud_solves_start_from_the_guess_and_reach_the_same_solution(eps):
    x, y = _clouds(2)
    guessed = sinkhorn(PointCloud(x, y), eps=eps, tol=1e-9)
    zero = sinkhorn(PointCloud(x, y), eps=eps, tol=1e-9, init="zeros")
    assert bool(guessed.converged) and bool(zero.converged)
    assert guessed.n_iter < zero.n_iter
    torch.testing.assert_close(guessed.value, zero.value, rtol=1e-8, atol=0)
    torch.testing.assert_close(guessed.plan, zero.plan, rtol=0, atol=1e-9)


def test_where_it_does_not_apply_the_start_is_zero():
    """A cost matrix, an unrolled or fixed-depth solve, and unbalanced OT start from zero: they
    give what init="zeros" gives, to the bit."""
    x, y = _clouds(3, n=60, m=50)
    cloud = PointCloud(x, y)
    for kwargs in (dict(grad="unroll"), dict(min_iter=20, max_iter=20), dict(rho=1.0)):
        auto = sinkhorn(cloud, eps=0.3, tol=1e-8, **kwargs)
        zero = sinkhorn(cloud, eps=0.3, tol=1e-8, init="zeros", **kwargs)
        assert torch.equal(auto.f, zero.f) and auto.n_iter == zero.n_iter


def test_a_batch_equals_its_problems_alone_with_annealed_and_guessed_problems():
    """In one batch, the problems that anneal start from zero and the others from their own
    guess, each as it would alone."""
    clouds = [_clouds(s, n=n, m=m) for s, n, m in ((4, 40, 50), (5, 60, 45), (6, 50, 50))]
    scales = (1.0, 2.0, 1.0)  # the second has a cost range that anneals at this eps
    xs = [x * s for (x, _), s in zip(clouds, scales, strict=True)]
    ys = [y * s for (_, y), s in zip(clouds, scales, strict=True)]
    eps = 0.1
    alone = [sinkhorn(PointCloud(x, y), eps=eps, tol=1e-9, max_iter=50_000)
             for x, y in zip(xs, ys, strict=True)]
    assert [int(r.annealed) > 0 for r in alone] == [False, True, False]
    n, m = max(x.shape[0] for x in xs), max(y.shape[0] for y in ys)
    px = torch.zeros(3, n, 2, dtype=torch.float64)
    py = torch.zeros(3, m, 2, dtype=torch.float64)
    a = torch.zeros(3, n, dtype=torch.float64)
    b = torch.zeros(3, m, dtype=torch.float64)
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        px[i, :len(x)], py[i, :len(y)] = x, y
        a[i, :len(x)], b[i, :len(y)] = 1 / len(x), 1 / len(y)
    batch = sinkhorn(PointCloud(px, py), a, b, eps=eps, tol=1e-9, max_iter=50_000)
    for i, res in enumerate(alone):
        assert int(batch.n_iter_per_problem[i]) == int(res.n_iter)
        torch.testing.assert_close(batch.value[i], res.value, rtol=1e-12, atol=0)


def test_an_unknown_init_string_is_an_error():
    x, y = _clouds(7, n=10, m=12)
    with pytest.raises(ValueError, match="init must be one of"):
        sinkhorn(PointCloud(x, y), eps=0.5, init="gaussian-ish")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_torch_arithmetic_of_other_devices_equals_the_numpy_one(dtype):
    """Off the CPU the fit runs in torch; on the CPU in numpy: the same numbers."""
    x, y = _clouds(9, n=50, m=40, dtype=dtype)
    a = torch.rand(2, 50, generator=torch.Generator().manual_seed(3), dtype=dtype)
    a[1, :5] = 0.0  # padding
    b = torch.full((2, 40), 1 / 40, dtype=dtype)
    xs, ys = torch.stack([x, 2 * x]), torch.stack([y, y - 1])
    for rows in (True, False):
        f_t, g_t = _potentials(torch, xs, ys, a, b, rows=rows)
        f_n, g_n = _potentials(np, xs.numpy(), ys.numpy(), a.numpy(), b.numpy(), rows=rows)
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(f_t, torch.from_numpy(f_n), rtol=tol, atol=tol)
        torch.testing.assert_close(g_t, torch.from_numpy(g_n), rtol=tol, atol=tol)
        assert f_t.dtype == g_t.dtype == dtype


def _spd(g, d):
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    return (m @ m.T + 0.3 * torch.eye(d, dtype=torch.float64)).numpy()


@pytest.mark.parametrize("eps", [0.05, 1.0, 20.0])
def test_the_entropic_curvature_solves_the_gaussian_plan_equation(eps):
    """Q gives the conditional covariance S of y given x, (eps / 2) S^{-1} = Q + (eps / 2)
    B^{-1}, which must solve (2 / eps)^2 S A S + S = B (the cross block of the plan's precision
    is -(2 / eps) I); at eps -> 0, Q tends to the Monge map's matrix."""
    g = torch.Generator().manual_seed(11)
    for d in (1, 2, 3):
        s_from, s_to = _spd(g, d)[None], _spd(g, d)[None]
        q = _curvature(np, s_from, s_to, eps)
        cond = 0.5 * eps * np.linalg.inv(q + 0.5 * eps * np.linalg.inv(s_to))
        lhs = (2 / eps) ** 2 * cond @ s_from @ cond + cond
        np.testing.assert_allclose(lhs, s_to, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(_curvature(np, s_from, s_to, 1e-9),
                                   _curvature(np, s_from, s_to, 0.0), rtol=1e-7, atol=1e-9)


def test_the_entropic_guess_is_near_the_entropic_potentials():
    """Between Gaussian samples the entropic guess is much nearer the converged g than the
    unregularized one, the more so at a large eps (up to constants)."""
    x, y = _clouds(12, n=1500, m=1500)
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    for rel in (1.0, 0.1):
        eps = rel * float(cost.mean())
        solved = sinkhorn(PointCloud(x, y), eps=eps, tol=1e-10, max_iter=50_000, init="zeros")
        uniform = torch.full((1, 1500), 1 / 1500, dtype=torch.float64)
        gaps = []
        for guess_eps in (eps, 0.0):
            _, g = gaussian_potentials(x[None], y[None], uniform, uniform, eps=guess_eps)
            gap = g[0] - solved.g
            gaps.append(float((gap - gap.mean()).pow(2).mean().sqrt()))
        assert gaps[0] < (0.05 if rel == 1.0 else 0.5) * gaps[1], (rel, gaps)
