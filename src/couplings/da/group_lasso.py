r"""OT-GL: entropic transport with a class-based group-lasso regularizer (Courty et al. 2017).

.. math::

    \gamma = \arg\min_{\gamma \in U(a, b)} \langle \gamma, C\rangle
        + \varepsilon\,\mathrm{KL}(\gamma \,|\, a \otimes b)
        + \eta \sum_j \sum_c \|\gamma(I_c, j)\|_2,

where :math:`I_c` are the source points of class :math:`c`: each target point is encouraged to
receive mass from a single class. Solved by the generalized conditional gradient of
:mod:`couplings.da._cg`: each step is an entropic OT (:func:`couplings.sinkhorn`) with the cost
:math:`C + \eta \nabla\Omega(\gamma^k)`, where
:math:`\nabla\Omega(\gamma)_{ij} = \gamma_{ij} / \|\gamma(I_{c(i)}, j)\|_2` and 0 on an all-zero
group (the minimum-norm subgradient), followed by a line search on the full objective.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import (
    check_choice,
    check_nonnegative_scalar,
    check_positive_int,
    check_positive_scalar,
)
from ._cg import LINE_SEARCHES, Regularizer, conditional_gradient
from .base import MISSING_LABEL, BaseTransport

__all__ = ["GroupLassoTransport", "group_lasso_regularizer"]


def group_lasso_regularizer(ys: torch.Tensor, dtype: torch.dtype) -> Regularizer:
    r"""The group lasso :math:`\Omega(\gamma) = \sum_j \sum_c \|\gamma(I_c, j)\|_2` for labels
    ``ys`` ``(n,)`` (one group per class and target column)."""
    classes, inverse = torch.unique(ys, return_inverse=True)
    onehot = torch.nn.functional.one_hot(inverse, len(classes)).to(dtype)  # (n, K)

    def norms(g: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(onehot.T @ (g * g))  # (K, m)

    def value(g: torch.Tensor) -> torch.Tensor:
        return norms(g).sum()

    def grad(g: torch.Tensor) -> torch.Tensor:
        per_entry = norms(g)[inverse]  # (n, m): norm of the entry's group
        pos = per_entry > 0
        return torch.where(pos, g / torch.where(pos, per_entry, torch.ones_like(per_entry)), 0.0)

    return Regularizer(value=value, grad=grad, curvature=None)


class GroupLassoTransport(BaseTransport):
    r"""OT-GL: entropic OT with a class-based group-lasso regularizer.

    .. math::

        \gamma = \arg\min_{\gamma \in U(a, b)} \langle \gamma, C\rangle
            + \varepsilon\,\mathrm{KL}(\gamma \,|\, a \otimes b)
            + \eta \sum_j \sum_c \|\gamma(I_c, j)\|_2

    (:math:`I_c`: source points of class :math:`c`), solved by the generalized conditional
    gradient (each step a :func:`couplings.sinkhorn` solve on :math:`C + \eta\nabla\Omega`, warm
    started from the previous step's potentials, then a line search). Needs the source labels.

    Args:
        eps: entropic regularization :math:`\varepsilon > 0` (the paper's :math:`\lambda`).
        eta: class regularization :math:`\eta \geq 0`.
        max_iter: conditional gradient iterations at most; tol: stop when the relative gap (an
            upper bound on the relative suboptimality) or the relative decrease of the objective
            is ``<= tol``. Not converging warns (:class:`~couplings.ConvergenceWarning`).
        line_search: ``"exact"`` (bisection on the derivative of the convex objective along the
            step) or ``"armijo"`` (backtracking from 1).
        inner_tol, inner_max_iter: of each Sinkhorn solve.
        metric, norm, limit_max: see :class:`~couplings.da.base.BaseTransport`.

    Attributes:
        result_: :class:`~couplings.da.CGResult` (objective ``value``, ``history``,
            ``converged``, ``n_iter``, ``error``).

    Example:
        >>> import numpy as np
        >>> from couplings.da import GroupLassoTransport
        >>> rng = np.random.default_rng(0)
        >>> xs = np.concatenate([rng.normal(size=(20, 2)), rng.normal(size=(20, 2)) + 4])
        >>> ys = np.repeat([0, 1], 20)
        >>> xt = xs @ np.array([[0.8, -0.6], [0.6, 0.8]]) + 1.0
        >>> est = GroupLassoTransport(eps=0.5, eta=1.0).fit(xs, ys, xt)
        >>> labels = est.transform_labels(ys)          # (40, 2) class shares per target point
        >>> bool((labels.max(1) > 0.99).mean() > 0.9)  # nearly every target gets one class
        True

    Names elsewhere: POT ``ot.da.SinkhornL1l2Transport(reg_e, reg_cl, max_iter,
    max_inner_iter)``: ``reg_e`` = ``eps``, ``reg_cl`` = ``eta``. POT runs ``max_iter``
    (default 10) steps with an Armijo search on :math:`\langle\gamma, C\rangle + \eta\Omega`
    only (the entropy left out of the line search); the objective here includes it.

    References:
        Courty, Flamary, Tuia and Rakotomamonjy, "Optimal Transport for Domain Adaptation",
        IEEE TPAMI 2017; Rakotomamonjy, Flamary and Courty, "Generalized conditional gradient:
        analysis of convergence and applications", arXiv:1510.06567, 2015.
    """

    def __init__(self, *, eps: float = 1.0, eta: float = 0.1, max_iter: int = 100,
                 tol: float = 1e-6, line_search: str = "exact", inner_tol: float = 1e-9,
                 inner_max_iter: int = 10_000, metric: Any = "sqeuclidean",
                 norm: str | None = None, limit_max: float = 100.0):
        super().__init__(metric=metric, norm=norm, limit_max=limit_max)
        self.eps = check_positive_scalar(eps, "eps")
        self.eta = check_nonnegative_scalar(eta, "eta")
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.tol = check_positive_scalar(tol, "tol")
        self.line_search = check_choice(line_search, "line_search", LINE_SEARCHES)
        self.inner_tol = check_positive_scalar(inner_tol, "inner_tol")
        self.inner_max_iter = check_positive_int(inner_max_iter, "inner_max_iter")

    def _fit_coupling(self, cost, a, b, xs, xt, ys, yt):
        if ys is None:
            raise ValueError(
                "GroupLassoTransport needs the source labels: call fit(Xs, ys, Xt) with ys of "
                "shape (n_s,); the group-lasso groups are the source classes."
            )
        if bool((ys == MISSING_LABEL).any()):
            raise ValueError(
                "GroupLassoTransport needs every source point labelled; ys contains "
                f"{int((ys == MISSING_LABEL).sum())} entries equal to -1."
            )
        res = conditional_gradient(
            cost, a, b, group_lasso_regularizer(ys, cost.dtype), eta=self.eta, eps=self.eps,
            max_iter=self.max_iter, tol=self.tol, line_search=self.line_search,
            inner_max_iter=self.inner_max_iter, inner_tol=self.inner_tol,
            name="GroupLassoTransport",
        )
        return res.plan, res

    def _params(self):
        return {"eps": self.eps, "eta": self.eta, "max_iter": self.max_iter, "tol": self.tol,
                "line_search": self.line_search, **super()._params()}
