"""Tests of the exact OT solver ``emd`` against POT, scipy's LP solver and known answers."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import linprog

from couplings.geometry import PointCloud
from couplings.result import ConvergenceWarning, OTResult
from couplings.solvers.exact import emd


def _weights(rng: np.random.Generator, size: int, zero_at: int | None = None) -> np.ndarray:
    w = rng.uniform(0.1, 1.0, size)
    if zero_at is not None:
        w[zero_at] = 0.0
    return w / w.sum()


def _problem(seed: int, n: int, m: int, zero_a=None, zero_b=None):
    """A random float64 problem: cost (n, m), a (n,), b (m,)."""
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0.0, 2.0, (n, m))
    return (
        torch.from_numpy(cost),
        torch.from_numpy(_weights(rng, n, zero_a)),
        torch.from_numpy(_weights(rng, m, zero_b)),
    )


def _linprog_value(cost: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Reference value of the transport LP by HiGHS, variables P flattened row-major."""
    n, m = cost.shape
    rows = np.kron(np.eye(n), np.ones((1, m)))  # (n, n m): sum_j P_ij
    cols = np.kron(np.ones((1, n)), np.eye(m))  # (m, n m): sum_i P_ij
    res = linprog(
        cost.ravel(),
        A_eq=np.vstack([rows, cols]),
        b_eq=np.concatenate([a, b]),
        bounds=(0, None),
        method="highs",
    )
    assert res.status == 0, res.message
    return float(res.fun)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

PROBLEMS = [
    # (seed, n, m, index of a zero weight in a, in b)
    (0, 5, 7, None, None),
    (1, 8, 4, 2, None),
    (2, 6, 9, None, 0),
    (3, 7, 6, 6, 3),
]


@pytest.mark.parametrize(("seed", "n", "m", "zero_a", "zero_b"), PROBLEMS)
def test_value_matches_pot_and_linprog(seed, n, m, zero_a, zero_b):
    cost, a, b = _problem(seed, n, m, zero_a, zero_b)
    res = emd(cost, a, b)
    assert isinstance(res, OTResult)
    assert res.solver == "emd" and res.eps is None and res.n_iter is None
    assert bool(res.converged)
    pot_value = ot.emd2(a.numpy(), b.numpy(), cost.numpy())
    lp_value = _linprog_value(cost.numpy(), a.numpy(), b.numpy())
    assert res.value.item() == pytest.approx(pot_value, rel=1e-12, abs=1e-12)
    assert res.value.item() == pytest.approx(lp_value, rel=1e-7, abs=1e-9)
    assert res.linear_value.item() == pytest.approx(lp_value, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize(("seed", "n", "m", "zero_a", "zero_b"), PROBLEMS)
def test_plan_marginals_and_dual_certificate(seed, n, m, zero_a, zero_b):
    cost, a, b = _problem(seed, n, m, zero_a, zero_b)
    res = emd(cost, a, b)
    plan = res.plan
    assert plan.shape == (n, m)
    assert bool((plan >= 0).all())
    torch.testing.assert_close(plan.sum(1), a, rtol=0, atol=1e-12)
    torch.testing.assert_close(plan.sum(0), b, rtol=0, atol=1e-12)
    assert res.error.item() < 1e-12
    if zero_a is not None:
        assert bool((plan[zero_a] == 0).all())
    # strong duality and dual feasibility (zero-weight points included) certify optimality
    f, g = res.f, res.g
    assert (a @ f + b @ g).item() == pytest.approx(res.value.item(), abs=1e-12)
    assert bool((f[:, None] + g[None, :] <= cost + 1e-12).all())
    # complementary slackness: mass only where the dual constraint is tight
    slack = cost - f[:, None] - g[None, :]
    assert float((plan * slack).abs().max()) < 1e-12
    # the normalization shared with sinkhorn
    assert (a @ f).item() == pytest.approx((b @ g).item(), abs=1e-12)


def test_zero_weight_potential_is_c_transform():
    cost, a, b = _problem(4, 6, 5, zero_a=1, zero_b=2)
    res = emd(cost, a, b)
    f, g = res.f, res.g
    # the largest feasible value: the constraint is tight at some column (row)
    assert (cost[1] - g).min().item() == pytest.approx(f[1].item(), abs=1e-12)
    assert (cost[:, 2] - f).min().item() == pytest.approx(g[2].item(), abs=1e-12)


def test_uniform_default_and_known_answer():
    # moving n points onto a permutation of themselves costs 0; uniform weights by default
    x = torch.linspace(0, 1, 6, dtype=torch.float64).unsqueeze(-1)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    res = emd(PointCloud(x, x[perm]))
    assert res.value.item() == pytest.approx(0.0, abs=1e-15)
    expected = torch.zeros(6, 6, dtype=torch.float64)
    expected[perm, torch.arange(6)] = 1 / 6
    torch.testing.assert_close(res.plan, expected)
    torch.testing.assert_close(res.a, torch.full((6,), 1 / 6, dtype=torch.float64))


def test_batched_equals_one_by_one():
    problems = [_problem(10 + k, 6, 8, zero_a=k if k < 2 else None) for k in range(4)]
    cost = torch.stack([c for c, _, _ in problems])  # (4, 6, 8)
    a = torch.stack([p[1] for p in problems])  # (4, 6)
    b = torch.stack([p[2] for p in problems])  # (4, 8)
    res = emd(cost, a, b)
    assert res.value.shape == (4,) and res.plan.shape == (4, 6, 8)
    assert res.f.shape == (4, 6) and res.g.shape == (4, 8)
    assert res.converged.shape == (4,) and res.error.shape == (4,)
    for k, (ck, ak, bk) in enumerate(problems):
        single = emd(ck, ak, bk)
        assert single.value.shape == ()
        torch.testing.assert_close(res.value[k], single.value, rtol=0, atol=0)
        torch.testing.assert_close(res.plan[k], single.plan, rtol=0, atol=0)
        torch.testing.assert_close(res.f[k], single.f, rtol=0, atol=0)
        torch.testing.assert_close(res.g[k], single.g, rtol=0, atol=0)


def test_batched_with_shared_weights():
    cost = torch.stack([_problem(20 + k, 5, 3)[0] for k in range(3)])  # (3, 5, 3)
    _, a, b = _problem(23, 5, 3)
    res = emd(cost, a, b)
    for k in range(3):
        expected = ot.emd2(a.numpy(), b.numpy(), cost[k].numpy())
        assert res.value[k].item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(dtype, device):
    cost, a, b = (t.to(device, dtype) for t in _problem(5, 4, 6, zero_b=2))
    res = emd(cost, a, b)
    for name in ("f", "g", "value", "error", "a", "b", "plan", "linear_value", "converged"):
        tensor = getattr(res, name)
        assert tensor.dtype == (torch.bool if name == "converged" else dtype), name
        assert tensor.device == cost.device, name
    reference = ot.emd2(*(t.cpu().double().numpy() for t in (a, b, cost)))
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert res.value.item() == pytest.approx(reference, rel=tol)


def test_gradient_wrt_cost_is_plan():
    cost, a, b = _problem(6, 5, 6)
    cost.requires_grad_(True)
    res = emd(cost, a, b)
    assert not res.plan.requires_grad and not res.f.requires_grad
    (grad,) = torch.autograd.grad(res.value, cost)
    torch.testing.assert_close(grad, res.plan, rtol=0, atol=0)
    (grad_linear,) = torch.autograd.grad(res.linear_value, cost)
    torch.testing.assert_close(grad_linear, res.plan, rtol=0, atol=0)


def test_gradient_wrt_cost_finite_differences():
    # a random continuous cost has a unique optimal plan, and the value is linear near it
    cost, a, b = _problem(7, 5, 6)
    plan = emd(cost, a, b).plan
    direction = torch.from_numpy(np.random.default_rng(70).normal(size=(5, 6)))
    h = 1e-6
    up = emd(cost + h * direction, a, b).value
    down = emd(cost - h * direction, a, b).value
    fd = ((up - down) / (2 * h)).item()
    assert fd == pytest.approx((plan * direction).sum().item(), rel=1e-6, abs=1e-8)


def test_gradient_wrt_weights_is_potential():
    cost, a, b = _problem(8, 6, 5)
    a.requires_grad_(True)
    b.requires_grad_(True)
    res = emd(cost, a, b)
    grad_a, grad_b = torch.autograd.grad(res.value, (a, b))
    # equal to the potentials up to an additive constant
    diff_a, diff_b = grad_a - res.f, grad_b - res.g
    torch.testing.assert_close(diff_a, diff_a.mean().expand(6), rtol=0, atol=1e-12)
    torch.testing.assert_close(diff_b, diff_b.mean().expand(5), rtol=0, atol=1e-12)
    # finite differences along a mass-preserving direction (generic weights: unique duals)
    direction = torch.from_numpy(np.random.default_rng(80).normal(size=6))
    direction = direction - direction.mean()
    h = 1e-7
    with torch.no_grad():
        up = emd(cost, a + h * direction, b).value
        down = emd(cost, a - h * direction, b).value
    fd = ((up - down) / (2 * h)).item()
    assert fd == pytest.approx((grad_a @ direction).item(), rel=1e-5, abs=1e-8)


def test_batched_gradient_is_per_problem():
    cost = torch.stack([_problem(30 + k, 4, 5)[0] for k in range(3)]).requires_grad_(True)
    res = emd(cost)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (grad,) = torch.autograd.grad((res.value * weights).sum(), cost)
    torch.testing.assert_close(grad, weights[:, None, None] * res.plan, rtol=0, atol=0)


def test_gradient_flows_to_points():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(7, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    res = emd(PointCloud(x, y))
    grad_x, grad_y = torch.autograd.grad(res.value, (x, y))
    plan = res.plan
    # d/dx_i sum_ij P_ij |x_i - y_j|^2 = 2 (a_i x_i - sum_j P_ij y_j)
    expected_x = 2 * (plan.sum(1, keepdim=True) * x - plan @ y)
    expected_y = 2 * (plan.sum(0).unsqueeze(-1) * y - plan.T @ x)
    torch.testing.assert_close(grad_x, expected_x.detach())
    torch.testing.assert_close(grad_y, expected_y.detach())
    assert res.value.item() == pytest.approx(
        ot.emd2([], [], torch.cdist(x, y).pow(2).detach().numpy()), rel=1e-10
    )


def test_non_convergence_warns_once():
    cost, a, b = _problem(11, 30, 40)
    with pytest.warns(ConvergenceWarning, match="max_iter=1") as record:
        res = emd(cost.expand(2, 30, 40), a, b, max_iter=1)
    assert len([w for w in record if issubclass(w.category, ConvergenceWarning)]) == 1
    assert not bool(res.converged.any())
    assert not res.all_converged


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"a": torch.full((4,), 0.25, dtype=torch.float64)}, ValueError, "a must have shape"),
        ({"b": torch.full((2, 3), 1 / 3, dtype=torch.float64)}, ValueError, "b must have shape"),
        (
            {"a": torch.tensor([0.5, 0.75, -0.25], dtype=torch.float64)},
            ValueError,
            "non-negative",
        ),
        ({"a": torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)}, ValueError, "equal total"),
        ({"a": torch.full((3,), 1 / 3, dtype=torch.float32)}, TypeError, "dtype"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"max_iter": 1.5}, TypeError, "max_iter"),
    ],
)
def test_bad_weights_and_options_raise(kwargs, error, match):
    cost = torch.ones(3, 4, dtype=torch.float64)
    with pytest.raises(error, match=match):
        emd(cost, **kwargs)


def test_bad_cost_raises():
    with pytest.raises(ValueError, match="finite"):
        emd(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="finite"):
        emd(torch.tensor([[0.0, float("inf")], [1.0, 0.0]]))
    with pytest.raises(TypeError, match="floating dtype"):
        emd(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        emd(torch.ones(2, 2, 2, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        emd([[0.0, 1.0], [1.0, 0.0]])
