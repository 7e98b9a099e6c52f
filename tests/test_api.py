"""The public surface: every exported name is importable and documented with an example."""

import inspect

import pytest
import torch

import couplings
import couplings.permutations
import couplings.structures
from couplings import PointCloud, emd, sinkhorn

from ._problems import DEVICES, DTYPES, random_problem

EXAMPLE_EXEMPT = {"ConvergenceWarning", "Geometry", "CostMatrix", "OTResult", "Implicit",
                  "Matching", "costs"}


def test_all_is_a_list_of_names():
    assert isinstance(couplings.__all__, list) and len(couplings.__all__) > 5
    assert all(isinstance(n, str) and "," not in n for n in couplings.__all__)


PUBLIC = [(couplings, n) for n in couplings.__all__] + [
    (couplings.permutations, n) for n in couplings.permutations.__all__
] + [(couplings.structures, n) for n in couplings.structures.__all__]


@pytest.mark.parametrize("module, name", PUBLIC, ids=[f"{m.__name__}.{n}" for m, n in PUBLIC])
def test_exported_name_is_documented(module, name):
    obj = getattr(module, name)
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 40, f"{name} has no real docstring"
    if name not in EXAMPLE_EXEMPT:
        assert ">>>" in doc, f"{name}'s docstring has no runnable example"


# A registry of solvers drives the generic tests: (name, call, keyword arguments).
SOLVERS = [
    ("sinkhorn-implicit", sinkhorn, dict(eps=0.2, tol=1e-6)),
    ("sinkhorn-unroll", sinkhorn, dict(eps=0.2, tol=1e-6, grad="unroll")),
    ("sinkhorn-envelope", sinkhorn, dict(eps=0.2, tol=1e-6, grad="envelope")),
    ("sinkhorn-scaling", sinkhorn, dict(eps=0.02, tol=1e-5, scaling=0.8, max_iter=5000)),
    ("emd", emd, dict()),
]


@pytest.mark.parametrize("name, solve, kwargs", SOLVERS, ids=[s[0] for s in SOLVERS])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [None, 3])
def test_solver_contract(name, solve, kwargs, dtype, device, batch):
    """Shapes, dtype, device, marginals and gradients to the points, for every solver."""
    x, y, a, b, _ = random_problem(9, 7, dtype=dtype, batch=batch, seed=11)
    x, y, a, b = (t.to(device) for t in (x, y, a, b))
    x.requires_grad_()
    res = solve(PointCloud(x, y), a, b, **kwargs)
    lead = () if batch is None else (batch,)
    expected = {"f": lead + (9,), "g": lead + (7,), "value": lead, "converged": lead,
                "error": lead, "plan": lead + (9, 7), "linear_value": lead}
    for field, shape in expected.items():
        t = getattr(res, field)
        assert tuple(t.shape) == shape, field
        assert t.device.type == torch.device(device).type, field
        if field != "converged":
            assert t.dtype == dtype and torch.isfinite(t).all(), field
    assert res.all_converged
    atol = 1e-4 if dtype == torch.float32 else 1e-5
    torch.testing.assert_close(res.plan.sum(-1), a, atol=atol, rtol=0)
    torch.testing.assert_close(res.plan.sum(-2), b, atol=atol, rtol=0)
    res.value.sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    # the value's gradient for the squared cost: 2 (a_i x_i - sum_j P_ij y_j), Danskin
    plan = res.plan.detach()
    expected_grad = 2 * (a.unsqueeze(-1) * x.detach() - plan @ y)
    torch.testing.assert_close(x.grad, expected_grad, atol=10 * atol, rtol=1e-3)
