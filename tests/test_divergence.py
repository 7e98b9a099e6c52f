"""Sinkhorn divergence and SinkhornLoss: known answers, GeomLoss agreement, gradients."""

import pytest
import torch

from couplings import SinkhornLoss, costs, sinkhorn, sinkhorn_divergence

from ._problems import random_problem


def half_sqeuclidean(x, y):
    return 0.5 * costs.sqeuclidean(x, y)


@pytest.mark.parametrize("blur", [1.0, 0.5])
def test_matches_geomloss(blur):
    geomloss = pytest.importorskip("geomloss")
    x, y, a, b, _ = random_problem(40, 30, seed=1)
    ours = sinkhorn_divergence(x, y, a, b, eps=blur**2, cost=half_sqeuclidean, tol=1e-12,
                               max_iter=100_000)
    # GeomLoss anneals eps and stops after a fixed schedule: scaling close to 1 converges
    theirs = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur, scaling=0.999,
                                  backend="tensorized")(a, x, b, y)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-8)


def test_limits_in_eps():
    """eps -> 0: the OT cost; eps -> inf: half the squared distance of the means' energy."""
    x, y, a, b, c = random_problem(30, 30, seed=2)
    exact = float(__import__("ot").emd2(a.numpy(), b.numpy(), c.numpy()))
    small = sinkhorn_divergence(x, y, a, b, eps=1e-3, scaling=0.9, tol=1e-8, max_iter=100_000)
    assert abs(float(small) - exact) < 0.02 * exact
    # eps -> infinity: S -> MMD with kernel -C/2; for the squared Euclidean cost this is
    # |mean(x) - mean(y)|^2
    big = sinkhorn_divergence(x, y, a, b, eps=1e5, tol=1e-12)
    mean_gap = ((a @ x - b @ y) ** 2).sum()
    torch.testing.assert_close(big, mean_gap, rtol=1e-3, atol=1e-6)


def test_translation_known_answer():
    """For a pure translation, OT with the squared cost is |t|^2, and S_eps -> |t|^2."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0.7, -0.4], dtype=torch.float64)
    d = sinkhorn_divergence(x, x + t, eps=1e-3, scaling=0.9, tol=1e-8, max_iter=100_000)
    torch.testing.assert_close(d, (t**2).sum(), rtol=2e-2, atol=0)


def test_batched_and_debias_flag():
    x, y, a, b, _ = random_problem(10, 12, batch=3, seed=4)
    d = sinkhorn_divergence(x, y, a, b, eps=0.5)
    assert d.shape == (3,) and (d > 0).all()
    for i in range(3):
        torch.testing.assert_close(d[i], sinkhorn_divergence(x[i], y[i], a[i], b[i], eps=0.5))
    raw = sinkhorn_divergence(x, y, a, b, eps=0.5, debias=False)
    from couplings import PointCloud

    torch.testing.assert_close(raw, sinkhorn(PointCloud(x, y), a, b, eps=0.5).value)


@pytest.mark.parametrize("grad", ["envelope", "implicit", "unroll"])
def test_gradient_modes_agree_on_points(grad):
    x, y, a, b, _ = random_problem(15, 12, seed=5)
    x = x.clone().requires_grad_()
    sinkhorn_divergence(x, y, a, b, eps=0.3, tol=1e-12, max_iter=10_000, grad=grad).backward()
    ref = x.clone().detach().requires_grad_()
    sinkhorn_divergence(ref, y, a, b, eps=0.3, tol=1e-12, max_iter=10_000,
                        grad="unroll").backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-6, atol=1e-10)


def test_gradient_flow_decreases_the_loss():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(50, 2, generator=g).requires_grad_()
    y = torch.randn(60, 2, generator=g) + 2
    loss_fn = SinkhornLoss(eps=0.1, scaling=0.9, tol=1e-4, max_iter=5000)
    opt = torch.optim.SGD([x], lr=20.0)  # gradients scale like the weights 1/n
    first = float(loss_fn(x, y).detach())
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.1 * first


def test_loss_module_reductions():
    x, y, _, _, _ = random_problem(8, 9, batch=2, dtype=torch.float32)
    per = SinkhornLoss(eps=0.5, reduction="none")(x, y)
    assert per.shape == (2,)
    torch.testing.assert_close(SinkhornLoss(eps=0.5)(x, y), per.mean())
    torch.testing.assert_close(SinkhornLoss(eps=0.5, reduction="sum")(x, y), per.sum())
    with pytest.raises(ValueError, match="reduction"):
        SinkhornLoss(eps=0.5, reduction="avg")
    assert "eps=0.5" in repr(SinkhornLoss(eps=0.5))
