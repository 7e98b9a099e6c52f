"""Geometries: where a cost matrix comes from.

A solver takes either a cost matrix ``(B, n, m)`` / ``(n, m)`` or a :class:`Geometry`, an object
that knows the problem's shape and can produce the cost. :class:`PointCloud` computes the cost from
two point clouds, so gradients flow to the points. (A blockwise backend that never builds the
``n x m`` matrix reads the points directly from the geometry.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from . import costs as _costs
from ._validation import batch_cost

__all__ = ["Geometry", "PointCloud", "as_geometry"]


class Geometry(ABC):
    """A transport geometry: a batched ``(B, n, m)`` cost, possibly evaluated lazily.

    Subclasses set ``batched``, ``shape`` ``(B, n, m)``, ``dtype``, ``device`` and implement
    :meth:`cost_matrix`.
    """

    batched: bool
    shape: tuple[int, int, int]
    dtype: torch.dtype
    device: torch.device

    @abstractmethod
    def cost_matrix(self) -> torch.Tensor:
        """The cost matrix, always batched: ``(B, n, m)``."""


class CostMatrix(Geometry):
    """A geometry given by an explicit cost matrix ``(B, n, m)`` or ``(n, m)``."""

    def __init__(self, cost: torch.Tensor):
        self._cost, self.batched = batch_cost(cost)
        self.shape = tuple(self._cost.shape)
        self.dtype, self.device = self._cost.dtype, self._cost.device

    def cost_matrix(self) -> torch.Tensor:
        return self._cost


class PointCloud(Geometry):
    """Two point clouds and a ground cost: ``C[b, i, j] = cost(x[b, i], y[b, j])``.

    Args:
        x: points ``(B, n, d)`` or ``(n, d)``.
        y: points ``(B, m, d)`` or ``(m, d)``; ``None`` means ``y = x``.
        cost: a name from :mod:`couplings.costs` (``"sqeuclidean"``, ``"euclidean"``,
            ``"cosine"``, ``"dot"``, ``"l1"``, ``"lp:<p>"``) or a callable
            ``(x (B, n, d), y (B, m, d)) -> (B, n, m)``.

    Example:
        >>> import torch
        >>> from couplings import PointCloud
        >>> geom = PointCloud(torch.randn(5, 2), torch.randn(7, 2))
        >>> geom.shape, geom.cost_matrix().shape
        ((1, 5, 7), torch.Size([1, 5, 7]))
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None = None, cost="sqeuclidean"):
        y = x if y is None else y
        # validates shapes, dtypes and devices of the points
        self.x, self.y, self.batched = _costs._batch_points(x, y)
        self.cost_fn = _costs.get(cost)
        self.cost_name = cost if isinstance(cost, str) else getattr(cost, "__name__", "callable")
        self.shape = (self.x.shape[0], self.x.shape[1], self.y.shape[1])
        self.dtype, self.device = self.x.dtype, self.x.device

    def cost_matrix(self) -> torch.Tensor:
        c = self.cost_fn(self.x, self.y)
        if tuple(c.shape) != self.shape:
            raise ValueError(
                f"cost {self.cost_name!r} returned shape {tuple(c.shape)} for points "
                f"{tuple(self.x.shape)} and {tuple(self.y.shape)}; expected {self.shape}."
            )
        c, _ = batch_cost(c, f"cost {self.cost_name!r}")
        return c

    def __repr__(self) -> str:
        return f"PointCloud(shape={self.shape}, d={self.x.shape[-1]}, cost={self.cost_name!r})"


def as_geometry(cost) -> Geometry:
    """Wrap a cost matrix into a :class:`CostMatrix`; pass a :class:`Geometry` through."""
    if isinstance(cost, Geometry):
        return cost
    return CostMatrix(cost)
