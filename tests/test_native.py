"""The native CPU kernels of the kernel-domain update (``couplings.solvers._native``).

Checked against float64 references, for the same bits in any batch and at any thread count,
for the update's safety numbers (NaN included), against the torch path inside the solver, and
for the loader: its cache, its fallback when no compiler runs, and its refusal of a second
OpenMP runtime.
"""

import math
import os
import shlex
import shutil

import pytest
import torch

import couplings
from couplings.solvers import _native, _softmin

COMPILER = shutil.which(shlex.split(os.environ.get("CC", "cc"))[0])
needs_native = pytest.mark.skipif(
    not _native.available(), reason=f"native kernels not built here: {_native.status()}")


def reference(mat, vec, transpose):
    m64, v64 = mat.double(), vec.double()
    return (torch.einsum("bij,bi->bj", m64, v64) if transpose
            else torch.einsum("bij,bj->bi", m64, v64))


def test_the_kernels_build_wherever_a_compiler_is():
    if COMPILER is None:
        assert not _native.available() and _native.status().startswith("not used")
    else:
        assert _native.available(), _native.status()
        assert _native.status() == "loaded"


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("shape", [(1, 300, 200), (5, 7, 6), (64, 33, 17), (2, 1, 40)])
@pytest.mark.parametrize("strided", [False, True])
def test_products_match_the_reference(dtype, transpose, shape, strided):
    gen = torch.Generator().manual_seed(0)
    bsz, n, m = shape
    if strided:  # a transposed view, as the implicit gradient passes
        mat = torch.randn(bsz, m, n, generator=gen, dtype=dtype).transpose(-2, -1)
    else:
        mat = torch.randn(bsz, n, m, generator=gen, dtype=dtype)
    vec = torch.randn(bsz, n if transpose else m, generator=gen, dtype=dtype)
    out = _native.batched_mv(mat, vec, transpose=transpose)
    assert out.shape == (bsz, m if transpose else n) and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), reference(mat, vec, transpose), rtol=tol,
                               atol=tol * max(n, m))


@needs_native
@pytest.mark.parametrize("transpose", [False, True])
def test_a_matrix_gives_the_same_bits_in_any_batch_and_thread_count(transpose):
    """Active-set compaction needs a problem's products independent of its batch; the split
    across threads must not change them either."""
    gen = torch.Generator().manual_seed(1)
    threads = torch.get_num_threads()
    for side in (12, 300):  # serial, and split across threads
        mat = torch.rand(5, side, side + 3, generator=gen)
        vec = torch.rand(5, side if transpose else side + 3, generator=gen)
        whole = _native.batched_mv(mat, vec, transpose=transpose)
        for keep in ([1, 3], [2], [0, 1, 2, 3]):
            part = _native.batched_mv(mat[keep], vec[keep], transpose=transpose)
            assert torch.equal(part, whole[keep])
        try:
            torch.set_num_threads(1)
            alone = _native.batched_mv(mat, vec, transpose=transpose)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(alone, whole)


def torch_update(kernel, pot, anchor, weights, other, rows, positive):
    """The eager update of ``KernelSoftmin._matvec``, in float64."""
    kernel, pot, anchor, weights, other = (x.double() for x in
                                           (kernel, pot, anchor, weights, other))
    dev = pot - anchor
    if not positive:
        dev = torch.where(weights > 0, dev, torch.zeros_like(dev))
    w = torch.exp(dev) * weights
    log_total = torch.log(reference(kernel, w, not rows))
    stats = (dev.min(), log_total.min(), log_total.max(), w.sum())
    return other - log_total, [float(x) for x in stats]


@needs_native
@pytest.mark.parametrize("rows", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_update_matches_the_eager_one(rows, dtype):
    gen = torch.Generator().manual_seed(2)
    bsz, n, m = 3, 40, 30
    k, l = (m, n) if rows else (n, m)
    kernel = torch.rand(bsz, n, m, generator=gen, dtype=dtype)
    pot, anchor = (torch.randn(bsz, k, generator=gen, dtype=dtype) for _ in range(2))
    weights = torch.rand(bsz, k, generator=gen, dtype=dtype) + 0.1
    other = torch.randn(bsz, l, generator=gen, dtype=dtype)
    out, stats, _, _ = _native.kernel_update(kernel, pot, anchor, weights, other, rows=rows,
                                             positive=True)
    want, want_stats = torch_update(kernel, pot, anchor, weights, other, rows, True)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    assert stats == pytest.approx(want_stats, rel=tol, abs=tol)


@needs_native
@pytest.mark.parametrize("rows", [True, False])
def test_an_update_gives_the_same_bits_in_any_batch(rows):
    """The element-wise loops of an update run over the batch as one array: a problem's
    entries must come out the same wherever its slice falls in the vector lanes."""
    gen = torch.Generator().manual_seed(8)
    for n, m in ((7, 13), (33, 29), (100, 37)):
        kernel = torch.rand(5, n, m, generator=gen)
        k, l = (m, n) if rows else (n, m)
        pot, anchor = torch.randn(5, k, generator=gen), torch.randn(5, k, generator=gen)
        weights = torch.rand(5, k, generator=gen) + 0.01
        other = torch.randn(5, l, generator=gen)
        whole, *_ = _native.kernel_update(kernel, pot, anchor, weights, other, rows=rows,
                                          positive=True)
        for keep in ([0], [1, 3], [2, 3, 4]):
            part, *_ = _native.kernel_update(kernel[keep], pot[keep], anchor[keep],
                                            weights[keep], other[keep], rows=rows,
                                            positive=True)
            assert torch.equal(part, whole[keep])


@needs_native
@pytest.mark.parametrize("rows", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_epilogue_relaxes_and_measures_the_error_as_the_loop_does(rows, dtype):
    """The fused over-relaxation and error share equal the loop's torch formulas
    (``_relaxed`` and ``sum w |expm1(r - new)|`` over positive weights), including a zero
    weight whose deviation is not finite, steps beyond the cap and deviations on both sides of
    the polynomial's range of expm1."""
    gen = torch.Generator().manual_seed(12)
    bsz, n, m = 3, 37, 21
    k, l = (m, n) if rows else (n, m)
    kernel = torch.rand(bsz, n, m, generator=gen, dtype=dtype) + 0.05
    pot, anchor = (torch.randn(bsz, k, generator=gen, dtype=dtype) for _ in range(2))
    weights = torch.rand(bsz, k, generator=gen, dtype=dtype) + 0.1
    other = torch.randn(bsz, l, generator=gen, dtype=dtype)
    out, *_ = _native.kernel_update(kernel, pot, anchor, weights, other, rows=rows,
                                    positive=True)
    spread = torch.tensor([1e-6, 1e-3, 0.2, 0.34, 0.36, 1.5, 4.0], dtype=dtype)
    old = out + spread.repeat(l)[:l] * torch.sign(torch.randn(bsz, l, generator=gen,
                                                              dtype=dtype))
    old[0, 3] = math.inf  # a zero-weight entry of the error
    err_w = torch.rand(bsz, l, generator=gen, dtype=dtype)
    err_w[0, 3] = 0.0
    excess = torch.tensor([[0.0], [0.5], [0.9]], dtype=dtype)
    new, _, relaxed, error = _native.kernel_update(
        kernel, pot, anchor, weights, other, rows=rows, positive=True, old=old, excess=excess,
        cap=3.0, error_weights=err_w, error_of_relaxed=not rows)
    assert torch.equal(new, out)
    want = out + ((out - old) * excess).clamp(-3.0, 3.0)
    ok = torch.isfinite(old)
    torch.testing.assert_close(relaxed[ok], want[ok], rtol=0, atol=4 * torch.finfo(dtype).eps)
    ref = (want if not rows else old).double()
    dev = torch.expm1(ref - out.double()).abs()
    want_err = torch.where(err_w > 0, err_w.double() * dev, 0.0).sum(-1)
    assert torch.isfinite(error).all() and error.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(error.double(), want_err, rtol=tol, atol=0)
    # the relaxation alone, and the error alone
    _, _, relaxed_only, none = _native.kernel_update(
        kernel, pot, anchor, weights, other, rows=rows, positive=True, old=old, excess=excess,
        cap=3.0)
    assert none is None
    torch.testing.assert_close(relaxed_only, relaxed, rtol=0, atol=0, equal_nan=True)
    _, _, no_relax, error_only = _native.kernel_update(
        kernel, pot, anchor, weights, other, rows=rows, positive=True, old=old,
        error_weights=err_w)
    assert no_relax is None
    if rows:
        assert torch.equal(error_only, error)
    # weights shared by the batch (an expanded view, as the solver passes them) and a
    # transposed view of old: each is made contiguous for the call
    shared = err_w[1:2].expand(bsz, l)
    old_view = old.t().contiguous().t()
    _, _, relaxed_v, error_v = _native.kernel_update(
        kernel, pot, anchor, weights, other, rows=rows, positive=True, old=old_view,
        excess=excess, cap=3.0, error_weights=shared, error_of_relaxed=not rows)
    _, _, relaxed_c, error_c = _native.kernel_update(
        kernel, pot, anchor, weights, other, rows=rows, positive=True, old=old.clone(),
        excess=excess, cap=3.0, error_weights=shared.contiguous(), error_of_relaxed=not rows)
    torch.testing.assert_close(relaxed_v, relaxed_c, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(error_v, error_c, rtol=0, atol=0, equal_nan=True)


@needs_native
def test_zero_weights_are_left_out_and_nans_are_reported():
    gen = torch.Generator().manual_seed(3)
    kernel = torch.rand(2, 6, 5, generator=gen)
    pot, anchor = torch.randn(2, 5, generator=gen), torch.randn(2, 5, generator=gen)
    weights = torch.rand(2, 5, generator=gen) + 0.1
    weights[0, 2] = 0.0
    pot[0, 2] = -math.inf  # a padded entry's potential
    other = torch.randn(2, 6, generator=gen)
    out, stats, *_ = _native.kernel_update(kernel, pot, anchor, weights, other, rows=True,
                                           positive=False)
    want, want_stats = torch_update(kernel, pot, anchor, weights, other, True, False)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    assert stats == pytest.approx(want_stats, rel=1e-5)
    pot[1, 0] = math.nan
    out, stats, *_ = _native.kernel_update(kernel, pot, anchor, weights, other, rows=True,
                                           positive=False)
    assert all(math.isnan(s) for s in stats)  # so the solver's safety test fails


@needs_native
@pytest.mark.parametrize("eps", [0.3, 0.05])
def test_the_solver_gives_what_the_torch_path_gives(monkeypatch, eps):
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(3, 120, 2, generator=gen), torch.randn(3, 100, 2, generator=gen) + 1
    a = torch.rand(3, 120, generator=gen) + 0.1
    a[1, 100:] = 0.0  # padding
    a = a / a.sum(-1, keepdim=True)
    b = torch.full((3, 100), 0.01)

    def solve():
        return couplings.sinkhorn(couplings.PointCloud(x, y), a, b, eps=eps, tol=1e-4,
                                  backend="kernel")

    native = solve()
    assert native.backend == "kernel" and bool(native.converged.all())
    monkeypatch.setattr(_native, "enabled", False)
    eager = solve()
    torch.testing.assert_close(native.value, eager.value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(native.f, eager.f, rtol=1e-4, atol=1e-4 * eps)
    assert abs(native.n_iter - eager.n_iter) <= 2


@needs_native
def test_the_native_path_is_taken_by_the_solver(monkeypatch):
    calls = []
    real = _native.kernel_update

    def spy(*args, **kwargs):
        calls.append(kwargs["rows"])
        return real(*args, **kwargs)

    monkeypatch.setattr(_native, "kernel_update", spy)
    x, y = torch.randn(50, 2), torch.randn(40, 2)
    res = couplings.sinkhorn(couplings.PointCloud(x, y), eps=0.5, backend="kernel")
    assert calls and True in calls and False in calls
    assert res.kernel_counts["products"] > 0


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """The loader as in a new process, with its cache in ``tmp_path``."""
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_status", "not loaded yet")
    monkeypatch.setattr(_native, "enabled", True)
    monkeypatch.setenv("COUPLINGS_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_without_a_compiler_the_solver_falls_back(fresh_loader, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_loader / "no-such-compiler"))
    assert not _native.available()
    assert _native.status().startswith("not used: FileNotFoundError")
    assert not _native.usable(torch.zeros(2, 2))
    x, y = torch.randn(30, 2), torch.randn(20, 2)
    res = couplings.sinkhorn(couplings.PointCloud(x, y), eps=0.5, backend="kernel")
    assert res.backend == "kernel" and bool(res.converged.all())
    assert res.kernel_counts["products"] > 0  # torch's products


@pytest.mark.skipif(COMPILER is None, reason="no C compiler")
def test_the_library_is_built_once_into_the_cache(fresh_loader, monkeypatch):
    assert _native.available(), _native.status()
    built = sorted(fresh_loader.glob("couplings-native-*.so"))
    assert len(built) == 1 and not list(fresh_loader.glob("*.tmp*"))
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_status", "not loaded yet")
    assert _native.available()
    assert built[0].stat().st_mtime_ns == stamp  # loaded from the cache, not rebuilt


@pytest.mark.skipif(COMPILER is None, reason="no C compiler")
def test_a_second_openmp_runtime_is_refused(fresh_loader, monkeypatch):
    seen = iter([{"/torch/lib/libgomp.so.1"},
                 {"/torch/lib/libgomp.so.1", "/usr/lib/libgomp.so.1"}])
    monkeypatch.setattr(_native, "_openmp_runtimes", lambda: next(seen))
    assert not _native.available()
    assert "second OpenMP runtime" in _native.status()


def test_the_switch_turns_them_off(monkeypatch):
    monkeypatch.setattr(_native, "enabled", False)
    assert not _native.available() and _native.status() == "disabled"
    assert not _native.usable(torch.zeros(2, 2))


def test_only_cpu_float_tensors_without_autograd_are_taken():
    assert not _native.usable(torch.zeros(2, 2, dtype=torch.float16))
    assert not _native.usable(torch.zeros(2, 2), torch.zeros(2, dtype=torch.float64))
    assert not _native.usable(torch.zeros(2, 2, requires_grad=True))
    with torch.no_grad():
        assert _native.usable(torch.zeros(2, 2, requires_grad=True)) == _native.available()
    assert _native.usable(torch.zeros(2, 2)) == _native.available()
    assert _softmin.batched_mv(torch.ones(1, 2, 3), torch.ones(1, 3)).tolist() == [[3.0, 3.0]]


@needs_native
@pytest.mark.parametrize("rows", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_transforms_match_the_reference(rows, dtype):
    gen = torch.Generator().manual_seed(5)
    bsz, n, m = 3, 70, 90
    cost = torch.rand(bsz, n, m, generator=gen, dtype=dtype) * 10
    h = torch.randn(bsz, m if rows else n, generator=gen, dtype=dtype)
    h[0, 3] = -math.inf  # left out
    out = _native.ctransform(cost, h, 0.7, rows=rows)
    c64, h64 = cost.double() * 0.7, h.double()
    want = ((c64 - h64.unsqueeze(-2)).amin(-1) if rows else (c64 - h64.unsqueeze(-1)).amin(-2))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_absorb_matches_the_reference_and_cuts_small_entries(dtype):
    gen = torch.Generator().manual_seed(6)
    bsz, n, m = 2, 50, 40
    cost = torch.rand(bsz, n, m, generator=gen, dtype=dtype) * 100
    alpha = torch.randn(bsz, n, generator=gen, dtype=dtype) * 10
    beta = torch.randn(bsz, m, generator=gen, dtype=dtype) * 10
    out = _native.absorb(torch.empty_like(cost), alpha, beta, cost, 0.8, -58.0)
    z = alpha.double().unsqueeze(-1) + beta.double().unsqueeze(-2) - 0.8 * cost.double()
    want = torch.where(z >= -58.0, torch.exp(z), 0.0)
    kept = want > 0
    assert 0 < int(kept.sum()) < kept.numel()  # both sides of the cutoff occur
    assert torch.equal(out > 0, kept)
    rel = ((out.double() - want).abs() / want)[kept].max()
    # the exponent z carries float rounding of its own: |z| up to ~100 in float32
    assert rel < (2e-5 if dtype == torch.float32 else 1e-12)


@needs_native
def test_the_float32_exponential_is_accurate_to_one_unit():
    """The vectorized exp of the C source, through ``absorb`` with exponent ``x`` exactly."""
    x = torch.linspace(-87.0, 88.0, 400_001).view(1, 1, -1)
    out = _native.absorb(torch.empty_like(x), torch.zeros(1, 1), torch.zeros(1, x.shape[-1]),
                         -x, 1.0, -100.0)
    exact = torch.exp(x.double())
    one_ulp = (torch.nextafter(exact.float(), torch.tensor(math.inf)).double()
               - exact.float().double())
    assert float(((out.double() - exact).abs() / one_ulp).max()) <= 1.0
    special = torch.tensor([[[-100.0, 100.0, math.nan]]])
    got = _native.absorb(torch.empty_like(special), torch.zeros(1, 1), torch.zeros(1, 3),
                         -special, 1.0, -200.0)
    assert got[0, 0, 0] == 0 and got[0, 0, 1] == math.inf and got[0, 0, 2] == 0  # NaN: cut


@needs_native
def test_the_float32_logarithm_is_accurate():
    """The vectorized log of the C source, through a 1 x 1 update: ``out = -log K``."""
    values = torch.logspace(-44, 38, 200_001, dtype=torch.float64).float()
    values = torch.cat([values, torch.tensor([1.0, 2.0, 0.5, 1e-40, 0.0, math.inf])])
    bsz = values.numel()
    ones, zeros = torch.ones(bsz, 1), torch.zeros(bsz, 1)
    out, stats, _, _ = _native.kernel_update(values.view(bsz, 1, 1), zeros, zeros, ones, zeros,
                                             rows=True, positive=True)
    got, exact = -out[:, 0].double(), torch.log(values.double())
    finite = torch.isfinite(exact)
    one_ulp = (torch.nextafter(exact.float(), torch.tensor(math.inf)).double()
               - exact.float().double()).abs()
    assert float(((got - exact).abs() / one_ulp)[finite].max()) <= 3.0
    assert got[-2] == -math.inf and got[-1] == math.inf
    assert stats[1] == -math.inf and stats[2] == math.inf


@needs_native
@pytest.mark.parametrize("dim", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_squared_euclidean_cost_matches_the_reference(dim, dtype):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 30, dim, generator=gen, dtype=dtype)
    y = torch.randn(2, 45, dim, generator=gen, dtype=dtype) + 1
    y[1, :30] = x[1]  # coincident points: the cost is clamped at 0, never negative
    out, (lo, hi) = _native.sqeuclidean_into(x, y, torch.empty(2, 30, 45, dtype=dtype))
    want = ((x.double().unsqueeze(-2) - y.double().unsqueeze(-3)) ** 2).sum(-1)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol * 10)
    assert bool((out >= 0).all())
    diag = out[1, torch.arange(30), torch.arange(30)]
    assert float(diag.abs().max()) <= 1e-5 * float(x[1].pow(2).sum(-1).max())
    # the bounds of the same pass are those of the matrix it wrote
    assert torch.equal(lo, out.amin((-2, -1))) and torch.equal(hi, out.amax((-2, -1)))


@needs_native
@pytest.mark.parametrize("grad", [False, True])
def test_a_nan_or_overflowing_point_is_an_error_not_a_zero_cost(grad):
    """The clamp at 0 turns a NaN entry into 0: the pass flags it, and the solver raises the
    usual error (with the native cost, for points with and without a gradient)."""
    x, y = torch.randn(300, 2), torch.randn(400, 2)
    bad = x.clone()
    bad[5, 0] = math.nan
    _, (_, hi) = _native.sqeuclidean_into(bad[None], y[None], torch.empty(1, 300, 400))
    assert math.isnan(float(hi))
    huge_x, huge_y = x.clone(), y.clone()
    huge_x[0], huge_y[0] = 1e20, 1e20  # norms overflow: inf - inf
    for px, py in ((bad, y), (huge_x, huge_y)):
        px = px.clone().requires_grad_(grad)
        with pytest.raises(ValueError, match="must be finite"):
            couplings.sinkhorn(couplings.PointCloud(px, py), eps=1.0)


@needs_native
def test_the_cost_range_comes_from_the_cost_pass(monkeypatch):
    """The solver reads the cost's range from the native pass instead of reducing the matrix
    again, and gets the same range (hence the same solve) as from the matrix; a zero weight
    still takes the range over the support."""
    from couplings.solvers import _softmin

    gen = torch.Generator().manual_seed(9)
    x = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(150, 2, generator=gen, dtype=torch.float64) * 2
    y[3] = 20.0  # the largest costs, in a column that gets zero weight below
    seen = []
    real = _softmin.support_bounds

    def spy(cost, a, b, known=None):
        seen.append((known is not None, real(cost, a, b, known)))
        return seen[-1][1]

    monkeypatch.setattr(_softmin, "support_bounds", spy)
    fast = couplings.sinkhorn(couplings.PointCloud(x, y), eps=2.0, tol=1e-8, init="zeros")
    matrix, _ = _native.sqeuclidean_into(x[None], y[None], torch.empty(1, 200, 150,
                                                                       dtype=x.dtype))
    slow = couplings.sinkhorn(matrix[0], eps=2.0, tol=1e-8)  # the same matrix, reduced again
    assert [known for known, _ in seen] == [True, False]
    assert all(torch.equal(p, q) for p, q in zip(seen[0][1], seen[1][1], strict=True))
    assert int(fast.n_iter) == int(slow.n_iter)
    torch.testing.assert_close(fast.f, slow.f, rtol=0, atol=0)
    b = torch.full((150,), 1 / 149, dtype=torch.float64)
    b[3] = 0.0
    seen.clear()
    couplings.sinkhorn(couplings.PointCloud(x, y), b=b, eps=2.0)
    cost = couplings.PointCloud(x, y).cost_matrix()
    support_max = float(cost[..., torch.arange(150) != 3].max())
    assert seen[0][0] and float(seen[0][1][0]) == pytest.approx(support_max, rel=1e-12)
    assert support_max < 0.9 * float(cost.max())  # (not the range of the whole matrix)


@needs_native
def test_the_solver_takes_the_native_cost_for_small_dimensions(monkeypatch):
    calls = []
    real = _native.sqeuclidean_into

    def spy(x, y, out):
        calls.append(x.shape[-1])
        return real(x, y, out)

    monkeypatch.setattr(_native, "sqeuclidean_into", spy)
    for dim in (2, 3, 8):
        x, y = torch.randn(40, dim), torch.randn(50, dim)
        res = couplings.sinkhorn(couplings.PointCloud(x, y), eps=1.0)
        ref = couplings.sinkhorn(torch.cdist(x, y) ** 2, eps=1.0)
        torch.testing.assert_close(res.value, ref.value, rtol=1e-5, atol=1e-5)
    assert calls == [2, 3]  # d = 8: torch's batched product


@needs_native
@pytest.mark.parametrize("n, m", [(40, 30), (30, 40)])
def test_implicit_gradients_are_the_same_without_the_native_kernels(monkeypatch, n, m):
    """The implicit backward builds its kernel ``exp((f + g - C) / eps)`` natively on the CPU;
    the gradients in the points and the weights equal those of the torch path."""
    gen = torch.Generator().manual_seed(9)
    x0, y0 = torch.randn(n, 2, generator=gen), torch.randn(m, 2, generator=gen) + 0.5
    a0 = torch.rand(n, generator=gen) + 0.1
    a0[3] = 0.0  # a point off the support
    a0 = a0 / a0.sum()

    def gradients():
        x, a = x0.clone().requires_grad_(), a0.clone().requires_grad_()
        res = couplings.sinkhorn(couplings.PointCloud(x, y0), a, None, eps=0.3, tol=1e-6,
                                 grad="implicit")
        (res.value + (res.f * torch.arange(n)).sum() / n).backward()
        return x.grad, a.grad

    capped = []
    real = _native.absorb

    def spy(*args, **kwargs):
        capped.append(kwargs.get("upper", math.inf) < math.inf)  # the implicit kernel's call
        return real(*args, **kwargs)

    monkeypatch.setattr(_native, "absorb", spy)
    native = gradients()
    assert any(capped)
    monkeypatch.setattr(_native, "enabled", False)
    eager = gradients()
    for got, want in zip(native, eager, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@needs_native
def test_absorb_caps_the_exponent():
    cost = torch.zeros(1, 2, 2, dtype=torch.float64)
    out = _native.absorb(torch.empty_like(cost), torch.tensor([[500.0, 0.0]], dtype=torch.float64),
                         torch.zeros(1, 2, dtype=torch.float64), cost, 1.0, -math.inf,
                         upper=10.0)
    assert out[0, 0].tolist() == [math.exp(10.0)] * 2 and out[0, 1].tolist() == [1.0, 1.0]


@needs_native
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_the_cost_pullback_matches_autograd(dim):
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 30, dim, dtype=torch.float64, generator=gen)
    y = torch.randn(2, 45, dim, dtype=torch.float64, generator=gen)
    grad = torch.randn(2, 30, 45, dtype=torch.float64, generator=gen)
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    (((xr.unsqueeze(-2) - yr.unsqueeze(-3)) ** 2).sum(-1) * grad).sum().backward()
    torch.testing.assert_close(_native.sqeuclidean_pull(grad, x, y, rows=True), xr.grad)
    torch.testing.assert_close(_native.sqeuclidean_pull(grad, x, y, rows=False), yr.grad)


@needs_native
def test_the_native_cost_function_passes_gradcheck_and_the_solver_takes_it(monkeypatch):
    sk = __import__("sys").modules["couplings.solvers.sinkhorn"]
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 6, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randn(1, 5, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(sk._NativeSqEuclidean.apply, (x, y))
    calls = []
    real = sk._NativeSqEuclidean.apply
    monkeypatch.setattr(sk._NativeSqEuclidean, "apply", lambda *a: calls.append(1) or real(*a))
    xs, ys = x[0].detach().requires_grad_(), y[0].detach().requires_grad_()
    implicit = couplings.sinkhorn(couplings.PointCloud(xs, ys), eps=0.5, grad="implicit",
                                  tol=1e-12, max_iter=5000)
    (gx,) = torch.autograd.grad(implicit.value, xs)
    assert calls == [1]
    # grad="unroll" keeps torch's graph (it may be differentiated twice)
    unrolled = couplings.sinkhorn(couplings.PointCloud(xs, ys), eps=0.5, grad="unroll",
                                  tol=1e-12, max_iter=5000)
    (gx_unrolled,) = torch.autograd.grad(unrolled.value, xs)
    assert calls == [1]
    torch.testing.assert_close(gx, gx_unrolled, rtol=1e-6, atol=1e-8)
