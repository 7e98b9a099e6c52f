r"""Soft sorting and ranking: projections onto the permutahedron, solved by isotonic regression.

The permutahedron of a vector :math:`w \in \mathbb{R}^n` is the convex hull of its permutations,
:math:`\mathcal{P}(w) = \operatorname{conv}\{w_\sigma : \sigma \in \mathfrak{S}_n\}`. Sorting
and ranking are linear programs over permutahedra: with :math:`\rho = (n, n - 1, \dots, 1)`,
the values sorted in descending order are :math:`\arg\max_{y \in \mathcal{P}(\theta)}
\langle \rho, y \rangle` and the descending ranks are :math:`\arg\max_{r \in \mathcal{P}(\rho)}
\langle -\theta, r \rangle`. Blondel et al. regularize them into the projections

.. math::

    P_Q(z, w) = \arg\min_{\mu \in \mathcal{P}(w)} \tfrac12 \|\mu - z\|^2, \qquad
    P_E(z, w) = \log \arg\min_{\mu \in \mathcal{P}(e^w)} \mathrm{KL}(\mu, e^z),

and define, at regularization strength :math:`\varepsilon > 0` (``"l2"`` uses :math:`P_Q`,
``"kl"`` uses :math:`P_E`),

.. math::

    \text{descending:}\quad s_\varepsilon(\theta) = P(\rho / \varepsilon, \theta), \qquad
    r_\varepsilon(\theta) = P(-\theta / \varepsilon, \rho)
    \ \ (\text{kl: } e^{P_E(-\theta / \varepsilon, \log \rho)}),

and ascending :math:`s^\uparrow_\varepsilon(\theta) = -s_\varepsilon(-\theta)`,
:math:`r^\uparrow_\varepsilon(\theta) = r_\varepsilon(-\theta)` (the rank of the largest value
is ``n``). As :math:`\varepsilon \to 0` they tend to the hard sort and the hard ranks; as
:math:`\varepsilon \to \infty` the ``"l2"`` versions tend to the mean of :math:`\theta` and
to the mean rank :math:`(n + 1) / 2`.

**Reduction to isotonic regression** (Blondel et al., Prop. 3). Let :math:`\sigma` sort
:math:`z` in descending order, :math:`s = z_\sigma`, and let :math:`w` be sorted in descending
order. Then :math:`P(z, w) = z - v_{\sigma^{-1}}` where :math:`v` solves the isotonic problem

.. math::

    v = \arg\min_{v_1 \ge \dots \ge v_n} \sum_i f_i(v_i), \qquad
    f_i(v) = \tfrac12 (v - s_i + w_i)^2 \ \ (\text{l2}), \quad
    f_i(v) = e^{s_i - v} + e^{w_i} v \ \ (\text{kl}).

The pool-adjacent-violators algorithm (PAV) solves it in :math:`O(n)` after the
:math:`O(n \log n)` sort: it partitions :math:`1..n` into consecutive blocks :math:`B`, on
which :math:`v` is constant and equal to the minimizer of :math:`\sum_{i \in B} f_i`,

.. math::

    v_B = \operatorname{mean}_B(s) - \operatorname{mean}_B(w) \ \ (\text{l2}), \qquad
    v_B = \operatorname{logsumexp}_B(s) - \operatorname{logsumexp}_B(w) \ \ (\text{kl}).

Blocks are pooled while they violate the order *or tie* with the previous block, so adjacent
blocks of the solution have strictly decreasing values (at a tie the Jacobian is that of the
pooled block, as in the reference implementation). The projection in sorted order is
:math:`\mu_i = s_i - v_{B(i)}`; for the sort, :math:`z = \rho / \varepsilon` is already in
descending order, so :math:`s_\varepsilon(\theta)` comes out sorted. ``soft_sort`` and
``soft_rank`` default to the ascending versions, as fast-soft-sort and torchsort do, and
reproduce their documented values.

**Jacobians.** Given the partition (locally constant in the inputs), :math:`\mu` is an
explicit function of :math:`s` and :math:`w`, block by block:
:math:`\partial \mu_i / \partial w_j = p_j` and
:math:`\partial \mu_i / \partial s_j = \delta_{ij} - q_j` for :math:`j \in B(i)`, with
:math:`p_j = q_j = 1 / |B|` (l2), :math:`p = \operatorname{softmax}(w_B)`,
:math:`q = \operatorname{softmax}(s_B)` (kl). The backward passes here apply these
block-wise in :math:`O(n)` (a segment sum and a gather), without differentiating through PAV.

References:
    Blondel, Teboul, Berthet and Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .._validation import as_tensor, check_choice, check_finite, check_float, check_positive_scalar
from ..permutations.mallows import MAX_EXACT_N, all_permutations
from .base import Structure, check_weights

__all__ = ["Permutahedron", "soft_rank", "soft_sort"]

REGULARIZATIONS = ("l2", "kl")
DIRECTIONS = ("ASCENDING", "DESCENDING")

# batches of at least this many rows per value run PAV in lockstep over the rows (numpy, one
# Python iteration per element and per merge round, each over all the rows); others run the
# plain stack loop row by row, which is faster unless the rows are many and short (measured:
# lockstep 4x faster at 1024 x 20, 4x slower at 128 x 100)
_LOCKSTEP_MIN_ROWS = 8


# --------------------------------------------------------------------------------------------
# pool adjacent violators


def _pav_row_l2(y: list[float]) -> list[int]:
    """Block sizes of :math:`\\arg\\min_{v_1 \\ge \\dots \\ge v_n} \\|v - y\\|^2` (one row)."""
    sums: list[float] = []
    sizes: list[int] = []
    vals: list[float] = []
    for yi in y:
        total, size, val = yi, 1, yi
        while vals and val >= vals[-1]:  # violation or tie with the previous block: pool
            vals.pop()
            total += sums.pop()
            size += sizes.pop()
            val = total / size
        sums.append(total)
        sizes.append(size)
        vals.append(val)
    return sizes


def _pav_row_kl(a: list[float], b: list[float]) -> list[int]:
    """Block sizes of :math:`\\arg\\min_{v_1 \\ge \\dots} \\sum_i e^{a_i - v_i} + e^{b_i} v_i`."""
    lsa: list[float] = []
    lsb: list[float] = []
    sizes: list[int] = []
    vals: list[float] = []
    for ai, bi in zip(a, b, strict=True):
        la, lb, size, val = ai, bi, 1, ai - bi
        while vals and val >= vals[-1]:
            vals.pop()
            size += sizes.pop()
            other = lsa.pop()
            la = max(la, other) + math.log1p(math.exp(-abs(la - other)))
            other = lsb.pop()
            lb = max(lb, other) + math.log1p(math.exp(-abs(lb - other)))
            val = la - lb
        lsa.append(la)
        lsb.append(lb)
        sizes.append(size)
        vals.append(val)
    return sizes


def _pav_lockstep(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """PAV on every row at once: one stack per row, pushed in step; returns padded block sizes
    ``(B, n)`` (a row's blocks in order, then zeros). l2 if ``b`` is None (``a = y``)."""
    rows_n, n = a.shape
    kl = b is not None
    st_a = np.empty((rows_n, n))
    st_b = np.empty((rows_n, n)) if kl else None
    val = np.empty((rows_n, n))
    size = np.zeros((rows_n, n), dtype=np.int64)
    top = np.full(rows_n, -1, dtype=np.int64)
    rows = np.arange(rows_n)
    for i in range(n):
        top += 1
        st_a[rows, top] = a[:, i]
        size[rows, top] = 1
        if kl:
            st_b[rows, top] = b[:, i]
            val[rows, top] = a[:, i] - b[:, i]
        else:
            val[rows, top] = a[:, i]
        r = rows[top > 0]
        while r.size:
            t = top[r]
            pool = val[r, t] >= val[r, t - 1]
            if not pool.any():
                break
            r, t = r[pool], t[pool]
            u = t - 1
            merged = size[r, u] + size[r, t]
            if kl:
                la = np.logaddexp(st_a[r, u], st_a[r, t])
                lb = np.logaddexp(st_b[r, u], st_b[r, t])
                st_a[r, u], st_b[r, u] = la, lb
                val[r, u] = la - lb
            else:
                total = st_a[r, u] + st_a[r, t]
                st_a[r, u] = total
                val[r, u] = total / merged
            size[r, u] = merged
            size[r, t] = 0
            top[r] = u
            r = r[u > 0]
    return size


def _pav_sizes(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Padded block sizes ``(B, n)`` of the decreasing isotonic problem on each row of
    ``(B, n)`` float64 arrays: ``0.5 ||v - a||^2`` (``b`` None) or
    ``sum exp(a - v) + exp(b) v``."""
    rows_n, n = a.shape
    if rows_n >= _LOCKSTEP_MIN_ROWS * n and n > 1:
        return _pav_lockstep(a, b)
    out = np.zeros((rows_n, n), dtype=np.int64)
    for r in range(rows_n):
        if b is None:
            sizes = _pav_row_l2(a[r].tolist())
        else:
            sizes = _pav_row_kl(a[r].tolist(), b[r].tolist())
        out[r, :len(sizes)] = sizes
    return out


def _isotonic_blocks(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Block index ``(B, n)`` (0, 1, ... along each row) of the decreasing isotonic solution.

    ``b=None``: :math:`\\arg\\min_{v_1 \\ge \\dots \\ge v_n} \\tfrac12 \\|v - a\\|^2`;
    otherwise :math:`\\arg\\min_{v_1 \\ge \\dots \\ge v_n} \\sum_i e^{a_i - v_i} + e^{b_i} v_i`.
    Tied blocks are pooled.
    """
    sizes = _pav_sizes(a, b)
    rows_n, n = a.shape
    starts = np.zeros((rows_n, n), dtype=np.int64)
    ends = np.cumsum(sizes, axis=1)
    row, k = np.nonzero(sizes)
    starts[row, ends[row, k] - sizes[row, k]] = 1
    return np.cumsum(starts, axis=1) - 1


def _segments(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a block index ``(B, n)``: each element's block among all rows' blocks (``(B * n,)``,
    0, 1, ... in row-major order), the flat start of each block and its size."""
    rows_n, n = block.shape
    gid = (block + (np.arange(rows_n) * n)[:, None]).ravel()
    new = np.r_[True, gid[1:] != gid[:-1]]
    starts = np.flatnonzero(new)
    return np.cumsum(new) - 1, starts, np.diff(np.r_[starts, gid.size])


def _block_stats(x: np.ndarray, segments, reg: str) -> np.ndarray:
    """Per element, the block mean (l2) or block log-sum-exp (kl) of ``x`` ``(B, n)``."""
    dense, starts, counts = segments
    flat = x.ravel()
    if reg == "l2":
        return (np.add.reduceat(flat, starts) / counts)[dense].reshape(x.shape)
    top = np.maximum.reduceat(flat, starts)
    lse = top + np.log(np.add.reduceat(np.exp(flat - top[dense]), starts))
    return lse[dense].reshape(x.shape)


def _isotonic_projection(s: np.ndarray, w: np.ndarray, reg: str):
    """Projection in sorted order for descending-sorted ``s`` (``z`` sorted) and ``w``
    (broadcast to ``(B, n)``): returns ``mu = s - v``, the block index and the block weights
    ``q`` (:math:`\\partial \\mu / \\partial s`) and ``p``
    (:math:`\\partial \\mu / \\partial w`)."""
    s, w = np.broadcast_arrays(s, w)
    block = _isotonic_blocks(s - w) if reg == "l2" else _isotonic_blocks(s, w)
    segments = _segments(block)
    stat_s = _block_stats(s, segments, reg)
    stat_w = _block_stats(w, segments, reg)
    # s - v written so that a singleton block returns w exactly (no cancellation at small eps)
    mu = (s - stat_s) + stat_w
    if reg == "l2":
        dense, _, counts = segments
        p = (1.0 / counts)[dense].reshape(s.shape)
        return mu, block, p, p
    return mu, block, np.exp(s - stat_s), np.exp(w - stat_w)


def _isotonic_values(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """The decreasing isotonic solution ``v`` itself (see :func:`_isotonic_blocks`)."""
    segments = _segments(_isotonic_blocks(a, b))
    if b is None:
        return _block_stats(a, segments, "l2")
    return _block_stats(a, segments, "kl") - _block_stats(b, segments, "kl")


def _block_sum(g: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """Per element, the sum of ``g`` over its block (``(B, n)`` tensors)."""
    return torch.zeros_like(g).scatter_add_(1, block, g).gather(1, block)


def _to_torch(a: np.ndarray, device, dtype=None) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)


def _descending_order(x: np.ndarray) -> np.ndarray:
    return np.argsort(-x, axis=1, kind="stable")


# --------------------------------------------------------------------------------------------
# autograd functions


class _SoftSortFn(torch.autograd.Function):
    """``forward(x, strength, reg)``: :math:`P(\\rho / \\varepsilon, x)` in sorted (descending)
    order for ``x`` ``(B, n)``; backward :math:`\\partial / \\partial x_{\\sigma(j)} =
    p_j \\sum_{i \\in B(j)} g_i`."""

    @staticmethod
    def forward(ctx, x, strength, reg):
        xn = x.detach().to("cpu", torch.float64).numpy()
        n = xn.shape[1]
        perm = _descending_order(xn)
        w = np.take_along_axis(xn, perm, axis=1)
        s = np.arange(n, 0, -1, dtype=np.float64) / strength
        mu, block, _, p = _isotonic_projection(s, w, reg)
        ctx.save_for_backward(_to_torch(perm, x.device), _to_torch(block, x.device),
                              _to_torch(p, x.device, x.dtype))
        return _to_torch(mu, x.device, x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        perm, block, p = ctx.saved_tensors
        grad_sorted = p * _block_sum(grad, block)
        return torch.zeros_like(grad).scatter_(1, perm, grad_sorted), None, None


class _ProjectionFn(torch.autograd.Function):
    """``forward(z, w, reg)``: :math:`P_Q(z, w)` (l2) or :math:`e^{P_E(z, w)}` (kl) for
    ``z`` ``(B, n)`` and a fixed descending ``w`` ``(n,)`` (numpy float64); backward
    :math:`h - q \\sum_{B} h` in sorted order, :math:`h = g` (l2) or :math:`g \\odot` output
    (kl)."""

    @staticmethod
    def forward(ctx, z, w, reg):
        zn = z.detach().to("cpu", torch.float64).numpy()
        perm = _descending_order(zn)
        s = np.take_along_axis(zn, perm, axis=1)
        mu, block, q, _ = _isotonic_projection(s, w, reg)
        primal = np.empty_like(mu)
        np.put_along_axis(primal, perm, mu, axis=1)
        out = primal if reg == "l2" else np.exp(primal)
        out = _to_torch(out, z.device, z.dtype)
        ctx.reg = reg
        ctx.save_for_backward(_to_torch(perm, z.device), _to_torch(block, z.device),
                              _to_torch(q, z.device, z.dtype), out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        perm, block, q, out = ctx.saved_tensors
        h = grad if ctx.reg == "l2" else grad * out
        hs = h.gather(1, perm)
        grad_sorted = hs - q * _block_sum(hs, block)
        return torch.zeros_like(grad).scatter_(1, perm, grad_sorted), None, None


def _projection_autograd(z: torch.Tensor, w: np.ndarray, reg: str) -> torch.Tensor:
    """The same value as ``_ProjectionFn`` as a torch formula given the PAV partition, so that
    autograd differentiates it (to any order; the partition is locally constant)."""
    zn = z.detach().to("cpu", torch.float64).numpy()
    perm = _descending_order(zn)
    sn = np.take_along_axis(zn, perm, axis=1)
    if reg == "l2":
        block_np = _isotonic_blocks(sn - w)
    else:
        block_np = _isotonic_blocks(sn, np.broadcast_to(w, sn.shape))
    perm = torch.from_numpy(perm).to(z.device)
    block = torch.from_numpy(block_np).to(z.device)
    s = z.gather(1, perm)
    wt = torch.from_numpy(np.ascontiguousarray(w)).to(z).expand_as(s)

    def stat(x):
        zeros = torch.zeros_like(x)
        if reg == "l2":
            count = zeros.scatter_add(1, block, torch.ones_like(x)).clamp_min(1)
            return (zeros.scatter_add(1, block, x) / count).gather(1, block)
        top = zeros.scatter_reduce(1, block, x.detach(), "amax", include_self=False)
        top = top.gather(1, block)
        total = zeros.scatter_add(1, block, torch.exp(x - top)).gather(1, block)
        return torch.log(total) + top

    mu = (s - stat(s)) + stat(wt)
    primal = torch.zeros_like(mu).scatter(1, perm, mu)
    return primal if reg == "l2" else torch.exp(primal)


# --------------------------------------------------------------------------------------------
# public operators


def _check_values(values) -> torch.Tensor:
    values = as_tensor(values, "values")
    check_float(values, "values")
    if values.dim() == 0:
        raise ValueError("values must have shape (*batch, n), got a scalar (shape ()).")
    check_finite(values, "values")
    return values


def _check_options(values, regularization_strength, regularization,
                   direction) -> tuple[float, str, int]:
    strength = check_positive_scalar(regularization_strength, "regularization_strength")
    scale = max(values.shape[-1], float(values.detach().abs().max())) if values.numel() else 1
    if not math.isfinite(scale / strength):
        raise ValueError(
            f"regularization_strength = {strength!r} is too small for these values: the scaled "
            "problem overflows."
        )
    reg = check_choice(regularization, "regularization", REGULARIZATIONS)
    direction = check_choice(direction, "direction", DIRECTIONS)
    return strength, reg, (1 if direction == "ASCENDING" else -1)


def soft_sort(values, regularization_strength: float = 1.0, *, regularization: str = "l2",
              direction: str = "ASCENDING") -> torch.Tensor:
    r"""Differentiable sort: the projection of :math:`\rho / \varepsilon` onto the permutahedron
    of the values (Blondel et al., 2020).

    Descending, :math:`s_\varepsilon(\theta) = P(\rho / \varepsilon, \theta)` with
    :math:`\rho = (n, \dots, 1)`; ascending, :math:`-s_\varepsilon(-\theta)`. The output lies in
    :math:`\mathcal{P}(\theta)` (``"l2"``; ``"kl"`` is the log of a point of
    :math:`\mathcal{P}(e^\theta)`) and is itself sorted. It tends to the hard sort as
    :math:`\varepsilon \to 0` (``"l2"``: it equals it once :math:`1 / \varepsilon` is at
    least the largest gap between consecutive sorted values) and, for ``"l2"``, to the mean
    as :math:`\varepsilon \to \infty`. Forward :math:`O(n \log n)`, backward :math:`O(n)`
    (block-wise averages, see the module docstring).

    Args:
        values: ``(*batch, n)`` float32 or float64 tensor; each row is sorted.
        regularization_strength: :math:`\varepsilon > 0`.
        regularization: ``"l2"`` (Euclidean projection) or ``"kl"``.
        direction: ``"ASCENDING"`` or ``"DESCENDING"``.

    Returns:
        ``(*batch, n)`` soft-sorted values, the dtype and device of ``values``.

    Example:
        >>> import torch
        >>> from couplings.structures.permutahedron import soft_sort
        >>> x = torch.tensor([[5.0, 1.0, 2.0], [2.0, 1.0, 5.0]])
        >>> soft_sort(x, 1.0)
        tensor([[1.6667, 2.6667, 3.6667],
                [1.6667, 2.6667, 3.6667]])
        >>> soft_sort(x, 0.1)
        tensor([[1., 2., 5.],
                [1., 2., 5.]])
    """
    values = _check_values(values)
    strength, reg, sign = _check_options(values, regularization_strength, regularization,
                                         direction)
    if values.numel() == 0:
        return values.clone()
    flat = values.reshape(-1, values.shape[-1])
    # descending sort of sign * values is the ascending sort of values times sign
    out = -sign * _SoftSortFn.apply(-sign * flat, strength, reg)
    return out.reshape(values.shape)


def soft_rank(values, regularization_strength: float = 1.0, *, regularization: str = "l2",
              direction: str = "ASCENDING") -> torch.Tensor:
    r"""Differentiable ranks: the projection of :math:`\pm\theta / \varepsilon` onto the
    permutahedron of :math:`\rho = (n, \dots, 1)` (Blondel et al., 2020).

    Ascending (the largest value has rank ``n``): :math:`P_Q(\theta / \varepsilon, \rho)`
    (``"l2"``) or :math:`e^{P_E(\theta / \varepsilon, \log \rho)}` (``"kl"``); descending
    (the largest value has rank 1): the same at :math:`-\theta`. The output lies in
    :math:`\mathcal{P}(\rho)`, so it sums to :math:`n(n + 1) / 2`; it tends to the hard ranks
    as :math:`\varepsilon \to 0` (``"l2"``: it equals them once :math:`\varepsilon` is at
    most the smallest gap between distinct values) and, for ``"l2"``, to :math:`(n + 1) / 2`
    as :math:`\varepsilon \to \infty`. Equal values get equal ranks (their mean rank).

    Args:
        values: ``(*batch, n)`` float32 or float64 tensor; each row is ranked.
        regularization_strength: :math:`\varepsilon > 0`.
        regularization: ``"l2"`` or ``"kl"``.
        direction: ``"ASCENDING"`` or ``"DESCENDING"``.

    Returns:
        ``(*batch, n)`` soft ranks (1-based), the dtype and device of ``values``.

    Example:
        >>> import torch
        >>> from couplings.structures.permutahedron import soft_rank
        >>> x = torch.tensor([[5.0, 1.0, 2.0], [2.0, 1.0, 5.0]])
        >>> soft_rank(x, 2.0)
        tensor([[3.0000, 1.2500, 1.7500],
                [1.7500, 1.2500, 3.0000]])
        >>> soft_rank(x, 1.0, direction="DESCENDING")
        tensor([[1., 3., 2.],
                [2., 3., 1.]])
    """
    values = _check_values(values)
    strength, reg, sign = _check_options(values, regularization_strength, regularization,
                                         direction)
    if values.numel() == 0:
        return values.clone()
    n = values.shape[-1]
    rho = np.arange(n, 0, -1, dtype=np.float64)
    w = rho if reg == "l2" else np.log(rho)
    flat = values.reshape(-1, n)
    return _ProjectionFn.apply(flat * (sign / strength), w, reg).reshape(values.shape)


# --------------------------------------------------------------------------------------------
# the permutahedron as a structure


class Permutahedron(Structure):
    r"""The permutations of a vector :math:`\rho \in \mathbb{R}^n`; their hull is the
    permutahedron :math:`\mathcal{P}(\rho)`.

    Unlike the other structures its points are not 0/1 vectors but rearrangements of
    :math:`\rho`; with :math:`\rho = (1, \dots, n)` they are the rank vectors.

    - ``argmax``: :math:`\rho` rearranged in the order of ``w`` (the largest entry of
      :math:`\rho` where ``w`` is largest), the vertex maximizing :math:`\langle w, z\rangle`;
    - ``relaxed(w, tau, reg="l2")``: :math:`\arg\max_{z \in \mathcal{P}(\rho)}
      \langle w, z\rangle - \frac{\tau}{2}\|z\|^2 = P_Q(w / \tau, \rho)`;
    - ``relaxed(w, tau, reg="kl")``: with :math:`R(z) = \sum_i z_i \log z_i - z_i`,
      :math:`e^{P_E(w / \tau, \log \rho)}` (needs :math:`\rho > 0`);
    - ``"autograd"`` backward: the block formulas of the PAV partition, differentiated by
      autograd; ``"custom"``: the :math:`O(n)` block-wise Jacobian (as :func:`soft_rank`);
    - ``enumerate``: the distinct permutations of :math:`\rho` (``n <= 8``).

    ``soft_rank(values, eps)`` equals ``Permutahedron(arange(1, n + 1)).relaxed(values, eps)``.

    Args:
        rho: the ``(n,)`` vector whose permutations form the set.

    Example:
        >>> import torch
        >>> from couplings.structures.permutahedron import Permutahedron
        >>> ranks = Permutahedron(torch.arange(1.0, 4.0))
        >>> w = torch.tensor([5.0, 1.0, 2.0])
        >>> ranks.argmax(w)
        tensor([3., 1., 2.])
        >>> ranks.relaxed(w, tau=2.0)
        tensor([3.0000, 1.2500, 1.7500])
    """

    regularizers = REGULARIZATIONS

    def __init__(self, rho):
        if not isinstance(rho, torch.Tensor | np.ndarray):
            rho = torch.as_tensor(rho, dtype=torch.float64)
        rho = as_tensor(rho, "rho")
        check_float(rho, "rho")
        if rho.dim() != 1 or rho.numel() == 0:
            raise ValueError(f"rho must have shape (n,) with n >= 1, got {tuple(rho.shape)}.")
        check_finite(rho, "rho")
        self.rho = rho.detach().to("cpu", torch.float64)
        self._rho_desc = np.sort(self.rho.numpy())[::-1].copy()

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.rho.numel(),)

    def argmax(self, w: torch.Tensor) -> torch.Tensor:
        w = check_weights(w, self.event_shape).detach()
        order = w.argsort(dim=-1, stable=True)
        rho_asc = torch.from_numpy(self._rho_desc[::-1].copy()).to(w).expand_as(w)
        return torch.empty_like(w).scatter_(-1, order, rho_asc)

    def _target(self, reg: str) -> np.ndarray:
        if reg == "l2":
            return self._rho_desc
        if self._rho_desc[-1] <= 0:
            raise ValueError(
                f"reg='kl' needs rho > 0 (its hull is a set of positive vectors), got min(rho) = "
                f"{self._rho_desc[-1]:g}."
            )
        return np.log(self._rho_desc)

    def _relaxed(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        target = self._target(reg)
        if w.numel() == 0:
            return w.clone()
        flat = (w / tau).reshape(-1, w.shape[-1])
        return _projection_autograd(flat, target, reg).reshape(w.shape)

    def _relaxed_custom(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        target = self._target(reg)
        if w.numel() == 0:
            return w.clone()
        flat = (w / tau).reshape(-1, w.shape[-1])
        return _ProjectionFn.apply(flat, target, reg).reshape(w.shape)

    def enumerate(self) -> torch.Tensor:
        n = self.rho.numel()
        if n > MAX_EXACT_N:
            raise ValueError(
                f"Permutahedron.enumerate lists n! points and is limited to n <= {MAX_EXACT_N}, "
                f"got n = {n}."
            )
        return torch.unique(self.rho[all_permutations(n)], dim=0)

    def __repr__(self) -> str:
        return f"Permutahedron(n={self.rho.numel()})"
