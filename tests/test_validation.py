"""Every bad input raises a TypeError or ValueError that says what was received and expected."""

import math
import re
import sys

import numpy as np
import pytest
import torch

from couplings import PointCloud, sinkhorn, sinkhorn_divergence

C = torch.rand(4, 5, dtype=torch.float64)
A = torch.full((4,), 0.25, dtype=torch.float64)
B = torch.full((5,), 0.2, dtype=torch.float64)


def _nan_at(t, idx):
    t = t.clone()
    t[idx] = math.nan
    return t


CASES = [
    # (description, kwargs, exception, message fragment)
    ("a of the wrong length", dict(a=torch.full((3,), 1 / 3, dtype=torch.float64)), ValueError,
     r"a must have shape \(4,\)"),
    ("b of the wrong length", dict(b=torch.full((4,), 0.25, dtype=torch.float64)), ValueError,
     r"b must have shape \(5,\)"),
    ("cost of one dimension", dict(cost=torch.rand(5, dtype=torch.float64)), ValueError,
     r"shape \(n, m\) or \(B, n, m\)"),
    ("negative weight", dict(a=torch.tensor([0.5, 0.5, 0.25, -0.25], dtype=torch.float64)),
     ValueError, "non-negative"),
    ("nan weight", dict(a=_nan_at(A, 0)), ValueError, "must be finite"),
    ("inf weight", dict(b=torch.tensor([math.inf, 0, 0, 0, 0], dtype=torch.float64)), ValueError,
     "must be finite"),
    ("all-zero weights", dict(a=torch.zeros(4, dtype=torch.float64)), ValueError,
     "positive total mass"),
    ("unequal masses", dict(a=A * 2), ValueError, "equal total mass"),
    ("nan cost", dict(cost=_nan_at(C, (0, 0))), ValueError, "cost must be finite"),
    ("inf cost", dict(cost=C.clone().fill_(math.inf)), ValueError, "cost must be finite"),
    ("zero eps", dict(eps=0.0), ValueError, "eps must be a finite number > 0"),
    ("negative eps", dict(eps=-1.0), ValueError, "eps must be a finite number > 0"),
    ("nan eps", dict(eps=math.nan), ValueError, "eps must be a finite number > 0"),
    ("string eps", dict(eps="0.1"), TypeError, "eps must be a positive real"),
    ("float32 weights with float64 cost", dict(a=A.float()), TypeError, "dtype"),
    ("integer cost", dict(cost=torch.ones(4, 5, dtype=torch.long)), TypeError, "floating dtype"),
    ("list cost", dict(cost=[[0.0, 1.0]]), TypeError, "torch.Tensor"),
    ("zero tol", dict(tol=0.0), ValueError, "tol"),
    ("float max_iter", dict(max_iter=10.5), TypeError, "max_iter"),
    ("scaling of 1", dict(scaling=1.0), ValueError, "scaling"),
    ("unknown grad mode", dict(grad="autodiff"), ValueError, "grad must be one of"),
    ("batched weights for an unbatched cost", dict(a=A.expand(2, 4)), ValueError, "a must have"),
]


@pytest.mark.parametrize("desc, kwargs, exc, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises(desc, kwargs, exc, match):
    args = dict(cost=C, a=A, b=B, eps=0.1)
    args.update(kwargs)
    cost = args.pop("cost")
    with pytest.raises(exc, match=match):
        sinkhorn(cost, **args)


def test_mixed_devices_are_checked_without_cuda():
    meta = torch.full((4,), 0.25, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="device"):
        sinkhorn(C, meta, B, eps=0.1)


def test_batched_weight_shape_mismatch():
    c = torch.rand(3, 4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        sinkhorn(c, torch.full((2, 4), 0.25, dtype=torch.float64), eps=0.1)


def test_numpy_inputs_are_accepted():
    res = sinkhorn(C.numpy(), A.numpy(), B.numpy(), eps=0.1)
    assert isinstance(res.value, torch.Tensor) and res.value.dtype == torch.float64
    assert np.isfinite(res.value.item())


def test_point_cloud_errors():
    with pytest.raises(ValueError, match="feature dimension"):
        PointCloud(torch.rand(3, 2), torch.rand(4, 3))
    with pytest.raises(ValueError, match="unknown cost"):
        PointCloud(torch.rand(3, 2), torch.rand(4, 2), cost="nope")
    with pytest.raises(ValueError, match="returned shape"):
        PointCloud(torch.rand(3, 2), torch.rand(4, 2), cost=lambda x, y: x.sum(-1)).cost_matrix()


def test_divergence_rejects_bad_input():
    x = torch.rand(5, 2)
    with pytest.raises(ValueError, match="non-negative"):
        sinkhorn_divergence(x, x, torch.tensor([1.0, 1, 1, -1, -1]), eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_divergence(x, x, eps=0)


def test_no_nan_where_an_error_belongs():
    """A cost with a huge but finite range still solves, without NaN or inf."""
    c = torch.tensor([[0.0, 1e30], [1e30, 0.0]], dtype=torch.float32)
    res = sinkhorn(c, eps=1e-3, tol=1e-4)
    assert torch.isfinite(res.value) and torch.isfinite(res.plan).all()


def test_check_finite_summed_fast_path_is_exact():
    from couplings._validation import check_finite

    big = torch.full((4, 4), 6e4, dtype=torch.float16)  # finite entries whose sum overflows
    assert not bool(torch.isfinite(big.sum()))
    check_finite(big, "big")  # falls back to the entry-wise check: passes
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.zeros(3, 5, dtype=torch.float64)
        x[1, 2] = bad
        with pytest.raises(ValueError, match="1 non-finite entries"):
            check_finite(x, "x")
    # +inf and -inf together sum to nan: still caught
    x = torch.zeros(6)
    x[0], x[1] = math.inf, -math.inf
    with pytest.raises(ValueError, match="2 non-finite entries"):
        check_finite(x, "x")
    check_finite(torch.arange(5), "ints")  # integer tensors are always finite


@pytest.mark.parametrize("backend", ["auto", "tensorized", "online"])
def test_overflowing_iterations_raise_instead_of_returning_nan(backend):
    """eps far below what float32 can divide the cost by: the potentials overflow to NaN.
    The loop stops there (not at max_iter) and the solve says why, instead of a NaN value.
    (A cost matrix on the dense backends; points on the online one, whose message bounds the
    largest cost from the points' norms.)"""
    gen = torch.Generator().manual_seed(0)
    x, y = 10 * torch.randn(20, 2, generator=gen), 10 * torch.randn(25, 2, generator=gen)
    problem = PointCloud(x, y) if backend == "online" else torch.cdist(x, y) ** 2
    with pytest.raises(ValueError, match=r"overflowed .* eps=1e-38, float32\): the largest "
                                         r"\|cost\| / eps is (at most )?[0-9.e+]+, beyond the "
                                         r"dtype's range") as info:
        sinkhorn(problem, eps=1e-38, max_iter=20_000, backend=backend)
    stopped_at = int(re.search(r"after (\d+) iterations", str(info.value)).group(1))
    assert ("at most" in str(info.value)) == (backend == "online")
    assert stopped_at < 1000  # it stopped at its first check with a NaN error
    # the same problem in float64 fits and solves
    problem = (PointCloud(x.double(), y.double()) if backend == "online"
               else torch.cdist(x.double(), y.double()) ** 2)
    res = sinkhorn(problem, eps=1e-38, max_iter=20_000, backend=backend)
    assert torch.isfinite(res.value)


@pytest.mark.parametrize("backend", ["auto", "tensorized"])
def test_an_eps_the_dtype_cannot_divide_a_point_cloud_by_is_refused_at_once(backend, monkeypatch):
    """On the CPU a point cloud's cost comes with its bounds: an eps at which max C / eps
    overflows float32 is refused before any iteration. (The bounds come with the native cost
    pass; without the native kernels the same eps is refused after the loop.)"""
    from couplings.solvers import _native

    gen = torch.Generator().manual_seed(0)
    x, y = 10 * torch.randn(20, 2, generator=gen), 10 * torch.randn(25, 2, generator=gen)
    if not _native.available():
        with pytest.raises(ValueError, match=r"overflowed .* beyond the dtype's range"):
            sinkhorn(PointCloud(x, y), eps=1e-38, backend=backend)
        return
    sk = sys.modules["couplings.solvers.sinkhorn"]

    def no_iterations(*args, **kwargs):
        raise AssertionError("the solve iterated")

    monkeypatch.setattr(sk, "_iterate", no_iterations)
    monkeypatch.setattr(sk, "_iterate_kernel", no_iterations)
    with pytest.raises(ValueError, match=r"eps=1e-38 is too small for float32 at this cost: the "
                                         r"largest \|cost\| / eps is [0-9.e+]+, beyond"):
        sinkhorn(PointCloud(x, y), eps=1e-38, backend=backend)
