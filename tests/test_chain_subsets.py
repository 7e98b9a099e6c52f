"""Correlated (chain) k-subsets against brute-force enumeration."""

import pytest
import torch

from couplings.structures import ChainKSubset, FiniteDifference


@pytest.mark.parametrize("d", [2, 3, 4, 5, 6, 7])
def test_log_partition_marginals_and_argmax_match_enumeration(d):
    g = torch.manual_seed(d)
    for k in range(1, d):
        chain = ChainKSubset(d, k)
        z = chain.enumerate()
        assert z.shape == (len(z), 2 * d - 1) and bool((z[:, :d].sum(-1) == k).all())
        w = 2 * torch.randn(3, 2 * d - 1, dtype=torch.float64, generator=g)
        scores = w @ z.T  # (3, |Z|)
        assert torch.allclose(chain.log_partition(w), torch.logsumexp(scores, -1), atol=1e-10)
        mu = torch.softmax(scores, -1) @ z
        assert torch.allclose(chain.marginals(w), mu, atol=1e-10)
        assert torch.equal(chain.argmax(w), z[scores.argmax(-1)])


def test_float32_is_finite_and_accurate_for_weights_over_a_range_of_50():
    chain = ChainKSubset(12, 4)
    w = torch.rand(8, 23, generator=torch.manual_seed(0)) * 50 - 25
    mu32 = chain.marginals(w)
    assert mu32.dtype == torch.float32 and bool(torch.isfinite(mu32).all())
    assert torch.allclose(mu32.double(), chain.marginals(w.double()), atol=1e-4)
    assert torch.allclose(mu32[:, :12].sum(-1), torch.full((8,), 4.0), atol=1e-4)


def test_relaxation_tends_to_the_argmax_and_has_the_right_gradients():
    chain = ChainKSubset(6, 2)
    w = torch.randn(4, 11, dtype=torch.float64, generator=torch.manual_seed(1))
    assert torch.allclose(chain.relaxed(w, 1e-3), chain.argmax(w), atol=1e-6)
    assert torch.autograd.gradcheck(lambda x: chain.relaxed(x, 0.7), (w.requires_grad_(),))
    g = torch.randn(4, 11, dtype=torch.float64, generator=torch.manual_seed(2))
    grads = []
    for backward in ("autograd", FiniteDifference(1e-5)):
        x = w.detach().clone().requires_grad_(True)
        (chain.relaxed(x, 0.7, backward=backward) * g).sum().backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_pairwise_bonus_makes_the_argmax_contiguous():
    chain = ChainKSubset(8, 3)
    u = torch.tensor([1.0, 0.0, 0.9, 0.0, 0.95, 0.0, 0.0, 0.1])
    apart = chain.split(chain.argmax(chain.join(u, torch.zeros(7))))[0]
    together = chain.split(chain.argmax(chain.join(u, torch.full((7,), 2.0))))[0]
    assert apart.tolist() == [1, 0, 1, 0, 1, 0, 0, 0]
    assert together.tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_bad_input():
    with pytest.raises(ValueError, match="1 <= k <= d - 1"):
        ChainKSubset(4, 4)
    with pytest.raises(ValueError, match=r"\(\*batch, 7\)"):
        ChainKSubset(4, 2).log_partition(torch.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        ChainKSubset(3, 1).argmax(torch.tensor([0.0, 1.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(TypeError, match="floating"):
        ChainKSubset(3, 1).marginals(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="join"):
        ChainKSubset(3, 1).join(torch.zeros(3), torch.zeros(3))
