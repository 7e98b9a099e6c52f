"""Unbalanced entropic OT (``sinkhorn(..., rho=...)``) and the unbalanced Sinkhorn divergence.

References: POT's ``ot.unbalanced.sinkhorn_unbalanced`` (same objective with its default
``reg_type="kl"``), the primal objective evaluated on POT's plan, central finite differences,
GeomLoss for the ``reach`` convention, and the balanced solver as ``rho -> inf``.
"""

import math

import numpy as np
import ot
import pytest
import torch

from couplings import ConvergenceWarning, SinkhornLoss, sinkhorn, sinkhorn_divergence

from ._problems import random_problem

RHOS = [0.5, 3.0, (0.4, 2.0), (math.inf, 1.0), (1.5, None)]


def _pair(rho):
    return rho if isinstance(rho, tuple) else (rho, rho)


def _kl(p, q):
    """Generalized KL, ``sum p log(p / q) - p + q``."""
    p, q = np.asarray(p), np.asarray(q)
    pos = p > 0
    return float(np.sum(p[pos] * np.log(p[pos] / q[pos])) - p.sum() + q.sum())


def _primal(plan, c, a, b, eps, rho):
    """The unbalanced objective of a plan (numpy), independent of the solver."""
    rho_a, rho_b = (math.inf if r is None else r for r in _pair(rho))
    val = float(np.sum(plan * c)) + eps * _kl(plan, np.outer(a, b))
    if not math.isinf(rho_a):
        val += rho_a * _kl(plan.sum(1), a)
    if not math.isinf(rho_b):
        val += rho_b * _kl(plan.sum(0), b)
    return val


def _unequal_problem(n=8, m=11, seed=3, ma=1.7, mb=0.6, **kw):
    x, y, a, b, c = random_problem(n, m, seed=seed, **kw)
    return x, y, a * ma, b * mb, c


@pytest.mark.parametrize("rho", RHOS)
def test_plan_and_value_match_pot(rho):
    _, _, a, b, c = _unequal_problem()
    eps = 0.3
    res = sinkhorn(c, a, b, eps=eps, rho=rho, tol=1e-13, max_iter=100_000)
    reg_m = tuple(math.inf if r is None else r for r in _pair(rho))
    an, bn, cn = a.numpy(), b.numpy(), c.numpy()
    plan, log = ot.unbalanced.sinkhorn_unbalanced(
        an, bn, cn, eps, reg_m, reg_type="kl", numItermax=100_000, stopThr=1e-15, log=True
    )
    assert bool(res.converged)
    torch.testing.assert_close(res.plan, torch.from_numpy(plan), rtol=1e-6, atol=1e-12)
    # value = the primal objective (generalized KL) at POT's plan; POT's own "total_cost" drops
    # the mass terms of the KLs, so it is not comparable
    assert float(res.value) == pytest.approx(_primal(plan, cn, an, bn, eps, rho), rel=1e-9)
    assert float(res.linear_value) == pytest.approx(float(log["cost"]), rel=1e-8)


def test_value_is_dual_and_primal_objective():
    _, _, a, b, c = _unequal_problem(seed=4)
    for rho in (0.2, 5.0):
        res = sinkhorn(c, a, b, eps=0.1, rho=rho, tol=1e-13, max_iter=100_000)
        primal = _primal(res.plan.numpy(), c.numpy(), a.numpy(), b.numpy(), 0.1, rho)
        assert float(res.value) == pytest.approx(primal, rel=1e-10)
        # the error is the residual of the optimality conditions P1 = a exp(-f / rho)
        assert torch.allclose(res.plan.sum(1), a * torch.exp(-res.f / rho), atol=1e-12)
        assert torch.allclose(res.plan.sum(0), b * torch.exp(-res.g / rho), atol=1e-12)


def test_unequal_masses_need_rho():
    _, _, a, b, c = _unequal_problem()
    with pytest.raises(ValueError, match="equal total mass"):
        sinkhorn(c, a, b, eps=0.3)
    # one relaxed side is enough
    res = sinkhorn(c, a, b, eps=0.3, rho=(None, 1.0), tol=1e-10)
    assert bool(res.converged)
    torch.testing.assert_close(res.plan.sum(1), a)  # the balanced side holds


@pytest.mark.parametrize(
    "rho, err", [(0.0, ValueError), (-1.0, ValueError), (math.nan, ValueError), ("1", TypeError),
                 ((1.0, 2.0, 3.0), ValueError), (True, TypeError)]
)
def test_bad_rho_is_refused(rho, err):
    _, _, a, b, c = random_problem(4, 5)
    with pytest.raises(err, match="rho"):
        sinkhorn(c, a, b, eps=0.3, rho=rho)


def test_large_rho_tends_to_balanced_plan():
    _, _, a, b, c = random_problem(10, 12, seed=2)
    bal = sinkhorn(c, a, b, eps=0.5, tol=1e-12, max_iter=10_000)
    errs = []
    for rho in (1e0, 1e2, 1e4):
        ub = sinkhorn(c, a, b, eps=0.5, rho=rho, tol=1e-9, max_iter=200_000)
        errs.append(float((ub.plan - bal.plan).abs().sum()))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3


def _fd_check(grad, rho):
    _, _, a, b, c = random_problem(5, 6, seed=1)
    a = a * 1.3
    eps = 0.4
    g = torch.Generator().manual_seed(5)
    dc, da, db, w = (torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (c, a, b, c))

    def outs(c_, a_, b_, mode):
        r = sinkhorn(c_, a_, b_, eps=eps, rho=rho, tol=1e-13, max_iter=100_000, grad=mode)
        return r.value, (r.plan * w).sum() + (r.f**2).sum() + r.g.sum()

    h = 1e-6
    plus, minus = outs(c + h * dc, a + h * da, b + h * db, "unroll"), outs(
        c - h * dc, a - h * da, b - h * db, "unroll"
    )
    cc, aa, bb = (t.clone().requires_grad_() for t in (c, a, b))
    value, other = outs(cc, aa, bb, grad)
    targets = [(value, (plus[0] - minus[0]) / (2 * h))]
    if grad != "envelope":  # envelope: only the value carries gradients
        targets.append((other, (plus[1] - minus[1]) / (2 * h)))
    for out, fd in targets:
        grads = torch.autograd.grad(out, (cc, aa, bb), retain_graph=True)
        ad = sum((gi * di).sum() for gi, di in zip(grads, (dc, da, db), strict=True))
        assert float(ad) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("grad", ["unroll", "implicit", "envelope"])
@pytest.mark.parametrize("rho", [0.7, (2.0, None)])
def test_gradients_match_finite_differences(grad, rho):
    _fd_check(grad, rho)


def test_implicit_matches_unroll_on_larger_problem():
    _, _, a, b, c = random_problem(20, 14, seed=8)  # m < n: the adjoint is solved on columns
    w = torch.randn(c.shape, generator=torch.Generator().manual_seed(1), dtype=c.dtype)
    grads = []
    for mode in ("unroll", "implicit"):
        cc = c.clone().requires_grad_()
        r = sinkhorn(cc, a * 2, b, eps=0.2, rho=0.5, tol=1e-12, max_iter=100_000, grad=mode)
        (g,) = torch.autograd.grad((r.plan * w).sum() + r.value, cc)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-9)


def test_batch_scaling_symmetric_and_float32():
    _, _, a, b, c = random_problem(12, 12, seed=5, batch=3)
    a = a * torch.tensor([[0.5], [1.0], [2.0]], dtype=a.dtype)
    batch = sinkhorn(c, a, b, eps=0.05, rho=0.3, tol=1e-10, max_iter=50_000)
    for i in range(3):
        one = sinkhorn(c[i], a[i], b[i], eps=0.05, rho=0.3, tol=1e-10, max_iter=50_000)
        torch.testing.assert_close(batch.value[i], one.value)
        torch.testing.assert_close(batch.plan[i], one.plan)
    scaled = sinkhorn(c, a, b, eps=0.05, rho=0.3, tol=1e-10, max_iter=50_000, scaling=0.8)
    torch.testing.assert_close(scaled.value, batch.value, rtol=1e-7, atol=0)
    # the averaged update on a symmetric problem equals the alternating one
    x, _, a1, _, _ = random_problem(15, 15, seed=6)
    cs = torch.cdist(x, x) ** 2
    sym = sinkhorn(cs, a1 * 3, a1 * 3, eps=0.2, rho=1.0, tol=1e-12, symmetric=True)
    alt = sinkhorn(cs, a1 * 3, a1 * 3, eps=0.2, rho=1.0, tol=1e-12, max_iter=10_000)
    torch.testing.assert_close(sym.value, alt.value)
    torch.testing.assert_close(sym.f, alt.f, rtol=1e-7, atol=1e-9)
    # float32, small eps: finite and close to float64
    r32 = sinkhorn(c[0].float(), a[0].float(), b[0].float(), eps=1e-3, rho=0.3, scaling=0.9,
                   tol=1e-4, max_iter=20_000)
    r64 = sinkhorn(c[0], a[0], b[0], eps=1e-3, rho=0.3, scaling=0.9, tol=1e-10, max_iter=20_000)
    assert torch.isfinite(r32.plan).all() and r32.value.dtype == torch.float32
    assert float(r32.value) == pytest.approx(float(r64.value), rel=1e-4)


def test_warns_when_not_converged():
    _, _, a, b, c = _unequal_problem()
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = sinkhorn(c, a, b, eps=0.01, rho=100.0, max_iter=5)
    assert not res.all_converged and float(res.error) > 1e-6


# ---------------------------------------------------------------- the unbalanced divergence


def _clouds(seed, n, m, ma, mb):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = torch.randn(m, 2, generator=g, dtype=torch.float64) * 0.7 + 0.3
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.1
    return x, y, a / a.sum() * ma, b / b.sum() * mb


def test_divergence_is_non_negative_on_random_problems():
    g = torch.Generator().manual_seed(123)
    for seed in range(12):
        ma, mb = (float(t) for t in torch.rand(2, generator=g) * 2 + 0.2)
        x, y, a, b = _clouds(seed, 10 + seed, 14, ma, mb)
        for eps in (0.05, 1.0):
            for rho in (0.1, 1.0, 10.0):
                d = sinkhorn_divergence(x, y, a, b, eps=eps, rho=rho, tol=1e-10, max_iter=50_000)
                assert float(d) >= -1e-10, (seed, eps, rho, float(d))
    # pure mass difference on the same support: positive
    x, _, a, _ = _clouds(0, 20, 20, 1.0, 1.0)
    assert float(sinkhorn_divergence(x, x, a, 2 * a, eps=0.3, rho=1.0, tol=1e-12)) > 1e-3


def test_divergence_is_zero_on_equal_inputs():
    x, _, a, _ = _clouds(1, 25, 25, 2.5, 1.0)
    d = sinkhorn_divergence(x, x, a, a, eps=0.3, rho=0.5, tol=1e-12)
    assert abs(float(d)) < 1e-12


def test_divergence_tends_to_balanced_as_rho_grows():
    x, y, a, b = _clouds(7, 20, 25, 1.0, 1.0)
    opts = dict(eps=0.3, tol=1e-9, max_iter=200_000)
    bal = float(sinkhorn_divergence(x, y, a, b, **opts))
    errs = []
    for rho in (1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6):
        d = float(sinkhorn_divergence(x, y, a, b, rho=rho, **opts))
        errs.append(abs(d - bal) / bal)
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:], strict=False)), errs
    assert errs[0] > 0.1 and errs[-1] < 1e-4, errs


def test_reach_matches_geomloss():
    geomloss = pytest.importorskip("geomloss")
    x, y, a, b = _clouds(0, 20, 25, 1.4, 1.0)
    blur, reach = 0.5, 0.8
    loss = geomloss.SamplesLoss(
        "sinkhorn", p=2, blur=blur, reach=reach, scaling=0.999, backend="tensorized"
    )
    theirs = float(loss(a, x, b, y))  # GeomLoss halves the squared Euclidean cost
    ours = float(sinkhorn_divergence(x, y, a, b, eps=2 * blur**2, reach=reach, tol=1e-12))
    assert ours / 2 == pytest.approx(theirs, rel=1e-4)
    rho = float(sinkhorn_divergence(x, y, a, b, eps=2 * blur**2, rho=2 * reach**2, tol=1e-12))
    assert ours == rho
    with pytest.raises(ValueError, match="not both"):
        sinkhorn_divergence(x, y, a, b, eps=0.5, rho=1.0, reach=1.0)
    with pytest.raises(ValueError, match="reach is defined"):
        sinkhorn_divergence(x, y, a, b, eps=0.5, reach=1.0, cost="cosine")


def test_sinkhorn_loss_accepts_rho_and_differentiates():
    x, y, a, b = _clouds(2, 16, 18, 1.5, 1.0)
    x = x.clone().requires_grad_()
    loss = SinkhornLoss(eps=0.5, rho=1.0, tol=1e-10)
    value = loss(x, y, a, b)
    value.backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    ref = sinkhorn_divergence(x.detach(), y, a, b, eps=0.5, rho=1.0, tol=1e-10)
    torch.testing.assert_close(value.detach(), ref)
    # the point gradient matches finite differences (envelope, at convergence)
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    h = 1e-6
    fd = (loss(x.detach() + h * d, y, a, b) - loss(x.detach() - h * d, y, a, b)) / (2 * h)
    assert float((x.grad * d).sum()) == pytest.approx(float(fd), rel=1e-5)
