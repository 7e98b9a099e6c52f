r"""OT-Laplace: transport that keeps neighbours together (Courty et al. 2017, section 4.1).

With :math:`S_s` ``(n_s, n_s)`` and :math:`S_t` ``(n_t, n_t)`` similarity graphs of the source
and target samples and their Laplacians :math:`L = \mathrm{diag}(S 1) - S`,

.. math::

    \Omega_\alpha(\gamma) = (1 - \alpha)\,\mathrm{Tr}(X_t^T \gamma^T L_s \gamma X_t)
        + \alpha\,\mathrm{Tr}(X_s^T \gamma L_t \gamma^T X_s),

which for uniform weights is :math:`\tfrac{1-\alpha}{2 n_s^2} \sum_{ij} S_s(i, j)
\|\hat x^s_i - \hat x^s_j\|^2` (plus the same from the target side): similar source points
must land close together after the barycentric mapping :math:`\hat x^s = n_s \gamma X_t`. The
coupling solves

.. math::

    \min_{\gamma \in U(a, b)} \langle \gamma, C\rangle + \eta\,\Omega_\alpha(\gamma)
        + \varepsilon\,\mathrm{KL}(\gamma \,|\, a \otimes b)

by conditional gradient (:mod:`couplings.da._cg`), with exact inner problems
(:func:`couplings.emd`) when :math:`\varepsilon = 0` and Sinkhorn ones otherwise. The objective
is quadratic in :math:`\gamma`, so for :math:`\varepsilon = 0` the optimal step along a direction
:math:`d` is closed-form: :math:`t^* = \min(1, -\langle\nabla F, d\rangle / (2\eta\,\Omega(d)))`.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import costs as _costs
from .._validation import (
    check_choice,
    check_nonnegative_scalar,
    check_positive_int,
    check_positive_scalar,
)
from ._cg import LINE_SEARCHES, Regularizer, conditional_gradient
from .base import MISSING_LABEL, BaseTransport

__all__ = ["LaplacianTransport", "knn_graph", "laplacian_regularizer"]


def knn_graph(x: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """Symmetric binary k-nearest-neighbour similarity ``(S + S^T) / 2`` ``(n, n)`` of points
    ``x`` ``(n, d)`` (a point is not its own neighbour), as POT's ``kneighbors_graph`` use."""
    n = x.shape[0]
    d = _costs.sqeuclidean(x, x)
    d.fill_diagonal_(float("inf"))
    idx = d.topk(n_neighbors, dim=1, largest=False).indices  # (n, k)
    s = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    s.scatter_(1, idx, 1.0)
    return 0.5 * (s + s.T)


def laplacian_regularizer(xs: torch.Tensor, xt: torch.Tensor, ls: torch.Tensor,
                          lt: torch.Tensor, alpha: float) -> Regularizer:
    r""":math:`\Omega_\alpha` of the module docstring for Laplacians ``ls`` ``(n_s, n_s)`` and
    ``lt`` ``(n_t, n_t)`` (symmetric): value, gradient
    :math:`2(1-\alpha) L_s \gamma X_t X_t^T + 2\alpha X_s X_s^T \gamma L_t` and quadratic form."""

    def value(g: torch.Tensor) -> torch.Tensor:
        u = g @ xt  # (n_s, d)
        v = g.T @ xs  # (n_t, d)
        return (1 - alpha) * (u * (ls @ u)).sum() + alpha * (v * (lt @ v)).sum()

    def grad(g: torch.Tensor) -> torch.Tensor:
        out = 2 * (1 - alpha) * (ls @ (g @ xt)) @ xt.T  # (n_s, n_t)
        if alpha:
            out = out + 2 * alpha * xs @ (lt @ (g.T @ xs)).T
        return out

    return Regularizer(value=value, grad=grad, curvature=value)


class LaplacianTransport(BaseTransport):
    r"""OT-Laplace: OT regularized by graph Laplacians of the source and target samples.

    .. math::

        \min_{\gamma \in U(a, b)} \langle \gamma, C\rangle
            + \eta\big[(1 - \alpha)\,\mathrm{Tr}(X_t^T \gamma^T L_s \gamma X_t)
            + \alpha\,\mathrm{Tr}(X_s^T \gamma L_t \gamma^T X_s)\big]
            + \varepsilon\,\mathrm{KL}(\gamma \,|\, a \otimes b)

    with :math:`L = \mathrm{diag}(S1) - S` for symmetric binary kNN graphs :math:`S`
    (:func:`knn_graph`); when source labels are given the source graph is pruned across classes
    (:math:`S_s(i, j) = 0` if :math:`y_i \neq y_j`). Solved by conditional gradient with exact
    (:math:`\varepsilon = 0`, closed-form step) or entropic inner problems. The regularizer is
    computed on the raw features (``norm`` only rescales :math:`C`), so ``eta`` scales like
    :math:`C` divided by squared feature distances.

    Args:
        eta: Laplacian weight :math:`\eta \geq 0`.
        alpha: weight of the target-graph term in [0, 1] (0: source graph only; the paper's
            symmetric version uses 0.5).
        eps: entropic regularization :math:`\varepsilon \geq 0` (0: exact inner problems).
        n_neighbors: ``k`` of the kNN graphs.
        prune: remove cross-class edges of the source graph; ``None`` (default) prunes when
            ``ys`` is given; ``True`` requires ``ys``.
        max_iter, tol, line_search, inner_tol, inner_max_iter: of the conditional gradient (see
            :class:`~couplings.da.GroupLassoTransport`); ``line_search="exact"`` is closed-form
            when ``eps = 0``.
        metric, norm, limit_max: see :class:`~couplings.da.base.BaseTransport`.

    Attributes:
        result_: :class:`~couplings.da.CGResult` (objective ``value``, ``history``,
            ``converged``, ``n_iter``, ``error``).
        laplacians_: the graph Laplacians ``(L_s, L_t)`` used, as tensors.

    Example:
        >>> import numpy as np
        >>> from couplings.da import ExactTransport, LaplacianTransport
        >>> rng = np.random.default_rng(0)
        >>> xs = rng.normal(size=(40, 2)); xt = rng.normal(size=(40, 2)) + [3.0, 0.0]
        >>> lap = LaplacianTransport(eta=1.0, n_neighbors=4).fit(xs, Xt=xt)
        >>> lap.converged_, lap.coupling_.shape
        (True, (40, 40))
        >>> def spread(moved):  # mean squared distance between moved kNN-neighbours
        ...     ls = lap.laplacians_[0].numpy()
        ...     return np.trace(moved.T @ ls @ moved) / len(moved)
        >>> exact = ExactTransport().fit(xs, Xt=xt)
        >>> bool(spread(lap.transform(xs)) < spread(exact.transform(xs)))
        True

    Names elsewhere: POT ``ot.da.EMDLaplaceTransport(reg_lap, reg_src, similarity_param,
    max_iter)`` (exact inner problems only, no pruning, k = 3 by default): ``reg_lap`` =
    ``eta``, ``reg_src`` = ``1 - alpha`` (POT's weight is on the source term), ``similarity_param``
    = ``n_neighbors``; use ``prune=False`` to match it.

    References:
        Courty, Flamary, Tuia and Rakotomamonjy, "Optimal Transport for Domain Adaptation",
        IEEE TPAMI 2017, section 4.1; Flamary, Courty, Tuia and Rakotomamonjy, "Optimal transport
        with Laplacian regularization", NIPS OTML workshop 2014.
    """

    def __init__(self, *, eta: float = 1.0, alpha: float = 0.5, eps: float = 0.0,
                 n_neighbors: int = 8, prune: bool | None = None, max_iter: int = 100,
                 tol: float = 1e-6, line_search: str = "exact", inner_tol: float = 1e-9,
                 inner_max_iter: int = 10_000, metric: Any = "sqeuclidean",
                 norm: str | None = None, limit_max: float = 100.0):
        super().__init__(metric=metric, norm=norm, limit_max=limit_max)
        self.eta = check_nonnegative_scalar(eta, "eta")
        self.alpha = check_nonnegative_scalar(alpha, "alpha")
        if self.alpha > 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
        self.eps = check_nonnegative_scalar(eps, "eps")
        self.n_neighbors = check_positive_int(n_neighbors, "n_neighbors")
        if prune not in (None, True, False):
            raise TypeError(f"prune must be None, True or False, got {prune!r}.")
        self.prune = prune
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.tol = check_positive_scalar(tol, "tol")
        self.line_search = check_choice(line_search, "line_search", LINE_SEARCHES)
        self.inner_tol = check_positive_scalar(inner_tol, "inner_tol")
        self.inner_max_iter = check_positive_int(inner_max_iter, "inner_max_iter")

    def _graphs(self, xs, xt, ys):
        for name, x in (("Xs", xs), ("Xt", xt)):
            if self.n_neighbors >= x.shape[0]:
                raise ValueError(
                    f"n_neighbors={self.n_neighbors} must be smaller than the number of points "
                    f"of {name} ({x.shape[0]})."
                )
        if self.prune and ys is None:
            raise ValueError(
                "LaplacianTransport(prune=True) needs the source labels to prune the source "
                "graph across classes: call fit(Xs, ys, Xt), or use prune=False."
            )
        ss, st = knn_graph(xs, self.n_neighbors), knn_graph(xt, self.n_neighbors)
        if ys is not None and self.prune is not False:
            known = ys != MISSING_LABEL
            cross = (ys.unsqueeze(1) != ys.unsqueeze(0)) & known.unsqueeze(1) & known.unsqueeze(0)
            ss = torch.where(cross, torch.zeros_like(ss), ss)
        ls = torch.diag(ss.sum(1)) - ss
        lt = torch.diag(st.sum(1)) - st
        return ls, lt

    def _fit_coupling(self, cost, a, b, xs, xt, ys, yt):
        ls, lt = self._graphs(xs, xt, ys)
        self.laplacians_ = (ls, lt)
        reg = laplacian_regularizer(xs, xt, ls, lt, self.alpha)
        res = conditional_gradient(
            cost, a, b, reg, eta=self.eta, eps=self.eps, max_iter=self.max_iter, tol=self.tol,
            line_search=self.line_search, inner_max_iter=self.inner_max_iter,
            inner_tol=self.inner_tol, name="LaplacianTransport",
        )
        return res.plan, res

    def _params(self):
        return {"eta": self.eta, "alpha": self.alpha, "eps": self.eps,
                "n_neighbors": self.n_neighbors, "prune": self.prune, **super()._params()}
