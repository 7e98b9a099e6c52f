r"""Domain adaptation by optimal transport: scikit-learn style estimators.

Each estimator fits a coupling :math:`\gamma` between a labelled source sample :math:`X_s` and an
unlabelled (or partly labelled) target sample :math:`X_t`, then moves the source to the target
domain (:meth:`~BaseTransport.transform`, the barycentric mapping), so that a classifier trained
on the moved source applies to the target:

- :class:`ExactTransport`: :math:`\min_\gamma \langle\gamma, C\rangle` by the network simplex
  (POT ``EMDTransport``);
- :class:`SinkhornTransport`: :math:`+\ \varepsilon\,\mathrm{KL}(\gamma | a \otimes b)` by
  Sinkhorn (POT ``SinkhornTransport``);
- :class:`GroupLassoTransport`: :math:`+\ \varepsilon\,\mathrm{KL} + \eta \sum_{j, c}
  \|\gamma(I_c, j)\|_2` by generalized conditional gradient (POT ``SinkhornL1l2Transport``);
- :class:`LaplacianTransport`: :math:`+\ \eta\,\Omega_\alpha` (graph Laplacians of both
  samples) by conditional gradient (POT ``EMDLaplaceTransport``);
- :class:`MappingTransport`: jointly with a linear or kernel map (POT ``MappingTransport``).

Inputs are numpy arrays or torch tensors; outputs follow the input's type (numpy float64 for
numpy). The ground cost is the squared Euclidean distance, optionally normalized (``norm="max"``,
``"median"``, ``"mean"``) so that regularization weights are scale-free.

Example:
    >>> import numpy as np
    >>> from couplings.da import SinkhornTransport
    >>> rng = np.random.default_rng(0)
    >>> xs = rng.normal(size=(100, 2)); xt = rng.normal(size=(80, 2)) + 3.0
    >>> est = SinkhornTransport(eps=0.1, norm="max").fit(xs, Xt=xt)
    >>> moved = est.transform(xs)
    >>> moved.shape, bool(np.abs(moved.mean(0) - xt.mean(0)).max() < 1e-6)
    ((100, 2), True)

References:
    Courty, Flamary, Tuia and Rakotomamonjy, "Optimal Transport for Domain Adaptation", IEEE
    TPAMI 2017; Perrot, Courty, Flamary and Habrard, "Mapping Estimation for Discrete Optimal
    Transport", NeurIPS 2016.
"""

from ._cg import CGResult, Regularizer, conditional_gradient
from .base import BaseTransport
from .estimators import ExactTransport, SinkhornTransport
from .group_lasso import GroupLassoTransport
from .laplacian import LaplacianTransport
from .mapping import MappingTransport

__all__ = [
    "BaseTransport",
    "CGResult",
    "ExactTransport",
    "GroupLassoTransport",
    "LaplacianTransport",
    "MappingTransport",
    "Regularizer",
    "SinkhornTransport",
    "conditional_gradient",
]
