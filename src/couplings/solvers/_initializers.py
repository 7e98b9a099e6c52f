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

import numpy as np
import torch

__all__ = ["gaussian_potentials"]

# added to each covariance: this times its mean variance, at least _FLOOR times
# (1 + the mean squared norm of the points), so that degenerate clouds (on a subspace, n <= d,
# or a single point) keep invertible covariances
_RIDGE, _FLOOR = 1e-6, 1e-12


def _moments(lib, points, weights):
    """Weighted mean ``(B, d)`` and covariance ``(B, d, d)`` of ``points`` ``(B, n, d)``, in
    float64, with the ridge above (``lib``: numpy or torch, the arrays' module)."""
    w = weights / weights.sum(-1)[..., None]
    mean = (w[..., None, :] @ points)[..., 0, :]  # (B, d)
    centred = points - mean[..., None, :]
    cov = (centred * w[..., None]).swapaxes(-2, -1) @ centred
    mean, cov = (lib.asarray(t, dtype=lib.float64) for t in (mean, cov))
    spread = cov.diagonal(0, -2, -1).sum(-1)  # E |x - mean|^2
    size = 1.0 + (mean * mean).sum(-1) + spread  # 1 + E |x|^2
    ridge = lib.maximum(_RIDGE / cov.shape[-1] * spread, _FLOOR * size)
    return mean, cov + ridge[:, None, None] * lib.eye(cov.shape[-1], dtype=lib.float64)


def _sqrt_and_inverse(lib, s):
    """``S^{1/2}`` and ``S^{-1/2}`` of symmetric positive definite ``s`` ``(B, d, d)`` from one
    eigendecomposition."""
    w, v = lib.linalg.eigh(s)
    root = lib.sqrt(lib.clip(w, 1e-300, None))[..., None, :]
    vt = v.swapaxes(-2, -1)
    return (v * root) @ vt, (v / root) @ vt


def _rowsum(lib, z):
    """``z.sum(-1)`` for ``z`` ``(B, n, d)`` as a product with ones: numpy's reduction over a
    short last axis is several times slower (16 against 3 us at n = 1000, d = 2)."""
    return z @ lib.ones(z.shape[-1], dtype=z.dtype)


def _quadratic(lib, points, q, lin, const):
    """``p^T q p + p^T lin + const`` per point ``(B, n)``, in the points' dtype."""
    q, lin, const = (lib.asarray(t, dtype=points.dtype) for t in (q, lin, const))
    return _rowsum(lib, (points @ q) * points) + (points @ lin)[..., 0] + const


def gaussian_potentials(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *,
                        rows: bool = True):
    """The potentials ``(f, g)`` ``(B, n)``, ``(B, m)`` of the squared Euclidean OT between the
    Gaussian fits of the weighted clouds ``x`` ``(B, n, d)`` (weights ``a`` ``(B, n)``) and
    ``y`` ``(B, m, d)`` (``b``), in ``x``'s dtype (the fits' linear algebra in float64),
    detached; zeros for a problem where they are not finite. Zero weights leave their points
    out of the fits (their potentials are still given). ``rows=False`` leaves ``f`` at zero
    (a solve starts from ``g`` alone: its first update is the rows').

    With :math:`A^{-1}` the inverse map's matrix, both are quadratics:
    :math:`f(x) = x^T (I - A) x + 2 x^T (A m_0 - m_1) - m_0^T A m_0` and
    :math:`g(y) = y^T (I - A^{-1}) y + 2 y^T (A^{-1} m_1 - m_0) - m_1^T A^{-1} m_1
    + 2 m_0^T m_1`. On the CPU the arithmetic runs in numpy, whose operations on these small
    arrays cost a fraction of torch's (about 50 of them: about 120 against 380 us at n = 30,
    both potentials)."""
    host = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
    tensors = [t.detach() for t in (x, y, a, b)]
    if not host:
        return _potentials(torch, *tensors, rows=rows)
    f, g = _potentials(np, *(t.numpy() for t in tensors), rows=rows)
    return torch.from_numpy(f), torch.from_numpy(g)


def _potentials(lib, x, y, a, b, *, rows: bool):
    """:func:`gaussian_potentials` on arrays of ``lib`` (numpy or torch)."""
    m0, s0 = _moments(lib, x, a)
    m1, s1 = _moments(lib, y, b)
    r0, r0_inv = _sqrt_and_inverse(lib, s0)
    middle, middle_inv = _sqrt_and_inverse(lib, r0 @ s1 @ r0)
    eye = lib.eye(m0.shape[-1], dtype=lib.float64)
    a_inv = r0 @ middle_inv @ r0
    m0c, m1c = m0[..., None], m1[..., None]  # (B, d, 1)
    g = _quadratic(lib, y, eye - a_inv, 2 * (a_inv @ m1c - m0c),
                   ((2 * m0c - a_inv @ m1c) * m1c).sum((-2, -1))[..., None])
    ok = lib.isfinite(g).all(-1)[..., None]
    if rows:
        a_map = r0_inv @ middle @ r0_inv
        f = _quadratic(lib, x, eye - a_map, 2 * (a_map @ m0c - m1c),
                       -(m0c * (a_map @ m0c)).sum((-2, -1))[..., None])
        ok = ok & lib.isfinite(f).all(-1)[..., None]
    else:
        f = lib.zeros(x.shape[:-1], dtype=x.dtype) if lib is np else x.new_zeros(x.shape[:-1])
    # a guess that does not fit the dtype (or met an overflow) is no guess: zeros there
    return lib.where(ok, f, 0.0), lib.where(ok, g, 0.0)
