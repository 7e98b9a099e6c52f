r"""(Generalized) conditional gradient over the transport polytope.

Solves, for a cost :math:`C` ``(n, m)``, marginals :math:`a, b`, a convex differentiable
regularizer :math:`\Omega`, :math:`\eta \geq 0` and :math:`\varepsilon \geq 0`,

.. math::

    \min_{\gamma \in U(a, b)} F(\gamma) = \langle \gamma, C\rangle + \eta\,\Omega(\gamma)
        + \varepsilon\,\mathrm{KL}(\gamma \,|\, a \otimes b).

Each iteration linearizes the smooth part :math:`f = \langle \cdot, C\rangle + \eta\Omega` at
:math:`\gamma^k` and solves

.. math::

    s^k = \arg\min_{s \in U(a, b)} \langle s, C + \eta \nabla\Omega(\gamma^k)\rangle
        + \varepsilon\,\mathrm{KL}(s \,|\, a \otimes b)

exactly (:func:`couplings.emd`, :math:`\varepsilon = 0`: Frank-Wolfe) or by Sinkhorn
(:func:`couplings.sinkhorn`, :math:`\varepsilon > 0`: the generalized conditional gradient of
Rakotomamonjy, Flamary and Courty 2015), then moves to
:math:`\gamma^{k+1} = \gamma^k + t (s^k - \gamma^k)` with :math:`t \in [0, 1]` from a line search
on :math:`F` itself (exact, or Armijo backtracking). The gap

.. math::

    g_k = \langle \nabla f(\gamma^k), \gamma^k - s^k\rangle
        + \varepsilon\,(\mathrm{KL}(\gamma^k) - \mathrm{KL}(s^k)) \;\geq\; F(\gamma^k) - F^\star

bounds the suboptimality of a convex problem; the solver stops when :math:`g_k \leq
\mathrm{tol}\cdot F(\gamma^k)` or when the objective stops decreasing
(:math:`F(\gamma^k) - F(\gamma^{k+1}) \leq \mathrm{tol}\cdot F(\gamma^k)`), and reports the
relative gap as its error.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import torch

from ..result import ConvergenceWarning
from ..solvers.exact import emd
from ..solvers.sinkhorn import sinkhorn

__all__ = ["CGResult", "Regularizer", "conditional_gradient", "LINE_SEARCHES"]

LINE_SEARCHES = ("exact", "armijo")


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """A convex regularizer :math:`\\Omega` of the coupling.

    Attributes:
        value: ``gamma (n, m) -> scalar tensor``.
        grad: ``gamma -> (n, m)`` gradient (a subgradient where not differentiable).
        curvature: for a quadratic :math:`\\Omega`, ``d -> scalar``, the coefficient of
            :math:`t^2` in :math:`\\Omega(\\gamma + t d)` (its quadratic form at ``d``), which makes
            the exact line search closed-form when :math:`\\varepsilon = 0`; ``None`` otherwise.
    """

    value: Callable[[torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]
    curvature: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class CGResult:
    """Result of :func:`conditional_gradient`.

    Attributes:
        plan: the coupling ``(n, m)``.
        value: objective :math:`F` at ``plan`` (0-d tensor).
        converged: whether a stopping rule was met before ``max_iter``.
        n_iter: iterations run.
        error: last relative gap :math:`g_k / F(\\gamma^k)` (an upper bound on the relative
            suboptimality of the iterate it was computed at).
        history: objective values, one per iterate (the initial one first).
        inner_converged: whether every inner OT solve converged.
    """

    plan: torch.Tensor
    value: torch.Tensor
    converged: bool
    n_iter: int
    error: float
    history: tuple[float, ...]
    inner_converged: bool

    def __repr__(self) -> str:
        return (
            f"CGResult(n={self.plan.shape[0]}, m={self.plan.shape[1]}, "
            f"value={float(self.value):.6g}, converged={self.converged}, n_iter={self.n_iter}, "
            f"error={self.error:.3g})"
        )


def _xlogy_ratio(g: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """``sum g log(g / ab)`` with ``0 log 0 = 0``."""
    pos = g > 0
    ratio = torch.where(pos, g, torch.ones_like(g)) / torch.where(pos, ab, torch.ones_like(ab))
    return (torch.where(pos, g * torch.log(ratio), torch.zeros_like(g))).sum()


def _log_ratio(g: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """``log(g / ab) + 1``, the gradient of the KL term, with ``log 0`` floored (finite)."""
    tiny = torch.finfo(g.dtype).tiny
    return torch.log(g.clamp_min(tiny) / ab.clamp_min(tiny)) + 1.0


def conditional_gradient(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    reg: Regularizer,
    *,
    eta: float,
    eps: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-6,
    line_search: str = "exact",
    inner_max_iter: int = 1000,
    inner_tol: float = 1e-9,
    init: torch.Tensor | None = None,
    warn: bool = True,
    constant: float = 0.0,
    name: str = "conditional gradient",
) -> CGResult:
    r"""Minimize ``<gamma, C> + eta * Omega(gamma) + eps * KL(gamma | a x b)`` over ``U(a, b)``.

    See the module docstring for the algorithm. Inputs are assumed valid (checked by the
    estimators): ``cost`` ``(n, m)``, ``a`` ``(n,)``, ``b`` ``(m,)`` of equal mass, one dtype.

    ``constant`` is added to the objective (it changes only the reported value and the relative
    stopping rules). ``init`` is a feasible starting coupling (default :math:`a b^T`).

    Returns:
        :class:`CGResult`. A run that stops at ``max_iter`` warns once
        (:class:`~couplings.ConvergenceWarning`), as does a non-converged inner solve.

    Example:
        Quadratically regularized OT, :math:`\Omega(\gamma) = \|\gamma\|_F^2`:

        >>> import torch
        >>> from couplings.da import Regularizer, conditional_gradient
        >>> cost = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]], dtype=torch.float64)
        >>> a, b = torch.tensor([0.5, 0.5]).double(), torch.full((3,), 1 / 3).double()
        >>> frob = Regularizer(value=lambda g: (g * g).sum(), grad=lambda g: 2 * g,
        ...                    curvature=lambda d: (d * d).sum())
        >>> res = conditional_gradient(cost, a, b, frob, eta=1.0, tol=1e-9, max_iter=500)
        >>> res.converged, torch.allclose(res.plan.sum(1), a)
        (True, True)
        >>> res.plan.round(decimals=4)  # KKT: P_ij = max(0, f_i + g_j - C_ij) / 2, sparse
        tensor([[0.3333, 0.1667, 0.0000],
                [0.0000, 0.1667, 0.3333]], dtype=torch.float64)
    """
    ab = a.unsqueeze(1) * b.unsqueeze(0)  # (n, m)
    gamma = ab.clone() if init is None else init.clone()

    def objective(g: torch.Tensor) -> torch.Tensor:
        val = (g * cost).sum() + eta * reg.value(g) + constant
        if eps > 0:
            val = val + eps * _xlogy_ratio(g, ab)
        return val

    def smooth_grad(g: torch.Tensor) -> torch.Tensor:
        return cost + eta * reg.grad(g)

    def derivative(g: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """d/dt F(g + t d) at t = 0."""
        val = (smooth_grad(g) * d).sum()
        if eps > 0:
            val = val + eps * (torch.where(d != 0, _log_ratio(g, ab), 0.0) * d).sum()
        return val

    potentials = None
    inner_ok = True
    value = objective(gamma)
    history = [float(value)]
    converged, error, n_iter = False, math.inf, 0
    tiny = torch.finfo(cost.dtype).tiny
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported
        lin = smooth_grad(gamma)  # (n, m)
        if eps > 0:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                res = sinkhorn(lin, a, b, eps=eps, tol=inner_tol, max_iter=inner_max_iter,
                               init=potentials, grad="envelope")
            inner_ok = inner_ok and bool(res.converged)
            for w in caught:
                if not issubclass(w.category, ConvergenceWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            potentials = (res.f, res.g)
            s = res.plan
        else:
            res = emd(lin, a, b)
            inner_ok = inner_ok and bool(res.converged)
            s = res.plan
        d = s - gamma  # (n, m)
        gap = float((lin * -d).sum())
        if eps > 0:
            gap += eps * float(_xlogy_ratio(gamma, ab) - _xlogy_ratio(s, ab))
        error = gap / max(abs(float(value)), tiny)
        if error <= tol:
            converged = True
            break
        t = _line_search(objective, derivative, reg, gamma, d, value, eta, eps, line_search)
        if t <= 0:
            converged = error <= tol
            break
        gamma = gamma + t * d
        new_value = objective(gamma)
        decrease = float(value) - float(new_value)
        value = new_value
        history.append(float(value))
        if 0 <= decrease <= tol * max(abs(float(value)), tiny):
            converged = True
            break
    if warn and not converged:
        warnings.warn(
            f"{name} did not converge in max_iter={max_iter} iterations: relative gap "
            f"{error:.3g} > tol={tol:g}. Increase max_iter or tol.",
            ConvergenceWarning,
            stacklevel=3,
        )
    if warn and not inner_ok:
        what = "sinkhorn" if eps > 0 else "emd"
        warnings.warn(
            f"{name}: an inner {what} solve did not converge (inner_max_iter={inner_max_iter}, "
            f"inner_tol={inner_tol:g}); the coupling's marginals may be off. Increase "
            "inner_max_iter or eps.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return CGResult(plan=gamma, value=value, converged=converged, n_iter=n_iter, error=error,
                    history=tuple(history), inner_converged=inner_ok)


def _line_search(objective, derivative, reg, gamma, d, value, eta, eps, kind) -> float:
    """Step ``t`` in [0, 1] along ``d`` from ``gamma``."""
    slope = float(derivative(gamma, d))
    if not slope < 0:  # not a descent direction (converged up to round-off)
        return 0.0
    if kind == "armijo":
        t, c1 = 1.0, 1e-4
        for _ in range(40):
            if float(objective(gamma + t * d)) <= float(value) + c1 * t * slope:
                return t
            t *= 0.5
        return 0.0
    if eps == 0 and reg.curvature is not None:  # F(gamma + t d) = F + t slope + t^2 eta q(d)
        q = eta * float(reg.curvature(d))
        if q <= 0:
            return 1.0
        return min(1.0, -slope / (2 * q))
    # convex in t: root of the increasing derivative on [0, 1], by regula falsi (Illinois)
    d_hi = float(derivative(gamma + d, d))
    if d_hi <= 0:
        return 1.0
    lo, hi, d_lo = 0.0, 1.0, slope
    side = 0
    for _ in range(60):
        t = lo - d_lo * (hi - lo) / (d_hi - d_lo)
        if not lo < t < hi:
            t = 0.5 * (lo + hi)
        d_t = float(derivative(gamma + t * d, d))
        if abs(d_t) <= 1e-10 * abs(slope) or hi - lo <= 1e-12:
            return t
        if d_t > 0:
            hi, d_hi = t, d_t
            if side == 1:
                d_lo *= 0.5
            side = 1
        else:
            lo, d_lo = t, d_t
            if side == -1:
                d_hi *= 0.5
            side = -1
    return 0.5 * (lo + hi)
