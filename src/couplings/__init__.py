"""couplings: optimal transport and latent combinatorial structure for PyTorch.

Entry points: :func:`sinkhorn` (entropic OT, balanced or unbalanced), :func:`emd` (exact OT),
:func:`ipot` (exact OT by proximal point), :func:`matching` (Hungarian), :func:`wasserstein_1d`
(closed form in 1-D), :func:`sinkhorn_divergence` and :class:`SinkhornLoss`; kernel losses
:func:`mmd` and :func:`energy_distance`; sliced Wasserstein (:func:`sliced_wasserstein`), the
OT-GAN loss (:func:`minibatch_energy_distance`) and sequence OT losses
(:func:`soft_copy_ot_loss`); geometries :class:`PointCloud` and :class:`CostMatrix`; ground costs
in :mod:`couplings.costs`. Monge maps: :func:`barycentric_projection`,
:class:`StochasticDualOT`, :class:`NeuralMongeMap`, :func:`gaussian_monge_map`. Domain adaptation
estimators live in :mod:`couplings.da`. The ``couplings`` command runs the experiments.
"""

from . import costs, da
from .divergences import SinkhornLoss, sinkhorn_divergence
from .geometry import CostMatrix, Geometry, PointCloud
from .maps import (
    NeuralMongeMap,
    StochasticDualOT,
    barycentric_projection,
    bures_wasserstein_distance,
    gaussian_monge_map,
)
from .minibatch_energy import MinibatchEnergyDistance, minibatch_energy_distance, split_halves
from .mmd import MMD, EnergyDistance, energy_distance, mmd
from .result import ConvergenceWarning, OTResult, PaddedProblems, pad_problems
from .seq_ot import SequenceOTLoss, SoftCopyOTLoss, sequence_ot_loss, soft_copy_ot_loss
from .sliced import (
    SlicedWasserstein,
    max_sliced_wasserstein,
    random_directions,
    sliced_wasserstein,
)
from .solvers import Implicit, Matching, emd, ipot, matching, sinkhorn, wasserstein_1d

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "CostMatrix",
    "EnergyDistance",
    "Geometry",
    "Implicit",
    "MMD",
    "Matching",
    "MinibatchEnergyDistance",
    "NeuralMongeMap",
    "OTResult",
    "PaddedProblems",
    "PointCloud",
    "SequenceOTLoss",
    "SinkhornLoss",
    "SlicedWasserstein",
    "SoftCopyOTLoss",
    "StochasticDualOT",
    "barycentric_projection",
    "bures_wasserstein_distance",
    "costs",
    "da",
    "emd",
    "energy_distance",
    "gaussian_monge_map",
    "ipot",
    "matching",
    "max_sliced_wasserstein",
    "minibatch_energy_distance",
    "mmd",
    "pad_problems",
    "random_directions",
    "sequence_ot_loss",
    "sinkhorn",
    "sinkhorn_divergence",
    "sliced_wasserstein",
    "soft_copy_ot_loss",
    "split_halves",
    "wasserstein_1d",
]
