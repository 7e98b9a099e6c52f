"""Over-relaxed Sinkhorn (``momentum=``): same answers as plain iterations in fewer of them,
an honest error when the columns are no longer exact, and the cases where it is off."""

import importlib

import pytest
import torch

from couplings import PointCloud, sinkhorn
from couplings.solvers._softmin import KernelSoftmin
from couplings.solvers.sinkhorn import _refine_points, _refined_rate, _relaxation, _relaxed

from ._problems import random_problem

sinkhorn_module = importlib.import_module("couplings.solvers.sinkhorn")


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


def test_relaxed_update_caps_only_a_large_extrapolation():
    old = torch.tensor([[0.0, 0.0, 0.0, 10.0]], dtype=torch.float64, requires_grad=True)
    new = torch.tensor([[1.0, -2.0, 20.0, 0.0]], dtype=torch.float64)
    omega = torch.tensor([[1.5]], dtype=torch.float64)
    cap = sinkhorn_module._EXTRAPOLATION_CAP
    out = _relaxed(old, new, omega - 1)
    # small steps: plain over-relaxation; large ones: new plus the cap, in the step's direction
    expected = torch.tensor([[1.5, -3.0, 20.0 + cap, -cap]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)
    out.sum().backward()  # uncapped entries depend on old (1 - omega), capped ones not at all
    torch.testing.assert_close(old.grad, torch.tensor([[-0.5, -0.5, 0.0, 0.0]],
                                                      dtype=torch.float64))


def test_capped_extrapolation_saves_iterations_at_a_small_eps(monkeypatch):
    """At eps = 0.001 x mean cost the switch to over-relaxation extrapolates steps of many eps;
    the cap saves iterations there (22% on these three problems when it was chosen) and
    changes no solution."""
    def problems():
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(200, 2, generator=g)
            y = torch.randn(200, 2, generator=g) * torch.tensor([0.5, 2.0]) + 1.0
            yield torch.cdist(x, y) ** 2

    def solve_all():
        return [sinkhorn(c, eps=0.001 * float(c.mean()), tol=1e-4, max_iter=20_000,
                         scaling=None) for c in problems()]

    capped = solve_all()
    monkeypatch.setattr(sinkhorn_module, "_EXTRAPOLATION_CAP", float("inf"))
    uncapped = solve_all()
    assert all(bool(r.converged) for r in capped + uncapped)
    assert sum(r.n_iter for r in capped) < 0.9 * sum(r.n_iter for r in uncapped)
    for r1, r2 in zip(capped, uncapped, strict=True):
        torch.testing.assert_close(r1.value, r2.value, rtol=1e-3, atol=0)


def test_refined_rate_inverts_the_relaxed_rate():
    # below the optimum, the relaxed rate of omega for a plain rate eta is the largest root of
    # (lam + omega - 1)^2 = lam omega^2 eta; the refinement recovers eta from it
    eta = torch.tensor([0.5, 0.9, 0.97], dtype=torch.float64)
    omega = torch.tensor([1.1, 1.3, 1.5], dtype=torch.float64)  # each below its optimum
    assert bool((omega < _relaxation(eta)).all())
    # lam^2 + (2 (omega - 1) - omega^2 eta) lam + (omega - 1)^2 = 0, largest root
    p = 2 * (omega - 1) - omega**2 * eta
    lam = (-p + torch.sqrt(p * p - 4 * (omega - 1) ** 2)) / 2
    assert bool((lam > omega - 1).all()) and bool((lam < 1).all())
    torch.testing.assert_close(_refined_rate(torch.zeros(3, dtype=torch.float64), lam, omega),
                               eta)
    # at or above the optimum (lam = omega - 1) it gives back the rate omega was chosen for,
    # and never less: omega only grows by refinement
    at = _relaxation(eta)
    torch.testing.assert_close(_refined_rate(torch.zeros(3, dtype=torch.float64), at - 1, at),
                               eta)
    for scale in (0.5, 0.9, 1.1, 1.5):
        assert bool((_refined_rate(eta, (at - 1) * scale, at) >= eta).all())
    # an error that did not decrease over the window refines nothing
    bad = torch.tensor([1.0, float("nan"), 0.0], dtype=torch.float64)
    torch.testing.assert_close(_refined_rate(eta, bad, omega), eta)


def test_refinement_windows_double():
    assert list(_refine_points(200).items()) == [(20, 8), (36, 16), (68, 32), (132, 64)]
    assert _refine_points(19) == {}


def test_adaptive_relaxation_comes_near_the_best_fixed_omega():
    # the first rate (iterations 4 to 8) is measured in the transport phase and underestimates
    # the asymptotic one; the refinement brings the iterations within 1.5x of the best fixed
    # omega of a grid, problem by problem (without it: 1.9x-2.5x on the harder three)
    _, _, a, b, c = random_problem(30, 40, seed=11, batch=4)
    eps = torch.tensor([0.3, 0.1, 0.05, 0.02], dtype=c.dtype)[:, None, None]
    opts = dict(eps=1.0, tol=1e-8, max_iter=5000, check_every=1)
    auto = sinkhorn(c / eps, a, b, momentum="adaptive", **opts)
    assert bool(auto.converged.all())
    best = torch.stack([sinkhorn(c / eps, a, b, momentum=om, **opts).n_iter_per_problem
                        for om in (1.0, 1.3, 1.5, 1.6, 1.7, 1.8)]).min(0).values
    assert bool((auto.n_iter_per_problem <= 1.5 * best).all()), (auto.n_iter_per_problem, best)


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
    # (no annealing: the online backend bounds the cost range by the bounding box, so "auto"
    # may anneal it from one stage higher)
    kw = dict(eps=0.02, tol=1e-9, scaling=None)
    ref = sinkhorn(PointCloud(x, y), a[0], b[0], backend="tensorized", **kw)
    res = sinkhorn(PointCloud(x, y), a[0], b[0], backend=backend, **kw)
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


def test_result_reports_the_final_omega():
    _, _, a, b, c = random_problem(20, 25, seed=4, batch=5)
    eps = torch.tensor([0.5, 0.1, 0.03, 0.01, 0.2], dtype=c.dtype)
    c = c / eps[:, None, None]
    kw = dict(eps=1.0, tol=1e-9, max_iter=20_000)
    plain = sinkhorn(c, a, b, momentum=1.0, **kw)
    torch.testing.assert_close(plain.omega, torch.ones(5, dtype=c.dtype))
    fixed = sinkhorn(c, a, b, momentum=1.5, **kw)
    torch.testing.assert_close(fixed.omega, torch.full((5,), 1.5, dtype=c.dtype))
    # adaptive: relaxed where it helps, each problem's own omega (as when solved alone), and
    # within the cap of 2 / (1 + sqrt(0.01))
    auto = sinkhorn(c, a, b, **kw)
    assert bool((auto.omega >= 1).all()) and bool((auto.omega <= 1.8182).all())
    assert bool((auto.omega > 1.3).any())
    for i in range(5):
        one = sinkhorn(c[i], a[i], b[i], **kw)
        # (to rounding: the kernel backend re-anchors when any problem of the batch needs it)
        assert one.omega.shape == ()
        assert float(one.omega) == pytest.approx(float(auto.omega[i]), rel=1e-9, abs=0)
    # a symmetric problem is never relaxed
    x = random_problem(20, 20, seed=5)[0]
    sym = sinkhorn(torch.cdist(x, x) ** 2, eps=0.1, symmetric=True)
    assert bool(sym.converged) and float(sym.omega) == 1.0


def _gaussians(seed, n=300, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = torch.randn(n, 2, generator=g) * torch.tensor([0.5, 2.0]) + shift
    return torch.cdist(x, y) ** 2


def test_adaptive_starts_relaxed_at_a_moderate_eps(monkeypatch):
    """At eps = 0.1 x mean cost a solve is short, and plain iterations until the rate is known
    were a third of it: the relaxed start saves iterations there (30-40% on n = 1000 problems
    when it was chosen) and changes no solution."""
    costs = [_gaussians(seed) for seed in range(3)]

    def solve_all():
        return [sinkhorn(c, eps=0.1 * float(c.mean()), tol=1e-4, max_iter=1000) for c in costs]

    relaxed = solve_all()
    monkeypatch.setattr(sinkhorn_module, "_START_OMEGA", 1.0)
    plain = solve_all()
    assert all(bool(r.converged) for r in relaxed + plain)
    assert sum(r.n_iter for r in relaxed) < 0.8 * sum(r.n_iter for r in plain)
    for r1, r2 in zip(relaxed, plain, strict=True):
        torch.testing.assert_close(r1.value, r2.value, rtol=1e-4, atol=0)


def test_a_batch_of_relaxed_and_plain_starts_equals_one_by_one(monkeypatch):
    """Without annealing, a problem whose cost range is at least _AUTO_RANGE_RATIO eps starts
    plain and the others relaxed; in one batch, each as it would alone."""
    base = _gaussians(5, n=60).double()
    c = torch.stack([base, 1.1 * base])  # ranges of 0.95 and 1.045 x the threshold in eps
    eps = float(base.amax() - base.amin()) / (0.95 * sinkhorn_module._AUTO_RANGE_RATIO)
    kw = dict(eps=eps, tol=1e-5, max_iter=50_000, scaling=None)
    starts = []
    relaxed = sinkhorn_module._relaxed

    def record(excess):  # the first relaxed update records each problem's omega
        if not starts and excess is not None:
            starts.append((excess.squeeze(-1) + 1).tolist())

    def spy(old, new, excess):
        record(excess)
        return relaxed(old, new, excess)

    fused = KernelSoftmin.fused_update

    def spy_fused(self, rows, *args, **kwargs):  # the relaxation fused into the update
        record(kwargs["excess"])
        return fused(self, rows, *args, **kwargs)

    monkeypatch.setattr(sinkhorn_module, "_relaxed", spy)
    monkeypatch.setattr(KernelSoftmin, "fused_update", spy_fused)
    batch = sinkhorn(c, **kw)
    assert starts[0] == [sinkhorn_module._START_OMEGA, 1.0]
    for i in range(2):
        alone = sinkhorn(c[i], **kw)
        assert bool(alone.converged) and int(batch.n_iter_per_problem[i]) == alone.n_iter
        torch.testing.assert_close(batch.f[i], alone.f, rtol=0, atol=1e-10)
        torch.testing.assert_close(batch.g[i], alone.g, rtol=0, atol=1e-10)
