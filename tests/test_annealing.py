"""Epsilon scaling (``scaling=``): each problem anneals from its own cost range on a grid
anchored at ``eps``, so a batch still equals its problems one by one; ``"auto"`` anneals only
the problems whose eps is small against their cost range."""

import importlib
import math

import pytest
import torch

from couplings import pad_problems, sinkhorn

SK = importlib.import_module("couplings.solvers.sinkhorn")
F64 = torch.float64


def _costs(scales, n=30, m=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(scales), n, 2, generator=g, dtype=F64)
    y = torch.randn(len(scales), m, 2, generator=g, dtype=F64) + 0.5
    return torch.cdist(x, y) ** 2 * torch.tensor(scales, dtype=F64)[:, None, None]


def _shifted(scales, n=30, seed=0):
    """Costs between a cloud and its translate (the optimal plan is the identity), which
    converge at eps far below the cost range, times ``scales``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(scales), n, 2, generator=g, dtype=F64)
    return torch.cdist(x, x + 0.3) ** 2 * torch.tensor(scales, dtype=F64)[:, None, None]


def _one_by_one(c, **kw):
    return [sinkhorn(c[i], **kw) for i in range(c.shape[0])]


def _assert_batch_equals_alone(batch, alone, atol=1e-9):
    for i, res in enumerate(alone):
        assert int(batch.n_iter_per_problem[i]) == int(res.n_iter)
        assert bool(batch.converged[i]) == bool(res.converged)
        torch.testing.assert_close(batch.f[i], res.f, rtol=0, atol=atol)
        torch.testing.assert_close(batch.g[i], res.g, rtol=0, atol=atol)
        torch.testing.assert_close(batch.error[i], res.error, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("backend", ["tensorized", "compiled"])
def test_a_batch_anneals_each_problem_on_its_own_schedule(backend):
    # cost ranges 2.5x apart: their schedules differ by about 3 stages of 0.7
    c = _costs([1.0, 2.5, 1.7])
    kw = dict(eps=0.3, tol=1e-8, max_iter=5000, scaling=0.7, backend=backend)
    batch = sinkhorn(c, **kw)
    alone = _one_by_one(c, **kw)
    assert len({int(r.n_iter) for r in alone}) == 3
    assert bool(batch.converged.all())
    _assert_batch_equals_alone(batch, alone)


def test_the_schedule_starts_at_the_problems_own_range_on_a_grid_anchored_at_eps():
    c = _costs([1.0, 50.0])
    a = torch.full((2, 30), 1 / 30, dtype=F64)
    b = torch.full((2, 40), 1 / 40, dtype=F64)
    ops = SK.DenseSoftmin(c, 0.01, unroll=False, compiled=False)
    stages, factor = SK._annealing_stages(SK._range_ratio(ops, a, b, 0.01), 0.5, max_iter=1000)
    ranges = (c.amax((-2, -1)) - c.amin((-2, -1)))
    for k, r in zip(stages.tolist(), ranges.tolist(), strict=True):
        assert 0.01 / factor**k >= r > 0.01 / factor ** (k - 1)  # first grid value >= range
    capped, _ = SK._annealing_stages(SK._range_ratio(ops, a, b, 0.01), 0.5, max_iter=5)
    assert capped.tolist() == [4, 4]  # max_iter cuts the coarse end


def test_padding_does_not_change_a_problems_schedule():
    g = torch.Generator().manual_seed(3)
    small = torch.rand(12, 15, generator=g, dtype=F64) + 1.0  # costs in [1, 2]: range 1
    large = torch.rand(20, 25, generator=g, dtype=F64) * 8.0
    c, a, b, _ = pad_problems([small, large])  # zero weights, padding cost 0
    kw = dict(eps=0.02, tol=1e-7, max_iter=20_000, scaling=0.7)
    batch = sinkhorn(c, a, b, **kw)
    alone = [sinkhorn(small, **kw), sinkhorn(large, **kw)]
    for i, res in enumerate(alone):
        assert int(batch.n_iter_per_problem[i]) == int(res.n_iter)
        torch.testing.assert_close(batch.value[i], res.value, rtol=1e-9, atol=0)


def test_a_problem_that_waited_still_gets_its_max_iter():
    # the low-range problem waits for the other's annealing, then runs out of iterations
    # exactly where it would alone
    c = _costs([1.0, 20.0])
    kw = dict(eps=0.05, tol=1e-12, max_iter=40, scaling=0.7)
    with pytest.warns(Warning):
        batch = sinkhorn(c, **kw)
    with pytest.warns(Warning):
        alone = _one_by_one(c, **kw)
    assert [int(r.n_iter) for r in alone] == [40, 40]
    assert batch.n_iter_per_problem.tolist() == [40, 40] and not bool(batch.converged.any())
    _assert_batch_equals_alone(batch, alone, atol=1e-9)


def test_auto_anneals_only_where_eps_is_small_against_the_range():
    c = _shifted([1.0])
    r = float(c[0].amax() - c[0].amin())
    small, large = r / (3 * SK._AUTO_RANGE_RATIO), r / (0.5 * SK._AUTO_RANGE_RATIO)
    for eps, anneals in ((small, True), (large, False)):
        kw = dict(eps=eps, tol=1e-4, max_iter=50_000)
        auto = sinkhorn(c[0], **kw)  # the default
        plain = sinkhorn(c[0], scaling=None, **kw)
        fixed = sinkhorn(c[0], scaling=SK._AUTO_SCALING, **kw)
        assert bool(auto.converged) and bool(plain.converged)
        same_as = fixed if anneals else plain
        assert int(auto.n_iter) == int(same_as.n_iter)
        torch.testing.assert_close(auto.f, same_as.f, rtol=0, atol=1e-10)
        torch.testing.assert_close(auto.value, plain.value, rtol=1e-4, atol=0)
        if anneals:  # the point of it: far fewer iterations
            assert int(auto.n_iter) < int(plain.n_iter) / 10


def test_auto_anneals_by_larger_steps_from_a_smaller_range_for_a_loose_tol():
    c = _shifted([1.0])[0]
    r = float(c.amax() - c.amin())
    eps = r / (3 * SK._LOOSE_RANGE_RATIO)  # a range of 600 eps: below the default threshold
    kw = dict(eps=eps, max_iter=50_000)
    tight = sinkhorn(c, tol=SK._LOOSE_TOL / 10, **kw)
    loose = sinkhorn(c, tol=SK._LOOSE_TOL, **kw)
    assert int(tight.annealed) == 0 and bool(tight.converged)
    # one iteration at each eps / 0.5^j from the first at or above the range: 2^10 > 600
    assert int(loose.annealed) == math.ceil(math.log2(r / eps)) == 10
    fixed = sinkhorn(c, tol=SK._LOOSE_TOL, scaling=SK._LOOSE_SCALING, **kw)
    assert bool(loose.converged) and int(loose.n_iter) == int(fixed.n_iter)
    torch.testing.assert_close(loose.f, fixed.f, rtol=0, atol=0)
    assert float(loose.error) <= SK._LOOSE_TOL


def test_auto_batch_of_annealed_and_plain_problems_equals_one_by_one():
    c = _shifted([1.0, 1.0, 1.0], seed=5)
    eps = float((c.amax((-2, -1)) - c.amin((-2, -1))).min()) / (3 * SK._AUTO_RANGE_RATIO)
    c = c * torch.tensor([1.0, 0.1, 2.0], dtype=F64)[:, None, None]  # the second: no annealing
    kw = dict(eps=eps, tol=1e-4, max_iter=50_000, scaling="auto")
    batch = sinkhorn(c, **kw)
    alone = _one_by_one(c, **kw)
    w = torch.full((3, 30), 1 / 30, dtype=F64)
    ratio = SK._range_ratio(SK.DenseSoftmin(c, eps, unroll=False, compiled=False), w, w, eps)
    stages, _ = SK._annealing_stages(ratio, "auto", 50_000)
    assert stages[1] == 0 and bool((stages[[0, 2]] > 0).all())
    _assert_batch_equals_alone(batch, alone)
    # the result says which problems annealed, and for how many iterations
    assert batch.annealed.tolist() == stages.tolist()
    assert [int(r.annealed) for r in alone] == stages.tolist()
    assert bool((batch.n_iter_per_problem > batch.annealed).all())


def test_scaling_is_validated():
    c = _costs([1.0])[0]
    for bad in ("fast", 1.0, 0.0, -0.5):
        with pytest.raises(ValueError, match="scaling"):
            sinkhorn(c, eps=0.1, scaling=bad)


def test_annealing_with_the_kernel_and_online_backends_matches_tensorized():
    from couplings import PointCloud

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 50, 2, generator=g)
    y = x + 0.3
    eps = float(((x - y) ** 2).sum(-1).mean()) / 500  # range / eps above 2000
    kw = dict(eps=eps, tol=1e-3, max_iter=20_000, scaling="auto")
    ref = sinkhorn(PointCloud(x.double(), y.double()), backend="tensorized", **kw)
    for backend in ("kernel", "online"):
        res = sinkhorn(PointCloud(x, y), backend=backend, **kw)
        assert bool(res.converged.all())
        torch.testing.assert_close(res.value.double(), ref.value, rtol=2e-3, atol=0)
    assert math.isfinite(float(ref.value.sum()))


@pytest.mark.parametrize("case", ["unbalanced", "symmetric", "warm start"])
def test_auto_annealing_keeps_batches_equal_to_one_by_one(case):
    c = _shifted([1.0, 0.1, 2.0], seed=5)
    eps = float((c.amax((-2, -1)) - c.amin((-2, -1))).min()) / 6000
    kw = dict(eps=eps, tol=1e-3, max_iter=50_000)
    per_problem = [{} for _ in range(3)]
    if case == "unbalanced":
        kw["rho"] = 1.0
    elif case == "symmetric":
        g = torch.Generator().manual_seed(5)
        x = torch.randn(3, 30, 2, generator=g, dtype=F64)
        c = torch.cdist(x, x) ** 2 * torch.tensor([1.0, 0.1, 2.0], dtype=F64)[:, None, None]
        kw["symmetric"] = True
    else:
        init = (torch.zeros(3, 30, dtype=F64), torch.full((3, 30), 0.1, dtype=F64))
        kw["init"] = init
        per_problem = [{"init": (init[0][i], init[1][i])} for i in range(3)]
    batch = sinkhorn(c, **kw)
    assert bool((batch.annealed > 0).all())
    for i in range(3):
        one = sinkhorn(c[i], **{**kw, **per_problem[i]})
        assert int(one.n_iter) == int(batch.n_iter_per_problem[i])
        assert int(one.annealed) == int(batch.annealed[i])
        torch.testing.assert_close(batch.f[i], one.f, rtol=0, atol=1e-10)
