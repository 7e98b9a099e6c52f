import pytest
import scipy.spatial.distance as ssd
import torch

from couplings import costs

from ._problems import DTYPES


@pytest.mark.parametrize(
    "name, metric, kwargs",
    [
        ("sqeuclidean", "sqeuclidean", {}),
        ("euclidean", "euclidean", {}),
        ("cosine", "cosine", {}),
        ("l1", "cityblock", {}),
        ("lp:3", "minkowski", {"p": 3}),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_costs_match_scipy(name, metric, kwargs, dtype, gen):
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    expected = torch.from_numpy(ssd.cdist(x.numpy(), y.numpy(), metric, **kwargs))
    got = costs.get(name)(x.to(dtype), y.to(dtype))
    assert got.dtype == dtype and got.shape == (7, 5)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def test_dot_cost(gen):
    x, y = torch.randn(4, 2, generator=gen), torch.randn(6, 2, generator=gen)
    torch.testing.assert_close(costs.dot(x, y), -(x @ y.T))


@pytest.mark.parametrize("name", ["sqeuclidean", "euclidean", "cosine", "dot", "l1"])
def test_batched_equals_unbatched(name, gen):
    x, y = torch.randn(3, 6, 2, generator=gen), torch.randn(3, 4, 2, generator=gen)
    fn = costs.get(name)
    batched = fn(x, y)
    assert batched.shape == (3, 6, 4)
    for i in range(3):
        torch.testing.assert_close(batched[i], fn(x[i], y[i]))


def test_callable_passes_through():
    def half_sq(x, y):
        return 0.5 * costs.sqeuclidean(x, y)

    assert costs.get(half_sq) is half_sq


def test_euclidean_gradient_is_finite_at_zero_distance():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    costs.euclidean(x, x.detach()).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_gradcheck_costs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    for name in ["sqeuclidean", "euclidean", "cosine", "dot", "lp:3"]:
        assert torch.autograd.gradcheck(costs.get(name), (x, y)), name


@pytest.mark.parametrize(
    "x, y, exc",
    [
        (torch.zeros(3, 2), torch.zeros(4, 3), ValueError),  # feature dims differ
        (torch.zeros(3), torch.zeros(4), ValueError),  # not 2-D
        (torch.zeros(2, 3, 2), torch.zeros(3, 4, 2), ValueError),  # batch sizes differ
        (torch.zeros(3, 2), torch.zeros(4, 2, dtype=torch.float64), TypeError),
        (torch.zeros(3, 2, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long), TypeError),
        ([[0.0, 1.0]], torch.zeros(4, 2), TypeError),
    ],
)
def test_bad_points(x, y, exc):
    with pytest.raises(exc):
        costs.sqeuclidean(x, y)


def test_unknown_cost_name():
    with pytest.raises(ValueError, match="unknown cost"):
        costs.get("manhattan-ish")
    with pytest.raises(ValueError, match="p >= 1"):
        costs.lp(0.5)
