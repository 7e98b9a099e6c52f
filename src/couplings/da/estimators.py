r"""Domain adaptation by exact and entropic optimal transport (OT-exact and OT-IT of Courty et al.).

Both fit the coupling of :class:`~couplings.da.base.BaseTransport` between the source and the
target samples: :class:`ExactTransport` by the network simplex (:func:`couplings.emd`),
:class:`SinkhornTransport` by log-domain Sinkhorn (:func:`couplings.sinkhorn`).
"""

from __future__ import annotations

from typing import Any

from .._validation import check_positive_int, check_positive_scalar, check_scaling
from ..solvers.exact import emd
from ..solvers.sinkhorn import sinkhorn
from .base import BaseTransport

__all__ = ["ExactTransport", "SinkhornTransport"]


class ExactTransport(BaseTransport):
    r"""OT-exact: the coupling solves the linear program

    .. math::

        \gamma = \arg\min_{\gamma \in U(a, b)} \langle \gamma, C\rangle,

    with :math:`C_{ij} = \|x^s_i - x^t_j\|^2` (see ``metric``, ``norm``), solved by the network
    simplex (:func:`couplings.emd`). With uniform weights and as many points on both sides the
    coupling is a permutation scaled by :math:`1/n`, and the barycentric mapping sends each
    source point onto a target point.

    Args:
        max_iter: network simplex pivot limit (POT's ``numItermax``).
        metric, norm, limit_max: see :class:`~couplings.da.base.BaseTransport`.

    Example:
        >>> import numpy as np
        >>> from couplings.da import ExactTransport
        >>> xs = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
        >>> xt = xs[::-1] + [0.0, 3.0]
        >>> est = ExactTransport().fit(xs, Xt=xt)
        >>> est.transform(xs)
        array([[0., 3.],
               [1., 3.],
               [2., 3.]])
        >>> est.transform(np.array([[0.1, 0.0]]))  # out of sample: nearest point's displacement
        array([[0.1, 3. ]])

    Names elsewhere: POT ``ot.da.EMDTransport(metric, norm, max_iter, limit_max)``.

    References:
        Courty, Flamary, Tuia and Rakotomamonjy, "Optimal Transport for Domain Adaptation",
        IEEE TPAMI 2017.
    """

    def __init__(self, *, max_iter: int = 100_000, metric: Any = "sqeuclidean",
                 norm: str | None = None, limit_max: float = 100.0):
        super().__init__(metric=metric, norm=norm, limit_max=limit_max)
        self.max_iter = check_positive_int(max_iter, "max_iter")

    def _fit_coupling(self, cost, a, b, xs, xt, ys, yt):
        res = emd(cost, a, b, max_iter=self.max_iter)
        return res.plan, res

    def _params(self):
        return {"max_iter": self.max_iter, **super()._params()}


class SinkhornTransport(BaseTransport):
    r"""OT-IT: the coupling solves the entropic program

    .. math::

        \gamma = \arg\min_{\gamma \in U(a, b)} \langle \gamma, C\rangle
            + \varepsilon\,\mathrm{KL}(\gamma \,|\, a \otimes b),

    solved by log-domain Sinkhorn (:func:`couplings.sinkhorn`). On :math:`U(a, b)`,
    :math:`\mathrm{KL}(\gamma | a \otimes b) = \sum_{ij} \gamma_{ij}\log\gamma_{ij}` plus a
    constant, so the coupling is POT's ``SinkhornTransport(reg_e=eps)`` (entropy
    :math:`\sum \gamma \log \gamma`) and the paper's OT-IT with :math:`\lambda = \varepsilon`.
    ``eps`` is in the units of the (normalized) cost: use ``norm="max"`` for a scale-free one.

    Args:
        eps: entropic regularization :math:`\varepsilon > 0`.
        tol: Sinkhorn's L1 marginal tolerance; max_iter: its iteration limit (a
            non-converged solve warns, :class:`~couplings.ConvergenceWarning`).
        scaling: epsilon scaling of :func:`couplings.sinkhorn` (``"auto"``, a factor, or
            ``None`` for none).
        metric, norm, limit_max: see :class:`~couplings.da.base.BaseTransport`.

    Example:
        >>> import numpy as np
        >>> from couplings.da import SinkhornTransport
        >>> rng = np.random.default_rng(0)
        >>> xs = rng.normal(size=(30, 2)); xt = xs + [5.0, 0.0]
        >>> est = SinkhornTransport(eps=0.5).fit(xs, Xt=xt)
        >>> est.coupling_.shape, est.converged_
        ((30, 30), True)
        >>> bool(np.abs(est.transform(xs) - xt).max() < 0.5)
        True

    Names elsewhere: POT ``ot.da.SinkhornTransport(reg_e, max_iter, tol)``: ``reg_e`` =
    ``eps``. POT's out-of-sample default is the entropic map (``"continuous"``); this class uses
    the nearest-neighbour displacement of :class:`~couplings.da.base.BaseTransport` (POT's
    ``out_of_sample_map="ferradans"``).

    References:
        Cuturi, "Sinkhorn Distances", NeurIPS 2013; Courty, Flamary, Tuia and Rakotomamonjy,
        "Optimal Transport for Domain Adaptation", IEEE TPAMI 2017.
    """

    def __init__(self, *, eps: float = 1.0, tol: float = 1e-8, max_iter: int = 10_000,
                 scaling: float | str | None = "auto", metric: Any = "sqeuclidean",
                 norm: str | None = None, limit_max: float = 100.0):
        super().__init__(metric=metric, norm=norm, limit_max=limit_max)
        self.eps = check_positive_scalar(eps, "eps")
        self.tol = check_positive_scalar(tol, "tol")
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.scaling = check_scaling(scaling)

    def _fit_coupling(self, cost, a, b, xs, xt, ys, yt):
        res = sinkhorn(cost, a, b, eps=self.eps, tol=self.tol, max_iter=self.max_iter,
                       scaling=self.scaling, grad="envelope")
        return res.plan, res

    def _params(self):
        return {"eps": self.eps, "tol": self.tol, "max_iter": self.max_iter,
                "scaling": self.scaling, **super()._params()}
