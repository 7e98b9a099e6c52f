r"""Entropic optimal transport by log-domain Sinkhorn iterations: the one Sinkhorn loop.

The problem, for a cost ``C`` ``(B, n, m)`` and marginals ``a`` ``(B, n)``, ``b`` ``(B, m)``:

.. math::

    \mathrm{OT}_\varepsilon(a, b) = \min_{P \in U(a, b)} \langle P, C\rangle
        + \varepsilon\, \mathrm{KL}(P \,|\, a \otimes b)
    = \max_{f, g} \langle a, f\rangle + \langle b, g\rangle
        - \varepsilon \langle a \otimes b, e^{(f \oplus g - C)/\varepsilon} - 1\rangle,

with optimal plan :math:`P_{ij} = a_i b_j \exp((f_i + g_j - C_{ij})/\varepsilon)`. Sinkhorn's
algorithm alternates the two block maximisations of the dual, in the log domain:

.. math::

    f_i \leftarrow -\varepsilon \log \sum_j b_j e^{(g_j - C_{ij})/\varepsilon}, \qquad
    g_j \leftarrow -\varepsilon \log \sum_i a_i e^{(f_i - C_{ij})/\varepsilon}.

Unbalanced OT relaxes the marginal constraints into KL penalties of strengths
:math:`\rho_a, \rho_b` (``rho``):

.. math::

    \mathrm{UOT}_\varepsilon(a, b) = \min_{P \geq 0} \langle P, C\rangle
        + \varepsilon\, \mathrm{KL}(P \,|\, a \otimes b)
        + \rho_a \mathrm{KL}(P 1 \,|\, a) + \rho_b \mathrm{KL}(P^T 1 \,|\, b)
    = \max_{f, g} -\rho_a \langle a, e^{-f/\rho_a} - 1\rangle
        - \rho_b \langle b, e^{-g/\rho_b} - 1\rangle
        - \varepsilon \langle a \otimes b, e^{(f \oplus g - C)/\varepsilon} - 1\rangle

(generalized KL, :math:`\mathrm{KL}(p|q) = \sum p \log(p/q) - p + q`). The block
maximisations are the balanced updates damped by :math:`\lambda_a = \rho_a / (\rho_a +
\varepsilon)` and :math:`\lambda_b = \rho_b / (\rho_b + \varepsilon)`; :math:`\rho = \infty`
(:math:`\lambda = 1`) is the balanced constraint.

Everything that is an entropic program over the transport polytope (a Sinkhorn divergence, the
Sinkhorn operator of a permutation layer, a GAN loss, an IPOT proximal step) calls
:func:`sinkhorn`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import torch

from .. import costs as _costs
from .._validation import (
    as_tensor,
    batch_cost,
    batch_weights,
    check_choice,
    check_equal_mass,
    check_finite,
    check_nonnegative_int,
    check_positive_int,
    check_positive_scalar,
    check_same_dtype_device,
    check_scaling,
)
from ..geometry import Geometry, PointCloud, as_geometry
from ..result import ConvergenceWarning, OTResult
from . import _native, _newton, _scratch
from ._bookkeeping import Bookkeeping, as_long, xp
from ._initializers import gaussian_potentials
from ._softmin import DenseSoftmin, KernelSoftmin, OnlineEnvelope, OnlineSoftmin, batched_mv
from ._softmin import safe_log as _safe_log

__all__ = ["sinkhorn", "Implicit", "GRAD_MODES", "BACKENDS"]

GRAD_MODES = ("implicit", "unroll", "envelope")
BACKENDS = ("auto", "tensorized", "compiled", "kernel", "online")

# backend="auto": the kernel backend (unless grad="unroll"), its kernels compiled from this many
# cost entries (B n m) on (below it their eager form is fast enough that compiling, seconds once
# per process, does not pay), and the online backend for a point cloud whose dense cost would
# take more than this many bytes. The kernel backend with eager kernels takes 0.66-0.93x the
# time of the eager log domain ("tensorized") from n = m = 50 to 500 (2-D Gaussians, float32,
# tol 1e-4, eps = 0.1 and 0.01 x mean cost; benchmarks/small_backends.py), 0.41-0.95x in an
# earlier run on other draws.
AUTO_COMPILED_ENTRIES = 1 << 18
AUTO_ONLINE_BYTES = 1 << 31
# tol=None: this L1 marginal error, or the float resolution of the potentials where coarser
DEFAULT_TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Implicit:
    """Options of implicit differentiation (``grad=Implicit(...)``; ``grad="implicit"`` is
    ``Implicit()``).

    The backward pass solves the adjoint of the linearised fixed-point equations, reduced to a
    symmetric positive semi-definite ``k x k`` system with ``k = min(n, m)`` (a Schur complement of
    the dual Hessian), either densely (Cholesky) or by preconditioned conjugate gradients.

    Attributes:
        solver: ``"dense"``, ``"cg"``, or ``"auto"`` (dense when ``k <= dense_max``, else CG,
            with a dense retry when CG fails and ``k <= 4 * dense_max``).
        tol: relative residual at which CG stops; ``None`` picks ``1e-10`` in float64 and
            ``1e-5`` in float32.
        max_iter: CG iteration limit; ``None`` means ``max(100, 2 * k)``.
        dense_max: largest ``k`` solved densely under ``"auto"``.
    """

    solver: str = "auto"
    tol: float | None = None
    max_iter: int | None = None
    dense_max: int = 512

    def __post_init__(self):
        check_choice(self.solver, "Implicit.solver", ("auto", "dense", "cg"))
        check_positive_scalar(self.tol, "Implicit.tol", allow_none=True)
        if self.max_iter is not None:
            check_positive_int(self.max_iter, "Implicit.max_iter")
        check_positive_int(self.dense_max, "Implicit.dense_max")


def _range_ratio(ops, a, b, eps: float) -> torch.Tensor:
    """Each problem's cost range over the support of its weights, in units of ``eps`` ``(B,)``
    (float64, on the CPU)."""
    return ops.cost_range(a, b).detach().to("cpu", torch.float64) / eps


def _annealing_stages(ratio: torch.Tensor | None, scaling, max_iter: int, tol: float = 0.0):
    """Per problem, its annealing iterations ``K_b`` ``(B,)`` (a CPU long tensor) and the
    factor, or ``None`` without annealing.

    The annealing values lie on one grid anchored at ``eps``, ``eps / scaling^j``; problem
    ``b`` runs one iteration at each of ``eps / scaling^{K_b}``, ..., ``eps / scaling``, from
    the first grid value at or above its own cost range (over the support of its weights), so
    its schedule is the same in any batch. ``max_iter`` cuts the coarse end. ``"auto"``
    anneals by ``_AUTO_SCALING`` the problems whose cost range is at least
    ``_AUTO_RANGE_RATIO`` eps, and not the others; for a loose ``tol`` (at least
    ``_LOOSE_TOL``), by ``_LOOSE_SCALING`` from ``_LOOSE_RANGE_RATIO`` eps.
    ``ratio``: :func:`_range_ratio`.
    """
    if scaling is None or max_iter <= 1:
        return None
    if scaling == "auto":
        factor, threshold = ((_LOOSE_SCALING, _LOOSE_RANGE_RATIO) if tol >= _LOOSE_TOL
                             else (_AUTO_SCALING, _AUTO_RANGE_RATIO))
    else:  # every problem
        factor, threshold = float(scaling), 0.0
    if threshold > 0 and not bool((ratio >= threshold).any()):  # none anneals
        return None
    stages = torch.ceil(torch.log(ratio.clamp_min(1.0)) / math.log(1.0 / factor))
    keep = torch.isfinite(stages) & (ratio >= threshold)
    stages = torch.where(keep, stages, 0.0).clamp(0, max_iter - 1).long()
    return (stages, factor) if bool((stages > 0).any()) else None


def _damping(rho: float, eps: float) -> float:
    """``lambda = rho / (rho + eps)``, the factor of the unbalanced updates (1 when balanced)."""
    return 1.0 if math.isinf(rho) else rho / (rho + eps)


# Active-set compaction: once the problems still iterating are at most this fraction of the
# problems being computed (converged ones are frozen but still computed), the iterations move
# to a copy of the active problems only, so a batch costs about the sum of its problems rather
# than B times the slowest. 0 disables it (every problem is computed until the last converges).
_COMPACT_BELOW = 0.75


# Adaptive over-relaxation: omega = _START_OMEGA up to the main loop's iteration _RATE_TO, the
# contraction rate under it measured as the geometric mean of the error ratios since
# _RATE_FROM, the plain rate inferred from it (_refined_rate) and capped at _RATE_CAP
# (omega <= 1.82) so that an overestimate cannot push omega past the optimum, where the
# iterations slow down sharply (omega = 1.9 stalls at eps = 0.001 mean cost).
# Starting relaxed: plain iterations until the rate was known spent a third of a solve at
# eps = 0.1 x mean cost, which then converged in 21 iterations whatever omega followed, where
# a fixed omega = 1.4 from the start took 12-16. Iterations to an L1 error of 1e-4 (n = 1000,
# float32, default scaling, sums over problems), plain start -> start 1.4: the benchmark's
# 2-D/3-D Gaussians and shapes, seeds 1 and 2 (where 1.4 was chosen among 1.2-1.6):
# 169 -> 119 at eps = 0.1, 525 -> 500 at 0.01, 3731 -> 3701 at 0.001; held out, N(0, I)
# against a uniform box (2-D and 3-D, seeds 1-4): 168 -> 104, 459 -> 444, 3283 -> 3143; the
# benchmark's seeds 0 and 3: 169 -> 122, 505 -> 484, 3543 -> 3503. (A shorter window, 2-5,
# gained a little more there, but its plain start below cost 24% more: 2203 -> 2733.)
# Not where eps is small against the cost range (at least _AUTO_RANGE_RATIO eps) and the
# problem did not anneal (scaling=None): there the first iterations move mass over many eps,
# and a relaxed start cost 22% more iterations (2203 -> 2683 on three 2-D Gaussian problems,
# n = 200, eps = 0.001 x mean cost); those problems start plain, as before.
_START_OMEGA = 1.4
_RATE_FROM, _RATE_TO, _RATE_CAP = 4, 8, 0.99
# scaling="auto": anneal by this factor the problems whose cost range is at least this many eps
_AUTO_SCALING, _AUTO_RANGE_RATIO = 0.7, 2000.0
# ... and for a loose tolerance (tol >= _LOOSE_TOL, an L1 marginal error), by this factor from
# this many eps: fewer, larger steps reach a coarse accuracy sooner, where the slower schedule
# pays off only close to the fixed point. Time to tol at n = 1000 (float32; 2-D/3-D Gaussians
# and shapes; min of 7 interleaved runs, summed), the loose rule against the default: seeds 1
# and 2, where it was chosen: -16% at eps = 0.01 x mean cost and -4% at 0.001 for tol = 0.1,
# -2% and -1% at tol = 0.01, +9% and +7% at tol = 1e-4 (hence only for loose tolerances);
# held out, seeds 0 and 3: -8% and -7% at tol = 0.1, -8% and -7% at tol = 0.03.
_LOOSE_TOL, _LOOSE_SCALING, _LOOSE_RANGE_RATIO = 0.03, 0.5, 200.0
_EXTRAPOLATION_CAP = 3.0  # largest extrapolation of a relaxed update, in eps (_relaxed)
_GUARD_SPAN = 10  # fewest iterations between two errors compared by the safeguard
# Refinement of omega while relaxed: the rate is measured again over windows that start after
# the transient of the switch and double in length (iterations 12-20, 20-36, 36-68, ...)
_REFINE_FROM, _REFINE_SPAN = 12, 8
# Predicted checks: the error is also read this many iterations before each check, and the
# next check is predicted from the rate over those iterations (0: from the last check only)
_RECENT_SPAN = 2


def _refine_points(max_iter: int) -> dict[int, int]:
    """Main-loop iterations that end a refinement window, mapped to the window's length."""
    points, start, span = {}, _REFINE_FROM, _REFINE_SPAN
    while start + span <= max_iter:
        points[start + span] = span
        start, span = start + span, 2 * span
    return points


def _refined_rate(rate: torch.Tensor, relaxed: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    r"""Sinkhorn's contraction rate :math:`\eta` implied by the rate ``relaxed`` observed under
    the over-relaxation ``omega``: below the optimal omega the relaxed rate :math:`\lambda`
    solves :math:`(\lambda + \omega - 1)^2 = \lambda \omega^2 \eta` (Lehmann et al. 2022),
    so :math:`\eta = (\lambda + \omega - 1)^2 / (\lambda \omega^2)`; at or above it
    (:math:`\lambda = \omega - 1`) this gives back the rate ``omega`` was chosen for, and it is
    never below that (the estimate is smallest at :math:`\lambda = \omega - 1`), so omega
    only grows this way. Returns the larger of ``rate`` and that estimate; ``rate`` where
    ``relaxed`` is not in ``(0, 1)``."""
    ok = torch.isfinite(relaxed) & (relaxed > 0) & (relaxed < 1)
    lam = torch.where(ok, relaxed, 0.5)
    implied = (lam + omega - 1) ** 2 / (lam * omega * omega)
    return torch.where(ok, torch.maximum(rate, implied), rate)


def _relaxation(rate: torch.Tensor) -> torch.Tensor:
    r"""The over-relaxation :math:`\omega = 2 / (1 + \sqrt{1 - \eta})` for Sinkhorn's local
    contraction rate :math:`\eta` (Lehmann, von Renesse, Sambale, Uschmajew, "A note on
    overrelaxation in the Sinkhorn algorithm", Optim. Lett. 2022): the rate of the relaxed
    iterations is then :math:`\omega - 1 < \eta`."""
    rate = _usable_rate(rate)
    return 2.0 / (1.0 + torch.sqrt(1.0 - rate))


def _relaxed(old: torch.Tensor, new: torch.Tensor, excess: torch.Tensor) -> torch.Tensor:
    """The over-relaxed update ``old + omega (new - old)`` ``(B, k)`` for ``excess = omega - 1``
    ``(B, 1)``, its extrapolation beyond ``new`` capped at ``_EXTRAPOLATION_CAP`` per entry
    (potentials in units of eps).

    Near convergence the steps are small and the cap never acts. Far from it, at a small eps,
    a switch to ``omega ~ 1.6`` extrapolates steps of many eps and the marginal error jumps
    (0.76 to 32 at the switch, 2-D Gaussians, n = 1000, eps = 0.01 x mean cost; back below
    0.76 only 13 iterations later). Iterations to an L1 error of 1e-4 (2-D and 3-D Gaussians
    and shapes, eps = 0.1, 0.01 and 0.001 x mean cost, float32), capped at 3: on the Gaussians
    at 0.001, 1036 to 721 and 858 to 701 (n = 1000, seed 0), 927 to 701 and 915 to 621
    (n = 2000, seed 1); at 0.01, 76 to 71, 66 to 64, 77 to 72 and 63 to 62; unchanged at 0.1
    and on the shapes. In all, 14.6% and 16.4% fewer on the two sets; caps of 1, 2, 5, 10 and
    20 gave -0.2, 12.7, 12.4, 16.1 and -2.9% on the first set, 12.0% (5), 17.5% (10) and 1.9%
    (20) on the second. 3 is kept over 10 for the gain at 0.01, where 10 never acts. On
    problems not used to choose it (n = 1000, N(0, I) against a uniform box, 2-D and 3-D,
    eight seeds): 26% fewer iterations at 0.001 in float32 and 28% in float64 (15 of 16
    problems fewer), 2% more at 0.01 (30 to 46 iterations each, mixed both ways).
    """
    return new + ((new - old) * excess).clamp(-_EXTRAPOLATION_CAP, _EXTRAPOLATION_CAP)


def _usable_rate(rate: torch.Tensor) -> torch.Tensor:
    """``rate`` clamped to ``[0, _RATE_CAP]``; an error that did not decrease (or was already 0)
    gives 0, hence no relaxation (omega = 1)."""
    return torch.where(torch.isfinite(rate) & (rate < 1), rate, 0.0).clamp(0.0, _RATE_CAP)


def _check_steps(err, prev_err, steps, tol, check_every):
    """Iterations to the next check of each problem ``(B,)``: ``check_every``, or fewer where
    the rate measured since the last check, ``(err / prev_err) ** (1 / steps)``, predicts that
    the error reaches ``tol`` sooner (at least 1)."""
    lib = xp(err)  # torch tensors or numpy arrays (_bookkeeping)
    rate = (err / prev_err) ** (1.0 / steps.clip(1, None))
    need = lib.log(tol / err) / lib.log(rate)  # > 0 when err > tol and rate < 1
    need = lib.where((rate < 1) & (need > 0), lib.ceil(need), float(check_every))
    # (an error stalling above tol measures a rate near 1, which predicts check_every)
    return as_long(need.clip(1, check_every))


def _resolution(u, v, a, b, balanced: bool, row_total=None, positive=(False, False)
                ) -> torch.Tensor:
    r"""The L1 marginal error that rounding the potentials to their dtype alone leaves ``(B,)``.

    For potentials in units of eps, ``u = f / eps`` ``(B, n)`` and ``v = g / eps`` ``(B, m)``,
    :math:`\epsilon_{\text{mach}} (\langle a, |u|\rangle + \langle b, |v|\rangle)`, where
    balanced potentials are first moved to ``<a, u> = <b, v>`` (as the loop keeps them,
    :func:`_gauge_shift`). Rounding ``u_i`` moves row ``i`` of the plan by a relative ``|u_i|``
    times the unit roundoff, so its marginal by that times ``a_i``. ``row_total`` sums over the
    rows (across processes for a sharded solve; default: this process's).

    A float32 loop can reach a fixed point of its own rounded iteration, where its error reads
    ``0``, while the plan of its potentials, evaluated exactly, is off by about this much.
    Measured on 2-D and 3-D Gaussians (n = 200-1000, eps = 0.003-0.3 times the mean cost,
    float32, solved to the floor): the exact L1 error was 0.34-2.0 times this estimate. At
    ``eps = 0.01`` times the mean cost it is about ``1e-5``: a ``tol`` of ``1e-6`` cannot be
    certified in float32 there. ``positive``: see :func:`_weighted`.
    """
    row_total = row_total or _local_total
    if balanced:
        shift = _balancing_shift(u, v, a, b, row_total, positive)
        u, v = u - shift, v + shift
    return torch.finfo(u.dtype).eps * _weighted_abs(u, v, a, b, row_total, positive)


def _local_total(z: torch.Tensor) -> torch.Tensor:
    return z.sum(-1)


def _all_positive(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, bool]:
    """Whether every weight of ``a`` and of ``b`` is positive, on the CPU (where reading it
    costs no sync; elsewhere ``(False, False)``, which only costs the masks)."""
    if a.device.type != "cpu":
        return False, False
    return bool((a > 0).all()), bool((b > 0).all())


def _weighted(w: torch.Tensor, x: torch.Tensor, positive: bool) -> torch.Tensor:
    """``w * x`` with the entries of zero weight set to 0 (their ``x`` may be infinite), or
    plainly ``w * x`` where every weight is known ``positive``: the same numbers, without the
    mask (a comparison and a ``where``, about 7 us on 1000 entries against 1.3)."""
    return w * x if positive else torch.where(w > 0, w * x, 0.0)


def _weighted_abs(u, v, a, b, row_total, positive=(False, False)) -> torch.Tensor:
    """``<a, |u|> + <b, |v|>`` ``(B,)``, zero-weight entries left out."""
    return (row_total(_weighted(a, u.abs(), positive[0]))
            + _weighted(b, v.abs(), positive[1]).sum(-1))


def _balancing_shift(u, v, a, b, row_total, positive=(False, False)) -> torch.Tensor:
    """The ``c`` ``(B, 1)`` with ``<a, u - c> = <b, v + c>``, zero-weight entries left out."""
    total_u = row_total(_weighted(a, u, positive[0]))
    total_v = _weighted(b, v, positive[1]).sum(-1)
    return ((total_u - total_v) / (row_total(a) + b.sum(-1))).unsqueeze(-1)


_REGAUGE_FROM = 4  # translate where the offset exceeds 1/4 of the mean |potential|


def _gauge_shift(ops, u, v, a, b, positive=(False, False)):
    r"""The translation ``c`` ``(B, 1)`` (detached) that moves balanced potentials in units of
    eps ``(B, n)``, ``(B, m)`` to ``(u - c, v + c)`` with ``<a, u - c> = <b, v + c>``, where the
    offset is large (``_REGAUGE_FROM``), else 0; ``ops`` moves its state along.

    Every plan is unchanged, and so is every later iterate moved by the same ``c`` (the
    updates commute with the translation), but the rounding is not: from ``v = 0`` the first
    row update puts ``u`` near ``C / eps`` and the iteration keeps that offset, so each
    potential, hundreds of units at ``eps = 0.0025 x`` the mean cost, is rounded at that
    magnitude. Measured on 2-D Gaussians (n = 200-500, float32, eps = 0.01 and 0.02, 3000
    iterations), the exact marginal error of the result (its plan evaluated in float64) went
    from 1.4e-5 - 5.2e-5 to 3.1e-6 - 1.7e-5, and from 1.7-7.8x to 1.1-1.4x the error the loop
    reported (see :func:`_resolution`).
    """
    with torch.no_grad():
        shift = _balancing_shift(u, v, a, b, ops.row_total, positive)
        mean_abs = (_weighted_abs(u, v, a, b, ops.row_total, positive)
                    / (ops.row_total(a) + b.sum(-1))).unsqueeze(-1)
        # only an offset that inflates the potentials: every translation rounds them (and the
        # kernel backend's anchors, which its kernel does not follow), so small ones are left
        shift = torch.where(shift.abs() * _REGAUGE_FROM > mean_abs, shift, 0.0)
    ops.translate(shift)
    return shift


def _iterate(
    ops, a, b, eps, tol, max_iter, min_iter, scaling, check_every, init, symmetric,
    rho=(math.inf, math.inf), momentum=1.0, floor=False, guess=None,
):
    """Run Sinkhorn with the soft-min updates ``ops`` (a :mod:`._softmin` object holding the
    cost of ``B`` problems ``n x m``); return potentials ``f, g`` ``(B, n), (B, m)``, the
    iterations (the largest over the batch), error ``(B,)``, converged ``(B,)``, the
    iterations of each problem ``(B,)`` and its over-relaxation at the end ``(B,)`` (1 for
    plain iterations).

    Plain alternating updates return a pair that satisfies the column update exactly
    (``P^T 1 = b``); ``error`` is the row violation ``|P 1 - a|_1`` of that pair, hence the full
    L1 marginal error (relaxed updates add the column violation, see ``momentum`` below).
    Unbalanced (``rho`` finite), the updates are damped by ``lambda = rho / (rho + eps)`` and
    ``error`` is the L1 residual of the row optimality condition ``P 1 = a exp(-f / rho_a)``
    (the column one again holds exactly); it is the marginal error when ``rho_a = inf``.
    For a symmetric problem (``C = C^T``, ``a = b``) the averaged update
    ``f <- (f + T(f)) / 2`` is used instead, which avoids the slow oscillation of the alternating
    one, and ``f = g``. A problem whose error falls below ``tol`` is frozen, so a batch gives the
    same result as its problems one by one; once few enough problems are active, the others are
    dropped from the computation (active-set compaction, by out-of-place indexing, so unrolled
    gradients stay exact) and their results written back at the end.

    ``momentum`` (balanced, not symmetric): a float ``omega`` over-relaxes both updates,
    ``u <- u + omega (T(v) - u)`` and ``v <- v + omega (T(u) - v)`` (1 is plain Sinkhorn), or
    ``"adaptive"`` starts relaxed by ``_START_OMEGA`` (plain where eps is small against the cost
    range and the problem did not anneal), measures the contraction rate of each problem under
    it (main-loop iterations ``_RATE_FROM`` to ``_RATE_TO``), infers the plain rate from it
    (:func:`_refined_rate`; a start whose error did not fall infers 0, hence plain iterations)
    and then relaxes by the :func:`_relaxation` of that rate. The first rate is measured in the
    transport phase and underestimates the asymptotic one (``omega = 1.6`` where ``1.8`` is best
    at ``eps = 0.01 x mean cost``), so it is refined while relaxed: the rate observed under
    ``omega`` over windows of doubling length (:func:`_refine_points`) implies the plain rate
    (:func:`_refined_rate`), whose relaxation becomes the new ``omega``. A problem whose error
    grows over ``_GUARD_SPAN`` iterations or more (counted from its last change of ``omega``)
    goes back to ``omega = 1``; its next refinement starts from its plain rate, under a cap
    twice as far from 1 as the last (0.99, then 0.98, 0.96...). Measured on 2-D and 3-D
    Gaussians and shapes, n = 1000, float32: 8-28% fewer iterations than without the refinement
    at ``eps = 0.01 x mean cost``, 42-78% at 0.001, the same at 0.1 (which converges before the
    first window ends); the relaxed start saves 30-40% at 0.1 (``_START_OMEGA``). Each relaxed
    update extrapolates at most ``_EXTRAPOLATION_CAP`` eps beyond the plain one
    (:func:`_relaxed`). Relaxed, the column update is no longer exact, and ``error`` adds its
    violation ``|b (e^{v - T(u)} - 1)|_1``, known from the last column update without another
    pass over the cost.

    Checks: each problem is checked first at ``min_iter``, then after at most ``check_every``
    iterations, sooner where its rate predicts convergence sooner (:func:`_check_steps`): the
    rate over the ``_RECENT_SPAN`` iterations before the check (the error is read there
    without a sync) where the error fell over them, else the rate since the last check. A
    check of the batch happens when some problem is due, and only the problems due decide
    there, so the stopping iterations are those of the problems alone (each problem's error is
    read before its own check). On the CPU, where reading the errors costs no sync, the
    balanced alternating updates read every problem's error at every iteration (fused into
    the updates, else ``O(n + m)``): a problem at ``tol`` is checked there and then, so each
    stops at its first iteration at ``tol``, as with ``check_every = 1`` (this replaced a
    check predicted from the rate over iterations ``_RATE_FROM`` to ``_RATE_TO``, which then
    changed no iteration count or value on 112 problems). From the entropic Gaussian
    initializer the benchmark's Gaussians at ``eps = 0.1 x`` the mean cost reach
    ``tol = 1e-4`` in 7 iterations, where the schedule checked at 10 and 11. A read costs
    about 2 us for one problem (two host scalars) against 60-80 for a check: at n = 100,
    eps_rel 0.01 (222 iterations), 11.0-11.6 against 10.5-11.0 ms without the reads (a first
    version, a numpy array under two context managers per read, took 13.1-13.2).

    ``floor``: a problem also stops, and counts as converged, once its error is below the
    :func:`_resolution` of its current potentials (the default ``tol`` of :func:`sinkhorn`);
    only below float64, where that resolution can exceed ``tol``.

    ``guess``: potentials ``(f, g)`` to start from where there is no ``init``, for the problems
    that do not anneal (the others start from zero); see :mod:`._initializers`.
    """
    bsz, n, m = a.shape[0], a.shape[1], b.shape[1]
    log_a, log_b = _safe_log(a), _safe_log(b)
    rho_a, rho_b = rho
    balanced = math.isinf(rho_a) and math.isinf(rho_b)
    floor = floor and a.dtype != torch.float64
    regauge = balanced and not symmetric
    # (weights known positive skip the masks of the gauge shift and the resolution; a subset of
    # the problems, after compaction, keeps that)
    positive = _all_positive(a, b) if regauge or floor else (False, False)
    a_all, b_all = a, b  # (the batch's weights; a and b are compacted with the active set)
    # annealing: problem p runs K_p iterations at eps / factor^K_p, ..., eps / factor, then the
    # first plain one at eps; in a batch it waits (frozen) for the first K - K_p of the K + 1
    # iterations, so that every problem reaches eps at the same time and on its own schedule
    if scaling == "auto" and min_iter >= max_iter:  # a fixed-depth layer stays textbook
        scaling = None
    adaptive = momentum == "adaptive"
    range_ratio = (_range_ratio(ops, a, b, eps)
                   if adaptive or (scaling is not None and max_iter > 1) else None)
    annealing = _annealing_stages(range_ratio, scaling, max_iter, tol)
    if annealing is None:
        n_anneal, offset, grid = 0, None, [eps]
    else:
        stages, factor = annealing
        n_anneal = int(stages.max())
        offset = n_anneal - stages  # (B,) on the CPU
        grid = [eps / factor**j for j in range(n_anneal, -1, -1)]  # coarse to eps
    if init is None and guess is not None:  # for the problems that do not anneal
        start = None if annealing is None else (annealing[0] == 0).to(a.device).unsqueeze(-1)
        if start is None:
            init = guess
        elif bool(start.any()):
            init = [torch.where(start, p, 0.0) for p in guess]
    e_cur = grid[0]
    ops.set_eps(e_cur)
    # first update the rows, then the columns, as Sinkhorn-Knopp does; a warm start seeds the
    # column potential (the row one, for the symmetric update)
    u = a.new_zeros(bsz, n) if init is None else init[0] / e_cur
    if symmetric:
        v = u
    else:
        v = a.new_zeros(bsz, m) if init is None else init[1] / e_cur
    n_iter = 0
    for i, e_next in enumerate(grid[1:] + [eps]):  # one full iteration per value
        waiting = None if offset is None or bool((offset <= i).all()) else (
            (offset > i).to(a.device).unsqueeze(-1))  # (B, 1): not yet started
        u_old, v_old, ratio = u, v, e_cur / e_next
        lam_a = _damping(rho_a, e_cur)
        if symmetric:
            u = v = 0.5 * (u + lam_a * ops.row(u, b, log_b)) * ratio
        else:
            u = ops.row(v, b, log_b)
            if lam_a != 1.0 or ratio != 1.0:  # (balanced, at eps itself: u as it is)
                u = lam_a * u * ratio
        if waiting is not None:  # potentials in units of eps: a waiting one is only rescaled
            u = torch.where(waiting, u_old * ratio, u)
            v = u if symmetric else v
        e_cur = e_next
        ops.set_eps(e_cur)
        if not symmetric:
            v = _damping(rho_b, e_cur) * ops.col(u, a, log_a)
            if waiting is not None:
                v = torch.where(waiting, v_old * ratio, v)
        n_iter += 1
        if regauge:  # after every stage (a waiting problem has u = v = 0: no shift); the
            # main loop then keeps the balance (translating there too changed nothing measured)
            shift = _gauge_shift(ops, u, v, a, b, positive)
            u, v = u - shift, v + shift
    lam_a, lam_b = _damping(rho_a, eps), _damping(rho_b, eps)
    # Unbalanced, the dual changes only by O(t^2 / rho) along translations (f + t, g - t), so
    # plain iterations drift along them at the slow rate lam_a lam_b. Between the row and the
    # column update the pair is moved to the best translation, an exact ascent step in closed
    # form: t / eps = (log <a, e^{-f/rho_a}> - log <b, e^{-g/rho_b}>) / (eps/rho_a + eps/rho_b)
    # (Sejourne, Vialard and Peyre 2022). The fixed point is unchanged. The symmetric update
    # contracts translations by (1 - lam) / 2 and needs no such step.
    kap_a, kap_b = eps / rho_a, eps / rho_b  # 0 on a balanced side
    translate = not symmetric and kap_a + kap_b > 0

    # the check schedule and the results per problem are bookkeeping arrays (_bookkeeping):
    # numpy on the CPU, torch tensors on another device; the over-relaxation and the rates it
    # is computed from stay torch tensors on the device (computed as before, in the problems'
    # dtype: their rounding steers the relaxation)
    book = Bookkeeping(a)
    bk = book.xp
    active = book.full(bsz, True, "bool")
    active_dev = book.give(active)  # (the same on the solve's device, for masking updates)
    everyone = True  # whether every problem computed is active (no masking needed)
    error = book.full(bsz, math.inf)
    iters = book.full(bsz, 0, "long")  # the iterations of the problems that stopped
    # the problems being computed, as indices into the batch (None: all of them), and the batch's
    # results (u, v, error, iters, omega) as of the last compaction
    index, whole = None, None
    # row marginal of the current pair: a_i exp(u_i - t_i), whose target is a_i exp(-f_i / rho_a)
    # = a_i exp(u_i (1 - 1 / lam_a)); twice the violation when symmetric
    weight = 2 * a if symmetric else a

    # over-relaxation: omega (B, 1), or None while the iterations are plain
    if adaptive:  # relaxed from the start, but where eps is small against the cost range
        # and the problem did not anneal (see _START_OMEGA)
        plain = range_ratio >= _AUTO_RANGE_RATIO
        if annealing is not None:
            plain &= annealing[0] == 0
        omega = None if bool(plain.all()) else (
            a.new_full((bsz, 1), _START_OMEGA).masked_fill(plain.to(a.device).unsqueeze(-1), 1.0))
    else:
        omega = None if momentum == 1.0 else a.new_full((bsz, 1), float(momentum))
    s = None  # the last column update T(u), once v may differ from it
    excess_of = excess = None  # omega - 1 and the omega it was computed from
    err_from = None  # the error at _RATE_FROM, then at the start of each refinement window
    eta = None  # (B,) the contraction rate omega was chosen for
    cap = a.new_full((bsz,), _RATE_CAP)  # (B,) the largest eta, lowered by each safeguard stop
    refine_at = _refine_points(max_iter) if adaptive else {}
    k = 0  # iterations of the main loop
    # the checks of each problem: its next one (due_at), the last one (prev_iter, prev_err) and
    # the last one the safeguard of the relaxation compared (relaxed_iter, relaxed_err)
    # (in the batch's iterations: a problem that waited during the annealing is ``lag``
    # iterations behind, so its checks and its last iteration come that much later)
    lag = book.full(bsz, 0, "long") if offset is None else book.take(offset)
    own_end = max_iter + lag  # (B,) the batch iteration at which each problem has run max_iter
    limit = max_iter + (int(offset.max()) if offset is not None else 0)
    due_at = min_iter + lag
    # on the CPU, where reading the errors costs no sync, a problem whose error is at tol is
    # checked at once instead of at its scheduled check (balanced alternating updates, which
    # compute it in O(n + m), mostly fused into the updates; not with the resolution floor,
    # which its check computes)
    peek = book.host and balanced and not symmetric and not floor
    real = np.float32 if a.dtype == torch.float32 else float  # (a host scalar in a's dtype)
    prev_iter = relaxed_iter = lag
    prev_err = relaxed_err = book.full(bsz, math.inf)
    next_check = min_iter  # the earliest due_at of the active problems
    # each problem's error _RECENT_SPAN iterations before its next check (read at the batch
    # iterations read_at, on the host), and that iteration
    recent_err = book.full(bsz, math.inf)
    recent_iter = book.full(bsz, -1, "long")
    read_at: set[int] = set()

    def reads(dues):  # the batch iterations at which to read the errors for checks at dues
        return {d - _RECENT_SPAN for d in dues if d - _RECENT_SPAN > n_iter}

    def omega_of(like):  # (B,) the over-relaxation of each problem computed, 1 when plain
        return like.new_ones(like.shape[0]) if omega is None else omega.squeeze(-1).detach()

    def weighted(w, dev):  # sum_i w_i |dev_i|, 0 where w_i = 0 (even if dev_i overflowed)
        return torch.where(w > 0, w * dev.abs(), 0.0)

    def row_error():
        if lam_a == 1.0:
            return ops.row_total(weighted(weight, torch.expm1(u - t)))
        target = weight * torch.exp(u * (1 - 1 / lam_a))
        return ops.row_total(weighted(target, torch.expm1(u / lam_a - t)))

    def full_error():  # (B,) on the device
        if row_err is not None and (s is None or col_err is not None):  # fused by the updates
            return row_err if s is None else row_err + col_err
        if s is None:
            return row_error()
        # relaxed: the columns are off by |b (e^{v - s} - 1)|
        return row_error() + weighted(b, torch.expm1(v - s)).sum(-1)

    # balanced alternating updates ask the ops for the over-relaxation and their shares of the
    # error in the same pass (Softmin.fused_update; None where the ops do not fuse them): the
    # relaxed row update (valid while omega is relaxed_with) and the two errors
    fuse = balanced and not symmetric
    t_relaxed = row_err = col_err = relaxed_with = None
    while True:
        if fuse:
            if omega is not None and omega is not excess_of:  # omega - 1, once per value
                excess_of, excess = omega, omega - 1
            relaxed_with = omega
            t, t_relaxed, row_err = ops.fused_update(
                True, v, b, log_b, old=u, excess=None if omega is None else excess,
                cap=_EXTRAPOLATION_CAP, error_weights=weight)
        else:
            t = ops.row(v, b, log_b)
        k += 1
        if adaptive and eta is None and k in (_RATE_FROM, _RATE_TO):
            with torch.no_grad():  # no sync: the rate stays on the device
                if k == _RATE_FROM:
                    err_from = full_error()
                else:
                    err_to = full_error()
                    rate = (err_to / err_from) ** (1.0 / (_RATE_TO - _RATE_FROM))
                    if omega is not None:  # measured under _START_OMEGA
                        rate = _refined_rate(torch.zeros_like(rate), rate, omega.squeeze(-1))
                    eta = _usable_rate(rate)
                    omega = _relaxation(eta).unsqueeze(-1).to(u.dtype)
        if omega is not None and eta is not None and (k == _REFINE_FROM or k in refine_at):
            with torch.no_grad():  # no sync either
                err_now = full_error()
                if k in refine_at:
                    relaxed = (err_now / err_from) ** (1.0 / refine_at[k])
                    # (a converged problem is frozen: its omega stays as it ended)
                    eta = torch.where(active_dev, torch.minimum(
                        _refined_rate(eta, relaxed, omega.squeeze(-1)), cap), eta)
                    new_omega = _relaxation(eta).unsqueeze(-1).to(u.dtype)
                    # a changed omega has a transient: the safeguard starts over from here
                    changed = book.take((new_omega != omega).squeeze(-1))
                    relaxed_err = bk.where(changed, math.inf, relaxed_err)
                    relaxed_iter = bk.where(changed, n_iter, relaxed_iter)
                    omega = new_omega
                    # and the next check predicts from the rate since here, not from before
                    prev_err = bk.where(changed, book.take(err_now), prev_err)
                    prev_iter = bk.where(changed, n_iter, prev_iter)
                err_from = err_now
        if n_iter in read_at:
            with torch.no_grad():  # no sync on a device: read at the problems' checks
                now = due_at - _RECENT_SPAN == n_iter
                recent_err = bk.where(now, book.take(full_error()), recent_err)
                recent_iter = bk.where(now, n_iter, recent_iter)
        peeked = None
        if peek and n_iter < limit:
            if row_err is not None and row_err.shape[0] == 1 and (s is None or col_err
                                                                   is not None):
                # one problem, its error fused: two host reads and one sum in its dtype (the
                # rounding of the batch's sum), no array made unless it is at tol
                low = real(row_err.item()) + (0 if s is None else real(col_err.item()))
                near = low <= tol
            else:
                peeked = book.take(full_error().detach())
                near = peeked.min() <= tol
            if near:
                if peeked is None:
                    peeked = book.take(full_error().detach())
                # (own_end - max_iter: a problem's lag; it runs min_iter before any check)
                met = active & (peeked <= tol) & (n_iter - (own_end - max_iter) >= min_iter)
                if met.any():  # checked now: each such problem stops where it would alone
                    due_at, next_check = bk.where(met, n_iter, due_at), n_iter
        if n_iter >= limit or n_iter >= next_check:
            with torch.no_grad(), book.quiet():
                err = book.take(full_error()) if peeked is None else peeked
                if n_iter >= limit:
                    error = err if everyone else bk.where(active, err, error)
                    break
                # only the problems due decide, so each stops where it would alone
                due = active & (due_at <= n_iter)
                error = bk.where(due, err, error)
                if adaptive and omega is not None and eta is not None:  # (not at the start)
                    # an error that grew over _GUARD_SPAN iterations ends the relaxation
                    # (over fewer, relaxed errors may oscillate on their way down)
                    span = due & (n_iter - relaxed_iter >= _GUARD_SPAN)
                    grew = span & ~(err <= relaxed_err)  # a non-finite error counts
                    if not book.host or grew.any():  # (no sync on a device)
                        grew_dev = book.give(grew)
                        omega = torch.where(grew_dev.unsqueeze(-1), 1.0, omega)
                        # the next refinement starts again from the plain rate, under a lower cap
                        eta = torch.where(grew_dev, 0.0, eta)
                        cap = torch.where(grew_dev, (2 * cap - 1).clamp_min(0.0), cap)
                    relaxed_err = bk.where(span, err, relaxed_err)
                    relaxed_iter = bk.where(span, n_iter, relaxed_iter)
                # a problem stops at tol (or at the resolution of its potentials, the default
                # tol below float64), after its own max_iter iterations, or at a NaN error:
                # its potentials overflowed (NaN potentials stay NaN), and running on to
                # max_iter would only spend the time (the caller reports it)
                tol_now = (book.take(_resolution(u, v, a, b, balanced, ops.row_total,
                                                 positive))
                           .clip(tol, None) if floor else tol)
                done = due & ((err <= tol_now) | (n_iter >= own_end) | bk.isnan(err))
                iters = bk.where(done, n_iter, iters)
                active = active & ~done
                # the rate since the last check, or over the last _RECENT_SPAN iterations where
                # those lie after it and the error fell over them
                newer = (recent_iter > prev_iter) & (err < recent_err)
                base_err = bk.where(newer, recent_err, prev_err)
                base_iter = bk.where(newer, recent_iter, prev_iter)
                due_at = bk.where(due, bk.minimum(n_iter + _check_steps(
                    err, base_err, n_iter - base_iter, tol_now, check_every), own_end), due_at)
                prev_err = bk.where(due, err, prev_err)
                prev_iter = bk.where(due, n_iter, prev_iter)
                n_active, next_check, dues = book.schedule(active, due_at, limit)
            read_at = reads(dues)
            if n_active == 0:
                break
            everyone = n_active == active.shape[0]
            active_dev = book.give(active)
            if n_active <= _COMPACT_BELOW * active.shape[0]:
                keep_h = active.nonzero()[0] if book.host else active.nonzero().squeeze(-1)
                keep = book.give(keep_h)
                now = (u, v, book.give(error), book.give(iters), omega_of(u))
                if index is None:
                    index, whole = keep, now
                else:
                    whole = tuple(w.index_copy(0, index, x) for w, x in
                                  zip(whole, now, strict=True))
                    index = index[keep]
                ops.select(keep)
                a, b, log_a, log_b, weight = (x[keep] for x in (a, b, log_a, log_b, weight))
                u, v, t = (x[keep] for x in (u, v, t))
                row_err, col_err, omega, s, err_from, eta = (
                    None if x is None else x[keep]
                    for x in (row_err, col_err, omega, s, err_from, eta))
                t_relaxed, cap = None, cap[keep]
                (error, iters, due_at, prev_iter, prev_err, relaxed_err, relaxed_iter, own_end,
                 recent_err, recent_iter) = (
                    x[keep_h] for x in (error, iters, due_at, prev_iter, prev_err, relaxed_err,
                                        relaxed_iter, own_end, recent_err, recent_iter))
                if symmetric:
                    v = u
                active, everyone = active[keep_h], True
                active_dev = book.give(active)
        if symmetric:
            u_new = 0.5 * (u + lam_a * t)
            u = v = u_new if everyone else torch.where(active_dev.unsqueeze(-1), u_new, u)
        else:
            u_new = lam_a * t if lam_a != 1.0 else t
            if omega is not None:
                if omega is not excess_of:  # omega - 1, once per value of omega
                    excess_of, excess = omega, omega - 1
                # (omega changes at a check or a rate measurement: then relaxed here)
                fused = t_relaxed is not None and relaxed_with is omega
                u_new = t_relaxed if fused else _relaxed(u, u_new, excess)
            if translate:
                la = ops.row_logsumexp(log_a - kap_a * u_new)
                lb = torch.logsumexp(log_b - kap_b * v, -1, keepdim=True)
                u_new = u_new + (la - lb) / (kap_a + kap_b)  # (B, 1) translation
            u = u_new if everyone else torch.where(active_dev.unsqueeze(-1), u_new, u)
            if fuse:
                g_new, v_relaxed, col_err = ops.fused_update(
                    False, u, a, log_a, old=v, excess=None if omega is None else excess,
                    cap=_EXTRAPOLATION_CAP, error_weights=None if omega is None else b)
            else:
                g_new, v_relaxed = ops.col(u, a, log_a), None
            v_new = lam_b * g_new if lam_b != 1.0 else g_new
            if omega is not None:
                s, v_new = g_new, v_relaxed if v_relaxed is not None else _relaxed(v, g_new,
                                                                                   excess)
            v = v_new if everyone else torch.where(active_dev.unsqueeze(-1), v_new, v)
        n_iter += 1
    # the problems still active at the end ran every iteration
    iters = book.give(bk.where(active, n_iter, iters))
    error = book.give(error).to(u.dtype)
    omega = omega_of(u)
    if index is not None:
        u, v, error, iters, omega = (w.index_copy(0, index, x) for w, x in
                                     zip(whole, (u, v, error, iters, omega), strict=True))
        if symmetric:
            v = u
    lag = book.give(lag)  # (the whole batch's: never compacted)
    annealed = n_anneal - lag  # K_p, 0 without annealing
    if offset is not None:  # each problem's own iterations, without the ones it waited
        iters = iters - lag
        n_iter = int(iters.max())
    if floor:
        tol = _resolution(u, v, a_all, b_all, balanced, ops.row_total,
                          positive).clamp_min(tol)
    converged = error <= tol
    return u * eps, v * eps, n_iter, error, converged, iters, omega, annealed


# --------------------------------------------------------------------------------------------
# implicit differentiation


def _cg(matvec, rhs, precond, tol, max_iter):
    """Batched preconditioned conjugate gradients for SPD systems ``A x = rhs`` ``(B, k)``."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = precond(r)
    p = z.clone()
    rz = (r * z).sum(-1, keepdim=True)
    bound = tol * rhs.norm(dim=-1, keepdim=True)
    tiny = torch.finfo(rhs.dtype).tiny
    for _ in range(max_iter):
        if bool((r.norm(dim=-1, keepdim=True) <= bound).all()):
            return x, True
        ap = matvec(p)
        alpha = rz / (p * ap).sum(-1, keepdim=True).clamp_min(tiny)
        x = x + alpha * p
        r = r - alpha * ap
        z = precond(r)
        rz_new = (r * z).sum(-1, keepdim=True)
        p = z + (rz_new / rz.clamp_min(tiny)) * p
        rz = rz_new
    return x, bool((r.norm(dim=-1, keepdim=True) <= bound).all())


def _adjoint(kernel, a, b, grad_f, grad_g, opts: Implicit):
    """Solve the adjoint system of the Sinkhorn fixed point.

    With the plan ``P = a_i b_j K_ij`` (``kernel`` ``K = exp((f + g - C) / eps)`` ``(B, n, m)``),
    ``R = P / a`` (rows sum to 1) and ``Q = P / b`` (columns sum to 1), the fixed-point
    equations ``F(f, g; C, a, b) = 0`` have Jacobian ``J = [[I, R], [Q^T, I]]`` in ``(f, g)``;
    this returns ``(x, y)`` solving ``J^T [x; y] = [grad_f; grad_g]``. Potentials of zero-weight
    points are explicit functions of the others and are eliminated first; on the support the
    system is ``H diag(1/a, 1/b)`` with ``H`` the dual Hessian, whose Schur complement
    ``S = diag(a) - Q P^T`` is solved (it is singular along constants; a rank-one term fixes the
    constant, which the gradients do not depend on).

    ``R``, ``Q`` and ``P`` are never formed: each product with them is one with ``K`` between
    diagonal scalings (``Q w = a (K w)``, ``P^T w = b (K^T (a w))``), so the solve holds one
    ``n x m`` matrix instead of four and writes none. The row side is the smaller one (callers
    transpose otherwise).
    """
    sa, sb = a > 0, b > 0
    gf_off, gg_off = grad_f * ~sa, grad_g * ~sb
    # move the known adjoints of off-support potentials to the right-hand side
    rhs_u = (grad_f - a * batched_mv(kernel, gg_off)) * sa  # (B, n)
    rhs_v = (grad_g - b * batched_mv(kernel, gf_off, transpose=True)) * sb  # (B, m)
    schur_rhs = rhs_u - a * batched_mv(kernel, rhs_v)  # (B, n)
    mass = a.sum(-1, keepdim=True)
    n = kernel.shape[-2]

    def p_transpose(w):  # P^T w (B, m)
        return b * batched_mv(kernel, a * w, transpose=True)

    def matvec(w):  # (S + a a^T / mass) w, identity off the support
        sw = a * w - a * batched_mv(kernel, p_transpose(w))
        return sw + a * (a * w).sum(-1, keepdim=True) / mass + w * ~sa

    def dense():
        # Q P^T = diag(a) K diag(b) K^T diag(a)
        qp = a.unsqueeze(-1) * ((kernel * b.unsqueeze(-2)) @ kernel.transpose(-2, -1))
        s = torch.diag_embed(a + (~sa).to(a.dtype)) - qp * a.unsqueeze(-2)
        s = s + a.unsqueeze(-1) * a.unsqueeze(-2) / mass.unsqueeze(-1)  # (B, n, n)
        chol, info = torch.linalg.cholesky_ex(s)
        if bool((info == 0).all()):
            return torch.cholesky_solve(schur_rhs.unsqueeze(-1), chol).squeeze(-1)
        # S is positive semi-definite with a rank-one fix, but where Sinkhorn contracts slowly
        # its smallest eigenvalue is near the rounding of float32 and the factorization can
        # fail; a float32 LU then failed too (MKL rejected its own pivots on a batch of
        # 16 x 300 x 300, eps 0.05 x the mean cost), so solve in float64
        s64, rhs64 = s.double(), schur_rhs.double()
        chol, info = torch.linalg.cholesky_ex(s64)
        if bool((info == 0).all()):
            out = torch.cholesky_solve(rhs64.unsqueeze(-1), chol).squeeze(-1)
        else:
            out = torch.linalg.lstsq(s64, rhs64.unsqueeze(-1)).solution.squeeze(-1)
        return out.to(s.dtype)

    use_dense = opts.solver == "dense" or (opts.solver == "auto" and n <= opts.dense_max)
    if use_dense:
        w = dense()
    else:
        tol = (opts.tol if opts.tol is not None
               else (1e-10 if kernel.dtype == torch.float64 else 1e-5))
        max_iter = opts.max_iter if opts.max_iter is not None else max(100, 2 * n)
        inv_diag = torch.where(sa, 1.0 / torch.where(sa, a, torch.ones_like(a)), 1.0)
        w, ok = _cg(matvec, schur_rhs, lambda r: r * inv_diag, tol, max_iter)
        if not ok and opts.solver == "auto" and n <= 4 * opts.dense_max:
            w = dense()
        elif not ok:
            warnings.warn(
                f"implicit differentiation: conjugate gradients did not reach tol={tol:g} in "
                f"{max_iter} iterations; gradients are approximate. Use grad=Implicit("
                "solver='dense') or grad='unroll'.",
                ConvergenceWarning,
                stacklevel=4,
            )
    w = w * sa
    x = a * w + gf_off  # (B, n)
    y = (rhs_v - p_transpose(w)) * sb + gg_off  # (B, m)
    return x, y


class _ImplicitSinkhorn(torch.autograd.Function):
    """Identity on converged potentials ``(f, g)``, differentiated by the implicit function
    theorem with respect to the cost and the weights."""

    @staticmethod
    def forward(ctx, cost, a, b, f, g, eps, opts):
        ctx.save_for_backward(cost, a, b, f, g)
        ctx.eps, ctx.opts = eps, opts
        return f.clone(), g.clone()

    @staticmethod
    def backward(ctx, grad_f, grad_g):
        cost, a, b, f, g = ctx.saved_tensors
        grad_f = torch.zeros_like(f) if grad_f is None else grad_f
        grad_g = torch.zeros_like(g) if grad_g is None else grad_g
        inputs, bsz = (cost, a, b, f, g, grad_f, grad_g), cost.shape[0]
        # by groups, as the forward iterations and for the same reason, with about four n x m
        # temporaries per problem: B = 4, n = m = 1000 (float32), loss and gradient in the
        # points, took 116-122 ms in groups of two and 98-118 ms one problem at a time
        group = _cpu_group(cost, matrices=4)
        if group >= bsz:
            grads = _implicit_grads(*inputs, ctx.eps, ctx.opts)
        else:
            grads = tuple(torch.cat(part) for part in zip(*(
                _implicit_grads(*(x[lo:lo + group] for x in inputs), ctx.eps, ctx.opts)
                for lo in range(0, bsz, group)), strict=True))
        return (*grads, None, None, None, None)


def _implicit_grads(cost, a, b, f, g, grad_f, grad_g, eps, opts):
    """The cost's and the weights' gradients ``(B, n, m)``, ``(B, n)``, ``(B, m)`` of a balanced
    Sinkhorn fixed point, from those of its potentials (:class:`_ImplicitSinkhorn`)."""
    kernel = _implicit_kernel(cost, f, g, eps)  # (B, n, m)
    if f.shape[-1] <= g.shape[-1]:
        x, y = _adjoint(kernel, a, b, grad_f, grad_g, opts)
    else:  # solve on the smaller side: the problem transposed
        y, x = _adjoint(kernel.transpose(-2, -1), b, a, grad_g, grad_f, opts)
    # x_i R_ij + y_j Q_ij = K_ij (x_i b_j + y_j a_i), written over the kernel (its last use
    # is the two products below, which read it first)
    grad_a = -eps * batched_mv(kernel, y)  # d F / d a_i and d F / d b_j, divided by eps
    grad_b = -eps * batched_mv(kernel, x, transpose=True)
    weight = x.unsqueeze(-1) * b.unsqueeze(-2) + y.unsqueeze(-2) * a.unsqueeze(-1)
    # (out of place when autograd records this backward: create_graph=True)
    grad_cost = kernel * weight if torch.is_grad_enabled() else kernel.mul_(weight)
    return grad_cost, grad_a, grad_b


def _implicit_kernel(cost, f, g, eps):
    """``K = exp((f_i + g_j - C_ij) / eps)`` ``(B, n, m)`` (the plan divided by ``a_i b_j``), its
    exponent capped at half the dtype's largest exponent (pairs where both weights vanish have
    an unbounded kernel; the cap keeps it finite). One native pass on the CPU (its float32
    exponential gives 0 below ``exp(-87.3)``, where torch's gives subnormal numbers), else one
    matrix and five in-place passes."""
    limit = 0.5 * math.log(torch.finfo(cost.dtype).max)
    if (cost.dim() == 3 and cost.is_contiguous() and _native.usable(cost, f, g)):
        return _native.absorb(torch.empty_like(cost), f / eps, g / eps, cost, 1.0 / eps,
                              -math.inf, upper=limit)
    z = f.unsqueeze(-1) + g.unsqueeze(-2)
    return z.sub_(cost).div_(eps).clamp_max_(limit).exp_()


class _ImplicitUnbalanced(torch.autograd.Function):
    """Identity on converged unbalanced potentials ``(f, g)``, differentiated by the implicit
    function theorem.

    The fixed point is ``f = T_1(g) = -lam_a eps log sum_j b_j e^{(g_j - C_ij)/eps}`` and
    ``g = T_2(f)`` likewise. With ``R`` the row-normalised and ``Q`` the column-normalised plan,
    the Jacobian of ``(f - T_1(g), g - T_2(f))`` is ``J = [[I, lam_a R], [lam_b Q^T, I]]``; the
    adjoint ``J^T [x; y] = [grad_f; grad_g]`` is reduced to the smaller side,
    ``(I - lam_a lam_b Q R^T) x = grad_f - lam_b Q grad_g`` (``Q R^T`` is column-stochastic, so
    the system is invertible for ``lam_a lam_b < 1``), and solved densely.
    """

    @staticmethod
    def forward(ctx, cost, a, b, f, g, eps, lam_a, lam_b):
        ctx.save_for_backward(cost, a, b, f, g)
        ctx.eps, ctx.lam = eps, (lam_a, lam_b)
        return f.clone(), g.clone()

    @staticmethod
    def backward(ctx, grad_f, grad_g):
        cost, a, b, f, g = ctx.saved_tensors
        eps, (lam_a, lam_b) = ctx.eps, ctx.lam
        grad_f = torch.zeros_like(f) if grad_f is None else grad_f
        grad_g = torch.zeros_like(g) if grad_g is None else grad_g
        limit = 0.5 * math.log(torch.finfo(cost.dtype).max)
        # R_ij = b_j e^{x_ij} / sum_k b_k e^{x_ik}, x = (g - C) / eps; e1 = R / b (finite at b = 0)
        x1 = (g.unsqueeze(-2) - cost) / eps  # (B, n, m)
        lse1 = torch.logsumexp(x1 + _safe_log(b).unsqueeze(-2), -1, keepdim=True)
        e1 = torch.exp((x1 - lse1).clamp_max(limit))
        r_mat = e1 * b.unsqueeze(-2)
        x2 = (f.unsqueeze(-1) - cost) / eps  # (B, n, m)
        lse2 = torch.logsumexp(x2 + _safe_log(a).unsqueeze(-1), -2, keepdim=True)
        e2 = torch.exp((x2 - lse2).clamp_max(limit))
        q_mat = e2 * a.unsqueeze(-1)
        lam = lam_a * lam_b

        r_t = r_mat.transpose(-2, -1)
        if f.shape[-1] <= g.shape[-1]:
            system = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device) - lam * q_mat @ r_t
            x = torch.linalg.solve(system, grad_f - lam_b * batched_mv(q_mat, grad_g))  # (B, n)
            y = grad_g - lam_a * batched_mv(r_mat, x, transpose=True)  # (B, m)
        else:
            system = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device) - lam * r_t @ q_mat
            y = torch.linalg.solve(system, grad_g - lam_a * batched_mv(r_mat, grad_f,
                                                                        transpose=True))
            x = grad_f - lam_b * batched_mv(q_mat, y)
        grad_cost = lam_a * x.unsqueeze(-1) * r_mat + lam_b * y.unsqueeze(-2) * q_mat
        grad_a = -lam_b * eps * batched_mv(e2, y)  # (B, n)
        grad_b = -lam_a * eps * batched_mv(e1, x, transpose=True)  # (B, m)
        return grad_cost, grad_a, grad_b, None, None, None, None, None


def _phi(f: torch.Tensor, rho: float) -> torch.Tensor:
    """``-rho (exp(-f / rho) - 1)``, the dual of ``rho KL(. | a)`` per unit of ``a``; ``f`` when
    ``rho = inf``."""
    return f if math.isinf(rho) else -rho * torch.expm1(-f / rho)


def _unbalanced_value(cost, a, b, f, g, eps, rho):
    """The unbalanced dual objective ``<a, phi_a(f)> + <b, phi_b(g)> - eps (m(P) - m(a) m(b))``
    ``(B,)``; with ``f, g`` held fixed its gradients are Danskin's."""
    mass = _plan(cost, a, b, f, g, eps).sum((-2, -1))
    value = (a * _phi(f, rho[0])).sum(-1) + (b * _phi(g, rho[1])).sum(-1)
    return value - eps * (mass - a.sum(-1) * b.sum(-1))


class _EnvelopeValue(torch.autograd.Function):
    """``<a, f> + <b, g>`` with Danskin's gradients: ``P`` for the cost, ``f`` and ``g`` for the
    weights, the potentials held fixed."""

    @staticmethod
    def forward(ctx, cost, a, b, f, g, eps):
        ctx.save_for_backward(cost, a, b, f, g)
        ctx.eps = eps
        return (a * f).sum(-1) + (b * g).sum(-1)

    @staticmethod
    def backward(ctx, grad_value):
        cost, a, b, f, g = ctx.saved_tensors
        grad_cost = None
        if ctx.needs_input_grad[0]:
            plan = _plan(cost, a, b, f, g, ctx.eps)
            grad_cost = grad_value[:, None, None] * plan
        gv = grad_value.unsqueeze(-1)
        return grad_cost, gv * f, gv * g, None, None, None


def _plan(cost, a, b, f, g, eps, *, detach=False):
    """``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)`` ``(B, n, m)``; ``cost`` is the matrix
    or a function returning it, ``detach`` cuts the plan's gradient to it.

    The weights multiply the kernel rather than enter its exponent, so the derivative of the plan
    with respect to a zero weight is right (``b_j exp(...)``, not 0). The kernel is bounded by
    ``1 / max(a_i, b_j)`` wherever a weight is positive; where both vanish it is replaced by 1.
    """
    cost = _evaluated(cost)
    if detach:
        cost = cost.detach()
    z = (f.unsqueeze(-1) + g.unsqueeze(-2) - cost) / eps
    both_zero = (a == 0).unsqueeze(-1) & (b == 0).unsqueeze(-2)
    z = torch.where(both_zero, torch.zeros_like(z), z)
    return a.unsqueeze(-1) * b.unsqueeze(-2) * torch.exp(z)


# --------------------------------------------------------------------------------------------
# the public entry point


def _check_init(init, bsz, n, m, batched, like, keep_grad=False):
    """Validate a warm start ``(f, g)``; return ``[f, g]`` as ``(B, n)``, ``(B, m)``, detached
    unless ``keep_grad``."""
    if not (isinstance(init, tuple | list) and len(init) == 2):
        raise TypeError(f"init must be a pair (f, g) of potentials, got {type(init).__name__}.")
    out = []
    for name, t, size in (("init f", init[0], n), ("init g", init[1], m)):
        t = as_tensor(t, name)
        expected = (bsz, size) if batched else (size,)
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}.")
        check_same_dtype_device(cost=like, **{name.replace(" ", "_"): t})
        check_finite(t, name)
        out.append((t if keep_grad else t.detach()).reshape(bsz, size))
    return out


def _check_rho(rho) -> tuple[float, float]:
    """``rho`` as a pair ``(rho_a, rho_b)`` in ``(0, inf]``; ``None`` is balanced."""
    if rho is None:
        return math.inf, math.inf
    pair = tuple(rho) if isinstance(rho, tuple | list) else (rho, rho)
    if len(pair) != 2:
        raise ValueError(f"rho must be a number or a pair (rho_a, rho_b), got {rho!r}.")
    out = []
    for name, r in zip(("rho_a", "rho_b"), pair, strict=True):
        if r is None:
            out.append(math.inf)
            continue
        if isinstance(r, torch.Tensor) and r.numel() == 1:
            r = float(r)
        if isinstance(r, bool) or not isinstance(r, int | float):
            raise TypeError(f"{name} must be a positive number or None, got {r!r}.")
        r = float(r)
        if math.isnan(r) or r <= 0:
            raise ValueError(f"{name} must be > 0 (math.inf or None for balanced), got {r!r}.")
        out.append(r)
    return out[0], out[1]


def _check_loop_options(eps, tol, max_iter, min_iter, check_every, scaling):
    """Validate the options of the Sinkhorn loop; return them as numbers."""
    eps = check_positive_scalar(eps, "eps")
    tol = DEFAULT_TOL if tol is None else check_positive_scalar(tol, "tol")
    max_iter = check_positive_int(max_iter, "max_iter")
    min_iter = check_nonnegative_int(min_iter, "min_iter")
    check_every = check_positive_int(check_every, "check_every")
    scaling = check_scaling(scaling)
    return eps, tol, max_iter, min_iter, check_every, scaling


def _check_momentum(momentum, balanced: bool, symmetric: bool, fixed_depth: bool):
    """Resolve ``momentum`` to ``"adaptive"`` or a number ``omega`` in ``(0, 2)``."""
    if isinstance(momentum, str):
        check_choice(momentum, "momentum", ("auto", "adaptive"))
        if momentum == "auto":
            return "adaptive" if balanced and not symmetric and not fixed_depth else 1.0
        omega = None
    else:
        omega = check_positive_scalar(momentum, "momentum")
        if omega >= 2:
            raise ValueError(f"momentum (the over-relaxation omega) must lie in (0, 2), got "
                             f"{momentum!r}; 1 is plain Sinkhorn.")
        if omega == 1.0:
            return 1.0
    if not balanced or symmetric:
        raise ValueError(
            f"momentum={momentum!r} over-relaxes balanced, non-symmetric problems only; got "
            f"{'symmetric=True' if symmetric else 'a finite rho (unbalanced)'}. Use "
            "momentum='auto' or 1.0.")
    return "adaptive" if omega is None else omega


# the n x m entries, per CPU group of problems, up to which a batch is computed together
_CPU_GROUP_ENTRIES = 1 << 21


def _cpu_group(cost: torch.Tensor, matrices: int = 1) -> int:
    """Problems per group for a batch of costs ``(B, n, m)``: the whole batch off the CPU, else
    as many as hold at most ``_CPU_GROUP_ENTRIES`` entries together in ``matrices`` ``n x m``
    arrays each (at least one)."""
    bsz, n, m = cost.shape
    if cost.device.type != "cpu":
        return bsz
    return max(1, min(bsz, _CPU_GROUP_ENTRIES // max(1, matrices * n * m)))


def _part(pair, part: slice):
    """A pair of per-problem tensors (or ``None``) restricted to the problems ``part``."""
    return None if pair is None else tuple(x[part] for x in pair)


def _iterate_kernel(cost, a, b, eps, *, compiled, init, bounds=None, guess=None, **options):
    """:func:`_iterate` (``options``: its loop options) on the ``"kernel"`` backend; returns
    its outputs, the backend that ran and the kernel's counts (summed over groups).

    On CPU the batch is iterated in groups of problems whose kernels hold at most
    ``_CPU_GROUP_ENTRIES`` entries together (one problem at a time from that size on), one
    group after the other: every iteration reads each kernel twice, and the kernels of a whole
    batch of large problems do not stay in the cache from one read to the next. Measured
    (2-D Gaussians, float32, eps 0.3, tol 1e-4, 2 cores, best of 5, four interleaved rounds):
    ``B = 4``, ``n = m = 1000`` took 66-74 ms as one batch, 37-52 ms in groups of two,
    40-61 ms one at a time and 42-60 ms in a loop of calls; smaller groups were slower where
    the batch fits (``B = 8, n = 500``: 30 ms whole, 34 ms in groups of four, 60 ms one at a
    time; ``B = 16, n = 300``: 31, 35 and 90-104 ms). Problems are independent, so a group
    gives each of them what the whole batch would (each stops on its own; the batch's
    iteration count is the largest).
    """
    bsz, group = cost.shape[0], _cpu_group(cost)
    parts, counts, backend = [], {}, "kernel"
    for lo in range(0, bsz, group):
        part = slice(lo, lo + group)
        ops = KernelSoftmin(cost[part], eps, compiled=compiled, bounds=_part(bounds, part))
        parts.append(_iterate(ops, a[part], b[part], eps, init=_part(init, part),
                              guess=_part(guess, part), **options))
        for key, value in ops.counts().items():
            counts[key] = counts.get(key, 0) + value
        backend = ops.backend
        ops.release()
    if len(parts) == 1:
        return parts[0], backend, counts
    f, g, n_iter, error, converged, iters, omega, annealed = zip(*parts, strict=True)
    f, g, error, converged, iters, omega, annealed = (
        torch.cat(x) for x in (f, g, error, converged, iters, omega, annealed))
    return (f, g, max(n_iter), error, converged, iters, omega, annealed), backend, counts


def _choose_backend(backend: str, geom: Geometry, grad, balanced: bool) -> str:
    """Resolve ``backend="auto"`` and check an explicit choice against the other options."""
    bsz, n, m = geom.shape
    online_ok = isinstance(geom, PointCloud) and balanced and grad in (None, "envelope")
    if backend == "auto":
        itemsize = torch.finfo(geom.dtype).bits // 8
        if online_ok and bsz * n * m * itemsize > AUTO_ONLINE_BYTES:
            return "online"
        return "tensorized" if grad == "unroll" else "kernel"
    if backend in ("compiled", "kernel") and grad == "unroll":
        raise ValueError(f"backend={backend!r} does not record autograd through the "
                         "iterations; use backend='tensorized' (or 'auto') with grad='unroll'.")
    if backend == "online":
        if not isinstance(geom, PointCloud):
            raise ValueError("backend='online' evaluates the cost from points and needs a "
                             f"PointCloud(x, y), got {type(geom).__name__}.")
        if not balanced:
            raise ValueError("backend='online' solves balanced OT only; got a finite rho. Use "
                             "backend='tensorized' or 'compiled' for unbalanced OT.")
        if grad not in (None, "envelope"):
            raise ValueError("backend='online' differentiates the value by the envelope theorem "
                             f"(grad='envelope', its default), got grad={grad!r}: the other "
                             "modes need the n x m plan.")
    return backend


# the largest dimension for which the native squared Euclidean cost (one pass, coordinates
# unrolled for d <= 3) beats torch's three passes (add, batched product, clamp). float32,
# 2 cores, n = m = 1000: 88 / 98 us against 183 / 206 us at d = 2 / 3, but 1.5 ms against
# 0.22 ms at d = 5; at 4000: 3.5 / 3.3 ms against 9.4 / 8.4 ms.
_NATIVE_COST_MAX_DIM = 3


class _NativeSqEuclidean(torch.autograd.Function):
    r"""The squared Euclidean cost :math:`|x_i - y_j|^2` ``(B, n, m)`` of points ``(B, n, d)``,
    ``(B, m, d)`` by the native kernels (``d <= 3``, CPU), differentiable once in the points:
    :math:`\partial / \partial x_i = 2 (x_i \sum_j G_{ij} - \sum_j G_{ij} y_j)` for the
    incoming gradient ``G``, one native pass over ``G`` per side. (torch's graph of the same
    cost, the matrix formula and its clamp at 0, took about 3 ms of a 13.6 ms backward at
    n = m = 1000: the clamp's mask, a batched product with ``d`` columns and sums.) The
    gradient is the exact one of :math:`|x_i - y_j|^2`, also at coincident points, where the
    clamped formula's is not."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        out = x.new_empty(x.shape[0], x.shape[1], y.shape[1])
        return _native_sqeuclidean(x, y, out)[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        gx = (_native.sqeuclidean_pull(grad, x, y, rows=True) if ctx.needs_input_grad[0]
              else None)
        gy = (_native.sqeuclidean_pull(grad, x, y, rows=False) if ctx.needs_input_grad[1]
              else None)
        return gx, gy


def _native_sqeuclidean(x, y, out):
    """The native squared Euclidean cost of points ``(B, n, d)``, ``(B, m, d)`` written into
    ``out`` ``(B, n, m)``, checked finite from the bounds the same pass computes (no second
    pass over the matrix); returns it and its ``(max, min)`` per problem."""
    out, (lo, hi) = _native.sqeuclidean_into(x, y, out)
    if not bool(torch.isfinite(hi).all()):  # a NaN point, or norms that overflow: the
        # matrix formula in torch shows the non-finite entries, and the usual error says so
        batch_cost(_costs.sqeuclidean(x, y), "cost 'sqeuclidean'")
        raise ValueError("cost 'sqeuclidean' must be finite: the points or their squared "
                         "norms are not.")
    return out, (hi, lo)


def _dense_cost(geom: Geometry, grad=None):
    """The cost matrix ``(B, n, m)`` of ``geom``; whether it was written into scratch memory
    (:mod:`._scratch`): for the squared Euclidean cost of a point cloud on the CPU whose points
    record no gradient; and its ``(max, min)`` per problem where they came with it (else
    ``None``). The solve then gives the scratch memory back when it returns, unless autograd
    holds the matrix, and its result evaluates the cost again if it is asked for the plan.
    Where the points record a gradient and the solve differentiates once (``grad`` other than
    ``"unroll"``, whose graph may be differentiated twice), a small dimension on the CPU takes
    :class:`_NativeSqEuclidean`."""
    if not (isinstance(geom, PointCloud) and geom.cost_fn is _costs.sqeuclidean
            and geom.device.type == "cpu"):
        return geom.cost_matrix(), False, None
    name = f"cost {geom.cost_name!r}"
    native = (geom.x.shape[-1] <= _NATIVE_COST_MAX_DIM
              and _native.usable(geom.x.detach(), geom.y.detach()))
    if torch.is_grad_enabled() and (geom.x.requires_grad or geom.y.requires_grad):
        if native and grad != "unroll":
            return _NativeSqEuclidean.apply(geom.x, geom.y), False, None
        return geom.cost_matrix(), False, None
    out = _scratch.take(geom.shape, geom.x)
    if native:
        out, bounds = _native_sqeuclidean(geom.x, geom.y, out)
        return out, True, bounds
    return batch_cost(_costs.sqeuclidean_into(geom.x, geom.y, out), name)[0], True, None


def _keep_or_give_back(c: torch.Tensor, scratch: bool, geom: Geometry, *outputs):
    """What the result keeps of the cost ``c``: ``c`` itself, or, when ``c`` is scratch memory
    that no autograd graph holds (no output records a gradient), a function that evaluates it
    again, and ``c``'s memory goes back to :mod:`._scratch`."""
    if not scratch or any(t.requires_grad for t in outputs):
        return c
    _scratch.give(c)
    return geom.cost_matrix


def _evaluated(cost):
    return cost() if callable(cost) else cost


def _balance_constant(a, b, f, g):
    """Balanced potentials are defined up to ``(f + t, g - t)``: fix ``t`` so that
    ``<a, f> = <b, g>``."""
    shift = ((a * f).sum(-1) - (b * g).sum(-1)) / (a.sum(-1) + b.sum(-1))  # (B,)
    return f - shift.unsqueeze(-1), g + shift.unsqueeze(-1)


def _online_only(what: str):
    def fail():
        raise ValueError(
            f"the online backend never forms an n x m matrix, so its result has no {what}; "
            "use backend='compiled' or 'tensorized' when the dense matrix fits in memory."
        )
    return fail


def _starting_point(init, geom, a, b, like, *, eps, balanced, symmetric, grad, fixed_depth,
                    keep_grad=False):
    """The solve's start: ``(init, guess)``, a checked warm start ``init`` (:func:`_check_init`)
    or ``None``, and the Gaussian initializer's potentials (:mod:`._initializers`) where the
    solve starts from them: ``init=None`` on a point cloud with the squared Euclidean cost,
    balanced, not symmetric (its potentials would be constant), and neither unrolled nor of
    fixed depth (a layer of textbook iterations from zero); else ``None``. ``init="zeros"``
    opts out."""
    if isinstance(init, str):
        check_choice(init, "init", ("zeros",))
        return None, None
    bsz, n, m = geom.shape
    if init is not None:
        return _check_init(init, bsz, n, m, geom.batched, like, keep_grad=keep_grad), None
    if not _guesses(geom, balanced=balanced, symmetric=symmetric, grad=grad,
                    fixed_depth=fixed_depth):
        return None, None
    return None, gaussian_potentials(geom.x, geom.y, a, b, eps=eps, rows=False)


def _guesses(geom, *, balanced, symmetric, grad, fixed_depth) -> bool:
    """Whether a solve without ``init`` starts from the Gaussian initializer's potentials."""
    return (balanced and not symmetric and grad != "unroll" and not fixed_depth
            and isinstance(geom, PointCloud) and geom.cost_fn is _costs.sqeuclidean)


def _sinkhorn_online(geom: PointCloud, a, b, *, eps, tol, max_iter, min_iter, scaling, grad,
                     check_every, init, symmetric, momentum, floor) -> OTResult:
    """Balanced Sinkhorn on point clouds with the cost evaluated block by block."""
    x, y = geom.x, geom.y
    bsz, n, m = geom.shape
    a = batch_weights(a, n, bsz, geom.batched, x, "a", "the points x (n)")
    b = batch_weights(b, m, bsz, geom.batched, x, "b", "the points y (m)")
    check_equal_mass(a, b)
    check_finite(x, "x")
    check_finite(y, "y")
    if symmetric and not (n == m and torch.equal(a, b) and torch.equal(x, y)):
        raise ValueError("symmetric=True needs y = x and a == b with backend='online'.")
    init, guess = _starting_point(init, geom, a, b, x, eps=eps, balanced=True,
                                  symmetric=symmetric, grad=grad,
                                  fixed_depth=min_iter >= max_iter)
    sq = geom.cost_name == "sqeuclidean"
    with torch.no_grad():
        ops = OnlineSoftmin(x.detach(), y.detach(), geom.cost_fn, eps, sqeuclidean=sq)
        f, g, n_iter, error, converged, iters, omega, annealed = _iterate(
            ops, a.detach(), b.detach(), eps, tol, max_iter, min_iter, scaling, check_every,
            init, symmetric, momentum=momentum, floor=floor, guess=guess,
        )
        _check_no_overflow(error, eps, n_iter, x.dtype, lambda: _largest_sqeuclidean(x, y),
                           bound=True)
        f, g = _balance_constant(a, b, f, g)
        resolution = _resolution(f / eps, g / eps, a.detach(), b.detach(), balanced=True)
    _warn_not_converged(converged, error, resolution, tol, n_iter, eps, bsz,
                           fixed_depth=min_iter >= max_iter, stacklevel=3)
    value = OnlineEnvelope.apply(x, y, a, b, f, g, eps, geom.cost_fn, sq, ops.block)
    return OTResult.from_batched(
        geom.batched, f=f, g=g, value=value, converged=converged, error=error, a=a, b=b,
        plan_fn=_online_only("plan"), cost=_online_only("cost matrix (nor linear_value, "
                                                        "rounded_plan or gap)"),
        n_iter=n_iter, eps=eps, solver="sinkhorn", n_iter_per_problem=iters, backend="online",
        omega=omega, annealed=annealed, resolution=resolution,
    )


def _newton_obstacle(*, balanced, symmetric, grad, backend, side) -> str | None:
    """What keeps ``newton=True`` from applying, as the missing condition, or ``None``: it
    needs a balanced, non-symmetric problem on a dense backend, without ``grad="unroll"``
    (the steps are not recorded), and a smaller side of at most :data:`._newton.MAX_SIDE`."""
    return ("balanced" if not balanced else "not symmetric" if symmetric
            else "a dense backend (not 'online')" if backend == "online"
            else "grad other than 'unroll'" if grad == "unroll"
            else f"min(n, m) <= {_newton.MAX_SIDE}" if side > _newton.MAX_SIDE else None)


def _check_newton(newton, **problem):
    """``newton`` is a bool, and where it is ``True`` nothing keeps it from applying
    (:func:`_newton_obstacle`, whose keywords ``problem`` are)."""
    if not isinstance(newton, bool):
        raise TypeError(f"newton must be a bool, got {type(newton).__name__}.")
    why = _newton_obstacle(**problem) if newton else None
    if why is not None:
        raise ValueError(f"newton=True needs {why}: its steps solve a dense min(n, m) system "
                         f"of a balanced problem, got balanced={problem['balanced']}, "
                         f"symmetric={problem['symmetric']}, backend={problem['backend']!r}, "
                         f"grad={problem['grad']!r}, min(n, m)={problem['side']}.")


def _finish_with_newton(c, a, b, f, g, eps, tol, error, converged, floor):
    """:func:`._newton.newton_polish` on the problems not converged; returns ``f, g, error,
    converged`` updated and the Newton steps of each problem ``(B,)``. With ``floor`` (the
    default ``tol``), a problem stops at the :func:`_resolution` of its potentials where that
    is coarser, as the iterations do."""
    steps = torch.zeros(error.shape, dtype=torch.long, device=error.device)
    todo = (~converged).nonzero().squeeze(-1)
    if todo.numel() == 0:
        return f, g, error, converged, steps
    with torch.no_grad():
        c, a, b, f_p, g_p = (t.detach()[todo] for t in (c, a, b, f, g))
        target = torch.full(todo.shape, tol, dtype=f.dtype, device=f.device)
        if floor and f.dtype != torch.float64:
            target = _resolution(f_p / eps, g_p / eps, a, b, True).clamp_min(tol)
        fp, gp, err, done = _newton.newton_polish(c, a, b, f_p, g_p, eps, tol=target)
    f, g = f.index_copy(0, todo, fp), g.index_copy(0, todo, gp)
    error = error.index_copy(0, todo, err.to(error.dtype))
    met = torch.zeros_like(converged).index_copy(0, todo, err <= target)
    return f, g, error, converged | met, steps.index_copy(0, todo, done)


def _largest_sqeuclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """An upper bound of ``max |x_i - y_j|^2`` over a batch, without an ``n x m`` matrix."""
    x, y = x.detach(), y.detach()
    return (x.norm(dim=-1).amax() + y.norm(dim=-1).amax()) ** 2


def _scaled_cost(largest: float, eps: float, dtype: torch.dtype, bound: bool = False):
    """Whether ``max |C| / eps`` (``largest`` is ``max |C|``, or an upper bound of it with
    ``bound``) reaches the dtype's range, and the sentence of both overflow errors that says
    so and what to do."""
    ratio, limit = largest / eps, torch.finfo(dtype).max
    beyond = ratio >= limit
    return beyond, (
        f"the largest |cost| / eps is {'at most ' if bound else ''}{ratio:.3g}"
        + (f", beyond the dtype's range ({limit:.3g})" if beyond else "")
        + ". Expected an eps at which the cost / eps stays well inside the dtype's range: "
        "increase eps or pass float64 inputs."
    )


def _check_scaled_cost(largest: torch.Tensor, eps: float, dtype: torch.dtype):
    """A ``ValueError`` before any iteration where ``max |C| / eps`` (``largest`` is
    ``max |C|``) exceeds the dtype's range: every update divides the cost by eps, so the
    iterations could only overflow (:func:`_check_no_overflow` catches the other cases
    after the fact)."""
    beyond, says = _scaled_cost(float(largest), eps, dtype)
    if beyond:
        raise ValueError(f"eps={eps:g} is too small for {str(dtype).removeprefix('torch.')} "
                         f"at this cost: {says}")


def _check_no_overflow(error, eps: float, n_iter: int, dtype: torch.dtype, largest_cost,
                       bound: bool = False):
    """A ``ValueError`` where some problem's marginal error is NaN: its potentials overflowed
    (the loop stops such a problem at its next check rather than at ``max_iter``), which a
    result should not hide behind a NaN value. ``largest_cost()`` gives ``max |C|`` for the
    message (only called then), or an upper bound of it (``bound``)."""
    bad = torch.isnan(error)
    if not bool(bad.any()):
        return
    _, says = _scaled_cost(float(largest_cost()), eps, dtype, bound)
    raise ValueError(
        f"sinkhorn's iterations overflowed for {int(bad.sum())} of {error.numel()} problem(s) "
        f"(marginal error NaN after {n_iter} iterations, eps={eps:g}, "
        f"{str(dtype).removeprefix('torch.')}): {says}"
    )


def _warn_not_converged(converged, error, resolution, tol, n_iter, eps, bsz, *,
                           fixed_depth, stacklevel, newton_hint=False):
    """A :class:`ConvergenceWarning` for problems that did not converge (not for a fixed-depth
    solve); it names the float resolution of the solution where ``tol`` is below it."""
    if fixed_depth or bool(converged.all()):
        return
    finest = float(resolution.max())
    dtype = str(resolution.dtype).removeprefix("torch.")
    bad = int((~converged).sum())
    warnings.warn(
        f"sinkhorn did not converge for {bad} of {bsz} problem(s): marginal error "
        f"{float(error.max()):.3g} > tol={tol:g} after {n_iter} iterations (eps={eps:g}). "
        "Increase max_iter, use scaling=0.7, or increase eps."
        + (" At a small eps, where the error falls slowly, newton=True finishes the solve "
           "with Newton steps." if newton_hint else "")
        + (f" The {dtype} resolution of the marginal error at this solution is about "
           f"{finest:.2g}, above tol: an error below it cannot be certified in {dtype}; pass "
           "float64 inputs, or leave tol at its default (which stops at the resolution)."
           if tol < finest else ""),
        ConvergenceWarning,
        stacklevel=stacklevel + 1,
    )


def sinkhorn(
    cost: torch.Tensor | Geometry,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    eps: float,
    tol: float | None = None,
    max_iter: int = 1000,
    min_iter: int = 0,
    scaling: float | str | None = "auto",
    grad: str | Implicit | None = None,
    check_every: int = 10,
    init: tuple[torch.Tensor, torch.Tensor] | str | None = None,
    symmetric: bool = False,
    rho: float | tuple[float | None, float | None] | None = None,
    backend: str = "auto",
    momentum: float | str = "auto",
    newton: bool = False,
) -> OTResult:
    r"""Entropic optimal transport by log-domain Sinkhorn iterations.

    Solves :math:`\min_{P 1 = a,\, P^T 1 = b,\, P \geq 0} \langle P, C\rangle + \varepsilon\,
    \mathrm{KL}(P | a \otimes b)` and returns its dual potentials, with the plan
    :math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}`. With ``rho``, the marginal
    constraints are relaxed (unbalanced OT):
    :math:`\min_{P \geq 0} \langle P, C\rangle + \varepsilon\, \mathrm{KL}(P | a \otimes b)
    + \rho_a \mathrm{KL}(P 1 | a) + \rho_b \mathrm{KL}(P^T 1 | b)`, solved by the same
    iterations damped by :math:`\lambda = \rho / (\rho + \varepsilon)`.

    Batches: each problem stops at its own tolerance and is then frozen, so a batch gives what
    its problems give one by one (``n_iter_per_problem`` included; exactly on the log-domain
    backends, to rounding on ``"kernel"``, whose re-anchorings are decided over the batch),
    and once enough problems have converged the iterations run on the active ones only (no
    per-problem Python loop), so a batch costs about the sum of its problems' iterations.
    Problems of different sizes are padded with zero weights by :func:`~couplings.pad_problems`
    and split back by :meth:`~couplings.OTResult.unpad`.

    Args:
        cost: cost matrix ``(B, n, m)`` or ``(n, m)``, or a :class:`~couplings.Geometry` such as
            ``PointCloud(x, y)``.
        a: first marginal ``(B, n)`` or ``(n,)``, non-negative; ``None`` for uniform ``1/n``.
        b: second marginal ``(B, m)`` or ``(m,)``, with the same total mass as ``a`` (any
            positive mass when unbalanced).
        eps: entropic regularization :math:`\varepsilon > 0`, in the units of the cost.
        tol: stop when the L1 marginal error ``|P 1 - a|_1 + |P^T 1 - b|_1`` is ``<= tol``.
            ``None`` (default): ``1e-6``, or the result's ``resolution`` where that is coarser
            (below float64 at small eps: about ``1e-5`` in float32 at ``eps = 0.01`` times the
            mean cost), the error that rounding the potentials alone leaves; ``converged``
            then means that it got there. An explicit ``tol`` below the resolution is taken
            as given; an ``error`` below ``resolution`` is then the rounded iteration's own,
            and ``summary()`` says so.
            Unbalanced, the marginals are free and the error is the L1 residual of the
            optimality conditions ``|P 1 - a e^{-f/rho_a}|_1 + |P^T 1 - b e^{-g/rho_b}|_1``
            (the fixed-point residual of the iterations, in units of mass; the column term is
            zero after each column update).
        max_iter: iteration limit, annealing iterations included (the annealing schedule is
            cut from its coarse end to fit). A problem that has not
            converged by then is reported (``converged=False``) and a
            :class:`~couplings.ConvergenceWarning` is issued once.
        min_iter: no convergence check before this many iterations. ``min_iter = max_iter``
            gives a fixed-depth solve (a Sinkhorn layer of ``max_iter`` rounds, as in
            Sinkhorn networks): ``error`` and ``converged`` are still reported, but no warning
            is issued.
        scaling: epsilon scaling. ``"auto"`` (default) anneals, by ``0.7``, the problems whose
            cost range is at least ``2000 eps`` (``eps <= 0.0005`` times the range, e.g.
            ``0.001 x mean cost`` on Gaussians), when solving to ``tol``; for a loose
            ``tol >= 0.03``, by ``0.5`` from a range of ``200 eps`` (fewer, larger steps reach a
            coarse accuracy sooner: 7-16% less time at ``tol = 0.1``). The others, and
            fixed-depth solves (``min_iter = max_iter``), run at ``eps`` directly, as ``None``
            does. A factor in ``(0, 1)`` anneals every problem by that factor: one iteration at
            each ``eps / scaling^j``, from the first of these at or above the problem's own cost
            range (over the support of its weights) down to ``eps / scaling``, then on at
            ``eps``. In a batch each problem keeps its own schedule (one that starts lower waits
            for the others), so the batch still equals its problems one by one. Measured on 2-D
            and 3-D Gaussians and shapes, n = 1000, float32, at ``0.001 x mean cost``:
            ``"auto"`` takes 13-38% fewer iterations to an L1 error of 1e-4 than ``None``
            (721 -> 448, 701 -> 468, 631 -> 455, 420 -> 365) and 5-7x fewer to 0.3; at
            ``0.01`` and ``0.1`` annealing changes little or costs iterations, and ``"auto"``
            does not anneal there. The online backend bounds the range of a squared Euclidean
            cost by its bounding box, so its schedule may start a stage higher.
        grad: how gradients flow to the cost, the weights and (through the cost) the points:
            ``None`` (the default) is ``"implicit"``, or ``"envelope"`` on the online backend;
            ``"implicit"`` (the implicit function theorem at the fixed point; memory independent
            of the number of iterations; or an :class:`Implicit` with options), ``"unroll"``
            (autograd through every iteration) or ``"envelope"`` (Danskin's theorem: only
            ``value`` carries gradients, ``P`` for the cost and the potentials for the weights;
            ``plan``, ``f`` and ``g`` are detached, and ``linear_value`` differentiates as
            ``<P, C>`` with ``P`` held fixed).
        check_every: most iterations between two convergence checks of a problem (a check
            syncs with the device). The first check is at ``min_iter`` (after the first
            iteration when it is 0, so a warm start from the solution stops there); the next
            comes sooner than ``check_every`` where the rate measured between the last two
            checks predicts that the error reaches ``tol`` sooner.
        init: warm start ``(f, g)``, potentials of a nearby problem, shaped like the outputs.
            The first iteration updates the rows from ``g`` (``f`` only seeds a symmetric
            problem), as the scalings of IPOT are warm-started; with ``scaling``, ``init``
            should be the solution at the first annealing value, so warm starts are best used
            without scaling. With ``grad="unroll"`` gradients flow into ``init`` (so a chain of
            warm-started solves is differentiated end to end); otherwise it is detached.
            ``None`` (the default) starts from zero, except on a :class:`PointCloud` with the
            squared Euclidean cost (balanced, not symmetric, neither unrolled nor of fixed
            depth), where each problem that does not anneal starts from the entropic OT
            potentials at ``eps`` between Gaussian fits of its two clouds
            (:mod:`._initializers`; at eps -> 0 OTT-JAX's Gaussian initializer): 2-D
            Gaussians at n = 1000, eps = 0.1 x the mean cost, reach tol 1e-4 in 7 iterations
            instead of 10 from the unregularized potentials and 14 from zero. ``"zeros"``
            always starts from zero.
        symmetric: the problem is symmetric (``C = C^T``, ``a = b``, as in the self-transport
            terms of a Sinkhorn divergence): use the averaged update ``f <- (f + T(f)) / 2``,
            which converges far faster there, and return ``f = g``. Checked on input.
        rho: marginal relaxation for unbalanced OT, :math:`\rho > 0` in the units of the cost:
            a number (both sides) or a pair ``(rho_a, rho_b)``; ``None`` or ``math.inf`` for a
            side keeps its constraint (``None``, the default, is balanced OT). All three
            ``grad`` modes work; unbalanced ``"implicit"`` solves its adjoint system densely
            (``k x k`` with ``k = min(n, m)``) whatever the :class:`Implicit` options.
        backend: how the ``n x m`` updates are evaluated; the result's ``backend`` says which
            ran. ``"tensorized"``: eager torch on the dense cost (the only one that
            ``grad="unroll"`` records). ``"compiled"``: each update one kernel generated by
            ``torch.compile`` (about 15x faster per entry than eager on CPU; the first call in
            a process compiles for a few seconds; falls back to eager with a warning where
            compilation fails). ``"kernel"``: the stabilized kernel domain, one batched
            matrix-vector product per update (about 2x faster than ``"compiled"`` at n = 1000
            on CPU), with the potentials absorbed into the kernel; an update whose potentials
            moved more than 15 eps (30 in float64) from the last absorption, or whose sums
            left ``exp(+-15)``, re-anchors the kernel and retries, and is redone by the
            compiled log-domain kernel if that fails too, so it is float32-safe at any eps
            (at worst it runs at log-domain speed); it keeps a second ``B x n x m`` matrix.
            ``"online"``: a :class:`~couplings.PointCloud` is never turned into a matrix; the
            cost is evaluated block by block inside the kernel (memory ``O((n + m) d)``),
            balanced OT with ``grad="envelope"`` (``value`` differentiates to the points, block by
            block); the result has no ``plan``, ``linear_value`` or certificate. ``"auto"``
            (default): online for a point cloud whose dense cost would exceed 2 GiB (when
            balanced, envelope), else tensorized with ``grad="unroll"``, else kernel, whose
            kernels (the absorption, the c-transforms and the log-domain fallback) are compiled
            from ``2**18`` cost entries and eager below (no compilation; still 0.4-0.95x the
            time of tensorized from n = m = 50 to 500, ``benchmarks/small_backends.py``).
        momentum: over-relaxation of the updates, ``f <- f + omega (T(g) - f)`` and likewise
            for ``g`` (Thibault et al.; Lehmann et al.): ``1.0`` is plain Sinkhorn; a number in
            ``(0, 2)`` a fixed ``omega``; ``"adaptive"`` runs its first 5 iterations at
            ``eps`` relaxed by 1.4, infers each problem's plain contraction rate
            :math:`\eta` from its marginal errors there and relaxes by
            :math:`\omega = 2 / (1 + \sqrt{1 - \eta})` (at most 1.82), which near the solution
            turns the rate :math:`\eta` into :math:`\omega - 1`; it then refines
            :math:`\eta` from the rate observed while relaxed, over windows of doubling length
            (at ``eps = 0.01 * mean cost``, about 5x fewer iterations than plain); a problem whose
            error grows over 10 iterations goes back to plain iterations, and its next
            refinement starts from its plain rate under a lower cap. ``"auto"`` (default) is
            ``"adaptive"`` for balanced, non-symmetric problems solved to ``tol``, and plain
            Sinkhorn for fixed-depth solves (``min_iter = max_iter``, so that a Sinkhorn layer
            keeps its textbook definition) and for symmetric and unbalanced ones (where
            relaxation is not supported).
            Relaxed, the column marginal is no longer exact after the column update, and
            ``error`` adds its violation, so ``tol`` still bounds both marginals. The relaxed
            updates are the same on every backend, and each moves a potential at most
            ``3 eps`` beyond the plain update (far from the solution at a small ``eps``,
            larger extrapolations make the error jump; near it the cap never acts).
        newton: finish each problem that the iterations left above ``tol`` with Newton steps
            on the semi-dual (:mod:`._newton`: a dense ``k x k`` solve per step, ``k`` the
            smaller of ``n`` and ``m``, at most 4096), for a small ``eps`` where Sinkhorn's
            error falls like ``1 / k`` (2-D Gaussians, n = 200, ``eps = 0.003 x`` the mean
            cost, float64: 2.3e-7 after 64000 plain iterations, 1e-8 in 5 Newton steps from
            the 1000th). Balanced, non-symmetric problems on a dense backend, without
            ``grad="unroll"``; the result's ``newton_steps`` counts them. Reaching ``tol``
            below the float resolution needs float64.

    Returns:
        :class:`~couplings.OTResult` with potentials ``f`` ``(B, n)``, ``g`` ``(B, m)``
        (normalized so that ``<a, f> = <b, g>``; unbalanced potentials are unique and left as
        they are), ``value`` ``(B,)`` (the entropic cost), lazily computed ``plan`` and
        ``linear_value`` ``<P, C>``, ``converged``, ``n_iter`` (the largest over the batch),
        ``n_iter_per_problem`` ``(B,)`` and ``error``, and a lazily computed convergence
        certificate: ``primal_value`` (the objective of the plan rounded onto the constraints),
        ``dual_value`` (the dual objective at ``f, g``) and ``gap`` (their difference, which
        bounds the distance of both to the exact entropic optimum; see
        :class:`~couplings.OTResult`). The batch axis is absent for an unbatched call.
        Balanced, ``value = <a, f> + <b, g>`` (equal to ``dual_value`` for unit masses);
        unbalanced, it is the dual objective at the solution,
        :math:`-\rho_a \langle a, e^{-f/\rho_a} - 1\rangle - \rho_b \langle b, e^{-g/\rho_b}
        - 1\rangle - \varepsilon (m(P) - m(a) m(b))`, which equals the primal objective above
        (both tend to the balanced value as ``rho -> inf`` when ``m(a) = m(b) = 1``).


    Raises:
        TypeError, ValueError: for inputs of the wrong type, shape, dtype or device, a
            non-finite cost, negative or non-finite weights, unequal masses, or ``eps <= 0``;
            ``newton=True`` where it does not apply.
        ValueError: where the iterations overflowed (a NaN marginal error: ``eps`` too small
            for the dtype at this cost; a point cloud on the CPU is refused before any
            iteration when ``max |C| / eps`` exceeds the dtype's range).

    Example:
        >>> import torch
        >>> from couplings import sinkhorn, PointCloud
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(50, 2, generator=g), torch.randn(60, 2, generator=g) + 1
        >>> res = sinkhorn(PointCloud(x, y), eps=0.1)
        >>> bool(res.converged), tuple(res.plan.shape)
        (True, (50, 60))
        >>> torch.allclose(res.plan.sum(1), torch.full((50,), 1 / 50), atol=1e-6)
        True
        >>> # unbalanced: masses 2 and 1; the plan moves a compromise mass
        >>> ub = sinkhorn(PointCloud(x, y), torch.full((50,), 2 / 50), eps=0.1, rho=1.0)
        >>> bool(ub.converged), 0.5 < float(ub.plan.sum()) < 2
        (True, True)

    Names elsewhere: POT ``reg`` = ``eps``, ``stopThr`` ~ ``tol`` (POT's is an L2 norm on one
    marginal), ``numItermax`` = ``max_iter``; OTT ``epsilon`` = ``eps``, ``threshold`` = ``tol``;
    GeomLoss ``blur**p`` = ``eps`` (with a halved cost for ``p = 2``), ``scaling`` = ``scaling``.
    Unbalanced: POT ``ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, reg_m)`` (with its default
    ``reg_type="kl"``, entropy relative to ``a x b``) has ``reg_m`` = ``rho`` (a pair is
    ``(rho_a, rho_b)``) and the same plan; OTT's ``tau_a = rho_a / (rho_a + eps)``, i.e.
    ``rho_a = eps * tau_a / (1 - tau_a)``; GeomLoss ``reach**p`` = ``rho`` in its own cost units:
    for ``p = 2`` its cost is ``|x - y|^2 / 2``, so with ``cost = |x - y|^2`` here
    ``eps = 2 * blur**2`` and ``rho = 2 * reach**2`` give twice GeomLoss's objective.

    References:
        Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
        Peyre and Cuturi, "Computational Optimal Transport", 2019, sections 4.2-4.4.
        Chizat, Peyre, Schmitzer and Vialard, "Scaling Algorithms for Unbalanced Transport
        Problems", Math. Comp. 2018; Sejourne et al., "Sinkhorn Divergences for Unbalanced
        Optimal Transport", 2019.
        Thibault, Chizat, Dossal and Papadakis, "Overrelaxed Sinkhorn-Knopp Algorithm for
        Regularized Optimal Transport", Algorithms 2021; Lehmann, von Renesse, Sambale and
        Uschmajew, "A note on overrelaxation in the Sinkhorn algorithm", Optim. Lett. 2022.
    """
    geom = as_geometry(cost)
    floor = tol is None  # the default: DEFAULT_TOL, or the float resolution where coarser
    eps, tol, max_iter, min_iter, check_every, scaling = _check_loop_options(
        eps, tol, max_iter, min_iter, check_every, scaling
    )
    if isinstance(grad, Implicit):
        implicit_opts, grad = grad, "implicit"
    else:
        if grad is not None:
            check_choice(grad, "grad", GRAD_MODES)
        implicit_opts = Implicit()

    rho = _check_rho(rho)
    balanced = math.isinf(rho[0]) and math.isinf(rho[1])
    check_choice(backend, "backend", BACKENDS)
    bsz, n, m = geom.shape
    requested, backend = backend, _choose_backend(backend, geom, grad, balanced)
    momentum = _check_momentum(momentum, balanced, symmetric, min_iter >= max_iter)
    _check_newton(newton, balanced=balanced, symmetric=symmetric, grad=grad, backend=backend,
                  side=min(n, m))
    if grad is None:
        grad = "envelope" if backend == "online" else "implicit"
    if backend == "online":
        return _sinkhorn_online(
            geom, a, b, eps=eps, tol=tol, max_iter=max_iter, min_iter=min_iter, scaling=scaling,
            grad=grad, check_every=check_every, init=init, symmetric=symmetric,
            momentum=momentum, floor=floor,
        )

    c, scratch, bounds = _dense_cost(geom, grad)  # (B, n, m)
    if bounds is not None:  # (max C, min C) came with the cost: refuse an impossible eps now
        _check_scaled_cost(torch.maximum(bounds[0].abs(), bounds[1].abs()).max(), eps, c.dtype)
    a = batch_weights(a, n, bsz, geom.batched, c, "a", "the rows (n) of the cost")
    b = batch_weights(b, m, bsz, geom.batched, c, "b", "the columns (m) of the cost")
    if balanced:
        check_equal_mass(a, b)
    if symmetric and not (n == m and torch.equal(a, b) and torch.allclose(c, c.transpose(-2, -1))):
        raise ValueError(
            "symmetric=True needs a square symmetric cost and a == b; got "
            f"shape {(n, m)}, a == b: {n == m and torch.equal(a, b)}."
        )
    if symmetric and rho[0] != rho[1]:
        raise ValueError(f"symmetric=True needs rho_a == rho_b, got rho = {rho}.")
    init, guess = _starting_point(init, geom, a, b, c, eps=eps, balanced=balanced,
                                  symmetric=symmetric, grad=grad, fixed_depth=min_iter >= max_iter,
                                  keep_grad=grad == "unroll")
    if grad == "unroll":
        ops = DenseSoftmin(c, eps, unroll=True, compiled=False)
        f, g, n_iter, error, converged, iters, omega, annealed = _iterate(
            ops, a, b, eps, tol, max_iter, min_iter, scaling, check_every, init, symmetric, rho,
            momentum, floor,
        )
        backend, kernel_counts = ops.backend, None
    elif backend == "kernel":
        # "auto" compiles its kernels for large problems only
        compiled = requested == "kernel" or bsz * n * m >= AUTO_COMPILED_ENTRIES
        with torch.no_grad():
            (f, g, n_iter, error, converged, iters, omega, annealed), backend, kernel_counts = (
                _iterate_kernel(c.detach(), a.detach(), b.detach(), eps, compiled=compiled,
                                bounds=bounds, init=init, guess=guess, tol=tol,
                                max_iter=max_iter,
                                min_iter=min_iter, scaling=scaling, check_every=check_every,
                                symmetric=symmetric, rho=rho, momentum=momentum, floor=floor))
    else:
        with torch.no_grad():
            ops = DenseSoftmin(c.detach(), eps, unroll=False, compiled=backend == "compiled",
                               bounds=bounds)
            f, g, n_iter, error, converged, iters, omega, annealed = _iterate(
                ops, a.detach(), b.detach(), eps, tol, max_iter, min_iter, scaling,
                check_every, init, symmetric, rho, momentum, floor, guess=guess,
            )
        backend, kernel_counts = ops.backend, None  # "tensorized" if compilation failed
        ops.release()
    _check_no_overflow(error, eps, n_iter, c.dtype, lambda: c.detach().abs().amax())
    newton_steps = None
    if newton:
        f, g, error, converged, newton_steps = _finish_with_newton(
            c, a, b, f, g, eps, tol, error, converged, floor)
    with torch.no_grad():
        resolution = _resolution(*(x.detach() for x in (f / eps, g / eps, a, b)), balanced,
                                 positive=_all_positive(a, b))
    _warn_not_converged(converged, error, resolution, tol, n_iter, eps, bsz,
                           fixed_depth=min_iter >= max_iter, stacklevel=2,
                           newton_hint=not newton and _newton_obstacle(
                               balanced=balanced, symmetric=symmetric, grad=grad,
                               backend=backend, side=min(n, m)) is None)

    if not balanced:
        if grad == "implicit":
            lam_a, lam_b = _damping(rho[0], eps), _damping(rho[1], eps)
            f, g = _ImplicitUnbalanced.apply(c, a, b, f, g, eps, lam_a, lam_b)
        elif grad == "envelope":
            f, g = f.detach(), g.detach()
        value = _unbalanced_value(c, a, b, f, g, eps, rho)
        c = _keep_or_give_back(c, scratch, geom, f, g, value)
        plan_inputs = (c, a.detach(), b.detach(), f, g) if grad == "envelope" else (
            c, a, b, f, g
        )
        return OTResult.from_batched(
            geom.batched, f=f, g=g, value=value, converged=converged, error=error, a=a, b=b,
            plan_fn=lambda: _plan(*plan_inputs, eps, detach=grad == "envelope"), cost=c,
            n_iter=n_iter, eps=eps,
            solver="sinkhorn", rho=rho, n_iter_per_problem=iters, backend=backend,
            omega=omega, kernel_counts=kernel_counts, annealed=annealed, resolution=resolution,
            newton_steps=newton_steps,
        )

    if grad == "implicit" and torch.is_grad_enabled() and (
            c.requires_grad or a.requires_grad or b.requires_grad):
        f, g = _ImplicitSinkhorn.apply(c, a, b, f, g, eps, implicit_opts)
    f, g = _balance_constant(a, b, f, g)
    if grad == "envelope":
        f, g = f.detach(), g.detach()
        value = _EnvelopeValue.apply(c, a, b, f, g, eps)
        c = _keep_or_give_back(c, scratch, geom, f, g, value)
        plan_inputs = (c, a.detach(), b.detach(), f, g)
    else:
        value = (a * f).sum(-1) + (b * g).sum(-1)
        c = _keep_or_give_back(c, scratch, geom, f, g, value)
        plan_inputs = (c, a, b, f, g)

    return OTResult.from_batched(
        geom.batched, f=f, g=g, value=value, converged=converged, error=error, a=a, b=b,
        plan_fn=lambda: _plan(*plan_inputs, eps, detach=grad == "envelope"), cost=c,
        n_iter=n_iter, eps=eps,
        solver="sinkhorn", n_iter_per_problem=iters, backend=backend, omega=omega,
        kernel_counts=kernel_counts, annealed=annealed, resolution=resolution,
        newton_steps=newton_steps,
    )
