r"""Ground costs between point clouds: what a pair costs.

Every cost maps ``x`` ``(B, n, d)`` and ``y`` ``(B, m, d)`` to a cost matrix ``(B, n, m)``; the
unbatched call ``(n, d), (m, d) -> (n, m)`` is accepted too. Costs are plain functions, so any
callable with that signature can stand in for one.

| name          | ``C[i, j]``                                   | POT ``ot.dist`` metric     |
|---------------|-----------------------------------------------|----------------------------|
| sqeuclidean   | :math:`\|x_i - y_j\|_2^2`                       | ``"sqeuclidean"``          |
| euclidean     | :math:`\|x_i - y_j\|_2`                         | ``"euclidean"``            |
| lp(p)         | :math:`\|x_i - y_j\|_p`                         | ``"minkowski"``, ``p=p``   |
| cosine        | :math:`1 - \cos(x_i, y_j)`                      | ``"cosine"``               |
| dot           | :math:`-\langle x_i, y_j\rangle`                |                            |

GeomLoss' ``p=2`` cost is *half* the squared Euclidean distance; pass ``sqeuclidean`` and
``eps = blur**2`` and halve the value, or use ``lambda x, y: 0.5 * sqeuclidean(x, y)``.

Example:
    >>> import torch
    >>> from couplings import costs
    >>> x, y = torch.zeros(2, 3), torch.ones(4, 3)
    >>> costs.sqeuclidean(x, y)[0, 0].item()
    3.0
    >>> costs.get("euclidean")(x, y).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._validation import as_tensor, check_float, check_same_dtype_device

__all__ = ["sqeuclidean", "euclidean", "lp", "cosine", "dot", "get", "CostFn"]

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _batch_points(x, y) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Check two point clouds and return them as ``(B, n, d)``, ``(B, m, d)``."""
    x, y = as_tensor(x, "x"), as_tensor(y, "y")
    check_float(x, "x")
    check_float(y, "y")
    check_same_dtype_device(x=x, y=y)
    if x.dim() != y.dim() or x.dim() not in (2, 3):
        raise ValueError(
            "x and y must both have shape (n, d) and (m, d), or (B, n, d) and (B, m, d); got "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"x and y must have the same feature dimension d, got {x.shape[-1]} and {y.shape[-1]}."
        )
    batched = x.dim() == 3
    if batched and x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}."
        )
    if not batched:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    return x, y, batched


def _unbatch(c: torch.Tensor, batched: bool) -> torch.Tensor:
    return c if batched else c.squeeze(0)


def sqeuclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Squared Euclidean cost :math:`C_{ij} = \|x_i - y_j\|_2^2`.

    Args:
        x: points ``(B, n, d)`` or ``(n, d)``.
        y: points ``(B, m, d)`` or ``(m, d)``.

    Returns:
        ``(B, n, m)`` or ``(n, m)``, clamped at 0 against round-off.
    """
    x, y, batched = _batch_points(x, y)
    return _unbatch(sqeuclidean_into(x, y, None), batched)


def sqeuclidean_into(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """:func:`sqeuclidean` of batched points ``(B, n, d)``, ``(B, m, d)``, written into ``out``
    ``(B, n, m)`` (a new tensor when ``None``) and returned. No checks."""
    x2 = (x * x).sum(-1, keepdim=True)  # (B, n, 1)
    y2 = (y * y).sum(-1).unsqueeze(-2)  # (B, 1, m)
    # in place after the first pass: one (B, n, m) matrix, 2.5x faster at n = m = 4000 than
    # out-of-place; x2 + y2 first, so that the cost of y = x is exactly symmetric
    c = torch.add(x2, y2, out=out) if out is not None else torch.add(x2, y2)
    return c.baddbmm_(x, y.transpose(-2, -1), alpha=-2.0).clamp_min_(0.0)


def euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Euclidean cost :math:`C_{ij} = \|x_i - y_j\|_2`.

    Computed pairwise (not through ``|x|^2 + |y|^2 - 2 x.y``, whose cancellation the square
    root would amplify); the gradient at ``x_i = y_j`` is 0.
    """
    return lp(2.0)(x, y)


def lp(p: float) -> CostFn:
    r"""The :math:`\ell_p` distance :math:`C_{ij} = \|x_i - y_j\|_p`, for ``p >= 1``.

    Example:
        >>> import torch
        >>> from couplings.costs import lp
        >>> lp(1)(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, -2.0]])).item()
        3.0
    """
    if isinstance(p, bool) or not isinstance(p, int | float) or not p >= 1:
        raise ValueError(f"lp(p) needs a real p >= 1, got {p!r}.")
    p = float(p)

    def cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y, batched = _batch_points(x, y)
        c = torch.cdist(x, y, p=p, compute_mode="donot_use_mm_for_euclid_dist")
        return _unbatch(c, batched)

    cost.__name__ = f"lp({p:g})"
    return cost


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Cosine cost :math:`C_{ij} = 1 - \langle x_i, y_j\rangle / (\|x_i\| \|y_j\|)`, in [0, 2]."""
    x, y, batched = _batch_points(x, y)
    tiny = torch.finfo(x.dtype).tiny ** 0.5
    xn = x / x.norm(dim=-1, keepdim=True).clamp_min(tiny)
    yn = y / y.norm(dim=-1, keepdim=True).clamp_min(tiny)
    return _unbatch(1.0 - xn @ yn.transpose(-2, -1), batched)


def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Negative inner product :math:`C_{ij} = -\langle x_i, y_j\rangle` (maximizes similarity)."""
    x, y, batched = _batch_points(x, y)
    return _unbatch(-(x @ y.transpose(-2, -1)), batched)


_NAMED: dict[str, CostFn] = {
    "sqeuclidean": sqeuclidean,
    "euclidean": euclidean,
    "cosine": cosine,
    "dot": dot,
}


def get(cost: str | CostFn) -> CostFn:
    """Resolve a cost given by name (``"sqeuclidean"``, ``"euclidean"``, ``"cosine"``, ``"dot"``,
    ``"l1"``, ``"lp:3"``) or return a callable unchanged."""
    if callable(cost):
        return cost
    if isinstance(cost, str):
        if cost in _NAMED:
            return _NAMED[cost]
        if cost == "l1":
            return lp(1)
        if cost.startswith("lp:"):
            try:
                p = float(cost[3:])
            except ValueError:
                p = None
            if p is not None:
                return lp(p)
    raise ValueError(
        f"unknown cost {cost!r}; expected one of {sorted(_NAMED) + ['l1', 'lp:<p>']} or a "
        "callable (x (B, n, d), y (B, m, d)) -> (B, n, m)."
    )
