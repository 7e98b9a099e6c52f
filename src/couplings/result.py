r"""The result object every transport solver returns, its convergence certificate, and ragged
batches.

A solve is summarised by the dual potentials ``(f, g)``: the plan, its linear cost and the value
are functions of them, of the cost and of the weights. :class:`OTResult` keeps what is needed
and computes the expensive views (the ``(B, n, m)`` plan, the certificate) lazily, once.

**Certificate.** With the generalized KL divergence
:math:`\mathrm{KL}(p | q) = \sum p \log(p / q) - p + q`, an entropic result solves

.. math::

    \min_{P \geq 0}\ E(P) = \langle P, C\rangle + \varepsilon\, \mathrm{KL}(P \,|\, a \otimes b)
        + \rho_a \mathrm{KL}(P 1 \,|\, a) + \rho_b \mathrm{KL}(P^T 1 \,|\, b),

where :math:`\rho = \infty` (balanced OT, the default) turns a marginal penalty into the
constraint :math:`P 1 = a` (resp. :math:`P^T 1 = b`), whose dual is

.. math::

    \max_{f, g}\ D(f, g) = \langle a, \varphi_a(f)\rangle + \langle b, \varphi_b(g)\rangle
        - \varepsilon \langle a \otimes b, e^{(f \oplus g - C)/\varepsilon} - 1\rangle,
    \qquad \varphi(f) = -\rho (e^{-f/\rho} - 1) \ (= f \text{ for } \rho = \infty).

Weak duality, :math:`D(f, g) \leq \min E \leq E(\hat P)` for any potentials and any feasible
:math:`\hat P`, makes ``gap = E(P^) - D(f, g)`` a bound on how far both the returned potentials
and the (made feasible) returned plan are from the exact entropic optimum. Exact OT (``eps is
None``) uses the linear program :math:`E(P) = \langle P, C\rangle` on :math:`U(a, b)` and its
dual :math:`\langle a, f\rangle + \langle b, g\rangle` under :math:`f_i + g_j \leq C_{ij}`.

**Ragged batches.** :func:`pad_problems` pads problems of different sizes into one batch with
zero weights on the padding (a zero-weight point neither receives mass nor changes the other
potentials, so every problem is solved exactly as it would be alone), and
:meth:`OTResult.unpad` splits the batched result back into one result per problem.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import NamedTuple

import torch

from ._validation import as_tensor, check_finite, check_float, check_same_dtype_device
from .geometry import as_geometry

__all__ = ["OTResult", "ConvergenceWarning", "PaddedProblems", "pad_problems"]


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at ``max_iter`` before reaching its tolerance."""


@dataclasses.dataclass(frozen=True, eq=False)
class OTResult:
    r"""Solution of a (regularized) optimal transport problem, with its convergence certificate.

    Shapes are those of the call: ``(B, ...)`` for a batched problem, without the leading ``B``
    for an unbatched one.

    Attributes:
        f: first dual potential, ``(B, n)``.
        g: second dual potential, ``(B, m)``.
        value: optimal value, ``(B,)``. For balanced entropic OT this is
            ``<P, C> + eps * sum P log(P / a x b)``, computed by its dual expression
            ``<a, f> + <b, g>``, which equals it at the fixed point (it equals the objective
            with the generalized KL, ``primal_value``, only for unit masses: the two differ by
            ``eps (m - m^2)`` at mass ``m``); unbalanced, it is the dual objective
            ``dual_value``; for exact OT it is ``<P, C>``.
        converged: whether the error fell below the tolerance, ``(B,)`` bool.
        n_iter: number of iterations run (the largest over the batch); ``None`` for a solver
            that does not report it.
        error: L1 marginal violation ``sum_i |P 1 - a|_i + sum_j |P^T 1 - b|_j``, ``(B,)``;
            unbalanced, the L1 residual of the optimality conditions (see
            :func:`~couplings.sinkhorn`).
        a: first marginal, ``(B, n)``.
        b: second marginal, ``(B, m)``.
        eps: entropic regularization, ``None`` for exact OT.
        solver: short name of the solver that produced the result.
        rho: the marginal penalties ``(rho_a, rho_b)`` of unbalanced OT (``math.inf`` for a
            hard constraint), ``None`` for balanced OT.
        n_iter_per_problem: iterations each problem of the batch ran before it met its
            tolerance (or stopped), ``(B,)`` int64; ``None`` for a solver that does not report
            it.
        backend: how the solver evaluated its updates (Sinkhorn: ``"tensorized"``,
            ``"compiled"``, ``"kernel"`` or ``"online"``, what ``backend="auto"`` chose);
            ``None`` for a solver without backends.
        omega: the over-relaxation each problem ended with, ``(B,)`` (Sinkhorn's
            ``momentum``: 1 for plain iterations, including a problem whose safeguard stopped
            the relaxation); ``None`` for a solver without it.
        kernel_counts: for Sinkhorn's ``"kernel"`` backend, what the solve did, over the whole
            batch: matrix-vector ``products``, ``log_updates`` (the first row and column
            updates and every fallback), ``absorptions`` (exp passes over the cost) and the
            ``reanchorings`` among them. Many log updates mean the kernel path ran at
            log-domain speed (very small eps far from convergence). ``None`` otherwise.
        annealed: Sinkhorn's epsilon-scaling iterations of each problem, ``(B,)`` int64 (0:
            it ran at ``eps`` from the start; counted in ``n_iter_per_problem``); ``None`` for
            a solver without it.
        resolution: Sinkhorn's estimate of the L1 marginal error that rounding the potentials
            to their dtype alone leaves, ``(B,)``: the unit roundoff times
            ``(<a, |f|> + <b, |g|>) / eps``. In float32 it is about ``1e-5`` at ``eps = 0.01``
            times the mean cost (the exact error of a plan solved to the floor measured 0.3-2x
            of it); an ``error`` below it is the rounded iteration's own, and the plan of these
            potentials, evaluated exactly, misses its marginals by about ``resolution``. In
            float64 it is negligible. ``None`` for other solvers.
        newton_steps: the Newton steps that finished each problem after Sinkhorn's
            iterations, ``(B,)`` int64 (Sinkhorn's ``newton=True``; 0 for a problem that
            converged without them); ``None`` without ``newton``.

    Computed on first access and cached (each costs ``O(B n m)``):

    - ``plan`` ``P`` ``(B, n, m)`` and the linear cost ``linear_value`` ``<P, C>`` ``(B,)``;
    - the certificate (see the module docstring for the objectives; detached, no gradients):
      ``dual_value`` ``(B,)``, the dual objective :math:`D(f, g)` at the returned potentials,
      a lower bound on the optimum (exact OT: at their c-transforms on the supports, which are
      dual feasible); ``rounded_plan`` ``(B, n, m)``, the returned plan made feasible for the
      hard constraints (both marginals constrained: the rounding of Altschuler, Weed and
      Rigollet 2017 onto :math:`U(a, b)`, which moves mass ``O(error)``; one: that marginal
      rescaled; none, fully unbalanced: the plan itself); ``primal_value`` ``(B,)``,
      :math:`E` at ``rounded_plan``, an upper bound on the optimum; ``gap`` ``(B,)``
      ``= primal_value - dual_value``, non-negative up to rounding errors (about machine
      epsilon times the cost scale), which bounds the suboptimality of both
      ``primal_value`` and ``dual_value`` and tends to 0 as ``error`` does.

    Example:
        >>> import torch
        >>> from couplings import sinkhorn
        >>> g = torch.Generator().manual_seed(0)
        >>> c = torch.rand(5, 6, generator=g, dtype=torch.float64)
        >>> res = sinkhorn(c, eps=0.1, tol=1e-9)
        >>> bool(-1e-12 <= res.gap < 1e-8), bool(res.dual_value <= res.primal_value + 1e-12)
        (True, True)
        >>> res.summary()  # doctest: +ELLIPSIS
        'sinkhorn (eps=0.1): value 0.39433, gap ..., error ..., converged True, n_iter 23'
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
    rho: tuple[float, float] | None = None
    n_iter_per_problem: torch.Tensor | None = None
    backend: str | None = None
    omega: torch.Tensor | None = None
    kernel_counts: dict[str, int] | None = None
    annealed: torch.Tensor | None = None
    resolution: torch.Tensor | None = None
    newton_steps: torch.Tensor | None = None

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
        cost: torch.Tensor | Callable[[], torch.Tensor],
        n_iter: int | None,
        eps: float | None,
        solver: str,
        rho: tuple[float, float] | None = None,
        n_iter_per_problem: torch.Tensor | None = None,
        backend: str | None = None,
        omega: torch.Tensor | None = None,
        kernel_counts: dict[str, int] | None = None,
        annealed: torch.Tensor | None = None,
        resolution: torch.Tensor | None = None,
        newton_steps: torch.Tensor | None = None,
    ) -> OTResult:
        """Build a result from a solver's batched tensors (``(B, ...)``, cost ``(B, n, m)``, or
        a function returning it), removing the batch axis when the call was unbatched."""

        def shape(t: torch.Tensor) -> torch.Tensor:
            return t if batched else t.squeeze(0)

        return cls(
            f=shape(f), g=shape(g), value=shape(value), converged=shape(converged),
            n_iter=n_iter, error=shape(error), a=shape(a), b=shape(b), eps=eps, solver=solver,
            _plan_fn=lambda: shape(plan_fn()),
            _cost_fn=lambda: shape(cost() if callable(cost) else cost), rho=rho,
            n_iter_per_problem=None if n_iter_per_problem is None else shape(n_iter_per_problem),
            backend=backend, omega=None if omega is None else shape(omega),
            kernel_counts=kernel_counts, annealed=None if annealed is None else shape(annealed),
            resolution=None if resolution is None else shape(resolution),
            newton_steps=None if newton_steps is None else shape(newton_steps),
        )

    @cached_property
    def plan(self) -> torch.Tensor:
        """Transport plan ``P``, ``(B, n, m)``; rows sum to ``a`` and columns to ``b``."""
        return self._plan_fn()

    @cached_property
    def linear_value(self) -> torch.Tensor:
        """Linear transport cost ``<P, C>``, ``(B,)``."""
        return (self.plan * self._cost_fn()).sum(dim=(-2, -1))

    @cached_property
    def _certificate(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rounded_plan, primal_value, dual_value)``, detached."""
        plan = self.plan.detach()  # the cached plan, shared with the user's
        with torch.no_grad():
            cost = self._cost_fn().detach()
            a, b, f, g = (t.detach() for t in (self.a, self.b, self.f, self.g))
            if self.eps is None:
                return _exact_certificate(plan, cost, a, b, f)
            rho = (math.inf, math.inf) if self.rho is None else self.rho
            return _entropic_certificate(plan, cost, a, b, f, g, self.eps, rho)

    @property
    def rounded_plan(self) -> torch.Tensor:
        """The plan made feasible for the hard marginal constraints, ``(B, n, m)`` (detached):
        the plan whose objective is ``primal_value``. See the class docstring."""
        return self._certificate[0]

    @property
    def primal_value(self) -> torch.Tensor:
        """Primal objective :math:`E` of ``rounded_plan`` ``(B,)``, an upper bound on the optimum
        (detached)."""
        return self._certificate[1]

    @property
    def dual_value(self) -> torch.Tensor:
        """Dual objective :math:`D(f, g)` ``(B,)``, a lower bound on the optimum (detached)."""
        return self._certificate[2]

    @property
    def gap(self) -> torch.Tensor:
        """Primal-dual gap ``primal_value - dual_value`` ``(B,)``: ``>= 0`` up to rounding, a
        bound on the distance of both to the exact optimum (detached)."""
        return self.primal_value - self.dual_value

    @property
    def all_converged(self) -> bool:
        """``True`` when every problem of the batch converged."""
        return bool(self.converged.all())

    def summary(self) -> str:
        """One line: value, gap, error, convergence and iterations (the worst over a batch).

        Computes the certificate (an ``O(B n m)`` pass) if it is not cached yet.
        """
        head = self.solver + (f" (eps={self.eps:g})" if self.eps is not None else "")
        value, gap, error = self.value.detach(), self.gap, self.error.detach()
        # an error below the float resolution is the rounded iteration's own: say so
        coarse = self.resolution is not None and bool((error < self.resolution).any())
        floor = (f" (float resolution {float(self.resolution.max()):.1e})" if coarse else "")
        if value.dim() == 0:
            return (
                f"{head}: value {float(value):.6g}, gap {float(gap):.2e}, error "
                f"{float(error):.2e}{floor}, converged {bool(self.converged)}, "
                f"n_iter {self.n_iter}"
            )
        return (
            f"{head}: {value.numel()} problems, value in [{float(value.min()):.6g}, "
            f"{float(value.max()):.6g}], gap <= {float(gap.max()):.2e}, error <= "
            f"{float(error.max()):.2e}{floor}, converged {int(self.converged.sum())}/"
            f"{self.converged.numel()}, n_iter {self.n_iter}"
        )

    def unpad(self, sizes: Sequence[tuple[int, int]]) -> list[OTResult]:
        """Split a batched result of padded problems into one unbatched result per problem.

        Args:
            sizes: the problems' sizes ``(n_k, m_k)``, one per batch entry, as returned by
                :func:`pad_problems`; problem ``k`` is the top-left ``n_k x m_k`` block.

        Returns:
            A list of :class:`OTResult` with ``f`` ``(n_k,)``, ``g`` ``(m_k,)``, scalar
            ``value``, ``converged`` and ``error``, a lazily cropped ``plan`` ``(n_k, m_k)``
            (the padded plan is computed once and shared), and ``n_iter`` the problem's own
            iteration count when the solver reports it. Gradients flow through the crops.

        Example:
            >>> import torch
            >>> from couplings import sinkhorn
            >>> from couplings.result import pad_problems
            >>> g = torch.Generator().manual_seed(0)
            >>> costs = [torch.rand(3, 4, generator=g), torch.rand(5, 2, generator=g)]
            >>> cost, a, b, sizes = pad_problems(costs)
            >>> tuple(cost.shape), sizes
            ((2, 5, 4), [(3, 4), (5, 2)])
            >>> first, second = sinkhorn(cost, a, b, eps=0.1).unpad(sizes)
            >>> tuple(second.plan.shape), bool(torch.allclose(second.plan.sum(0), b[1, :2]))
            ((5, 2), True)
        """
        if self.f.dim() != 2:
            raise ValueError(
                f"unpad needs a batched result (f of shape (B, n)), got f of shape "
                f"{tuple(self.f.shape)}."
            )
        bsz, n_max, m_max = self.f.shape[0], self.f.shape[1], self.g.shape[1]
        sizes = _check_sizes(sizes, bsz, n_max, m_max)
        out = []
        for k, (n, m) in enumerate(sizes):
            iters = None if self.n_iter_per_problem is None else self.n_iter_per_problem[k]
            out.append(OTResult(
                f=self.f[k, :n], g=self.g[k, :m], value=self.value[k],
                converged=self.converged[k],
                n_iter=self.n_iter if iters is None else int(iters), error=self.error[k],
                a=self.a[k, :n], b=self.b[k, :m], eps=self.eps, solver=self.solver,
                _plan_fn=lambda k=k, n=n, m=m: self.plan[k, :n, :m],
                _cost_fn=lambda k=k, n=n, m=m: self._cost_fn()[k, :n, :m],
                rho=self.rho, n_iter_per_problem=iters, backend=self.backend,
                omega=None if self.omega is None else self.omega[k],
                kernel_counts=self.kernel_counts,
                annealed=None if self.annealed is None else self.annealed[k],
                resolution=None if self.resolution is None else self.resolution[k],
                newton_steps=None if self.newton_steps is None else self.newton_steps[k],
            ))
        return out

    def __repr__(self) -> str:  # a short summary; tensors can be large
        shape = tuple(self.f.shape[:-1])
        n, m = self.f.shape[-1], self.g.shape[-1]
        return (
            f"OTResult(solver={self.solver!r}, backend={self.backend!r}, batch={shape}, n={n}, "
            f"m={m}, eps={self.eps}, "
            f"n_iter={self.n_iter}, converged={self.converged.tolist()}, "
            f"value={self.value.detach().tolist()})"
        )


# --------------------------------------------------------------------------------------------
# the certificate


def _generalized_kl(p: torch.Tensor, q: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``sum p log(p / q) - p + q`` over ``dims``; ``0 log 0 = 0``, ``+inf`` where ``p > 0 = q``."""
    pos = q > 0
    ratio = torch.where(pos, p / torch.where(pos, q, torch.ones_like(q)),
                        torch.where(p > 0, math.inf, 1.0))
    return (torch.xlogy(p, ratio) - p + q).sum(dims)


def _scale_rows(plan: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``plan`` with its rows rescaled to sum to ``a`` (an empty row gets ``a_i`` spread like
    the column sums)."""
    rows = plan.sum(-1, keepdim=True)
    cols = plan.sum(-2, keepdim=True)
    spread = cols / cols.sum(-1, keepdim=True).clamp_min(torch.finfo(plan.dtype).tiny)
    scaled = plan * (a.unsqueeze(-1) / torch.where(rows > 0, rows, torch.ones_like(rows)))
    return torch.where(rows > 0, scaled, a.unsqueeze(-1) * spread)


def _round_to_marginals(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Altschuler, Weed and Rigollet's rounding of ``plan`` onto ``U(a, b)`` (their Algorithm 2):
    scale rows down to at most ``a``, columns down to at most ``b``, then add the rank-one
    ``err_a err_b^T / |err_a|_1`` of the missing masses. Needs ``sum a = sum b``."""
    rows = plan.sum(-1)
    x = torch.where(rows > 0, a / torch.where(rows > 0, rows, torch.ones_like(rows)), 1.0)
    plan = plan * x.clamp_max(1.0).unsqueeze(-1)
    cols = plan.sum(-2)
    y = torch.where(cols > 0, b / torch.where(cols > 0, cols, torch.ones_like(cols)), 1.0)
    plan = plan * y.clamp_max(1.0).unsqueeze(-2)
    err_a = (a - plan.sum(-1)).clamp_min(0.0)  # (B, n), >= 0 in exact arithmetic
    err_b = (b - plan.sum(-2)).clamp_min(0.0)  # (B, m)
    norm = err_a.sum(-1, keepdim=True)
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return plan + err_a.unsqueeze(-1) * (err_b / norm).unsqueeze(-2)


def _phi(f: torch.Tensor, rho: float) -> torch.Tensor:
    """``-rho (exp(-f / rho) - 1)``, the dual of ``rho KL(. | a)`` per unit of ``a``; ``f`` when
    ``rho = inf``."""
    return f if math.isinf(rho) else -rho * torch.expm1(-f / rho)


def _entropic_certificate(plan, cost, a, b, f, g, eps, rho):
    """``(rounded plan, E(rounded plan), D(f, g))`` of (unbalanced) entropic OT; ``plan`` is
    ``a b e^{(f + g - C) / eps}``."""
    rho_a, rho_b = rho
    hard_a, hard_b = math.isinf(rho_a), math.isinf(rho_b)
    if hard_a and hard_b:
        rounded = _round_to_marginals(plan, a, b)
    elif hard_a:
        rounded = _scale_rows(plan, a)
    elif hard_b:
        rounded = _scale_rows(plan.transpose(-2, -1), b).transpose(-2, -1)
    else:
        rounded = plan
    ab = a.unsqueeze(-1) * b.unsqueeze(-2)  # (B, n, m)
    primal = (rounded * cost).sum((-2, -1)) + eps * _generalized_kl(rounded, ab, (-2, -1))
    if not hard_a:
        primal = primal + rho_a * _generalized_kl(rounded.sum(-1), a, (-1,))
    if not hard_b:
        primal = primal + rho_b * _generalized_kl(rounded.sum(-2), b, (-1,))
    dual = (a * _phi(f, rho_a)).sum(-1) + (b * _phi(g, rho_b)).sum(-1)
    dual = dual - eps * (plan.sum((-2, -1)) - a.sum(-1) * b.sum(-1))
    return rounded, primal, dual


def _exact_certificate(plan, cost, a, b, f):
    """``(rounded plan, <rounded plan, C>, <a, f^cc> + <b, f^c>)`` of exact OT, the c-transforms
    taken over the supports (so the dual pair is feasible wherever the weights are positive)."""
    rounded = _round_to_marginals(plan, a, b)
    primal = (rounded * cost).sum((-2, -1))
    g_c = torch.where((a > 0).unsqueeze(-1), cost - f.unsqueeze(-1), math.inf).amin(-2)
    g_c = torch.where(torch.isfinite(g_c), g_c, torch.zeros_like(g_c))  # (B, m)
    f_c = torch.where((b > 0).unsqueeze(-2), cost - g_c.unsqueeze(-2), math.inf).amin(-1)
    f_c = torch.where(torch.isfinite(f_c), f_c, torch.zeros_like(f_c))  # (B, n)
    return rounded, primal, (a * f_c).sum(-1) + (b * g_c).sum(-1)


# --------------------------------------------------------------------------------------------
# ragged batches


class PaddedProblems(NamedTuple):
    """Problems of different sizes padded into one batch (see :func:`pad_problems`): a named
    tuple ``(cost, a, b, sizes)``.

    Example:
        >>> import torch
        >>> from couplings.result import pad_problems
        >>> batch = pad_problems([torch.zeros(2, 3), torch.zeros(4, 1)])
        >>> tuple(batch.cost.shape), batch.sizes
        ((2, 4, 3), [(2, 3), (4, 1)])
        >>> batch.b
        tensor([[0.3333, 0.3333, 0.3333],
                [1.0000, 0.0000, 0.0000]])
    """

    cost: torch.Tensor
    """``(B, n_max, m_max)``, zero on the padding."""
    a: torch.Tensor
    """``(B, n_max)``, zero on the padding."""
    b: torch.Tensor
    """``(B, m_max)``, zero on the padding."""
    sizes: list[tuple[int, int]]
    """``(n_k, m_k)`` of each problem, for :meth:`OTResult.unpad`."""


def pad_problems(costs, a=None, b=None, *, pad_cost: float = 0.0) -> PaddedProblems:
    r"""Pad transport problems of different sizes into one batch with zero weights.

    Problem ``k`` (cost ``(n_k, m_k)``, weights ``a_k``, ``b_k``) becomes the top-left block of
    entry ``k`` of a ``(B, n_max, m_max)`` batch; the padded rows and columns get zero weight,
    so they carry no mass and leave the potentials on the support unchanged: a solver run on the
    batch (e.g. :func:`~couplings.sinkhorn`, which stops each problem at its own tolerance and
    drops converged problems from the computation) gives each problem's solution as if it were
    solved alone, which :meth:`OTResult.unpad` splits back out. Differentiable: gradients flow
    back to each cost and weight vector.

    Args:
        costs: a non-empty sequence of cost matrices ``(n_k, m_k)`` or unbatched
            :class:`~couplings.Geometry` objects (e.g. ``PointCloud(x_k, y_k)``), one dtype
            and device.
        a: ``None`` (uniform ``1 / n_k`` for every problem) or a sequence of weight vectors
            ``(n_k,)`` (an entry may be ``None`` for uniform).
        b: likewise for the columns, ``(m_k,)``.
        pad_cost: the cost written on the padding (any finite number; it never matters with
            zero weights: ``scaling`` anneals from the cost range over the support).

    Returns:
        :class:`PaddedProblems` ``(cost, a, b, sizes)``: ``cost`` ``(B, n_max, m_max)``,
        ``a`` ``(B, n_max)``, ``b`` ``(B, m_max)`` and ``sizes`` the list of ``(n_k, m_k)``.

    Raises:
        TypeError, ValueError: for an empty or non-sequence ``costs``, a batched cost, weights
            of the wrong length, dtype or device, negative or non-finite weights.

    Example:
        >>> import torch
        >>> from couplings import sinkhorn, PointCloud
        >>> from couplings.result import pad_problems
        >>> g = torch.Generator().manual_seed(0)
        >>> clouds = [PointCloud(torch.randn(n, 2, generator=g), torch.randn(m, 2, generator=g))
        ...           for n, m in [(3, 5), (8, 6), (4, 4)]]
        >>> batch = pad_problems(clouds)
        >>> tuple(batch.cost.shape), batch.a[0].tolist()[3:]
        ((3, 8, 6), [0.0, 0.0, 0.0, 0.0, 0.0])
        >>> results = sinkhorn(batch.cost, batch.a, batch.b, eps=0.5).unpad(batch.sizes)
        >>> alone = sinkhorn(clouds[0], eps=0.5)
        >>> bool(torch.allclose(results[0].f, alone.f, atol=1e-5)), tuple(results[0].plan.shape)
        (True, (3, 5))
    """
    if isinstance(costs, torch.Tensor) or not isinstance(costs, Sequence) or len(costs) == 0:
        raise TypeError(
            "costs must be a non-empty list of (n_k, m_k) cost matrices or geometries, got "
            f"{type(costs).__name__}" + (f" of shape {tuple(costs.shape)}; a batched tensor "
                                         "needs no padding" if isinstance(costs, torch.Tensor)
                                         else "") + "."
        )
    mats = []
    for k, c in enumerate(costs):
        geom = as_geometry(c)
        if geom.batched:
            raise ValueError(
                f"costs[{k}] must be one problem (n, m), got a batch of shape "
                f"{tuple(geom.cost_matrix().shape)}."
            )
        mats.append(geom.cost_matrix()[0])
    check_same_dtype_device(**{f"costs_{k}": c for k, c in enumerate(mats)})
    sizes = [(int(c.shape[0]), int(c.shape[1])) for c in mats]
    n_max, m_max = max(s[0] for s in sizes), max(s[1] for s in sizes)
    like = mats[0]
    cost = torch.stack([
        torch.nn.functional.pad(c, (0, m_max - c.shape[1], 0, n_max - c.shape[0]),
                                value=float(pad_cost))
        for c in mats
    ])  # (B, n_max, m_max)
    check_finite(cost, "pad_cost")
    weights = []
    for name, ws, axis, size_max in (("a", a, 0, n_max), ("b", b, 1, m_max)):
        if ws is None:
            ws = [None] * len(mats)
        if isinstance(ws, torch.Tensor) or not isinstance(ws, Sequence) or len(ws) != len(mats):
            raise TypeError(
                f"{name} must be None or a list of {len(mats)} weight vectors (one per cost), "
                f"got {type(ws).__name__}"
                + (f" of length {len(ws)}" if isinstance(ws, Sequence) else "") + "."
            )
        padded = []
        for k, (w, size) in enumerate(zip(ws, sizes, strict=True)):
            length = size[axis]
            if w is None:
                w = like.new_full((length,), 1.0 / length)
            w = as_tensor(w, f"{name}[{k}]")
            check_float(w, f"{name}[{k}]")
            if tuple(w.shape) != (length,):
                raise ValueError(
                    f"{name}[{k}] must have shape ({length},) to match costs[{k}] of shape "
                    f"{tuple(mats[k].shape)}, got {tuple(w.shape)}."
                )
            check_same_dtype_device(cost=like, **{f"{name}_{k}": w})
            check_finite(w, f"{name}[{k}]")
            if bool((w < 0).any()):
                raise ValueError(f"{name}[{k}] must be non-negative, got min {float(w.min()):.3g}.")
            padded.append(torch.nn.functional.pad(w, (0, size_max - length)))
        weights.append(torch.stack(padded))
    return PaddedProblems(cost, weights[0], weights[1], sizes)


def _check_sizes(sizes, bsz: int, n_max: int, m_max: int) -> list[tuple[int, int]]:
    """Validate ``sizes`` for :meth:`OTResult.unpad`."""
    if not isinstance(sizes, Sequence) or len(sizes) != bsz:
        raise ValueError(
            f"sizes must be a list of {bsz} pairs (n_k, m_k), one per batch entry, got "
            f"{sizes!r}."
        )
    out = []
    for k, s in enumerate(sizes):
        if not (isinstance(s, Sequence) and len(s) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in s)
                and 1 <= s[0] <= n_max and 1 <= s[1] <= m_max):
            raise ValueError(
                f"sizes[{k}] must be a pair (n, m) of ints with 1 <= n <= {n_max} and "
                f"1 <= m <= {m_max}, got {s!r}."
            )
        out.append((int(s[0]), int(s[1])))
    return out
