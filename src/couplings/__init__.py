"""couplings: optimal transport and latent combinatorial structure for PyTorch.

Entry points: :func:`sinkhorn` (entropic OT), :func:`emd` (exact OT), :func:`matching`
(Hungarian), :func:`wasserstein_1d` (closed form in 1-D), :func:`sinkhorn_divergence` and
:class:`SinkhornLoss`; kernel losses :func:`mmd` and :func:`energy_distance`; geometries
:class:`PointCloud` and :class:`CostMatrix`; ground costs in :mod:`couplings.costs`. The
``couplings`` command runs the experiments.
"""

from . import costs
from .divergences import SinkhornLoss, sinkhorn_divergence
from .geometry import CostMatrix, Geometry, PointCloud
from .mmd import MMD, EnergyDistance, energy_distance, mmd
from .result import ConvergenceWarning, OTResult
from .solvers import Implicit, Matching, emd, matching, sinkhorn, wasserstein_1d

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "CostMatrix",
    "EnergyDistance",
    "Geometry",
    "Implicit",
    "MMD",
    "Matching",
    "OTResult",
    "PointCloud",
    "SinkhornLoss",
    "costs",
    "emd",
    "energy_distance",
    "matching",
    "mmd",
    "sinkhorn",
    "sinkhorn_divergence",
    "wasserstein_1d",
]
