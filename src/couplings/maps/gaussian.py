r"""Closed-form optimal transport between Gaussians: the Monge map and the Bures-Wasserstein
distance.

For :math:`\mu = \mathcal{N}(m_1, \Sigma_1)` and :math:`\nu = \mathcal{N}(m_2, \Sigma_2)` with
:math:`\Sigma_1` positive definite and the cost :math:`\|x - y\|^2`, the optimal (Monge) map is
affine,

.. math::

    T(x) = m_2 + A (x - m_1), \qquad
    A = \Sigma_1^{-1/2} \big(\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}\big)^{1/2} \Sigma_1^{-1/2},

(symmetric positive semi-definite: the gradient of a convex function), and the squared
2-Wasserstein distance is

.. math::

    W_2^2(\mu, \nu) = \|m_1 - m_2\|^2 + \operatorname{tr}\big(\Sigma_1 + \Sigma_2
        - 2 (\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2})^{1/2}\big),

whose covariance part is the squared Bures distance. Matrix square roots are taken by a
symmetric eigendecomposition.

References:
    Knott and Smith, "On the optimal mapping of distributions", JOTA 1984; Peyre and Cuturi,
    "Computational Optimal Transport", 2019, remark 2.31. POT: ``ot.gaussian``.
"""

from __future__ import annotations

import dataclasses

import torch

from .._validation import as_tensor, check_finite, check_float, check_same_dtype_device

__all__ = ["GaussianMap", "bures_wasserstein_distance", "gaussian_monge_map", "sqrtm_spd"]


def _eig_tol(s: torch.Tensor) -> float:
    return 100 * torch.finfo(s.dtype).eps


def sqrtm_spd(s: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
    r"""Square root (or inverse square root) of symmetric positive semi-definite matrices.

    :math:`S^{1/2} = V \operatorname{diag}(\lambda^{1/2}) V^T` from :math:`S = V
    \operatorname{diag}(\lambda) V^T`; eigenvalues below zero by round-off are set to zero.
    No validation: call it on matrices checked by the public functions.

    Args:
        s: ``(..., d, d)`` symmetric.
        inverse: return :math:`S^{-1/2}` (``s`` must then be positive definite).

    Returns:
        ``(..., d, d)``.

    Example:
        >>> import torch
        >>> sqrtm_spd(torch.tensor([[4.0, 0.0], [0.0, 9.0]]))
        tensor([[2., 0.],
                [0., 3.]])
    """
    w, v = torch.linalg.eigh(0.5 * (s + s.transpose(-2, -1)))
    w = w.clamp_min(0).sqrt()
    if inverse:
        w = 1.0 / w
    return (v * w.unsqueeze(-2)) @ v.transpose(-2, -1)


def _check_gaussian(m, s, mname: str, sname: str, *, definite: bool):
    """Validate a mean ``(d,)``/``(B, d)`` and covariance ``(d, d)``/``(B, d, d)``."""
    m, s = as_tensor(m, mname), as_tensor(s, sname)
    check_float(m, mname)
    check_float(s, sname)
    check_same_dtype_device(**{mname: m, sname: s})
    if m.dim() not in (1, 2):
        raise ValueError(f"{mname} must have shape (d,) or (B, d), got {tuple(m.shape)}.")
    d = m.shape[-1]
    if s.dim() != m.dim() + 1 or tuple(s.shape[-2:]) != (d, d) or s.shape[:-2] != m.shape[:-1]:
        expected = f"({d}, {d})" if m.dim() == 1 else f"({m.shape[0]}, {d}, {d})"
        raise ValueError(
            f"{sname} must have shape {expected} to match {mname} of shape {tuple(m.shape)}, "
            f"got {tuple(s.shape)}."
        )
    check_finite(m, mname)
    check_finite(s, sname)
    scale = s.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(s.dtype).tiny)  # (...)
    asym = (s - s.transpose(-2, -1)).abs().amax(dim=(-2, -1)) / scale
    if bool((asym > 1e3 * torch.finfo(s.dtype).eps).any()):
        raise ValueError(
            f"{sname} must be symmetric, got a relative asymmetry of {float(asym.max()):.3g}. "
            f"Symmetrize it, e.g. ({sname} + {sname}.T) / 2."
        )
    low = torch.linalg.eigvalsh(0.5 * (s + s.transpose(-2, -1))).amin(-1) / scale  # (...)
    tol = _eig_tol(s)
    if definite and bool((low <= tol).any()):
        raise ValueError(
            f"{sname} must be symmetric positive definite (the map needs its inverse square "
            f"root), got a relative smallest eigenvalue of {float(low.min()):.3g}."
        )
    if bool((low < -tol).any()):
        raise ValueError(
            f"{sname} must be symmetric positive semi-definite, got a relative smallest "
            f"eigenvalue of {float(low.min()):.3g}."
        )
    return m, s


def _check_pair(m1, s1, m2, s2, *, definite: bool):
    m1, s1 = _check_gaussian(m1, s1, "m1", "S1", definite=definite)
    m2, s2 = _check_gaussian(m2, s2, "m2", "S2", definite=False)
    check_same_dtype_device(m1=m1, m2=m2)
    if m1.shape != m2.shape:
        raise ValueError(
            f"m1 and m2 must have the same shape (same dimension d and batch), got "
            f"{tuple(m1.shape)} and {tuple(m2.shape)}."
        )
    return m1, s1, m2, s2


@dataclasses.dataclass(frozen=True)
class GaussianMap:
    r"""The affine Monge map :math:`T(x) = m_2 + A (x - m_1)` between two Gaussians.

    Attributes:
        A: ``(d, d)`` or ``(B, d, d)``, symmetric positive semi-definite.
        m1: source mean ``(d,)`` or ``(B, d)``.
        m2: target mean ``(d,)`` or ``(B, d)``.
    """

    A: torch.Tensor
    m1: torch.Tensor
    m2: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the map to points ``(n, d)`` (or ``(B, n, d)`` for a batched map)."""
        x = as_tensor(x, "x")
        d = self.m1.shape[-1]
        if x.dim() != self.m1.dim() + 1 or x.shape[-1] != d:
            expected = f"(n, {d})" if self.m1.dim() == 1 else f"({self.m1.shape[0]}, n, {d})"
            raise ValueError(f"x must have shape {expected}, got {tuple(x.shape)}.")
        check_same_dtype_device(A=self.A, x=x)
        centred = x - self.m1.unsqueeze(-2)  # (..., n, d)
        return self.m2.unsqueeze(-2) + centred @ self.A.transpose(-2, -1)


def gaussian_monge_map(m1, S1, m2, S2) -> GaussianMap:
    r"""Closed-form optimal transport map from :math:`\mathcal{N}(m_1, \Sigma_1)` to
    :math:`\mathcal{N}(m_2, \Sigma_2)` for the squared Euclidean cost.

    :math:`T(x) = m_2 + A(x - m_1)` with
    :math:`A = \Sigma_1^{-1/2}(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}\Sigma_1^{-1/2}`.

    Args:
        m1: source mean ``(d,)`` or ``(B, d)``.
        S1: source covariance ``(d, d)`` or ``(B, d, d)``, symmetric positive definite.
        m2: target mean, shaped like ``m1``.
        S2: target covariance, shaped like ``S1``, symmetric positive semi-definite.

    Returns:
        A :class:`GaussianMap`, callable on points ``(n, d)``; its ``A`` is POT's
        ``ot.gaussian.bures_wasserstein_mapping`` operator.

    Raises:
        TypeError, ValueError: non-float or non-finite input, mismatched shapes, a
            non-symmetric covariance, ``S1`` not positive definite or ``S2`` not positive
            semi-definite.

    Example:
        >>> import torch
        >>> T = gaussian_monge_map(torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2))
        >>> T.A
        tensor([[2., 0.],
                [0., 2.]])
        >>> T(torch.tensor([[1.0, -1.0]]))
        tensor([[ 3., -1.]])
    """
    m1, s1, m2, s2 = _check_pair(m1, S1, m2, S2, definite=True)
    r1, r1_inv = sqrtm_spd(s1), sqrtm_spd(s1, inverse=True)
    middle = sqrtm_spd(r1 @ s2 @ r1)  # (..., d, d)
    a = r1_inv @ middle @ r1_inv
    return GaussianMap(A=0.5 * (a + a.transpose(-2, -1)), m1=m1, m2=m2)


def bures_wasserstein_distance(m1, S1, m2, S2, *, squared: bool = False) -> torch.Tensor:
    r"""2-Wasserstein distance between :math:`\mathcal{N}(m_1, \Sigma_1)` and
    :math:`\mathcal{N}(m_2, \Sigma_2)`.

    .. math::

        W_2^2 = \|m_1 - m_2\|^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
            - 2 \operatorname{tr}(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}.

    Args:
        m1, m2: means ``(d,)`` or ``(B, d)``.
        S1, S2: covariances ``(d, d)`` or ``(B, d, d)``, symmetric positive semi-definite.
        squared: return :math:`W_2^2` instead of :math:`W_2`.

    Returns:
        ``()`` or ``(B,)``; equal to ``E|T(X) - X|^2`` (squared) for the Monge map ``T``.

    Example:
        >>> import torch
        >>> m, S = torch.zeros(2), torch.eye(2)
        >>> float(bures_wasserstein_distance(m, S, m + 3.0, S, squared=True))  # |m1 - m2|^2
        18.0
        >>> float(bures_wasserstein_distance(m, S, m, 4 * S))  # sqrt(2 * (2 - 1)^2)
        1.4142135381698608
    """
    m1, s1, m2, s2 = _check_pair(m1, S1, m2, S2, definite=False)
    r1 = sqrtm_spd(s1)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp_min(0).sqrt().sum(-1)  # tr of the root
    trace = s1.diagonal(dim1=-2, dim2=-1).sum(-1) + s2.diagonal(dim1=-2, dim2=-1).sum(-1)
    w2 = ((m1 - m2) ** 2).sum(-1) + (trace - 2 * cross).clamp_min(0)
    return w2 if squared else w2.sqrt()
