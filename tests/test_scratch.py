"""Scratch matrices kept between solves: reused on the CPU, bounded, never shared by two
holders, and invisible in the results."""

import pytest
import torch

from couplings import PointCloud, sinkhorn
from couplings.costs import sqeuclidean
from couplings.solvers import _scratch

from ._spies import spy_absorptions


@pytest.fixture(autouse=True)
def empty_cache():
    _scratch.clear()
    yield
    _scratch.clear()


def test_a_given_buffer_is_taken_once_then_a_fresh_one_is_made():
    like = torch.zeros(1)
    first = _scratch.take((4, 5), like)
    _scratch.give(first)
    again = _scratch.take((2, 3, 3), like)  # smaller: a view of the same memory
    assert again.data_ptr() == first.data_ptr() and again.shape == (2, 3, 3)
    assert again.is_contiguous()
    other = _scratch.take((2, 3, 3), like)  # the idle one is taken: a new one
    assert other.data_ptr() != first.data_ptr()


def test_a_larger_request_or_another_dtype_gets_new_memory():
    buf = _scratch.take((10,), torch.zeros(1))
    _scratch.give(buf)
    assert _scratch.take((11,), torch.zeros(1)).data_ptr() != buf.data_ptr()
    _scratch.give(buf)
    assert _scratch.take((10,), torch.zeros(1, dtype=torch.float64)).data_ptr() != buf.data_ptr()
    assert _scratch.take((10,), torch.zeros(1)).data_ptr() == buf.data_ptr()


def test_the_whole_storage_is_kept_and_the_smallest_fitting_buffer_is_taken():
    big = _scratch.take((100,), torch.zeros(1))
    _scratch.give(big[10:20].view(2, 5))  # a view: its whole storage is what comes back
    _scratch.give(big)  # given twice: kept once
    small = torch.empty(5)
    _scratch.give(small)
    assert _scratch.take((4,), torch.zeros(1)).data_ptr() == small.data_ptr()
    assert _scratch.take((4,), torch.zeros(1)).data_ptr() == big.data_ptr()
    assert _scratch.take((4,), torch.zeros(1)).data_ptr() not in (small.data_ptr(),
                                                                  big.data_ptr())


def test_at_most_max_idle_buffers_are_kept_and_the_smallest_goes_first():
    bufs = [torch.empty(k) for k in (30, 10, 20)]
    for buf in bufs:
        _scratch.give(buf)
    assert _scratch.MAX_IDLE == 2  # the 10 was dropped
    assert _scratch.take((5,), torch.zeros(1)).data_ptr() == bufs[2].data_ptr()
    assert _scratch.take((5,), torch.zeros(1)).data_ptr() == bufs[0].data_ptr()
    assert _scratch.take((5,), torch.zeros(1)).data_ptr() != bufs[1].data_ptr()


def test_buffers_over_the_limit_are_not_kept(monkeypatch):
    monkeypatch.setattr(_scratch, "LIMIT_BYTES", 64)
    buf = torch.empty(17)  # 68 bytes
    _scratch.give(buf)
    assert _scratch.take((17,), buf).data_ptr() != buf.data_ptr()


def _problem(seed, n=50, m=60):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 2, generator=g), torch.randn(m, 2, generator=g) + 0.3
    return torch.cdist(x, y) ** 2


def test_consecutive_kernel_solves_reuse_the_kernel_memory_and_keep_their_results(monkeypatch):
    pointers = spy_absorptions(monkeypatch)
    c1, c2 = _problem(0), _problem(1)
    first = sinkhorn(c1, eps=0.05, tol=1e-5, backend="kernel")
    first_plan = first.plan.clone()
    n_first = len(pointers)
    second = sinkhorn(c2, eps=0.05, tol=1e-5, backend="kernel")
    assert n_first >= 1 and len(pointers) > n_first
    assert set(pointers[n_first:]) == {pointers[0]}  # the second solve absorbed into it
    # the first result does not alias the kernel the second solve overwrote
    torch.testing.assert_close(first.plan, first_plan, rtol=0, atol=0)
    # and reuse changes nothing: the same problem solved with a fresh allocation
    _scratch.clear()
    fresh = sinkhorn(c2, eps=0.05, tol=1e-5, backend="kernel")
    for name in ("f", "g", "value", "error"):
        torch.testing.assert_close(getattr(second, name), getattr(fresh, name), rtol=0, atol=0)


def _clouds(seed, n=40, m=50):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), torch.randn(m, 2, generator=g) + 0.3


def _idle_pointers():
    return {buf.data_ptr() for pool in _scratch._idle.values() for buf in pool}


@pytest.mark.parametrize("backend", ["tensorized", "kernel"])
def test_a_point_cloud_solve_gives_its_cost_matrix_back_and_its_result_recomputes_it(backend):
    x1, y1 = _clouds(0)
    # (init="zeros": the matrix below has no points for the Gaussian initializer)
    first = sinkhorn(PointCloud(x1, y1), eps=0.1, tol=1e-6, backend=backend, init="zeros")
    idle = _idle_pointers()
    assert len(idle) == (2 if backend == "kernel" else 1)  # the cost (and the kernel)
    # the result evaluates the cost again: its plan and certificate are those of the matrix
    ref = sinkhorn(sqeuclidean(x1, y1), eps=0.1, tol=1e-6, backend=backend)
    first_plan = first.plan.clone()
    torch.testing.assert_close(first_plan, ref.plan, rtol=0, atol=0)
    torch.testing.assert_close(first.linear_value, ref.linear_value, rtol=0, atol=0)
    torch.testing.assert_close(first.gap, ref.gap, rtol=0, atol=0)
    # the next solve of that size writes its cost into the memory given back ...
    x2, y2 = _clouds(1)
    second = sinkhorn(PointCloud(x2, y2), eps=0.1, tol=1e-6, backend=backend, init="zeros")
    assert _idle_pointers() == idle
    # ... and neither result changed
    torch.testing.assert_close(first.plan, first_plan, rtol=0, atol=0)
    again = sinkhorn(sqeuclidean(x2, y2), eps=0.1, tol=1e-6, backend=backend)
    torch.testing.assert_close(second.plan, again.plan, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["tensorized", "kernel"])
@pytest.mark.parametrize("needs_grad", ["points", "weights"])
def test_a_cost_that_autograd_holds_is_not_given_back(needs_grad, backend):
    x, y = _clouds(2)
    a = torch.full((40,), 1 / 40)
    if needs_grad == "points":
        x.requires_grad_(True)
    else:
        a.requires_grad_(True)
    res = sinkhorn(PointCloud(x, y), a, eps=0.1, tol=1e-6, backend=backend)
    # only the kernel's memory comes back, never the cost
    assert len(_idle_pointers()) == (1 if backend == "kernel" else 0)
    res.value.backward()
    grad = x.grad if needs_grad == "points" else a.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)
