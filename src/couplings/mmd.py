r"""Kernel two-sample losses: the maximum mean discrepancy (MMD) and the energy distance.

For weighted samples :math:`\alpha = \sum_i a_i \delta_{x_i}`, :math:`\beta = \sum_j b_j
\delta_{y_j}` (weights normalised to sum to one) and a kernel :math:`k`,

.. math::

    \mathrm{MMD}^2_k(\alpha, \beta) = \sum_{ii'} a_i a_{i'} k(x_i, x_{i'})
        + \sum_{jj'} b_j b_{j'} k(y_j, y_{j'}) - 2 \sum_{ij} a_i b_j k(x_i, y_j)

(the biased, V-statistic estimator). The unbiased estimator drops the diagonal terms
:math:`i = i'` and :math:`j = j'` of the first two sums and renormalises them by
:math:`1 - \sum_i a_i^2` (the U-statistic :math:`\frac{1}{n(n-1)}\sum_{i \neq i'}` for uniform
weights). Kernels: ``"gaussian"`` :math:`e^{-\|x - y\|^2 / (2h^2)}`, ``"laplacian"``
:math:`e^{-\|x - y\| / h}`, ``"energy"`` :math:`-\|x - y\|` (conditionally positive definite;
its MMD² is the squared energy distance
:math:`2\mathbb{E}\|X - Y\| - \mathbb{E}\|X - X'\| - \mathbb{E}\|Y - Y'\|`).

These are the limits of the Sinkhorn divergence as :math:`\varepsilon \to \infty` with the cost
:math:`-k` (Feydy et al. 2019), and the building blocks of the OT-GAN loss.

References:
    Gretton, Borgwardt, Rasch, Schölkopf and Smola, "A Kernel Two-Sample Test", JMLR 2012;
    Székely and Rizzo, "Energy statistics", 2013.
"""

from __future__ import annotations

import torch
from torch import nn

from ._validation import batch_weights, check_choice, check_finite, check_positive_scalar
from .costs import _batch_points, euclidean, sqeuclidean

__all__ = ["MMD", "EnergyDistance", "energy_distance", "mmd"]

KERNELS = ("gaussian", "laplacian", "energy")
ESTIMATORS = ("biased", "unbiased")


def _gram(x: torch.Tensor, y: torch.Tensor, kernel: str, bandwidth: float) -> torch.Tensor:
    if kernel == "gaussian":
        return torch.exp(-sqeuclidean(x, y) / (2 * bandwidth**2))
    distance = euclidean(x, y)  # gradient 0 at coinciding points
    if kernel == "laplacian":
        return torch.exp(-distance / bandwidth)
    return -distance


def _self_term(k: torch.Tensor, w: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """``sum_ii' w_i w_i' k_ii'`` over ``(B, n, n)``, without the diagonal when unbiased."""
    total = torch.einsum("bi,bij,bj->b", w, k, w)
    if not unbiased:
        return total
    diagonal = (w * w * k.diagonal(dim1=-2, dim2=-1)).sum(-1)
    return (total - diagonal) / (1 - (w * w).sum(-1))


def mmd(x, y, a=None, b=None, *, kernel: str = "gaussian", bandwidth: float = 1.0,
        estimator: str = "biased", squared: bool = True) -> torch.Tensor:
    r"""Maximum mean discrepancy between two weighted samples.

    Args:
        x: points ``(n, d)`` or ``(B, n, d)``.
        y: points ``(m, d)`` or ``(B, m, d)``.
        a, b: non-negative weights ``(n,)`` / ``(m,)`` or batched; normalised to sum to one
            (default uniform).
        kernel: ``"gaussian"``, ``"laplacian"`` or ``"energy"``.
        bandwidth: ``h`` of the Gaussian and Laplacian kernels.
        estimator: ``"biased"`` (V-statistic; 0 for equal samples, >= 0) or ``"unbiased"``
            (U-statistic; can be negative; needs at least 2 points per sample).
        squared: return :math:`\mathrm{MMD}^2` (default) or its square root (biased only).

    Returns:
        ``()`` or ``(B,)``, differentiable in the points and the weights.

    Example:
        >>> import torch
        >>> from couplings import mmd
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(3000, 1, generator=g), torch.randn(3000, 1, generator=g) + 1
        >>> round(float(mmd(x, y, estimator="unbiased")), 2)  # closed form: 0.177
        0.18
    """
    x, y, batched = _batch_points(x, y)
    check_finite(x, "x")
    check_finite(y, "y")
    kernel = check_choice(kernel, "kernel", KERNELS)
    estimator = check_choice(estimator, "estimator", ESTIMATORS)
    bandwidth = check_positive_scalar(bandwidth, "bandwidth")
    unbiased = estimator == "unbiased"
    if unbiased and min(x.shape[1], y.shape[1]) < 2:
        raise ValueError(
            "the unbiased estimator needs at least 2 points in each sample, got "
            f"{x.shape[1]} and {y.shape[1]}."
        )
    if unbiased and not squared:
        raise ValueError("squared=False takes the square root, which needs estimator='biased' "
                         "(the unbiased estimate can be negative).")
    batch = x.shape[0]
    a = batch_weights(a, x.shape[1], batch, batched, x, "a", "the points of x")
    b = batch_weights(b, y.shape[1], batch, batched, x, "b", "the points of y")
    a = a / a.sum(-1, keepdim=True)
    b = b / b.sum(-1, keepdim=True)
    if unbiased and bool(((a * a).sum(-1) >= 1).any() or ((b * b).sum(-1) >= 1).any()):
        raise ValueError("the unbiased estimator needs at least 2 points of positive weight in "
                         "each sample.")
    kxx = _self_term(_gram(x, x, kernel, bandwidth), a, unbiased)
    kyy = _self_term(_gram(y, y, kernel, bandwidth), b, unbiased)
    kxy = torch.einsum("bi,bij,bj->b", a, _gram(x, y, kernel, bandwidth), b)
    value = kxx + kyy - 2 * kxy
    if not squared:
        value = value.clamp_min(0).sqrt()
    return value if batched else value.squeeze(0)


def energy_distance(x, y, a=None, b=None, *, squared: bool = False,
                    estimator: str = "biased") -> torch.Tensor:
    r"""Energy distance :math:`(2\mathbb{E}\|X-Y\| - \mathbb{E}\|X-X'\| -
    \mathbb{E}\|Y-Y'\|)^{1/2}` between weighted samples, as :func:`scipy.stats.energy_distance`
    (which is the 1-D case); ``squared=True`` gives the square, the MMD² of the energy kernel.

    Args:
        x, y, a, b: as in :func:`mmd`.
        squared: return the squared distance.
        estimator: ``"biased"`` (scipy's) or ``"unbiased"`` (squared only).

    Example:
        >>> import torch
        >>> from couplings import energy_distance
        >>> x = torch.tensor([[0.0], [8.0]], dtype=torch.float64)
        >>> y = torch.tensor([[0.0], [8.0]], dtype=torch.float64)
        >>> a = torch.tensor([3.0, 1.0], dtype=torch.float64)
        >>> b = torch.tensor([2.0, 2.0], dtype=torch.float64)
        >>> float(energy_distance(x, y, a, b))  # scipy.stats.energy_distance([0, 8], ...)
        1.0
    """
    return mmd(x, y, a, b, kernel="energy", estimator=estimator, squared=squared)


class MMD(nn.Module):
    """:func:`mmd` as a module: ``MMD(kernel, bandwidth, estimator)(x, y, a=None, b=None)``.

    Example:
        >>> import torch
        >>> from couplings import MMD
        >>> x = torch.randn(50, 2, requires_grad=True)
        >>> MMD(kernel="laplacian", bandwidth=0.5)(x, torch.randn(60, 2)).backward()
        >>> x.grad.shape
        torch.Size([50, 2])
    """

    def __init__(self, kernel: str = "gaussian", bandwidth: float = 1.0,
                 estimator: str = "biased"):
        super().__init__()
        self.kernel = check_choice(kernel, "kernel", KERNELS)
        self.bandwidth = check_positive_scalar(bandwidth, "bandwidth")
        self.estimator = check_choice(estimator, "estimator", ESTIMATORS)

    def forward(self, x, y, a=None, b=None) -> torch.Tensor:
        return mmd(x, y, a, b, kernel=self.kernel, bandwidth=self.bandwidth,
                   estimator=self.estimator)


class EnergyDistance(nn.Module):
    """:func:`energy_distance` as a module (squared by default, the usual training loss).

    Example:
        >>> import torch
        >>> from couplings import EnergyDistance
        >>> x = torch.zeros(4, 3)
        >>> float(EnergyDistance()(x, x))
        0.0
    """

    def __init__(self, squared: bool = True, estimator: str = "biased"):
        super().__init__()
        self.squared = bool(squared)
        self.estimator = check_choice(estimator, "estimator", ESTIMATORS)

    def forward(self, x, y, a=None, b=None) -> torch.Tensor:
        return energy_distance(x, y, a, b, squared=self.squared, estimator=self.estimator)
