"""Hypothesis properties of entropic OT: symmetry, cost shifts and scaling, divergence >= 0."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from couplings import sinkhorn, sinkhorn_divergence

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
TIGHT = dict(tol=1e-11, max_iter=20_000)

finite = st.floats(-1, 1, allow_nan=False, allow_infinity=False)
sizes = st.integers(2, 7)


@st.composite
def problems(draw):
    n, m = draw(sizes), draw(sizes)
    # well-conditioned problems (cost range / eps <= 10), where Sinkhorn converges linearly fast:
    # the properties are about the problem, not about the solver's worst case
    c = draw(arrays(np.float64, (n, m), elements=st.floats(0, 1)))
    a = draw(arrays(np.float64, (n,), elements=st.floats(0.05, 1)))
    b = draw(arrays(np.float64, (m,), elements=st.floats(0.05, 1)))
    eps = draw(st.floats(0.1, 2.0))
    return torch.from_numpy(c), torch.from_numpy(a / a.sum()), torch.from_numpy(b / b.sum()), eps


@SETTINGS
@given(problems())
def test_transpose_symmetry(problem):
    c, a, b, eps = problem
    res, res_t = sinkhorn(c, a, b, eps=eps, **TIGHT), sinkhorn(c.T, b, a, eps=eps, **TIGHT)
    torch.testing.assert_close(res.value, res_t.value, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(res.plan, res_t.plan.T, rtol=1e-6, atol=1e-10)


@SETTINGS
@given(problems(), st.data())
def test_row_and_column_shifts(problem, data):
    """C + alpha_i + beta_j leaves the plan unchanged and shifts the value by <a,alpha>+<b,beta>."""
    c, a, b, eps = problem
    alpha = torch.from_numpy(data.draw(arrays(np.float64, (c.shape[0],), elements=finite)))
    beta = torch.from_numpy(data.draw(arrays(np.float64, (c.shape[1],), elements=finite)))
    res = sinkhorn(c, a, b, eps=eps, **TIGHT)
    shifted = sinkhorn(c + alpha[:, None] + beta[None, :], a, b, eps=eps, **TIGHT)
    torch.testing.assert_close(shifted.plan, res.plan, rtol=1e-6, atol=1e-10)
    expected = res.value + (a * alpha).sum() + (b * beta).sum()
    torch.testing.assert_close(shifted.value, expected, rtol=1e-8, atol=1e-9)


@SETTINGS
@given(problems(), st.floats(0.1, 10))
def test_joint_scaling_of_cost_and_eps(problem, scale):
    c, a, b, eps = problem
    res = sinkhorn(c, a, b, eps=eps, **TIGHT)
    scaled = sinkhorn(c * scale, a, b, eps=eps * scale, **TIGHT)
    torch.testing.assert_close(scaled.value, res.value * scale, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(scaled.plan, res.plan, rtol=1e-6, atol=1e-10)


@SETTINGS
@given(
    arrays(np.float64, st.tuples(sizes, st.just(2)), elements=finite),
    arrays(np.float64, st.tuples(sizes, st.just(2)), elements=finite),
    st.floats(0.5, 5),
)
def test_divergence_is_non_negative_and_zero_on_equal_inputs(x, y, eps):
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    d = sinkhorn_divergence(x, y, eps=eps, tol=1e-10, max_iter=50_000)
    assert float(d) >= -1e-8
    assert abs(float(sinkhorn_divergence(x, x, eps=eps, tol=1e-10, max_iter=50_000))) <= 1e-10
