r"""The Mallows model over permutations, with the Spearman footrule distance, exact for small n.

.. math::

    p_{\theta, \phi_0}(\phi) = \frac{1}{Z(\theta)} \exp\big(-\theta\, d(\phi, \phi_0)\big),
    \qquad d(\phi, \phi_0) = \sum_{i=1}^n |\phi(i) - \phi_0(i)|,

a unimodal exponential family around the centre :math:`\phi_0` with concentration
:math:`\theta \ge 0` (:math:`\theta = 0` is uniform). The footrule normalizer has no closed form,
so this implementation is *exact by enumeration*: it lists all :math:`n!` permutations, which it
allows for :math:`n \le 8` (40320 permutations); larger ``n`` is refused rather than
approximated. Sampling draws from the normalized weights (no MCMC).

Permutations are index vectors ``(..., n)`` (``phi[i]`` is where item ``i`` goes, as
:attr:`couplings.Matching.indices`); :func:`all_permutations` lists them in lexicographic order
and :func:`permutation_rank` gives a permutation's position in that list.

References:
    Mallows, "Non-null ranking models. I", Biometrika 44, 1957. Diaconis, "Group
    Representations in Probability and Statistics", 1988, chapter 6 (the footrule). Linderman
    et al., "Reparameterizing the Birkhoff Polytope for Variational Permutation Inference",
    AISTATS 2018, section 4 (Mallows as the baseline, centred at the MAP).
"""

from __future__ import annotations

import functools
import itertools
import math

import torch

from .._validation import check_positive_int

__all__ = ["MAX_EXACT_N", "Mallows", "all_permutations", "footrule", "permutation_rank"]

MAX_EXACT_N = 8
"""Largest ``n`` for which :class:`Mallows` enumerates the permutations (8! = 40320)."""


def _check_n(n: int) -> int:
    n = check_positive_int(n, "n")
    if n > MAX_EXACT_N:
        raise ValueError(
            f"exact enumeration of permutations is limited to n <= {MAX_EXACT_N} "
            f"({math.factorial(MAX_EXACT_N)} permutations); got n = {n} ({math.factorial(n)} "
            "permutations). Use an approximate sampler (e.g. MCMC) for larger n."
        )
    return n


@functools.lru_cache(maxsize=MAX_EXACT_N)
def _all_permutations(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.int64).reshape(
        math.factorial(n), n
    )


def all_permutations(n: int) -> torch.Tensor:
    """All ``n!`` permutations of ``0..n-1`` as index vectors ``(n!, n)``, in lexicographic order.

    Limited to ``n <= 8`` (:data:`MAX_EXACT_N`).

    Example:
        >>> from couplings.permutations.mallows import all_permutations
        >>> all_permutations(3)
        tensor([[0, 1, 2],
                [0, 2, 1],
                [1, 0, 2],
                [1, 2, 0],
                [2, 0, 1],
                [2, 1, 0]])
    """
    return _all_permutations(_check_n(n)).clone()


def _check_perms(perms: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(perms, torch.Tensor) or perms.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor of index vectors, got {perms!r:.60}.")
    if perms.dim() < 1 or perms.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., n) with n >= 1, got {tuple(perms.shape)}.")
    n = perms.shape[-1]
    expected = torch.arange(n, device=perms.device).expand_as(perms)
    if not torch.equal(torch.sort(perms, dim=-1).values, expected):
        raise ValueError(f"{name} must hold permutations of 0..{n - 1} along its last axis.")
    return perms.long()


def permutation_rank(perms: torch.Tensor) -> torch.Tensor:
    r"""Position of each permutation ``(..., n)`` in :func:`all_permutations` ``(...)``.

    The Lehmer code: :math:`\mathrm{rank}(\phi) = \sum_i c_i\, (n-1-i)!` with
    :math:`c_i = \#\{j > i : \phi(j) < \phi(i)\}`. Works for any ``n <= 20`` (int64).

    Example:
        >>> import torch
        >>> from couplings.permutations.mallows import all_permutations, permutation_rank
        >>> permutation_rank(all_permutations(3))
        tensor([0, 1, 2, 3, 4, 5])
    """
    perms = _check_perms(perms, "perms")
    n = perms.shape[-1]
    if n > 20:
        raise ValueError(f"permutation_rank needs n <= 20 (n! fits in int64), got n = {n}.")
    smaller_later = (perms.unsqueeze(-2) < perms.unsqueeze(-1)).triu(1).sum(-1)  # (..., n)
    weights = torch.tensor(
        [math.factorial(n - 1 - i) for i in range(n)], dtype=torch.int64, device=perms.device
    )
    return (smaller_later * weights).sum(-1)


def footrule(phi: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    r"""Spearman's footrule :math:`\sum_i |\phi(i) - \phi_0(i)|` ``(...)``, broadcasting.

    Example:
        >>> import torch
        >>> from couplings.permutations.mallows import footrule
        >>> footrule(torch.tensor([2, 1, 0]), torch.tensor([0, 1, 2]))
        tensor(4)
    """
    phi, center = _check_perms(phi, "phi"), _check_perms(center, "center")
    if phi.shape[-1] != center.shape[-1]:
        raise ValueError(
            f"phi and center must permute the same n, got {phi.shape[-1]} and {center.shape[-1]}."
        )
    return (phi - center).abs().sum(-1)


class Mallows:
    r"""Mallows distribution with the footrule distance, exact by enumeration (``n <= 8``).

    :math:`p(\phi) = \exp(-\theta\, d(\phi, \phi_0)) / Z(\theta)`, :math:`d` the Spearman
    footrule. :math:`Z` is the sum over all :math:`n!` permutations, so ``log_prob``, ``probs``
    and ``sample`` are exact (sampling draws from the normalized weights, not by MCMC).

    Args:
        center: the centre :math:`\phi_0`, an index vector ``(n,)``, ``n <= 8``.
        theta: concentration :math:`\theta \ge 0` (a number).
        dtype: floating dtype of the probabilities (default float64).

    Raises:
        TypeError: for a non-integer ``center`` or a non-numeric ``theta``.
        ValueError: for ``n > 8``, a ``center`` that is not a permutation, or ``theta < 0``.

    Example:
        >>> import torch
        >>> from couplings.permutations.mallows import Mallows
        >>> dist = Mallows(torch.tensor([0, 1, 2]), theta=1.0)
        >>> round(float(dist.probs().sum()), 12)
        1.0
        >>> bool(dist.log_prob(torch.tensor([0, 1, 2])) > dist.log_prob(torch.tensor([2, 1, 0])))
        True
        >>> dist.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 3])

    References:
        Mallows, Biometrika 1957; Diaconis 1988, chapter 6; Linderman et al., AISTATS 2018,
        section 4.
    """

    def __init__(self, center: torch.Tensor, theta: float, *, dtype: torch.dtype = torch.float64):
        center = _check_perms(center, "center")
        if center.dim() != 1:
            raise ValueError(f"center must be one index vector (n,), got {tuple(center.shape)}.")
        self.n = _check_n(center.shape[-1])
        if isinstance(theta, bool) or not isinstance(theta, int | float):
            raise TypeError(f"theta must be a number >= 0, got {theta!r}.")
        if not (math.isfinite(theta) and theta >= 0):
            raise ValueError(f"theta must be a finite number >= 0, got {theta!r}.")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}.")
        self.center = center
        self.theta = float(theta)
        self.dtype = dtype
        support = _all_permutations(self.n).to(center.device)
        logits = -self.theta * (support - center).abs().sum(-1).to(dtype)  # (n!,)
        self._log_normalizer = torch.logsumexp(logits, 0)
        self._log_probs = logits - self._log_normalizer

    def enumerate_support(self) -> torch.Tensor:
        """All permutations ``(n!, n)``, in the order of :meth:`probs`."""
        return _all_permutations(self.n).to(self.center.device).clone()

    @property
    def log_normalizer(self) -> torch.Tensor:
        r""":math:`\log Z(\theta) = \log \sum_\phi e^{-\theta d(\phi, \phi_0)}`."""
        return self._log_normalizer

    def probs(self) -> torch.Tensor:
        """Probabilities ``(n!,)`` of :meth:`enumerate_support`'s permutations; they sum to 1."""
        return self._log_probs.exp()

    def log_prob(self, phi: torch.Tensor) -> torch.Tensor:
        """Exact log-probabilities of permutations ``phi`` ``(..., n)``, shape ``(...)``."""
        d = footrule(phi, self.center)
        return -self.theta * d.to(self.dtype) - self._log_normalizer

    def sample(self, n_samples: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n_samples`` exact independent draws, index vectors ``(n_samples, n)``."""
        n_samples = check_positive_int(n_samples, "n_samples")
        probs = self.probs().to("cpu", torch.float64)
        idx = torch.multinomial(probs, n_samples, replacement=True, generator=generator)
        return _all_permutations(self.n)[idx].to(self.center.device)
