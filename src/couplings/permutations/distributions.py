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

from .._validation import check_positive_int
from ..structures.permutation import Permutation
from ..structures.tricks import StochasticSoftmaxTrick
from .operators import check_scores

__all__ = ["GumbelSinkhorn"]


class GumbelSinkhorn(StochasticSoftmaxTrick):
    r"""Gumbel-Sinkhorn distribution over doubly-stochastic matrices.

    Args:
        log_alpha: scores ``(*batch, n, n)``.
        tau: temperature of the Sinkhorn operator.
        noise_factor: scale of the Gumbel noise (0 gives the deterministic operator).
        n_iter: Sinkhorn rounds per sample.
        straight_through: ``rsample`` returns the hard permutation (Gumbel-matching) in the
            forward pass and the relaxed sample's gradient in the backward pass.

    It is the stochastic softmax trick of :class:`couplings.structures.Permutation` with Gumbel
    noise (:class:`couplings.structures.StochasticSoftmaxTrick`), under the paper's names.

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
        if isinstance(noise_factor, bool) or not (
            isinstance(noise_factor, Real) and math.isfinite(noise_factor) and noise_factor >= 0
        ):
            raise ValueError(f"noise_factor must be a number >= 0, got {noise_factor!r}.")
        self.n_iter = check_positive_int(n_iter, "n_iter")
        super().__init__(
            Permutation(log_alpha.shape[-1], self.n_iter), log_alpha, tau,
            noise_scale=float(noise_factor), straight_through=straight_through,
            validate_args=validate_args,
        )

    @property
    def log_alpha(self) -> torch.Tensor:
        """The scores ``(*batch, n, n)``."""
        return self.theta

    @property
    def noise_factor(self) -> float:
        """Scale of the Gumbel noise."""
        return self.noise_scale
