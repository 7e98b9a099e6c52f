r"""Sinkhorn with the rows of the problem sharded over the processes of ``torch.distributed``.

Each of the ``W`` processes (ranks) of a process group holds a block of the rows: its cost rows
``C_r`` ``(B, n_r, m)`` (or a :class:`~couplings.PointCloud` of its points ``x_r`` and all of
``y``), its block ``a_r`` ``(B, n_r)`` of the first marginal and the whole second marginal
``b`` ``(B, m)``. No process ever holds the ``n x m`` cost, so a problem too large for one
device is solved on several (one GPU per process), and the work per iteration is divided by
``W``.

The iterations are those of :func:`couplings.sinkhorn` (the same loop runs on every rank, with
the soft-min updates of :class:`ShardedSoftmin`):

.. math::

    f_i \leftarrow -\varepsilon \log \sum_j b_j e^{(g_j - C_{ij})/\varepsilon}
    \quad (i \text{ in this rank's rows: local, since every rank holds all of } g),

    g_j \leftarrow -\varepsilon\, \mathrm{LSE}_r\big(L^r_j\big), \qquad
    L^r_j = \log \sum_{i \in \text{rows of } r} a_i e^{(f_i - C_{ij})/\varepsilon}
    \quad (\text{each rank computes } L^r \text{ locally}),

where the log-sum-exp over ranks is done stably by two all-reduces of ``(B, m)`` tensors:
``M = max_r L^r`` (``MAX``), then ``S = sum_r exp(L^r - M)`` (``SUM``), and
``LSE_r(L^r) = M + log S``, identical on every rank. The other reductions over the row index
cross ranks too: the marginal error ``|P 1 - a|_1`` (checked every ``check_every`` iterations),
the translation step of unbalanced OT (a log-sum-exp over the rows), the cost range that starts
an ``eps`` schedule, and the value ``<a, f> + <b, g>``. Everything a rank decides (stop, freeze a
converged problem of the batch, drop it from the computation) depends only on all-reduced
numbers, so the ranks stay in step. Communication is ``O(B m)`` numbers per iteration (two
all-reduces of ``B x m``) plus ``O(B)`` per check; computation is ``O(B n_r m)`` per rank.

The potentials are those of the single-process solve on the whole problem, up to rounding (the
sums are taken in another order): ``f`` of the rows of this rank, ``g`` complete on every rank.

Launching. One process per device, all running the same script; with ``torchrun`` (which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``)::

    # solve.py -- run with: torchrun --nproc_per_node=4 solve.py
    import torch
    import torch.distributed as dist
    from couplings import PointCloud
    from couplings.distributed import shard_rows, sinkhorn

    dist.init_process_group("gloo")  # CPU processes
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)  # the same data on every rank (or load your block)
    x, y = torch.randn(10_000, 3, generator=g), torch.randn(8_000, 3, generator=g)
    rows = shard_rows(x.shape[0], rank, world)
    res = sinkhorn(PointCloud(x[rows], y), eps=0.05, scaling=0.9)
    # res.f: this rank's rows (n_r,); res.g (m,) and res.value: the same on every rank
    dist.destroy_process_group()

Several GPUs with NCCL (one process per GPU; the cost block, the weights and the points live on
that process's GPU, and so do the all-reduced tensors)::

    # torchrun --nproc_per_node=8 solve_gpu.py
    import os
    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", local_rank)
    rows = shard_rows(n, rank, world)
    cost_rows = build_cost(x[rows].to(device), y.to(device))  # (n_r, m) on this GPU
    res = sinkhorn(cost_rows, a[rows].to(device), b.to(device), eps=0.01, scaling=0.9)

Gradients: ``grad="envelope"`` only (the default here). ``value`` differentiates by Danskin's
theorem (the potentials held fixed) to this rank's inputs, and every gradient is this rank's
*share*: the cost rows receive their rows of the plan ``P_r`` (for balanced OT; for a point
cloud, pulled back to ``x_r`` and to ``y``), ``a_r`` receives ``f_r``, and the replicated ``b``
receives ``g / W``, so that gradients of shared parameters (``y``, ``b``, a network that
computes the cost) are complete once summed over ranks (``dist.all_reduce(p.grad)``; note that
:class:`~torch.nn.parallel.DistributedDataParallel` averages, i.e. divides by ``W``). No
autograd graph crosses ranks, so ``"implicit"`` and ``"unroll"`` are not offered.

Example:
    A group of one process, so that it runs as a doctest; with ``W`` processes each one makes
    the same call with its own rows.

    >>> import os, tempfile, torch
    >>> import torch.distributed as dist
    >>> from couplings import sinkhorn as sinkhorn_full
    >>> from couplings.distributed import shard_rows, sinkhorn
    >>> store = os.path.join(tempfile.mkdtemp(), "store")
    >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    >>> g = torch.Generator().manual_seed(0)
    >>> c = torch.rand(7, 5, generator=g, dtype=torch.float64)
    >>> rows = shard_rows(7, dist.get_rank(), dist.get_world_size())
    >>> res = sinkhorn(c[rows], eps=0.1, tol=1e-10)
    >>> ref = sinkhorn_full(c, eps=0.1, tol=1e-10)
    >>> bool(res.converged), res.n_iter == ref.n_iter, bool(torch.allclose(res.g, ref.g))
    (True, True, True)
    >>> dist.destroy_process_group()

References:
    Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
    Peyre and Cuturi, "Computational Optimal Transport", 2019, section 4.4 (log-domain updates).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.distributed as dist

from ._validation import (
    batch_weights,
    check_choice,
    check_equal_mass,
    check_nonnegative_int,
    check_positive_int,
)
from .geometry import as_geometry
from .result import OTResult
from .solvers import _softmin
from .solvers._initializers import gaussian_potentials
from .solvers._softmin import DenseSoftmin, Softmin
from .solvers.sinkhorn import (
    AUTO_COMPILED_ENTRIES,
    _check_init,
    _check_loop_options,
    _check_momentum,
    _check_no_overflow,
    _check_rho,
    _guesses,
    _iterate,
    _phi,
    _plan,
    _resolution,
    _warn_not_converged,
)

__all__ = ["ShardedSoftmin", "shard_rows", "sinkhorn"]

BACKENDS = ("auto", "tensorized", "compiled")


def shard_rows(n: int, rank: int, world_size: int) -> slice:
    """The rows ``rank`` holds when ``n`` rows are split into ``world_size`` contiguous blocks
    whose sizes differ by at most one (the first ``n % world_size`` blocks one larger).

    Args:
        n: number of rows, ``>= 0``.
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: number of processes, ``>= 1``.

    Returns:
        a ``slice`` of ``range(n)``; empty when ``rank >= n`` (:func:`sinkhorn` needs at least
        one row per rank, so use at most ``n`` processes).

    Example:
        >>> from couplings.distributed import shard_rows
        >>> [shard_rows(7, r, 2) for r in range(2)]
        [slice(0, 4, None), slice(4, 7, None)]
        >>> [len(range(7)[shard_rows(7, r, 3)]) for r in range(3)]
        [3, 2, 2]
    """
    for name, value in (("n", n), ("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {value!r}.")
    world_size = check_positive_int(world_size, "world_size")
    n = check_nonnegative_int(int(n), "n")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) = [0, {world_size}), got {rank}.")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


# --------------------------------------------------------------------------------------------
# the sharded soft-min updates


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    """All-reduce a fresh contiguous copy of ``t`` (collectives work in place)."""
    out = t.detach().clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=op, group=group)
    return out


def _all_logsumexp(x: torch.Tensor, group) -> torch.Tensor:
    """``log sum_r exp(x_r)`` over the ranks, elementwise, the same on every rank: the global
    max (one all-reduce), then the sum of the shifted exponentials (a second one)."""
    top = _all_reduce(x, dist.ReduceOp.MAX, group)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = _all_reduce(torch.exp(x - top), dist.ReduceOp.SUM, group)
    return torch.log(total) + top


class ShardedSoftmin(Softmin):
    """Sinkhorn's soft-min updates for a problem whose rows are split across the ranks of a
    process group; wraps the updates ``inner`` of this rank's rows (a
    :class:`~couplings.solvers._softmin.DenseSoftmin` on the cost block ``(B, n_r, m)``).

    ``row`` is local (it needs all of ``v``, which every rank holds). ``col`` reduces over all
    the rows: each rank's local log-sum-exp ``(B, m)`` is combined by :func:`_all_logsumexp`
    (two all-reduces), so every rank gets the same column update. The reductions over the row
    index (``row_total``, ``row_logsumexp``) and ``cost_range`` all-reduce; ``set_eps`` and
    ``select`` are local (the loop decides from all-reduced errors, so ranks agree).

    Args:
        inner: the updates of this rank's rows; it must have a ``cost`` ``(B, n_r, m)``.
        group: the process group (``None``: the default group).
    """

    def __init__(self, inner, group=None):
        self.inner, self.group = inner, group

    @property
    def backend(self) -> str:
        return self.inner.backend

    def set_eps(self, eps: float):
        self.inner.set_eps(eps)

    def translate(self, shift: torch.Tensor):
        self.inner.translate(shift)

    def select(self, keep: torch.Tensor):
        self.inner.select(keep)

    def cost_range(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per problem ``(B,)``, over all ranks' rows (``a`` is this rank's block of rows)."""
        cost = self.inner.cost.detach()
        hi, lo = _softmin.support_bounds(cost, a, b)
        bounds = _all_reduce(torch.stack([hi, -lo]).to(torch.float64), dist.ReduceOp.MAX,
                             self.group)
        return (bounds[0] + bounds[1]).to(cost.dtype)

    def row(self, v, b, log_b):
        """This rank's rows ``t_i = -log sum_j b_j exp(v_j - C_ij / e)`` ``(B, n_r)``."""
        return self.inner.row(v, b, log_b)

    def col(self, u, a, log_a):
        """``s_j = -log sum_i a_i exp(u_i - C_ij / e)`` over the rows of every rank ``(B, m)``,
        the same on every rank."""
        local = -self.inner.col(u, a, log_a)  # (B, m): log-sum-exp over this rank's rows
        # a block of zero weights contributes nothing (the kernels' exponent floor would make it
        # a small positive number relative to 0 rather than to the other ranks' maximum)
        empty = ~(log_a > -math.inf).any(-1, keepdim=True)  # (B, 1)
        local = torch.where(empty, -math.inf, local)
        return -_all_logsumexp(local, self.group)

    def row_total(self, z: torch.Tensor) -> torch.Tensor:
        return _all_reduce(z.sum(-1), dist.ReduceOp.SUM, self.group)

    def row_logsumexp(self, z: torch.Tensor) -> torch.Tensor:
        return _all_logsumexp(torch.logsumexp(z, -1, keepdim=True), self.group)


# --------------------------------------------------------------------------------------------
# the value, with envelope gradients shared across ranks


def _unbalanced_share(cost, a, b, f, g, eps, rho, world):
    """This rank's share of the unbalanced dual objective ``<a, phi_a(f)> + <b, phi_b(g)>
    - eps (m(P) - m(a) m(b))`` ``(B,)``: its rows' terms and ``1 / W`` of the column terms; the
    shares of the ranks sum to the objective."""
    mass = _plan(cost, a, b, f, g, eps).sum((-2, -1))
    value = (a * _phi(f, rho[0])).sum(-1) + (b * _phi(g, rho[1])).sum(-1) / world
    return value - eps * (mass - a.sum(-1) * b.sum(-1))


class _ShardedValue(torch.autograd.Function):
    """The value ``(B,)`` (all-reduced, the same on every rank), differentiated by the envelope
    theorem to this rank's inputs with this rank's share of the gradient (see the module)."""

    @staticmethod
    def forward(ctx, cost, a, b, f, g, eps, rho, world, group):
        ctx.save_for_backward(cost, a, b, f, g)
        ctx.eps, ctx.rho, ctx.world = eps, rho, world
        if math.isinf(rho[0]) and math.isinf(rho[1]):
            rows = (a * f).sum(-1)
            return _all_reduce(rows, dist.ReduceOp.SUM, group) + (b * g).sum(-1)
        share = _unbalanced_share(cost, a, b, f, g, eps, rho, world)
        return _all_reduce(share, dist.ReduceOp.SUM, group)

    @staticmethod
    def backward(ctx, grad_value):
        cost, a, b, f, g = ctx.saved_tensors
        eps, rho, world = ctx.eps, ctx.rho, ctx.world
        need = ctx.needs_input_grad[:3]
        gv = grad_value.unsqueeze(-1)  # (B, 1)
        if math.isinf(rho[0]) and math.isinf(rho[1]):
            grad_cost = gv.unsqueeze(-1) * _plan(cost, a, b, f, g, eps) if need[0] else None
            grad_a = gv * f if need[1] else None
            grad_b = gv * g / world if need[2] else None
            return grad_cost, grad_a, grad_b, None, None, None, None, None, None
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(n) for t, n in zip((cost, a, b), need,
                                                                     strict=True)]
            share = _unbalanced_share(*leaves, f, g, eps, rho, world)
            wanted = [t for t, n in zip(leaves, need, strict=True) if n]
            grads = iter(torch.autograd.grad(share, wanted, grad_value))
        grad_cost, grad_a, grad_b = (next(grads) if n else None for n in need)
        return grad_cost, grad_a, grad_b, None, None, None, None, None, None


def _sharded_only(what: str):
    def fail():
        raise ValueError(
            f"a sharded solve holds only this rank's rows of the cost, so its result has no "
            f"{what}; res.plan gives this rank's rows of the plan: reduce "
            "(res.plan * cost_rows).sum((-2, -1)) over the ranks with torch.distributed."
        )
    return fail


# --------------------------------------------------------------------------------------------
# input checks that keep the ranks together


def _comm_device(group, like) -> torch.device:
    """Where the small tensors of the checks are all-reduced: the GPU with NCCL, else the
    device of the inputs (CPU when unknown)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return like.device if isinstance(like, torch.Tensor) else torch.device("cpu")


def _agree(error: Exception | None, device, group) -> None:
    """Raise on every rank if the local checks failed on any rank (a rank that raised alone
    would leave the others waiting in a collective)."""
    flag = torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    if error is not None:
        raise error
    if float(flag) > 0:
        raise ValueError("couplings.distributed.sinkhorn: the inputs of another rank were "
                         "rejected (see the error on that rank); every rank must call it with "
                         "valid inputs.")


def _check_consistent(values: dict[str, float], device, group) -> None:
    """Raise on every rank unless ``values`` (shapes and options) are the same on all ranks."""
    names = list(values)
    v = torch.tensor([values[k] for k in names], dtype=torch.float64, device=device)
    both = torch.cat([v, -v])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    hi, lo = both[: len(names)].tolist(), (-both[len(names):]).tolist()
    bad = [f"{k} in [{lo_k:g}, {hi_k:g}]" for k, hi_k, lo_k in zip(names, hi, lo, strict=True)
           if hi_k != lo_k]
    if bad:
        raise ValueError("couplings.distributed.sinkhorn needs the same batch size, number of "
                         "columns m, dtype and options on every rank; they differ across ranks: "
                         + ", ".join(bad) + ".")


def sinkhorn(
    cost_rows,
    a_rows: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    eps: float,
    tol: float = 1e-6,
    max_iter: int = 1000,
    min_iter: int = 0,
    scaling: float | str | None = "auto",
    grad: str | None = None,
    check_every: int = 10,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    rho: float | tuple[float | None, float | None] | None = None,
    backend: str = "auto",
    momentum: float | str = "auto",
    group=None,
) -> OTResult:
    r"""Entropic OT (balanced or unbalanced) by Sinkhorn's iterations, the rows of the problem
    split across the ranks of a ``torch.distributed`` process group.

    Every rank of ``group`` calls this with its own rows; the iterations are those of
    :func:`couplings.sinkhorn` (the same loop, with the updates of :class:`ShardedSoftmin`),
    and the result is that of :func:`couplings.sinkhorn` on the whole problem, up to rounding:
    this rank's rows of ``f``, and ``g``, ``value``, ``error``, ``converged`` and ``n_iter`` the
    same on every rank. See the module docstring for the math, the communication and how to
    launch it.

    Args:
        cost_rows: this rank's rows of the cost, ``(B, n_r, m)`` or ``(n_r, m)``, or a
            :class:`~couplings.PointCloud` of this rank's points ``x_r`` and all of ``y``;
            ``n_r >= 1``. On the GPU of this process with NCCL.
        a_rows: this rank's block of the first marginal ``(B, n_r)`` or ``(n_r,)``,
            non-negative (a block may be all zeros); ``None`` for uniform ``1 / n`` with ``n``
            the total number of rows.
        b: the whole second marginal ``(B, m)`` or ``(m,)``, the same on every rank; ``None``
            for uniform ``1 / m``. Balanced, its mass must equal the total mass of ``a``.
        eps, tol, max_iter, min_iter, scaling, check_every, rho, momentum: as in
            :func:`couplings.sinkhorn`; they must be the same on every rank (checked). The
            adaptive over-relaxation measures the rate from the all-reduced error, so every
            rank relaxes by the same ``omega``.
        grad: ``None`` or ``"envelope"``: ``value`` differentiates by the envelope theorem to
            this rank's cost rows (or points), ``a_rows`` and ``b``, each gradient being this
            rank's share (see the module docstring); ``f``, ``g`` and ``plan`` are detached.
        init: warm start ``(f_rows, g)``, this rank's rows of ``f`` and all of ``g``, shaped like
            the outputs.
        backend: ``"tensorized"``, ``"compiled"`` or ``"auto"`` (compiled from ``2**18`` entries
            ``B n_r m`` of the local block), as in :func:`couplings.sinkhorn`; the result's
            ``backend`` says which ran on this rank.
        group: the process group (``None``: the default one, from ``init_process_group``).

    Returns:
        :class:`~couplings.OTResult` with ``f`` ``(B, n_r)`` (this rank's rows), ``g``
        ``(B, m)``, ``value`` ``(B,)`` (the global value), ``error``, ``converged``, ``n_iter``
        and ``n_iter_per_problem`` (global), ``a`` this rank's block and ``b``; ``plan`` is
        this rank's rows ``(B, n_r, m)``. Balanced, the potentials are normalized so that
        ``<a, f> = <b, g>`` over all rows, as by :func:`couplings.sinkhorn`. ``linear_value``
        and the certificate (``gap``, ``primal_value``, ``dual_value``) need the whole plan and
        raise :class:`ValueError`. The batch axis is absent for an unbatched call.

    Raises:
        ValueError: ``torch.distributed`` is not initialized; the shapes or options differ
            across ranks; a rank holds no row; unequal total masses (balanced); and the checks
            of :func:`couplings.sinkhorn`. An input rejected on one rank raises on every rank
            (the others with a message pointing to it), so no rank is left waiting.
        TypeError: inputs of the wrong type or dtype.

    Example:
        See the module docstring (a runnable example needs a process group).
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "couplings.distributed.sinkhorn needs an initialized torch.distributed process "
            "group: call torch.distributed.init_process_group('gloo' or 'nccl') in every "
            "process first (torchrun sets the environment for it), or use couplings.sinkhorn "
            "in a single process."
        )
    world = dist.get_world_size(group)
    like = cost_rows.x if hasattr(cost_rows, "x") else cost_rows
    device = _comm_device(group, like)

    failure = None
    try:
        eps, tol, max_iter, min_iter, check_every, scaling = _check_loop_options(
            eps, tol, max_iter, min_iter, check_every, scaling
        )
        if grad not in (None, "envelope"):
            raise ValueError(
                "couplings.distributed.sinkhorn differentiates by the envelope theorem only "
                f"(grad=None or 'envelope'), got grad={grad!r}: implicit and unrolled "
                "gradients would need autograd across ranks."
            )
        rho = _check_rho(rho)
        balanced = math.isinf(rho[0]) and math.isinf(rho[1])
        momentum = _check_momentum(momentum, balanced, False, min_iter >= max_iter)
        check_choice(backend, "backend", BACKENDS)
        geom = as_geometry(cost_rows)
        c = geom.cost_matrix()  # (B, n_r, m)
        bsz, n_local, m = geom.shape
        if dist.get_backend(group) == "nccl" and c.device.type != "cuda":
            raise ValueError("with the NCCL backend the cost rows must be on this process's "
                             f"GPU, got device {c.device}.")
        if a_rows is not None:
            # a block of rows may carry no mass: the total is checked over the ranks
            a_rows = batch_weights(a_rows, n_local, bsz, geom.batched, c, "a_rows",
                                   "the rows (n_r) of the cost block", allow_zero_mass=True)
        b = batch_weights(b, m, bsz, geom.batched, c, "b", "the columns (m) of the cost")
        if init is not None:
            init = _check_init(init, bsz, n_local, m, geom.batched, c)
        # as in one process: a point cloud starts from the Gaussian initializer, whose fit of
        # the rows' cloud is reduced over the ranks
        guesses = init is None and _guesses(geom, balanced=balanced, symmetric=False, grad=grad,
                                            fixed_depth=min_iter >= max_iter)
    except (TypeError, ValueError) as err:
        failure = err
    _agree(failure, device, group)

    options = {
        "batch size": bsz, "m": m, "batched": float(geom.batched),
        "itemsize": c.element_size(), "a given": float(a_rows is not None), "eps": eps,
        "tol": tol, "max_iter": max_iter, "min_iter": min_iter, "check_every": check_every,
        "scaling": {None: -1.0, "auto": -2.0}.get(scaling, scaling),
        "rho_a": -1.0 if math.isinf(rho[0]) else rho[0],
        "rho_b": -1.0 if math.isinf(rho[1]) else rho[1],
        "momentum": -1.0 if momentum == "adaptive" else momentum,
        "Gaussian start": float(guesses),
    }
    # b is replicated: at least its masses must agree (they decide the balanced mass check)
    options.update({f"sum(b[{k}])": s for k, s in enumerate(b.sum(-1).tolist())})
    _check_consistent(options, device, group)
    # the totals over the ranks: rows, and the mass of a (each problem)
    local_mass = (a_rows.sum(-1) if a_rows is not None else c.new_zeros(bsz)).to(torch.float64)
    totals = torch.cat([local_mass.new_tensor([n_local]), local_mass]).to(device)
    dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=group)
    n = int(totals[0])
    if a_rows is None:
        a_rows = c.new_full((bsz, n_local), 1.0 / n)
        mass_a = c.new_ones(bsz)
    else:
        mass_a = totals[1:].to(device=c.device, dtype=c.dtype)
        if bool((mass_a <= 0).any()):
            raise ValueError("a must have a positive total mass over the ranks, got a batch "
                             "entry summing to 0.")
    if balanced:
        check_equal_mass(mass_a.unsqueeze(-1), b)

    if backend == "auto":
        backend = ("compiled" if bsz * n_local * m >= AUTO_COMPILED_ENTRIES
                   and _softmin.compile_available() else "tensorized")
    with torch.no_grad():
        guess = None if not guesses else gaussian_potentials(
            geom.x, geom.y, a_rows, b, eps=eps, rows=False,
            reduce=lambda t: _all_reduce(t, dist.ReduceOp.SUM, group))
        inner = DenseSoftmin(c.detach(), eps, unroll=False, compiled=backend == "compiled")
        ops = ShardedSoftmin(inner, group)
        f, g, n_iter, error, converged, iters, omega, annealed = _iterate(
            ops, a_rows.detach(), b.detach(), eps, tol, max_iter, min_iter, scaling,
            check_every, init, False, rho, momentum, guess=guess,
        )
        if balanced:  # fix the additive constant: <a, f> = <b, g> over all rows
            af = _all_reduce((a_rows * f).sum(-1), dist.ReduceOp.SUM, group)
            shift = (af - (b * g).sum(-1)) / (mass_a + b.sum(-1))  # (B,)
            f, g = f - shift.unsqueeze(-1), g + shift.unsqueeze(-1)
        resolution = _resolution(f / eps, g / eps, a_rows.detach(), b.detach(), balanced,
                                 ops.row_total)
    # (the error is the same on every rank, so all raise together; the message's largest
    # cost is that of all the rows)
    _check_no_overflow(error, eps, n_iter, c.dtype, lambda: _all_reduce(
        c.detach().abs().amax(), dist.ReduceOp.MAX, group))
    _warn_not_converged(converged, error, resolution, tol, n_iter, eps, bsz,
                           fixed_depth=min_iter >= max_iter, stacklevel=2)

    value = _ShardedValue.apply(c, a_rows, b, f, g, eps, rho, world, group)
    plan_inputs = (c.detach(), a_rows.detach(), b.detach(), f, g)
    return OTResult.from_batched(
        geom.batched, f=f, g=g, value=value, converged=converged, error=error, a=a_rows, b=b,
        plan_fn=lambda: _plan(*plan_inputs, eps),
        cost=_sharded_only("cost matrix (nor linear_value, rounded_plan or gap)"),
        n_iter=n_iter, eps=eps, solver="sinkhorn", rho=None if balanced else rho,
        n_iter_per_problem=iters, backend=ops.backend, omega=omega, annealed=annealed,
        resolution=resolution,
    )
