"""The loop's bookkeeping in torch, as it runs off the CPU, gives what the numpy one gives."""

import numpy as np
import pytest
import torch

from couplings import PointCloud, sinkhorn
from couplings.solvers import _bookkeeping


def _force_torch(monkeypatch):
    """Force the bookkeeping a GPU solve uses (torch tensors on the device) on the CPU."""
    original = _bookkeeping.Bookkeeping.__init__

    def init(self, like):
        original(self, like)
        self.host, self.xp = False, torch

    monkeypatch.setattr(_bookkeeping.Bookkeeping, "__init__", init)


@pytest.fixture
def torch_bookkeeping(monkeypatch):
    _force_torch(monkeypatch)


def _batch():
    g = torch.Generator().manual_seed(5)
    scales = torch.tensor([0.5, 1.0, 2.0, 1.2, 1.5, 0.7], dtype=torch.float64)
    x = torch.randn(6, 40, 2, generator=g, dtype=torch.float64) * scales[:, None, None]
    y = torch.randn(6, 50, 2, generator=g, dtype=torch.float64) + 0.5
    a = torch.rand(6, 40, generator=g, dtype=torch.float64)
    a[2, 30:] = 0.0  # padding
    return x, y, a / a.sum(-1, keepdim=True)


def _solve():
    x, y, a = _batch()
    return sinkhorn(PointCloud(x, y), a, eps=0.05, tol=1e-9, max_iter=20_000, check_every=7)


def test_with_the_torch_bookkeeping_a_batch_equals_its_problems_alone(torch_bookkeeping):
    batch = _solve()
    assert len(set(batch.n_iter_per_problem.tolist())) >= 3  # checks at different times
    x, y, a = _batch()
    for i in range(6):
        alone = sinkhorn(PointCloud(x[i], y[i]), a[i], eps=0.05, tol=1e-9, max_iter=20_000,
                         check_every=7)
        assert int(batch.n_iter_per_problem[i]) == int(alone.n_iter)
        torch.testing.assert_close(batch.f[i], alone.f, rtol=0, atol=1e-12)


def test_the_two_bookkeepings_agree(monkeypatch):
    host = _solve()
    _force_torch(monkeypatch)
    device = _solve()
    # the CPU's numpy bookkeeping also schedules a check from the rate over iterations 4-8,
    # which the device's does not (it would cost a sync): each problem stops no later, and at
    # most one check spacing sooner, at the same solution
    assert bool(host.converged.all()) and bool(device.converged.all())
    gap = device.n_iter_per_problem.numpy() - host.n_iter_per_problem.numpy()
    assert np.all((gap >= 0) & (gap <= 7))
    torch.testing.assert_close(host.value, device.value, rtol=1e-9, atol=0)
