"""Sliced Wasserstein against POT, the 1-D solver, a Gaussian closed form and its gradients.

Statistical policy: the one Monte-Carlo test (Gaussians) uses fixed seeds, so it is
deterministic; its bound of 5 standard errors would fail by chance with probability about 2e-5
(Student t, 31 degrees of freedom) for a fresh seed.
"""

import math

import numpy as np
import ot
import pytest
import torch

from couplings import wasserstein_1d
from couplings.sliced import (
    SlicedWasserstein,
    max_sliced_wasserstein,
    random_directions,
    sliced_wasserstein,
)

F64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _cloud(seed, n, d, shift=0.0):
    return torch.randn(n, d, generator=_gen(seed), dtype=F64) + shift


def _weights(seed, n):
    w = torch.rand(n, generator=_gen(seed), dtype=F64) + 0.1
    return w / w.sum()


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("seed", range(3))
def test_equals_pot_with_the_same_projections(p, seed):
    x, y = _cloud(seed, 13, 4), _cloud(seed + 10, 9, 4, shift=0.7)
    a, b = _weights(seed + 20, 13), _weights(seed + 30, 9)
    theta = random_directions(4, 25, generator=_gen(seed + 40), dtype=F64)
    args = (x.numpy(), y.numpy(), a.numpy(), b.numpy())
    expected = ot.sliced_wasserstein_distance(*args, p=p, projections=theta.numpy())
    ours = sliced_wasserstein(x, y, a, b, p=p, projections=theta, root=True)
    assert float(ours) == pytest.approx(float(expected), rel=1e-12, abs=1e-15)
    power = sliced_wasserstein(x, y, a, b, p=p, projections=theta)
    assert float(power) == pytest.approx(float(expected) ** p, rel=1e-12)
    expected_max = ot.max_sliced_wasserstein_distance(*args, p=p, projections=theta.numpy())
    ours_max = max_sliced_wasserstein(x, y, a, b, p=p, projections=theta, root=True)
    assert float(ours_max) == pytest.approx(float(expected_max), rel=1e-12)
    # uniform weights
    expected = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), p=p,
                                              projections=theta.numpy())
    ours = sliced_wasserstein(x, y, p=p, projections=theta, root=True)
    assert float(ours) == pytest.approx(float(expected), rel=1e-12)


def test_one_dimension_equals_wasserstein_1d():
    x, y = _cloud(1, 11, 1), _cloud(2, 7, 1, shift=-0.4)
    a, b = _weights(3, 11), _weights(4, 7)
    for p in (1, 2, 2.5):
        expected = float(wasserstein_1d(x[:, 0], y[:, 0], a, b, p=p))
        # random directions in 1-D are +1 or -1, and W_p is invariant under reflection
        ours = sliced_wasserstein(x, y, a, b, p=p, n_projections=7, generator=_gen(5))
        assert float(ours) == pytest.approx(expected, rel=1e-12)
        assert float(max_sliced_wasserstein(x, y, a, b, p=p, n_projections=3)) == pytest.approx(
            expected, rel=1e-12)


def test_gaussians_closed_form():
    """SW_2^2(N(m1, I), N(m2, I)) = |m1 - m2|^2 / d, from 32 independent replicates.

    The estimator's mean is |m1 - m2|^2 / d + beta_n, with beta_n > 0 the expected W_2^2
    between two n-samples of one 1-D Gaussian; an independent same-law pair has mean beta_n,
    so the difference of the two is unbiased for the closed form.
    """
    reps, n, d, n_dir = 32, 300, 4, 64
    delta = torch.tensor([1.5, -0.5, 1.0, 0.5], dtype=F64)  # |delta|^2 / d = 0.9375
    g = _gen(0)
    x = torch.randn(reps, n, d, generator=g, dtype=F64)
    y = torch.randn(reps, n, d, generator=g, dtype=F64) + delta
    y0 = torch.randn(reps, n, d, generator=g, dtype=F64)
    shifted = sliced_wasserstein(x, y, n_projections=n_dir, generator=g)  # (reps,)
    same = sliced_wasserstein(x, y0, n_projections=n_dir, generator=g)
    diff = shifted - same
    se = float(diff.std()) / math.sqrt(reps)
    truth = float(delta @ delta) / d
    assert abs(float(diff.mean()) - truth) < 5 * se
    assert se < 0.05  # the test has power: 5 SE is well below the closed form 0.9375
    assert 0 < float(same.mean()) < 0.05  # the bias beta_n is positive and O(1 / n)


def test_random_directions_are_uniform_on_the_sphere():
    n = 5000
    theta = random_directions(3, n, generator=_gen(6), dtype=F64)
    torch.testing.assert_close(theta.norm(dim=0), torch.ones(n, dtype=F64))
    # E[theta theta^T] = I / 3 and E[theta] = 0; the entries of the empirical means have
    # standard deviations <= 0.30 / sqrt(n) and 0.58 / sqrt(n): the bounds are 5 of them
    second = theta @ theta.T / n
    assert torch.allclose(second, torch.eye(3, dtype=F64) / 3, atol=5 * 0.30 / math.sqrt(n))
    assert torch.allclose(theta.mean(1), torch.zeros(3, dtype=F64), atol=5 * 0.58 / math.sqrt(n))
    # seeded: the same generator state gives the same directions, in float32 as well
    t1 = random_directions(3, 4, generator=_gen(7), dtype=F64)
    t2 = random_directions(3, 4, generator=_gen(7), dtype=torch.float32)
    torch.testing.assert_close(t1.float(), t2)
    assert random_directions(3, 4, batch=2).shape == (2, 3, 4)


def test_batched_equals_one_by_one_and_shared_projections():
    g = _gen(8)
    x, y = torch.randn(3, 10, 2, generator=g), torch.randn(3, 6, 2, generator=g)
    theta = random_directions(2, 15, batch=3, generator=g)  # one set per problem
    out = sliced_wasserstein(x, y, projections=theta)
    assert out.shape == (3,) and out.dtype == torch.float32
    for i in range(3):
        single = sliced_wasserstein(x[i], y[i], projections=theta[i])
        assert float(out[i]) == pytest.approx(float(single), rel=1e-6)
    shared = sliced_wasserstein(x, y, projections=theta[0])  # (d, L) for all problems
    assert float(shared[2]) == pytest.approx(
        float(sliced_wasserstein(x[2], y[2], projections=theta[0])), rel=1e-6)
    # a seeded generator reproduces the random estimate
    v1 = sliced_wasserstein(x, y, generator=_gen(9))
    v2 = sliced_wasserstein(x, y, generator=_gen(9))
    torch.testing.assert_close(v1, v2)
    loss = SlicedWasserstein(n_projections=10, reduction="none")
    assert loss(x, y).shape == (3,)
    assert SlicedWasserstein(n_projections=10)(x, y).shape == ()


@pytest.mark.parametrize("device", DEVICES)
def test_properties_dtype_device(device):
    x = _cloud(10, 8, 3).to(device)
    theta = random_directions(3, 12, generator=_gen(11), dtype=F64).to(device)
    assert float(sliced_wasserstein(x, x, projections=theta)) == 0.0
    y = _cloud(12, 8, 3).to(device)
    # symmetric, and a scaling by s multiplies SW_p^p by s^p
    v = sliced_wasserstein(x, y, projections=theta, p=3)
    assert float(v) == pytest.approx(float(sliced_wasserstein(y, x, projections=theta, p=3)))
    assert float(sliced_wasserstein(2 * x, 2 * y, projections=theta, p=3)) == pytest.approx(
        8 * float(v), rel=1e-10)
    # SW_p^p <= max-sliced <= W_p^p in the full space (projections are 1-Lipschitz)
    cost = torch.cdist(x, y) ** 3
    exact = ot.emd2(np.full(8, 1 / 8), np.full(8, 1 / 8), cost.cpu().numpy())
    vmax = max_sliced_wasserstein(x, y, projections=theta, p=3)
    assert float(v) <= float(vmax) <= exact + 1e-12
    for dtype in (torch.float32, F64):
        out = sliced_wasserstein(x.to(dtype), y.to(dtype), n_projections=5)
        assert out.dtype == dtype and out.device.type == torch.device(device).type


def test_gradcheck_points_weights_and_projections():
    x = _cloud(13, 5, 3).requires_grad_()
    y = _cloud(14, 4, 3, shift=0.3).requires_grad_()
    a = _weights(15, 5).requires_grad_()
    b = _weights(16, 4)
    theta = random_directions(3, 6, generator=_gen(17), dtype=F64).requires_grad_()
    for p in (1, 2, 3):
        def f(x_, y_, a_, t_, p=p):
            # renormalize a so that both masses stay equal under perturbation
            return sliced_wasserstein(x_, y_, a_ / a_.sum(), b, p=p, projections=t_)

        assert torch.autograd.gradcheck(f, (x, y, a, theta))
    assert torch.autograd.gradcheck(
        lambda x_: max_sliced_wasserstein(x_, y, projections=theta, root=True), (x,))


def test_gradient_descent_moves_the_cloud_to_the_target():
    g = _gen(18)
    x = torch.randn(64, 2, generator=g).requires_grad_()
    target = torch.randn(64, 2, generator=g) + torch.tensor([4.0, -2.0])
    loss_fn = SlicedWasserstein(n_projections=30, generator=g)
    # the gradient of SW_2^2 in x_i is about (2 / (n d)) (x_i - its match): step n / 2
    opt = torch.optim.SGD([x], lr=32.0)
    start = float(loss_fn(x, target).detach())
    for _ in range(40):
        opt.zero_grad()
        loss_fn(x, target).backward()
        opt.step()
    assert float(loss_fn(x, target).detach()) < 0.01 * start


def test_bad_input():
    x, y = torch.randn(5, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match="feature dimension"):
        sliced_wasserstein(x, torch.randn(4, 3))
    with pytest.raises(ValueError, match="finite"):
        sliced_wasserstein(x, torch.tensor([[0.0, float("nan")]] * 4))
    with pytest.raises(TypeError, match="floating"):
        sliced_wasserstein(x, torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, y, n_projections=0)
    with pytest.raises(TypeError, match="n_projections"):
        sliced_wasserstein(x, y, n_projections=2.5)
    with pytest.raises(ValueError, match="p must be"):
        sliced_wasserstein(x, y, p=0.5)
    with pytest.raises(ValueError, match="projections must have shape"):
        sliced_wasserstein(x, y, projections=torch.randn(3, 4))
    with pytest.raises(ValueError, match="finite"):
        sliced_wasserstein(x, y, projections=torch.full((2, 3), float("inf")))
    with pytest.raises(TypeError, match="dtype"):
        sliced_wasserstein(x, y, projections=torch.randn(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="equal total mass"):
        sliced_wasserstein(x, y, torch.ones(5), torch.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        sliced_wasserstein(x, y, torch.tensor([0.5, -0.5, 0.5, 0.25, 0.25]))
    with pytest.raises(ValueError, match="batch size"):
        sliced_wasserstein(torch.randn(2, 5, 2), torch.randn(3, 4, 2))
    with pytest.raises(TypeError, match="generator"):
        sliced_wasserstein(x, y, generator=0)
    with pytest.raises(ValueError, match="reduction"):
        SlicedWasserstein(reduction="max")
