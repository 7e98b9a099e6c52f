"""Soft sorting and ranking by projection onto the permutahedron (Blondel et al., ICML 2020).

The documented values are the READMEs of google-research/fast-soft-sort and teddykoker/torchsort
(quoted in shared/papers/relaxations.md, sections 4.1 and 4.2).
"""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import isotonic_regression

from couplings.structures import FiniteDifference
from couplings.structures import permutahedron as ph
from couplings.structures.permutahedron import Permutahedron, soft_rank, soft_sort

OPS = (soft_sort, soft_rank)
REGS = ("l2", "kl")
DIRECTIONS = ("ASCENDING", "DESCENDING")


def _generic(shape, seed=0, scale=3.0):
    """Random float64 values without ties, spread enough for mixed PAV blocks at strength 1."""
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, dtype=torch.float64, generator=g)


def _spearmanr(pred, target, **kw):
    """torchsort README's differentiable Spearman correlation."""
    pred = soft_rank(pred, **kw)
    target = soft_rank(target, **kw)
    pred = pred - pred.mean()
    pred = pred / pred.norm()
    target = target - target.mean()
    target = target / target.norm()
    return (pred * target).sum()


# --------------------------------------------------------------------------------------------
# documented values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_soft_sort_readme(dtype):
    x = torch.tensor([[5.0, 1.0, 2.0], [2.0, 1.0, 5.0]], dtype=dtype)
    torch.testing.assert_close(
        soft_sort(x, regularization_strength=1.0),
        torch.tensor([[1.6667, 2.6667, 3.6667]] * 2, dtype=dtype), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        soft_sort(x, regularization_strength=0.1), torch.tensor([[1.0, 2.0, 5.0]] * 2, dtype=dtype))
    torch.testing.assert_close(
        soft_rank(x, regularization_strength=2.0),
        torch.tensor([[3.0, 1.25, 1.75], [1.75, 1.25, 3.0]], dtype=dtype))
    torch.testing.assert_close(
        soft_rank(x, regularization_strength=1.0),
        torch.tensor([[3.0, 1.0, 2.0], [2.0, 1.0, 3.0]], dtype=dtype))


def test_torchsort_readme_sort_and_rank():
    x = torch.tensor([[8.0, 0, 5, 3, 2, 1, 6, 7, 9]], requires_grad=True)
    y = soft_sort(x, regularization_strength=1.0)
    expected = torch.tensor([[0.5556, 1.5556, 2.5556, 3.5556, 4.5556, 5.5556, 6.5556, 7.5556,
                              8.5556]])
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(soft_sort(x, regularization_strength=0.1),
                               torch.tensor([[-0.0, 1, 2, 3, 5, 6, 7, 8, 9]]))
    torch.testing.assert_close(soft_rank(x), torch.tensor([[8.0, 1, 5, 4, 3, 2, 6, 7, 9]]))
    (grad,) = torch.autograd.grad(y[0, 0], x)
    torch.testing.assert_close(grad, torch.full((1, 9), 0.1111), atol=1e-4, rtol=0)


def test_torchsort_readme_spearman():
    pred = torch.tensor([[1.0, 2, 3, 4, 5]], requires_grad=True)
    target = torch.tensor([[5.0, 6, 7, 8, 7]])
    rho = _spearmanr(pred, target)
    assert abs(rho.item() - 0.8321) < 1e-4
    (grad,) = torch.autograd.grad(rho, pred)
    # the ranks of pred tie in the isotonic problem (s - w = 0): PAV pools ties into one block,
    # whose Jacobian (I - 11^T / n) passes the centred Spearman gradient through unchanged
    expected = torch.tensor([[-5.5470e-02, 2.98e-09, 5.5470e-02, 1.1094e-01, -1.1094e-01]])
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# limits, directions, invariants


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_small_strength_gives_hard_sort_and_rank(reg, direction):
    x = _generic((4, 7), seed=1)
    descending = direction == "DESCENDING"
    hard_sort = x.sort(dim=-1, descending=descending).values
    hard_rank = (x.argsort(dim=-1, descending=descending).argsort(dim=-1) + 1).to(x.dtype)
    kw = dict(regularization=reg, direction=direction)
    torch.testing.assert_close(soft_sort(x, 1e-4, **kw), hard_sort, atol=1e-10, rtol=0)
    torch.testing.assert_close(soft_rank(x, 1e-4, **kw), hard_rank, atol=1e-10, rtol=0)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_large_strength_gives_the_mean_l2(direction):
    x = _generic((3, 6), seed=2)
    kw = dict(regularization="l2", direction=direction)
    torch.testing.assert_close(soft_sort(x, 1e7, **kw), x.mean(-1, keepdim=True).expand_as(x),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(soft_rank(x, 1e7, **kw), torch.full_like(x, 3.5), atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("strength", [0.3, 1.0, 5.0])
def test_outputs_lie_in_the_permutahedron(reg, strength):
    x = _generic((5, 8), seed=3)
    n = x.shape[-1]
    rank = soft_rank(x, strength, regularization=reg)
    # P(rho): sum n(n+1)/2, and the k largest entries sum to at most the k largest ranks
    torch.testing.assert_close(rank.sum(-1), torch.full((5,), n * (n + 1) / 2.0, dtype=x.dtype))
    top = rank.sort(-1, descending=True).values.cumsum(-1)
    bound = torch.arange(n, 0, -1, dtype=x.dtype).cumsum(0)
    assert bool((top <= bound + 1e-10).all())
    assert bool((rank > 0).all())
    sorted_ = soft_sort(x, strength, regularization=reg)
    assert bool((sorted_.diff(dim=-1) >= -1e-12).all())  # ascending output is sorted
    if reg == "l2":  # P(x): same sum as x, majorized by x
        torch.testing.assert_close(sorted_.sum(-1), x.sum(-1))
        top = sorted_.flip(-1).cumsum(-1)
        assert bool((top <= x.sort(-1, descending=True).values.cumsum(-1) + 1e-10).all())


@pytest.mark.parametrize("reg", REGS)
def test_directions_are_reflections(reg):
    x = _generic((3, 6), seed=4)
    kw = dict(regularization_strength=1.5, regularization=reg)
    torch.testing.assert_close(soft_sort(x, direction="DESCENDING", **kw),
                               -soft_sort(-x, direction="ASCENDING", **kw))
    torch.testing.assert_close(soft_rank(x, direction="DESCENDING", **kw),
                               soft_rank(-x, direction="ASCENDING", **kw))
    if reg == "l2":  # P(rho) is symmetric about its centre
        torch.testing.assert_close(soft_rank(x, direction="DESCENDING", **kw),
                                   7.0 - soft_rank(x, direction="ASCENDING", **kw))


def test_ties_get_equal_ranks_and_the_default_is_l2_ascending():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0]], dtype=torch.float64)
    for strength in (1e-3, 0.7, 5.0):
        for reg in REGS:
            r = soft_rank(x, strength, regularization=reg)
            assert abs(r[0, 0].item() - r[0, 2].item()) < 1e-12
    torch.testing.assert_close(soft_rank(x, 1e-3), torch.tensor([[3.5, 1.0, 3.5, 2.0]],
                                                                dtype=torch.float64))
    torch.testing.assert_close(soft_rank(x, 0.8),
                               soft_rank(x, 0.8, regularization="l2", direction="ASCENDING"))


# --------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gradcheck(op, reg, direction):
    x = _generic((3, 7), seed=5).requires_grad_(True)
    strength = 1.0 if op is soft_sort else 0.7

    def f(v):
        return op(v, strength, regularization=reg, direction=direction)

    # the partition must be mixed for the test to mean anything: neither all singletons nor one
    # block per row
    with torch.no_grad():
        jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], x[0].detach())
    nonzero = int((jac.abs() > 1e-12).sum())  # singletons: 7 (sort) or 0 (rank); one block: 49
    assert (7 if op is soft_sort else 0) < nonzero < 49
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7)


def _central_jacobian(f, x, h=1e-6):
    cols = []
    for j in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[j] = h
        e = e.view_as(x)
        cols.append(((f(x + e) - f(x - e)) / (2 * h)).reshape(-1))
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("reg", REGS)
def test_custom_backward_equals_finite_difference_jacobian(op, reg):
    x = _generic((2, 6), seed=6)

    def f(v):
        return op(v, 1.0, regularization=reg)

    jac = torch.autograd.functional.jacobian(f, x).reshape(x.numel(), x.numel())
    torch.testing.assert_close(jac, _central_jacobian(f, x), atol=1e-7, rtol=1e-6)
    # the block structure: rows of different samples do not interact
    assert float(jac[:6, 6:].abs().max()) == 0.0


@pytest.mark.parametrize("reg", REGS)
def test_kl_soft_sort_jacobian_is_the_softmax_of_the_values_in_each_block(reg):
    # d sort / d x_j is 1/|B| (l2) or softmax(x_B)_j (kl), here with all values in one block
    x = torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64, requires_grad=True)
    y = soft_sort(x, 100.0, regularization=reg, direction="DESCENDING")
    (grad,) = torch.autograd.grad(y[0, 0], x)
    expected = torch.softmax(x.detach(), -1) if reg == "kl" else torch.full_like(x, 1 / 3)
    torch.testing.assert_close(grad, expected)


# --------------------------------------------------------------------------------------------
# the isotonic solver


@pytest.mark.parametrize("lockstep", [False, True])
def test_pav_l2_equals_scipy(lockstep, monkeypatch):
    monkeypatch.setattr(ph, "_LOCKSTEP_MIN_ROWS", 0 if lockstep else 10**9)
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 30, 200):
        # a trend against the order makes long pooled blocks; rounding makes exact ties
        y = rng.standard_normal((16, n)) + np.linspace(0, 2, n)
        y[8:] = np.round(y[8:], 1)
        v = ph._isotonic_values(y)
        for row, vr in zip(y, v, strict=True):
            expected = isotonic_regression(row, increasing=False).x
            np.testing.assert_allclose(vr, expected, atol=1e-12, rtol=0)


def test_pav_lockstep_equals_per_row(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, 25)) + np.linspace(0, 2, 25)
    b = rng.standard_normal((40, 25))
    a[20:] = np.round(a[20:])
    for args in ((a,), (a, b)):
        monkeypatch.setattr(ph, "_LOCKSTEP_MIN_ROWS", 10**9)
        per_row = ph._isotonic_blocks(*args)
        monkeypatch.setattr(ph, "_LOCKSTEP_MIN_ROWS", 0)
        np.testing.assert_array_equal(ph._isotonic_blocks(*args), per_row)


def test_pav_kl_equals_brute_force():
    """The decreasing isotonic KL solution, argmin_u sum(exp(a - u) + exp(b) u) over
    u_1 >= ... >= u_n, is piecewise constant on contiguous blocks, each block at its own optimum
    log sum_B e^a - log sum_B e^b. Brute force: every one of the 2^(n-1) contiguous partitions
    whose block optima decrease is a feasible point, and the optimum is among them."""
    rng = np.random.default_rng(2)
    n = 6

    def objective(u, a, b):
        return np.sum(np.exp(a - u) + np.exp(b) * u)

    for _ in range(5):
        a, b = 2 * rng.standard_normal(n), rng.standard_normal(n)
        v = ph._isotonic_values(a[None], b[None])[0]
        best = None
        for cuts in itertools.product((False, True), repeat=n - 1):
            bounds = [0, *(i + 1 for i, cut in enumerate(cuts) if cut), n]
            u = np.concatenate([
                np.full(hi - lo, np.log(np.exp(a[lo:hi]).sum()) - np.log(np.exp(b[lo:hi]).sum()))
                for lo, hi in itertools.pairwise(bounds)])
            if np.all(np.diff(u) <= 1e-12) and (best is None
                                                or objective(u, a, b) < objective(best, a, b)):
                best = u
        np.testing.assert_allclose(v, best, atol=1e-10)
        assert bool(np.all(np.diff(v) <= 0))


def _assert_projection(mu, z, w, reg, tol=1e-9):
    """``mu`` minimizes 0.5 ||mu - z||^2 (l2) or KL(mu, e^z) (kl) over conv{w_sigma}: it lies in
    the permutahedron (majorized by ``w``) and the first-order condition
    ``<grad f(mu), nu - mu> >= 0`` holds at every vertex ``nu`` (brute force over n!)."""
    n = len(w)
    top_mu = np.cumsum(np.sort(mu)[::-1])
    top_w = np.cumsum(np.sort(w)[::-1])
    assert abs(top_mu[-1] - top_w[-1]) < tol * n * np.abs(w).max()
    assert bool(np.all(top_mu <= top_w + tol * np.abs(w).max()))
    grad = mu - z if reg == "l2" else np.log(mu) - z
    vertices = np.array(list(itertools.permutations(w)))
    gap = (vertices - mu) @ grad
    assert gap.min() >= -tol * max(1.0, np.abs(grad).max() * np.abs(w).max())
    return gap.max()  # 0 when mu is in the relative interior (all values pooled)


@pytest.mark.parametrize("reg", REGS)
def test_projections_satisfy_the_optimality_conditions(reg):
    rng = np.random.default_rng(3)
    n, eps = 5, 1.3
    rho = np.arange(n, 0, -1.0)
    gaps = []
    for _ in range(4):
        theta = 1.5 * rng.standard_normal(n)
        t = torch.from_numpy(theta)
        # soft rank: the projection of theta / eps onto P(rho) (kl: exp(P_E) is in P(rho))
        rank = soft_rank(t, eps, regularization=reg).numpy()
        gaps.append(_assert_projection(rank, theta / eps, rho, reg))
        # soft sort, descending: the projection of rho / eps onto P(theta) (kl: onto P(e^theta),
        # returned in log space)
        y = soft_sort(t, eps, regularization=reg, direction="DESCENDING").numpy()
        if reg == "l2":
            gaps.append(_assert_projection(y, rho / eps, theta, reg))
        else:
            gaps.append(_assert_projection(np.exp(y), rho / eps, np.exp(theta), reg))
    # the cases are not all interior: on the boundary some vertex is strictly worse
    assert sum(g > 1e-3 for g in gaps) >= 4


# --------------------------------------------------------------------------------------------
# batching, dtypes, errors


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("reg", REGS)
def test_batch_equals_one_by_one(op, reg):
    x = _generic((2, 3, 5), seed=7).requires_grad_(True)
    g = _generic((2, 3, 5), seed=8)
    out = op(x, 0.7, regularization=reg)
    (grad,) = torch.autograd.grad((out * g).sum(), x)
    for i in range(2):
        for j in range(3):
            xi = x[i, j].detach().requires_grad_(True)
            oi = op(xi, 0.7, regularization=reg)  # a single (n,) vector works too
            (gi,) = torch.autograd.grad((oi * g[i, j]).sum(), xi)
            torch.testing.assert_close(out[i, j], oi)
            torch.testing.assert_close(grad[i, j], gi)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("reg", REGS)
def test_float32_in_float32_out(op, reg):
    x = _generic((4, 6), seed=9)
    x32 = x.float().requires_grad_(True)
    out = op(x32, regularization=reg)
    assert out.dtype == torch.float32
    (grad,) = torch.autograd.grad(out.square().sum(), x32)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(out.double(), op(x.float().double(), regularization=reg),
                               atol=1e-5, rtol=1e-5)


def test_empty_and_single_value():
    assert soft_sort(torch.zeros(0, 4)).shape == (0, 4)
    assert soft_rank(torch.zeros(3, 0)).shape == (3, 0)
    torch.testing.assert_close(soft_sort(torch.tensor([2.5])), torch.tensor([2.5]))
    torch.testing.assert_close(soft_rank(torch.tensor([2.5]), regularization="kl"),
                               torch.tensor([1.0]))


@pytest.mark.parametrize("op", OPS)
def test_bad_inputs(op):
    x = torch.tensor([[1.0, 2.0, 0.5]])
    with pytest.raises(TypeError, match="floating dtype"):
        op(torch.tensor([[1, 2, 3]]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        op([[1.0, 2.0]])
    with pytest.raises(ValueError, match="scalar"):
        op(torch.tensor(1.0))
    with pytest.raises(ValueError, match="finite"):
        op(torch.tensor([[1.0, float("nan")]]))
    for strength in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="regularization_strength"):
            op(x, strength)
    with pytest.raises(TypeError, match="regularization_strength"):
        op(x, "1.0")
    with pytest.raises(ValueError, match="too small"):
        op(x, 1e-308)
    with pytest.raises(ValueError, match="regularization"):
        op(x, regularization="l1")
    with pytest.raises(ValueError, match="direction"):
        op(x, direction="ascending")


# --------------------------------------------------------------------------------------------
# the structure


def test_permutahedron_structure():
    rho = torch.tensor([0.5, 2.0, 1.0, 4.0], dtype=torch.float64)
    perm = Permutahedron(rho)
    assert perm.event_shape == (4,)
    w = _generic((3, 4), seed=10)
    z = perm.argmax(w)
    vertices = perm.enumerate()
    assert vertices.shape == (24, 4)
    # the argmax is the best vertex
    best = (w @ vertices.T).max(-1).values
    torch.testing.assert_close((w * z).sum(-1), best)
    for reg in REGS:
        torch.testing.assert_close(perm.relaxed(w, tau=1e-4, reg=reg), z, atol=1e-9, rtol=0)
    assert Permutahedron([1.0, 1.0, 2.0]).enumerate().shape == (3, 3)  # distinct points only


@pytest.mark.parametrize("reg", REGS)
def test_permutahedron_ranks_equal_soft_rank_and_backwards_agree(reg):
    x = _generic((3, 6), seed=11).requires_grad_(True)
    g = _generic((3, 6), seed=12)
    ranks = Permutahedron(torch.arange(1.0, 7.0))
    outs = {b: ranks.relaxed(x, tau=1.7, reg=reg, backward=b)
            for b in ("autograd", "custom", FiniteDifference(1e-5))}
    torch.testing.assert_close(outs["custom"], soft_rank(x, 1.7, regularization=reg))
    grads = {b: torch.autograd.grad((o * g).sum(), x)[0] for b, o in outs.items()}
    for b, o in outs.items():
        torch.testing.assert_close(o, outs["autograd"])
        torch.testing.assert_close(grads[b], grads["autograd"], atol=1e-6, rtol=1e-6)
    # the autograd path is twice differentiable
    assert torch.autograd.gradgradcheck(lambda v: ranks.relaxed(v, tau=1.7, reg=reg), (x,))


def test_permutahedron_errors():
    with pytest.raises(ValueError, match="rho > 0"):
        Permutahedron([0.0, 1.0]).relaxed(torch.zeros(2), reg="kl")
    with pytest.raises(ValueError, match=r"shape \(n,\)"):
        Permutahedron(torch.ones(2, 2))
    with pytest.raises(ValueError, match="finite"):
        Permutahedron([1.0, float("nan")])
    with pytest.raises(ValueError, match="reg"):
        Permutahedron([1.0, 2.0]).relaxed(torch.zeros(2), reg="entropy")
    with pytest.raises(ValueError, match="shape"):
        Permutahedron([1.0, 2.0]).argmax(torch.zeros(3))
