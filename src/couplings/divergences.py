r"""Sinkhorn divergences: debiased entropic OT between point clouds, and its ``nn.Module``.

.. math::

    S_\varepsilon(\alpha, \beta) = \mathrm{OT}_\varepsilon(\alpha, \beta)
        - \tfrac12 \mathrm{OT}_\varepsilon(\alpha, \alpha)
        - \tfrac12 \mathrm{OT}_\varepsilon(\beta, \beta)

with :math:`\mathrm{OT}_\varepsilon` the entropic cost with relative entropy to
:math:`\alpha \otimes \beta` (:func:`couplings.sinkhorn`'s ``value``). For costs such as
:math:`\|x - y\|_2^2` and :math:`\|x - y\|_2` it is non-negative, zero exactly when the measures
are equal, and interpolates between OT (:math:`\varepsilon \to 0`) and an MMD
(:math:`\varepsilon \to \infty`).

For measures of different masses, the unbalanced divergence (Sejourne et al. 2019) uses the
unbalanced entropic cost :math:`\mathrm{UOT}_{\varepsilon,\rho}` (marginals relaxed by
:math:`\rho\,\mathrm{KL}`, see :func:`couplings.sinkhorn`'s ``rho``):

.. math::

    S_{\varepsilon,\rho}(\alpha, \beta) = \mathrm{UOT}_{\varepsilon,\rho}(\alpha, \beta)
        - \tfrac12 \mathrm{UOT}_{\varepsilon,\rho}(\alpha, \alpha)
        - \tfrac12 \mathrm{UOT}_{\varepsilon,\rho}(\beta, \beta)
        + \tfrac{\varepsilon}{2} (m(\alpha) - m(\beta))^2,

which tends to the balanced one as :math:`\rho \to \infty` for probability measures.

References:
    Genevay, Peyre and Cuturi, "Learning Generative Models with Sinkhorn Divergences",
    AISTATS 2018. Feydy et al., "Interpolating between Optimal Transport and MMD using Sinkhorn
    Divergences", AISTATS 2019. Sejourne, Feydy, Vialard, Trouve and Peyre, "Sinkhorn
    Divergences for Unbalanced Optimal Transport", arXiv 1910.12958, 2019.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn

from ._validation import check_reduction, reduce_batch
from .geometry import PointCloud
from .solvers.sinkhorn import Implicit, sinkhorn

__all__ = ["sinkhorn_divergence", "SinkhornLoss"]


def sinkhorn_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    eps: float,
    cost="sqeuclidean",
    debias: bool = True,
    tol: float | None = None,
    max_iter: int = 1000,
    scaling: float | str | None = "auto",
    grad: str | Implicit = "envelope",
    rho: float | None = None,
    reach: float | None = None,
    backend: str = "auto",
    newton: bool = False,
) -> torch.Tensor:
    r"""Debiased Sinkhorn divergence between two weighted point clouds.

    Args:
        x: points ``(B, n, d)`` or ``(n, d)``.
        y: points ``(B, m, d)`` or ``(m, d)``.
        a: weights of ``x``, ``(B, n)`` or ``(n,)``; ``None`` for uniform.
        b: weights of ``y``, ``(B, m)`` or ``(m,)``; ``None`` for uniform.
        eps: entropic regularization, in the units of the cost.
        cost: a cost name of :mod:`couplings.costs` or a callable.
        debias: subtract the two self-transport terms (``False`` gives
            :math:`\mathrm{OT}_\varepsilon(\alpha, \beta)` alone).
        tol, max_iter, scaling: passed to :func:`~couplings.sinkhorn`.
        grad: differentiation mode of the three solves; ``"envelope"`` (the default) is exact at
            convergence for a value and needs no backward solve.
        rho: marginal relaxation :math:`\rho > 0` (in the units of the cost) for the unbalanced
            divergence; ``None`` (default) is balanced. The masses of ``a`` and ``b`` may then
            differ.
        reach: the same as a length, as GeomLoss's ``reach``: ``rho = 2 * reach**2`` for the
            ``"sqeuclidean"`` cost (GeomLoss halves that cost and uses ``reach**2``),
            ``rho = reach`` for ``"euclidean"``. Give at most one of ``rho`` and ``reach``.
        backend: how the three solves evaluate their updates (see :func:`couplings.sinkhorn`);
            ``"online"`` never forms an ``n x m`` matrix (balanced, ``grad="envelope"``).
        newton: finish the transport solve between ``x`` and ``y`` with Newton steps where its
            iterations left it above ``tol`` (see :func:`couplings.sinkhorn`; balanced, a dense
            backend). The two self-transport solves are symmetric and converge in tens of
            iterations at eps as small as 0.001 x the mean cost (measured on the benchmark's
            point clouds in float64 to tol 1e-8: 12-46 iterations), where the cross solve can
            crawl for thousands.

    Returns:
        The divergence, ``(B,)`` or a scalar.

    Example:
        >>> import torch
        >>> from couplings import sinkhorn_divergence
        >>> x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
        >>> abs(float(sinkhorn_divergence(x, x, eps=0.5))) < 1e-6  # 0, to float32 rounding
        True
        >>> bool(sinkhorn_divergence(x, x + 1.0, eps=0.5) > 1.5)
        True
        >>> a = torch.full((100,), 1.5 / 100)  # unbalanced: masses 1.5 and 1
        >>> float(sinkhorn_divergence(x, x, a, eps=0.5, rho=1.0)) > 0
        True
    """
    rho = _resolve_rho(rho, reach, cost)
    opts = dict(eps=eps, tol=tol, max_iter=max_iter, scaling=scaling, grad=grad, rho=rho,
                backend=backend)
    xy = PointCloud(x, y, cost)
    res = sinkhorn(xy, a, b, newton=newton, **opts)
    value = res.value
    if not debias:
        return value
    xx = sinkhorn(PointCloud(x, x, cost), a, a, symmetric=True, **opts).value
    yy = sinkhorn(PointCloud(y, y, cost), b, b, symmetric=True, **opts).value
    div = value - 0.5 * (xx + yy)
    if rho is not None:  # the mass terms eps m(a) m(b) of the three values, completed
        ma, mb = res.a.sum(-1), res.b.sum(-1)
        div = div + 0.5 * eps * (ma - mb) ** 2
    return div


def _resolve_rho(rho, reach, cost) -> float | None:
    """The unbalanced ``rho`` from ``rho`` or GeomLoss's ``reach``; ``None`` when balanced."""
    if rho is not None and reach is not None:
        raise ValueError(f"give rho or reach, not both; got rho={rho!r}, reach={reach!r}.")
    if reach is None:
        if rho is not None and (isinstance(rho, bool) or not isinstance(rho, Real)):
            raise TypeError(
                f"rho must be a positive number or None for the divergence, got {rho!r} "
                "(a pair (rho_a, rho_b) is not symmetric; use couplings.sinkhorn for it)."
            )
        return None if rho is None or math.isinf(rho) else rho
    if isinstance(reach, bool) or not isinstance(reach, Real) or not reach > 0:
        raise ValueError(f"reach must be a number > 0, got {reach!r}.")
    if math.isinf(reach):
        return None
    if cost == "sqeuclidean":
        return 2.0 * float(reach) ** 2
    if cost == "euclidean":
        return float(reach)
    raise ValueError(
        f"reach is defined for the 'sqeuclidean' and 'euclidean' costs, got cost={cost!r}; "
        "give rho (in the units of the cost) instead."
    )


class SinkhornLoss(nn.Module):
    r"""The Sinkhorn divergence as a loss module.

    Args:
        eps: entropic regularization.
        cost: a cost name of :mod:`couplings.costs` or a callable.
        debias: use the debiased divergence (default) or the raw entropic cost.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
        **solver_options: ``tol``, ``max_iter``, ``scaling``, ``grad``, and ``rho`` or
            ``reach`` for the unbalanced divergence, passed to :func:`sinkhorn_divergence`.

    Example:
        >>> import torch
        >>> from couplings import SinkhornLoss
        >>> loss = SinkhornLoss(eps=0.5)
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(64, 2, generator=g, requires_grad=True)
        >>> loss(x, torch.randn(80, 2, generator=g)).backward()
        >>> x.grad.shape
        torch.Size([64, 2])
    """

    def __init__(
        self, eps: float, cost="sqeuclidean", debias: bool = True, reduction: str = "mean",
        **solver_options,
    ):
        super().__init__()
        self.eps, self.cost, self.debias = eps, cost, debias
        self.reduction = check_reduction(reduction)
        self.solver_options = solver_options

    def forward(self, x, y, a=None, b=None) -> torch.Tensor:
        d = sinkhorn_divergence(
            x, y, a, b, eps=self.eps, cost=self.cost, debias=self.debias, **self.solver_options
        )
        return reduce_batch(d, self.reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, cost={self.cost!r}, debias={self.debias}"
