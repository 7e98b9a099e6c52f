"""Random transport problems and the dtypes and devices every op is tested on."""

import torch

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_problem(n, m, *, dtype=torch.float64, d=2, seed=0, batch=None, zero_a=(), zero_b=()):
    """Random point clouds with non-uniform weights; returns ``x, y, a, b, C`` (sq. Euclidean)."""
    g = torch.Generator().manual_seed(seed)
    shape = () if batch is None else (batch,)
    x = torch.randn(*shape, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(*shape, m, d, generator=g, dtype=torch.float64) * 0.8 + 0.5
    a = torch.rand(*shape, n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(*shape, m, generator=g, dtype=torch.float64) + 0.1
    for i in zero_a:
        a[..., i] = 0
    for j in zero_b:
        b[..., j] = 0
    a = a / a.sum(-1, keepdim=True)
    b = b / b.sum(-1, keepdim=True)
    c = ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)
    return tuple(t.to(dtype) for t in (x, y, a, b, c))
