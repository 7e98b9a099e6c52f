r"""Barycentric projection: the map a transport plan induces.

For a plan :math:`P` between points :math:`x_1, \dots, x_n` and :math:`y_1, \dots, y_m`,

.. math::

    \bar T(x_i) = \frac{\sum_j P_{ij}\, y_j}{\sum_j P_{ij}}
        = \mathbb{E}_{Y \sim P(\cdot \mid x_i)}[Y],

the conditional mean of the target given the source point. For the squared Euclidean cost and
an optimal plan supported on a graph (a permutation, a Monge map) it is that map; for an entropic
plan it is a smoothed map, biased toward the target mean by :math:`O(\varepsilon)`.

References:
    Seguy, Damodaran, Flamary, Courty, Rolet and Blondel, "Large-Scale Optimal Transport and
    Mapping Estimation", ICLR 2018, section 4; Courty et al., "Optimal Transport for Domain
    Adaptation", TPAMI 2017.
"""

from __future__ import annotations

import torch

from .._validation import as_tensor, check_finite, check_float, check_same_dtype_device
from ..result import OTResult

__all__ = ["barycentric_projection"]


def barycentric_projection(plan, y) -> torch.Tensor:
    r"""Barycentric projection :math:`\bar T(x_i) = \sum_j P_{ij} y_j / \sum_j P_{ij}`.

    Args:
        plan: a transport plan ``(n, m)`` or ``(B, n, m)``, non-negative, or an
            :class:`~couplings.OTResult` (from :func:`~couplings.sinkhorn` or
            :func:`~couplings.emd`), whose ``plan`` is used.
        y: target points ``(m, d)``, or ``(B, m, d)`` for a batched plan (an unbatched ``y`` is
            shared by the batch).

    Returns:
        The projected points ``(n, d)`` or ``(B, n, d)``, with the plan's dtype and device.

    Raises:
        TypeError, ValueError: mismatched shapes, dtypes or devices, non-finite or negative
            entries, or a row of the plan with zero mass (a source point that sends nothing has
            no image; drop it, or give it positive weight).

    Example:
        >>> import torch
        >>> y = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
        >>> plan = torch.tensor([[0.25, 0.25, 0.0], [0.0, 0.0, 0.5]])
        >>> barycentric_projection(plan, y)
        tensor([[1., 0.],
                [0., 4.]])
    """
    if isinstance(plan, OTResult):
        plan = plan.plan
    plan, y = as_tensor(plan, "plan"), as_tensor(y, "y")
    check_float(plan, "plan")
    check_float(y, "y")
    check_same_dtype_device(plan=plan, y=y)
    if plan.dim() not in (2, 3):
        raise ValueError(f"plan must have shape (n, m) or (B, n, m), got {tuple(plan.shape)}.")
    batched = plan.dim() == 3
    m = plan.shape[-1]
    if y.dim() == 2 and y.shape[0] == m:
        pass
    elif batched and y.dim() == 3 and y.shape[0] == plan.shape[0] and y.shape[1] == m:
        pass
    else:
        expected = f"({m}, d)" + (f" or ({plan.shape[0]}, {m}, d)" if batched else "")
        raise ValueError(
            f"y must have shape {expected} to match the {m} columns of the plan of shape "
            f"{tuple(plan.shape)}, got {tuple(y.shape)}."
        )
    check_finite(plan, "plan")
    check_finite(y, "y")
    if bool((plan < 0).any()):
        raise ValueError(f"plan must be non-negative, got min {float(plan.min()):.3g}.")
    mass = plan.sum(-1, keepdim=True)  # (..., n, 1)
    if bool((mass <= 0).any()):
        empty = (mass.squeeze(-1) <= 0).nonzero().tolist()
        raise ValueError(
            f"every row of the plan needs positive mass to have an image; rows {empty[:10]} "
            f"(index{' (batch, row)' if batched else ''}) sum to 0."
        )
    return (plan @ y) / mass  # (..., n, d)
