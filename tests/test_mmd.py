"""MMD and energy distance against scipy, closed forms and their defining properties."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from couplings import MMD, EnergyDistance, energy_distance, mmd

F64 = torch.float64


def col(v):
    return torch.tensor(v, dtype=F64).reshape(-1, 1)


def test_scipy_documented_examples():
    assert float(energy_distance(col([0]), col([2]))) == pytest.approx(2.0, abs=1e-12)
    w = (torch.tensor([3.0, 1.0], dtype=F64), torch.tensor([2.0, 2.0], dtype=F64))
    assert float(energy_distance(col([0, 8]), col([0, 8]), *w)) == pytest.approx(1.0, abs=1e-12)
    value = energy_distance(col([0.7, 7.4, 2.4, 6.8]), col([1.4, 8.0]),
                            torch.tensor([2.1, 4.2, 7.4, 8.0], dtype=F64),
                            torch.tensor([7.6, 8.8], dtype=F64))
    assert float(value) == pytest.approx(0.88003, abs=5e-6)


@pytest.mark.parametrize("seed", range(5))
def test_energy_distance_equals_scipy_on_random_weighted_samples(seed):
    r = np.random.default_rng(seed)
    u, v = r.normal(size=31), 2 * r.normal(size=17) + 0.3
    wu, wv = r.random(31), r.random(17)
    ours = energy_distance(col(u), col(v), torch.tensor(wu), torch.tensor(wv))
    assert float(ours) == pytest.approx(stats.energy_distance(u, v, wu, wv), rel=1e-10)


def test_closed_forms_for_gaussians():
    g = torch.Generator().manual_seed(0)
    n = 4000
    # energy distance N(0,1) vs N(1,1): D^2 = 0.54181
    x, y = torch.randn(n, 1, generator=g, dtype=F64), torch.randn(n, 1, generator=g, dtype=F64)
    d2 = energy_distance(x, y + 1, squared=True, estimator="unbiased")
    assert float(d2) == pytest.approx(0.54181, abs=0.03)
    # Gaussian-kernel MMD^2 with h = s = 1, |m|^2 = 1: d = 1 -> 0.177268, d = 2 -> 0.102346
    for d, m, expected in ((1, [1.0], 0.177268), (2, [0.6, 0.8], 0.102346)):
        x = torch.randn(n, d, generator=g, dtype=F64)
        y = torch.randn(n, d, generator=g, dtype=F64) + torch.tensor(m, dtype=F64)
        assert float(mmd(x, y, estimator="unbiased")) == pytest.approx(expected, abs=0.01)
    # closed form of the formula itself, for a bandwidth other than 1 (d = 2, h = 2, s = 1)
    h, s, d = 2.0, 1.0, 2
    expected = 2 * (h**2 / (h**2 + 2 * s**2)) ** (d / 2) * (1 - math.exp(-1 / (2 * (h**2 + 2))))
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, d, generator=g, dtype=F64) + torch.tensor([1.0, 0.0], dtype=F64)
    assert float(mmd(x, y, bandwidth=h, estimator="unbiased")) == pytest.approx(expected, abs=0.01)


def test_unbiased_estimator_is_unbiased_and_biased_one_is_not():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 10, 2, generator=g, dtype=F64)  # 400 batched problems, same law
    y = torch.randn(400, 10, 2, generator=g, dtype=F64)
    for kernel in ("gaussian", "laplacian", "energy"):
        u = mmd(x, y, kernel=kernel, estimator="unbiased")
        v = mmd(x, y, kernel=kernel)
        se = float(u.std()) / math.sqrt(len(u))
        assert abs(float(u.mean())) < 4 * se, kernel
        assert float(v.mean()) > 4 * float(v.std()) / math.sqrt(len(v)), kernel
        assert bool((v >= -1e-12).all())


def test_unbiased_weights_reduce_to_the_u_statistic():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(7, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    k = lambda p, q: torch.exp(-torch.cdist(p, q) ** 2 / 2)  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    u = ((kxx.sum() - kxx.trace()) / 42 + (kyy.sum() - kyy.trace()) / 20
         - 2 * k(x, y).mean())
    assert float(mmd(x, y, estimator="unbiased")) == pytest.approx(float(u), rel=1e-12)
    # weights are normalised: scaling them changes nothing
    a, b = torch.rand(7, generator=g, dtype=F64), torch.rand(5, generator=g, dtype=F64)
    assert float(mmd(x, y, 3 * a, 0.1 * b, estimator="unbiased")) == pytest.approx(
        float(mmd(x, y, a, b, estimator="unbiased")), rel=1e-12)


def test_zero_on_equal_inputs_positive_otherwise_and_symmetric():
    x = torch.randn(20, 3, dtype=F64, generator=torch.manual_seed(3))
    y = x + 0.5
    for kernel in ("gaussian", "laplacian", "energy"):
        assert abs(float(mmd(x, x, kernel=kernel))) < 1e-12
        assert float(mmd(x, y, kernel=kernel)) > 1e-3
        assert float(mmd(x, y, kernel=kernel)) == pytest.approx(float(mmd(y, x, kernel=kernel)))


def test_gradients_are_finite_at_coinciding_points_and_gradcheck():
    x = torch.randn(6, 2, dtype=F64, generator=torch.manual_seed(4), requires_grad=True)
    y = x.detach().clone()
    y[0] = x[0].detach()  # a coinciding pair
    for kernel in ("laplacian", "energy"):
        (grad,) = torch.autograd.grad(mmd(x, y, kernel=kernel), x)
        assert bool(torch.isfinite(grad).all())
    y = torch.randn(5, 2, dtype=F64, generator=torch.manual_seed(5))
    a = torch.rand(6, dtype=F64, generator=torch.manual_seed(6)).requires_grad_()
    for kernel in ("gaussian", "laplacian", "energy"):
        for estimator in ("biased", "unbiased"):
            def loss(x_, a_, kernel=kernel, estimator=estimator):
                return mmd(x_, y, a_, kernel=kernel, estimator=estimator)

            assert torch.autograd.gradcheck(loss, (x, a))


def test_batched_equals_one_by_one_and_float32_kept():
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(3, 8, 2, generator=g), torch.randn(3, 6, 2, generator=g)
    out = mmd(x, y, kernel="laplacian")
    assert out.shape == (3,) and out.dtype == torch.float32
    for i in range(3):
        assert float(out[i]) == pytest.approx(float(mmd(x[i], y[i], kernel="laplacian")),
                                              rel=1e-6)
    assert EnergyDistance()(x, y).shape == (3,) and MMD()(x, y).shape == (3,)


def test_bad_input():
    x, y = torch.randn(5, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match="feature dimension"):
        mmd(x, torch.randn(4, 3))
    with pytest.raises(ValueError, match="finite"):
        mmd(x, torch.tensor([[0.0, float("nan")]] * 4))
    with pytest.raises(TypeError, match="floating"):
        mmd(x, torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="kernel"):
        mmd(x, y, kernel="cauchy")
    with pytest.raises(ValueError, match="estimator"):
        mmd(x, y, estimator="jackknife")
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(x, y, bandwidth=0.0)
    with pytest.raises(ValueError, match="at least 2 points"):
        mmd(x, y[:1], estimator="unbiased")
    with pytest.raises(ValueError, match="at least 2 points of positive weight"):
        mmd(x, y, torch.tensor([1.0, 0, 0, 0, 0]), estimator="unbiased")
    with pytest.raises(ValueError, match="non-negative"):
        mmd(x, y, torch.tensor([1.0, -1, 1, 1, 1]))
    with pytest.raises(ValueError, match="shape"):
        mmd(x, y, torch.ones(3))
    with pytest.raises(ValueError, match="square root"):
        energy_distance(x, y, estimator="unbiased")
