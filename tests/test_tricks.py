"""Stochastic softmax tricks, the permutation structure and the unrelaxed estimators."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from couplings.permutations import GumbelSinkhorn, sinkhorn_operator
from couplings.structures import (
    NVIL,
    Categorical,
    FiniteDifference,
    KSubset,
    Permutation,
    SpanningTree,
    StochasticSoftmaxTrick,
    leave_one_out_baseline,
    perturb,
    perturbed,
    reinforce,
)

# chi-square goodness-of-fit tests below reject at this p-value: with a fixed seed the outcome is
# deterministic, and over random seeds a correct sampler would fail once in 10 000 runs
P_REJECT = 1e-4


def gumbel_topk_law(theta: torch.Tensor, k: int) -> dict[tuple[int, ...], float]:
    """Exact law of the top-k set of theta + Gumbel: the Plackett-Luce probability of each
    ordering of the set, summed over orderings (small d only)."""
    w = theta.double().exp()
    law = {}
    for subset in itertools.combinations(range(len(w)), k):
        total = 0.0
        for order in itertools.permutations(subset):
            p, rest = 1.0, float(w.sum())
            for i in order:
                p *= float(w[i]) / rest
                rest -= float(w[i])
            total += p
        law[subset] = total
    return law


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    return float(stats.chisquare(counts, probs * counts.sum()).pvalue)


def test_gumbel_argmax_frequencies_match_the_softmax_law():
    theta = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    sst = StochasticSoftmaxTrick(Categorical(5), theta)
    z = sst.sample((20_000,), generator=torch.manual_seed(0))
    counts = z.sum(0).numpy()
    assert chi_square_p(counts, torch.softmax(theta, -1).numpy()) > P_REJECT


def test_gumbel_argmax_frequencies_match_the_plackett_luce_law_for_k_subsets():
    theta = torch.tensor([1.0, 0.0, -0.5, 2.0, 0.3], dtype=torch.float64)
    law = gumbel_topk_law(theta, 2)
    sst = StochasticSoftmaxTrick(KSubset(5, 2), theta)
    z = sst.sample((20_000,), generator=torch.manual_seed(1))
    index = {s: i for i, s in enumerate(law)}
    counts = np.zeros(len(law))
    for row in z.nonzero()[:, 1].reshape(-1, 2).tolist():
        counts[index[tuple(sorted(row))]] += 1
    assert chi_square_p(counts, np.array(list(law.values()))) > P_REJECT
    # and the test has power: the exponential-family law of the same weights is rejected
    ef = torch.softmax(KSubset(5, 2).enumerate() @ theta, 0).numpy()
    assert chi_square_p(counts, ef) < P_REJECT


def test_scaled_noise_samples_the_softmax_of_theta_over_the_scale():
    theta = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    sst = StochasticSoftmaxTrick(Categorical(3), theta, noise_scale=2.0)
    counts = sst.sample((20_000,), generator=torch.manual_seed(2)).sum(0).numpy()
    assert chi_square_p(counts, torch.softmax(theta / 2, -1).numpy()) > P_REJECT


@pytest.mark.parametrize("structure", [Categorical(6), KSubset(6, 3), SpanningTree(4),
                                       Permutation(4, n_iter=200)], ids=repr)
def test_relaxed_samples_tend_to_hard_samples_as_tau_goes_to_zero(structure):
    theta = torch.randn(structure.event_shape, generator=torch.manual_seed(3),
                        dtype=torch.float64)
    hard = StochasticSoftmaxTrick(structure, theta).sample((50,), generator=torch.manual_seed(4))
    # the fixed-depth Sinkhorn operator needs more rounds as tau falls: stop it at 0.02
    is_perm = isinstance(structure, Permutation)
    taus, bound = ((1.0, 0.1, 0.02), 1e-2) if is_perm else ((1.0, 0.1, 1e-3), 1e-3)
    errors = []
    for tau in taus:
        sst = StochasticSoftmaxTrick(structure, theta, tau=tau)
        soft = sst.rsample((50,), generator=torch.manual_seed(4))  # the same noise
        # median over samples: a sample whose noise nearly ties two structures converges last
        per_sample = (soft - hard).abs().flatten(1).max(-1).values
        errors.append(float(per_sample.median()))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < bound, errors


def test_straight_through_is_hard_forward_and_relaxed_backward():
    theta = torch.randn(7, dtype=torch.float64, generator=torch.manual_seed(5))
    weights = torch.randn(7, dtype=torch.float64, generator=torch.manual_seed(6))
    grads = {}
    for st in (False, True):
        t = theta.clone().requires_grad_(True)
        sst = StochasticSoftmaxTrick(KSubset(7, 3), t, tau=0.5, straight_through=st)
        z = sst.rsample((5,), generator=torch.manual_seed(7))
        if st:
            hard = sst.sample((5,), generator=torch.manual_seed(7))
            assert torch.allclose(z.detach(), hard, rtol=0, atol=1e-12)
        (z * weights).sum().backward()
        grads[st] = t.grad
    assert torch.allclose(grads[True], grads[False])
    assert float(grads[True].abs().sum()) > 0


def test_backward_modes_of_the_trick_agree():
    theta = torch.randn(3, 6, dtype=torch.float64, generator=torch.manual_seed(8))
    weights = torch.randn(6, dtype=torch.float64, generator=torch.manual_seed(9))
    grads = []
    for backward in ("autograd", "custom", FiniteDifference(1e-5)):
        t = theta.clone().requires_grad_(True)
        sst = StochasticSoftmaxTrick(KSubset(6, 2), t, tau=0.7, backward=backward)
        (sst.rsample((4,), generator=torch.manual_seed(10)) * weights).sum().backward()
        grads.append(t.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-10)
    assert torch.allclose(grads[0], grads[2], atol=1e-6)


def test_permutation_structure_is_the_sinkhorn_operator_and_gumbel_sinkhorn():
    w = torch.randn(2, 5, 5, generator=torch.manual_seed(11))
    perm = Permutation(5, n_iter=20)
    assert torch.equal(perm.relaxed(w, 0.3), sinkhorn_operator(w, 0.3, 20))
    sst = StochasticSoftmaxTrick(perm, w, tau=0.3)
    gs = GumbelSinkhorn(w, tau=0.3, n_iter=20)
    assert torch.equal(sst.rsample((3,), generator=torch.manual_seed(12)),
                       gs.rsample((3,), generator=torch.manual_seed(12)))
    assert torch.equal(sst.sample((3,), generator=torch.manual_seed(13)),
                       gs.sample((3,), generator=torch.manual_seed(13)))


def test_permutation_log_partition_is_the_log_permanent():
    w = torch.randn(4, 4, dtype=torch.float64, generator=torch.manual_seed(14))
    perm = sum(math.exp(sum(float(w[i, p[i]]) for i in range(4)))
               for p in itertools.permutations(range(4)))
    assert math.isclose(float(Permutation(4).log_partition(w)), math.log(perm), rel_tol=1e-12)
    mu = Permutation(4).marginals(w)
    assert torch.allclose(mu.sum(-1), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="n <= 8"):
        Permutation(9).enumerate()


def test_log_prob_is_exact_for_one_hot_and_refused_elsewhere():
    theta = torch.tensor([0.0, 1.0, -1.0])
    sst = StochasticSoftmaxTrick(Categorical(3), theta, noise_scale=0.5)
    z = torch.eye(3)
    assert torch.allclose(sst.log_prob(z), torch.log_softmax(theta / 0.5, -1))
    with pytest.raises(NotImplementedError, match="no tractable law"):
        StochasticSoftmaxTrick(KSubset(3, 2), theta).log_prob(z)


def test_trick_rejects_bad_input():
    with pytest.raises(TypeError, match="Structure"):
        StochasticSoftmaxTrick("k-subset", torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(\*batch, 4\)"):
        StochasticSoftmaxTrick(KSubset(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        StochasticSoftmaxTrick(KSubset(3, 1), torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="tau"):
        StochasticSoftmaxTrick(KSubset(3, 1), torch.zeros(3), tau=0.0)
    with pytest.raises(ValueError, match="noise"):
        StochasticSoftmaxTrick(KSubset(3, 1), torch.zeros(3), noise="cauchy")
    with pytest.raises(ValueError, match="noise_scale"):
        StochasticSoftmaxTrick(KSubset(3, 1), torch.zeros(3), noise_scale=-1.0)
    with pytest.raises(ValueError, match="reg"):
        StochasticSoftmaxTrick(KSubset(3, 1), torch.zeros(3), reg="tsallis")
    with pytest.raises(ValueError, match="backward"):
        StochasticSoftmaxTrick(KSubset(3, 1), torch.zeros(3), backward="adjoint").rsample()


def test_perturb_shapes_and_noise_laws():
    theta = torch.zeros(2, 3, dtype=torch.float64)
    g = perturb(theta, (50_000,), generator=torch.manual_seed(15))
    n = perturb(theta, (50_000,), noise="normal", generator=torch.manual_seed(15))
    assert g.shape == n.shape == (50_000, 2, 3)
    assert abs(float(g.mean()) - 0.5772156649) < 0.01
    assert abs(float(g.var()) - math.pi**2 / 6) < 0.03
    assert abs(float(n.mean())) < 0.01 and abs(float(n.var()) - 1) < 0.02


def test_perturbed_argmax_matches_the_documented_values_and_the_softmax_jacobian():
    # perturbations' README: 1e6 samples, sigma 0.5, Gumbel; in expectation softmax(theta/sigma)
    theta = torch.tensor([[-0.6, 1.9, -0.2, 1.1, -1.0], [-0.6, 1.0, -0.2, 1.8, -1.0]],
                         dtype=torch.float64, requires_grad=True)
    n = 200_000
    y = perturbed(Categorical(5).argmax, theta, sigma=0.5, n_samples=n, event_ndim=1,
                  generator=torch.manual_seed(16))
    p = torch.softmax(theta.detach() / 0.5, -1)
    assert torch.allclose(p[0], torch.tensor([0.00549293, 0.8152234, 0.01222475, 0.16459079,
                                              0.00246813], dtype=torch.float64), atol=1e-7)
    assert torch.allclose(p[1], torch.tensor([0.00667923, 0.16385847, 0.0148649, 0.8115962,
                                              0.00300117], dtype=torch.float64), atol=1e-7)
    # five standard errors of a frequency
    assert bool(((y - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-12).all())
    # the Monte-Carlo Jacobian estimates (diag(p) - p p^T) / sigma
    g = torch.randn(2, 5, dtype=torch.float64, generator=torch.manual_seed(17))
    (y * g).sum().backward()
    exact = ((p * g).sum(-1, keepdim=True) * -p + p * g) / 0.5
    assert torch.allclose(theta.grad, exact, atol=0.03), (theta.grad, exact)


def test_reinforce_is_unbiased_and_the_loo_baseline_reduces_its_variance():
    theta = torch.tensor([0.3, -0.2, 0.8, 0.0], dtype=torch.float64)
    target = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    probs = torch.softmax(theta, 0)
    f_all = ((torch.eye(4, dtype=torch.float64) - target) ** 2).sum(-1)  # f(one-hot i)
    exact = probs * (f_all - (probs * f_all).sum())  # d/dtheta sum_i p_i f_i

    def estimates(baseline, reps=2000, n=4):
        t = theta.clone().requires_grad_(True)
        sst = StochasticSoftmaxTrick(Categorical(4), t)
        z = sst.sample((reps, n), generator=torch.manual_seed(18))  # (reps, n, 4)
        f = ((z - target) ** 2).sum(-1).transpose(0, 1)  # (n, reps)
        logp = sst.log_prob(z).transpose(0, 1)
        out = []
        for r in range(reps):
            (grad,) = torch.autograd.grad(reinforce(f[:, r], logp[:, r], baseline), t,
                                          retain_graph=True)
            out.append(grad)
        return torch.stack(out)

    plain, loo = estimates(None), estimates("loo")
    for est in (plain, loo):
        se = est.std(0) / math.sqrt(len(est))
        assert bool(((est.mean(0) - exact).abs() < 5 * se).all()), (est.mean(0), exact)
    assert float(loo.var(0).sum()) < 0.5 * float(plain.var(0).sum())
    assert torch.allclose(leave_one_out_baseline(torch.tensor([[1.0], [3.0]])),
                          torch.tensor([[3.0], [1.0]]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        leave_one_out_baseline(torch.ones(1))
    with pytest.raises(ValueError, match="log_prob"):
        reinforce(torch.ones(3), torch.ones(2))


def test_nvil_baseline_learns_the_mean_signal():
    torch.manual_seed(19)
    net = torch.nn.Linear(1, 1)
    nvil = NVIL(baseline=net, momentum=0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    logits = torch.zeros(3, requires_grad=True)
    x = torch.ones(64, 1)
    for _ in range(300):
        dist = torch.distributions.Categorical(logits=logits)
        z = dist.sample((64,))
        f = 3.0 + (z == 2).float()  # mean 3.33 under the uniform law
        opt.zero_grad()
        nvil.surrogate(f, dist.log_prob(z), context=x).backward()
        opt.step()
        logits.grad = None
    # mean + baseline together track the mean signal: the centred signal is small
    with torch.no_grad():
        assert abs(float(nvil.mean + net(x[:1]).squeeze()) - 10 / 3) < 0.15
    with pytest.raises(ValueError, match="context"):
        nvil.surrogate(torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="momentum"):
        NVIL(momentum=1.0)
