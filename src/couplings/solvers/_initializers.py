r"""Starting potentials for Sinkhorn on point clouds: the Gaussian initializer.

For the cost :math:`\|x - y\|^2` the potentials between two Gaussians are quadratic, both for
unregularized OT and for entropic OT at any eps (the entropic plan between Gaussians is
Gaussian). With the Gaussian fits :math:`\mathcal N(m_0, \Sigma_0)` of the weighted points
``x`` and :math:`\mathcal N(m_1, \Sigma_1)` of ``y``,

.. math::

    f(x) = \|x\|^2 - 2 m_1^T x - (x - m_0)^T Q_0 (x - m_0), \qquad
    g(y) = \|y\|^2 - 2 m_0^T y - (y - m_1)^T Q_1 (y - m_1)

up to constants, where :math:`Q_1` (:func:`_curvature`) is the Monge map's matrix from the
``y`` fit to the ``x`` fit at ``eps = 0`` (the Brenier potential, as in OTT-JAX's
``GaussianInitializer``; Thornton and Cuturi, "Rethinking Initialization of the Sinkhorn
Algorithm", AISTATS 2023) and its entropic counterpart at ``eps > 0`` (the closed form of
entropic OT between Gaussians; Janati, Muzellec, Peyre and Cuturi, NeurIPS 2020, and Mallasto
et al. 2021). The solver uses the entropic one at the problem's eps.

For clouds that are roughly Gaussian a solve started from them needs fewer iterations than
from zero. Iterations to ``tol = 1e-4``, float32, n = m = 1000, the benchmark's 2-D and 3-D
Gaussians and shapes, three seeds each (12 problems), each stopping at its first iteration at
``tol``, summed over the problems:

====================  =====  =====  =====  =====  =====
eps / mean cost       1      0.3    0.1    0.03   0.01
====================  =====  =====  =====  =====  =====
Brenier (eps = 0)     70     95     123    290    626
entropic              20     67     107    276    586
====================  =====  =====  =====  =====  =====

(at 0.1, the six Gaussians 9-10 -> 7-8 iterations, the shapes unchanged; a few problems take
more: one 2-D Gaussian at 0.01, 37 -> 47, one 3-D at 0.03, 17 -> 20, and one 2-D shape at
0.03, 28 -> 29; the sums fall at every eps). Before the entropic form, the Brenier
potentials against zero: 2-D and 3-D Gaussians 14 -> 11, 12 -> 11 at 0.1 and 61 -> 51,
60 -> 49 at 0.01 (stopping at the scheduled checks). An annealed solve gained
nothing consistent from the Brenier start (five of six problems at 0.001 x the mean cost:
285-676 iterations against 284-596, three of them more), so the solver uses the guess only for
problems that do not anneal.

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


def _moments(lib, points, weights, reduce=None):
    """Weighted mean ``(B, d)`` and covariance ``(B, d, d)`` of ``points`` ``(B, n, d)``, in
    float64, with the ridge above (``lib``: numpy or torch, the arrays' module). ``reduce``
    (torch only) sums a tensor over the holders of the other rows of ``points`` (the ranks of
    a sharded solve); the moments are then those of all the rows."""
    reduce = reduce or (lambda t: t)
    mass = reduce(weights.sum(-1))[..., None]  # (B, 1)
    mean = reduce((weights[..., None, :] @ points)[..., 0, :]) / mass  # (B, d)
    centred = points - mean[..., None, :]
    cov = reduce((centred * weights[..., None]).swapaxes(-2, -1) @ centred) / mass[..., None]
    mean, cov = (lib.asarray(t, dtype=lib.float64) for t in (mean, cov))
    spread = cov.diagonal(0, -2, -1).sum(-1)  # E |x - mean|^2
    size = 1.0 + (mean * mean).sum(-1) + spread  # 1 + E |x|^2
    ridge = lib.maximum(_RIDGE / cov.shape[-1] * spread, _FLOOR * size)
    return mean, cov + ridge[:, None, None] * lib.eye(cov.shape[-1], dtype=lib.float64)


def _sqrt(lib, s):
    """``S^{1/2}`` of symmetric positive definite ``s`` ``(B, d, d)`` (numpy or torch arrays)."""
    w, v = lib.linalg.eigh(s)
    return (v * lib.sqrt(lib.clip(w, 1e-300, None))[..., None, :]) @ v.swapaxes(-2, -1)


def _rowsum(lib, z):
    """``z.sum(-1)`` for ``z`` ``(B, n, d)`` as a product with ones: numpy's reduction over a
    short last axis is several times slower (16 against 3 us at n = 1000, d = 2)."""
    return z @ lib.ones(z.shape[-1], dtype=z.dtype)


def _quadratic(lib, points, q, lin, const):
    """``p^T q p + p^T lin + const`` per point ``(B, n)``, in the points' dtype."""
    q, lin, const = (lib.asarray(t, dtype=points.dtype) for t in (q, lin, const))
    return _rowsum(lib, (points @ q) * points) + (points @ lin)[..., 0] + const


def gaussian_potentials(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *,
                        eps: float = 0.0, rows: bool = True, reduce=None):
    r"""The potentials ``(f, g)`` ``(B, n)``, ``(B, m)`` of the squared Euclidean OT between the
    Gaussian fits of the weighted clouds ``x`` ``(B, n, d)`` (weights ``a`` ``(B, n)``) and
    ``y`` ``(B, m, d)`` (``b``), entropic with regularization ``eps`` (0: unregularized), in
    ``x``'s dtype (the fits' linear algebra in float64), detached; zeros for a problem where
    they are not finite. Zero weights leave their points out of the fits (their potentials are
    still given). ``rows=False`` leaves ``f`` at zero (a solve starts from ``g`` alone: its
    first update is the rows').

    Both are quadratics, :math:`g(y) = \|y\|^2 - 2 m_0^T y - (y - m_1)^T Q_1 (y - m_1)
    + 2 m_0^T m_1` and :math:`f(x) = \|x\|^2 - 2 m_1^T x - (x - m_0)^T Q_0 (x - m_0)`, with
    :math:`Q_1` from :func:`_curvature` (:math:`Q_0` the same with the clouds' roles
    exchanged). At ``eps = 0``, :math:`Q_1` is the matrix of the Monge map from ``y``'s fit to
    ``x``'s, and the pair is dual feasible with equality on the map's graph. At ``eps > 0``
    the constants are not the entropic problem's (a solve's first update sets them). On the
    CPU the arithmetic runs in numpy, whose operations on these small arrays cost a fraction
    of torch's (about 50 of them: about 120 against 380 us at n = 30, both potentials).

    ``reduce`` (a sharded solve, where ``x`` and ``a`` are this rank's rows): sums a tensor
    over the ranks, so that ``x``'s fit is that of all the rows (two all-reduces)."""
    host = (reduce is None and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64))
    tensors = [t.detach() for t in (x, y, a, b)]
    if not host:
        return _potentials(torch, *tensors, eps=eps, rows=rows, reduce=reduce)
    f, g = _potentials(np, *(t.numpy() for t in tensors), eps=eps, rows=rows)
    return torch.from_numpy(f), torch.from_numpy(g)


def _curvature(lib, s_from, s_to, eps: float):
    r""":math:`Q` ``(B, d, d)`` of the potential on the side of covariance ``s_to``:
    :math:`Q = R\, V k(\mu) V^T R` with :math:`R = \Sigma_{from}^{1/2}`,
    :math:`R \Sigma_{to} R = V \mathrm{diag}(\mu) V^T` and
    :math:`k(\mu) = 2 / (\sqrt{\delta^2 + 4\mu} + \delta)`, :math:`\delta = \varepsilon / 2`
    (at ``eps = 0``, :math:`k = \mu^{-1/2}` and :math:`Q` is the Monge map's matrix, the
    Bures-Wasserstein one).

    Derivation: the entropic plan between Gaussians is Gaussian, and
    :math:`\log \pi(x, y) - \log \alpha(x) - \log \beta(y) = (f(x) + g(y) - \|x - y\|^2)
    / \varepsilon` makes the cross block of its precision :math:`-(2/\varepsilon) I`. With
    :math:`S` the conditional covariance of ``y`` given ``x`` (the Schur complement), the
    cross covariance is :math:`(2/\varepsilon) \Sigma_{from} S`, and :math:`S` solves
    :math:`(2/\varepsilon)^2 S \Sigma_{from} S + S = \Sigma_{to}`; in :math:`Z = R S R` this
    is a scalar quadratic per eigenvalue of :math:`R \Sigma_{to} R`, whose positive root is
    :math:`z = 2\mu / (\sqrt{1 + 4\mu / \delta^2} + 1)`. The potential's quadratic part is
    :math:`-\delta (S^{-1} - \Sigma_{to}^{-1}) = -R V (\delta / z - \delta / \mu) V^T R`,
    and :math:`\delta / z - \delta / \mu = k(\mu)`.
    """
    root = _sqrt(lib, s_from)
    mu, vec = lib.linalg.eigh(root @ s_to @ root)
    delta = 0.5 * eps
    k = 2.0 / (lib.sqrt(delta * delta + 4 * lib.clip(mu, 1e-300, None)) + delta)
    return root @ (vec * k[..., None, :]) @ vec.swapaxes(-2, -1) @ root


def _potentials(lib, x, y, a, b, *, eps: float = 0.0, rows: bool = True, reduce=None):
    """:func:`gaussian_potentials` on arrays of ``lib`` (numpy or torch)."""
    m0, s0 = _moments(lib, x, a, reduce)
    m1, s1 = _moments(lib, y, b)
    eye = lib.eye(m0.shape[-1], dtype=lib.float64)
    m0c, m1c = m0[..., None], m1[..., None]  # (B, d, 1)
    q1 = _curvature(lib, s0, s1, eps)
    g = _quadratic(lib, y, eye - q1, 2 * (q1 @ m1c - m0c),
                   ((2 * m0c - q1 @ m1c) * m1c).sum((-2, -1))[..., None])
    ok = lib.isfinite(g).all(-1)[..., None]
    if rows:
        q0 = _curvature(lib, s1, s0, eps)
        f = _quadratic(lib, x, eye - q0, 2 * (q0 @ m0c - m1c),
                       -(m0c * (q0 @ m0c)).sum((-2, -1))[..., None])
        ok = ok & lib.isfinite(f).all(-1)[..., None]
    else:
        f = lib.zeros(x.shape[:-1], dtype=x.dtype) if lib is np else x.new_zeros(x.shape[:-1])
    # a guess that does not fit the dtype (or met an overflow) is no guess: zeros there
    return lib.where(ok, f, 0.0), lib.where(ok, g, 0.0)
