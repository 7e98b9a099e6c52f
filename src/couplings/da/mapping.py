r"""Joint estimation of a coupling and a transport map (Perrot, Courty, Flamary, Habrard 2016).

The coupling :math:`\gamma` and a map :math:`T(x) = \phi(x)^T L` (linear :math:`\phi(x) = x`, or
:math:`\phi(x) = (k(x, x^s_1), \dots, k(x, x^s_{n_s}))` with the Gaussian kernel
:math:`k(x, y) = e^{-\|x - y\|^2 / (2\sigma^2)}`, optionally with a constant feature for a bias)
minimize

.. math::

    J(\gamma, L) = \|\Phi L - \mathrm{diag}(a)^{-1}\gamma X_t\|_F^2
        + \mu\, n_s \langle \gamma, C\rangle + \eta\, R(L),

(:math:`\mathrm{diag}(a)^{-1}\gamma X_t = n_s \gamma X_t` is the barycentric mapping for uniform
weights) with :math:`R(L) = \|L - I\|_F^2` for the linear map (bias row not penalized) and the
RKHS norm :math:`\mathrm{Tr}(L^T K L)` for the kernel map. Alternating minimization: :math:`L`
by ridge regression in closed form, :math:`\gamma` by a few conditional-gradient steps with exact
inner problems (:func:`couplings.emd`) and closed-form line search (:math:`J` is quadratic in
:math:`\gamma`). These are POT's ``MappingTransport`` objective and parameters.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from .. import costs as _costs
from .._validation import (
    check_choice,
    check_nonnegative_scalar,
    check_positive_int,
    check_positive_scalar,
)
from ..result import ConvergenceWarning
from ..solvers.exact import emd
from ._cg import Regularizer, conditional_gradient
from .base import BaseTransport, _to_output

__all__ = ["MappingTransport"]

KERNELS = ("linear", "gaussian")


class MappingTransport(BaseTransport):
    r"""Coupling and transport map estimated jointly (Perrot et al. 2016).

    Minimizes, alternately in :math:`L` (closed form) and :math:`\gamma` (conditional gradient),

    .. math::

        J(\gamma, L) = \|\Phi L - \mathrm{diag}(a)^{-1}\gamma X_t\|_F^2
            + \mu\, n_s \langle \gamma, C\rangle + \eta\, R(L),

    with :math:`\Phi = X_s` (``kernel="linear"``, :math:`R(L) = \|L - I\|_F^2`) or the Gaussian
    Gram matrix :math:`K_{ii'} = e^{-\|x_i - x_{i'}\|^2/(2\sigma^2)}` (``kernel="gaussian"``,
    :math:`R(L) = \mathrm{Tr}(L^T K L)`), plus a column of ones when ``bias``. :meth:`transform`
    applies the learned map :math:`T(x) = \phi(x)^T L` to any points (fit points included);
    :meth:`inverse_transform` and the label methods use the coupling.

    Args:
        kernel: ``"linear"`` or ``"gaussian"``.
        mu: weight of the transport cost :math:`\mu > 0`.
        eta: weight of the map's regularization :math:`\eta \geq 0` (> 0 for the kernel map
            without bias, whose system is otherwise singular in general).
        bias: add a constant feature (an affine map).
        sigma: bandwidth :math:`\sigma > 0` of the Gaussian kernel.
        max_iter: alternating iterations at most; tol: stop when the relative decrease of
            :math:`J` is ``<= tol`` (not converging warns).
        max_inner_iter, inner_tol: conditional-gradient steps per coupling update and their
            tolerance.
        metric, norm: see :class:`~couplings.da.base.BaseTransport`.

    Attributes:
        mapping_: :math:`L` ``(d (+1), d)`` or ``(n_s (+1), d)``; objective_: the final
            :math:`J`; history_: :math:`J` after each iteration.

    Example:
        >>> import numpy as np
        >>> from couplings.da import MappingTransport
        >>> rng = np.random.default_rng(0)
        >>> xs = rng.normal(size=(50, 2))
        >>> A = np.array([[1.2, 0.3], [0.3, 0.9]])  # symmetric positive definite
        >>> xt = xs @ A.T + [2.0, -1.0]                # an affine image: OT recovers it
        >>> est = MappingTransport(kernel="linear", bias=True, mu=1.0, eta=1e-6).fit(xs, Xt=xt)
        >>> est.mapping_.round(3)  # (d + 1, d): the linear part, then the bias row
        array([[ 1.2,  0.3],
               [ 0.3,  0.9],
               [ 2. , -1. ]])
        >>> est.transform(np.array([[1.0, 1.0]])).round(3)  # the map applies out of sample
        array([[3.5, 0.2]])

    Names elsewhere: POT ``ot.da.MappingTransport(mu, eta, bias, kernel, sigma, max_iter, tol,
    max_inner_iter, inner_tol)``, same names and objective (uniform weights). POT's
    ``transform`` returns the barycentric mapping on the fit points and the map elsewhere; here
    the map is applied everywhere (use :meth:`barycentric_transform` for the former).

    References:
        Perrot, Courty, Flamary and Habrard, "Mapping Estimation for Discrete Optimal
        Transport", NeurIPS 2016.
    """

    def __init__(self, *, kernel: str = "linear", mu: float = 1.0, eta: float = 0.001,
                 bias: bool = False, sigma: float = 1.0, max_iter: int = 100, tol: float = 1e-5,
                 max_inner_iter: int = 10, inner_tol: float = 1e-6,
                 metric: Any = "sqeuclidean", norm: str | None = None):
        super().__init__(metric=metric, norm=norm)
        self.kernel = check_choice(kernel, "kernel", KERNELS)
        self.mu = check_positive_scalar(mu, "mu")
        self.eta = check_nonnegative_scalar(eta, "eta")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {bias!r}.")
        self.bias = bias
        self.sigma = check_positive_scalar(sigma, "sigma")
        if self.kernel == "gaussian" and self.eta == 0 and not bias:
            raise ValueError("kernel='gaussian' needs eta > 0 (kernel ridge regression).")
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.tol = check_positive_scalar(tol, "tol")
        self.max_inner_iter = check_positive_int(max_inner_iter, "max_inner_iter")
        self.inner_tol = check_positive_scalar(inner_tol, "inner_tol")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\Phi(x)` ``(k, p)``."""
        if self.kernel == "gaussian":
            phi = torch.exp(-_costs.sqeuclidean(x, self._xs) / (2 * self.sigma**2))
        else:
            phi = x
        if self.bias:
            phi = torch.cat([phi, phi.new_ones(phi.shape[0], 1)], dim=1)
        return phi

    def _fit_coupling(self, cost, a, b, xs, xt, ys, yt):
        self._xs = xs
        ns, d = xs.shape
        phi = self._features(xs)  # (n_s, p)
        p = phi.shape[1]
        # R(L) = Tr((L - L0)^T P (L - L0)) and the normal equations (Phi^T Phi + eta P) L = rhs
        if self.kernel == "linear":
            pen = torch.eye(p, dtype=xs.dtype, device=xs.device)
            if self.bias:
                pen[-1, -1] = 0.0
            l0 = torch.eye(p, d, dtype=xs.dtype, device=xs.device)
        else:
            pen = torch.eye(p, dtype=xs.dtype, device=xs.device)
            pen[:ns, :ns] = phi[:, :ns]
            l0 = torch.zeros(p, d, dtype=xs.dtype, device=xs.device)
        gram = phi.T @ phi + self.eta * pen  # (p, p)
        inv_a = (1.0 / a).unsqueeze(1)  # (n_s, 1)
        lin_cost = self.mu * ns * cost  # (n_s, n_t)

        def solve_l(g):
            target = inv_a * (g @ xt)  # (n_s, d) barycentric images
            if self.kernel == "gaussian" and not self.bias:  # K (K + eta I) L = K target
                eye = torch.eye(ns, dtype=xs.dtype, device=xs.device)
                return torch.linalg.solve(phi + self.eta * eye, target)
            rhs = phi.T @ target + self.eta * pen @ l0
            return torch.linalg.solve(gram, rhs)

        def objective(g, L):
            fit = ((phi @ L - inv_a * (g @ xt)) ** 2).sum()
            r = L - l0
            return fit + (lin_cost * g).sum() + self.eta * (r * (pen @ r)).sum()

        quad = Regularizer(
            value=lambda g: ((inv_a * (g @ xt)) ** 2).sum(),
            grad=lambda g: 2 * inv_a * ((inv_a * (g @ xt)) @ xt.T),
            curvature=lambda dd: ((inv_a * (dd @ xt)) ** 2).sum(),
        )
        gamma = emd(cost, a, b).plan
        L = solve_l(gamma)
        history = [float(objective(gamma, L))]
        converged, n_iter = False, 0
        for n_iter in range(1, self.max_iter + 1):  # noqa: B007 - reported
            mapped = phi @ L  # (n_s, d)
            c_eff = lin_cost - 2 * inv_a * (mapped @ xt.T)
            res = conditional_gradient(
                c_eff, a, b, quad, eta=1.0, eps=0.0, max_iter=self.max_inner_iter,
                tol=self.inner_tol, line_search="exact", init=gamma, warn=False,
                constant=float((mapped**2).sum()), name="MappingTransport",
            )
            gamma = res.plan
            L = solve_l(gamma)
            history.append(float(objective(gamma, L)))
            prev, cur = history[-2], history[-1]
            if abs(prev - cur) <= self.tol * max(abs(prev), math.ulp(1.0)):
                converged = True
                break
        if not converged:
            warnings.warn(
                f"MappingTransport did not converge in max_iter={self.max_iter} iterations: "
                f"relative decrease {abs(history[-2] - history[-1]) / abs(history[-2]):.3g} > "
                f"tol={self.tol:g}.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self._mapping = L
        self.history_ = tuple(history)
        self.objective_ = history[-1]
        return gamma, _MappingResult(converged, n_iter, history[-1])

    def fit(self, Xs, ys=None, Xt=None, yt=None, *, a=None, b=None):  # noqa: D102
        super().fit(Xs, ys, Xt, yt, a=a, b=b)
        self.mapping_ = _to_output(self._mapping, self._as_numpy)
        return self

    fit.__doc__ = BaseTransport.fit.__doc__

    def transform(self, Xs):
        """Apply the learned map :math:`T(x) = \\phi(x)^T L` to points ``Xs`` ``(k, d)``.

        Returns:
            ``(k, d)``, numpy for numpy input.
        """
        self._check_fitted("transform")
        x, as_numpy = self._points_to_map(Xs, "Xs", self._xs)
        out = self._features(x) @ self._mapping
        return _to_output(out.to(Xs.dtype) if isinstance(Xs, torch.Tensor) else out, as_numpy)

    def barycentric_transform(self, Xs):
        """The coupling's barycentric mapping (nearest-neighbour displacement out of sample),
        as :meth:`BaseTransport.transform` (POT's ``transform`` on the fit points)."""
        return BaseTransport.transform(self, Xs)

    def _params(self):
        return {"kernel": self.kernel, "mu": self.mu, "eta": self.eta, "bias": self.bias,
                "sigma": self.sigma, **super()._params()}


class _MappingResult:
    """Convergence report of :class:`MappingTransport`."""

    def __init__(self, converged: bool, n_iter: int, value: float):
        self.converged, self.n_iter, self.value = converged, n_iter, value

    def __repr__(self) -> str:
        return (f"MappingResult(converged={self.converged}, n_iter={self.n_iter}, "
                f"value={self.value:.6g})")
