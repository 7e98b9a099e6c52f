"""Domain-adaptation estimators against POT's ``ot.da``, closed forms and their properties."""

import warnings

import numpy as np
import ot
import pytest
import torch

from couplings import ConvergenceWarning
from couplings.da import (
    ExactTransport,
    GroupLassoTransport,
    LaplacianTransport,
    MappingTransport,
    SinkhornTransport,
)
from couplings.da._cg import _line_search
from couplings.da.group_lasso import group_lasso_regularizer
from couplings.da.laplacian import knn_graph, laplacian_regularizer


def three_gaussians(n_per_class=30, seed=0, shift=(3.0, 1.0), angle=0.5):
    """Source: three Gaussian classes; target: the same law rotated and shifted."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [4.0, 0.0], [2.0, 3.5]])
    ys = np.repeat(np.arange(3), n_per_class)
    xs = centers[ys] + 0.7 * rng.normal(size=(3 * n_per_class, 2))
    yt = np.repeat(np.arange(3), n_per_class)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    xt = (centers[yt] + 0.7 * rng.normal(size=(3 * n_per_class, 2))) @ rot.T + shift
    return xs, ys, xt, yt


@pytest.fixture(scope="module")
def data():
    return three_gaussians()


def entropic_objective(g, cost, eps, eta=0.0, reg=None):
    """<g, C> + eps KL(g | a x b) + eta Omega(g), for uniform marginals, in numpy."""
    g = np.asarray(g)
    ab = np.full(g.shape, 1.0 / g.size)
    pos = g > 0
    kl = np.sum(g[pos] * np.log(g[pos] / ab[pos]))
    value = float((g * cost).sum() + eps * kl)
    if reg is not None:
        value += eta * float(reg.value(torch.from_numpy(g)))
    return value


def quiet(fn, *args, **kwargs):
    """Run a POT call that may warn about iteration limits (its business, not ours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------
# against POT


@pytest.mark.parametrize("norm", [None, "max", "median"])
def test_exact_matches_pot_emd_transport(data, norm):
    xs, ys, xt, _ = data
    ours = ExactTransport(norm=norm).fit(xs, ys, xt)
    pot = ot.da.EMDTransport(norm=norm).fit(Xs=xs, Xt=xt)
    np.testing.assert_allclose(ours.cost_, pot.cost_, rtol=1e-12)
    np.testing.assert_allclose(ours.coupling_, pot.coupling_, atol=1e-12)
    np.testing.assert_allclose(ours.transform(xs), pot.transform(Xs=xs), atol=1e-10)
    np.testing.assert_allclose(ours.inverse_transform(xt), pot.inverse_transform(Xt=xt),
                               atol=1e-10)
    new = np.random.default_rng(1).normal(size=(7, 2)) * 2 + 1  # out of sample
    np.testing.assert_allclose(ours.transform(new), pot.transform(Xs=new), atol=1e-10)
    np.testing.assert_allclose(ours.transform_labels(ys), pot.transform_labels(ys=ys),
                               atol=1e-12)


def test_exact_semi_supervised_matches_pot(data):
    xs, ys, xt, yt = data
    yt_partial = np.where(np.arange(len(yt)) % 3 == 0, yt, -1)
    ours = ExactTransport(limit_max=10.0).fit(xs, ys, xt, yt_partial)
    pot = ot.da.EMDTransport(limit_max=10).fit(Xs=xs, ys=ys, Xt=xt, yt=yt_partial)
    np.testing.assert_allclose(ours.cost_, pot.cost_, rtol=1e-12)
    np.testing.assert_allclose(ours.coupling_, pot.coupling_, atol=1e-12)
    # no mass between labelled points of different classes
    lab = (yt_partial[None, :] >= 0) & (ys[:, None] != yt_partial[None, :])
    assert ours.coupling_[lab].sum() == 0.0


def test_sinkhorn_matches_pot_sinkhorn_transport(data):
    # POT's entropy is sum P log P, ours KL(P | a x b): the same plan on U(a, b)
    xs, ys, xt, _ = data
    ours = SinkhornTransport(eps=0.5, tol=1e-11).fit(xs, ys, xt)
    pot = ot.da.SinkhornTransport(reg_e=0.5, tol=1e-12, max_iter=10_000,
                                  out_of_sample_map="ferradans").fit(Xs=xs, Xt=xt)
    assert ours.converged_
    np.testing.assert_allclose(ours.coupling_, pot.coupling_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours.transform(xs), pot.transform(Xs=xs), atol=1e-7)
    new = xs[:5] + 0.05
    np.testing.assert_allclose(ours.transform(new), pot.transform(Xs=new), atol=1e-7)
    np.testing.assert_allclose(ours.transform_labels(ys), pot.transform_labels(ys=ys),
                               atol=1e-7)


def test_sinkhorn_semi_supervised_forbids_mismatched_pairs(data):
    xs, ys, xt, yt = data
    yt_partial = np.where(np.arange(len(yt)) % 2 == 0, yt, -1)
    ours = SinkhornTransport(eps=0.5, tol=1e-10).fit(xs, ys, xt, yt_partial)
    pot = quiet(ot.da.SinkhornTransport(reg_e=0.5, tol=1e-12, max_iter=10_000).fit,
                Xs=xs, ys=ys, Xt=xt, yt=yt_partial)  # POT: infinite cost on mismatched pairs
    lab = (yt_partial[None, :] >= 0) & (ys[:, None] != yt_partial[None, :])
    assert ours.coupling_[lab].max() < 1e-30
    np.testing.assert_allclose(ours.coupling_, pot.coupling_, rtol=1e-5, atol=1e-12)


def test_group_lasso_reaches_pot_objective(data):
    xs, ys, xt, _ = data
    eps, eta = 0.5, 2.0
    ours = GroupLassoTransport(eps=eps, eta=eta, tol=1e-8).fit(xs, ys, xt)
    pot = quiet(ot.da.SinkhornL1l2Transport(reg_e=eps, reg_cl=eta, max_iter=50).fit,
                Xs=xs, ys=ys, Xt=xt)
    reg = group_lasso_regularizer(torch.from_numpy(ys), torch.float64)
    cost = ot.dist(xs, xt)
    f_ours = entropic_objective(ours.coupling_, cost, eps, eta, reg)
    f_pot = entropic_objective(pot.coupling_, cost, eps, eta, reg)
    assert f_ours == pytest.approx(float(ours.result_.value), rel=1e-10)
    # POT's gcg line-searches <g, C> + eta Omega without the entropy and stalls about 1e-4
    # (relative) above the optimum here; ours certifies a relative gap <= 1e-8
    assert f_ours <= f_pot
    assert ours.result_.error <= 1e-7  # stopped by the relative decrease rule (<= 1e-8)
    assert f_pot - f_ours < 1e-3 * f_pot
    assert np.abs(ours.transform(xs) - pot.transform(Xs=xs)).mean() < 0.02
    # the group lasso concentrates each target point's mass on fewer classes than Sinkhorn
    plain = SinkhornTransport(eps=eps, tol=1e-10).fit(xs, ys, xt)
    omega_gl = float(reg.value(torch.from_numpy(ours.coupling_)))
    omega_sk = float(reg.value(torch.from_numpy(plain.coupling_)))
    assert omega_gl < omega_sk
    pure_gl = np.mean(ours.transform_labels(ys).max(1) > 0.99)
    pure_sk = np.mean(plain.transform_labels(ys).max(1) > 0.99)
    assert pure_gl > pure_sk, (pure_gl, pure_sk)


def test_group_lasso_solution_is_a_fixed_point(data):
    """At the optimum, the entropic OT on the linearized cost returns the plan itself."""
    xs, ys, xt, _ = data
    eps, eta = 0.5, 2.0
    est = GroupLassoTransport(eps=eps, eta=eta, tol=1e-10).fit(xs, ys, xt)
    reg = group_lasso_regularizer(torch.from_numpy(ys), torch.float64)
    a = np.full(len(xs), 1.0 / len(xs))

    def fixed_point_residual(plan):
        lin = torch.from_numpy(est.cost_) + eta * reg.grad(torch.from_numpy(plan))
        s = ot.sinkhorn(a, a, lin.numpy(), eps, method="sinkhorn_log", stopThr=1e-13,
                        numItermax=10_000)
        return np.abs(s - plan).sum()  # L1, the plan has mass 1

    assert fixed_point_residual(est.coupling_) < 1e-4
    pot = quiet(ot.da.SinkhornL1l2Transport(reg_e=eps, reg_cl=eta, max_iter=20).fit,
                Xs=xs, ys=ys, Xt=xt)
    assert fixed_point_residual(pot.coupling_) > 1e-3  # the check can fail


@pytest.mark.parametrize("line_search", ["exact", "armijo"])
def test_group_lasso_certified_gap(data, line_search):
    """The reported gap bounds the distance to the optimum, which a long run approaches."""
    xs, ys, xt, _ = data
    est = GroupLassoTransport(eps=0.5, eta=2.0, line_search=line_search, tol=1e-4).fit(
        xs, ys, xt)
    best = GroupLassoTransport(eps=0.5, eta=2.0, tol=1e-10, max_iter=300).fit(xs, ys, xt)
    value, opt = float(est.result_.value), float(best.result_.value)
    assert opt <= value
    hist = np.array(est.result_.history)
    assert np.all(np.diff(hist) <= 1e-12 * hist[0])  # monotone
    assert est.converged_


def test_group_lasso_eta_zero_is_sinkhorn(data):
    xs, ys, xt, _ = data
    gl = GroupLassoTransport(eps=0.5, eta=0.0).fit(xs, ys, xt)
    sk = SinkhornTransport(eps=0.5, tol=1e-10).fit(xs, ys, xt)
    np.testing.assert_allclose(gl.coupling_, sk.coupling_, atol=1e-9)


def test_group_lasso_gradient_and_zero_group():
    ys = torch.tensor([0, 0, 1, 1, 1])
    reg = group_lasso_regularizer(ys, torch.float64)
    g = torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g[2:, 1] = 0.0  # an all-zero group (class 1, column 1)
    grad = reg.grad(g)
    assert torch.isfinite(grad).all() and torch.all(grad[2:, 1] == 0)
    # where differentiable, the gradient is the derivative of the value
    d = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    d[2:, 1] = 0.0
    h = 1e-6
    fd = (reg.value(g + h * d) - reg.value(g - h * d)) / (2 * h)
    assert float((grad * d).sum()) == pytest.approx(float(fd), rel=1e-7)
    # value: sum of group norms, by enumeration
    manual = sum(float(torch.linalg.norm(g[ys == c, j])) for c in (0, 1) for j in range(4))
    assert float(reg.value(g)) == pytest.approx(manual, rel=1e-12)


def test_laplacian_reaches_pot_objective():
    xs, ys, xt, _ = three_gaussians(n_per_class=20, seed=3)
    eta, reg_src, k = 1.0, 0.7, 3
    ours = LaplacianTransport(eta=eta, alpha=1 - reg_src, n_neighbors=k, prune=False,
                              tol=1e-9, max_iter=500).fit(xs, ys, xt)
    pot = quiet(ot.da.EMDLaplaceTransport(reg_lap=eta, reg_src=reg_src, similarity_param=k,
                                          max_iter=100).fit, Xs=xs, ys=ys, Xt=xt)
    cost = ot.dist(xs, xt)
    # POT's regularizer, built independently from sklearn's kNN graph and POT's laplacian
    from sklearn.neighbors import kneighbors_graph

    ss = kneighbors_graph(xs, k).toarray()
    st = kneighbors_graph(xt, k).toarray()
    ls, lt = ot.utils.laplacian((ss + ss.T) / 2), ot.utils.laplacian((st + st.T) / 2)
    np.testing.assert_allclose(ours.laplacians_[0].numpy(), ls, atol=1e-15)

    def objective(g):
        omega = reg_src * np.trace(xt.T @ g.T @ ls @ g @ xt) + (1 - reg_src) * np.trace(
            xs.T @ g @ lt @ g.T @ xs)
        return float((g * cost).sum() + eta * omega)

    f_ours, f_pot = objective(ours.coupling_), objective(pot.coupling_)
    assert f_ours == pytest.approx(float(ours.result_.value), rel=1e-10)
    assert f_ours <= f_pot + 1e-9 * abs(f_pot)
    # the regularizer moves the plan away from the plain exact plan
    f_emd = objective(ExactTransport().fit(xs, ys, xt).coupling_)
    assert f_ours < f_emd


def test_laplacian_entropic_and_exact_line_search():
    xs, ys, xt, _ = three_gaussians(n_per_class=15, seed=4)
    est = LaplacianTransport(eta=0.5, eps=0.5, n_neighbors=4).fit(xs, ys, xt)
    g = est.coupling_
    np.testing.assert_allclose(g.sum(1), 1 / len(xs), atol=1e-8)
    np.testing.assert_allclose(g.sum(0), 1 / len(xt), atol=1e-8)
    # eta = 0 is entropic OT
    plain = LaplacianTransport(eta=0.0, eps=0.5, n_neighbors=4).fit(xs, ys, xt)
    sk = SinkhornTransport(eps=0.5, tol=1e-10).fit(xs, ys, xt)
    np.testing.assert_allclose(plain.coupling_, sk.coupling_, atol=1e-9)
    # pruning removes exactly the cross-class source edges
    ls, _ = est.laplacians_
    cross = ys[:, None] != ys[None, :]
    assert np.all(ls.numpy()[cross] == 0)
    raw = knn_graph(torch.from_numpy(xs), 4).numpy()
    assert raw[cross].sum() > 0


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_line_search_is_the_minimum_along_the_segment(eps):
    """The exact step (closed form for eps = 0, root finding otherwise) beats a fine grid."""
    xs, _, xt, _ = three_gaussians(n_per_class=8, seed=5)
    xs_t, xt_t = torch.from_numpy(xs), torch.from_numpy(xt)
    n = xs.shape[0]
    ss, st = knn_graph(xs_t, 3), knn_graph(xt_t, 3)
    ls, lt = torch.diag(ss.sum(1)) - ss, torch.diag(st.sum(1)) - st
    reg = laplacian_regularizer(xs_t, xt_t, ls, lt, 0.5)
    cost = torch.from_numpy(ot.dist(xs, xt))
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    ab = a[:, None] * a[None, :]
    gamma = ab.clone()
    s = torch.from_numpy(ot.emd(a.numpy(), a.numpy(), ot.dist(xs, xt)))
    d = s - gamma
    eta = 30.0

    def objective(g):
        val = (g * cost).sum() + eta * reg.value(g)
        if eps > 0:
            pos = g > 0
            val = val + eps * (g[pos] * torch.log(g[pos] / ab[pos])).sum()
        return val

    def derivative(g, dd):
        val = ((cost + eta * reg.grad(g)) * dd).sum()
        if eps > 0:
            val = val + eps * ((torch.log(g.clamp_min(1e-300) / ab) + 1) * dd).sum()
        return val

    t = _line_search(objective, derivative, reg, gamma, d, objective(gamma), eta, eps, "exact")
    grid = np.linspace(0, 1, 2001)
    values = [float(objective(gamma + u * d)) for u in grid]
    assert 0 < t < 1
    assert float(objective(gamma + t * d)) <= min(values) + 1e-12


def test_mapping_linear_matches_pot(data):
    xs, ys, xt, _ = data
    kw = dict(mu=1.0, eta=1e-3, bias=True, max_iter=20, tol=1e-7)
    ours = quiet(MappingTransport(kernel="linear", **kw).fit, xs, ys, xt)
    pot = quiet(ot.da.MappingTransport(kernel="linear", log=True, **kw).fit, Xs=xs, Xt=xt)
    np.testing.assert_allclose(ours.history_, pot.log_["loss"], rtol=1e-8)
    np.testing.assert_allclose(ours.mapping_, pot.mapping_, atol=1e-8)
    new = np.random.default_rng(2).normal(size=(6, 2)) + 2
    np.testing.assert_allclose(ours.transform(new), pot.transform(Xs=new), atol=1e-8)
    np.testing.assert_allclose(ours.barycentric_transform(xs), pot.transform(Xs=xs), atol=1e-8)


@pytest.mark.parametrize("bias", [False, True])
def test_mapping_gaussian_matches_pot(bias):
    xs, ys, xt, _ = three_gaussians(n_per_class=15, seed=6)
    kw = dict(mu=1.0, eta=1e-2, sigma=1.5, bias=bias, max_iter=15, tol=1e-7)
    ours = quiet(MappingTransport(kernel="gaussian", **kw).fit, xs, ys, xt)
    pot = quiet(ot.da.MappingTransport(kernel="gaussian", log=True, **kw).fit, Xs=xs, Xt=xt)
    np.testing.assert_allclose(ours.history_, pot.log_["loss"], rtol=1e-7)
    new = np.random.default_rng(3).normal(size=(6, 2)) + 2
    np.testing.assert_allclose(ours.transform(new), pot.transform(Xs=new), atol=1e-6)


# ------------------------------------------------------------------------------------------
# closed forms and properties


def test_exact_recovers_an_affine_map():
    """Courty et al., Theorem: x_t = A x_s + b with A symmetric positive definite."""
    rng = np.random.default_rng(7)
    xs = rng.normal(size=(40, 3))
    m = rng.normal(size=(3, 3))
    A = m @ m.T + np.eye(3)
    xt = xs @ A.T + np.array([1.0, -2.0, 0.5])
    perm = rng.permutation(40)
    est = ExactTransport().fit(xs, Xt=xt[perm])
    np.testing.assert_allclose(est.transform(xs), xt, atol=1e-10)
    np.testing.assert_allclose(est.inverse_transform(xt[perm]), xs[perm], atol=1e-10)


def test_weights_and_barycentric_formula(data):
    xs, ys, xt, _ = data
    rng = np.random.default_rng(8)
    a, b = rng.random(len(xs)) + 0.1, rng.random(len(xt)) + 0.1
    a, b = a / a.sum(), b / b.sum()
    est = ExactTransport().fit(xs, ys, xt, a=a, b=b)
    g = est.coupling_
    np.testing.assert_allclose(g.sum(1), a, atol=1e-12)
    np.testing.assert_allclose(est.transform(xs), (g @ xt) / g.sum(1, keepdims=True),
                               atol=1e-12)
    labels = est.transform_labels(ys)
    np.testing.assert_allclose(labels.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(labels[:, 1], g[ys == 1].sum(0) / g.sum(0), atol=1e-12)
    back = est.inverse_transform_labels(ys % 2)  # any labelling of the target points
    np.testing.assert_allclose(back.sum(1), 1.0, atol=1e-12)


def test_weighted_mapping_recovers_an_affine_map():
    rng = np.random.default_rng(9)
    xs = rng.normal(size=(30, 2))
    A = np.array([[1.5, 0.2], [0.2, 0.7]])
    xt = xs @ A.T + [1.0, 2.0]
    a = rng.random(30) + 0.2
    a /= a.sum()
    est = MappingTransport(kernel="linear", bias=True, eta=1e-9).fit(xs, Xt=xt, a=a, b=a)
    np.testing.assert_allclose(est.mapping_, np.vstack([A.T, [1.0, 2.0]]), atol=1e-6)
    np.testing.assert_allclose(est.transform(xs), xt, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_types_follow_the_input(data, dtype):
    xs, ys, xt, _ = data
    est = SinkhornTransport(eps=1.0, tol=1e-5).fit(
        torch.tensor(xs, dtype=dtype), torch.from_numpy(ys), torch.tensor(xt, dtype=dtype))
    assert isinstance(est.coupling_, torch.Tensor) and est.coupling_.dtype == dtype
    moved = est.transform(torch.tensor(xs, dtype=dtype))
    assert isinstance(moved, torch.Tensor) and moved.dtype == dtype
    np_moved = est.transform(xs[:3] + 0.1)  # numpy in, numpy out
    assert isinstance(np_moved, np.ndarray) and np_moved.dtype == np.float64
    ref = SinkhornTransport(eps=1.0, tol=1e-5).fit(xs, ys, xt)
    assert isinstance(ref.coupling_, np.ndarray) and ref.coupling_.dtype == np.float64
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    np.testing.assert_allclose(moved.double().numpy(), ref.transform(xs), atol=tol)


def test_integer_numpy_points_are_accepted():
    xs = np.array([[0, 0], [1, 0]])
    est = ExactTransport().fit(xs, Xt=xs + 2)
    np.testing.assert_allclose(est.transform(xs), xs + 2.0)


# ------------------------------------------------------------------------------------------
# validation

ESTIMATORS = [
    lambda: ExactTransport(),
    lambda: SinkhornTransport(eps=1.0),
    lambda: GroupLassoTransport(eps=1.0, eta=0.1),
    lambda: LaplacianTransport(eta=0.1, n_neighbors=2, prune=False),
    lambda: MappingTransport(),
]


@pytest.mark.parametrize("make", ESTIMATORS)
def test_input_validation(make, data):
    xs, ys, xt, _ = data
    with pytest.raises(ValueError, match="same number of features"):
        make().fit(xs, ys, np.hstack([xt, xt]))
    with pytest.raises(ValueError, match="ys must have shape"):
        make().fit(xs, ys[:-1], xt)
    with pytest.raises(TypeError, match="integer class labels"):
        make().fit(xs, ys.astype(float), xt)
    bad = xs.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="Xs must be finite"):
        make().fit(bad, ys, xt)
    bad = xt.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="Xt must be finite"):
        make().fit(xs, ys, bad)
    with pytest.raises(ValueError, match="Xt is required"):
        make().fit(xs, ys)
    with pytest.raises(ValueError, match="yt .* without ys"):
        make().fit(xs, None, xt, ys)
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        make().fit(xs[:, 0], ys, xt)
    with pytest.raises(RuntimeError, match="not fitted"):
        make().transform(xs)
    with pytest.raises(RuntimeError, match="not fitted"):
        make().transform_labels(ys)


def test_estimators_that_need_labels(data):
    xs, ys, xt, _ = data
    with pytest.raises(ValueError, match="GroupLassoTransport needs the source labels"):
        GroupLassoTransport().fit(xs, Xt=xt)
    with pytest.raises(ValueError, match="every source point labelled"):
        GroupLassoTransport().fit(xs, np.where(ys == 0, -1, ys), xt)
    with pytest.raises(ValueError, match=r"prune=True\) needs the source labels"):
        LaplacianTransport(prune=True).fit(xs, Xt=xt)
    LaplacianTransport(eta=0.1, n_neighbors=3, max_iter=3, tol=1e-2).fit(xs, Xt=xt)  # ok
    with pytest.raises(ValueError, match="n_neighbors=200 must be smaller"):
        LaplacianTransport(n_neighbors=200).fit(xs, ys, xt)
    est = ExactTransport().fit(xs, ys, xt)
    with pytest.raises(ValueError, match="2 features"):
        est.transform(np.zeros((3, 5)))


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: SinkhornTransport(eps=0.0), ValueError),
        (lambda: SinkhornTransport(eps=-1.0), ValueError),
        (lambda: SinkhornTransport(eps="big"), TypeError),
        (lambda: SinkhornTransport(scaling=1.5), ValueError),
        (lambda: ExactTransport(max_iter=0), ValueError),
        (lambda: ExactTransport(norm="l2"), ValueError),
        (lambda: ExactTransport(metric="nope"), ValueError),
        (lambda: GroupLassoTransport(eta=-0.1), ValueError),
        (lambda: GroupLassoTransport(line_search="wolfe"), ValueError),
        (lambda: GroupLassoTransport(max_iter=2.5), TypeError),
        (lambda: LaplacianTransport(alpha=1.5), ValueError),
        (lambda: LaplacianTransport(eps=-1.0), ValueError),
        (lambda: LaplacianTransport(prune="yes"), TypeError),
        (lambda: MappingTransport(kernel="poly"), ValueError),
        (lambda: MappingTransport(mu=0.0), ValueError),
        (lambda: MappingTransport(sigma=-1.0), ValueError),
        (lambda: MappingTransport(kernel="gaussian", eta=0.0), ValueError),
    ],
)
def test_bad_hyper_parameters(make, error):
    with pytest.raises(error):
        make()


def test_non_convergence_warns(data):
    xs, ys, xt, _ = data
    with pytest.warns(ConvergenceWarning, match="GroupLassoTransport did not converge"):
        GroupLassoTransport(eps=0.5, eta=2.0, max_iter=2, tol=1e-12).fit(xs, ys, xt)
    with pytest.warns(ConvergenceWarning, match="sinkhorn did not converge"):
        SinkhornTransport(eps=0.01, max_iter=5).fit(xs, ys, xt)
