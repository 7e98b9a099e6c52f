r"""Starting potentials for Sinkhorn on point clouds: the Gaussian initializer.

For the cost :math:`\|x - y\|^2` the optimal potentials between two Gaussians are quadratic.
With the Monge map :math:`T(x) = m_1 + A (x - m_0)` between the Gaussian fits
:math:`\mathcal N(m_0, \Sigma_0)` of the weighted points ``x`` and :math:`\mathcal N(m_1,
\Sigma_1)` of ``y`` (:mod:`couplings.maps.gaussian`), the Brenier potential
:math:`\varphi(x) = \tfrac12 (x - m_0)^T A (x - m_0) + m_1^T x` has :math:`\nabla\varphi = T`,
its conjugate is :math:`\varphi^*(y) = \tfrac12 (y - m_1)^T A^{-1} (y - m_1) + m_0^T (y - m_1)`,
and

.. math::

    f(x) = \|x\|^2 - 2 \varphi(x), \qquad g(y) = \|y\|^2 - 2 \varphi^*(y)

are Kantorovich potentials of the Gaussians (:math:`f \oplus g \le C`, with equality along
:math:`T`). For clouds that are roughly Gaussian they are near the entropic potentials at a
small eps, and a solve started from them needs fewer iterations than from zero (measured,
n = m = 1000, float32, tol 1e-4, eps = 0.1 and 0.01 times the mean cost: 2-D and 3-D
Gaussians 14 -> 11, 12 -> 11, 61 -> 51, 60 -> 49; 2-D and 3-D shapes 19 -> 12, 12 -> 11,
65 -> 51, 47 -> 46; N(0, I) against a uniform box, three seeds each, 11-14 -> 11 and
49-57 -> 40-51 iterations). An annealed solve gained nothing consistent (five of six problems
at 0.001 x the mean cost: 285-676 iterations against 284-596, three of them more), so the
solver uses the guess only for problems that do not anneal. This is the ``GaussianInitializer``
of OTT-JAX (Thornton and Cuturi, "Rethinking Initialization of the Sinkhorn Algorithm",
AISTATS 2023).

Example:
    >>> import torch
    >>> x = torch.randn(200, 2, dtype=torch.float64)
    >>> f, g = gaussian_potentials(x[None], x[None] + 1.0, torch.full((1, 200), 1 / 200),
    ...                            torch.full((1, 200), 1 / 200))
    >>> cost = ((x[:, None] - x[None] - 1.0) ** 2).sum(-1)
    >>> bool((f[0, :, None] + g[0, None, :] <= cost + 1e-9).all())  # dual feasible
    True
"""

from __future__ import annotations

import torch

__all__ = ["gaussian_potentials"]

# added to each covariance: this times its mean variance, at least _FLOOR times
# (1 + the mean squared norm of the points), so that degenerate clouds (on a subspace, n <= d,
# or a single point) keep invertible covariances
_RIDGE, _FLOOR = 1e-6, 1e-12


def _moments(points: torch.Tensor, weights: torch.Tensor):
    """Weighted mean ``(B, d)`` and covariance ``(B, d, d)`` of ``points`` ``(B, n, d)``, with
    the ridge above."""
    w = weights / weights.sum(-1, keepdim=True)
    mean = (w.unsqueeze(-1) * points).sum(-2)
    centred = points - mean.unsqueeze(-2)
    cov = (centred * w.unsqueeze(-1)).transpose(-2, -1) @ centred
    d = points.shape[-1]
    size = 1.0 + (w * (points * points).sum(-1)).sum(-1)
    ridge = torch.maximum(_RIDGE * cov.diagonal(dim1=-2, dim2=-1).mean(-1), _FLOOR * size)
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    return mean, cov + ridge[:, None, None] * eye


def gaussian_potentials(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """The potentials ``(f, g)`` ``(B, n)``, ``(B, m)`` of the squared Euclidean OT between the
    Gaussian fits of the weighted clouds ``x`` ``(B, n, d)`` (weights ``a`` ``(B, n)``) and
    ``y`` ``(B, m, d)`` (``b``), computed in float64 and returned in ``x``'s dtype, detached
    (zeros for a problem where they are not finite there). Zero weights leave their points out
    of the fits (their potentials are still given)."""
    from ..maps.gaussian import sqrtm_spd  # (maps imports the solvers)

    dtype = x.dtype
    x, y, a, b = (t.detach().to(torch.float64) for t in (x, y, a, b))
    m0, s0 = _moments(x, a)
    m1, s1 = _moments(y, b)
    r0, r0_inv = sqrtm_spd(s0), sqrtm_spd(s0, inverse=True)
    middle = r0 @ s1 @ r0
    a_map = r0_inv @ sqrtm_spd(middle) @ r0_inv  # A
    a_inv = r0 @ sqrtm_spd(middle, inverse=True) @ r0  # A^{-1}
    cx, cy = x - m0.unsqueeze(-2), y - m1.unsqueeze(-2)
    two_phi = ((cx @ a_map) * cx).sum(-1) + 2 * (x @ m1.unsqueeze(-1)).squeeze(-1)
    two_phi_star = (((cy @ a_inv) * cy).sum(-1) + 2 * (y @ m0.unsqueeze(-1)).squeeze(-1)
                    - 2 * (m0 * m1).sum(-1, keepdim=True))
    f = (x * x).sum(-1) - two_phi
    g = (y * y).sum(-1) - two_phi_star
    f, g = f.to(dtype), g.to(dtype)
    # a guess that does not fit the dtype (or met an overflow) is no guess: zeros there
    ok = (torch.isfinite(f).all(-1) & torch.isfinite(g).all(-1)).unsqueeze(-1)
    return torch.where(ok, f, 0.0), torch.where(ok, g, 0.0)
