r"""One-hot vectors and k-subsets: the simplex and the capped simplex.

:class:`Categorical` is the set of one-hot vectors of length ``d``, whose hull is the simplex
:math:`\Delta = \{z \ge 0, \sum_i z_i = 1\}`; :class:`KSubset` is the set of 0/1 vectors with
exactly ``k`` ones, whose hull is the capped simplex
:math:`\mathcal{C}_k = \{0 \le z \le 1, \sum_i z_i = k\}`.

Every regularized argmax here except the exponential family's is *separable*: its solution is
:math:`z_i = h((w_i - \nu) / \tau)` for a nondecreasing :math:`h` and the one threshold
:math:`\nu` that makes :math:`\sum_i z_i = k`. Its Jacobian, by the implicit function theorem, is

.. math::

    \frac{\partial z}{\partial w} = \frac{1}{\tau}\Big(D - \frac{\delta \delta^\top}
    {\sum_i \delta_i}\Big), \qquad D = \operatorname{diag}(\delta),
    \quad \delta_i = h'((w_i - \nu) / \tau),

which is the ``"custom"`` backward (softmax and sparsemax are the case ``k = 1``). The
exponential family of k-subsets, :math:`p(S) \propto \exp \sum_{i \in S} w_i`, has its
log-partition and marginals by a forward-backward recursion over (item, count) in
:math:`O(dk)`; its ``"custom"`` backward is the covariance-vector product, from the same
recursion carrying expectations of :math:`\langle g, z \rangle`.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch.autograd.function import once_differentiable

from .._validation import check_positive_int
from .base import Structure, check_weights, logaddexp

__all__ = ["Categorical", "KSubset"]

# bisection steps for the binary-entropy threshold: 2**-64 of the bracket, whose width is the
# range of w / tau, is below the float64 resolution of any point in it
_BISECTION_STEPS = 64


# --------------------------------------------------------------------------------------------
# the "custom" backward of separable regularized argmaxes


class _SeparableFn(torch.autograd.Function):
    """``forward(x, solve) = z`` where ``solve(x) -> (z, delta)``; the backward is
    ``delta * (g - <delta, g> / sum(delta))`` (the implicit-function Jacobian in ``x``)."""

    @staticmethod
    def forward(ctx, x, solve):
        with torch.no_grad():
            z, delta = solve(x)
        ctx.save_for_backward(delta)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (delta,) = ctx.saved_tensors
        total = delta.sum(-1, keepdim=True).clamp_min(torch.finfo(delta.dtype).tiny)
        mean = (delta * grad).sum(-1, keepdim=True) / total
        return delta * (grad - mean), None


# --------------------------------------------------------------------------------------------
# the simplex


def _sparsemax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean projection of ``x`` onto the simplex (sort-based) and its support (0/1)."""
    xs = x.sort(dim=-1, descending=True).values
    cums = xs.cumsum(-1)
    ranks = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    # the support is the largest prefix with 1 + r x_(r) > sum_{j <= r} x_(j); it holds r = 1
    size = (1 + ranks * xs > cums).sum(-1, keepdim=True).clamp_min(1)
    threshold = (cums.gather(-1, size - 1) - 1) / size.to(x.dtype)
    z = torch.clamp(x - threshold, min=0)
    return z, (z > 0).to(x.dtype)


def _softmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.softmax(x, dim=-1)
    return z, z


class Categorical(Structure):
    r"""One-hot vectors of length ``d``; their hull is the probability simplex.

    - ``argmax``: the one-hot of the largest weight (ties: the first index);
    - ``relaxed(w, tau, reg="entropy")``: :math:`\operatorname{softmax}(w / \tau)`;
    - ``relaxed(w, tau, reg="euclidean")``: :math:`\operatorname{sparsemax}(w / \tau)`, the
      Euclidean projection onto the simplex (Martins & Astudillo, 2016), exactly sparse;
    - ``"custom"`` backward: the closed-form Jacobians
      :math:`(\operatorname{diag}(s) - s s^\top) / \tau` and
      :math:`(\operatorname{diag}(m) - m m^\top / |m|) / \tau`, :math:`m` the support;
    - ``log_partition``: :math:`\operatorname{logsumexp}(w)`; ``marginals``: the softmax.

    Args:
        d: number of categories.

    Example:
        >>> import torch
        >>> from couplings.structures import Categorical
        >>> cat = Categorical(3)
        >>> w = torch.tensor([1.0, 3.0, 2.5])
        >>> cat.argmax(w)
        tensor([0., 1., 0.])
        >>> cat.relaxed(w, tau=1.0, reg="euclidean")
        tensor([0.0000, 0.7500, 0.2500])
        >>> round(cat.relaxed(w, tau=1.0).sum().item(), 6)
        1.0
    """

    regularizers = ("entropy", "euclidean")

    def __init__(self, d: int):
        self.d = check_positive_int(d, "d")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.d,)

    def argmax(self, w: torch.Tensor) -> torch.Tensor:
        w = check_weights(w, self.event_shape)
        index = w.detach().argmax(dim=-1)  # the first maximal index
        return torch.nn.functional.one_hot(index, self.d).to(w.dtype)

    def _relaxed(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        if reg == "entropy":
            return torch.softmax(w / tau, dim=-1)
        return _sparsemax(w / tau)[0]

    def _relaxed_custom(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        solve = _softmax if reg == "entropy" else _sparsemax
        return _SeparableFn.apply(w / tau, solve)

    def log_partition(self, w: torch.Tensor) -> torch.Tensor:
        w = check_weights(w, self.event_shape)
        return torch.logsumexp(w, dim=-1)

    def marginals(self, w: torch.Tensor) -> torch.Tensor:
        w = check_weights(w, self.event_shape)
        return torch.softmax(w, dim=-1)

    def enumerate(self) -> torch.Tensor:
        return torch.eye(self.d, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"Categorical(d={self.d})"


# --------------------------------------------------------------------------------------------
# the capped simplex: thresholds of the separable regularizers


def _capped_projection(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Euclidean projection onto :math:`\{0 \le z \le 1, \sum z = k\}` and its free set.

    :math:`s(\nu) = \sum_i \operatorname{clip}(x_i - \nu, 0, 1)` is piecewise linear and
    nonincreasing with breakpoints :math:`x_i - 1` and :math:`x_i`. It is evaluated at all
    ``2d`` sorted breakpoints (prefix sums and ``searchsorted``, :math:`O(d \log d)`) to find
    the interval that holds :math:`s(\nu) = k`; the midpoint of that interval fixes which
    entries are capped (1), zero and free, and :math:`\nu` is then solved for exactly on the
    free set, :math:`\nu = (\sum_{\text{free}} x_i - (k - n_\text{capped})) / n_\text{free}`,
    a formula autograd differentiates exactly.
    """
    d = x.shape[-1]
    with torch.no_grad():
        xs = x.detach().sort(dim=-1).values.contiguous()
        prefix = torch.cat([torch.zeros_like(xs[..., :1]), xs.cumsum(-1)], dim=-1)
        t = torch.cat([xs - 1, xs], dim=-1).sort(dim=-1).values.contiguous()
        below = torch.searchsorted(xs, t, right=True)  # entries with x <= t (z = 0)
        under = torch.searchsorted(xs, (t + 1).contiguous())  # entries with x < t + 1
        s = (d - under) + prefix.gather(-1, under) - prefix.gather(-1, below) \
            - t * (under - below).to(x.dtype)
        # s(t_1) = d >= k > 0 = s(t_2d): the interval [t_m, t_m+1] with s(t_m) >= k > s(t_m+1)
        m = ((s >= k).sum(-1, keepdim=True) - 1).clamp(0, 2 * d - 2)
        mid = (t.gather(-1, m) + t.gather(-1, m + 1)) / 2
        free = (x > mid) & (x < mid + 1)
        capped = x >= mid + 1
    n_free = free.sum(-1, keepdim=True).clamp_min(1).to(x.dtype)
    n_capped = capped.sum(-1, keepdim=True).to(x.dtype)
    nu = ((x * free).sum(-1, keepdim=True) - (k - n_capped)) / n_free
    z = torch.where(free, x - nu, capped.to(x.dtype))
    return z, free.to(x.dtype)


def _capped_softmax(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`z_i = \min(1, e^{x_i - \nu})` with :math:`\sum z = k`, and :math:`h'`.

    The capped entries are the ``c`` largest; for a given ``c`` the free ones fix
    :math:`\nu_c = \operatorname{logsumexp}_{r > c} x_{(r)} - \log(k - c)`, and the solution
    is the smallest ``c < k`` with :math:`x_{(c+1)} \le \nu_c` (then :math:`x_{(c)} \ge \nu_c`
    follows). Exact: one sort and a suffix log-sum-exp; :math:`\nu` is recomputed on the free
    set by a formula autograd differentiates exactly.
    """
    with torch.no_grad():
        xd = x.detach()
        xs, order = xd.sort(dim=-1, descending=True)
        suffix = torch.logcumsumexp(xs.flip(-1), dim=-1).flip(-1)[..., :k]
        c = torch.arange(k, device=x.device)
        nu_c = suffix - torch.log((k - c).to(x.dtype))
        ok = xs[..., :k] <= nu_c
        ok[..., k - 1] = True  # nu_{k-1} = logsumexp(x_(k..d)) >= x_(k), up to rounding
        n_capped = ok.to(torch.int64).argmax(dim=-1, keepdim=True)  # the first true
        rank = torch.empty_like(order).scatter_(
            -1, order, torch.arange(x.shape[-1], device=x.device).expand_as(order)
        )
        capped = rank < n_capped
    nu = x.masked_fill(capped, -math.inf).logsumexp(-1, keepdim=True) \
        - torch.log((k - n_capped).to(x.dtype))
    z = torch.where(capped, torch.ones_like(x), torch.exp(x - nu))
    return z, torch.where(capped, torch.zeros_like(z), z)


def _binary_entropy_solution(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`z_i = \sigma(x_i - \nu)` with :math:`\sum z = k`, and :math:`h' = z (1 - z)`.

    :math:`\nu` is found by bisection on the bracket
    :math:`[\min x - \ell, \max x - \ell]`, :math:`\ell = \log(k / (d - k))`, where
    :math:`\sum_i \sigma(x_i - \nu) - k` changes sign, with a fixed number of steps
    (``_BISECTION_STEPS = 64``: the bracket shrinks to :math:`2^{-64}` of the range of ``x``,
    below float64 resolution). Autograd sees :math:`\nu = \nu_0 + (f(x) - f(x)_{\text{detached}})
    / f'`, equal to :math:`\nu_0` in value and with the implicit-function gradient
    :math:`\partial \nu / \partial x_i = \sigma'_i / \sum_j \sigma'_j`.
    """
    d = x.shape[-1]
    shift = math.log(k / (d - k))
    with torch.no_grad():
        xd = x.detach()
        lo = xd.amin(-1, keepdim=True) - shift  # sum >= k here
        hi = xd.amax(-1, keepdim=True) - shift  # sum <= k here
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2
            above = torch.sigmoid(xd - mid).sum(-1, keepdim=True) > k
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        nu0 = (lo + hi) / 2
        z0 = torch.sigmoid(xd - nu0)
        slope = (z0 * (1 - z0)).sum(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    if x.requires_grad:
        f = torch.sigmoid(x - nu0).sum(-1, keepdim=True)
        nu = nu0 + (f - f.detach()) / slope
    else:
        nu = nu0
    z = torch.sigmoid(x - nu)
    return z, z * (1 - z)


# --------------------------------------------------------------------------------------------
# the exponential family of k-subsets: forward-backward over (item, count)


def _prefix_tables(x: torch.Tensor, k: int) -> list[torch.Tensor]:
    r"""``tables[i][..., j]`` :math:`= \log \sum_{S \subseteq \{0..i-1\}, |S| = j}
    e^{\sum_{l \in S} x_l}` for ``j = 0..min(i, k)`` (only reachable counts: no ``-inf``)."""
    tables = [torch.zeros_like(x[..., :1])]
    for i in range(x.shape[-1]):
        prev, xi = tables[-1], x[..., i : i + 1]
        parts = [prev[..., :1]]
        if prev.shape[-1] > 1:
            parts.append(logaddexp(prev[..., 1:], prev[..., :-1] + xi))
        if prev.shape[-1] <= k:  # count i + 1 becomes reachable
            parts.append(prev[..., -1:] + xi)
        tables.append(torch.cat(parts, dim=-1))
    return tables


def _ratio_tables(x: torch.Tensor, g: torch.Tensor, tables: list[torch.Tensor]
                  ) -> list[torch.Tensor]:
    r"""``ratios[i][..., j]`` :math:`= \mathbb{E}[\sum_{l \in S} g_l]` under
    :math:`p(S) \propto e^{\sum_{l \in S} x_l}` over the subsets counted by ``tables[i][j]``:
    the tangent of the forward recursion, as a convex combination (stable)."""
    ratios = [torch.zeros_like(tables[0])]
    for i in range(x.shape[-1]):
        prev_t, new_t, prev_r = tables[i], tables[i + 1], ratios[-1]
        xi, gi = x[..., i : i + 1], g[..., i : i + 1]
        parts = [prev_r[..., :1]]
        m = prev_t.shape[-1]
        if m > 1:
            out = torch.exp(prev_t[..., 1:] - new_t[..., 1:m])  # item i left out
            into = torch.exp(prev_t[..., :-1] + xi - new_t[..., 1:m])  # item i taken
            parts.append(out * prev_r[..., 1:] + into * (prev_r[..., :-1] + gi))
        if new_t.shape[-1] > m:
            parts.append(prev_r[..., -1:] + gi)
        ratios.append(torch.cat(parts, dim=-1))
    return ratios


def _pairs(i: int, d: int, k: int) -> tuple[slice, slice]:
    """Slices of ``prefix[i]`` (counts ``j``) and ``suffix[d - 1 - i]`` (counts ``k - 1 - j``,
    ascending) that pair up to ``k - 1`` items besides item ``i``."""
    lo = max(0, k - 1 - min(d - 1 - i, k))
    hi = min(i, k - 1)
    return slice(lo, hi + 1), slice(k - 1 - hi, k - lo)


def _ef_marginals(x: torch.Tensor, k: int, prefix=None, suffix=None) -> torch.Tensor:
    r""":math:`P(i \in S) = \exp(x_i + \log \sum_j F_{i,j} B_{i+1,k-1-j} - \log Z)`, in
    ``x``'s dtype (the callers pass float64: see :class:`KSubset`)."""
    d = x.shape[-1]
    prefix = _prefix_tables(x, k) if prefix is None else prefix
    suffix = _prefix_tables(x.flip(-1), k) if suffix is None else suffix
    log_z = prefix[d][..., k]
    out = []
    for i in range(d):
        sp, ss = _pairs(i, d, k)
        pair = prefix[i][..., sp] + suffix[d - 1 - i][..., ss].flip(-1)
        out.append(x[..., i] + torch.logsumexp(pair, dim=-1) - log_z)
    return torch.exp(torch.stack(out, dim=-1))


class _EFMarginalsFn(torch.autograd.Function):
    """``forward(w, k, tau) = mu(w / tau)``; backward ``Cov(z) g / tau`` under
    ``p_{w / tau}``, in O(dk); both run in float64 and return ``w``'s dtype."""

    @staticmethod
    def forward(ctx, w, k, tau):
        with torch.no_grad():
            x64 = w.to(torch.float64) / tau
            prefix = _prefix_tables(x64, k)
            suffix = _prefix_tables(x64.flip(-1), k)
            mu = _ef_marginals(x64, k, prefix, suffix)
        ctx.save_for_backward(x64, mu, *prefix, *suffix)
        ctx.k, ctx.tau, ctx.dtype = k, tau, w.dtype
        return mu.to(w.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, mu, *tables = ctx.saved_tensors
        k, d, grad = ctx.k, x.shape[-1], grad.to(torch.float64)
        prefix, suffix = tables[: d + 1], tables[d + 1 :]
        r_prefix = _ratio_tables(x, grad, prefix)
        r_suffix = _ratio_tables(x.flip(-1), grad.flip(-1), suffix)
        mean = r_prefix[d][..., k]  # E <g, z>
        out = []
        for i in range(d):
            sp, ss = _pairs(i, d, k)
            weights = torch.softmax(prefix[i][..., sp] + suffix[d - 1 - i][..., ss].flip(-1), -1)
            rest = r_prefix[i][..., sp] + r_suffix[d - 1 - i][..., ss].flip(-1)
            out.append((weights * rest).sum(-1))  # E[<g, z> - g_i | z_i = 1]
        given = torch.stack(out, dim=-1) + grad
        return (mu * (given - mean.unsqueeze(-1)) / ctx.tau).to(ctx.dtype), None, None


# --------------------------------------------------------------------------------------------
# k-subsets


_SEPARABLE = {
    "euclidean": _capped_projection,
    "categorical_entropy": _capped_softmax,
    "binary_entropy": _binary_entropy_solution,
}


class KSubset(Structure):
    r"""0/1 vectors of length ``d`` with exactly ``k`` ones; their hull is the capped simplex.

    - ``argmax``: the indicator of the ``k`` largest weights (ties: the smaller index first);
    - ``relaxed(w, tau, reg=...)``: the argmax over :math:`\{0 \le z \le 1, \sum z = k\}` of
      :math:`\langle w, z \rangle - \tau R(z)`, with ``x = w / tau``:

      - ``"ef"``: :math:`R` the exponential family's negative entropy; the marginals
        :math:`\mu(x)` of :math:`p(S) \propto e^{\sum_{i \in S} x_i}`, by the forward-backward
        recursion in :math:`O(dk)`;
      - ``"euclidean"``: :math:`R = \frac12 \|z\|^2`;
        :math:`z_i = \operatorname{clip}(x_i - \nu, 0, 1)`, exact (sort-based);
      - ``"categorical_entropy"``: :math:`R = \sum z_i \log z_i`;
        :math:`z_i = \min(1, e^{x_i - \nu})`, exact (sort-based);
      - ``"binary_entropy"``: :math:`R = \sum z_i \log z_i + (1 - z_i) \log(1 - z_i)`;
        :math:`z_i = \sigma(x_i - \nu)`, :math:`\nu` by 64 bisection steps (to float
        resolution);

    - ``"custom"`` backward: the implicit-function Jacobian
      :math:`(D - \delta\delta^\top / \sum \delta) / \tau` for the separable regularizers, the
      covariance :math:`\operatorname{Cov}_{\mu(x)}(z) / \tau` for ``"ef"``;
    - ``log_partition``: :math:`\log \sum_{|S| = k} e^{\sum_{i \in S} w_i}` by the forward
      recursion; ``marginals``: :math:`P(i \in S)`, closed form from the forward and backward
      tables. These recursions (and ``"ef"``) run in float64 whatever the input dtype and return
      the input's: the closed form subtracts :math:`\log Z`, whose size grows with ``d`` and the
      spread of ``w``, and float32 would lose :math:`\approx 10^{-7} |\log Z|` to it;
    - ``enumerate``: all :math:`\binom{d}{k}` subsets.

    Args:
        d: number of items, at least 2.
        k: subset size, ``1 <= k <= d - 1``.

    Example:
        >>> import torch
        >>> from couplings.structures import KSubset
        >>> top2 = KSubset(4, 2)
        >>> w = torch.tensor([3.0, 0.0, 2.0, 1.5])
        >>> top2.argmax(w)
        tensor([1., 0., 1., 0.])
        >>> top2.relaxed(w, tau=1.0, reg="euclidean")
        tensor([1.0000, 0.0000, 0.7500, 0.2500])
        >>> mu = top2.marginals(w)
        >>> round(mu.sum().item(), 4), mu.argsort(descending=True)[:2].tolist()
        (2.0, [0, 2])
    """

    regularizers = ("ef", "euclidean", "categorical_entropy", "binary_entropy")

    def __init__(self, d: int, k: int):
        self.d = check_positive_int(d, "d")
        self.k = check_positive_int(k, "k")
        if not 1 <= self.k <= self.d - 1:
            raise ValueError(
                f"KSubset needs 1 <= k <= d - 1, got d={self.d}, k={self.k} (k = 0 and k = d "
                "have a single subset)."
            )

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.d,)

    def argmax(self, w: torch.Tensor) -> torch.Tensor:
        w = check_weights(w, self.event_shape)
        order = w.detach().sort(dim=-1, descending=True, stable=True).indices[..., : self.k]
        return torch.zeros_like(w.detach()).scatter_(-1, order, 1.0)

    def _relaxed(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        if reg == "ef":
            return _ef_marginals(w.to(torch.float64) / tau, self.k).to(w.dtype)
        return _SEPARABLE[reg](w / tau, self.k)[0]

    def _relaxed_custom(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        if reg == "ef":
            return _EFMarginalsFn.apply(w, self.k, tau)
        return _SeparableFn.apply(w / tau, lambda y: _SEPARABLE[reg](y, self.k))

    def log_partition(self, w: torch.Tensor) -> torch.Tensor:
        w = check_weights(w, self.event_shape)
        return _prefix_tables(w.to(torch.float64), self.k)[self.d][..., self.k].to(w.dtype)

    def marginals(self, w: torch.Tensor) -> torch.Tensor:
        w = check_weights(w, self.event_shape)
        return _ef_marginals(w.to(torch.float64), self.k).to(w.dtype)

    def enumerate(self) -> torch.Tensor:
        subsets = torch.tensor(list(itertools.combinations(range(self.d), self.k)))
        z = torch.zeros(len(subsets), self.d, dtype=torch.float64)
        return z.scatter_(-1, subsets, 1.0)

    def __repr__(self) -> str:
        return f"KSubset(d={self.d}, k={self.k})"
