"""IPOT (inexact proximal point OT): exact OT values against POT's network simplex, gradients by
finite differences and Danskin's theorem, batching, float32, validation."""

import ot
import pytest
import torch

from couplings import ConvergenceWarning, PointCloud
from couplings.solvers import ipot

from ._problems import random_problem


def _emd2(a, b, c):
    return float(ot.emd2(a.double().numpy(), b.double().numpy(), c.double().numpy()))


@pytest.mark.parametrize("n, m, seed", [(30, 40, 2), (60, 50, 1), (100, 120, 3)])
def test_default_call_matches_emd2(n, m, seed):
    _, _, a, b, c = random_problem(n, m, seed=seed)
    res = ipot(c, a, b)
    exact = _emd2(a, b, c)
    assert bool(res.converged) and res.solver == "ipot" and res.eps is None
    assert abs(float(res.value) - exact) / exact < 1e-4
    assert float(res.linear_value) == pytest.approx(float(res.value), rel=1e-12)
    # the plan is (nearly) feasible: exact column marginals, reported row error
    torch.testing.assert_close(res.plan.sum(-2), b, rtol=0, atol=1e-12)
    assert float((res.plan.sum(-1) - a).abs().sum()) == pytest.approx(float(res.error), rel=1e-6)
    assert float(res.error) <= 1e-5


def test_converges_to_the_exact_plan_and_potentials():
    _, _, a, b, c = random_problem(8, 10, seed=4)
    res = ipot(c, a, b, tol=1e-6, max_iter=50_000, check_every=20)
    plan, log = ot.emd(a.numpy(), b.numpy(), c.numpy(), log=True)
    # a random problem has a unique optimal plan
    torch.testing.assert_close(res.plan, torch.from_numpy(plan), rtol=0, atol=1e-6)
    # the potentials tend to dual optimal ones (up to the additive constant)
    shift = float((res.f - torch.from_numpy(log["u"])).mean())
    torch.testing.assert_close(res.f - shift, torch.from_numpy(log["u"]), rtol=0, atol=2e-3)


def test_float32_and_small_beta_are_safe():
    _, _, a, b, c = random_problem(40, 30, seed=5)
    exact = _emd2(a, b, c)
    res = ipot(c.float(), a.float(), b.float())
    assert res.plan.dtype == torch.float32 and bool(torch.isfinite(res.plan).all())
    assert abs(float(res.value) - exact) / exact < 1e-4
    # beta far below the cost scale (C / beta ~ 1e3): the absorbed cost is large, the log domain
    # keeps it finite, and float32 follows the float64 run of the same steps
    opts = dict(beta=1e-3 * float(c.mean()), n_inner=5, max_iter=100, min_iter=100)
    small = ipot(c.float(), a.float(), b.float(), **opts)
    small64 = ipot(c, a, b, **opts)
    assert bool(torch.isfinite(small.plan).all()) and bool(torch.isfinite(small.value))
    assert float(small.value) == pytest.approx(float(small64.value), rel=1e-3)


def test_batch_equals_one_by_one():
    _, _, a, b, c = random_problem(15, 12, seed=6, batch=3)
    c = c * torch.tensor([1.0, 3.0, 0.5], dtype=c.dtype).reshape(3, 1, 1)  # different scales
    opts = dict(tol=1e-4, check_every=10)  # problems stop at different steps
    batch = ipot(c, a, b, **opts)
    assert len({int(ipot(c[i], a[i], b[i], **opts).n_iter) for i in range(3)}) > 1
    for i in range(3):
        one = ipot(c[i], a[i], b[i], **opts)
        assert one.converged.shape == ()
        torch.testing.assert_close(batch.value[i], one.value, rtol=1e-12, atol=0)
        torch.testing.assert_close(batch.plan[i], one.plan, rtol=1e-10, atol=1e-14)
        assert bool(batch.converged[i]) == bool(one.converged)


def test_batched_unroll_gradients_equal_one_by_one():
    _, _, a, b, c = random_problem(6, 7, seed=2, batch=3)
    cc = c.clone().requires_grad_()
    opts = dict(beta=0.3, max_iter=20, min_iter=20, grad="unroll")
    (batch,) = torch.autograd.grad(ipot(cc, a, b, **opts).value.sum(), cc)
    for i in range(3):
        ci = c[i].clone().requires_grad_()
        (one,) = torch.autograd.grad(ipot(ci, a[i], b[i], **opts).value, ci)
        torch.testing.assert_close(batch[i], one, rtol=1e-12, atol=1e-14)


def test_zero_weights_and_zero_cost():
    _, _, a, b, c = random_problem(20, 25, seed=3, zero_a=(0, 4), zero_b=(2,))
    res = ipot(c, a, b)
    exact = _emd2(a, b, c)
    assert abs(float(res.value) - exact) / exact < 1e-4
    assert float(res.plan[0].abs().sum()) == 0.0 and float(res.plan[:, 2].abs().sum()) == 0.0
    flat = ipot(torch.zeros(5, 6, dtype=torch.float64))
    assert bool(flat.converged) and float(flat.value) == 0.0


def test_point_cloud_geometry_and_uniform_weights():
    x, y, _, _, c = random_problem(20, 25, seed=7)
    res = ipot(PointCloud(x, y))
    exact = _emd2(torch.full((20,), 1 / 20), torch.full((25,), 1 / 25), c)
    assert abs(float(res.value) - exact) / exact < 1e-4


def test_unroll_gradients_match_finite_differences():
    _, _, a, b, c = random_problem(6, 7, seed=1)
    g = torch.Generator().manual_seed(3)
    dc, da, db = (torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (c, a, b))
    da, db = da - da.mean(), db - db.mean()  # keep the masses equal
    w = torch.randn(c.shape, generator=g, dtype=c.dtype)

    def out(c_, a_, b_):
        r = ipot(c_, a_, b_, beta=0.5, max_iter=30, min_iter=30, n_inner=2, grad="unroll")
        return r.value + (r.plan * w).sum()

    cc, aa, bb = (t.clone().requires_grad_() for t in (c, a, b))
    grads = torch.autograd.grad(out(cc, aa, bb), (cc, aa, bb))
    ad = sum((gi * di).sum() for gi, di in zip(grads, (dc, da, db), strict=True))
    h = 1e-6
    fd = (out(c + h * dc, a + h * da, b + h * db) - out(c - h * dc, a - h * da, b - h * db)) / (
        2 * h
    )
    assert float(ad) == pytest.approx(float(fd), rel=1e-6)


def test_envelope_gradient_is_the_plan_and_the_potentials():
    _, _, a, b, c = random_problem(8, 9, seed=8)
    cc, aa = c.clone().requires_grad_(), a.clone().requires_grad_()
    res = ipot(cc, aa, b, grad="envelope", tol=1e-8, max_iter=50_000, check_every=20)
    gc, ga = torch.autograd.grad(res.value, (cc, aa))
    torch.testing.assert_close(gc, res.plan)
    torch.testing.assert_close(ga, res.f)
    # Danskin: along a direction, the exact OT value's derivative is <P*, dC>
    d = torch.randn(c.shape, generator=torch.Generator().manual_seed(0), dtype=c.dtype)
    h = 1e-6
    fd = (_emd2(a, b, c + h * d) - _emd2(a, b, c - h * d)) / (2 * h)
    assert float((gc * d).sum()) == pytest.approx(fd, rel=1e-3)
    assert not res.plan.requires_grad


def test_fixed_depth_does_not_warn_and_non_convergence_warns():
    _, _, a, b, c = random_problem(10, 12, seed=9)
    res = ipot(c, a, b, beta=1.0, max_iter=10, min_iter=10)  # filterwarnings=error: no warning
    assert res.n_iter == 10
    with pytest.warns(ConvergenceWarning, match="ipot did not converge"):
        res = ipot(c, a, b, max_iter=20)
    assert not res.all_converged and res.n_iter == 20


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(beta=0.0), ValueError, "beta"),
        (dict(beta=-1.0), ValueError, "beta"),
        (dict(n_inner=0), ValueError, "n_inner"),
        (dict(grad="implicit"), ValueError, "grad"),
        (dict(max_iter=1.5), TypeError, "max_iter"),
        (dict(min_iter=-1), ValueError, "min_iter"),
    ],
)
def test_bad_options_are_refused(kwargs, err, match):
    _, _, a, b, c = random_problem(4, 5)
    with pytest.raises(err, match=match):
        ipot(c, a, b, **kwargs)


def test_unequal_masses_are_refused():
    _, _, a, b, c = random_problem(4, 5)
    with pytest.raises(ValueError, match="equal total mass"):
        ipot(c, a, 2 * b)
