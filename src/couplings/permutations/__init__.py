"""Latent permutations: the Sinkhorn operator, Gumbel-Sinkhorn, matchings and helpers.

In DESIGN terms the Birkhoff polytope is the transport polytope with uniform marginals: its
exact argmax is the Hungarian matching and its entropic one the Sinkhorn operator, both taken
from the library's solvers.
"""

from ..solvers.matching import Matching, matching
from .birkhoff import (
    RoundingFamily,
    StickBreakingFamily,
    round_to_permutation,
    stick_breaking,
    stick_breaking_inverse,
)
from .distributions import GumbelSinkhorn
from .mallows import Mallows, all_permutations, footrule
from .network import SinkhornNetwork, soft_unscramble, unscramble_loss
from .operators import gumbel_noise, sinkhorn_operator
from .utils import (
    apply_permutation,
    invert_permutation,
    kendall_tau,
    random_permutation,
    to_indices,
    to_matrix,
)

__all__ = [
    "GumbelSinkhorn",
    "Mallows",
    "RoundingFamily",
    "StickBreakingFamily",
    "all_permutations",
    "footrule",
    "round_to_permutation",
    "stick_breaking",
    "stick_breaking_inverse",
    "Matching",
    "SinkhornNetwork",
    "apply_permutation",
    "gumbel_noise",
    "invert_permutation",
    "kendall_tau",
    "matching",
    "random_permutation",
    "sinkhorn_operator",
    "soft_unscramble",
    "to_indices",
    "to_matrix",
    "unscramble_loss",
]
