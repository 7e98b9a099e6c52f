"""OT-GAN's mini-batch energy distance: the six-term formula, exact OT as eps -> 0 (POT),
expectation zero for equal laws, symmetries, envelope and implicit gradients, bad input.

Statistical policy: the expectation test uses fixed seeds, so it is deterministic; its bound of
5 standard errors over 200 replicates would fail by chance with probability about 1e-6 for a
fresh seed.
"""

import math

import numpy as np
import ot
import pytest
import torch
from torch import nn

from couplings import PointCloud, costs, sinkhorn
from couplings.minibatch_energy import (
    TERMS,
    MinibatchEnergyDistance,
    minibatch_energy_distance,
    split_halves,
)

F64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _batches(seed, sizes=(6, 6, 6, 6), d=3, shift=0.5, batch=None, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    return [torch.randn(*lead, n, d, generator=g, dtype=dtype) + (shift if k >= 2 else 0.0)
            for k, n in enumerate(sizes)]


def _six_terms(batches, eps, field="linear_value", cost="cosine", **options):
    """The loss from six separate solves: sum of coef * W(first, second)."""
    total = 0.0
    for i, j, coef in TERMS:
        res = sinkhorn(PointCloud(batches[i], batches[j], cost), eps=eps, **options)
        total = total + coef * getattr(res, field)
    return total


@pytest.mark.parametrize("sizes", [(6, 6, 6, 6), (5, 7, 4, 6)])
@pytest.mark.parametrize("batch", [None, 2])
def test_equals_six_separate_solves(sizes, batch):
    b = _batches(0, sizes, batch=batch)
    opts = dict(eps=0.2, tol=1e-9, max_iter=20000)
    ours = minibatch_energy_distance(*b, **opts)
    expected = _six_terms(b, **opts)
    assert ours.shape == (() if batch is None else (batch,))
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)
    # the written-out formula, term by term
    w = {(i, j): sinkhorn(PointCloud(b[i], b[j], "cosine"), **opts).linear_value
         for i, j, _ in TERMS}
    formula = (w[0, 2] + w[0, 3] + w[1, 2] + w[1, 3]) - 2 * w[0, 1] - 2 * w[2, 3]
    torch.testing.assert_close(ours, formula, rtol=1e-9, atol=1e-12)
    # other costs and a callable cost
    sq = minibatch_energy_distance(*b, eps=2.0, cost="sqeuclidean", tol=1e-9)
    torch.testing.assert_close(sq, _six_terms(b, 2.0, cost="sqeuclidean", tol=1e-9))
    half = minibatch_energy_distance(*b, eps=1.0, cost=lambda p, q: 0.5 * costs.sqeuclidean(
        p, q), tol=1e-9)
    torch.testing.assert_close(half, 0.5 * sq)  # W scales with the cost when eps does


def test_batched_problems_equal_one_by_one():
    b = _batches(1, batch=3, dtype=torch.float32)
    out = minibatch_energy_distance(*b, eps=0.1, tol=1e-5, max_iter=20000)
    assert out.dtype == torch.float32 and out.shape == (3,)
    for k in range(3):
        single = minibatch_energy_distance(*(t[k] for t in b), eps=0.1, tol=1e-5,
                                           max_iter=20000)
        assert float(out[k]) == pytest.approx(float(single), rel=1e-5, abs=1e-6)


def test_approaches_exact_ot_as_eps_goes_to_zero():
    """Each term is within [-tol, eps log n + tol] of the exact cost (the entropy of a
    permutation plan is log n; a row marginal error tol moves the cost by at most tol times the
    cost range 2, halved), so the loss is within 4 eps log n + 8 tol of the loss built on POT's
    ``emd2`` with POT's own cosine cost. Sinkhorn needs thousands of iterations at eps = 0.005
    on most such problems; this seed is one of the quicker ones."""
    n = 8
    b = _batches(4, (n, n, n, n), d=4)
    uniform = np.full(n, 1.0 / n)
    exact = sum(coef * ot.emd2(uniform, uniform, ot.dist(b[i].numpy(), b[j].numpy(),
                                                          metric="cosine"))
                for i, j, coef in TERMS)
    gaps = []
    for eps, tol in ((0.1, 1e-6), (0.005, 1e-5)):
        ours = float(minibatch_energy_distance(*b, eps=eps, tol=tol, scaling=0.9,
                                               max_iter=100000))
        gaps.append(abs(ours - exact))
        assert gaps[-1] <= 4 * eps * math.log(n) + 8 * tol
    assert gaps[-1] < 2e-3 and gaps[-1] < gaps[0] / 10  # measured: 7.4e-4 and 1.8e-2


def test_zero_in_expectation_for_equal_laws_and_positive_otherwise():
    reps = 200
    same = minibatch_energy_distance(*_batches(3, (16,) * 4, d=2, shift=0.0, batch=reps),
                                     eps=0.5, tol=1e-6, max_iter=20000)
    se = float(same.std()) / math.sqrt(reps)
    assert abs(float(same.mean())) < 5 * se
    moved = minibatch_energy_distance(*_batches(4, (16,) * 4, d=2, shift=1.0, batch=reps),
                                      eps=0.5, tol=1e-6, max_iter=20000)
    assert float(moved.mean()) > 5 * float(moved.std()) / math.sqrt(reps)
    assert float(moved.mean()) > 10 * abs(float(same.mean()))


def test_symmetries():
    b = _batches(5, (7, 7, 7, 7))
    opts = dict(eps=0.2, tol=1e-10, max_iter=20000)
    value = float(minibatch_energy_distance(*b, **opts))
    for perm in ((1, 0, 2, 3), (0, 1, 3, 2), (1, 0, 3, 2), (2, 3, 0, 1)):
        # swap X and X', Y and Y', both, or the real and the generated roles
        swapped = float(minibatch_energy_distance(*(b[k] for k in perm), **opts))
        assert swapped == pytest.approx(value, rel=1e-8, abs=1e-10), perm
    # invariant to rescaling the features (the cosine cost normalizes them)
    scaled = minibatch_energy_distance(3 * b[0], b[1], 0.5 * b[2], b[3], **opts)
    assert float(scaled) == pytest.approx(value, rel=1e-8)
    # X' = X and Y' = Y: L = 4 W(X, Y) - 2 W(X, X) - 2 W(Y, Y)
    degenerate = minibatch_energy_distance(b[0], b[0], b[2], b[2], **opts)
    w = _six_terms([b[0], b[0], b[2], b[2]], **opts)
    assert float(degenerate) == pytest.approx(float(w), rel=1e-8)


def _fd(fn, t, direction, h=1e-5):
    with torch.no_grad():
        return (float(fn(t + h * direction)) - float(fn(t - h * direction))) / (2 * h)


def test_envelope_gradient_matches_finite_differences_of_the_entropic_terms():
    """With the plan held fixed, the gradient of <P, C> is that of the entropic value
    <P, C> + eps KL(P | a x b) (Danskin): central differences of the six-term entropic loss."""
    b = _batches(6, (6, 5, 6, 5))
    opts = dict(eps=0.2, tol=1e-12, max_iter=20000)
    y = b[2].clone().requires_grad_()
    (grad,) = torch.autograd.grad(minibatch_energy_distance(b[0], b[1], y, b[3], **opts), y)
    direction = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=F64)

    def entropic(y_):
        return _six_terms([b[0], b[1], y_, b[3]], field="value", **opts)

    fd = _fd(entropic, y.detach(), direction)
    assert float((grad * direction).sum()) == pytest.approx(fd, rel=1e-6, abs=1e-9)

    # the critic's parameters: features = critic(samples), same check along a random direction
    critic = nn.Linear(3, 4, dtype=F64)
    torch.nn.init.normal_(critic.weight, generator=torch.Generator().manual_seed(8))
    loss_fn = MinibatchEnergyDistance(critic, **opts)
    real, fake = torch.cat(b[:2]), torch.cat([b[2], b[3]])
    real, fake = real[:10], fake[:10]  # 2 x 5 samples each
    loss_fn(real, fake).backward()
    weight_grad = critic.weight.grad.clone()
    assert critic.bias.grad is not None and bool(torch.isfinite(weight_grad).all())
    w0 = critic.weight.detach().clone()
    dw = torch.randn(w0.shape, generator=torch.Generator().manual_seed(9), dtype=F64)

    def entropic_in_weight(w):
        feats = [torch.nn.functional.linear(t, w, critic.bias.detach()) for t in
                 split_halves(real, fake)]
        return _six_terms(feats, field="value", **opts)

    fd = _fd(entropic_in_weight, w0, dw)
    assert float((weight_grad * dw).sum()) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_implicit_and_unrolled_gradients_match_finite_differences_of_the_loss():
    b = _batches(10, (5, 5, 5, 5))
    opts = dict(eps=0.2, tol=1e-12, max_iter=20000)
    y = b[3].clone().requires_grad_()
    direction = torch.randn(y.shape, generator=torch.Generator().manual_seed(11), dtype=F64)

    def loss(y_, grad):
        return minibatch_energy_distance(b[0], b[1], b[2], y_, grad=grad, **opts)

    fd = _fd(lambda y_: loss(y_, "envelope"), y.detach(), direction)
    grads = {}
    for mode in ("implicit", "unroll", "envelope"):
        (grads[mode],) = torch.autograd.grad(loss(y, mode), y)
    for mode in ("implicit", "unroll"):
        assert float((grads[mode] * direction).sum()) == pytest.approx(fd, rel=1e-6), mode
    # the envelope gradient differs from the exact one of <P, C> by the entropic term: O(eps)
    env = float((grads["envelope"] * direction).sum())
    assert env != pytest.approx(fd, rel=1e-6)
    assert abs(env - fd) < 0.5 * abs(fd)


@pytest.mark.parametrize("device", DEVICES)
def test_module_split_dtype_device_and_small_eps_float32(device):
    g = torch.Generator().manual_seed(12)
    real = torch.randn(2, 32, 5, generator=g).to(device)  # (B, 2n, d)
    fake = (torch.randn(2, 32, 5, generator=g) + 1).to(device).requires_grad_()
    loss_fn = MinibatchEnergyDistance(eps=0.1, reduction="none")
    out = loss_fn(real, fake)
    assert out.shape == (2,) and out.dtype == torch.float32
    assert out.device.type == torch.device(device).type
    expected = minibatch_energy_distance(*split_halves(real, fake), eps=0.1)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert bool(torch.isfinite(fake.grad).all()) and float(fake.grad.abs().sum()) > 0
    # OT-GAN's eps = 1 / 500 on the cosine cost, in float32, fixed depth as in its code
    small = MinibatchEnergyDistance(eps=0.002, min_iter=300, max_iter=300)(real, fake)
    assert bool(torch.isfinite(small))
    # and converged with epsilon scaling, against a float64 solve
    opts = dict(eps=0.002, scaling=0.9, tol=1e-4, max_iter=20000)
    v32 = minibatch_energy_distance(*split_halves(real[0], fake[0].detach()), **opts)
    v64 = minibatch_energy_distance(*split_halves(real[0].double(), fake[0].detach().double()),
                                    **opts)
    assert float(v32) == pytest.approx(float(v64), abs=1e-3)


def test_bad_input():
    x, xp, y, yp = _batches(13, (4, 4, 4, 4))
    with pytest.raises(ValueError, match="feature dimension"):
        minibatch_energy_distance(x, xp, y, torch.randn(4, 2, dtype=F64), eps=0.1)
    with pytest.raises(ValueError, match="batch size"):
        minibatch_energy_distance(*_batches(13, batch=2)[:3], torch.randn(3, 6, 3, dtype=F64),
                                  eps=0.1)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        minibatch_energy_distance(x, xp, y, yp[None], eps=0.1)
    with pytest.raises(ValueError, match="y_prime must be finite"):
        minibatch_energy_distance(x, xp, y, yp * float("nan"), eps=0.1)
    with pytest.raises(TypeError, match="dtype"):
        minibatch_energy_distance(x, xp, y, yp.float(), eps=0.1)
    with pytest.raises(ValueError, match="at least one sample"):
        minibatch_energy_distance(x, xp, y, yp[:0], eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        minibatch_energy_distance(x, xp, y, yp, eps=0.0)
    with pytest.raises(ValueError, match="grad"):
        minibatch_energy_distance(x, xp, y, yp, eps=0.1, grad="backprop")
    with pytest.raises(ValueError, match="unknown cost"):
        minibatch_energy_distance(x, xp, y, yp, eps=0.1, cost="hamming")
    with pytest.raises(ValueError, match="returned shape"):
        minibatch_energy_distance(x, xp, y, yp, eps=0.1, cost=lambda p, q: p.sum(-1))
    with pytest.raises(ValueError, match="even number"):
        split_halves(torch.randn(5, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="unknown cost"):
        MinibatchEnergyDistance(eps=0.1, cost="hamming")
    with pytest.raises(TypeError, match="solver options"):
        MinibatchEnergyDistance(eps=0.1, reg=0.1)
    with pytest.raises(ValueError, match="reduction"):
        MinibatchEnergyDistance(eps=0.1, reduction="max")
    with pytest.raises(ValueError, match="eps"):
        MinibatchEnergyDistance(eps=-1.0)
