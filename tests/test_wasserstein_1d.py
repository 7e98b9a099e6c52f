"""Tests of the 1-D closed form ``wasserstein_1d`` against scipy, ``emd`` and known answers."""

from __future__ import annotations

import pytest
import scipy.stats
import torch

from couplings.solvers.exact import emd
from couplings.solvers.one_d import wasserstein_1d

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weights(seed: int, size: int, zero_at: int | None = None) -> torch.Tensor:
    w = torch.rand(size, generator=_gen(seed), dtype=torch.float64) + 0.1
    if zero_at is not None:
        w[zero_at] = 0.0
    return w / w.sum()


@pytest.mark.parametrize("seed", range(4))
def test_p1_equals_scipy(seed):
    u = torch.randn(7, generator=_gen(seed), dtype=torch.float64)
    v = torch.randn(11, generator=_gen(seed + 100), dtype=torch.float64) * 2 + 0.5
    wu, wv = _weights(seed + 200, 7, zero_at=seed), _weights(seed + 300, 11)
    expected = scipy.stats.wasserstein_distance(u.numpy(), v.numpy(), wu.numpy(), wv.numpy())
    assert wasserstein_1d(u, v, wu, wv).item() == pytest.approx(expected, rel=1e-12)
    uniform = scipy.stats.wasserstein_distance(u.numpy(), v.numpy())
    assert wasserstein_1d(u, v).item() == pytest.approx(uniform, rel=1e-12)


@pytest.mark.parametrize("p", [1, 1.5, 2, 3])
@pytest.mark.parametrize("seed", range(3))
def test_equals_emd_on_power_cost(p, seed):
    u = torch.randn(6, generator=_gen(seed), dtype=torch.float64)
    v = torch.randn(9, generator=_gen(seed + 10), dtype=torch.float64) + 0.3
    wu, wv = _weights(seed + 20, 6, zero_at=2), _weights(seed + 30, 9, zero_at=5)
    cost = (u[:, None] - v[None, :]).abs() ** p  # (n, m)
    expected = emd(cost, wu, wv).value.item()
    assert wasserstein_1d(u, v, wu, wv, p=p).item() == pytest.approx(expected, rel=1e-10)


def test_unnormalized_equal_masses_scale_the_cost():
    u = torch.randn(5, generator=_gen(1), dtype=torch.float64)
    v = torch.randn(4, generator=_gen(2), dtype=torch.float64)
    wu, wv = _weights(3, 5), _weights(4, 4)
    cost = (u[:, None] - v[None, :]) ** 2
    value = wasserstein_1d(u, v, 3 * wu, 3 * wv, p=2).item()
    assert value == pytest.approx(emd(cost, 3 * wu, 3 * wv).value.item(), rel=1e-10)
    assert value == pytest.approx(3 * wasserstein_1d(u, v, wu, wv, p=2).item(), rel=1e-12)


def test_batched_equals_one_by_one():
    u = torch.randn(4, 8, generator=_gen(5), dtype=torch.float64)  # (B, n)
    v = torch.randn(4, 5, generator=_gen(6), dtype=torch.float64)  # (B, m)
    wu = torch.stack([_weights(10 + k, 8, zero_at=k) for k in range(4)])  # (B, n)
    wv = _weights(20, 5)  # (m,), shared by the batch
    batched = wasserstein_1d(u, v, wu, wv, p=2)
    assert batched.shape == (4,)
    for k in range(4):
        single = wasserstein_1d(u[k], v[k], wu[k], wv, p=2)
        assert single.shape == ()
        torch.testing.assert_close(batched[k], single, rtol=1e-14, atol=0)


@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_known_answers(p):
    # two Diracs
    x, y = torch.tensor([0.25]), torch.tensor([-1.5])
    assert wasserstein_1d(x, y, p=p).item() == pytest.approx(1.75**p, rel=1e-6)
    # a sample and its shifted copy, with the same weights, in any order
    u = torch.randn(10, generator=_gen(7), dtype=torch.float64)
    w = _weights(8, 10, zero_at=4)
    perm = torch.randperm(10, generator=_gen(9))
    shifted = wasserstein_1d(u, u[perm] + 0.7, w, w[perm], p=p)
    assert shifted.item() == pytest.approx(0.7**p, rel=1e-12)
    # identical inputs cost nothing
    assert wasserstein_1d(u, u, w, w, p=p).item() == pytest.approx(0.0, abs=1e-15)


def test_symmetric_and_ties():
    u = torch.tensor([0.0, 0.0, 1.0, 1.0, 4.0], dtype=torch.float64)  # repeated points
    v = torch.tensor([0.5, 2.0, 2.0], dtype=torch.float64)
    cost = (u[:, None] - v[None, :]).abs() ** 2
    forward, backward = wasserstein_1d(u, v, p=2), wasserstein_1d(v, u, p=2)
    assert forward.item() == pytest.approx(backward.item(), rel=1e-14)
    assert forward.item() == pytest.approx(emd(cost).value.item(), rel=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(dtype, device):
    u = torch.randn(2, 6, generator=_gen(11), dtype=dtype).to(device)
    v = torch.randn(2, 3, generator=_gen(12), dtype=dtype).to(device)
    value = wasserstein_1d(u, v, p=2)
    assert value.dtype == dtype and value.device == u.device
    reference = wasserstein_1d(u.double(), v.double(), p=2)
    tol = 1e-5 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(value.double(), reference, rtol=tol, atol=0)


@pytest.mark.parametrize("p", [1, 1.5, 2, 3])
def test_gradcheck_points(p):
    # distinct values: the sorted order, and hence the formula, is fixed near the input
    u = torch.tensor([[0.3, -1.2, 0.9, 2.1], [0.0, 1.0, -0.5, 0.4]], dtype=torch.float64)
    v = torch.tensor([[1.7, -0.4, 0.25], [-2.0, 0.6, 1.3]], dtype=torch.float64)
    wu = _weights(13, 4)
    wv = _weights(14, 3)
    u.requires_grad_(True)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: wasserstein_1d(x, y, wu, wv, p=p), (u, v))


def test_gradcheck_weights():
    u = torch.tensor([0.3, -1.2, 0.9, 2.1], dtype=torch.float64)
    v = torch.tensor([1.7, -0.4, 0.25], dtype=torch.float64)
    wu = _weights(15, 4).requires_grad_(True)
    wv = _weights(16, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: wasserstein_1d(u, v, a, b, p=2), (wu, wv))


def test_gradient_matches_monotone_coupling():
    # equal sizes and uniform weights: the i-th smallest of u meets the i-th smallest of v
    u = torch.randn(6, generator=_gen(17), dtype=torch.float64, requires_grad=True)
    v = torch.randn(6, generator=_gen(18), dtype=torch.float64)
    (grad,) = torch.autograd.grad(wasserstein_1d(u, v, p=2), u)
    order_u, order_v = torch.argsort(u.detach()), torch.argsort(v)
    expected = torch.empty(6, dtype=torch.float64)
    expected[order_u] = 2 * (u.detach()[order_u] - v[order_v]) / 6
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (([0.0, 1.0], torch.zeros(2)), {}, TypeError, "torch.Tensor"),
        ((torch.zeros(2, dtype=torch.int64), torch.zeros(2)), {}, TypeError, "floating"),
        ((torch.zeros(2), torch.zeros(2, dtype=torch.float64)), {}, TypeError, "dtype"),
        ((torch.zeros(2, 2, 2), torch.zeros(2, 2, 2)), {}, ValueError, "shape"),
        ((torch.zeros(0), torch.zeros(2)), {}, ValueError, "n >= 1"),
        ((torch.zeros(3, 2), torch.zeros(2)), {}, ValueError, "same B"),
        ((torch.zeros(3, 2), torch.zeros(2, 2)), {}, ValueError, "same B"),
        ((torch.tensor([0.0, float("nan")]), torch.zeros(2)), {}, ValueError, "finite"),
        ((torch.zeros(2), torch.zeros(2)), {"u_weights": torch.ones(3) / 3}, ValueError, "shape"),
        (
            (torch.zeros(2), torch.zeros(2)),
            {"u_weights": torch.tensor([1.5, -0.5])},
            ValueError,
            "non-negative",
        ),
        (
            (torch.zeros(2), torch.zeros(2)),
            {"u_weights": torch.tensor([1.0, 1.0])},
            ValueError,
            "equal total mass",
        ),
        (
            (torch.zeros(2), torch.zeros(2)),
            {"v_weights": torch.tensor([0.5, 0.5], dtype=torch.float64)},
            TypeError,
            "dtype",
        ),
        (
            (torch.zeros(2), torch.zeros(2)),
            {"v_weights": torch.tensor([float("nan"), 1.0])},
            ValueError,
            "v_weights must be finite",
        ),
        ((torch.zeros(2), torch.zeros(2)), {"p": 0.5}, ValueError, ">= 1"),
        ((torch.zeros(2), torch.zeros(2)), {"p": float("inf")}, ValueError, ">= 1"),
        ((torch.zeros(2), torch.zeros(2)), {"p": "2"}, TypeError, "real"),
        ((torch.zeros(2), torch.zeros(2)), {"p": True}, TypeError, "real"),
    ],
)
def test_bad_inputs_raise(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        wasserstein_1d(*args, **kwargs)


@pytest.mark.parametrize("p", [1, 1.5, 2, 3])
def test_uniform_equal_size_shortcut_equals_the_general_formula(p):
    # both weights None and n = m take the sorted-pairs shortcut; explicit uniform weights take
    # the merged-quantile path: the two must agree, with ties, batched, and in their gradients
    u = torch.randn(3, 40, generator=_gen(21), dtype=torch.float64)
    v = torch.randn(3, 40, generator=_gen(22), dtype=torch.float64) * 1.5 + 0.2
    u[:, :5] = 0.5  # ties inside u, and across u and v
    v[:, :3] = 0.5
    uniform = torch.full((3, 40), 1 / 40, dtype=torch.float64)
    u1, v1 = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
    u2, v2 = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
    fast = wasserstein_1d(u1, v1, p=p)
    general = wasserstein_1d(u2, v2, uniform, uniform, p=p)
    torch.testing.assert_close(fast, general, rtol=1e-12, atol=1e-14)
    fast.sum().backward()
    general.sum().backward()
    torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-10, atol=1e-12)
    cost = (u[0, :, None] - v[0, None, :]).abs() ** p
    assert fast[0].item() == pytest.approx(emd(cost).value.item(), rel=1e-10)
