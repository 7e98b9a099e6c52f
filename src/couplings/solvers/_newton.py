r"""Newton steps that finish a balanced Sinkhorn solve where its iterations crawl.

At a small ``eps`` Sinkhorn's error can fall like ``1 / k`` rather than geometrically: a few
rows joined to the rest of the plan by kernel entries near zero exchange their mass at a rate
that tends to 1 (on 200 points of the benchmark's 2-D Gaussians at ``eps = 0.003 x`` the mean
cost, float64: L1 error 2.6e-5 after 2000 plain iterations, 2.5e-6 after 8000, 2.3e-7 after
64000; over-relaxed, 1.6e-7 after 64000). Newton's method on the semi-dual has no such mode: from
the 1000th iterate it reached 1e-8 in 5 steps and 1e-13 in 15 (0.03 s).

**Semi-dual.** With ``g`` the exact column update of ``f``,
:math:`g_j(f) = -\varepsilon \log \sum_i a_i e^{(f_i - C_{ij})/\varepsilon}`, the concave
function :math:`F(f) = \langle a, f\rangle + \langle b, g(f)\rangle` has gradient
:math:`a - P 1` and Hessian :math:`-\frac{1}{\varepsilon}(\mathrm{diag}(P 1) - P\,
\mathrm{diag}(1/b)\, P^\top)`, for the plan :math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})
/\varepsilon}` (whose columns sum to ``b``). The Hessian is singular along constants (``F``
is invariant under ``f + c``); a rank-one term :math:`r r^\top / \sum r` (``r = P 1``) fixes
that direction, which changes no plan. Each step solves for :math:`\delta f` densely (a
Cholesky factorization of the ``k x k`` system on the smaller side, ``k = min(n, m)``: the
problem is transposed when ``n > m``; damped where it is singular to rounding), bounds
its length (no potential moves by more than 10 eps) and halves it until ``F`` does not
decrease (a backtracking line search, so each step is an ascent step).

Example:
    >>> import torch
    >>> from couplings import sinkhorn
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(200, 2, generator=g, dtype=torch.float64)
    >>> y = torch.randn(200, 2, generator=g, dtype=torch.float64) * 2 + 1
    >>> cost = torch.cdist(x, y) ** 2
    >>> res = sinkhorn(cost, eps=0.003 * float(cost.mean()), tol=1e-9, newton=True)
    >>> bool(res.converged), int(res.newton_steps) > 0, float(res.error) <= 1e-9
    (True, True, True)
"""

from __future__ import annotations

import math

import torch

__all__ = ["MAX_SIDE", "newton_polish"]

MAX_SIDE = 4096  # largest smaller side: a (k, k) float64 system per problem (134 MB at 4096)
_HALVINGS = 30  # backtracking steps of the line search
_ROUNDING = 8  # the semi-dual's rounding, in units of eps_mach (<a, |f|> + <b, |g|>)
_DAMPING = 1e-12  # the first Levenberg-Marquardt damping, relative to the diagonal
_REACH = 10.0  # largest move of a potential in one step, in eps
_NEAR = 1e4  # a full step that lowers it by at most this many such units is near the optimum


def _solve(system, rhs, scale):
    """``system^{-1} rhs`` ``(B, k)`` by Cholesky, and whether it succeeded ``(B,)``. Where the
    system is singular to rounding (a row whose plan entries all underflowed, or the constant
    direction near the solution), it is damped, ``system + mu diag(scale)`` with ``mu`` from
    ``_DAMPING`` times the largest diagonal entry upward (Levenberg-Marquardt): the direction
    stays an ascent direction, and the trust region bounds its length."""
    chol, info = torch.linalg.cholesky_ex(system)
    out = torch.cholesky_solve(rhs, chol).squeeze(-1)
    solved = info == 0
    top = system.diagonal(0, -2, -1).amax(-1)  # (B,)
    damping = _DAMPING
    while not bool(solved.all()) and damping < 1.0:
        mu = (damping * top / scale.amax(-1)).unsqueeze(-1)
        chol, info = torch.linalg.cholesky_ex(system + torch.diag_embed(mu * scale))
        damped = torch.cholesky_solve(rhs, chol).squeeze(-1)
        out = torch.where(solved.unsqueeze(-1), out, damped)
        solved = solved | (info == 0)
        damping *= 100.0
    return out, solved


def _column_update(cost, log_a, f, eps):
    """The exact column potential ``g(f)`` ``(B, m)`` (rows of zero weight left out)."""
    return -eps * torch.logsumexp(log_a.unsqueeze(-1) + (f.unsqueeze(-1) - cost) / eps, -2)


def _evaluate(cost, a, b, log_a, f, eps):
    """``g(f)``, the plan ``(B, n, m)``, its row sums ``(B, n)`` and the error
    ``|P 1 - a|_1`` ``(B,)``."""
    g = _column_update(cost, log_a, f, eps)
    sa, sb = a > 0, b > 0
    plan = a.unsqueeze(-1) * b.unsqueeze(-2) * torch.exp(
        (torch.where(sa, f, 0.0).unsqueeze(-1) + g.unsqueeze(-2) - cost) / eps)
    plan = torch.where(sa.unsqueeze(-1) & sb.unsqueeze(-2), plan, 0.0)
    rows = plan.sum(-1)
    return g, plan, rows, (rows - a).abs().sum(-1)


def _semi_dual(a, b, f, g):
    """``<a, f> + <b, g>`` ``(B,)``, entries of zero weight left out (their potential may be
    infinite)."""
    af = torch.where(a > 0, a * f, 0.0).sum(-1)
    return af + torch.where(b > 0, b * g, 0.0).sum(-1)


def newton_polish(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor,
                  g: torch.Tensor, eps: float, *, tol: float | torch.Tensor,
                  max_steps: int = 30):
    """Newton steps on the semi-dual from potentials ``(f, g)`` ``(B, n)``, ``(B, m)`` of a
    balanced problem (cost ``(B, n, m)``, weights ``a``, ``b``), for every problem whose L1
    marginal error exceeds ``tol`` (a number, or one per problem ``(B,)``), until it is at
    most ``tol``, stops improving, or ``max_steps`` steps were taken.

    Returns:
        ``(f, g, error, steps)``: the potentials (``g`` the exact column update of ``f``, so
        the columns of the plan sum to ``b``), each problem's error ``|P 1 - a|_1`` ``(B,)``
        and its Newton steps ``(B,)`` (a long tensor).
    """
    if a.shape[-1] > b.shape[-1]:  # the dense system on the smaller side
        g, f, error, steps = newton_polish(cost.transpose(-2, -1), b, a, g, f, eps, tol=tol,
                                           max_steps=max_steps)
        return f, g, error, steps
    log_a = torch.where(a > 0, torch.log(a), -math.inf)
    sa, sb = a > 0, b > 0
    inv_b = torch.where(sb, 1.0 / torch.where(sb, b, 1.0), 0.0)
    steps = torch.zeros(a.shape[0], dtype=torch.long, device=a.device)
    for step in range(max_steps + 1):
        g, plan, rows, error = _evaluate(cost, a, b, log_a, f, eps)
        active = error > tol
        if step == max_steps or not bool(active.any()):
            break
        # the Hessian's Schur complement, positive semi-definite, with the constant fixed
        system = (torch.diag_embed(torch.where(sa, rows, 1.0))
                  - (plan * inv_b.unsqueeze(-2)) @ plan.transpose(-2, -1)
                  + rows.unsqueeze(-1) * rows.unsqueeze(-2) / rows.sum(-1)[:, None, None])
        rhs = (eps * (a - rows)).unsqueeze(-1)
        direction, solved = _solve(system, rhs, torch.where(sa, a, 1.0))
        direction = torch.where(sa & solved.unsqueeze(-1) & active.unsqueeze(-1) & torch.isfinite(
            direction), direction, 0.0)
        # the semi-dual must not decrease by more than its rounding: near the solution a
        # step changes it by about the squared error, below the rounding of its terms
        rounding = torch.finfo(f.dtype).eps * _semi_dual(a, b, f.abs(), g.abs())
        value = _semi_dual(a, b, f, g) - _ROUNDING * rounding
        # a trust region: no potential moves by more than _REACH eps in one step (where rows
        # and columns barely exchange mass the system is nearly singular, and its solution
        # is a huge step along which the quadratic model means nothing)
        reach = direction.abs().amax(-1) / (_REACH * eps)
        first = torch.where(reach > 1, 1.0 / reach, 1.0)  # the step the search starts from
        size, full = first, None
        for _ in range(_HALVINGS):  # backtrack until the semi-dual does not decrease
            trial = f + size.unsqueeze(-1) * direction
            reached = _semi_dual(a, b, trial, _column_update(cost, log_a, trial, eps))
            full = reached if full is None else full
            ok = reached >= value
            if bool(ok.all()):
                break
            size = torch.where(ok, size, 0.5 * size)
        else:
            # no ascent found: near the solution, where the full step changes the semi-dual
            # by little more than its rounding, take it if it lowers the error; else stay
            near = full >= value - _NEAR * rounding
            lower = near & (_evaluate(cost, a, b, log_a, f + first.unsqueeze(-1) * direction,
                                      eps)[3] < error)
            size = torch.where(ok, size, torch.where(lower, first, 0.0))
        moved = active & (size > 0) & (direction.abs().amax(-1) > 0)
        if not bool(moved.any()):
            break
        f = f + size.unsqueeze(-1) * direction
        steps = steps + moved.long()
    return f, g, error, steps
