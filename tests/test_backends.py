"""The Sinkhorn backends (tensorized, compiled, online) solve the same problems to the same
answers, ``backend="auto"`` picks and reports one, and bad combinations are refused."""

import math
import warnings

import pytest
import torch

from couplings import PointCloud, SinkhornLoss, sinkhorn, sinkhorn_divergence
from couplings.solvers import _native, _softmin

from ._spies import spy_absorptions

SK = __import__("sys").modules["couplings.solvers.sinkhorn"]
F64 = torch.float64


def _problem(bsz=2, n=23, m=31, d=3, seed=0, dtype=F64, zeros=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, n, d, generator=g, dtype=dtype)
    y = torch.randn(bsz, m, d, generator=g, dtype=dtype) + 0.5
    a = torch.rand(bsz, n, generator=g, dtype=dtype) + 0.1
    b = torch.rand(bsz, m, generator=g, dtype=dtype) + 0.1
    if zeros:
        a[:, 3], b[:, -2] = 0.0, 0.0
    return x, y, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


def _same(r1, r2, atol, names=("f", "g", "value", "error")):
    for name in names:
        torch.testing.assert_close(getattr(r1, name), getattr(r2, name), rtol=0, atol=atol)
    assert r1.n_iter == r2.n_iter
    assert torch.equal(r1.n_iter_per_problem, r2.n_iter_per_problem)


@pytest.mark.parametrize(
    "opts",
    [dict(), dict(scaling=0.7, eps=0.05), dict(rho=(2.0, None)), dict(symmetric=True)],
    ids=["plain", "scaling", "unbalanced", "symmetric"],
)
@pytest.mark.parametrize("backend", ["compiled", "kernel"])
def test_compiled_and_kernel_equal_tensorized(opts, backend):
    x, y, a, b = _problem()
    if opts.get("symmetric"):
        y, b = x, a
    kw = dict(eps=0.3, tol=1e-10, max_iter=20_000) | opts
    cost = torch.cdist(x, y) ** 2
    eager = sinkhorn(cost, a, b, backend="tensorized", **kw)
    fused = sinkhorn(cost, a, b, backend=backend, **kw)
    assert eager.backend == "tensorized" and fused.backend == backend
    assert bool(fused.converged.all())
    _same(eager, fused, atol=1e-11)
    torch.testing.assert_close(eager.plan, fused.plan, rtol=0, atol=1e-12)


def _spy_kernel(monkeypatch):
    made = []
    original = _softmin.KernelSoftmin.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(_softmin.KernelSoftmin, "__init__", init)
    return made


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_kernel_path_runs_matvecs_and_falls_back_at_small_eps(monkeypatch, dtype):
    made = _spy_kernel(monkeypatch)
    x, y, a, b = _problem(bsz=1, n=60, m=70, dtype=dtype, zeros=False)
    cost = torch.cdist(x, y) ** 2
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    # the counts below are for plain iterations at eps (no relaxation, no annealing)
    plain = dict(tol=tol, max_iter=50_000, momentum=1.0, scaling=None)
    for eps, few_absorptions in ((0.5, True), (0.002, False)):  # iterations
        ref = sinkhorn(cost, a, b, eps=eps, backend="tensorized", **plain)
        res = sinkhorn(cost, a, b, eps=eps, backend="kernel", **plain)
        ops = made[-1]
        assert bool(res.converged.all()) and bool(torch.isfinite(res.f).all())
        # the first kernel is anchored from the cost by c-transforms, with no log-domain
        # update before it; at a small eps the first column update can still leave the safe
        # range (a column more than L from every row) and is then done in the log domain
        assert ops.n_matvec + ops.n_log == 2 * res.n_iter + 1
        assert ops.n_log == (0 if few_absorptions else 1)
        # far from convergence at a small eps the potentials leave the safe range more often;
        # each time the kernel is re-anchored ahead of the current potentials and the
        # product retried (here it always succeeds, so no further log-domain update)
        assert ops.n_absorb == 1 + ops.n_reanchor + ops.n_log
        assert (ops.n_absorb <= 3) == few_absorptions
        atol = 1e-4 * eps / 0.002 if dtype == torch.float32 else 1e-8
        torch.testing.assert_close(res.value, ref.value, rtol=0, atol=atol)
        torch.testing.assert_close(res.plan, ref.plan, rtol=0, atol=10 * tol)


def _kernel_product(kernel, dev, weights):
    """The row update of a :class:`KernelSoftmin` holding ``kernel`` ``(1, n, m)`` at zero
    anchors, for potentials ``dev`` ``(1, m)`` off them, or ``None`` where it is refused."""
    ops = _softmin.KernelSoftmin(torch.zeros_like(kernel), 1.0)
    ops.kt, ops.alpha, ops.beta = kernel, torch.zeros(1, kernel.shape[1]), torch.zeros_like(dev)
    return ops._matvec(dev, ops.beta, weights, ops.alpha, True)


def test_kernel_product_is_refused_only_where_cut_entries_could_matter():
    """The product is safe when ``log sum_j w_j e^{d_j} - min log(sum) <= 2 L`` (the cut entries
    then weigh at most ``exp(c + 2 L)`` beside every sum), ``min d`` keeps the products normal
    numbers, and no sum overflows; a potential more than ``L`` ahead of its anchor is fine on
    its own."""
    w = torch.full((1, 4), 0.25)
    ones = torch.ones(1, 3, 4)
    ahead = torch.tensor([[20.0, 0.0, 0.0, 0.0]])  # 20 > L = 15 eps ahead of its anchor
    out = _kernel_product(ones, ahead, w)
    exact = -torch.log((ones.double() @ (ahead.double().exp() * 0.25).unsqueeze(-1)).squeeze(-1))
    assert out is not None
    torch.testing.assert_close(out.double(), exact, rtol=1e-6, atol=0)
    # the same potentials beside a row whose sum is exp(-12.3): the weighted inputs sum to
    # exp(18.6), and 18.6 + 12.3 > 2 L: refused
    small = ones.clone()
    small[0, 0] = torch.tensor([-40.0, -12.0, -12.0, -12.0]).exp()
    assert _kernel_product(small, ahead, w) is None
    # far behind the anchor: refused only where a product could be subnormal, which depends
    # on the smallest weight (floor log(tiny) - c - log(min w) - 1: -29 here, -16.5 at 1e-6)
    behind = torch.tensor([[-25.0, 0.0, 0.0, 0.0]])
    assert _kernel_product(ones, behind, w) is not None
    tiny_weight = torch.tensor([[1e-6, 0.25, 0.25, 0.25]])
    assert _kernel_product(ones, behind, tiny_weight) is None
    # a sum that is 0 (every entry of a row cut) or that overflows is refused
    cut = ones.clone()
    cut[0, 1] = 0.0
    assert _kernel_product(cut, torch.zeros(1, 4), w) is None
    assert _kernel_product(ones, torch.tensor([[89.0, 0.0, 0.0, 0.0]]), w) is None


def test_kernel_stages_after_the_first_are_absorbed_at_the_latest_potentials(monkeypatch):
    """Under epsilon scaling only the first kernel is anchored by c-transforms of the cost;
    each later stage absorbs its kernel at the current potentials (rescaled to the stage's
    eps), and the solve still equals the log-domain one."""
    made = _spy_kernel(monkeypatch)
    calls = []
    run = _softmin.run_kernel

    def spy(name, *args, **kwargs):
        calls.append(name)
        return run(name, *args, **kwargs)

    monkeypatch.setattr(_softmin, "run_kernel", spy)
    native = _native.ctransform  # the same c-transforms, where the native kernels run

    def native_spy(cost, h, scale, *, rows):
        calls.append("ctransform_rows" if rows else "ctransform_cols")
        return native(cost, h, scale, rows=rows)

    monkeypatch.setattr(_native, "ctransform", native_spy)
    x, y, a, b = _problem(bsz=1, n=60, m=70, dtype=torch.float32, zeros=False)
    cost = torch.cdist(x, y) ** 2
    kw = dict(eps=0.01, tol=1e-5, max_iter=50_000, scaling=0.5)
    res = sinkhorn(cost, a, b, backend="kernel", **kw)
    ops = made[-1]
    stages = int(res.annealed)
    assert stages >= 5 and bool(res.converged.all())
    assert calls.count("ctransform_rows") == calls.count("ctransform_cols") == 1
    assert ops.n_absorb >= stages + 1 and ops.n_log == 0
    ref = sinkhorn(cost, a, b, backend="tensorized", **kw)
    torch.testing.assert_close(res.value, ref.value, rtol=0, atol=1e-4)
    torch.testing.assert_close(res.plan, ref.plan, rtol=0, atol=1e-4)


def test_kernel_absorptions_reuse_one_buffer(monkeypatch):
    made = _spy_kernel(monkeypatch)
    pointers = spy_absorptions(monkeypatch)
    x, y, a, b = _problem(bsz=1, n=60, m=70, dtype=torch.float32, zeros=False)
    res = sinkhorn(torch.cdist(x, y) ** 2, a, b, eps=0.002, tol=1e-5, max_iter=50_000,
                   backend="kernel")
    assert bool(res.converged.all()) and made[-1].n_absorb == len(pointers) > 10
    assert len(set(pointers)) == 1


def test_kernel_path_falls_back_to_the_log_domain_when_reanchoring_fails(monkeypatch):
    """A re-anchored product that still leaves the safe range is redone in the log domain, and
    the solve stays equal to the log-domain one. (Forced here: re-anchoring puts every anchor
    100 eps off, so every retry overflows.)"""
    made = _spy_kernel(monkeypatch)
    monkeypatch.setattr(_softmin, "_ahead", lambda now, before, limit: now + 100.0)
    pointers = spy_absorptions(monkeypatch)
    x, y, a, b = _problem(bsz=1, n=60, m=70, dtype=torch.float32, zeros=False)
    cost = torch.cdist(x, y) ** 2
    kw = dict(eps=0.002, tol=1e-5, max_iter=50_000, momentum="adaptive", scaling=None)
    ref = sinkhorn(cost, a, b, backend="tensorized", **kw)
    res = sinkhorn(cost, a, b, backend="kernel", **kw)
    ops = made[-1]
    assert bool(res.converged.all()) and ops.n_reanchor > 0
    # each failed retry is one log-domain update (and so is the first column update here)
    assert ops.n_log == ops.n_reanchor + 1
    assert len(pointers) == ops.n_absorb > 1 and len(set(pointers)) == 1  # all in place
    torch.testing.assert_close(res.value, ref.value, rtol=0, atol=1e-4)
    torch.testing.assert_close(res.plan, ref.plan, rtol=0, atol=1e-4)


def test_reanchoring_leads_a_drifting_potential():
    now = torch.tensor([[1.0, 2.0, float("inf")], [0.0, 0.0, 0.0]])
    before = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ahead = _softmin._ahead(now, before, torch.tensor(15.0))
    # the largest step (2) moves the anchor by 2 L / 3 = 10 (capped at 30 steps); a non-finite
    # step and a problem that did not move stay where they are
    torch.testing.assert_close(ahead[0, :2], torch.tensor([6.0, 12.0]))
    assert ahead[0, 2] == float("inf") and torch.equal(ahead[1], now[1])
    assert torch.equal(_softmin._ahead(now, None, torch.tensor(15.0)), now)


def test_compiled_float32_and_gradients_match():
    x, y, a, b = _problem(dtype=torch.float32)
    cost = (torch.cdist(x, y) ** 2).requires_grad_()
    eager = sinkhorn(cost, a, b, eps=0.3, tol=1e-5, backend="tensorized")
    fused = sinkhorn(cost, a, b, eps=0.3, tol=1e-5, backend="compiled")
    torch.testing.assert_close(eager.value, fused.value, rtol=1e-5, atol=1e-5)
    (g1,) = torch.autograd.grad(eager.value.sum(), cost)
    (g2,) = torch.autograd.grad(fused.value.sum(), cost)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_auto_picks_by_size_and_grad_mode(monkeypatch):
    """The kernel backend at every size, its kernels compiled from 2**18 entries only (below,
    compiling would cost more than it saves); the log domain for grad="unroll"."""
    compiled = []
    run = _softmin.run_kernel

    def spy(name, *args, **kwargs):
        compiled.append(kwargs.get("compiled", True))
        return run(name, *args, **kwargs)

    monkeypatch.setattr(_softmin, "run_kernel", spy)
    monkeypatch.setattr(_native, "enabled", False)  # the rule for torch's compiled kernels
    x, y, a, b = _problem(bsz=1, n=10, m=12)
    assert sinkhorn(PointCloud(x, y), a, b, eps=0.5).backend == "kernel"
    assert compiled and not any(compiled)
    compiled.clear()
    g = torch.Generator().manual_seed(1)
    big = torch.rand(1, 520, 520, generator=g)  # 270 400 entries >= 2**18
    assert sinkhorn(big, eps=0.5).backend == "kernel"
    assert compiled and all(compiled) == _softmin.compile_available()
    unrolled = sinkhorn(big.double().requires_grad_(), eps=0.5, grad="unroll", max_iter=3,
                        min_iter=3)
    assert unrolled.backend == "tensorized"


def test_auto_goes_online_when_the_dense_cost_is_too_large(monkeypatch):
    x, y, a, b = _problem(bsz=1)
    monkeypatch.setattr(SK, "AUTO_ONLINE_BYTES", 1000)
    assert sinkhorn(PointCloud(x, y), a, b, eps=0.5).backend == "online"
    # not when the options need the dense plan
    assert sinkhorn(PointCloud(x, y), a, b, eps=0.5, rho=1.0).backend != "online"
    assert sinkhorn(PointCloud(x, y), a, b, eps=0.5, grad="implicit").backend != "online"


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("block", [None, 40])
def test_online_equals_dense_and_never_forms_the_matrix(monkeypatch, cost, block):
    x, y, a, b = _problem()
    kw = dict(eps=0.4, tol=1e-10, max_iter=20_000)
    dense = sinkhorn(PointCloud(x, y, cost=cost), a, b, backend="tensorized", grad="envelope",
                     **kw)
    if block is not None:  # blocks of 40 entries: one or two rows at a time
        monkeypatch.setattr(_softmin, "ONLINE_BLOCK", block)

    def refuse(self):
        raise AssertionError("the online backend built the cost matrix")

    monkeypatch.setattr(PointCloud, "cost_matrix", refuse)
    online = sinkhorn(PointCloud(x, y, cost=cost), a, b, backend="online", **kw)
    assert online.backend == "online"
    _same(dense, online, atol=1e-12)


@pytest.mark.parametrize("cost", ["sqeuclidean", "l1"])
def test_online_gradients_equal_the_dense_envelope(monkeypatch, cost):
    monkeypatch.setattr(_softmin, "ONLINE_BLOCK", 100)
    x, y, a, b = _problem()
    grads = []
    for backend in ("tensorized", "online"):
        leaves = [t.clone().requires_grad_() for t in (x, y, a, b)]
        res = sinkhorn(PointCloud(leaves[0], leaves[1], cost=cost), leaves[2], leaves[3],
                       eps=0.4, tol=1e-11, max_iter=20_000, grad="envelope", backend=backend)
        weights = torch.tensor([1.0, -2.5], dtype=F64)  # a different upstream per problem
        (res.value * weights).sum().backward()
        grads.append([t.grad for t in leaves])
    for dense, online in zip(*grads, strict=True):
        torch.testing.assert_close(dense, online, rtol=0, atol=1e-12)


def test_online_gradient_matches_finite_differences():
    x, y, a, b = _problem(bsz=1, n=8, m=9)
    x = x.requires_grad_()
    kw = dict(eps=0.5, tol=1e-13, max_iter=50_000, backend="online")
    res = sinkhorn(PointCloud(x, y), a, b, **kw)
    (grad,) = torch.autograd.grad(res.value.sum(), x)
    h = 1e-6
    for i, k in [(0, 0), (4, 2), (7, 1)]:
        bump = torch.zeros_like(x)
        bump[0, i, k] = h
        hi = sinkhorn(PointCloud(x.detach() + bump, y), a, b, **kw).value
        lo = sinkhorn(PointCloud(x.detach() - bump, y), a, b, **kw).value
        assert abs(float((hi - lo) / (2 * h)) - float(grad[0, i, k])) < 1e-6


def test_online_float32_symmetric_and_scaling():
    x, y, a, b = _problem(dtype=torch.float32, zeros=False)
    dense = sinkhorn(PointCloud(x, x), a, a, eps=0.2, tol=1e-5, symmetric=True,
                     backend="tensorized", grad="envelope")
    online = sinkhorn(PointCloud(x, x), a, a, eps=0.2, tol=1e-5, symmetric=True,
                      backend="online")
    torch.testing.assert_close(dense.f, online.f, rtol=0, atol=1e-5)
    assert torch.equal(online.f, online.g)
    scaled = sinkhorn(PointCloud(x, y), a, b, eps=0.05, tol=1e-4, scaling=0.8,
                      backend="online")
    reference = sinkhorn(PointCloud(x, y), a, b, eps=0.05, tol=1e-4, scaling=0.8,
                         backend="tensorized")
    assert bool(scaled.converged.all())
    torch.testing.assert_close(scaled.value, reference.value, rtol=1e-4, atol=1e-5)


def test_online_divergence_and_loss_equal_dense(monkeypatch):
    monkeypatch.setattr(_softmin, "ONLINE_BLOCK", 200)
    x, y, a, b = _problem()
    values, grads = [], []
    for backend in ("tensorized", "online"):
        xx = x.clone().requires_grad_()
        d = sinkhorn_divergence(xx, y, a, b, eps=0.3, tol=1e-11, max_iter=20_000,
                                backend=backend)
        d.sum().backward()
        values.append(d.detach())
        grads.append(xx.grad)
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-11)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-11)
    assert bool((values[1] > 0).all())
    loss = SinkhornLoss(eps=0.3, backend="online", tol=1e-11, max_iter=20_000)
    torch.testing.assert_close(loss(x, y, a, b), values[1].mean(), rtol=0, atol=1e-11)


def test_online_result_says_what_it_cannot_give():
    x, y, a, b = _problem(bsz=1)
    res = sinkhorn(PointCloud(x, y), a, b, eps=0.5, backend="online")
    for name in ("plan", "linear_value", "gap"):
        with pytest.raises(ValueError, match="online backend never forms"):
            getattr(res, name)
    assert "online" in repr(res)


def test_bad_backend_combinations_are_refused():
    x, y, a, b = _problem(bsz=1)
    cost = torch.cdist(x, y) ** 2
    with pytest.raises(ValueError, match="backend"):
        sinkhorn(cost, a, b, eps=0.5, backend="keops")
    with pytest.raises(ValueError, match="PointCloud"):
        sinkhorn(cost, a, b, eps=0.5, backend="online")
    with pytest.raises(ValueError, match="balanced"):
        sinkhorn(PointCloud(x, y), a, b, eps=0.5, rho=1.0, backend="online")
    for grad in ("unroll", "implicit"):
        with pytest.raises(ValueError, match="envelope"):
            sinkhorn(PointCloud(x, y), a, b, eps=0.5, grad=grad, backend="online")
    for backend in ("compiled", "kernel"):
        with pytest.raises(ValueError, match="autograd"):
            sinkhorn(cost, a, b, eps=0.5, grad="unroll", backend=backend)
    with pytest.raises(ValueError, match="x"):
        sinkhorn(PointCloud(x * math.nan, y), a, b, eps=0.5, backend="online")
    with pytest.raises(ValueError, match="symmetric"):
        sinkhorn(PointCloud(x, y), a, b, eps=0.5, symmetric=True, backend="online")


def test_a_failed_compilation_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(_softmin, "_compiled", {})
    monkeypatch.setattr(_softmin, "_compile_failure", None)
    x, y, a, b = _problem()
    cost = torch.cdist(x, y) ** 2
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        res = sinkhorn(cost, a, b, eps=0.3, tol=1e-10, backend="compiled")
    assert res.backend == "tensorized"
    _same(res, sinkhorn(cost, a, b, eps=0.3, tol=1e-10, backend="tensorized"), atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning came once
        online = sinkhorn(PointCloud(x, y), a, b, eps=0.3, tol=1e-10, backend="online")
    assert bool(online.converged.all())
    # auto still runs the kernel backend, its kernels now eager (and no further warning)
    big = sinkhorn(torch.rand(1, 520, 520), eps=0.5)
    assert big.backend == "kernel" and bool(big.converged)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["compiled", "kernel", "online"])
def test_cuda_backends_match_cpu(backend):
    x, y, a, b = _problem(dtype=torch.float32, zeros=False)
    cpu = sinkhorn(PointCloud(x, y), a, b, eps=0.3, tol=1e-5, backend="tensorized",
                   grad="envelope")
    gpu = sinkhorn(PointCloud(x.cuda(), y.cuda()), a.cuda(), b.cuda(), eps=0.3, tol=1e-5,
                   backend=backend, grad="envelope")
    assert gpu.backend == backend and gpu.f.device.type == "cuda"
    torch.testing.assert_close(cpu.value, gpu.value.cpu(), rtol=1e-5, atol=1e-5)


def test_kernel_result_reports_what_the_solve_did(monkeypatch):
    made = _spy_kernel(monkeypatch)
    x, y, a, b = _problem(bsz=1, n=60, m=70, dtype=torch.float32, zeros=False)
    cost = torch.cdist(x, y) ** 2
    res = sinkhorn(cost, a, b, eps=0.002, tol=1e-5, max_iter=50_000, backend="kernel",
                   scaling=None)
    ops = made[-1]
    assert res.kernel_counts == {"products": ops.n_matvec, "log_updates": ops.n_log,
                                 "absorptions": ops.n_absorb, "reanchorings": ops.n_reanchor}
    # two updates per iteration, and the last row update, whose result gives the error that
    # stops the solve; each a product but the first column update, which falls back to the
    # log domain at this eps, and is absorbed after
    counts = res.kernel_counts
    assert counts["products"] + counts["log_updates"] == 2 * res.n_iter + 1
    assert counts["log_updates"] == 1
    assert counts["absorptions"] == 2 + counts["reanchorings"] > 2
    assert sinkhorn(cost, a, b, eps=0.5, backend="tensorized").kernel_counts is None
