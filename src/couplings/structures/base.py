r"""The structure interface: a finite set of vectors and the linear programs over its hull.

A *structure* is a finite set :math:`Z \subset \mathbb{R}^d`, usually of 0/1 vectors (one-hot
vectors, k-subsets, the edge sets of spanning trees, arborescences, permutation matrices; the
permutahedron's vertices are the rearrangements of a vector), given with

- its exact argmax, :math:`z^*(w) = \arg\max_{z \in Z} \langle w, z \rangle` (``argmax``);
- regularized argmaxes over the convex hull, for a strongly convex :math:`R`,
  :math:`z_\tau(w) = \arg\max_{z \in \operatorname{conv}(Z)} \langle w, z \rangle - \tau R(z)`
  (``relaxed(w, tau, reg=...)``), which tend to :math:`z^*(w)` as :math:`\tau \to 0`;
- where it is tractable, the log-partition function of the exponential family
  :math:`A(w) = \log \sum_{z \in Z} e^{\langle w, z \rangle}` (``log_partition``) and its
  gradient, the marginals :math:`\mu(w) = \mathbb{E}_{p_w}[z]` (``marginals``). The relaxation with
  the exponential-family entropy (``reg="ef"``) is :math:`\mu(w / \tau)`.

Weights ``w`` and points ``z`` have the shape ``(*batch, *event_shape)``; every method is batched
over the leading axes. Perturbing ``w`` with noise turns these pieces into a distribution and its
relaxation: see :class:`couplings.structures.StochasticSoftmaxTrick`.

Gradients of ``relaxed`` are taken one of three ways (``backward=``):

- ``"autograd"``: through the solver's operations;
- ``"custom"``: the structure's own backward (a closed-form or implicit Jacobian), where it has
  one;
- :class:`FiniteDifference`: central differences of the solver along the incoming gradient,
  :math:`J^\top g \approx \|g\| (z_\tau(w + h \hat g) - z_\tau(w - h \hat g)) / (2h)`, exact up to
  :math:`O(h^2)` because :math:`J = \nabla^2 (\tau R)^*(w)` is symmetric. This is the backward
  of Swersky et al.'s and of the stochastic softmax tricks' exponential-family top-k.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod

import torch

from .._validation import as_tensor, check_finite, check_float, check_positive_scalar

__all__ = ["FiniteDifference", "Structure", "check_weights", "logaddexp"]


@dataclasses.dataclass(frozen=True)
class FiniteDifference:
    """Backward by central finite differences of the forward solver.

    Attributes:
        step: the step ``h`` along the unit direction of the incoming gradient.

    Example:
        >>> import torch
        >>> from couplings.structures import Categorical, FiniteDifference
        >>> w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> g = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        >>> fd = torch.autograd.grad(
        ...     (Categorical(3).relaxed(w, backward=FiniteDifference(1e-4)) * g).sum(), w)[0]
        >>> exact = torch.autograd.grad((Categorical(3).relaxed(w) * g).sum(), w)[0]
        >>> bool(torch.allclose(fd, exact, atol=1e-8))
        True
    """

    step: float = 1e-2

    def __post_init__(self):
        check_positive_scalar(self.step, "FiniteDifference.step")


def logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(exp(a) + exp(b))`` with finite second derivatives.

    ``torch.logaddexp``'s double backward returns NaN once ``|a - b|`` exceeds about 700 (it
    divides by ``1 + exp(b - a)``); the log-sum-exp of the stacked pair does not, and the
    dynamic programmes' marginals are differentiated twice (Hessians, custom backwards).
    """
    return torch.logsumexp(torch.stack(torch.broadcast_tensors(a, b)), dim=0)


def check_weights(w, event_shape: tuple[int, ...], name: str = "w") -> torch.Tensor:
    """Validate weights ``(*batch, *event_shape)``: a finite float32/float64 tensor."""
    w = as_tensor(w, name)
    check_float(w, name)
    k = len(event_shape)
    if w.dim() < k or tuple(w.shape[w.dim() - k:]) != tuple(event_shape):
        raise ValueError(
            f"{name} must have shape (*batch, {', '.join(map(str, event_shape))}), got "
            f"{tuple(w.shape)}."
        )
    check_finite(w, name)
    return w


class _FiniteDifferenceFn(torch.autograd.Function):
    """``forward(solve, step, n_event, w) = solve(w)``; backward by central differences along
    the incoming gradient, one direction per problem (the last ``n_event`` axes)."""

    @staticmethod
    def forward(ctx, solve, step, n_event, w):
        ctx.solve, ctx.step, ctx.n_event = solve, step, n_event
        ctx.save_for_backward(w)
        with torch.no_grad():
            return solve(w)

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        dims = tuple(range(w.dim() - ctx.n_event, w.dim()))
        norm = grad.norm(dim=dims, keepdim=True)  # normalised per problem: the step is relative
        direction = grad / norm.clamp_min(torch.finfo(grad.dtype).tiny)
        with torch.no_grad():
            plus = ctx.solve(w + ctx.step * direction)
            minus = ctx.solve(w - ctx.step * direction)
        return None, None, None, norm * (plus - minus) / (2 * ctx.step)


class Structure(ABC):
    """A finite set of vectors (usually 0/1) of shape ``event_shape`` with LPs over its hull.

    Subclasses implement ``argmax`` and ``_relaxed`` for the regularizers they list in
    ``regularizers`` (the first is the default); ``log_partition``, ``marginals``,
    ``_relaxed_custom`` (the ``"custom"`` backward) and ``enumerate`` where they can.

    Example:
        >>> import torch
        >>> from couplings.structures import Structure
        >>> class Bits(Structure):  # {0, 1}^d: every coordinate free
        ...     regularizers = ("ef",)
        ...     def __init__(self, d):
        ...         self.d = d
        ...     @property
        ...     def event_shape(self):
        ...         return (self.d,)
        ...     def argmax(self, w):
        ...         return (w > 0).to(w.dtype)
        ...     def log_partition(self, w):
        ...         return torch.nn.functional.softplus(w).sum(-1)
        ...     def _relaxed(self, w, tau, reg):
        ...         return self.marginals(w / tau)
        >>> Bits(3).relaxed(torch.tensor([2.0, -2.0, 0.0]), tau=0.5)
        tensor([0.9820, 0.0180, 0.5000])
    """

    #: names accepted by ``relaxed(reg=...)``; the first is the default
    regularizers: tuple[str, ...] = ()

    @property
    @abstractmethod
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one weight vector ``w`` and of one point ``z``."""

    @abstractmethod
    def argmax(self, w: torch.Tensor) -> torch.Tensor:
        """Exact maximizer :math:`\\arg\\max_{z \\in Z} \\langle w, z \\rangle`, a 0/1 tensor of
        ``w``'s shape and dtype (no gradient)."""

    @abstractmethod
    def _relaxed(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        """Regularized argmax for valid inputs, differentiable by autograd."""

    def _relaxed_custom(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} has no custom backward for reg={reg!r}; use "
            "backward='autograd' or FiniteDifference()."
        )

    def log_partition(self, w: torch.Tensor) -> torch.Tensor:
        """:math:`\\log \\sum_{z \\in Z} \\exp \\langle w, z \\rangle`, shape ``(*batch,)``."""
        raise NotImplementedError(f"{type(self).__name__} has no tractable log-partition.")

    def marginals(self, w: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathbb{E}_{p_w}[z]` under :math:`p_w(z) \\propto e^{\\langle w, z\\rangle}`,
        the gradient of ``log_partition``; differentiable (twice) in ``w``."""
        w = check_weights(w, self.event_shape)
        with torch.enable_grad():
            x = w if w.requires_grad else w.detach().requires_grad_(True)
            logz = self.log_partition(x)
            (mu,) = torch.autograd.grad(logz.sum(), x, create_graph=w.requires_grad)
        return mu

    def enumerate(self) -> torch.Tensor:
        """All elements of ``Z``, ``(|Z|, *event_shape)`` in float64 (small instances only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot enumerate its elements.")

    def relaxed(self, w, tau: float = 1.0, *, reg: str | None = None,
                backward: str | FiniteDifference = "autograd") -> torch.Tensor:
        r"""Regularized argmax :math:`\arg\max_{z \in \mathrm{conv}(Z)} \langle w, z\rangle -
        \tau R(z)`, shape of ``w``.

        Args:
            w: weights ``(*batch, *event_shape)``.
            tau: temperature ``> 0``.
            reg: the regularizer, one of ``regularizers`` (default: the first).
            backward: ``"autograd"``, ``"custom"`` or a :class:`FiniteDifference`.
        """
        w = check_weights(w, self.event_shape)
        tau = check_positive_scalar(tau, "tau")
        reg = self._check_reg(reg)
        if isinstance(backward, FiniteDifference):
            return _FiniteDifferenceFn.apply(lambda x: self._relaxed(x, tau, reg), backward.step,
                                             len(self.event_shape), w)
        if backward == "autograd":
            return self._relaxed(w, tau, reg)
        if backward == "custom":
            return self._relaxed_custom(w, tau, reg)
        raise ValueError(
            "backward must be 'autograd', 'custom' or a FiniteDifference(step), got "
            f"{backward!r}."
        )

    def _check_reg(self, reg: str | None) -> str:
        if reg is None:
            return self.regularizers[0]
        if reg not in self.regularizers:
            raise ValueError(
                f"{type(self).__name__} supports reg in {self.regularizers}, got {reg!r}."
            )
        return reg

    def __repr__(self) -> str:
        return f"{type(self).__name__}(event_shape={self.event_shape})"
