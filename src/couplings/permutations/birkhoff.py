r"""Reparameterizations of the Birkhoff polytope: stick-breaking and rounding variational families.

Two ways of turning standard Gaussian noise into a random matrix on (or near) the Birkhoff
polytope :math:`\mathcal{B}_N` of ``N x N`` doubly-stochastic matrices, with a tractable density,
so that a relaxed ELBO :math:`\mathbb{E}_q[\log p(y, X) - \log q(X)]` can be maximized with
reparameterized gradients (Linderman et al., section 3):

* **stick-breaking** (:func:`stick_breaking`, :class:`StickBreakingFamily`): a bijection from the
  cube :math:`[0, 1]^{(N-1)^2}` onto :math:`\mathcal{B}_N`, filling the matrix in raster order,
  each entry a fraction :math:`\beta_{mn}` of its feasible range :math:`[\ell_{mn}, u_{mn}]`;
  logistic-normal :math:`\beta` gives a density on the polytope;
* **rounding** (:class:`RoundingFamily`): a Gaussian around a point :math:`\widetilde M` of the
  polytope (the Sinkhorn operator of a mean parameter), pulled toward its nearest permutation,
  :math:`X = \tau \Psi + (1 - \tau)\,\mathrm{round}(\Psi)`; a density on
  :math:`\mathbb{R}^{N \times N}`.

Both families are ``torch.nn.Module`` objects whose parameters are the variational parameters;
``rsample(n)`` returns samples and their log-densities, differentiable in the parameters, and
:func:`round_to_permutation` (the Hungarian algorithm, :func:`couplings.matching`) maps any
sample to its nearest permutation matrix.

References:
    Linderman, Mena, Cooper, Paninski and Cunningham, "Reparameterizing the Birkhoff Polytope
    for Variational Permutation Inference", AISTATS 2018, sections 3.1 (stick-breaking), 3.2
    (rounding) and the supplement (Jacobians, ELBO).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .._validation import as_tensor, check_finite, check_float, check_positive_int
from ..solvers.matching import matching
from .operators import sinkhorn_operator

__all__ = [
    "RoundingFamily",
    "StickBreakingFamily",
    "round_to_permutation",
    "stick_breaking",
    "stick_breaking_inverse",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _std_normal_log_prob(eps: torch.Tensor) -> torch.Tensor:
    return -0.5 * eps * eps - _HALF_LOG_2PI


def _check_square(x, name: str, *, min_size: int = 1) -> torch.Tensor:
    x = as_tensor(x, name)
    check_float(x, name)
    if x.dim() < 2 or x.shape[-1] != x.shape[-2] or x.shape[-1] < min_size:
        raise ValueError(
            f"{name} must have shape (..., n, n) with n >= {min_size}, got shape "
            f"{tuple(x.shape)}."
        )
    return x


def _check_temperature(tau, name: str = "tau") -> float:
    if isinstance(tau, bool) or not isinstance(tau, int | float):
        raise TypeError(f"{name} must be a number in (0, 1], got {tau!r}.")
    tau = float(tau)
    if not 0 < tau <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {tau!r}.")
    return tau


def _check_bounds(bounds, name: str) -> tuple[float, float]:
    if not (isinstance(bounds, Sequence) and len(bounds) == 2):
        raise TypeError(f"{name} must be a pair (low, high), got {bounds!r}.")
    low, high = (float(b) for b in bounds)
    if not (0 < low < high < math.inf):
        raise ValueError(f"{name} must satisfy 0 < low < high < inf, got {bounds!r}.")
    return low, high


def _check_batch_shape(batch_shape) -> tuple[int, ...]:
    if isinstance(batch_shape, int):
        batch_shape = (batch_shape,)
    batch_shape = tuple(batch_shape)
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_shape):
        raise ValueError(f"batch_shape must be a tuple of positive ints, got {batch_shape!r}.")
    return batch_shape


# --------------------------------------------------------------------------------------------
# the stick-breaking bijection


def stick_breaking(beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Map the cube :math:`[0, 1]^{(N-1) \times (N-1)}` onto the Birkhoff polytope.

    Entries are filled in raster order (row by row, left to right). With the row's remaining
    stick :math:`r = 1 - \sum_{k<n} x_{mk}` and the columns' remaining budgets
    :math:`c_j = 1 - \sum_{k<m} x_{kj}`,

    .. math::

        u_{mn} = \min(r, c_n), \qquad
        \ell_{mn} = \max\Big(0,\; r - \sum_{j > n} c_j\Big), \qquad
        x_{mn} = \ell_{mn} + \beta_{mn} (u_{mn} - \ell_{mn}),

    (the lower bound leaves no more stick than the later columns can take; it is the paper's
    :math:`1 - N + n - \sum_{k<n} x_{mk} + \sum_{k<m}\sum_{j>n} x_{kj}`). The last entry of each
    row takes the rest of the row's stick and the last row the rest of each column's. The map is
    feed-forward, so its Jacobian on the :math:`(N-1)^2` free entries is triangular and

    .. math::

        \log \Big|\det \frac{\partial x}{\partial \beta}\Big|
            = \sum_{m, n < N} \log (u_{mn} - \ell_{mn}).

    Binary :math:`\beta` gives permutation matrices. Where a range is empty
    (:math:`u_{mn} = \ell_{mn}`, a face of the polytope) its log is floored at
    ``log(finfo.tiny)`` rather than ``-inf``.

    Args:
        beta: fractions ``(..., N-1, N-1)`` in ``[0, 1]``, ``N >= 2``.

    Returns:
        ``(X, log_det)``: doubly-stochastic ``X`` ``(..., N, N)`` (non-negative, rows and columns
        summing to 1 up to round-off) and ``log_det`` ``(...)``, in the dtype of ``beta``.

    Raises:
        TypeError: for a non-floating ``beta``.
        ValueError: for a wrong shape, or entries outside ``[0, 1]`` or not finite.

    Example:
        >>> import torch
        >>> from couplings.permutations.birkhoff import stick_breaking
        >>> x, log_det = stick_breaking(torch.full((2, 2), 0.5, dtype=torch.float64))
        >>> x
        tensor([[0.5000, 0.2500, 0.2500],
                [0.2500, 0.3750, 0.3750],
                [0.2500, 0.3750, 0.3750]], dtype=torch.float64)
        >>> round(float(log_det), 4)  # log(1 * 0.5 * 0.5 * 0.75)
        -1.674

    References:
        Linderman et al., AISTATS 2018, section 3.1 and supplement ("Jacobian of the
        stick-breaking transformation").
    """
    beta = _check_square(beta, "beta")
    check_finite(beta, "beta")
    if bool(((beta < 0) | (beta > 1)).any()):
        raise ValueError(
            f"beta must lie in [0, 1], got entries in [{float(beta.min()):.3g}, "
            f"{float(beta.max()):.3g}]. Map real numbers with torch.sigmoid first."
        )
    k = beta.shape[-1]
    n = k + 1
    batch = beta.shape[:-2]
    tiny = torch.finfo(beta.dtype).tiny
    one = beta.new_ones(batch)
    col_left = [one] * n  # remaining budget of each column, (...)
    log_det = beta.new_zeros(batch)
    rows = []
    for m in range(k):
        row_left = one
        entries = []
        for j in range(k):
            right_capacity = torch.stack(col_left[j + 1 :], -1).sum(-1)  # (...)
            upper = torch.minimum(row_left, col_left[j])
            lower = (row_left - right_capacity).clamp_min(0)
            span = (upper - lower).clamp_min(0)
            x = lower + beta[..., m, j] * span
            log_det = log_det + torch.log(span.clamp_min(tiny))
            entries.append(x)
            row_left = row_left - x
            col_left[j] = col_left[j] - x
        last = row_left.clamp_min(0)  # the rest of the row's stick
        entries.append(last)
        col_left[k] = col_left[k] - last
        rows.append(torch.stack(entries, -1))  # (..., n)
    rows.append(torch.stack([c.clamp_min(0) for c in col_left], -1))  # the last row
    return torch.stack(rows, -2), log_det  # (..., n, n), (...)


def stick_breaking_inverse(x: torch.Tensor) -> torch.Tensor:
    r"""The fractions :math:`\beta` ``(..., N-1, N-1)`` of doubly-stochastic ``X`` ``(..., N, N)``.

    :math:`\beta_{mn} = (x_{mn} - \ell_{mn}) / (u_{mn} - \ell_{mn})`, the bounds computed from the
    entries before ``(m, n)`` as in :func:`stick_breaking`, clamped to ``[0, 1]``. Where the
    range is empty the entry is forced and any fraction gives the same ``X``; 0 is returned.
    ``X`` is not checked to be doubly stochastic.

    Example:
        >>> import torch
        >>> from couplings.permutations.birkhoff import stick_breaking, stick_breaking_inverse
        >>> beta = torch.tensor([[0.2, 0.7], [0.4, 0.9]], dtype=torch.float64)
        >>> bool(torch.allclose(stick_breaking_inverse(stick_breaking(beta)[0]), beta))
        True
    """
    x = _check_square(x, "X", min_size=2)
    check_finite(x, "X")
    n = x.shape[-1]
    k = n - 1
    batch = x.shape[:-2]
    one = x.new_ones(batch)
    betas = []
    for m in range(k):
        row_left = one
        col_left = [one - x[..., :m, j].sum(-1) for j in range(n)]
        row = []
        for j in range(k):
            right_capacity = torch.stack(col_left[j + 1 :], -1).sum(-1)
            upper = torch.minimum(row_left, col_left[j])
            lower = (row_left - right_capacity).clamp_min(0)
            span = upper - lower
            safe = torch.where(span > 0, span, torch.ones_like(span))
            frac = torch.where(span > 0, (x[..., m, j] - lower) / safe, torch.zeros_like(span))
            row.append(frac.clamp(0, 1))
            row_left = row_left - x[..., m, j]
        betas.append(torch.stack(row, -1))
    return torch.stack(betas, -2)


def round_to_permutation(x: torch.Tensor) -> torch.Tensor:
    r"""The nearest permutation matrix to each ``X`` ``(..., N, N)``, by the Hungarian algorithm.

    :math:`\mathrm{round}(X) = \operatorname{argmin}_P \|X - P\|_F^2
    = \operatorname{argmax}_P \langle P, X\rangle` (every permutation matrix has the same norm),
    computed by :func:`couplings.matching`. Piecewise constant: no gradient flows through it.

    Returns:
        0/1 matrices ``(..., N, N)`` in the dtype and on the device of ``x``.

    Example:
        >>> import torch
        >>> from couplings.permutations.birkhoff import round_to_permutation
        >>> round_to_permutation(torch.tensor([[0.2, 0.7], [0.6, 0.4]]))
        tensor([[0., 1.],
                [1., 0.]])
    """
    x = _check_square(x, "X")
    n = x.shape[-1]
    flat = x.detach().reshape(-1, n, n)
    return matching(flat).matrix.reshape(x.shape)


def _normal_noise(shape, like: torch.Tensor, generator: torch.Generator | None):
    return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)


def _bounded(logit: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``low + (high - low) * sigmoid(logit)``, the paper's constrained scale parameters."""
    return low + (high - low) * torch.sigmoid(logit)


def _bounded_logit(value: float, low: float, high: float) -> float:
    p = (value - low) / (high - low)
    if not 0 < p < 1:
        raise ValueError(f"an initial scale must lie strictly inside ({low}, {high}), got {value}.")
    return math.log(p / (1 - p))


# --------------------------------------------------------------------------------------------
# variational families


class StickBreakingFamily(nn.Module):
    r"""Logistic-normal stick-breaking distribution on the Birkhoff polytope.

    .. math::

        \psi_{mn} = \mu_{mn} + \nu_{mn} \varepsilon_{mn},\quad
        \varepsilon_{mn} \sim \mathcal N(0, 1),\quad
        \beta_{mn} = \sigma(\psi_{mn} / \tau),\quad
        X = \mathrm{SB}(\beta) \quad (m, n < N),

    with :func:`stick_breaking` as :math:`\mathrm{SB}`. The density of :math:`X` (with respect
    to Lebesgue measure on its :math:`(N-1)^2` free entries) is

    .. math::

        \log q(X) = \sum_{mn} \big[\log \mathcal N(\psi_{mn}; \mu_{mn}, \nu_{mn}^2)
            - \log(u_{mn} - \ell_{mn}) + \log \tau - \log \sigma(\psi_{mn}/\tau)
            - \log \sigma(-\psi_{mn}/\tau)\big].

    As :math:`\tau \to 0` the samples concentrate on permutation matrices. The variational
    parameters are ``mean`` :math:`\mu` and ``scale_logit``, with
    :math:`\nu = \nu_{lo} + (\nu_{hi} - \nu_{lo})\,\sigma(\text{scale\_logit})` kept in
    ``scale_bounds`` (the paper uses ``[1e-8, 1]``).

    Args:
        n: size ``N >= 2`` of the permutations.
        batch_shape: independent distributions, e.g. ``(B,)`` for ``B`` problems fitted at once.
        tau: temperature in ``(0, 1]``.
        scale_bounds: ``(low, high)`` bounds of :math:`\nu`.
        init_scale: initial :math:`\nu` (strictly inside the bounds).
        dtype, device: of the parameters (default: torch's default dtype, CPU).

    Example:
        >>> import torch
        >>> from couplings.permutations.birkhoff import StickBreakingFamily
        >>> q = StickBreakingFamily(4, batch_shape=(3,), tau=0.5, dtype=torch.float64)
        >>> x, log_q = q.rsample(8, generator=torch.Generator().manual_seed(0))
        >>> x.shape, log_q.shape
        (torch.Size([8, 3, 4, 4]), torch.Size([8, 3]))
        >>> bool(torch.allclose(x.sum(-1), torch.ones(8, 3, 4, dtype=torch.float64)))
        True
        >>> bool(torch.allclose(q.log_prob(x), log_q))
        True
        >>> log_q.sum().backward()  # gradients reach the variational parameters
        >>> q.mean.grad.shape
        torch.Size([3, 3, 3])

    References:
        Linderman et al., AISTATS 2018, section 3.1 and supplement.
    """

    def __init__(
        self,
        n: int,
        *,
        batch_shape: int | tuple[int, ...] = (),
        tau: float = 1.0,
        scale_bounds: tuple[float, float] = (1e-8, 1.0),
        init_scale: float = 0.5,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        n = check_positive_int(n, "n")
        if n < 2:
            raise ValueError(f"n must be >= 2 for stick-breaking, got {n}.")
        self.n = n
        self.batch_shape = _check_batch_shape(batch_shape)
        self.tau = _check_temperature(tau)
        self.scale_bounds = _check_bounds(scale_bounds, "scale_bounds")
        dtype = dtype or torch.get_default_dtype()
        shape = (*self.batch_shape, n - 1, n - 1)
        self.mean = nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))
        logit = _bounded_logit(float(init_scale), *self.scale_bounds)
        self.scale_logit = nn.Parameter(torch.full(shape, logit, dtype=dtype, device=device))

    @property
    def scale(self) -> torch.Tensor:
        r""":math:`\nu` ``(*batch, N-1, N-1)``, the standard deviations of :math:`\psi`."""
        return _bounded(self.scale_logit, *self.scale_bounds)

    def _log_q(self, eps, psi, log_det_sb):
        z = psi / self.tau
        log_det_logistic = (
            nn.functional.logsigmoid(z) + nn.functional.logsigmoid(-z) - math.log(self.tau)
        ).sum((-2, -1))
        log_psi = (_std_normal_log_prob(eps) - torch.log(self.scale)).sum((-2, -1))
        return log_psi - log_det_logistic - log_det_sb

    def rsample(self, n_samples: int, *, generator: torch.Generator | None = None):
        """Draw ``n_samples`` reparameterized samples.

        Returns:
            ``(X, log_q)``: doubly-stochastic ``X`` ``(n_samples, *batch, N, N)`` and its
            log-density ``(n_samples, *batch)``, both differentiable in ``mean`` and
            ``scale_logit``.
        """
        n_samples = check_positive_int(n_samples, "n_samples")
        eps = _normal_noise((n_samples, *self.mean.shape), self.mean, generator)
        psi = self.mean + self.scale * eps  # (S, *batch, N-1, N-1)
        x, log_det_sb = stick_breaking(torch.sigmoid(psi / self.tau))
        return x, self._log_q(eps, psi, log_det_sb)

    def forward(self, n_samples: int, *, generator: torch.Generator | None = None):
        """Same as :meth:`rsample` (so that ``torch.func.functional_call`` can sample)."""
        return self.rsample(n_samples, generator=generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of doubly-stochastic matrices ``X`` ``(..., *batch, N, N)``.

        ``-inf`` on the boundary of the polytope (a fraction of 0 or 1) and for matrices that
        are not doubly stochastic (tolerance ``1e-6`` in float64, ``1e-4`` in float32).
        """
        x = _check_square(x, "X", min_size=2)
        if x.shape[-1] != self.n:
            raise ValueError(f"X must be (..., {self.n}, {self.n}), got {tuple(x.shape)}.")
        tol = 1e-6 if x.dtype == torch.float64 else 1e-4
        inside = (
            ((x.sum(-1) - 1).abs() <= tol).all(-1)
            & ((x.sum(-2) - 1).abs() <= tol).all(-1)
            & (x >= 0).all(-1).all(-1)
        )
        beta = stick_breaking_inverse(x)
        interior = ((beta > 0) & (beta < 1)).all(-1).all(-1) & inside
        beta = torch.where(interior[..., None, None], beta, torch.full_like(beta, 0.5))
        psi = self.tau * torch.logit(beta)
        eps = (psi - self.mean) / self.scale
        _, log_det_sb = stick_breaking(beta)
        log_q = self._log_q(eps, psi, log_det_sb)
        return torch.where(interior, log_q, torch.full_like(log_q, -math.inf))

    @staticmethod
    def round_to_permutation(x: torch.Tensor) -> torch.Tensor:
        """Nearest permutation matrices (Hungarian), see :func:`round_to_permutation`."""
        return round_to_permutation(x)


class RoundingFamily(nn.Module):
    r"""Gaussian noise around a point of the Birkhoff polytope, rounded toward a permutation.

    With :math:`\widetilde M = S(\log M)` the Sinkhorn operator (``sinkhorn_iters`` rounds, the
    paper's 10) of the positive mean parameter :math:`M`:

    .. math::

        \Psi = \widetilde M + V \odot \varepsilon,\quad \varepsilon_{mn} \sim \mathcal N(0, 1),
        \qquad X = \tau \Psi + (1 - \tau)\,\mathrm{round}(\Psi),

    where :math:`\mathrm{round}` is the nearest permutation matrix (:func:`round_to_permutation`)
    and :math:`\tau \in (0, 1]`. Since :math:`\mathrm{round}(X) = \mathrm{round}(\Psi)`, the map
    inverts as :math:`\varepsilon = (X/\tau - \frac{1-\tau}{\tau}\mathrm{round}(X) - \widetilde M)
    \oslash V`, and the density on :math:`\mathbb{R}^{N \times N}` is

    .. math::

        q_\tau(X) = \prod_{mn} \frac{1}{\tau V_{mn}} \mathcal N(\varepsilon_{mn}; 0, 1)
            \;\mathbb{1}[X \in \mathcal X_\tau],

    with :math:`\mathcal X_\tau` the image of the map (it excludes a neighbourhood of the
    boundaries between Voronoi cells of the permutations; :math:`X \in \mathcal X_\tau` iff
    :math:`\mathrm{round}(\Psi) = \mathrm{round}(X)` for the inverted :math:`\Psi`). No gradient
    flows through :math:`\mathrm{round}` (piecewise constant). The variational parameters are
    ``log_mean`` (:math:`\log M`) and ``scale_logit``, with
    :math:`V = V_{lo} + (V_{hi} - V_{lo})\,\sigma(\text{scale\_logit})` in ``scale_bounds`` (the
    paper's ``[0.1, 0.5]``).

    Args:
        n: size ``N`` of the permutations.
        batch_shape: independent distributions, e.g. ``(B,)``.
        tau: temperature in ``(0, 1]`` (``1``: a plain Gaussian; toward ``0``: permutations).
        scale_bounds: ``(low, high)`` bounds of the standard deviations :math:`V`.
        init_scale: initial :math:`V` (strictly inside the bounds).
        sinkhorn_iters: Sinkhorn rounds for :math:`\widetilde M`.
        dtype, device: of the parameters.

    Example:
        >>> import torch
        >>> from couplings.permutations.birkhoff import RoundingFamily
        >>> q = RoundingFamily(4, batch_shape=(3,), tau=0.3, dtype=torch.float64)
        >>> x, log_q = q.rsample(8, generator=torch.Generator().manual_seed(0))
        >>> x.shape, log_q.shape
        (torch.Size([8, 3, 4, 4]), torch.Size([8, 3]))
        >>> bool(torch.allclose(q.log_prob(x), log_q))
        True
        >>> p = q.round_to_permutation(x)
        >>> bool((p.sum(-1) == 1).all() and (p.sum(-2) == 1).all())
        True

    References:
        Linderman et al., AISTATS 2018, section 3.2 and supplement ("Jacobian of the rounding
        transformation", "Experiment details").
    """

    def __init__(
        self,
        n: int,
        *,
        batch_shape: int | tuple[int, ...] = (),
        tau: float = 0.5,
        scale_bounds: tuple[float, float] = (0.1, 0.5),
        init_scale: float = 0.3,
        sinkhorn_iters: int = 10,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        self.n = check_positive_int(n, "n")
        self.batch_shape = _check_batch_shape(batch_shape)
        self.tau = _check_temperature(tau)
        self.scale_bounds = _check_bounds(scale_bounds, "scale_bounds")
        self.sinkhorn_iters = check_positive_int(sinkhorn_iters, "sinkhorn_iters")
        dtype = dtype or torch.get_default_dtype()
        shape = (*self.batch_shape, self.n, self.n)
        self.log_mean = nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))
        logit = _bounded_logit(float(init_scale), *self.scale_bounds)
        self.scale_logit = nn.Parameter(torch.full(shape, logit, dtype=dtype, device=device))

    @property
    def scale(self) -> torch.Tensor:
        r""":math:`V` ``(*batch, N, N)``, the standard deviations of :math:`\Psi`."""
        return _bounded(self.scale_logit, *self.scale_bounds)

    def mean_matrix(self) -> torch.Tensor:
        r""":math:`\widetilde M` ``(*batch, N, N)``: the Sinkhorn operator of ``log_mean``."""
        n = self.n
        m = sinkhorn_operator(self.log_mean.reshape(-1, n, n), 1.0, self.sinkhorn_iters)
        return m.reshape(self.log_mean.shape)

    def _log_q(self, eps: torch.Tensor) -> torch.Tensor:
        log_jac = self.n * self.n * math.log(self.tau)
        return (_std_normal_log_prob(eps) - torch.log(self.scale)).sum((-2, -1)) - log_jac

    def rsample(self, n_samples: int, *, generator: torch.Generator | None = None):
        """Draw ``n_samples`` reparameterized samples.

        Returns:
            ``(X, log_q)``: ``X`` ``(n_samples, *batch, N, N)`` and its log-density
            ``(n_samples, *batch)``, both differentiable in ``log_mean`` and ``scale_logit``
            (the rounded permutation is held constant).
        """
        n_samples = check_positive_int(n_samples, "n_samples")
        eps = _normal_noise((n_samples, *self.log_mean.shape), self.log_mean, generator)
        psi = self.mean_matrix() + self.scale * eps  # (S, *batch, N, N)
        rounded = round_to_permutation(psi)
        x = self.tau * psi + (1 - self.tau) * rounded
        return x, self._log_q(eps)

    def forward(self, n_samples: int, *, generator: torch.Generator | None = None):
        """Same as :meth:`rsample` (so that ``torch.func.functional_call`` can sample)."""
        return self.rsample(n_samples, generator=generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of matrices ``X`` ``(..., *batch, N, N)``; ``-inf`` outside the support."""
        x = _check_square(x, "X")
        if x.shape[-1] != self.n:
            raise ValueError(f"X must be (..., {self.n}, {self.n}), got {tuple(x.shape)}.")
        check_finite(x, "X")
        rounded = round_to_permutation(x)
        psi = (x - (1 - self.tau) * rounded) / self.tau
        in_support = (round_to_permutation(psi) == rounded).all(-1).all(-1)
        eps = (psi - self.mean_matrix()) / self.scale
        log_q = self._log_q(eps)
        return torch.where(in_support, log_q, torch.full_like(log_q, -math.inf))

    @staticmethod
    def round_to_permutation(x: torch.Tensor) -> torch.Tensor:
        """Nearest permutation matrices (Hungarian), see :func:`round_to_permutation`."""
        return round_to_permutation(x)
