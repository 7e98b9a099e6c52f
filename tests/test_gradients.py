"""Gradients checked three ways: gradcheck, finite differences, and agreement between modes."""

import pytest
import torch

from couplings import Implicit, PointCloud, sinkhorn

from ._problems import random_problem

TIGHT = dict(tol=1e-13, max_iter=20_000)
MODES = ["unroll", "implicit", Implicit(solver="cg"), Implicit(solver="dense")]


def _loss_fn(n, m, seed=0):
    """A loss that reads every output: potentials, plan and value, with random weights."""
    g = torch.Generator().manual_seed(100 + seed)
    w_f = torch.randn(n, generator=g, dtype=torch.float64)
    w_g = torch.randn(m, generator=g, dtype=torch.float64)
    w_p = torch.randn(n, m, generator=g, dtype=torch.float64)

    def loss(res):
        return (
            (res.f * w_f).sum() + (res.g * w_g).sum() + (res.plan * w_p).sum()
            + res.value.sum() + 0.5 * res.linear_value.sum()
        )

    return loss


def _grads(mode, c, a, b, loss, eps, **kw):
    c, a, b = (t.clone().requires_grad_() for t in (c, a, b))
    loss(sinkhorn(c, a, b, eps=eps, grad=mode, **TIGHT, **kw)).backward()
    return c.grad, a.grad, b.grad


def _centered(t):
    return t - t.mean(-1, keepdim=True)


@pytest.mark.parametrize("n, m", [(7, 9), (9, 6)])
@pytest.mark.parametrize("zeros", [False, True])
def test_unroll_and_implicit_agree(n, m, zeros):
    _, _, a, b, c = random_problem(
        n, m, seed=n, zero_a=(1,) if zeros else (), zero_b=(2,) if zeros else ()
    )
    loss = _loss_fn(n, m)
    reference = _grads("unroll", c, a, b, loss, 0.1)
    for mode in MODES[1:]:
        got = _grads(mode, c, a, b, loss, 0.1)
        torch.testing.assert_close(got[0], reference[0], rtol=1e-5, atol=1e-9)
        # weight gradients are defined up to an additive constant (mass-preserving directions)
        for k in (1, 2):
            torch.testing.assert_close(
                _centered(got[k]), _centered(reference[k]), rtol=1e-5, atol=1e-9
            )


def test_three_modes_agree_on_the_value():
    _, _, a, b, c = random_problem(8, 11, seed=3)
    grads = {str(mode): _grads(mode, c, a, b, lambda r: r.value, 0.2)
             for mode in ("unroll", "implicit", "envelope")}
    ref = grads["unroll"]
    for mode in ("implicit", "envelope"):
        torch.testing.assert_close(grads[mode][0], ref[0], rtol=1e-5, atol=1e-10)
        for k in (1, 2):
            torch.testing.assert_close(_centered(grads[mode][k]), _centered(ref[k]), rtol=1e-5,
                                       atol=1e-10)


def test_envelope_gradients_are_plan_and_potentials():
    _, _, a, b, c = random_problem(6, 7)
    c, a = c.clone().requires_grad_(), a.clone().requires_grad_()
    res = sinkhorn(c, a, b, eps=0.1, grad="envelope", **TIGHT)
    res.value.backward()
    torch.testing.assert_close(c.grad, res.plan)
    torch.testing.assert_close(a.grad, res.f)
    assert not res.f.requires_grad and not res.plan.requires_grad


@pytest.mark.parametrize("mode", ["unroll", "implicit"])
def test_gradcheck_float64(mode):
    _, _, a, b, c = random_problem(4, 5, seed=2)
    c, a, b = (t.clone().requires_grad_() for t in (c, a, b))

    def outputs(c, a, b):
        # renormalise so every perturbation gradcheck makes is a valid (balanced) problem
        a, b = a / a.sum(), b / b.sum()
        res = sinkhorn(c, a, b, eps=0.3, grad=mode, **TIGHT)
        return res.f, res.g, res.plan, res.value

    assert torch.autograd.gradcheck(outputs, (c, a, b), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode", ["unroll", "implicit"])
def test_central_finite_differences(mode):
    """Directional derivative along a random direction, against central differences."""
    x, y, a, b, _ = random_problem(12, 10, seed=4)
    loss = _loss_fn(12, 10, seed=1)
    g = torch.Generator().manual_seed(5)
    dx, dy = torch.randn(x.shape, generator=g, dtype=x.dtype), torch.randn(y.shape, generator=g,
                                                                           dtype=y.dtype)
    da = torch.randn(a.shape, generator=g, dtype=a.dtype)
    da = da - da.mean()  # mass-preserving

    def value(x, y, a):
        return loss(sinkhorn(PointCloud(x, y), a, b, eps=0.2, grad=mode, **TIGHT))

    xg, yg, ag = (t.clone().requires_grad_() for t in (x, y, a))
    value(xg, yg, ag).backward()
    analytic = (xg.grad * dx).sum() + (yg.grad * dy).sum() + (ag.grad * da).sum()
    h = 1e-5
    numeric = (value(x + h * dx, y + h * dy, a + h * da)
               - value(x - h * dx, y - h * dy, a - h * da)) / (2 * h)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_batched_gradients_equal_one_by_one():
    _, _, a, b, c = random_problem(6, 8, batch=3, seed=6)
    cg = c.clone().requires_grad_()
    res = sinkhorn(cg, a, b, eps=0.1, **TIGHT)
    (res.f[:, :3].sum() + res.value.sum()).backward()
    for i in range(3):
        ci = c[i].clone().requires_grad_()
        r = sinkhorn(ci, a[i], b[i], eps=0.1, **TIGHT)
        (r.f[:3].sum() + r.value).backward()
        torch.testing.assert_close(cg.grad[i], ci.grad, rtol=1e-7, atol=1e-12)


def test_implicit_memory_does_not_depend_on_iterations():
    """The implicit graph holds the cost and potentials only, not one tensor per iteration."""
    _, _, a, b, c = random_problem(30, 30)
    sizes = {}
    for mode in ("implicit", "unroll"):
        cg = c.clone().requires_grad_()
        saved = []

        def pack(t, saved=saved):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            res = sinkhorn(cg, a, b, eps=0.02, tol=1e-9, max_iter=10_000, grad=mode)
            res.value.backward()
        sizes[mode] = (sum(saved), res.n_iter)
    n_iter = sizes["implicit"][1]
    assert n_iter > 100
    assert sizes["implicit"][0] < 10 * 30 * 30
    assert sizes["unroll"][0] > n_iter * 30 * 30
    del sizes


def test_gradients_reach_points_and_are_float32_finite():
    x, y, a, b, _ = random_problem(40, 30, dtype=torch.float32, seed=8)
    x.requires_grad_()
    for mode in ("implicit", "unroll", "envelope"):
        x.grad = None
        res = sinkhorn(PointCloud(x, y), a, b, eps=0.01, scaling=0.9, tol=1e-4, max_iter=5000,
                       grad=mode)
        res.value.backward()
        assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_an_ill_conditioned_float32_adjoint_is_solved_in_float64():
    """Where Sinkhorn contracts slowly the float32 Schur complement of the implicit backward
    can fail its Cholesky factorization (here two problems of this batch did), and a float32 LU
    then failed too (MKL rejected its own pivots): the dense adjoint is solved in float64, and
    the gradient matches the one of the float64 problem (on two threads, as it failed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _ill_conditioned_batch_gradients()
    finally:
        torch.set_num_threads(threads)


def _ill_conditioned_batch_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 300, 2, generator=g)
    y = torch.randn(16, 300, 2, generator=g) + 1.0
    grads = []
    for dtype in (torch.float32, torch.float64):
        xs = x.to(dtype).clone().requires_grad_(True)
        res = sinkhorn(PointCloud(xs, y.to(dtype)), eps=0.3, tol=1e-4)
        res.value.sum().backward()
        grads.append(xs.grad.double())
    assert bool(torch.isfinite(grads[0]).all())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=2e-3 * float(grads[1].abs().max()))
