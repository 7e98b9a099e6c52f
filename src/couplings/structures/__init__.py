"""Structures, stochastic softmax tricks and gradient estimators.

A :class:`Structure` is a finite set of 0/1 vectors with its exact argmax and regularized
argmaxes over its convex hull (DESIGN: regularized linear programs over polytopes): one-hot
vectors (:class:`Categorical`), k-subsets (:class:`KSubset`), k-subsets of a chain with
correlations between neighbours (:class:`ChainKSubset`), spanning trees
(:class:`SpanningTree`), arborescences (:class:`Arborescence`) and permutations
(:class:`Permutation`, from :mod:`couplings.permutations`), and the permutahedron
(:class:`Permutahedron`, with :func:`soft_sort` and :func:`soft_rank`, projections onto it).
:class:`StochasticSoftmaxTrick` turns any of them into a perturbation model and its
relaxation; :mod:`.estimators` holds the unrelaxed references (REINFORCE, NVIL, perturbed
optimizers).
"""

from .base import FiniteDifference, Structure
from .chain_subsets import ChainKSubset
from .estimators import NVIL, leave_one_out_baseline, perturbed, reinforce
from .permutahedron import Permutahedron, soft_rank, soft_sort
from .permutation import Permutation
from .subsets import Categorical, KSubset
from .trees import Arborescence, SpanningTree
from .tricks import StochasticSoftmaxTrick, perturb

__all__ = [
    "NVIL",
    "Arborescence",
    "Categorical",
    "ChainKSubset",
    "FiniteDifference",
    "KSubset",
    "Permutahedron",
    "Permutation",
    "SpanningTree",
    "StochasticSoftmaxTrick",
    "Structure",
    "leave_one_out_baseline",
    "perturb",
    "perturbed",
    "reinforce",
    "soft_rank",
    "soft_sort",
]
