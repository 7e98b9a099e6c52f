"""The result object every transport solver returns.

A solve is summarised by the dual potentials ``(f, g)``: the plan, its linear cost and the value
are functions of them, of the cost and of the weights. :class:`OTResult` keeps what is needed
and computes the expensive views (the ``(B, n, m)`` plan) lazily, once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cached_property

import torch

__all__ = ["OTResult", "ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at ``max_iter`` before reaching its tolerance."""


@dataclasses.dataclass(frozen=True, eq=False)
class OTResult:
    """Solution of a (regularized) optimal transport problem.

    Shapes are those of the call: ``(B, ...)`` for a batched problem, without the leading ``B``
    for an unbatched one.

    Attributes:
        f: first dual potential, ``(B, n)``.
        g: second dual potential, ``(B, m)``.
        value: optimal value, ``(B,)``. For entropic OT this is
            ``<P, C> + eps * KL(P | a x b)``, computed by its dual expression
            ``<a, f> + <b, g>``, which equals it at the fixed point; for exact OT it is ``<P, C>``.
        converged: whether the marginal error fell below the tolerance, ``(B,)`` bool.
        n_iter: number of iterations run (the largest over the batch); ``None`` for a solver
            that does not report it.
        error: L1 marginal violation ``sum_i |P 1 - a|_i + sum_j |P^T 1 - b|_j``, ``(B,)``.
        a: first marginal, ``(B, n)``.
        b: second marginal, ``(B, m)``.
        eps: entropic regularization, ``None`` for exact OT.
        solver: short name of the solver that produced the result.

    The plan ``P`` ``(B, n, m)`` and the linear cost ``<P, C>`` ``(B,)`` are computed on first
    access and cached.
    """

    f: torch.Tensor
    g: torch.Tensor
    value: torch.Tensor
    converged: torch.Tensor
    n_iter: int | None
    error: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    eps: float | None
    solver: str
    _plan_fn: Callable[[], torch.Tensor] = dataclasses.field(repr=False)
    _cost_fn: Callable[[], torch.Tensor] = dataclasses.field(repr=False)

    @classmethod
    def from_batched(
        cls,
        batched: bool,
        *,
        f: torch.Tensor,
        g: torch.Tensor,
        value: torch.Tensor,
        converged: torch.Tensor,
        error: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        plan_fn: Callable[[], torch.Tensor],
        cost: torch.Tensor,
        n_iter: int | None,
        eps: float | None,
        solver: str,
    ) -> OTResult:
        """Build a result from a solver's batched tensors (``(B, ...)``, cost ``(B, n, m)``),
        removing the batch axis when the call was unbatched."""

        def shape(t: torch.Tensor) -> torch.Tensor:
            return t if batched else t.squeeze(0)

        return cls(
            f=shape(f), g=shape(g), value=shape(value), converged=shape(converged),
            n_iter=n_iter, error=shape(error), a=shape(a), b=shape(b), eps=eps, solver=solver,
            _plan_fn=lambda: shape(plan_fn()), _cost_fn=lambda: shape(cost),
        )

    @cached_property
    def plan(self) -> torch.Tensor:
        """Transport plan ``P``, ``(B, n, m)``; rows sum to ``a`` and columns to ``b``."""
        return self._plan_fn()

    @cached_property
    def linear_value(self) -> torch.Tensor:
        """Linear transport cost ``<P, C>``, ``(B,)``."""
        return (self.plan * self._cost_fn()).sum(dim=(-2, -1))

    @property
    def all_converged(self) -> bool:
        """``True`` when every problem of the batch converged."""
        return bool(self.converged.all())

    def __repr__(self) -> str:  # a short summary; tensors can be large
        shape = tuple(self.f.shape[:-1])
        n, m = self.f.shape[-1], self.g.shape[-1]
        return (
            f"OTResult(solver={self.solver!r}, batch={shape}, n={n}, m={m}, eps={self.eps}, "
            f"n_iter={self.n_iter}, converged={self.converged.tolist()}, "
            f"value={self.value.detach().tolist()})"
        )
