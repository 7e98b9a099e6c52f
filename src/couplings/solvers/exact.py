r"""Exact optimal transport by the network simplex (POT's ``ot.emd``): the reference solver.

The linear program, for a cost ``C`` ``(B, n, m)`` and marginals ``a`` ``(B, n)``, ``b``
``(B, m)`` of equal mass:

.. math::

    \mathrm{OT}(a, b) = \min_{P \geq 0,\ P 1 = a,\ P^T 1 = b} \langle P, C\rangle
    = \max_{f_i + g_j \leq C_{ij}} \langle a, f\rangle + \langle b, g\rangle.

The optimal plan is a vertex of the transport polytope: piecewise constant in ``C``, so it
carries no gradient. The value is piecewise linear, and by Danskin's (envelope) theorem its
gradients are the plan for the cost and the dual potentials for the weights.
"""

from __future__ import annotations

import warnings

import numpy as np
import ot
import torch

from .._validation import batch_weights, check_equal_mass, check_positive_int
from ..geometry import Geometry, as_geometry
from ..result import ConvergenceWarning, OTResult

__all__ = ["emd"]

_OPTIMAL = 1  # POT's result_code for an optimal solution


class _EnvelopeLinearValue(torch.autograd.Function):
    """``<P, C>`` for a fixed optimal plan, with Danskin's gradients: ``P`` for the cost, ``f``
    and ``g`` for the weights."""

    @staticmethod
    def forward(ctx, cost, a, b, value, plan, f, g):
        ctx.save_for_backward(plan, f, g)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_value):
        plan, f, g = ctx.saved_tensors
        gv = grad_value.unsqueeze(-1)  # (B, 1)
        grad_cost = gv.unsqueeze(-1) * plan if ctx.needs_input_grad[0] else None
        return grad_cost, gv * f, gv * g, None, None, None, None


def _c_transform_zero_weights(
    f: np.ndarray, g: np.ndarray, a: np.ndarray, b: np.ndarray, cost: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Give potentials of zero-weight points their largest dual-feasible value.

    The network simplex drops zero-weight rows and columns, so their potentials are only
    constrained by feasibility ``f_i + g_j <= C_ij``. Taking the c-transform (the largest feasible
    value) makes ``f_i`` the one-sided derivative of the value as mass flows into point ``i``.
    """
    rows, cols = a > 0, b > 0
    f, g = f.copy(), g.copy()
    if not rows.all():
        f[~rows] = (cost[~rows][:, cols] - g[cols]).min(axis=1)
    if not cols.all():
        g[~cols] = (cost[:, ~cols] - f[:, None]).min(axis=0)
    return f, g


def _solve_one(
    cost: np.ndarray, a: np.ndarray, b: np.ndarray, max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
    """One problem in float64: plan ``(n, m)``, potentials ``(n,)``, ``(m,)``, value, code."""
    with warnings.catch_warnings():  # non-optimality is reported once, by emd itself
        warnings.simplefilter("ignore")
        plan, log = ot.emd(a, b, cost, numItermax=max_iter, log=True, check_marginals=False)
    f, g = _c_transform_zero_weights(log["u"], log["v"], a, b, cost)
    # fix the additive constant as sinkhorn does: <a, f> = <b, g>
    shift = (a @ f - b @ g) / (a.sum() + b.sum())
    return plan, f - shift, g + shift, float((plan * cost).sum()), int(log["result_code"])


def emd(
    cost: torch.Tensor | Geometry,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    max_iter: int = 100_000,
) -> OTResult:
    r"""Exact optimal transport by the network simplex.

    Solves the linear program

    .. math::

        \min_{P \in \mathbb{R}_+^{n \times m}} \langle P, C\rangle
        \quad \text{s.t.} \quad P 1_m = a,\ P^T 1_n = b,

    with POT's network simplex (``ot.emd``; ``ot.emd2`` returns the value), one problem at a
    time in float64. Its dual :math:`\max_{f_i + g_j \leq C_{ij}} \langle a, f\rangle +
    \langle b, g\rangle` gives the potentials.

    Gradients follow Danskin's theorem: ``value`` has gradient ``P`` with respect to the cost
    (hence to the points of a :class:`~couplings.PointCloud`), ``f`` with respect to ``a`` and
    ``g`` with respect to ``b`` (each up to an additive constant, since the masses are tied).
    ``plan``, ``f`` and ``g`` are piecewise constant and detached; ``linear_value`` (``<P, C>``
    with ``P`` fixed) has the same gradient ``P`` for the cost.

    Args:
        cost: cost matrix ``(B, n, m)`` or ``(n, m)``, or a :class:`~couplings.Geometry` such as
            ``PointCloud(x, y)``.
        a: first marginal ``(B, n)`` or ``(n,)``, non-negative; ``None`` for uniform ``1/n``.
        b: second marginal ``(B, m)`` or ``(m,)``, with the same total mass as ``a``.
        max_iter: limit on network simplex pivots (POT's ``numItermax``). A problem not solved
            to optimality by then is reported (``converged=False``) and a
            :class:`~couplings.ConvergenceWarning` is issued once.

    Returns:
        :class:`~couplings.OTResult` with the optimal ``plan`` ``(B, n, m)``, potentials ``f``
        ``(B, n)`` and ``g`` ``(B, m)`` (dual feasible, zero-weight points given their
        c-transform, normalized so that ``<a, f> = <b, g>``), ``value`` ``<P, C>`` ``(B,)``,
        ``converged`` ``(B,)``, ``n_iter=None``, ``error`` (L1 marginal violation of the plan)
        ``(B,)`` and ``eps=None``. The batch axis is absent for an unbatched call; dtype and
        device are those of the cost.

    Raises:
        TypeError, ValueError: for inputs of the wrong type, shape, dtype or device, a
            non-finite cost, negative or non-finite weights, unequal masses, or
            ``max_iter <= 0``.

    Example:
        >>> import torch
        >>> from couplings.solvers.exact import emd
        >>> cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]], requires_grad=True)
        >>> res = emd(cost, torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75]))
        >>> res.plan
        tensor([[0.2500, 0.2500],
                [0.0000, 0.5000]])
        >>> res.value.item(), bool(res.converged)
        (0.25, True)
        >>> res.value.backward()
        >>> torch.equal(cost.grad, res.plan)
        True

    Names elsewhere: POT ``ot.emd(a, b, M, numItermax)`` returns the plan and
    ``ot.emd2(a, b, M)`` the value; ``M`` = ``cost``, ``numItermax`` = ``max_iter``.

    References:
        Bonneel, van de Panne, Paris and Heidrich, "Displacement Interpolation Using Lagrangian
        Mass Transport", ACM TOG 2011. Peyre and Cuturi, "Computational Optimal Transport",
        2019, chapter 3.
    """
    geom = as_geometry(cost)
    max_iter = check_positive_int(max_iter, "max_iter")
    c = geom.cost_matrix()  # (B, n, m)
    bsz, n, m = c.shape
    a = batch_weights(a, n, bsz, geom.batched, c, "a", "the rows (n) of the cost")
    b = batch_weights(b, m, bsz, geom.batched, c, "b", "the columns (m) of the cost")
    check_equal_mass(a, b)

    c64 = c.detach().to("cpu", torch.float64).numpy()  # (B, n, m)
    a64 = a.detach().to("cpu", torch.float64).numpy()  # (B, n)
    b64 = b.detach().to("cpu", torch.float64).numpy()  # (B, m)
    plans, fs, gs = np.zeros((bsz, n, m)), np.zeros((bsz, n)), np.zeros((bsz, m))
    values, codes = np.zeros(bsz), np.zeros(bsz, dtype=np.int64)
    for k in range(bsz):
        plans[k], fs[k], gs[k], values[k], codes[k] = _solve_one(c64[k], a64[k], b64[k], max_iter)

    converged_np = codes == _OPTIMAL
    if not converged_np.all():
        bad = int((~converged_np).sum())
        warnings.warn(
            f"emd did not reach an optimal solution for {bad} of {bsz} problem(s) within "
            f"max_iter={max_iter} network simplex iterations (POT result codes "
            f"{sorted(set(codes[~converged_np].tolist()))}). Increase max_iter.",
            ConvergenceWarning,
            stacklevel=2,
        )

    def back(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(device=c.device, dtype=c.dtype)

    plan, f, g = back(plans), back(fs), back(gs)  # (B, n, m), (B, n), (B, m)
    value = _EnvelopeLinearValue.apply(c, a, b, back(values), plan, f, g)  # (B,)
    plan64 = torch.from_numpy(plans)
    error = (plan64.sum(-1) - torch.from_numpy(a64)).abs().sum(-1) + (
        plan64.sum(-2) - torch.from_numpy(b64)
    ).abs().sum(-1)  # (B,)
    converged = torch.from_numpy(converged_np).to(c.device)

    return OTResult.from_batched(
        geom.batched, f=f, g=g, value=value, converged=converged, error=back(error.numpy()),
        a=a, b=b, plan_fn=lambda: plan, cost=c, n_iter=None, eps=None, solver="emd",
    )
