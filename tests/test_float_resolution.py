"""Float32 solves: balanced potentials, an honest error, and the resolution they report."""

import math

import pytest
import torch

from couplings import ConvergenceWarning, PointCloud, sinkhorn


def _exact_error(res, cost, eps):
    """L1 marginal error of the plan of ``res``'s potentials, evaluated in float64."""
    f, g, c, a, b = (t.double() for t in (res.f, res.g, cost, res.a, res.b))
    plan = torch.exp((f[:, None] + g[None, :] - c) / eps) * a[:, None] * b[None, :]
    return float((plan.sum(1) - a).abs().sum() + (plan.sum(0) - b).abs().sum())


def _gaussians(n, m, seed, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=gen), torch.randn(m, 2, generator=gen) + shift


@pytest.mark.parametrize("backend", ["tensorized", "kernel"])
def test_float32_error_is_that_of_the_plan_it_returns(backend):
    # From v = 0 the potentials carry an offset of about C / eps, which float32 rounds at that
    # magnitude: unbalanced, this solve reported 4e-6 while its plan was off by 1.5e-5.
    x, y = _gaussians(300, 300, seed=0)
    cost = torch.cdist(x, y) ** 2
    with pytest.warns(ConvergenceWarning):  # tol is below what float32 reaches here
        res = sinkhorn(cost, eps=0.02, tol=1e-7, max_iter=1000, backend=backend)
    exact = _exact_error(res, cost, 0.02)
    assert exact <= 1.6 * max(float(res.error), float(res.resolution))
    # the loop kept <a, f> and <b, g> together (the result is balanced exactly at the end)
    assert abs(float(res.a @ res.f - res.b @ res.g)) < 1e-4 * float(res.a @ res.f.abs())


def test_default_tol_stops_at_the_float32_resolution_and_says_so():
    x, y = _gaussians(500, 400, seed=1, shift=1.0)
    geom = PointCloud(x, y)
    res = sinkhorn(geom, eps=0.01)  # default tol: 1e-6, or the resolution where coarser
    resolution = float(res.resolution)
    assert resolution > 1e-5  # float32 cannot certify 1e-6 here
    assert bool(res.converged) and 1e-6 < float(res.error) <= resolution
    assert _exact_error(res, geom.cost_matrix()[0], 0.01) <= 2 * resolution
    assert "float resolution" in res.summary()
    # in float64 the resolution is negligible and the default tol is 1e-6
    res64 = sinkhorn(PointCloud(x.double(), y.double()), eps=0.01)
    assert float(res64.resolution) < 1e-10 and float(res64.error) <= 1e-6
    assert "float resolution" not in res64.summary()


def test_resolution_follows_the_unit_roundoff_and_the_potentials():
    x, y = _gaussians(200, 150, seed=2, shift=0.5)
    res = sinkhorn(PointCloud(x, y), eps=0.05, tol=1e-4)
    a, b, f, g = res.a, res.b, res.f, res.g
    expected = torch.finfo(torch.float32).eps * float(a @ f.abs() + b @ g.abs()) / 0.05
    assert math.isclose(float(res.resolution), expected, rel_tol=1e-3)


def test_not_converging_below_the_resolution_names_it():
    x, y = _gaussians(300, 300, seed=3, shift=1.0)
    with pytest.warns(ConvergenceWarning, match="float32 resolution of the marginal error"):
        sinkhorn(PointCloud(x, y), eps=0.01, tol=1e-9, max_iter=200)
