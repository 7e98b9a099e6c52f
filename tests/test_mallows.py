"""The Mallows model with the footrule distance: exact law, exact sampling, enumeration helpers.

Statistical policy: the sampling test is a chi-square goodness-of-fit test at level 1e-3 (a
correct sampler fails it with probability 0.1%) run with a fixed seed, so it is deterministic;
the same counts are shown to fail against a slightly different law, so the test has power.
"""

import itertools
import math

import pytest
import torch
from scipy.stats import chisquare

from couplings.permutations.mallows import (
    MAX_EXACT_N,
    Mallows,
    all_permutations,
    footrule,
    permutation_rank,
)


def _brute_force_log_probs(center, theta):
    """Independent reference in pure Python: -theta * footrule - log Z over itertools' list."""
    n = len(center)
    perms = list(itertools.permutations(range(n)))
    weights = [math.exp(-theta * sum(abs(p[i] - center[i]) for i in range(n))) for p in perms]
    z = sum(weights)
    return perms, [math.log(w / z) for w in weights]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("theta", [0.0, 0.5, 3.0])
def test_log_prob_is_exact_and_normalized(n, theta):
    center = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    dist = Mallows(center, theta)
    support = dist.enumerate_support()
    log_p = dist.log_prob(support)
    assert log_p.dtype == torch.float64 and log_p.shape == (math.factorial(n),)
    assert abs(float(torch.logsumexp(log_p, 0))) < 1e-12
    assert abs(float(dist.probs().sum()) - 1) < 1e-12
    torch.testing.assert_close(dist.probs().log(), log_p)
    perms, expected = _brute_force_log_probs(center.tolist(), theta)
    assert [tuple(p) for p in support.tolist()] == perms  # lexicographic, as itertools
    torch.testing.assert_close(log_p, torch.tensor(expected, dtype=torch.float64))


def test_mode_is_the_centre_and_theta_zero_is_uniform():
    center = torch.tensor([3, 0, 4, 1, 2])
    dist = Mallows(center, 2.0)
    assert torch.equal(dist.enumerate_support()[dist.probs().argmax()], center)
    uniform = Mallows(center, 0.0).probs()
    torch.testing.assert_close(uniform, torch.full((120,), 1 / 120, dtype=torch.float64))


def test_samples_follow_the_exact_law_chi_square():
    center = torch.tensor([2, 0, 3, 1])
    dist = Mallows(center, 0.5)  # every one of the 24 cells has an expected count >= 100
    n_samples = 24_000
    samples = dist.sample(n_samples, generator=torch.Generator().manual_seed(1234))
    assert samples.shape == (n_samples, 4) and samples.dtype == torch.int64
    counts = torch.bincount(permutation_rank(samples), minlength=24).double()
    expected = dist.probs() * n_samples
    assert float(expected.min()) >= 100
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3
    # power: the same counts reject a law with a slightly different concentration
    other = Mallows(center, 0.6).probs() * n_samples
    assert chisquare(counts.numpy(), other.numpy()).pvalue < 1e-6


def test_sampling_is_seeded():
    dist = Mallows(torch.tensor([1, 0, 2]), 1.0)
    a = dist.sample(50, generator=torch.Generator().manual_seed(7))
    b = dist.sample(50, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_exact_enumeration_is_limited_to_small_n():
    assert MAX_EXACT_N == 8
    assert Mallows(torch.arange(8), 1.0).probs().shape == (40320,)
    with pytest.raises(ValueError, match="n <= 8"):
        Mallows(torch.arange(9), 1.0)
    with pytest.raises(ValueError, match="n <= 8"):
        all_permutations(9)


def test_input_validation():
    with pytest.raises(ValueError, match="permutations of 0..2"):
        Mallows(torch.tensor([0, 0, 1]), 1.0)
    with pytest.raises(TypeError, match="integer tensor"):
        Mallows(torch.tensor([0.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="theta"):
        Mallows(torch.tensor([0, 1]), -1.0)
    with pytest.raises(TypeError, match="theta"):
        Mallows(torch.tensor([0, 1]), "1")
    with pytest.raises(ValueError, match="same n"):
        footrule(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="n_samples"):
        Mallows(torch.tensor([0, 1]), 1.0).sample(0)


def test_footrule_and_rank_known_values():
    assert int(footrule(torch.tensor([3, 2, 1, 0]), torch.arange(4))) == 8
    assert int(footrule(torch.tensor([1, 0, 2]), torch.tensor([1, 0, 2]))) == 0
    for n in (1, 3, 5, 7):
        perms = all_permutations(n)
        assert torch.equal(permutation_rank(perms), torch.arange(math.factorial(n)))
    assert int(permutation_rank(torch.arange(12).flip(0))) == math.factorial(12) - 1
