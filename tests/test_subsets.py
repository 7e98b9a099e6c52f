"""One-hot vectors and k-subsets: exact sums against enumeration, optimality of the relaxations,
their gradients by every backward, and input validation."""

import itertools

import pytest
import torch

from couplings.structures import Categorical, FiniteDifference, KSubset

KSUBSET_REGS = KSubset.regularizers
SEPARABLE = ("euclidean", "categorical_entropy", "binary_entropy")


def brute_force(w: torch.Tensor, structure) -> tuple[torch.Tensor, torch.Tensor]:
    """log-partition and marginals by summing over every element (float64)."""
    z = structure.enumerate()  # (N, d)
    scores = w.double() @ z.T
    return torch.logsumexp(scores, -1), torch.softmax(scores, -1) @ z


def regularizer_gradient(z: torch.Tensor, reg: str) -> torch.Tensor:
    """Gradient of R at z for the separable regularizers."""
    if reg == "euclidean":
        return z
    if reg == "categorical_entropy":
        return torch.log(z) + 1
    return torch.log(z) - torch.log1p(-z)  # binary entropy


def simplex_projection_brute_force(x: torch.Tensor) -> torch.Tensor:
    """Projection onto the simplex: over every support S, the affine projection, feasible and
    nearest. Independent of sparsemax's sort-based threshold."""
    d = x.shape[-1]
    best, best_dist = None, float("inf")
    for size in range(1, d + 1):
        for support in itertools.combinations(range(d), size):
            s = list(support)
            z = torch.zeros_like(x)
            z[s] = x[s] - (x[s].sum() - 1) / size
            if (z >= 0).all():
                dist = float(((z - x) ** 2).sum())
                if dist < best_dist:
                    best, best_dist = z, dist
    return best


def generic_weights(d, *, batch=(), seed=0, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*batch, d, generator=g, dtype=torch.float64) * scale).to(dtype)


# ------------------------------------------------------------------------------------------
# exponential family: exact sums


def test_ksubset_log_partition_and_marginals_equal_enumeration():
    for d in range(2, 9):
        for k in range(1, d):
            s = KSubset(d, k)
            w = generic_weights(d, batch=(2,), seed=10 * d + k)
            log_z, mu = brute_force(w, s)
            torch.testing.assert_close(s.log_partition(w), log_z, atol=1e-6, rtol=0)
            torch.testing.assert_close(s.marginals(w), mu, atol=1e-6, rtol=0)


@pytest.mark.parametrize("d,k", [(8, 3), (12, 5), (12, 11)])
def test_ksubset_exact_sums_in_float32_over_a_range_of_50(d, k):
    g = torch.Generator().manual_seed(d + k)
    w = torch.rand(4, d, generator=g, dtype=torch.float64) * 50 - 25
    s = KSubset(d, k)
    log_z, mu = brute_force(w, s)
    log_z32, mu32 = s.log_partition(w.float()), s.marginals(w.float())
    assert log_z32.dtype == mu32.dtype == torch.float32
    assert torch.isfinite(log_z32).all() and torch.isfinite(mu32).all()
    # the recursions run in float64: float32 rounding of w (~1e-6 here) is all that is lost
    torch.testing.assert_close(log_z32.double(), log_z, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(mu32.double(), mu, atol=1e-6, rtol=0)


def test_ef_float32_keeps_its_precision_when_log_partition_is_large():
    # |log Z| ~ 2000: a float32 log-domain closed form would lose ~1e-4 to cancellation
    s = KSubset(150, 50)
    w = generic_weights(150, batch=(2,), seed=16, scale=30.0).float().double()
    mu = s.marginals(w)
    assert s.log_partition(w).abs().min() > 1000
    torch.testing.assert_close(s.marginals(w.float()).double(), mu, atol=1e-6, rtol=0)
    z = s.relaxed(w.float(), 1.0, backward="custom")
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.double(), mu, atol=1e-6, rtol=0)


def test_ef_marginals_sum_to_k_and_are_the_gradient_of_log_partition():
    s = KSubset(7, 3)
    w = generic_weights(7, batch=(3,), seed=1).requires_grad_(True)
    mu = s.marginals(w)
    torch.testing.assert_close(mu.sum(-1), torch.full((3,), 3.0, dtype=torch.float64))
    (grad,) = torch.autograd.grad(s.log_partition(w).sum(), w)
    torch.testing.assert_close(mu, grad, atol=1e-12, rtol=0)
    # and the closed form is itself differentiable: its Jacobian is symmetric (a Hessian)
    jac = torch.autograd.functional.jacobian(s.marginals, w.detach()[0])
    torch.testing.assert_close(jac, jac.T, atol=1e-12, rtol=0)


def test_categorical_exact_sums():
    c = Categorical(5)
    w = generic_weights(5, batch=(3,), seed=2)
    log_z, mu = brute_force(w, c)
    torch.testing.assert_close(c.log_partition(w), log_z)
    torch.testing.assert_close(c.marginals(w), mu)


def test_enumerate():
    z = KSubset(6, 2).enumerate()
    assert z.shape == (15, 6) and z.dtype == torch.float64
    assert (z.sum(-1) == 2).all() and len({tuple(r.tolist()) for r in z}) == 15
    torch.testing.assert_close(Categorical(4).enumerate(), torch.eye(4, dtype=torch.float64))


# ------------------------------------------------------------------------------------------
# the relaxations solve their programs


@pytest.mark.parametrize("reg", KSUBSET_REGS)
@pytest.mark.parametrize("d,k,tau", [(5, 2, 1.0), (7, 3, 0.3), (8, 6, 2.0)])
def test_ksubset_relaxation_lies_in_the_polytope_and_is_optimal(reg, d, k, tau):
    s = KSubset(d, k)
    w = generic_weights(d, batch=(4,), seed=d * k)
    z = s.relaxed(w, tau, reg=reg)
    assert ((z >= -1e-9) & (z <= 1 + 1e-9)).all()
    torch.testing.assert_close(z.sum(-1), torch.full((4,), float(k), dtype=torch.float64),
                               atol=1e-12, rtol=0)
    if reg == "ef":
        torch.testing.assert_close(z, brute_force(w / tau, s)[1], atol=1e-10, rtol=0)
        return
    # first-order optimality of the concave objective over the polytope: at the solution, the
    # gradient w/tau - R'(z) makes a non-positive product with y - z for every vertex y
    vertices = s.enumerate()  # (N, d)
    grad = w / tau - regularizer_gradient(z, reg)
    gaps = ((vertices[None] - z[:, None]) * grad[:, None]).sum(-1)
    assert gaps.max() <= 1e-9


@pytest.mark.parametrize("reg", SEPARABLE)
def test_separable_kkt_threshold_form(reg):
    # z_i = h((w_i - nu) / tau): one threshold nu shared by every free entry
    s, tau = KSubset(9, 4), 0.5
    w = generic_weights(9, seed=3, scale=1.5)
    z = s.relaxed(w, tau, reg=reg)
    x = w / tau
    if reg == "euclidean":
        free = (z > 1e-12) & (z < 1 - 1e-12)
        nu = x[free] - z[free]
        assert (x[z >= 1 - 1e-12] - 1 >= nu.max() - 1e-12).all()
        assert (x[z <= 1e-12] <= nu.min() + 1e-12).all()
    elif reg == "categorical_entropy":
        free = z < 1 - 1e-12
        nu = x[free] - torch.log(z[free])
        assert (x[~free] >= nu.max() - 1e-12).all()
        assert (~free).any()  # this instance caps one entry
    else:
        nu = x - torch.logit(z)
    assert nu.numel() >= 2
    assert float(nu.max() - nu.min()) < 1e-10


def test_euclidean_projection_property_over_every_vertex_in_float32():
    s = KSubset(8, 3)
    w = generic_weights(8, batch=(5,), seed=4, dtype=torch.float32, scale=3.0)
    z = s.relaxed(w, 1.0, reg="euclidean")
    assert z.dtype == torch.float32
    gaps = ((s.enumerate().float()[None] - z[:, None]) * (w - z)[:, None]).sum(-1)
    assert gaps.max() <= 1e-5
    torch.testing.assert_close(z.sum(-1), torch.full((5,), 3.0), atol=1e-5, rtol=0)


def test_euclidean_with_a_gap_wider_than_one_is_the_vertex_with_zero_gradient():
    s = KSubset(4, 2)
    w = torch.tensor([5.0, 0.2, 4.0, 0.0], dtype=torch.float64, requires_grad=True)
    z = s.relaxed(w, 1.0, reg="euclidean")
    torch.testing.assert_close(z.detach(), torch.tensor([1.0, 0.0, 1.0, 0.0],
                                                        dtype=torch.float64))
    (grad,) = torch.autograd.grad((z * torch.arange(4.0, dtype=torch.float64)).sum(), w)
    assert (grad == 0).all()


@pytest.mark.parametrize("reg", KSUBSET_REGS)
def test_ksubset_relaxation_tends_to_the_top_k(reg):
    s = KSubset(10, 4)
    w = torch.randperm(10, generator=torch.Generator().manual_seed(5)).double() / 10
    z = s.relaxed(w, 1e-3, reg=reg)  # gaps 0.1 = 100 tau
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z, s.argmax(w), atol=1e-3, rtol=0)


@pytest.mark.parametrize("reg", Categorical.regularizers)
def test_categorical_relaxation_tends_to_the_argmax(reg):
    w = torch.tensor([0.3, 0.9, 0.1, 0.8], dtype=torch.float64)
    torch.testing.assert_close(Categorical(4).relaxed(w, 1e-3, reg=reg),
                               Categorical(4).argmax(w), atol=1e-3, rtol=0)


def test_binary_entropy_threshold_is_solved_to_float64_precision():
    s = KSubset(30, 11)
    g = torch.Generator().manual_seed(6)
    w = torch.rand(3, 30, generator=g, dtype=torch.float64) * 50 - 25
    for tau in (1e-3, 1.0, 100.0):
        z = s.relaxed(w, tau, reg="binary_entropy")
        assert (z.sum(-1) - 11).abs().max() < 1e-12


def test_sparsemax_equals_the_brute_force_projection_and_entropy_the_softmax():
    c = Categorical(6)
    w = generic_weights(6, batch=(6,), seed=7)
    for tau in (0.5, 2.0):
        z = c.relaxed(w, tau, reg="euclidean")
        for row in range(6):
            torch.testing.assert_close(z[row], simplex_projection_brute_force(w[row] / tau),
                                       atol=1e-12, rtol=0)
        assert (z == 0).any()  # sparse
        torch.testing.assert_close(c.relaxed(w, tau, reg="entropy"), torch.softmax(w / tau, -1),
                                   atol=1e-15, rtol=0)


def test_k_equal_one_matches_the_categorical():
    w = generic_weights(6, batch=(5,), seed=8)
    c, s = Categorical(6), KSubset(6, 1)
    for tau in (0.3, 1.0):
        soft, sparse = c.relaxed(w, tau, reg="entropy"), c.relaxed(w, tau, reg="euclidean")
        torch.testing.assert_close(s.relaxed(w, tau, reg="ef"), soft, atol=1e-12, rtol=0)
        torch.testing.assert_close(s.relaxed(w, tau, reg="categorical_entropy"), soft,
                                   atol=1e-12, rtol=0)
        torch.testing.assert_close(s.relaxed(w, tau, reg="euclidean"), sparse, atol=1e-12,
                                   rtol=0)
    torch.testing.assert_close(s.log_partition(w), c.log_partition(w), atol=1e-12, rtol=0)
    torch.testing.assert_close(s.argmax(w), c.argmax(w))


def test_argmax_breaks_ties_by_the_first_index():
    w = torch.tensor([1.0, 2.0, 2.0, 0.0, 2.0])
    assert KSubset(5, 1).argmax(w).tolist() == [0, 1, 0, 0, 0]
    assert KSubset(5, 2).argmax(w).tolist() == [0, 1, 1, 0, 0]
    assert Categorical(5).argmax(w).tolist() == [0, 1, 0, 0, 0]
    top3 = KSubset(5, 3).argmax(generic_weights(5, batch=(2, 3), seed=9))
    assert top3.shape == (2, 3, 5) and (top3.sum(-1) == 3).all()


# ------------------------------------------------------------------------------------------
# gradients


def _cases():
    for reg in KSUBSET_REGS:
        yield KSubset(6, 2), reg
    yield KSubset(7, 5), "categorical_entropy"  # with capped entries
    yield KSubset(7, 5), "ef"
    for reg in Categorical.regularizers:
        yield Categorical(6), reg


CASES = list(_cases())
IDS = [f"{s!r}-{reg}" for s, reg in CASES]


def _weights_away_from_kinks(structure, reg, tau):
    """Generic weights whose piecewise solvers are at least 1e-3 from a kink."""
    for seed in range(100):
        w = generic_weights(structure.d, batch=(2,), seed=100 + seed, scale=1.5)
        z = structure.relaxed(w, tau, reg=reg)
        if reg == "euclidean" and isinstance(structure, KSubset):
            nu = (w / tau - z)[(z > 0) & (z < 1)]
            if nu.numel() == 0:
                continue
            x = (w / tau).unsqueeze(-1)
            dist = torch.minimum((x - nu).abs(), (x - 1 - nu).abs()).min()
            if dist > 1e-3 and ((z > 0) & (z < 1)).sum(-1).min() >= 2:
                return w
        elif reg == "euclidean":  # sparsemax: away from z_i = 0 kinks
            x = w / tau
            thr = (x - z)[z > 0]
            if (x.unsqueeze(-1) - thr).abs().min() > 1e-3 and (z > 0).sum(-1).min() >= 2:
                return w
        elif reg == "categorical_entropy":  # away from x_i - nu = 0 (z_i = 1)
            x = w / tau
            nu = (x - torch.log(z)).masked_fill(z == 1, float("inf")).amin(-1, keepdim=True)
            if (x - nu).abs().min() > 1e-3:
                return w
        else:
            return w
    raise AssertionError("no generic weights found")


@pytest.mark.parametrize("structure,reg", CASES, ids=IDS)
@pytest.mark.parametrize("backward", ["autograd", "custom"])
def test_gradcheck(structure, reg, backward):
    tau = 0.7
    w = _weights_away_from_kinks(structure, reg, tau).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: structure.relaxed(x, tau, reg=reg, backward=backward), (w,),
        eps=1e-6, atol=1e-6,
    )


@pytest.mark.parametrize("structure,reg", CASES, ids=IDS)
def test_custom_and_finite_difference_backwards_equal_autograd(structure, reg):
    tau = 0.7
    w = _weights_away_from_kinks(structure, reg, tau)
    grad_out = generic_weights(structure.d, batch=(2,), seed=11)
    grads = {}
    for name, backward in [("autograd", "autograd"), ("custom", "custom"),
                           ("fd", FiniteDifference(1e-5))]:
        x = w.clone().requires_grad_(True)
        (grads[name],) = torch.autograd.grad(
            (structure.relaxed(x, tau, reg=reg, backward=backward) * grad_out).sum(), x)
    torch.testing.assert_close(grads["custom"], grads["autograd"], atol=1e-10, rtol=0)
    torch.testing.assert_close(grads["fd"], grads["autograd"], atol=1e-4, rtol=0)
    if reg == "categorical_entropy" and structure.event_shape == (7,):
        z = structure.relaxed(w, tau, reg=reg)
        assert (z == 1).any()  # the capped branch is exercised


def test_ef_custom_backward_on_a_larger_instance():
    s = KSubset(15, 6)
    w = generic_weights(15, batch=(3,), seed=12, dtype=torch.float64, scale=4.0)
    grad_out = generic_weights(15, batch=(3,), seed=13)
    grads = []
    for backward in ("autograd", "custom"):
        x = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((s.relaxed(x, 0.5, backward=backward) * grad_out).sum(), x)
        grads.append(g)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-10, rtol=1e-8)


# ------------------------------------------------------------------------------------------
# dtypes, batches, validation


@pytest.mark.parametrize("structure,reg", CASES, ids=IDS)
@pytest.mark.parametrize("backward", ["autograd", "custom"])
def test_float32_and_batches(structure, reg, backward):
    w = generic_weights(structure.d, batch=(3, 2), seed=14)
    batched = structure.relaxed(w.float(), 0.5, reg=reg, backward=backward)
    assert batched.dtype == torch.float32 and batched.shape == (3, 2, structure.d)
    one_by_one = torch.stack([
        torch.stack([structure.relaxed(w[i, j], 0.5, reg=reg, backward=backward)
                     for j in range(2)]) for i in range(3)
    ])
    torch.testing.assert_close(batched.double(), one_by_one, atol=1e-5, rtol=0)
    assert structure.argmax(w.float()).dtype == torch.float32


def test_exact_sums_are_batched():
    s = KSubset(6, 3)
    w = generic_weights(6, batch=(3, 2), seed=15)
    log_z, mu = s.log_partition(w), s.marginals(w)
    assert log_z.shape == (3, 2) and mu.shape == (3, 2, 6)
    torch.testing.assert_close(log_z[1, 0], s.log_partition(w[1, 0]))
    torch.testing.assert_close(mu[2, 1], s.marginals(w[2, 1]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="1 <= k <= d - 1"):
        KSubset(5, 5)
    with pytest.raises(ValueError, match="k must be a positive int"):
        KSubset(5, 0)
    with pytest.raises(ValueError, match="1 <= k <= d - 1"):
        KSubset(1, 1)
    with pytest.raises(TypeError, match="k must be a positive int"):
        KSubset(5, 2.0)
    with pytest.raises(ValueError, match="d must be a positive int"):
        Categorical(0)
    s, c = KSubset(5, 2), Categorical(5)
    with pytest.raises(ValueError, match=r"w must have shape \(\*batch, 5\)"):
        s.relaxed(torch.zeros(4))
    with pytest.raises(ValueError, match=r"w must have shape \(\*batch, 5\)"):
        c.log_partition(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="w must be finite"):
        s.marginals(torch.tensor([0.0, float("nan"), 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="w must be finite"):
        c.argmax(torch.tensor([0.0, float("inf"), 0.0, 0.0, 0.0]))
    with pytest.raises(TypeError, match="w must have a floating dtype"):
        s.argmax(torch.arange(5))
    with pytest.raises(TypeError, match="w must have a floating dtype"):
        s.log_partition(torch.arange(5))
    with pytest.raises(ValueError, match="KSubset supports reg in"):
        s.relaxed(torch.zeros(5), reg="entropy")
    with pytest.raises(ValueError, match="Categorical supports reg in"):
        c.relaxed(torch.zeros(5), reg="binary_entropy")
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        s.relaxed(torch.zeros(5), tau=0.0)
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        c.relaxed(torch.zeros(5), tau=-1.0)
    with pytest.raises(ValueError, match="backward must be"):
        s.relaxed(torch.zeros(5), backward="implicit")
