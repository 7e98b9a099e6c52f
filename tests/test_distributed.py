"""Sinkhorn sharded over torch.distributed against the single-process solver on the whole problem.

Two processes (spawned once, gloo on CPU, a file store in tmp_path) each solve their rows of every
case in turn and save their results; the test compares them with :func:`couplings.sinkhorn` on
the whole problem in this process (float64, to 1e-10), and checks that inputs rejected on one
rank, or inconsistent across ranks, raise on every rank without leaving any rank waiting.
"""

import datetime
import math
import os
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from couplings import ConvergenceWarning, PointCloud, sinkhorn
from couplings.distributed import shard_rows
from couplings.distributed import sinkhorn as sharded_sinkhorn

F64 = torch.float64
WORLD = 2
TOL = 1e-10


def _weights(g, *shape, zeros=()):
    w = torch.rand(*shape, generator=g, dtype=F64) + 0.1
    for i in zeros:
        w[..., i] = 0
    return w / w.sum(-1, keepdim=True)


def _cases():
    """The problems, built the same way in every process: name -> (cost or points, a, b,
    options). ``n = 7`` rows split 4 + 3 over the two ranks."""
    g = torch.Generator().manual_seed(0)
    c = torch.rand(7, 5, generator=g, dtype=F64)
    cases = {
        "uniform": (c, None, None, dict(eps=0.3, tol=1e-12)),
        # zero weights on both sides; then no mass at all on the rows of rank 1
        "zero_weights": (c, _weights(g, 7, zeros=(1, 5)), _weights(g, 5, zeros=(2,)),
                         dict(eps=0.1, tol=1e-12)),
        # eps small beside the cost's range: the column log-sum-exps fall far below the
        # kernels' exponent floor (-80), where a block without mass must still count for nothing
        "zero_block": (3 * c, torch.tensor([0.3, 0.2, 0.4, 0.1, 0, 0, 0], dtype=F64),
                       _weights(g, 5), dict(eps=0.01, tol=1e-10)),
        # masses 2 and 1, both sides relaxed, then one side only (translation steps included)
        "unbalanced": (c, 2 * _weights(g, 7), _weights(g, 5),
                       dict(eps=0.2, tol=1e-12, rho=(1.0, 0.5))),
        "unbalanced_one_side": (c, 2 * _weights(g, 7), _weights(g, 5),
                                dict(eps=0.2, tol=1e-12, rho=(None, 0.7))),
        "scaling": (c, _weights(g, 7), _weights(g, 5),
                    dict(eps=0.05, tol=1e-10, scaling=0.8)),
        # problems of different scales, so they stop at different iterations and the active
        # set is compacted (check_every=1)
        "batch": (c * torch.tensor([1.0, 4.0, 0.3], dtype=F64).view(3, 1, 1),
                  _weights(g, 3, 7, zeros=(6,)), _weights(g, 3, 5),
                  dict(eps=0.2, tol=1e-12, check_every=1, max_iter=5000)),
        "batch_unbalanced": (c * torch.tensor([1.0, 4.0, 0.3], dtype=F64).view(3, 1, 1),
                             _weights(g, 3, 7), 1.5 * _weights(g, 3, 5),
                             dict(eps=0.2, tol=1e-12, rho=1.0, check_every=1)),
    }
    x = torch.randn(7, 2, generator=g, dtype=F64)
    y = torch.randn(5, 2, generator=g, dtype=F64) + 0.5
    cases["points_grad"] = ((x, y), _weights(g, 7), _weights(g, 5), dict(eps=0.5, tol=1e-12))
    cases["points_grad_unbalanced"] = ((x, y), 2 * _weights(g, 7), _weights(g, 5),
                                       dict(eps=0.5, tol=1e-12, rho=(1.0, 2.0)))
    return cases


def _solve(solver, problem, rows):
    """Solve one case with ``solver`` on the rows ``rows`` (all of them for the reference);
    returns the results and, for point clouds, the envelope gradients of ``value.sum()``."""
    cost, a, b, opts = problem
    a_rows = None if a is None else a[..., rows]
    if isinstance(cost, tuple):  # points: differentiate the value to x, y, a and b
        x, y = cost[0][rows].clone().requires_grad_(), cost[1].clone().requires_grad_()
        a_rows, b = a_rows.clone().requires_grad_(), b.clone().requires_grad_()
        res = solver(PointCloud(x, y), a_rows, b, grad="envelope", **opts)
        res.value.sum().backward()
        grads = {"x": x.grad, "y": y.grad, "a": a_rows.grad, "b": b.grad}
    else:
        res = solver(cost[..., rows, :], a_rows, b, **opts)
        grads = {}
    out = {k: getattr(res, k).detach() for k in ("f", "g", "value", "error", "converged",
                                                   "n_iter_per_problem")}
    out["n_iter"], out["plan"], out["grads"] = res.n_iter, res.plan.detach(), grads
    return out


def _bad_inputs(rank):
    """Calls that must raise on every rank: (name, args, kwargs) as this rank makes them."""
    c = torch.rand(4 if rank == 0 else 3, 5, dtype=F64)
    a = torch.full((c.shape[0],), 1 / 7, dtype=F64)
    return [
        # m differs across ranks
        ("m_mismatch", (c if rank == 0 else torch.rand(3, 6, dtype=F64),), dict(eps=0.1)),
        # eps differs across ranks
        ("eps_mismatch", (c,), dict(eps=0.1 if rank == 0 else 0.2)),
        # a negative weight on rank 1 only: rank 0 is told that another rank failed
        ("negative_on_one_rank", (c, a if rank == 0 else -a), dict(eps=0.1)),
        # a block of the wrong length on rank 0 only
        ("shape_on_one_rank", (c, a[:-1] if rank == 0 else a), dict(eps=0.1)),
        # balanced with masses 1 (a over both ranks) and 2 (b)
        ("unequal_mass", (c, a, torch.full((5,), 0.4, dtype=F64)), dict(eps=0.1)),
        # not enough iterations: a warning, not an error, on every rank
        ("not_converged", (c,), dict(eps=0.01, max_iter=3)),
        # float32 at an eps that the cost / eps overflows: NaN potentials, an error everywhere
        ("overflow", (100 * c.float(),), dict(eps=1e-38, max_iter=5000)),
    ]


def _worker(rank, store, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    results, raised = {}, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, problem in _cases().items():
            n = problem[0][0].shape[0] if isinstance(problem[0], tuple) else problem[0].shape[-2]
            results[name] = _solve(sharded_sinkhorn, problem, shard_rows(n, rank, WORLD))
        for name, args, kwargs in _bad_inputs(rank):
            try:
                sharded_sinkhorn(*args, **kwargs)
                raised[name] = None
            except Exception as err:  # reported to the test, which checks type and message
                raised[name] = (type(err).__name__, str(err))
        # the group still works after the failed calls
        results["after_errors"] = _solve(sharded_sinkhorn, _cases()["uniform"],
                                         shard_rows(7, rank, WORLD))
    warned = [(w.category.__name__, str(w.message)) for w in caught]
    dist.destroy_process_group()
    torch.save({"results": results, "raised": raised, "warned": warned},
               os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The results of the two ranks, from one spawn running every case."""
    tmp = tmp_path_factory.mktemp("distributed")
    ctx = mp.start_processes(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the spawned ranks did not finish in 240 s")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _close(x, y):
    return torch.allclose(x, y, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("name", list(_cases()))
def test_ranks_match_the_single_process_solve(sharded, name):
    problem = _cases()[name]
    ref = _solve(sinkhorn, problem, slice(None))
    ranks = [s["results"][name] for s in sharded]
    assert bool(ref["converged"].all())
    f = torch.cat([r["f"] for r in ranks], -1)
    assert _close(f, ref["f"]), (f - ref["f"]).abs().max()
    # this rank's rows of the plan
    assert _close(torch.cat([r["plan"] for r in ranks], -2), ref["plan"])
    for r in ranks:  # the replicated outputs, on every rank
        assert _close(r["g"], ref["g"]), (r["g"] - ref["g"]).abs().max()
        assert _close(r["value"], ref["value"]), (r["value"] - ref["value"]).abs().max()
        assert _close(r["error"], ref["error"])
        assert r["n_iter"] == ref["n_iter"]
        assert torch.equal(r["n_iter_per_problem"], ref["n_iter_per_problem"])
        assert torch.equal(r["converged"], ref["converged"])
    if name == "batch":  # the problems stop at different iterations: compaction ran
        assert len(set(ref["n_iter_per_problem"].tolist())) == 3
    if ref["grads"]:
        # rows (x, a): concatenated over ranks; shared (y, b): the ranks' shares sum up
        for key in ("x", "a"):
            got = torch.cat([r["grads"][key] for r in ranks], 0)
            assert _close(got, ref["grads"][key]), (key, (got - ref["grads"][key]).abs().max())
        for key in ("y", "b"):
            got = sum(r["grads"][key] for r in ranks)
            assert _close(got, ref["grads"][key]), (key, (got - ref["grads"][key]).abs().max())


def test_group_still_works_after_rejected_inputs(sharded):
    ref = _solve(sinkhorn, _cases()["uniform"], slice(None))
    for s in sharded:
        assert _close(s["results"]["after_errors"]["g"], ref["g"])


def test_bad_inputs_raise_on_every_rank(sharded):
    raised = [s["raised"] for s in sharded]
    for name in ("m_mismatch", "eps_mismatch"):
        for r in raised:
            assert r[name][0] == "ValueError" and "differ across ranks" in r[name][1], r[name]
    assert "m in [5, 6]" in raised[0]["m_mismatch"][1]
    assert "eps in [0.1, 0.2]" in raised[0]["eps_mismatch"][1]
    # rejected on one rank: that rank says why, the other that another rank failed
    assert raised[1]["negative_on_one_rank"] == (
        "ValueError", "a_rows must be non-negative, got min -0.143.")
    assert raised[0]["shape_on_one_rank"][0] == "ValueError"
    assert "a_rows must have shape (4,)" in raised[0]["shape_on_one_rank"][1]
    for r in (raised[0]["negative_on_one_rank"], raised[1]["shape_on_one_rank"]):
        assert r[0] == "ValueError" and "another rank" in r[1]
    for r in raised:
        assert r["unequal_mass"][0] == "ValueError" and "equal total mass" in r["unequal_mass"][1]
        assert r["not_converged"] is None
        # every rank names the overflow and the largest cost over all the rows
        assert r["overflow"][0] == "ValueError" and "overflowed for 1 of 1" in r["overflow"][1]
    assert raised[0]["overflow"] == raised[1]["overflow"]


def test_only_the_expected_warnings(sharded):
    for s in sharded:  # one ConvergenceWarning per rank, for the max_iter=3 call, nothing else
        assert [w[0] for w in s["warned"]] == ["ConvergenceWarning"], s["warned"]


# --------------------------------------------------------------------------------------------
# in this process


@pytest.mark.parametrize("n", [0, 1, 5, 7, 16])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_rows_partitions_the_rows(n, world):
    blocks = [range(n)[shard_rows(n, r, world)] for r in range(world)]
    assert [i for blk in blocks for i in blk] == list(range(n))
    sizes = [len(blk) for blk in blocks]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shard_rows_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank must be in"):
        shard_rows(5, 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        shard_rows(5, 0, 0)
    with pytest.raises(TypeError, match="n must be an int"):
        shard_rows(5.0, 0, 1)


def test_needs_an_initialized_group():
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="initialized torch.distributed process group"):
        sharded_sinkhorn(torch.rand(3, 4, dtype=F64), eps=0.1)


@pytest.fixture
def group_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_group_of_one_is_the_single_process_solve(group_of_one):
    g = torch.Generator().manual_seed(3)
    c = torch.rand(2, 6, 4, generator=g, dtype=F64)
    a, b = _weights(g, 2, 6), _weights(g, 4)
    res = sharded_sinkhorn(c, a, b, eps=0.1, tol=1e-12)
    ref = sinkhorn(c, a, b, eps=0.1, tol=1e-12)
    assert res.n_iter == ref.n_iter and res.backend == "tensorized"
    for key in ("f", "g", "value", "plan"):
        assert _close(getattr(res, key), getattr(ref, key)), key
    with pytest.raises(ValueError, match="holds only this rank's rows"):
        _ = res.linear_value
    # warm start from the solution: converged at the first check, after one iteration
    warm = sharded_sinkhorn(c, a, b, eps=0.1, tol=1e-9, init=(ref.f, ref.g))
    assert warm.n_iter == 1 and _close(warm.g, ref.g)


def test_shape_and_option_errors(group_of_one):
    c = torch.rand(6, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"a_rows must have shape \(6,\)"):
        sharded_sinkhorn(c, torch.full((5,), 0.2, dtype=F64), eps=0.1)
    with pytest.raises(ValueError, match=r"b must have shape \(4,\)"):
        sharded_sinkhorn(c, None, torch.full((5,), 0.2, dtype=F64), eps=0.1)
    with pytest.raises(TypeError, match="dtype"):
        sharded_sinkhorn(c, None, torch.full((4,), 0.25), eps=0.1)
    with pytest.raises(ValueError, match="at least one row"):
        sharded_sinkhorn(c[:0], eps=0.1)
    with pytest.raises(ValueError, match="envelope"):
        sharded_sinkhorn(c, eps=0.1, grad="implicit")
    with pytest.raises(ValueError, match="backend"):
        sharded_sinkhorn(c, eps=0.1, backend="online")
    with pytest.raises(ValueError, match="eps"):
        sharded_sinkhorn(c, eps=-1.0)
    with pytest.raises(ValueError, match="a must have a positive total mass"):
        sharded_sinkhorn(c, torch.zeros(6, dtype=F64), eps=0.1)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = sharded_sinkhorn(c, eps=0.001, max_iter=2)
    assert not bool(res.converged) and math.isfinite(float(res.value))
