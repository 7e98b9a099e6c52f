"""Permutation operators: the Sinkhorn operator, Gumbel-Sinkhorn, Sinkhorn networks, helpers."""

import itertools
import math
import warnings

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

from couplings import ConvergenceWarning, matching
from couplings.permutations import (
    GumbelSinkhorn,
    SinkhornNetwork,
    apply_permutation,
    invert_permutation,
    kendall_tau,
    random_permutation,
    sinkhorn_operator,
    to_indices,
    to_matrix,
    unscramble_loss,
)


def sinkhorn_knopp_reference(x: np.ndarray, tau: float, rounds: int) -> np.ndarray:
    """The paper's operator, written independently: rows then columns, in the log domain."""
    la = x / tau
    for _ in range(rounds):
        la = la - scipy.special.logsumexp(la, axis=-1, keepdims=True)
        la = la - scipy.special.logsumexp(la, axis=-2, keepdims=True)
    return np.exp(la)


@pytest.mark.parametrize("rounds", [1, 3, 20])
def test_operator_equals_sinkhorn_knopp(rounds):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 6, generator=g, dtype=torch.float64) * 3
    ours = sinkhorn_operator(x, tau=0.7, n_iter=rounds)
    torch.testing.assert_close(ours, torch.from_numpy(sinkhorn_knopp_reference(x.numpy(), 0.7,
                                                                             rounds)))


def test_operator_is_doubly_stochastic_and_warning_free():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 10, 10, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # fixed depth: no warning
        p = sinkhorn_operator(x, tau=0.1, n_iter=5)
    torch.testing.assert_close(p.sum(-2), torch.ones(3, 10))  # columns exact
    assert (p >= 0).all()
    converged = sinkhorn_operator(x, tau=1.0, n_iter=500, tol=1e-6)
    torch.testing.assert_close(converged.sum(-1), torch.ones(3, 10), atol=1e-5, rtol=0)


def test_operator_tends_to_the_matching_as_tau_shrinks():
    g = torch.Generator().manual_seed(2)
    # a planted permutation keeps the best matching clear of the second best (no near-ties)
    planted = to_matrix(random_permutation(5, 7, generator=g), torch.float64)
    x = torch.randn(5, 7, 7, generator=g, dtype=torch.float64) * 0.5 + 2 * planted
    hard = matching(x).matrix
    gaps = []
    for tau in [1.0, 0.3, 0.1, 0.03, 0.01]:
        # fixed depth: near a vertex Sinkhorn converges slowly, which is not what is tested
        soft = sinkhorn_operator(x, tau=tau, n_iter=3000)
        gaps.append(float((soft - hard).abs().max()))
    assert gaps[-1] < 1e-3
    # non-increasing, up to the fixed-depth residual (about 1 / n_iter once near the vertex)
    assert all(a >= b - 1e-6 for a, b in zip(gaps, gaps[1:], strict=False))
    assert gaps[0] > 0.1


@pytest.mark.parametrize("grad", ["unroll", "implicit"])
def test_operator_gradcheck(grad):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    kwargs = dict(n_iter=2000, tol=1e-13) if grad == "implicit" else dict(n_iter=7)
    assert torch.autograd.gradcheck(lambda x: sinkhorn_operator(x, 0.5, grad=grad, **kwargs), (x,))


def test_operator_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        sinkhorn_operator(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="tau"):
        sinkhorn_operator(torch.zeros(3, 3), tau=0)
    with pytest.raises(ValueError, match="finite"):
        sinkhorn_operator(torch.full((3, 3), math.nan))


def test_gumbel_matching_frequencies_equal_the_exact_law():
    """For n = 2, M(X + G) is the identity iff D + L1 + L2 > 0 with D = x00 + x11 - x01 - x10
    and L1 = g00 - g01, L2 = g11 - g10 independent standard logistic variables, so
    P(identity) = E[sigmoid(D + L1)] (a one-dimensional integral; not sigmoid(D)).

    Statistical policy: a two-sided binomial test at level 1e-4 with a fixed seed; the test is
    deterministic, and a correct sampler fails it with probability 1e-4 over seeds."""
    torch.manual_seed(4)
    x = torch.tensor([[0.3, -0.2], [0.1, 0.9]], dtype=torch.float64)
    samples = GumbelSinkhorn(x).sample((20_000,))
    identity = (samples[:, 0, 0] == 1).sum().item()
    d = float(x[0, 0] + x[1, 1] - x[0, 1] - x[1, 0])
    sig = scipy.special.expit
    p = scipy.integrate.quad(lambda t: sig(d + t) * sig(t) * (1 - sig(t)), -50, 50)[0]
    assert abs(p - sig(d)) > 0.05  # the law is not the logistic one: the test can tell
    assert scipy.stats.binomtest(identity, 20_000, p).pvalue > 1e-4


def test_gumbel_matching_is_the_mode_most_often():
    torch.manual_seed(5)
    x = torch.randn(4, 4) * 2
    samples = GumbelSinkhorn(x).sample((4000,))
    keys = [tuple(to_indices(s).tolist()) for s in samples]
    most = max(set(keys), key=keys.count)
    assert most == tuple(to_indices(GumbelSinkhorn(x).mode).tolist())


def test_gumbel_sinkhorn_rsample_and_straight_through():
    torch.manual_seed(6)
    x = torch.randn(2, 5, 5, requires_grad=True)
    soft = GumbelSinkhorn(x, tau=0.5).rsample((3,))
    assert soft.shape == (3, 2, 5, 5)
    soft.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    x.grad = None
    st = GumbelSinkhorn(x, tau=0.5, straight_through=True).rsample((3,))
    assert ((st - st.round()).abs() < 1e-6).all()  # hard in the forward pass
    st.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # relaxed gradient backward
    seeded = [GumbelSinkhorn(x, tau=0.5).rsample(generator=torch.Generator().manual_seed(1))
              for _ in range(2)]
    torch.testing.assert_close(seeded[0], seeded[1])
    assert GumbelSinkhorn(x, noise_factor=np.float64(0.5)).noise_factor == 0.5
    with pytest.raises(ValueError, match="noise_factor"):
        GumbelSinkhorn(x, noise_factor=-1.0)
    zero_noise = GumbelSinkhorn(x, tau=0.5, noise_factor=0.0).rsample()
    torch.testing.assert_close(zero_noise, sinkhorn_operator(x, 0.5))


def test_permutation_helpers():
    g = torch.Generator().manual_seed(7)
    sigma = random_permutation(4, 6, generator=g)
    inv = invert_permutation(sigma)
    torch.testing.assert_close(torch.gather(sigma, 1, inv), torch.arange(6).expand(4, 6))
    m = to_matrix(sigma)
    torch.testing.assert_close(to_indices(m), sigma)
    x = torch.randn(4, 6, 3, 2, 2, generator=g)  # pieces of images
    moved = apply_permutation(x, sigma)
    for b in range(4):
        for i in range(6):
            torch.testing.assert_close(moved[b, sigma[b, i]], x[b, i])
    torch.testing.assert_close(apply_permutation(moved, inv), x)
    seq = torch.randn(4, 6, generator=g)
    torch.testing.assert_close(apply_permutation(seq, sigma), (m.transpose(-2, -1) @ seq[..., None])
                               .squeeze(-1))
    with pytest.raises(ValueError, match="permutation"):
        invert_permutation(torch.tensor([0, 0, 1]))


def test_kendall_tau_matches_scipy():
    g = torch.Generator().manual_seed(8)
    a, b = random_permutation(20, 9, generator=g), random_permutation(20, 9, generator=g)
    ours = kendall_tau(a, b)
    for i in range(20):
        ref = scipy.stats.kendalltau(a[i].numpy(), b[i].numpy()).statistic
        assert abs(float(ours[i]) - ref) < 1e-6
    assert (kendall_tau(a, a) == 1).all()


def test_network_is_permutation_equivariant():
    torch.manual_seed(9)
    net = SinkhornNetwork.cnn(n_items=4, piece_shape=(1, 5, 5))
    items = torch.randn(3, 4, 1, 5, 5)
    sigma = random_permutation(3, 4)
    moved = apply_permutation(items, sigma)  # item i now at position sigma[i]
    scores, scores_moved = net(items), net(moved)
    torch.testing.assert_close(apply_permutation(scores, sigma), scores_moved)


def test_tiny_sorting_run_learns():
    """N = 5 numbers, the paper's settings, a few seconds on one core."""
    torch.manual_seed(10)
    net = SinkhornNetwork.mlp(n_items=5, in_features=1, hidden=32)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(300):
        x = torch.rand(10, 5)
        loss = unscramble_loss(net(x[..., None]), x[..., None], x.sort(-1).values[..., None],
                               tau=1.0, n_samples=5, n_iter=10)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = torch.rand(500, 5)
    true_position = test.argsort(-1).argsort(-1)
    predicted = net.predict(test[..., None])
    assert (predicted == true_position).all(-1).float().mean() > 0.95
    assert kendall_tau(predicted, true_position).mean() > 0.98


def test_all_permutations_enumerated_by_matching_are_distinct():
    """matching maximises: every permutation matrix is the argmax of its own scores."""
    for perm in itertools.permutations(range(4)):
        sigma = torch.tensor(perm)
        assert torch.equal(matching(to_matrix(sigma, torch.float64)).indices, sigma)
