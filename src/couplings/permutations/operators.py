r"""The Sinkhorn operator and Gumbel noise: soft permutations from a score matrix.

The Sinkhorn operator of a score matrix :math:`X` ``(B, n, n)`` at temperature :math:`\tau` is

.. math::

    S(X / \tau) = \operatorname*{argmax}_{P \in \mathcal{B}_n}
        \langle P, X\rangle + \tau H(P),

the entropic projection onto the Birkhoff polytope of doubly-stochastic matrices. It is entropic
OT with uniform marginals and cost :math:`-X`, so it is computed by :func:`couplings.sinkhorn`
(``eps = tau``) and scaled by ``n``: there is one Sinkhorn loop in the library. As
:math:`\tau \to 0` it tends to the matching :math:`M(X) = \operatorname{argmax}_{P}
\langle P, X\rangle` (Hungarian algorithm, :func:`couplings.matching`).

References:
    Mena, Belanger, Linderman and Snoek, "Learning Latent Permutations with Gumbel-Sinkhorn
    Networks", ICLR 2018.
"""

from __future__ import annotations

import torch

from .._validation import (
    as_tensor,
    check_finite,
    check_float,
    check_positive_int,
    check_positive_scalar,
)
from ..solvers.sinkhorn import Implicit, sinkhorn

__all__ = ["sinkhorn_operator", "gumbel_noise", "check_scores"]


def check_scores(log_alpha, name: str = "log_alpha") -> tuple[torch.Tensor, bool]:
    """Validate a square score matrix; return it as ``(B, n, n)`` and whether it was batched."""
    log_alpha = as_tensor(log_alpha, name)
    check_float(log_alpha, name)
    if log_alpha.dim() not in (2, 3) or log_alpha.shape[-1] != log_alpha.shape[-2]:
        raise ValueError(
            f"{name} must be a square matrix (n, n) or a batch (B, n, n), got shape "
            f"{tuple(log_alpha.shape)}."
        )
    check_finite(log_alpha, name)
    batched = log_alpha.dim() == 3
    return (log_alpha if batched else log_alpha.unsqueeze(0)), batched


def sinkhorn_operator(
    log_alpha: torch.Tensor,
    tau: float = 1.0,
    n_iter: int = 20,
    *,
    grad: str | Implicit = "unroll",
    tol: float | None = None,
    scaling: float | None = None,
) -> torch.Tensor:
    r"""The Sinkhorn operator :math:`S(X / \tau)`: a doubly-stochastic matrix.

    ``n_iter`` rounds of row then column normalisation in the log domain (Sinkhorn-Knopp), done
    by the library's one Sinkhorn solver: entropic OT with uniform marginals ``1/n``, cost
    ``-log_alpha`` and ``eps = tau``, whose plan times ``n`` is the operator's output.

    Args:
        log_alpha: scores ``(B, n, n)`` or ``(n, n)``; row ``i``, column ``j`` scores putting
            item ``i`` at position ``j``.
        tau: temperature :math:`\tau > 0`; smaller is closer to a permutation.
        n_iter: number of row-and-column rounds (a fixed-depth layer, as in the paper: 20 is
            usually enough for ``n ~ 100``).
        grad: differentiation mode of the solver; ``"unroll"`` (the paper's) backpropagates
            through the ``n_iter`` rounds, ``"implicit"`` differentiates the converged fixed
            point (use it with ``tol``).
        tol: when given, iterate to this marginal error instead (``n_iter`` becomes the cap).
        scaling: epsilon scaling (with ``tol``), for small ``tau``; see
            :func:`couplings.sinkhorn`.

    Returns:
        ``(B, n, n)`` or ``(n, n)``: at fixed depth, columns sum to 1 exactly and rows to 1 up
        to the remaining error; with ``tol`` (over-relaxed iterations, see ``momentum`` in
        :func:`couplings.sinkhorn`), both within ``tol`` in L1.

    Example:
        >>> import torch
        >>> from couplings.permutations import sinkhorn_operator
        >>> x = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
        >>> p = sinkhorn_operator(x, tau=1.0)
        >>> p.sum(0), p.sum(1)
        (tensor([1., 1.]), tensor([1., 1.]))
        >>> (p.diagonal() > 0.9).all().item()
        True
    """
    log_alpha, batched = check_scores(log_alpha)
    tau = check_positive_scalar(tau, "tau")
    n_iter = check_positive_int(n_iter, "n_iter")
    n = log_alpha.shape[-1]
    fixed = tol is None
    res = sinkhorn(
        -log_alpha, eps=tau, tol=1e-6 if fixed else tol, max_iter=n_iter,
        min_iter=n_iter if fixed else 0, grad=grad, scaling=scaling,
    )
    plan = res.plan * n  # (B, n, n)
    return plan if batched else plan.squeeze(0)


def gumbel_noise(shape, *, like: torch.Tensor, generator: torch.Generator | None = None):
    """Standard Gumbel noise ``-log(-log U)``, with the dtype and device of ``like``.

    ``U`` is drawn in ``(tiny, 1)`` so the result is always finite.

    Example:
        >>> import torch
        >>> g = gumbel_noise((100_000,), like=torch.zeros(()), generator=torch.manual_seed(0))
        >>> round(float(g.mean()), 1)  # Euler's constant, 0.577...
        0.6
    """
    tiny = torch.finfo(like.dtype).tiny
    u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    return -torch.log(-torch.log(u.clamp(tiny, 1.0 - torch.finfo(like.dtype).eps)))
