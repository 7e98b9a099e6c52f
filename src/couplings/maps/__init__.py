"""Monge maps and large-scale OT: barycentric projections, the stochastic dual of regularized
OT (Seguy et al. 2018), neural maps fitted to a plan, and the Gaussian closed form."""

from .barycentric import barycentric_projection
from .gaussian import GaussianMap, bures_wasserstein_distance, gaussian_monge_map
from .neural_map import NeuralMongeMap
from .stochastic_dual import KernelPotential, StochasticDualOT

__all__ = [
    "GaussianMap",
    "KernelPotential",
    "NeuralMongeMap",
    "StochasticDualOT",
    "barycentric_projection",
    "bures_wasserstein_distance",
    "gaussian_monge_map",
]
