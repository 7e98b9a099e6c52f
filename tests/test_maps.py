"""Monge maps: barycentric projection, the Gaussian closed form, the stochastic dual of
regularized OT (against Sinkhorn and POT) and neural maps, with their input checks."""

import numpy as np
import ot
import pytest
import torch

from couplings import PointCloud, emd, sinkhorn
from couplings.maps import (
    NeuralMongeMap,
    StochasticDualOT,
    barycentric_projection,
    bures_wasserstein_distance,
    gaussian_monge_map,
)

F64 = torch.float64


def random_spd(d, gen, low=0.3):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    return (q * (low + 2 * torch.rand(d, generator=gen, dtype=F64))) @ q.T


# ------------------------------------------------------------------ barycentric projection


def test_barycentric_projection_of_a_permutation_plan_is_the_permutation(gen):
    y = torch.randn(7, 3, generator=gen, dtype=F64)
    perm = torch.randperm(7, generator=gen)
    plan = torch.zeros(7, 7, dtype=F64)
    plan[torch.arange(7), perm] = 1 / 7
    close = dict(rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(barycentric_projection(plan, y), y[perm], **close)
    # batched plans, with a shared or a batched y
    plans = torch.stack([plan, plan.T.contiguous()])
    inverse = torch.argsort(perm)
    out = barycentric_projection(plans, y)
    assert out.shape == (2, 7, 3)
    torch.testing.assert_close(out[0], y[perm], **close)
    torch.testing.assert_close(out[1], y[inverse], **close)
    out = barycentric_projection(plans, torch.stack([y, 2 * y]))
    torch.testing.assert_close(out[1], 2 * y[inverse], **close)


def test_barycentric_projection_of_exact_ot_in_1d_is_the_sorted_matching(gen):
    # in 1-D the optimal matching of equal-size samples pairs order statistics
    x = torch.randn(25, 1, generator=gen, dtype=F64)
    y = 3 * torch.randn(25, 1, generator=gen, dtype=F64) + 1
    mapped = barycentric_projection(emd(PointCloud(x, y)), y)
    rank = torch.argsort(torch.argsort(x[:, 0]))
    assert torch.allclose(mapped[:, 0], torch.sort(y[:, 0]).values[rank])


def test_barycentric_projection_matches_pot_sinkhorn_transport(gen):
    xs = torch.randn(30, 2, generator=gen, dtype=F64)
    xt = torch.randn(40, 2, generator=gen, dtype=F64) * 1.5 + 1
    ours = barycentric_projection(sinkhorn(PointCloud(xs, xt), eps=0.5, tol=1e-10), xt)
    da = ot.da.SinkhornTransport(reg_e=0.5, metric="sqeuclidean", tol=1e-12, max_iter=10000)
    reference = da.fit(Xs=xs.numpy(), Xt=xt.numpy()).transform(Xs=xs.numpy())
    assert np.allclose(ours.numpy(), reference, atol=1e-7)


def test_barycentric_projection_rejects_bad_input():
    plan, y = torch.full((3, 4), 1 / 12), torch.randn(4, 2)
    with pytest.raises(ValueError, match="y must have shape"):
        barycentric_projection(plan, torch.randn(5, 2))
    with pytest.raises(ValueError, match="finite"):
        barycentric_projection(plan.clone().fill_(float("nan")), y)
    with pytest.raises(ValueError, match="non-negative"):
        barycentric_projection(-plan, y)
    empty = plan.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"rows \[\[1\]\]"):
        barycentric_projection(empty, y)
    with pytest.raises(TypeError, match="dtype"):
        barycentric_projection(plan.double(), y)
    with pytest.raises(ValueError, match=r"\(n, m\) or \(B, n, m\)"):
        barycentric_projection(torch.ones(4), y)


# ------------------------------------------------------------------ Gaussian closed form


def test_gaussian_map_known_cases(gen):
    m1, m2 = torch.randn(3, generator=gen, dtype=F64), torch.randn(3, generator=gen, dtype=F64)
    eye = torch.eye(3, dtype=F64)
    # isotropic scaling: A = s I, W2^2 = |m1 - m2|^2 + d (s - 1)^2
    t = gaussian_monge_map(m1, eye, m2, 4 * eye)
    assert torch.allclose(t.A, 2 * eye)
    w2 = bures_wasserstein_distance(m1, eye, m2, 4 * eye, squared=True)
    assert float(w2) == pytest.approx(float(((m1 - m2) ** 2).sum()) + 3.0, rel=1e-12)
    # commuting (diagonal) covariances: A = sqrt(S2 / S1)
    s1 = torch.diag(torch.tensor([0.5, 2.0, 3.0], dtype=F64))
    s2 = torch.diag(torch.tensor([2.0, 0.5, 3.0], dtype=F64))
    t = gaussian_monge_map(m1, s1, m2, s2)
    assert torch.allclose(t.A, torch.diag(torch.tensor([2.0, 0.5, 1.0], dtype=F64)))
    x = torch.randn(5, 3, generator=gen, dtype=F64)
    assert torch.allclose(t(x), m2 + (x - m1) * torch.tensor([2.0, 0.5, 1.0], dtype=F64))
    w2 = bures_wasserstein_distance(m1, s1, m2, s2, squared=True)
    bures = ((s1.diagonal().sqrt() - s2.diagonal().sqrt()) ** 2).sum()
    assert float(w2) == pytest.approx(float(((m1 - m2) ** 2).sum() + bures), rel=1e-12)


@pytest.mark.parametrize("d", [2, 5])
def test_gaussian_map_matches_pot_and_pushes_s1_to_s2(d, gen):
    m1, m2 = torch.randn(d, generator=gen, dtype=F64), torch.randn(d, generator=gen, dtype=F64)
    s1, s2 = random_spd(d, gen), random_spd(d, gen)
    t = gaussian_monge_map(m1, s1, m2, s2)
    a_pot, b_pot = ot.gaussian.bures_wasserstein_mapping(m1.numpy(), m2.numpy(), s1.numpy(),
                                                         s2.numpy())
    assert np.allclose(t.A.numpy(), a_pot, atol=1e-10)
    x = torch.randn(6, d, generator=gen, dtype=F64)
    assert np.allclose(t(x).numpy(), x.numpy() @ a_pot + b_pot, atol=1e-10)
    # T pushes N(m1, S1) to N(m2, S2): A S1 A = S2; A is symmetric positive definite
    assert torch.allclose(t.A @ s1 @ t.A, s2, atol=1e-10)
    assert torch.allclose(t.A, t.A.T) and bool((torch.linalg.eigvalsh(t.A) > 0).all())
    # W2^2 = E|T(X) - X|^2 = |m1 - m2|^2 + tr((A - I) S1 (A - I))
    w2 = bures_wasserstein_distance(m1, s1, m2, s2, squared=True)
    a_i = t.A - torch.eye(d, dtype=F64)
    assert float(w2) == pytest.approx(float(((m1 - m2) ** 2).sum() + torch.trace(a_i @ s1 @ a_i)),
                                      rel=1e-10)
    pot = ot.gaussian.bures_wasserstein_distance(m1.numpy(), m2.numpy(), s1.numpy(), s2.numpy())
    assert float(bures_wasserstein_distance(m1, s1, m2, s2)) == pytest.approx(float(pot),
                                                                              rel=1e-8)
    # batched call = the problems one by one
    tb = gaussian_monge_map(torch.stack([m1, m2]), torch.stack([s1, s2]), torch.stack([m2, m1]),
                            torch.stack([s2, s1]))
    assert torch.allclose(tb.A[0], t.A) and torch.allclose(tb.A[1], torch.linalg.inv(t.A))


def test_gaussian_map_rejects_bad_input():
    m, eye = torch.zeros(2), torch.eye(2)
    with pytest.raises(ValueError, match="symmetric"):
        gaussian_monge_map(m, torch.tensor([[1.0, 0.5], [0.0, 1.0]]), m, eye)
    with pytest.raises(ValueError, match="positive definite"):
        gaussian_monge_map(m, torch.tensor([[1.0, 1.0], [1.0, 1.0]]), m, eye)
    with pytest.raises(ValueError, match="semi-definite"):
        gaussian_monge_map(m, eye, m, -eye)
    with pytest.raises(ValueError, match="S1 must have shape"):
        gaussian_monge_map(m, torch.eye(3), m, eye)
    with pytest.raises(ValueError, match="same shape"):
        gaussian_monge_map(m, eye, torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="finite"):
        gaussian_monge_map(torch.tensor([0.0, float("nan")]), eye, m, eye)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        gaussian_monge_map(m, eye, m, eye)(torch.zeros(4, 3))
    # a singular S2 is fine for the map (it collapses onto a subspace) and the distance
    t = gaussian_monge_map(m, eye, m, torch.diag(torch.tensor([1.0, 0.0])))
    assert torch.allclose(t.A, torch.diag(torch.tensor([1.0, 0.0])))


# ------------------------------------------------------------------ stochastic dual


def small_problem(gen, n=12, m=15):
    x = torch.randn(n, 2, generator=gen, dtype=F64)
    y = torch.randn(m, 2, generator=gen, dtype=F64) * 1.3 + 0.5
    return x, y


@pytest.mark.parametrize(("eps", "optimal_shift"), [(0.5, True), (0.1, True), (0.1, False)])
def test_discrete_entropic_dual_agrees_with_sinkhorn(eps, optimal_shift, gen):
    x, y = small_problem(gen)
    a = torch.rand(12, generator=gen, dtype=F64) + 0.2
    a = a / a.sum()
    dual = StochasticDualOT(eps=eps, potentials="discrete", batch_size=15, max_iter=800,
                            tol=1e-6, optimal_shift=optimal_shift).fit(x, y, a=a, generator=gen)
    ref = sinkhorn(PointCloud(x, y), a, eps=eps, tol=1e-12, max_iter=10000)
    # Seguy's entropic dual lacks sinkhorn's constant +eps (mass one)
    assert dual.value == pytest.approx(float(ref.value) - eps, abs=1e-8)
    assert float((dual.plan() - ref.plan).abs().sum()) < 1e-5
    assert dual.converged and dual.error < 1e-6
    u, v = dual.potential_values()
    shift = float((u - ref.f).mean())  # potentials agree up to (u + k, v - k)
    assert torch.allclose(u - shift, ref.f, atol=1e-5)
    assert torch.allclose(v + shift, ref.g, atol=1e-5)


@pytest.mark.parametrize("eps", [0.5, 0.02])
def test_discrete_l2_dual_agrees_with_pot_smooth_ot(eps, gen):
    x, y = small_problem(gen)
    n, m = 12, 15
    dual = StochasticDualOT(eps=eps, reg="l2", potentials="discrete", batch_size=15,
                            max_iter=800).fit(x, y, generator=gen)
    cost = ((x[:, None] - y[None]) ** 2).sum(-1).numpy()
    # POT's l2 smooth OT penalizes (reg / 2) |P|^2; ours eps * sum_ij P_ij^2 / (a_i b_j)
    reference = ot.smooth.smooth_ot_dual(np.full(n, 1 / n), np.full(m, 1 / m), cost,
                                         2 * eps * n * m, reg_type="l2", stopThr=1e-12,
                                         numItermax=5000)
    plan = dual.plan().numpy()
    assert np.abs(plan - reference).sum() < 1e-4
    assert ((plan > 0) == (reference > 0)).mean() > 0.97  # the same sparse support
    assert dual.error < 1e-4 and dual.converged is None


def test_kernel_potentials_reach_the_discrete_optimum(gen):
    # with every point an anchor, the kernel expansion can take any values on the points
    x, y = small_problem(gen, 8, 10)
    eps = 0.5
    dual = StochasticDualOT(eps=eps, potentials="kernel", bandwidth=0.3, batch_size=64,
                            max_iter=1500, lr=0.05, eval_size=200).fit(x, y, generator=gen)
    ref = sinkhorn(PointCloud(x, y), eps=eps, tol=1e-10)
    assert dual.value == pytest.approx(float(ref.value) - eps, abs=0.05)
    assert float((dual.plan() - ref.plan).abs().sum()) < 0.1


def test_stochastic_dual_rejects_bad_input(gen):
    x, y = small_problem(gen)
    with pytest.raises(ValueError, match="reg must be one of"):
        StochasticDualOT(eps=0.1, reg="kl")
    with pytest.raises(ValueError, match="eps must be"):
        StochasticDualOT(eps=-1.0)
    with pytest.raises(ValueError, match="needs x and y given as points"):
        StochasticDualOT(eps=0.1, potentials="discrete").fit(
            lambda n, g: torch.randn(n, 2, generator=g), y)
    with pytest.raises(ValueError, match="finite"):
        StochasticDualOT(eps=0.1).fit(x.clone().fill_(float("nan")), y)
    with pytest.raises(ValueError, match="a must have shape"):
        StochasticDualOT(eps=0.1, potentials="discrete").fit(x, y, a=torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="same feature dimension"):
        StochasticDualOT(eps=0.1, max_iter=1).fit(x, torch.randn(5, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"must return a tensor of shape \(2, d\)"):
        StochasticDualOT(eps=0.1).fit(lambda n, g: torch.randn(n), y)
    with pytest.raises(RuntimeError, match="not fitted"):
        StochasticDualOT(eps=0.1).plan()


# ------------------------------------------------------------------ neural maps


def gaussian_case(gen, n):
    m1, m2 = torch.zeros(2, dtype=F64), torch.tensor([1.0, -0.5], dtype=F64)
    s1 = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=F64)
    s2 = torch.tensor([[2.0, -0.6], [-0.6, 0.6]], dtype=F64)
    l1, l2 = torch.linalg.cholesky(s1), torch.linalg.cholesky(s2)
    x = torch.randn(n, 2, generator=gen, dtype=F64) @ l1.T + m1
    y = torch.randn(n, 2, generator=gen, dtype=F64) @ l2.T + m2
    return x, y, gaussian_monge_map(m1, s1, m2, s2)


def rel_error(f_x, t_x, x):
    return float(((f_x - t_x) ** 2).sum(-1).mean().sqrt() / ((t_x - x) ** 2).sum(-1).mean().sqrt())


def test_neural_map_fitted_to_an_exact_plan_approaches_the_gaussian_map(gen):
    x, y, t_map = gaussian_case(gen, 600)
    x_test = gaussian_case(torch.Generator().manual_seed(5), 1000)[0]
    plan = sinkhorn(PointCloud(x, y), eps=0.1, scaling=0.9)  # eps small beside a mean cost ~7
    f = NeuralMongeMap(hidden=(32, 32), activation="silu", max_iter=400, batch_size=128,
                       lr=3e-3).fit(x, y, plan=plan, generator=gen)
    assert f.history[-1][1] < f.history[0][1]  # the fit reduces its loss
    # the identity map's relative error is 1; this fit measured 0.077 (sampling noise of the
    # 600-point plan and a short fit); the bound leaves a factor 2
    assert rel_error(f.transform(x_test), t_map(x_test), x_test) < 0.15


def test_seguy_pipeline_learns_the_gaussian_map(gen):
    x, y, t_map = gaussian_case(gen, 600)
    x_test = gaussian_case(torch.Generator().manual_seed(5), 1000)[0]
    dual = StochasticDualOT(eps=0.1, reg="entropy", potentials="neural", hidden=(32, 32),
                            activation="silu", batch_size=128, max_iter=400, anneal=0.5)
    dual.fit(x, y, generator=gen)
    f = NeuralMongeMap(hidden=(32, 32), activation="silu", max_iter=300, batch_size=128,
                       lr=3e-3).fit(x, y, dual=dual, generator=gen)
    assert rel_error(f.transform(x_test), t_map(x_test), x_test) < 0.3


def test_neural_map_rejects_bad_input(gen):
    x, y = torch.randn(10, 2, dtype=F64), torch.randn(12, 2, dtype=F64)
    with pytest.raises(RuntimeError, match="not fitted"):
        NeuralMongeMap().transform(x)
    with pytest.raises(ValueError, match="exactly one of"):
        NeuralMongeMap().fit(x, y)
    with pytest.raises(ValueError, match=r"plan must have shape \(10, m\)"):
        NeuralMongeMap().fit(x, y, plan=torch.ones(12, 10, dtype=F64))
    with pytest.raises(ValueError, match="residual=True needs equal"):
        NeuralMongeMap().fit(x, targets=torch.randn(10, 3, dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        NeuralMongeMap().fit(x, targets=x.clone().fill_(float("nan")))
    f = NeuralMongeMap(hidden=(4,), max_iter=2).fit(x, targets=x + 1)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        f.transform(torch.randn(3, 5, dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        f.transform(torch.randn(3, 2))
