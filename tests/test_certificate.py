"""The convergence certificate of OTResult: primal_value, dual_value, gap, rounded_plan.

References: the entropic objective evaluated (in numpy, independently of the library) on POT's
converged plans, a long-converged solve, weak duality (dual <= optimum <= primal of a feasible
plan), LP duality for exact OT (POT's network simplex), and the documented relation between
``value`` and ``dual_value`` at non-unit mass.
"""

import math

import numpy as np
import ot
import pytest
import torch

from couplings import ConvergenceWarning, emd, ipot, sinkhorn

from ._problems import random_problem

EPS = 0.05


def _kl(p, q):
    """Generalized KL, ``sum p log(p / q) - p + q`` (numpy)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    pos = p > 0
    return float(np.sum(p[pos] * np.log(p[pos] / q[pos])) - p.sum() + q.sum())


def _objective(plan, c, a, b, eps, rho=(math.inf, math.inf)):
    """The entropic (unbalanced) primal objective of a plan, written independently."""
    val = float(np.sum(plan * c)) + eps * _kl(plan, np.outer(a, b))
    for r, marg, w in ((rho[0], plan.sum(1), a), (rho[1], plan.sum(0), b)):
        if not math.isinf(r):
            val += r * _kl(marg, w)
    return val


def _fixed(c, a, b, n_iter, **kw):
    """A fixed-depth solve (no convergence warning)."""
    return sinkhorn(c, a, b, eps=EPS, min_iter=n_iter, max_iter=n_iter, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gap_nonnegative_and_decreasing_with_iterations(seed):
    _, _, a, b, c = random_problem(12, 17, batch=3, seed=seed)
    gaps = torch.stack([_fixed(c, a, b, k).gap for k in (1, 3, 10, 30, 100, 300, 1000)])
    assert bool((gaps >= -1e-13).all()), gaps
    # non-increasing along the iterations, up to float error
    assert bool((gaps[1:] <= gaps[:-1] * (1 + 1e-9) + 1e-13).all()), gaps
    assert bool((gaps[0] > 1e-3).all()) and bool((gaps[-1] < 1e-2 * gaps[0]).all()), gaps


def test_gap_vanishes_at_tight_tolerance():
    _, _, a, b, c = random_problem(15, 20, batch=4, seed=3)
    res = sinkhorn(c, a, b, eps=EPS, tol=1e-10, max_iter=100_000)
    assert res.all_converged
    assert bool((res.gap.abs() < 1e-8).all()), res.gap
    assert bool((res.error <= 1e-10).all())


@pytest.mark.parametrize("n_iter", [1, 5, 40])
def test_rounded_plan_is_feasible(n_iter):
    _, _, a, b, c = random_problem(10, 14, batch=2, seed=4, zero_a=(2,), zero_b=(0, 5))
    res = _fixed(c, a, b, n_iter)
    p = res.rounded_plan
    assert p.shape == (2, 10, 14) and bool((p >= 0).all())
    torch.testing.assert_close(p.sum(-1), a, rtol=0, atol=1e-12)
    torch.testing.assert_close(p.sum(-2), b, rtol=0, atol=1e-12)
    assert float(p[:, 2].abs().max()) == 0 and float(p[:, :, [0, 5]].abs().max()) == 0
    # the raw plan is not feasible this early: the rounding did something
    if n_iter < 40:
        assert float((res.plan.sum(-1) - a).abs().max()) > 1e-6


def test_gap_bounds_the_true_suboptimality():
    _, _, a, b, c = random_problem(12, 16, batch=3, seed=5)
    ref = sinkhorn(c, a, b, eps=EPS, tol=1e-13, max_iter=100_000)
    # the reference optimum: the objective of POT's converged plan, evaluated independently
    for i in range(3):
        plan = ot.sinkhorn(a[i].numpy(), b[i].numpy(), c[i].numpy(), EPS,
                           method="sinkhorn_log", numItermax=100_000, stopThr=1e-15)
        pot_value = _objective(plan, c[i].numpy(), a[i].numpy(), b[i].numpy(), EPS)
        assert abs(float(ref.primal_value[i]) - pot_value) < 1e-10
        assert abs(float(ref.dual_value[i]) - pot_value) < 1e-10
    opt = ref.dual_value
    for k in (2, 10, 50, 200):
        res = _fixed(c, a, b, k)
        assert bool((res.dual_value <= opt + 1e-12).all())
        assert bool((res.primal_value >= opt - 1e-12).all())
        assert bool(((opt - res.dual_value).abs() <= res.gap + 1e-12).all())
        assert bool(((res.primal_value - opt).abs() <= res.gap + 1e-12).all())
        # and the primal value is the objective of the rounded plan
        for i in range(3):
            direct = _objective(res.rounded_plan[i].numpy(), c[i].numpy(), a[i].numpy(),
                                b[i].numpy(), EPS)
            assert abs(direct - float(res.primal_value[i])) < 1e-12


def test_balanced_value_equals_dual_at_unit_mass_and_differs_by_eps_m_m2_otherwise():
    _, _, a, b, c = random_problem(9, 13, seed=6)
    unit = sinkhorn(c, a, b, eps=EPS, tol=1e-12, max_iter=100_000)
    torch.testing.assert_close(unit.value, unit.dual_value, rtol=0, atol=1e-12)
    mass = 2.5
    heavy = sinkhorn(c, mass * a, mass * b, eps=EPS, tol=1e-12, max_iter=100_000)
    assert abs(float(heavy.gap)) < 1e-9
    # value = <a, f> + <b, g> omits the -P + a x b terms of the generalized KL
    torch.testing.assert_close(heavy.value - heavy.dual_value,
                               torch.tensor(EPS * (mass - mass**2), dtype=c.dtype),
                               rtol=0, atol=1e-10)


RHOS = [0.5, (0.3, 2.0), (math.inf, 1.0), (1.5, math.inf)]  # at least one soft side each


@pytest.mark.parametrize("rho", RHOS)
def test_unbalanced_gap(rho):
    _, _, a, b, c = random_problem(10, 12, batch=2, seed=7)
    a, b = 1.6 * a, 0.7 * b
    hard = [math.isinf(r) for r in (rho if isinstance(rho, tuple) else (rho, rho))]
    gaps = []
    for k in (1, 5, 20, 100):
        res = sinkhorn(c, a, b, eps=EPS, rho=rho, min_iter=k, max_iter=k)
        assert bool((res.gap >= -1e-13).all()), res.gap
        gaps.append(res.gap)
        # the hard side of a semi-relaxed problem holds exactly on the rounded plan
        if hard[0]:
            torch.testing.assert_close(res.rounded_plan.sum(-1), a, rtol=0, atol=1e-12)
        if hard[1]:
            torch.testing.assert_close(res.rounded_plan.sum(-2), b, rtol=0, atol=1e-12)
        if not any(hard):  # fully unbalanced: no rounding needed
            assert torch.equal(res.rounded_plan, res.plan.detach())
    assert bool((gaps[-1] <= gaps[0]).all())
    conv = sinkhorn(c, a, b, eps=EPS, rho=rho, tol=1e-12, max_iter=100_000)
    assert bool((conv.gap.abs() < 1e-9).all()), conv.gap
    # the unbalanced value is the dual objective
    torch.testing.assert_close(conv.value, conv.dual_value, rtol=0, atol=1e-12)
    pair = tuple(math.inf if r is None else r for r in (rho if isinstance(rho, tuple)
                                                         else (rho, rho)))
    for i in range(2):  # primal value = the objective of the plan, written independently
        direct = _objective(conv.rounded_plan[i].numpy(), c[i].numpy(), a[i].numpy(),
                            b[i].numpy(), EPS, pair)
        assert abs(direct - float(conv.primal_value[i])) < 1e-10


def test_exact_solver_has_zero_gap():
    _, _, a, b, c = random_problem(10, 12, batch=3, seed=8, zero_a=(1,))
    res = emd(c, a, b)
    assert bool((res.gap.abs() < 1e-12).all()), res.gap
    torch.testing.assert_close(res.primal_value, res.value, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.dual_value, res.value, rtol=0, atol=1e-12)
    for i in range(3):
        exact = ot.emd2(a[i].numpy(), b[i].numpy(), c[i].numpy())
        assert abs(float(res.primal_value[i]) - exact) < 1e-12


def test_ipot_certificate_brackets_the_exact_value():
    _, _, a, b, c = random_problem(10, 12, batch=2, seed=9)
    res = ipot(c, a, b, max_iter=30, min_iter=30)
    exact = torch.tensor([ot.emd2(a[i].numpy(), b[i].numpy(), c[i].numpy()) for i in range(2)],
                         dtype=c.dtype)
    assert bool((res.dual_value <= exact + 1e-12).all())
    assert bool((res.primal_value >= exact - 1e-12).all())
    assert bool((res.gap > 0).all())


@pytest.mark.parametrize("batch", [None, 3])
def test_shapes_and_detached(batch):
    _, _, a, b, c = random_problem(6, 8, batch=batch, seed=10)
    c = c.clone().requires_grad_()
    res = sinkhorn(c, a, b, eps=0.2)
    lead = () if batch is None else (batch,)
    for name in ("primal_value", "dual_value", "gap"):
        t = getattr(res, name)
        assert t.shape == lead and t.dtype == c.dtype and not t.requires_grad, name
    assert res.rounded_plan.shape == lead + (6, 8) and not res.rounded_plan.requires_grad
    # the plan cached by the certificate still carries gradients
    res.plan.sum().backward()
    assert c.grad is not None


@pytest.mark.parametrize("rho", [None, 1.0])
def test_float32_certificate_is_finite(rho):
    _, _, a, b, c = random_problem(30, 25, batch=2, seed=11, dtype=torch.float32,
                                   zero_a=(3,), zero_b=(4,))
    with pytest.warns(ConvergenceWarning):  # a small eps needs more than 50 iterations
        res = sinkhorn(c, a, b, eps=1e-3, max_iter=50, scaling=0.8, rho=rho)
    for t in (res.primal_value, res.dual_value, res.gap, res.rounded_plan):
        assert bool(torch.isfinite(t).all())
    assert bool((res.gap >= -1e-4 * float(c.max())).all())


def test_summary_line():
    _, _, a, b, c = random_problem(6, 8, batch=2, seed=12)
    res = sinkhorn(c, a, b, eps=0.2)
    line = res.summary()
    assert line.startswith("sinkhorn (eps=0.2): 2 problems")
    for word in ("value", "gap", "error", "converged 2/2", f"n_iter {res.n_iter}"):
        assert word in line
    one = sinkhorn(c[0], a[0], b[0], eps=0.2).summary()
    assert "converged True" in one and "gap" in one and "\n" not in one
    assert emd(c[0], a[0], b[0]).summary().startswith("emd: value")
