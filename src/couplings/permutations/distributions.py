r"""Gumbel-Sinkhorn and Gumbel-matching: distributions over (relaxed) permutations.

Perturbing the scores with i.i.d. Gumbel noise :math:`G` and taking the matching gives a random
permutation :math:`M(X + G)` (Gumbel-matching); replacing the matching by the Sinkhorn operator
gives its relaxation, a random doubly-stochastic matrix :math:`S((X + G) / \tau)`
(Gumbel-Sinkhorn), which tends to the former as :math:`\tau \to 0` and is differentiable in
:math:`X` (the reparameterization trick).

References:
    Mena, Belanger, Linderman and Snoek, "Learning Latent Permutations with Gumbel-Sinkhorn
    Networks", ICLR 2018.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch.distributions import Distribution, constraints

from .._validation import check_positive_int, check_positive_scalar
from ..solvers.matching import matching
from .operators import check_scores, gumbel_noise, sinkhorn_operator

__all__ = ["GumbelSinkhorn"]


class GumbelSinkhorn(Distribution):
    r"""Gumbel-Sinkhorn distribution over doubly-stochastic matrices.

    Args:
        log_alpha: scores ``(*batch, n, n)``.
        tau: temperature of the Sinkhorn operator.
        noise_factor: scale of the Gumbel noise (0 gives the deterministic operator).
        n_iter: Sinkhorn rounds per sample.
        straight_through: ``rsample`` returns the hard permutation (Gumbel-matching) in the
            forward pass and the relaxed sample's gradient in the backward pass.

    ``rsample(sample_shape)`` gives relaxed samples ``(*sample_shape, *batch, n, n)`` with
    gradients to ``log_alpha``; ``sample`` gives hard permutation matrices (Hungarian on the same
    noisy scores), without gradients. ``log_prob`` is not available: the Gumbel-matching law has
    no tractable density.

    Example:
        >>> import torch
        >>> from couplings.permutations import GumbelSinkhorn
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> log_alpha = torch.randn(4, 4, requires_grad=True)
        >>> dist = GumbelSinkhorn(log_alpha, tau=0.5)
        >>> soft = dist.rsample((8,))
        >>> soft.shape, bool(torch.allclose(soft.sum(-2), torch.ones(8, 4)))
        (torch.Size([8, 4, 4]), True)
        >>> hard = dist.sample()
        >>> sorted(hard.sum(-1).tolist()), bool(((hard == 0) | (hard == 1)).all())
        ([1.0, 1.0, 1.0, 1.0], True)
    """

    arg_constraints = {"log_alpha": constraints.real}
    has_rsample = True

    def __init__(
        self,
        log_alpha: torch.Tensor,
        tau: float = 1.0,
        noise_factor: float = 1.0,
        n_iter: int = 20,
        straight_through: bool = False,
        validate_args: bool | None = None,
    ):
        check_scores(log_alpha.reshape(-1, *log_alpha.shape[-2:]) if log_alpha.dim() > 3
                     else log_alpha)
        self.log_alpha = log_alpha
        self.tau = check_positive_scalar(tau, "tau")
        if isinstance(noise_factor, bool) or not (
            isinstance(noise_factor, Real) and math.isfinite(noise_factor) and noise_factor >= 0
        ):
            raise ValueError(f"noise_factor must be a number >= 0, got {noise_factor!r}.")
        self.noise_factor = float(noise_factor)
        self.n_iter = check_positive_int(n_iter, "n_iter")
        self.straight_through = bool(straight_through)
        super().__init__(
            batch_shape=log_alpha.shape[:-2], event_shape=log_alpha.shape[-2:],
            validate_args=validate_args,
        )

    def _noisy_scores(self, sample_shape, generator) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)  # (*sample, *batch, n, n)
        scores = self.log_alpha.expand(shape)
        if self.noise_factor == 0:
            return scores
        noise = gumbel_noise(shape, like=self.log_alpha, generator=generator)
        return scores + self.noise_factor * noise

    @staticmethod
    def _hard(noisy: torch.Tensor) -> torch.Tensor:
        n = noisy.shape[-1]
        flat = noisy.detach().reshape(-1, n, n)
        return matching(flat).matrix.reshape(noisy.shape)

    def rsample(self, sample_shape=(), *, generator: torch.Generator | None = None):
        """Relaxed samples ``S((X + G) / tau)``, ``(*sample_shape, *batch, n, n)``; the noise
        comes from ``generator`` when given (else the global torch RNG)."""
        noisy = self._noisy_scores(sample_shape, generator)
        n = noisy.shape[-1]
        soft = sinkhorn_operator(noisy.reshape(-1, n, n), self.tau, self.n_iter)
        soft = soft.reshape(noisy.shape)
        if self.straight_through:
            return self._hard(noisy) + soft - soft.detach()
        return soft

    def sample(self, sample_shape=(), *, generator: torch.Generator | None = None):
        """Hard samples ``M(X + G)`` (Gumbel-matching), permutation matrices, no gradient."""
        with torch.no_grad():
            return self._hard(self._noisy_scores(sample_shape, generator))

    @property
    def mode(self) -> torch.Tensor:
        """The most likely permutation, the matching ``M(X)``."""
        return self._hard(self.log_alpha)
