"""Ragged batches: pad_problems, OTResult.unpad, per-problem stopping and active-set compaction.

The reference is each problem solved alone: a padded batch must give the same potentials on the
support, values, plans, iteration counts and gradients (unrolled and implicit), with and without
the compaction of converged problems.
"""

import sys

import pytest
import torch

from couplings import PointCloud, emd, sinkhorn
from couplings.result import PaddedProblems, pad_problems
from couplings.solvers._softmin import DenseSoftmin, KernelSoftmin

SK = sys.modules["couplings.solvers.sinkhorn"]  # the module (the package exports the function)

EPS = 0.1


def _ragged(count=7, seed=0, dtype=torch.float64, n_range=(3, 41), m_range=(5, 61)):
    """Random problems of sizes 3x5 .. 40x60 with different geometries (cost scales), hence
    widely different iteration counts; non-uniform weights."""
    g = torch.Generator().manual_seed(seed)
    costs, a_list, b_list = [], [], []
    sizes = [(3, 5), (40, 60)] + [
        (int(torch.randint(*n_range, (1,), generator=g)),
         int(torch.randint(*m_range, (1,), generator=g)))
        for _ in range(count - 2)
    ]
    for k, (n, m) in enumerate(sizes):
        scale = 0.3 + 0.15 * k
        x = torch.randn(n, 2, generator=g, dtype=torch.float64) * scale
        y = torch.randn(m, 2, generator=g, dtype=torch.float64) * scale + 0.5 * scale
        costs.append((torch.cdist(x, y) ** 2).to(dtype))
        a = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
        b = torch.rand(m, generator=g, dtype=torch.float64) + 0.1
        a_list.append((a / a.sum()).to(dtype))
        b_list.append((b / b.sum()).to(dtype))
    return costs, a_list, b_list


def _close(x, y, tol=1e-10):
    torch.testing.assert_close(x, y, rtol=0, atol=tol)


def test_pad_problems_layout():
    costs, a_list, b_list = _ragged(4)
    batch = pad_problems(costs, a_list, b_list)
    assert isinstance(batch, PaddedProblems)
    n_max = max(c.shape[0] for c in costs)
    m_max = max(c.shape[1] for c in costs)
    assert batch.cost.shape == (4, n_max, m_max)
    assert batch.a.shape == (4, n_max) and batch.b.shape == (4, m_max)
    assert batch.sizes == [tuple(c.shape) for c in costs]
    for k, (n, m) in enumerate(batch.sizes):
        assert torch.equal(batch.cost[k, :n, :m], costs[k])
        assert torch.equal(batch.a[k, :n], a_list[k]) and torch.equal(batch.b[k, :m], b_list[k])
        assert float(batch.a[k, n:].abs().sum()) == 0 and float(batch.b[k, m:].abs().sum()) == 0
        assert float(batch.cost[k, n:].abs().sum()) == 0
    # uniform weights by default, per problem
    uniform = pad_problems(costs)
    for k, (n, m) in enumerate(uniform.sizes):
        _close(uniform.a[k, :n], torch.full((n,), 1 / n, dtype=torch.float64), 0)
        _close(uniform.b[k, :m], torch.full((m,), 1 / m, dtype=torch.float64), 0)
    assert float(pad_problems(costs, pad_cost=7.0).cost[0, -1, -1]) == 7.0


@pytest.mark.parametrize("rho", [None, (0.5, 2.0)])
def test_padded_batch_equals_one_by_one(rho):
    costs, a_list, b_list = _ragged(7, seed=1)
    if rho is not None:  # unequal masses
        a_list = [1.5 * a for a in a_list]
    batch = pad_problems(costs, a_list, b_list)
    opts = dict(eps=EPS, tol=1e-11, max_iter=50_000, rho=rho)
    res = sinkhorn(batch.cost, batch.a, batch.b, **opts)
    parts = res.unpad(batch.sizes)
    assert res.n_iter == int(res.n_iter_per_problem.max())
    iters = []
    for k, part in enumerate(parts):
        alone = sinkhorn(costs[k], a_list[k], b_list[k], **opts)
        _close(part.f, alone.f)
        _close(part.g, alone.g)
        _close(part.value, alone.value)
        _close(part.plan, alone.plan)
        _close(part.error, alone.error, 1e-14)
        assert part.n_iter == alone.n_iter == int(res.n_iter_per_problem[k])
        assert bool(part.converged) and part.plan.shape == costs[k].shape
        iters.append(part.n_iter)
    # the geometries differ: the problems stop at different iterations
    assert max(iters) >= (3 if rho is None else 1.5) * min(iters), iters


def test_padding_gets_zero_mass():
    costs, a_list, b_list = _ragged(5, seed=2)
    batch = pad_problems(costs, a_list, b_list, pad_cost=-3.0)  # a cheap padding: still unused
    for rho in (None, 1.0):
        res = sinkhorn(batch.cost, batch.a, batch.b, eps=EPS, tol=1e-9, max_iter=50_000,
                       rho=rho)
        for k, (n, m) in enumerate(batch.sizes):
            assert float(res.plan[k, n:].abs().sum()) == 0
            assert float(res.plan[k, :, m:].abs().sum()) == 0
            assert float(res.rounded_plan[k, n:].abs().sum()) == 0


def _sizes_seen(monkeypatch):
    """Record the batch sizes the row update is computed on (a kernel-backend update that
    falls back to the log domain is recorded twice, with the same size)."""
    seen = []
    original_row, original_update = DenseSoftmin.row, KernelSoftmin._update

    def spy_row(self, v, *args, **kwargs):
        seen.append(v.shape[0])
        return original_row(self, v, *args, **kwargs)

    def spy_update(self, rows, v, *args, **kwargs):  # every kernel-backend update, fused or not
        if rows:
            seen.append(v.shape[0])
        return original_update(self, rows, v, *args, **kwargs)

    monkeypatch.setattr(DenseSoftmin, "row", spy_row)
    monkeypatch.setattr(KernelSoftmin, "_update", spy_update)
    return seen


@pytest.mark.parametrize("symmetric", [False, True])
def test_compaction_computes_only_active_problems_and_changes_nothing(monkeypatch, symmetric):
    g = torch.Generator().manual_seed(3)
    scales = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0, 5.0] if symmetric else
                          [0.2, 0.4, 0.7, 1.0, 1.2, 0.3], dtype=torch.float64)
    x = torch.randn(6, 12, 2, generator=g, dtype=torch.float64) * scales[:, None, None]
    y = x if symmetric else torch.randn(6, 15, 2, generator=g, dtype=torch.float64)
    cost = torch.cdist(x, y) ** 2
    opts = dict(eps=EPS, tol=1e-10, max_iter=50_000, symmetric=symmetric)
    seen = _sizes_seen(monkeypatch)
    compact = sinkhorn(cost, **opts)
    assert len(set(compact.n_iter_per_problem.tolist())) >= 3
    assert seen[0] == 6 and seen[-1] < 3 and sorted(seen, reverse=True) == seen
    monkeypatch.setattr(SK, "_COMPACT_BELOW", 0.0)
    seen.clear()
    full = sinkhorn(cost, **opts)
    assert set(seen) == {6}
    for name in ("f", "g", "value", "error", "converged", "n_iter_per_problem"):
        torch.testing.assert_close(getattr(compact, name), getattr(full, name), rtol=0, atol=0)
    assert compact.n_iter == full.n_iter


@pytest.mark.parametrize("grad", ["unroll", "implicit"])
@pytest.mark.parametrize("rho", [None, 1.0])
def test_gradients_equal_one_by_one(monkeypatch, grad, rho):
    costs, a_list, b_list = _ragged(4, seed=4, n_range=(3, 12), m_range=(5, 15))
    seen = _sizes_seen(monkeypatch)
    costs = [c.requires_grad_() for c in costs]
    a_list = [a.requires_grad_() for a in a_list]
    opts = dict(eps=EPS, tol=1e-11, max_iter=20_000, grad=grad, rho=rho)
    weights = torch.linspace(0.5, 2.0, len(costs), dtype=torch.float64)

    def loss(results):  # value and plan both enter
        return sum(w * (r.value + (r.plan * r.plan).sum()) for w, r in
                   zip(weights, results, strict=True))

    batch = pad_problems(costs, a_list, b_list)
    parts = sinkhorn(batch.cost, batch.a, batch.b, **opts).unpad(batch.sizes)
    assert min(seen) < 4  # the converged problems were dropped from the iterations
    grads = torch.autograd.grad(loss(parts), costs + a_list)
    alone = [sinkhorn(c, a, b, **opts) for c, a, b in zip(costs, a_list, b_list, strict=True)]
    ref = torch.autograd.grad(loss(alone), costs + a_list)
    for got, want in zip(grads, ref, strict=True):
        # weight gradients are defined up to a constant (the masses are tied) when balanced
        if rho is None and got.dim() == 1:
            got, want = got - got.mean(), want - want.mean()
        _close(got, want, 1e-9)


def test_point_clouds_and_gradients_to_points():
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(n, 2, generator=g, dtype=torch.float64, requires_grad=True)
          for n in (4, 9, 6)]
    ys = [torch.randn(m, 2, generator=g, dtype=torch.float64) for m in (7, 3, 8)]
    batch = pad_problems([PointCloud(x, y) for x, y in zip(xs, ys, strict=True)])
    parts = sinkhorn(batch.cost, batch.a, batch.b, eps=0.5, tol=1e-11).unpad(batch.sizes)
    grads = torch.autograd.grad(sum(p.value for p in parts), xs)
    for x, y, gx in zip(xs, ys, grads, strict=True):
        alone = sinkhorn(PointCloud(x, y), eps=0.5, tol=1e-11)
        (ref,) = torch.autograd.grad(alone.value, x)
        _close(gx, ref, 1e-9)


def test_exact_solver_on_padded_batch():
    costs, a_list, b_list = _ragged(4, seed=6, n_range=(3, 10), m_range=(5, 12))
    batch = pad_problems(costs, a_list, b_list)
    parts = emd(batch.cost, batch.a, batch.b).unpad(batch.sizes)
    for k, part in enumerate(parts):
        alone = emd(costs[k], a_list[k], b_list[k])
        _close(part.value, alone.value, 1e-12)
        _close(part.plan, alone.plan, 1e-12)
        assert part.n_iter is None and abs(float(part.gap)) < 1e-12


def test_float32_padded_batch():
    costs, a_list, b_list = _ragged(4, seed=7, dtype=torch.float32)
    batch = pad_problems(costs, a_list, b_list)
    parts = sinkhorn(batch.cost, batch.a, batch.b, eps=EPS, tol=1e-4,
                     max_iter=20_000).unpad(batch.sizes)
    for k, part in enumerate(parts):
        alone = sinkhorn(costs[k], a_list[k], b_list[k], eps=EPS, tol=1e-4, max_iter=20_000)
        assert part.f.dtype == torch.float32
        torch.testing.assert_close(part.value, alone.value, rtol=1e-5, atol=1e-6)


def test_bad_inputs():
    costs, a_list, _ = _ragged(3, seed=8)
    with pytest.raises(TypeError, match="non-empty list"):
        pad_problems([])
    with pytest.raises(TypeError, match="batched tensor needs no padding"):
        pad_problems(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="one problem"):
        pad_problems([torch.zeros(2, 3, 4)])
    with pytest.raises(TypeError, match="list of 3 weight vectors"):
        pad_problems(costs, a_list[:2])
    with pytest.raises(ValueError, match=r"a\[1\] must have shape"):
        pad_problems(costs, [a_list[0], a_list[0], a_list[2]])
    with pytest.raises(ValueError, match="non-negative"):
        pad_problems(costs, [a_list[0], -a_list[1], a_list[2]])
    with pytest.raises(TypeError, match="dtype"):
        pad_problems([costs[0], costs[1].float(), costs[2]])
    batch = pad_problems(costs)
    res = sinkhorn(batch.cost, batch.a, batch.b, eps=1.0)
    with pytest.raises(ValueError, match="list of 3 pairs"):
        res.unpad(batch.sizes[:2])
    with pytest.raises(ValueError, match=r"sizes\[0\]"):
        res.unpad([(0, 3)] + batch.sizes[1:])
    with pytest.raises(ValueError, match="batched result"):
        sinkhorn(costs[0], eps=1.0).unpad([(2, 2)])


@pytest.mark.parametrize("warm", [False, True])
def test_kernel_groups_give_what_the_whole_batch_gives(monkeypatch, warm):
    """On CPU, a batch of large problems is iterated group by group (cache locality): each
    problem must come out as the whole batch (and the problem alone) gives it, warm starts
    included, with the kernel's counts summed over the groups."""
    costs, a_list, b_list = _ragged(5, seed=6, n_range=(20, 41), m_range=(20, 61))
    batch = pad_problems(costs, a_list, b_list)
    opts = dict(eps=EPS, tol=1e-10, max_iter=20_000)  # "auto": the kernel backend, eager
    if warm:
        rough = sinkhorn(batch.cost, batch.a, batch.b, eps=EPS, tol=1e-2)
        opts["init"] = (rough.f, rough.g)
    whole = sinkhorn(batch.cost, batch.a, batch.b, **opts)
    n, m = batch.cost.shape[-2:]
    monkeypatch.setattr(SK, "_CPU_GROUP_ENTRIES", 2 * n * m)  # groups of 2, 2 and 1
    seen = _sizes_seen(monkeypatch)
    grouped = sinkhorn(batch.cost, batch.a, batch.b, **opts)
    assert grouped.backend == whole.backend == "kernel"
    assert set(seen) <= {1, 2} and seen[0] == 2
    for name in ("f", "g", "value"):
        _close(getattr(grouped, name), getattr(whole, name), 1e-9)
    for name in ("converged", "n_iter_per_problem", "annealed"):
        assert torch.equal(getattr(grouped, name), getattr(whole, name)), name
    assert bool(grouped.converged.all())
    assert grouped.n_iter == whole.n_iter == int(whole.n_iter_per_problem.max())
    assert sum(grouped.kernel_counts.values()) > sum(whole.kernel_counts.values())
    assert grouped.kernel_counts["products"] >= whole.kernel_counts["products"] > 0
    for k, part in enumerate(grouped.unpad(batch.sizes)):
        alone = sinkhorn(costs[k], a_list[k], b_list[k],
                         **{**opts, "init": None if not warm else
                            (opts["init"][0][k, :costs[k].shape[0]],
                             opts["init"][1][k, :costs[k].shape[1]])})
        _close(part.f, alone.f, 1e-8)
        _close(part.g, alone.g, 1e-8)


def test_implicit_gradients_in_groups_equal_the_whole_batch(monkeypatch):
    """The implicit backward of a large CPU batch also runs group by group; its gradients in
    the cost and both weights must be those of the whole batch."""
    costs, a_list, b_list = _ragged(5, seed=8, n_range=(20, 41), m_range=(20, 61))
    batch = pad_problems(costs, a_list, b_list)

    def grads():
        cost = batch.cost.clone().requires_grad_()
        a, b = batch.a.clone().requires_grad_(), batch.b.clone().requires_grad_()
        res = sinkhorn(cost, a, b, eps=EPS, tol=1e-11, max_iter=20_000)
        loss = (res.value * torch.arange(1.0, 6.0, dtype=res.value.dtype)).sum() + (
            res.f[:, :3] ** 2).sum()  # the potentials too: the adjoint system is solved
        return torch.autograd.grad(loss, (cost, a, b))

    whole = grads()
    calls = []
    real = SK._implicit_grads

    def spy(cost, *args):
        calls.append(cost.shape[0])
        return real(cost, *args)

    n, m = batch.cost.shape[-2:]
    monkeypatch.setattr(SK, "_implicit_grads", spy)
    monkeypatch.setattr(SK, "_CPU_GROUP_ENTRIES", 4 * 2 * n * m)  # four matrices each
    grouped = grads()
    assert calls == [2, 2, 1]
    for got, want in zip(grouped, whole, strict=True):
        _close(got, want, 1e-8)
