r"""Sliced Wasserstein distances: optimal transport averaged over one-dimensional projections.

For weighted samples :math:`\alpha = \sum_i a_i \delta_{x_i}`, :math:`\beta = \sum_j b_j
\delta_{y_j}` in :math:`\mathbb{R}^d` of equal mass and :math:`p \geq 1`,

.. math::

    \mathrm{SW}_p^p(\alpha, \beta) = \int_{\mathbb{S}^{d-1}}
        \mathrm{W}_p^p(\theta_\# \alpha, \theta_\# \beta) \, d\sigma(\theta)
    \approx \frac{1}{L} \sum_{l=1}^{L} \mathrm{W}_p^p(\theta_{l\#} \alpha, \theta_{l\#} \beta),

with :math:`\theta_\# \alpha = \sum_i a_i \delta_{\langle \theta, x_i \rangle}` the projection on
the direction :math:`\theta`, :math:`\sigma` the uniform measure on the unit sphere and
:math:`\theta_1, \dots, \theta_L` independent uniform directions (a Monte-Carlo estimate, unbiased
for the integral). Each one-dimensional term is solved exactly in closed form by
:func:`couplings.wasserstein_1d` (sorting), so the cost is :math:`O(L (n + m) \log(n + m))`
instead of the :math:`O(n^3)` of exact OT. The max-sliced distance keeps the worst direction,
:math:`\max_l \mathrm{W}_p^p(\theta_{l\#} \alpha, \theta_{l\#} \beta)`.

For two Gaussians :math:`N(m_1, s^2 I_d)` and :math:`N(m_2, s^2 I_d)`, each projection is a
1-D Gaussian shift, :math:`\mathrm{W}_2^2 = \langle \theta, m_1 - m_2 \rangle^2`, and
:math:`\mathrm{SW}_2^2 = \|m_1 - m_2\|^2 / d`.

References:
    Rabin, Peyre, Delon and Bernot, "Wasserstein Barycenter and its Application to Texture
    Mixing", SSVM 2011. Bonneel, Rabin, Peyre and Pfister, "Sliced and Radon Wasserstein
    Barycenters of Measures", JMIV 2015. Deshpande et al., "Max-Sliced Wasserstein Distance and
    its use for GANs", CVPR 2019.
"""

from __future__ import annotations

import torch
from torch import nn

from ._validation import (
    as_tensor,
    batch_weights,
    check_equal_mass,
    check_finite,
    check_float,
    check_positive_int,
    check_reduction,
    check_same_dtype_device,
    reduce_batch,
)
from .costs import _batch_points
from .solvers.one_d import _check_p, wasserstein_1d

__all__ = [
    "SlicedWasserstein",
    "max_sliced_wasserstein",
    "random_directions",
    "sliced_wasserstein",
]



def random_directions(
    d: int,
    n_projections: int,
    *,
    batch: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Directions drawn independently and uniformly on the unit sphere :math:`\mathbb{S}^{d-1}`.

    A standard Gaussian vector divided by its norm is uniform on the sphere (the Gaussian is
    rotation invariant).

    Args:
        d: dimension of the space.
        n_projections: number ``L`` of directions.
        batch: ``B`` for an independent set of directions per problem, ``(B, d, L)``;
            ``None`` for one set ``(d, L)``.
        generator: a :class:`torch.Generator` for reproducible draws (on any device: the draw
            is made on the generator's device, then moved to ``device``).
        dtype, device: of the result.

    Returns:
        Unit columns, ``(d, L)`` or ``(B, d, L)``.

    Example:
        >>> import torch
        >>> from couplings.sliced import random_directions
        >>> theta = random_directions(3, 5, generator=torch.Generator().manual_seed(0))
        >>> theta.shape, bool(torch.allclose(theta.norm(dim=0), torch.ones(5)))
        (torch.Size([3, 5]), True)
    """
    d = check_positive_int(d, "d")
    n_projections = check_positive_int(n_projections, "n_projections")
    shape = (d, n_projections) if batch is None else (check_positive_int(batch, "batch"), d,
                                                       n_projections)
    draw_device = generator.device if generator is not None else device
    # draw in float64 so that the float32 and float64 directions of one seed agree
    z = torch.randn(shape, generator=generator, dtype=torch.float64, device=draw_device)
    while True:  # a zero vector has probability 0; redraw rather than divide by it
        norm = z.norm(dim=-2, keepdim=True)
        bad = norm == 0
        if not bool(bad.any()):
            break
        z = torch.where(bad, torch.randn(shape, generator=generator, dtype=torch.float64,
                                         device=draw_device), z)
    return (z / norm).to(dtype=dtype, device=device)


def _check_projections(projections, d: int, bsz: int, batched: bool, like: torch.Tensor):
    """Validate user directions; return them as ``(B, d, L)``."""
    theta = as_tensor(projections, "projections")
    check_float(theta, "projections")
    check_same_dtype_device(x=like, projections=theta)
    ok = (theta.dim() == 2 and theta.shape[0] == d) or (
        batched and theta.dim() == 3 and tuple(theta.shape[:2]) == (bsz, d)
    )
    if not ok or theta.shape[-1] == 0:
        expected = f"(d, L) = ({d}, L)" + (f" or (B, d, L) = ({bsz}, {d}, L)" if batched else "")
        raise ValueError(
            f"projections must have shape {expected} with L >= 1 (one direction per column), "
            f"got shape {tuple(theta.shape)}."
        )
    check_finite(theta, "projections")
    if theta.dim() == 2:
        theta = theta.unsqueeze(0).expand(bsz, *theta.shape)
    return theta


def _projected_costs(x, y, a, b, n_projections, p, projections, generator):
    """Validate, project and solve the 1-D problems: ``W_p^p`` per direction ``(B, L)``, and
    whether the call was batched."""
    x, y, batched = _batch_points(x, y)  # (B, n, d), (B, m, d)
    check_finite(x, "x")
    check_finite(y, "y")
    bsz, n, d = x.shape
    m = y.shape[1]
    if n == 0 or m == 0:
        raise ValueError(f"x and y need at least one point each, got n = {n} and m = {m}.")
    p = _check_p(p)
    uniform = a is None and b is None  # then wasserstein_1d's uniform shortcut applies
    a = batch_weights(a, n, bsz, batched, x, "a", "the points of x")  # (B, n)
    b = batch_weights(b, m, bsz, batched, x, "b", "the points of y")  # (B, m)
    check_equal_mass(a, b)
    if projections is None:
        n_projections = check_positive_int(n_projections, "n_projections")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}."
            )
        theta = random_directions(d, n_projections, batch=bsz, generator=generator,
                                  dtype=x.dtype, device=x.device)  # (B, d, L)
    else:
        theta = _check_projections(projections, d, bsz, batched, x)  # (B, d, L)
    n_dir = theta.shape[-1]
    u = (x @ theta).transpose(-2, -1).reshape(bsz * n_dir, n)  # (B L, n)
    v = (y @ theta).transpose(-2, -1).reshape(bsz * n_dir, m)  # (B L, m)
    wu = wv = None
    if not uniform:
        wu = a.unsqueeze(1).expand(bsz, n_dir, n).reshape(bsz * n_dir, n)
        wv = b.unsqueeze(1).expand(bsz, n_dir, m).reshape(bsz * n_dir, m)
    costs = wasserstein_1d(u, v, wu, wv, p=p).reshape(bsz, n_dir)  # (B, L)
    return costs, p, batched


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    n_projections: int = 50,
    p: float = 2,
    projections: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    root: bool = False,
) -> torch.Tensor:
    r"""Sliced Wasserstein distance between two weighted point clouds.

    Returns the Monte-Carlo estimate
    :math:`\mathrm{SW}_p^p = \frac1L \sum_{l} \mathrm{W}_p^p(\theta_{l\#}\alpha,
    \theta_{l\#}\beta)` (the ``p``-th power, an average of transport costs, by default), or its
    ``p``-th root :math:`\mathrm{SW}_p` with ``root=True``, which is what POT's
    ``ot.sliced_wasserstein_distance`` returns. The directions are drawn uniformly on the
    sphere, independently for each problem of a batch, or given as ``projections``.

    Differentiable in the points, the weights and the given ``projections`` (almost
    everywhere: the sorted order of each projection is held fixed). With ``root=True`` the
    gradient is infinite where the distance is 0 (the root of ``p > 1``); train on the power.

    Args:
        x: points ``(n, d)`` or ``(B, n, d)``.
        y: points ``(m, d)`` or ``(B, m, d)``.
        a, b: non-negative weights ``(n,)`` / ``(m,)`` or batched ``(B, n)`` / ``(B, m)``, of
            equal total mass (the value is proportional to it); ``None`` for uniform ``1/n``,
            ``1/m``.
        n_projections: number ``L`` of random directions; ignored when ``projections`` is
            given.
        p: exponent of the ground cost :math:`|s - t|^p` on the line, a real number ``>= 1``.
        projections: directions as columns, ``(d, L)`` (shared by the batch) or ``(B, d, L)``;
            used as given (unit columns give the sliced distance; other norms scale each term
            by :math:`\|\theta\|^p`).
        generator: a :class:`torch.Generator` seeding the random directions.
        root: return :math:`\mathrm{SW}_p` instead of :math:`\mathrm{SW}_p^p`.

    Returns:
        ``()`` or ``(B,)``, in the dtype and on the device of ``x``.

    Raises:
        TypeError, ValueError: points of different dimensions, batch sizes, dtypes or devices,
            non-finite points, weights or directions, negative weights or unequal masses,
            ``p < 1``, ``n_projections <= 0``, or ``projections`` of the wrong shape.

    Example:
        >>> import torch
        >>> from couplings.sliced import sliced_wasserstein
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(500, 2, generator=g, dtype=torch.float64)
        >>> y = torch.randn(500, 2, generator=g, dtype=torch.float64) + torch.tensor([3.0, 0.0])
        >>> value = sliced_wasserstein(x, y, n_projections=200, generator=g)
        >>> abs(float(value) - 4.5) < 0.5  # |m1 - m2|^2 / d = 4.5, up to Monte-Carlo noise
        True
        >>> theta = torch.tensor([[1.0], [0.0]], dtype=torch.float64)  # the x-axis only
        >>> round(float(sliced_wasserstein(x, x + 1.0, projections=theta)), 12)
        1.0

    Names elsewhere: POT ``ot.sliced_wasserstein_distance(X_s, X_t, a, b, n_projections, p,
    projections, seed)`` is ``sliced_wasserstein(..., root=True)`` (same ``projections``
    layout ``(d, L)``).

    References:
        Bonneel, Rabin, Peyre and Pfister, "Sliced and Radon Wasserstein Barycenters of
        Measures", JMIV 2015.
    """
    costs, p, batched = _projected_costs(x, y, a, b, n_projections, p, projections, generator)
    value = costs.mean(-1)  # (B,)
    if root:
        value = value.pow(1.0 / p)
    return value if batched else value.squeeze(0)


def max_sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    n_projections: int = 50,
    p: float = 2,
    projections: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    root: bool = False,
) -> torch.Tensor:
    r"""Max-sliced Wasserstein distance over a set of directions:
    :math:`\max_l \mathrm{W}_p^p(\theta_{l\#}\alpha, \theta_{l\#}\beta)` (or its ``p``-th root
    with ``root=True``, as POT's ``ot.max_sliced_wasserstein_distance``).

    The maximum is taken over the ``L`` random or given directions, not optimised over the
    sphere; to optimise, pass ``projections`` that require grad and ascend this value
    (renormalising the columns after each step). Arguments and shapes as in
    :func:`sliced_wasserstein`. The gradient flows through the maximising direction.

    Example:
        >>> import torch
        >>> from couplings.sliced import max_sliced_wasserstein
        >>> x = torch.zeros(4, 2, dtype=torch.float64)
        >>> theta = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> y = x + torch.tensor([3.0, 1.0], dtype=torch.float64)
        >>> float(max_sliced_wasserstein(x, y, projections=theta))  # the shift along x: 3^2
        9.0

    References:
        Deshpande et al., "Max-Sliced Wasserstein Distance and its use for GANs", CVPR 2019.
    """
    costs, p, batched = _projected_costs(x, y, a, b, n_projections, p, projections, generator)
    value = costs.amax(-1)  # (B,)
    if root:
        value = value.pow(1.0 / p)
    return value if batched else value.squeeze(0)


class SlicedWasserstein(nn.Module):
    r""":func:`sliced_wasserstein` as a loss module, with fresh random directions at each call
    (an unbiased stochastic estimate of :math:`\mathrm{SW}_p^p` and of its gradient).

    Args:
        n_projections: directions per call.
        p: exponent of the ground cost.
        root: return :math:`\mathrm{SW}_p` rather than :math:`\mathrm{SW}_p^p` (the default, the
            smooth training loss).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
        generator: optional :class:`torch.Generator` for the directions.

    Example:
        >>> import torch
        >>> from couplings.sliced import SlicedWasserstein
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(64, 3, generator=g, requires_grad=True)
        >>> SlicedWasserstein(n_projections=20, generator=g)(x, torch.randn(80, 3)).backward()
        >>> x.grad.shape
        torch.Size([64, 3])
    """

    def __init__(self, n_projections: int = 50, p: float = 2, root: bool = False,
                 reduction: str = "mean", generator: torch.Generator | None = None):
        super().__init__()
        self.n_projections = check_positive_int(n_projections, "n_projections")
        self.p = _check_p(p)
        self.root = bool(root)
        self.reduction = check_reduction(reduction)
        self.generator = generator

    def forward(self, x, y, a=None, b=None) -> torch.Tensor:
        value = sliced_wasserstein(x, y, a, b, n_projections=self.n_projections, p=self.p,
                                   generator=self.generator, root=self.root)
        return reduce_batch(value, self.reduction)

    def extra_repr(self) -> str:
        return f"n_projections={self.n_projections}, p={self.p:g}, root={self.root}"
