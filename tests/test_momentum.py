"""Over-relaxed Sinkhorn (``momentum=``): same answers as plain iterations in fewer of them,
an honest error when the columns are no longer exact, and the cases where it is off."""

import pytest
import torch

from couplings import PointCloud, sinkhorn
from couplings.solvers.sinkhorn import _relaxation

from ._problems import random_problem


def _marginal_error(res, a, b):
    plan = res.plan
    return (plan.sum(-1) - a).abs().sum(-1) + (plan.sum(-2) - b).abs().sum(-1)


def test_relaxation_formula_and_cap():
    rate = torch.tensor([0.0, 0.75, 0.99, 0.999, float("nan")], dtype=torch.float64)
    omega = _relaxation(rate)
    expected = 2 / (1 + torch.sqrt(1 - torch.tensor([0.0, 0.75, 0.99, 0.99, 0.0],
                                                    dtype=torch.float64)))
    torch.testing.assert_close(omega, expected)
    assert float(omega[2]) == pytest.approx(1.8181818, rel=1e-6)
    # an error that did not decrease gives no relaxation (not the largest omega)
    flat = _relaxation(torch.tensor([1.0, 1.5, float("inf")], dtype=torch.float64))
    torch.testing.assert_close(flat, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("momentum", ["auto", "adaptive", 1.5])
def test_same_solution_in_fewer_iterations(momentum):
    _, _, a, b, c = random_problem(40, 40, seed=6)
    eps = 0.002 * float(c.mean())
    plain = sinkhorn(c, a, b, eps=eps, tol=1e-9, max_iter=100_000, momentum=1.0)
    fast = sinkhorn(c, a, b, eps=eps, tol=1e-9, max_iter=100_000, momentum=momentum)
    assert bool(plain.converged) and bool(fast.converged)
    assert fast.n_iter < plain.n_iter / (2 if momentum == 1.5 else 5)
    torch.testing.assert_close(fast.value, plain.value, rtol=1e-7, atol=0)
    torch.testing.assert_close(fast.plan, plain.plan, rtol=0, atol=1e-8)
    assert float(_marginal_error(fast, a, b)) <= 1e-9


def test_error_counts_both_marginals_when_relaxed():
    # a fixed-depth relaxed solve stops anywhere: its reported error must be the full L1
    # violation of the plan, rows and columns (the columns are not exact after a relaxed update)
    _, _, a, b, c = random_problem(12, 15, seed=3)
    for omega in (1.0, 1.3, 1.7):
        res = sinkhorn(c, a, b, eps=0.05, min_iter=23, max_iter=23, momentum=omega)
        col = float((res.plan.sum(-2) - b).abs().sum())
        assert (col > 1e-6) == (omega != 1.0)
        torch.testing.assert_close(res.error, _marginal_error(res, a, b), rtol=1e-9, atol=1e-15)


def test_batch_equals_one_by_one_with_adaptive_relaxation():
    _, _, a, b, c = random_problem(20, 25, seed=4, batch=5)
    eps = torch.tensor([0.5, 0.1, 0.03, 0.01, 0.2], dtype=c.dtype)
    c = c / eps[:, None, None]  # problems of very different difficulty at one eps
    res = sinkhorn(c, a, b, eps=1.0, tol=1e-9, max_iter=20_000)
    for i in range(5):
        one = sinkhorn(c[i], a[i], b[i], eps=1.0, tol=1e-9, max_iter=20_000)
        assert int(res.n_iter_per_problem[i]) == one.n_iter
        torch.testing.assert_close(res.f[i], one.f, rtol=0, atol=1e-12)
        torch.testing.assert_close(res.g[i], one.g, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["compiled", "kernel", "online"])
def test_backends_relax_alike(backend):
    x, y, a, b, _ = random_problem(30, 35, seed=8)
    a, b = a.unsqueeze(0), b.unsqueeze(0)
    ref = sinkhorn(PointCloud(x, y), a[0], b[0], eps=0.02, tol=1e-9, backend="tensorized")
    res = sinkhorn(PointCloud(x, y), a[0], b[0], eps=0.02, tol=1e-9, backend=backend)
    assert res.backend == backend and res.n_iter == ref.n_iter
    torch.testing.assert_close(res.f, ref.f, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.g, ref.g, rtol=0, atol=1e-10)


def test_auto_is_plain_for_fixed_depth_symmetric_and_unbalanced():
    _, _, a, b, c = random_problem(10, 10, seed=2)
    layer = sinkhorn(c, a, b, eps=0.1, min_iter=7, max_iter=7)
    plain = sinkhorn(c, a, b, eps=0.1, min_iter=7, max_iter=7, momentum=1.0)
    torch.testing.assert_close(layer.f, plain.f, rtol=0, atol=0)
    ub = sinkhorn(c, a, b, eps=0.1, rho=1.0)
    ub_plain = sinkhorn(c, a, b, eps=0.1, rho=1.0, momentum=1.0)
    torch.testing.assert_close(ub.f, ub_plain.f, rtol=0, atol=0)
    cs = 0.5 * (c + c.T)
    sym = sinkhorn(cs, a, a, eps=0.1, symmetric=True)
    sym_plain = sinkhorn(cs, a, a, eps=0.1, symmetric=True, momentum=1.0)
    torch.testing.assert_close(sym.f, sym_plain.f, rtol=0, atol=0)


def test_bad_momentum_is_rejected():
    _, _, a, b, c = random_problem(6, 7)
    for bad in (2.0, 2.5, 0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="momentum"):
            sinkhorn(c, a, b, eps=0.1, momentum=bad)
    with pytest.raises(ValueError, match="momentum"):
        sinkhorn(c, a, b, eps=0.1, momentum="fast")
    with pytest.raises(TypeError, match="momentum"):
        sinkhorn(c, a, b, eps=0.1, momentum=[1.5])
    with pytest.raises(ValueError, match="unbalanced"):
        sinkhorn(c, a, b, eps=0.1, rho=1.0, momentum=1.5)
    cs = c[:6, :6] + c[:6, :6].T
    with pytest.raises(ValueError, match="symmetric"):
        sinkhorn(cs, a, a, eps=0.1, symmetric=True, momentum="adaptive")
