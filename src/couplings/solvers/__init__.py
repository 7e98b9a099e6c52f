"""Solvers: how a transport or matching program is solved."""

from .exact import emd
from .ipot import ipot
from .matching import Matching, matching
from .one_d import wasserstein_1d
from .sinkhorn import Implicit, sinkhorn

__all__ = ["Implicit", "Matching", "emd", "ipot", "matching", "sinkhorn", "wasserstein_1d"]
