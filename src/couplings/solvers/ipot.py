r"""Exact optimal transport by the inexact proximal point method (IPOT).

IPOT solves the linear program :math:`\min_{\Gamma \in U(a, b)} \langle C, \Gamma\rangle` by
proximal point steps with a KL proximity term,

.. math::

    \Gamma^{(t+1)} = \operatorname*{argmin}_{\Gamma \in U(a, b)} \langle C, \Gamma\rangle
        + \beta\, \mathrm{KL}(\Gamma \,|\, \Gamma^{(t)}),

each solved inexactly by a few Sinkhorn iterations warm-started from the previous step. Unlike
entropic OT, the plan converges to an optimal plan of the *unregularized* problem, for a wide
range of :math:`\beta`, even with one Sinkhorn iteration per step.

Each proximal step is an entropic OT problem: on :math:`U(a, b)` the masses are fixed, so
:math:`\beta\,\mathrm{KL}(\Gamma | \Gamma^{(t)}) = \beta\,\mathrm{KL}(\Gamma | a \otimes b) -
\beta \langle \Gamma, \log(\Gamma^{(t)} / a \otimes b)\rangle + \mathrm{const}`, and the step is
:func:`couplings.sinkhorn` with ``eps = beta`` and the absorbed cost

.. math::

    C^{(t+1)} = C - \beta\, Z^{(t)}, \qquad
    Z^{(t)} = \log \frac{\Gamma^{(t)}}{a \otimes b}
        = \frac{f^{(t)} \oplus g^{(t)} - C^{(t)}}{\beta},

with :math:`C^{(0)} = C` (:math:`\Gamma^{(0)} = a \otimes b`, the paper's :math:`11^T` up to
scale). Everything stays in the log domain: entries of :math:`C^{(t)}` off the optimal support
grow linearly in :math:`t` and only ever enter through :math:`e^{-C^{(t)}/\beta}`, so a small
``beta`` and float32 are safe.

Reference:
    Xie, Wang, Wang and Zha, "A Fast Proximal Point Method for Computing Exact Wasserstein
    Distance", UAI 2019 (arXiv 1802.04307), Algorithm 1.
"""

from __future__ import annotations

import math
import warnings

import torch

from .._validation import (
    batch_weights,
    check_choice,
    check_equal_mass,
    check_nonnegative_int,
    check_positive_int,
    check_positive_scalar,
)
from ..geometry import Geometry, as_geometry
from ..result import ConvergenceWarning, OTResult
from .sinkhorn import sinkhorn

__all__ = ["ipot"]

# beta relative to the mean absolute cost when none is given
_DEFAULT_BETA_REL = 0.5


def ipot(
    cost: torch.Tensor | Geometry,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    beta: float | None = None,
    max_iter: int = 10_000,
    min_iter: int = 0,
    n_inner: int = 1,
    tol: float = 1e-5,
    grad: str = "unroll",
    check_every: int = 50,
) -> OTResult:
    r"""Exact optimal transport by the inexact proximal point method (IPOT).

    Computes a plan :math:`\Gamma \in U(a, b)` that minimises :math:`\langle C, \Gamma\rangle`
    (no entropic bias) by the proximal steps
    :math:`\Gamma^{(t+1)} = \operatorname{argmin}_{\Gamma \in U(a, b)} \langle C, \Gamma\rangle
    + \beta\, \mathrm{KL}(\Gamma | \Gamma^{(t)})`, each one ``n_inner`` log-domain Sinkhorn
    iterations of :func:`couplings.sinkhorn` (``eps = beta``, cost
    :math:`C - \beta \log(\Gamma^{(t)} / a \otimes b)`), warm-started from the previous step.

    Args:
        cost: cost matrix ``(B, n, m)`` or ``(n, m)``, or a :class:`~couplings.Geometry`.
        a: first marginal ``(B, n)`` or ``(n,)``, non-negative; ``None`` for uniform ``1/n``.
        b: second marginal ``(B, m)`` or ``(m,)``, with the same total mass as ``a``.
        beta: proximal step :math:`\beta > 0`, in the units of the cost. ``None`` uses
            ``0.5 * mean|C|`` for each problem of the batch (the cost is divided by that scale,
            which is treated as a constant by the gradients; pass ``beta`` explicitly to
            differentiate the algorithm at a fixed step). Smaller steps move faster but need
            more inner iterations to keep the marginals; with ``n_inner = 1`` a step of
            ``0.25``-``1`` times the mean cost works best.
        max_iter: limit on the number of proximal (outer) steps. Each step costs about three
            ``n x m`` log-sum-exp passes; problems of ``100 x 120`` points stop after 1000-3000
            steps with the defaults. With ``grad="unroll"`` the graph grows with the number of
            steps: use a fixed small depth there (Chen et al. use 50) or ``"envelope"``.
        min_iter: no convergence check before this many steps; ``min_iter = max_iter`` runs a
            fixed number of steps (an IPOT layer, as in Chen et al. 2019): ``error`` and
            ``converged`` are still reported, but no warning is issued.
        n_inner: Sinkhorn iterations per proximal step (the paper's ``L``; 1 is usual).
        tol: stop a problem when both the L1 marginal error and the relative change of
            :math:`\langle C, \Gamma\rangle` over the last ``check_every`` steps are ``<= tol``.
            This is a stall test, not a certificate: the value is then typically within
            ``10 * tol`` of the exact optimum (relative).
        grad: ``"unroll"`` (autograd through every proximal and Sinkhorn step, as in Chen et
            al. 2019) or ``"envelope"`` (the plan is held fixed: the cost's gradient is
            :math:`\Gamma` and the weights' gradients are the final potentials, Danskin's
            theorem for the exact OT value; no graph is kept).
        check_every: proximal steps between two convergence checks.

    Returns:
        :class:`~couplings.OTResult` with ``plan`` :math:`\Gamma` ``(B, n, m)``, ``value`` and
        ``linear_value`` both :math:`\langle C, \Gamma\rangle` ``(B,)`` (an estimate of exact
        OT, no entropic term), the potentials ``f``, ``g`` of the last Sinkhorn step (which
        tend to dual optimal potentials), ``error`` the L1 marginal violation of
        :math:`\Gamma` (the column marginal holds exactly), ``converged`` as defined by
        ``tol``, ``n_iter`` the number of proximal steps, ``eps = None`` and
        ``solver = "ipot"``. The batch axis is absent for an unbatched call.

    Raises:
        TypeError, ValueError: for inputs of the wrong type, shape, dtype or device, a
            non-finite cost, negative weights, unequal masses or a non-positive ``beta``.

    Example:
        >>> import torch, ot
        >>> from couplings.solvers import ipot
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(30, 2, generator=g, dtype=torch.float64)
        >>> y = torch.randn(40, 2, generator=g, dtype=torch.float64)
        >>> c = torch.cdist(x, y) ** 2
        >>> res = ipot(c)
        >>> exact = ot.emd2(torch.full((30,), 1 / 30), torch.full((40,), 1 / 40), c)
        >>> bool(abs(res.value - exact) / exact < 1e-4), res.solver
        (True, 'ipot')

    Names elsewhere: the paper's ``beta`` and ``L`` are ``beta`` and ``n_inner``; the reference
    code ``ipot_WD(a1, a2, C, beta=2, max_iter=1000, L=1)``; texar ``IPOT_distance2`` uses
    ``beta = 1``, 10 steps, 1 inner iteration.

    References:
        Xie, Wang, Wang and Zha, "A Fast Proximal Point Method for Computing Exact Wasserstein
        Distance", UAI 2019. Chen et al., "Improving Sequence-to-Sequence Learning via Optimal
        Transport", ICLR 2019.
    """
    geom = as_geometry(cost)
    if beta is not None:
        beta = check_positive_scalar(beta, "beta")
    max_iter = check_positive_int(max_iter, "max_iter")
    min_iter = check_nonnegative_int(min_iter, "min_iter")
    n_inner = check_positive_int(n_inner, "n_inner")
    tol = check_positive_scalar(tol, "tol")
    check_choice(grad, "grad", ("unroll", "envelope"))
    check_every = check_positive_int(check_every, "check_every")

    c = geom.cost_matrix()  # (B, n, m)
    bsz, n, m = c.shape
    a = batch_weights(a, n, bsz, geom.batched, c, "a", "the rows (n) of the cost")
    b = batch_weights(b, m, bsz, geom.batched, c, "b", "the columns (m) of the cost")
    check_equal_mass(a, b)

    track = grad == "unroll" and torch.is_grad_enabled() and any(
        t.requires_grad for t in (c, a, b)
    )
    with torch.set_grad_enabled(track):
        cs, aa, bb = (c, a, b) if track else (c.detach(), a.detach(), b.detach())
        if beta is None:  # per-problem scale, a constant for the gradients
            scale = (_DEFAULT_BETA_REL * cs.detach().abs().mean((-2, -1))).reshape(bsz, 1, 1)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            step = 1.0
        else:
            scale = cs.new_ones(bsz, 1, 1)
            step = beta
        f, g, z, error, n_iter, converged = _proximal_loop(
            cs / scale, aa, bb, step, max_iter, min_iter, n_inner, tol, check_every,
            "unroll" if track else "envelope",
        )
        f, g = f * scale.squeeze(-1), g * scale.squeeze(-1)
        plan = aa.unsqueeze(-1) * bb.unsqueeze(-2) * torch.exp(z)  # (B, n, m)

    if min_iter < max_iter and not bool(converged.all()):
        bad = int((~converged).sum())
        warnings.warn(
            f"ipot did not converge for {bad} of {bsz} problem(s) in {n_iter} proximal steps "
            f"(marginal error {float(error.max()):.3g}, tol={tol:g}). Increase max_iter, or "
            "change beta (larger keeps the marginals, smaller moves faster).",
            ConvergenceWarning,
            stacklevel=2,
        )
    if grad == "envelope":
        plan, f, g = plan.detach(), f.detach(), g.detach()
        value = (plan * c).sum((-2, -1)) + ((a - a.detach()) * f).sum(-1)
        value = value + ((b - b.detach()) * g).sum(-1)
    else:
        value = (plan * c).sum((-2, -1))

    return OTResult.from_batched(
        geom.batched, f=f, g=g, value=value, converged=converged, error=error, a=a, b=b,
        plan_fn=lambda: plan, cost=c, n_iter=n_iter, eps=None, solver="ipot",
    )


def _proximal_loop(c, a, b, beta, max_iter, min_iter, n_inner, tol, check_every, inner_grad):
    """The outer loop on batched ``c`` ``(B, n, m)``; return ``f, g, Z, error, n_iter,
    converged`` with ``Z = log(Gamma / a x b)``. A problem that meets ``tol`` is frozen, so a
    batch gives the same result as its problems one by one."""
    bsz = c.shape[0]
    c_abs = c  # C^(t), (B, n, m)
    init = None
    active = torch.ones(bsz, dtype=torch.bool, device=c.device)
    f = g = z = error = None
    last_value = None
    mass = a.sum(-1)
    info = torch.finfo(c.dtype)
    floor = (info.eps * c.detach().abs().mean((-2, -1)) * mass).clamp_min(info.tiny)  # (B,)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        res = sinkhorn(
            c_abs, a, b, eps=beta, min_iter=n_inner, max_iter=n_inner, init=init,
            grad=inner_grad,
        )
        z_new = (res.f.unsqueeze(-1) + res.g.unsqueeze(-2) - c_abs) / beta  # (B, n, m)
        if f is None:
            f, g, z, error = res.f, res.g, z_new, res.error
        else:
            act = active.unsqueeze(-1)
            f, g = torch.where(act, res.f, f), torch.where(act, res.g, g)
            z = torch.where(act.unsqueeze(-1), z_new, z)
            error = torch.where(active, res.error, error)
        c_abs = torch.where(active.reshape(bsz, 1, 1), c - beta * z, c_abs)
        init = (f, g)
        if n_iter == max_iter or (n_iter >= min_iter and n_iter % check_every == 0):
            with torch.no_grad():
                plan = a.unsqueeze(-1) * b.unsqueeze(-2) * torch.exp(z)
                value = (plan * c).sum((-2, -1))
                if last_value is None:
                    change = torch.full_like(value, math.inf)
                else:
                    change = (value - last_value).abs() / (value.abs() + floor)
                last_value = value
                done = (error <= tol) & (change <= tol)
                active = active & ~done
            if not bool(active.any()):
                break
    converged = ~active
    return f, g, z, error, n_iter, converged
