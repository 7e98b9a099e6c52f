r"""The common part of the domain-adaptation estimators: inputs, cost, mappings, labels.

Every estimator of :mod:`couplings.da` fits a coupling :math:`\gamma` ``(n_s, n_t)`` between a
labelled source sample :math:`X_s` ``(n_s, d)`` and a target sample :math:`X_t` ``(n_t, d)``,
with marginals :math:`a` (uniform :math:`1/n_s` by default) and :math:`b` (uniform
:math:`1/n_t`), and moves points with it:

* :meth:`BaseTransport.transform` -- the barycentric mapping
  :math:`\hat X_s = \mathrm{diag}(\gamma 1)^{-1} \gamma X_t` (:math:`= n_s \gamma X_t` for
  uniform weights) on the fitted source points; a new point :math:`x` is moved like its nearest
  fitted source point :math:`x_{i^*}`: :math:`x \mapsto \hat x_{i^*} + x - x_{i^*}` (Ferradans et
  al. 2014, POT's ``out_of_sample_map="ferradans"``).
* :meth:`BaseTransport.inverse_transform` -- the same from the target side,
  :math:`\mathrm{diag}(\gamma^T 1)^{-1} \gamma^T X_s`.
* :meth:`BaseTransport.transform_labels` -- label propagation: target point :math:`j` gets the
  class masses :math:`\sum_{i: y_i = c} \gamma_{ij} / \sum_i \gamma_{ij}` (rows sum to one).

The ground cost is the squared Euclidean distance by default (``metric``), optionally divided by
its maximum, median or mean (``norm``) so that ``eps`` and ``eta`` are scale-free. Semi-supervised
adaptation (target labels ``yt`` with ``-1`` for unlabelled points, as in POT) raises the cost of
every pair of labelled points with different classes to ``limit_max * max(C)``.

Inputs may be numpy arrays or torch tensors; outputs have the type of the input they answer
(numpy in, numpy out, float64 for numpy; a tensor keeps its dtype and device).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from .. import costs as _costs
from .._validation import (
    batch_weights,
    check_choice,
    check_equal_mass,
    check_finite,
    check_float,
    check_positive_scalar,
)

__all__ = ["BaseTransport", "NORMS"]

NORMS = (None, "max", "median", "mean")
MISSING_LABEL = -1


def _as_points(x, name: str, like: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """Return ``x`` as a 2-D float tensor and whether it came as numpy.

    numpy arrays (any real dtype) become float64 tensors, or take ``like``'s dtype and device when
    given; tensors must already be float32 or float64.
    """
    if x is None:
        raise ValueError(f"{name} is required: pass an array of shape (n, d).")
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must hold real numbers, got a numpy array of {x.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        if like is not None:
            t = t.to(dtype=like.dtype, device=like.device)
        was_numpy = True
    elif isinstance(x, torch.Tensor):
        check_float(x, name)
        t, was_numpy = x.detach(), False
    else:
        raise TypeError(
            f"{name} must be a numpy array or a torch.Tensor, got {type(x).__name__}."
        )
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {tuple(t.shape)}.")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must have at least one point and one feature, got "
                         f"shape {tuple(t.shape)}.")
    check_finite(t, name)
    return t, was_numpy


def _as_labels(y, n: int, name: str, points: str, device) -> torch.Tensor | None:
    """Return integer labels ``(n,)`` as an int64 tensor (``None`` stays ``None``)."""
    if y is None:
        return None
    if isinstance(y, np.ndarray):
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
            raise TypeError(
                f"{name} must hold integer class labels, got a numpy array of {y.dtype}; "
                f"convert it with {name}.astype(int)."
            )
        t = torch.from_numpy(np.asarray(y, dtype=np.int64))
    elif isinstance(y, torch.Tensor):
        if y.dtype.is_floating_point or y.dtype.is_complex:
            raise TypeError(
                f"{name} must hold integer class labels, got a tensor of {y.dtype}; "
                f"convert it with {name}.long()."
            )
        t = y.detach().to(torch.int64)
    else:
        raise TypeError(
            f"{name} must be a numpy array or a torch.Tensor of integer labels, got "
            f"{type(y).__name__}."
        )
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},), one label per row of {points}, got shape "
            f"{tuple(t.shape)}."
        )
    if bool((t < MISSING_LABEL).any()):
        raise ValueError(
            f"{name} must hold labels >= 0 (or {MISSING_LABEL} for an unlabelled point), got "
            f"min {int(t.min())}."
        )
    return t.to(device)


def _median(c: torch.Tensor) -> torch.Tensor:
    """The median of all entries, the mean of the two middle ones for an even count (numpy's
    convention, as POT's ``norm="median"``; ``torch.median`` returns the lower one)."""
    flat = c.flatten().sort().values
    k = flat.numel()
    return 0.5 * (flat[(k - 1) // 2] + flat[k // 2])


def _to_output(t: torch.Tensor, as_numpy: bool):
    return t.detach().cpu().double().numpy() if as_numpy else t


class BaseTransport(ABC):
    """Base class of the domain-adaptation estimators (scikit-learn style).

    Subclasses implement :meth:`_fit_coupling`; this class validates the inputs, builds the
    cost, and provides the mappings and label propagation. See the module docstring for the
    formulas.

    Args:
        metric: ground cost: a name of :func:`couplings.costs.get` (default ``"sqeuclidean"``,
            :math:`\\|x - y\\|^2`) or a callable ``(x (n, d), y (m, d)) -> (n, m)``.
        norm: divide the cost by its ``"max"``, ``"median"`` or ``"mean"`` (computed on the fit
            data, before the label penalty) so that regularization weights do not depend on the
            scale of the features; ``None`` (default, as POT) keeps the raw cost.
        limit_max: semi-supervised penalty: pairs of labelled points with different classes cost
            ``limit_max * max(C)`` (the paper's :math:`+\\infty`, kept finite for the solvers).

    Attributes (after :meth:`fit`):
        coupling_: the coupling :math:`\\gamma` ``(n_s, n_t)``, in the type of ``Xs``.
        cost_: the (normalized, penalized) cost ``(n_s, n_t)`` the coupling was fitted on.
        norm_value_: the number the cost was divided by (1.0 when ``norm=None``).
        xs_, xt_: the fit points (as given). mu_s, mu_t: the marginals.
        converged_, n_iter_: convergence report of the solver; result_: its result object.
    """

    def __init__(self, *, metric: Any = "sqeuclidean", norm: str | None = None,
                 limit_max: float = 100.0):
        self.metric = metric
        self._metric_fn = _costs.get(metric)
        self.norm = check_choice(norm, "norm", NORMS)
        self.limit_max = check_positive_scalar(limit_max, "limit_max")

    # ----------------------------------------------------------------------------------------
    # to be implemented

    @abstractmethod
    def _fit_coupling(self, cost, a, b, xs, xt, ys, yt):
        """Return the coupling ``(n_s, n_t)`` (torch) and a result object with ``converged``."""

    # ----------------------------------------------------------------------------------------
    # fit

    def _check_fit_inputs(self, Xs, ys, Xt, yt):
        xs, xs_numpy = _as_points(Xs, "Xs")
        xt, _ = _as_points(Xt, "Xt", like=xs)
        if isinstance(Xt, torch.Tensor) and not xs_numpy:
            if Xt.dtype != xs.dtype or Xt.device != xs.device:
                raise TypeError(
                    f"Xs and Xt must share one dtype and device, got {xs.dtype} on {xs.device} "
                    f"and {Xt.dtype} on {Xt.device}."
                )
        elif isinstance(Xt, torch.Tensor):  # numpy source, tensor target: follow the tensor
            xs = xs.to(dtype=xt.dtype, device=xt.device)
        if xs.shape[1] != xt.shape[1]:
            raise ValueError(
                f"Xs and Xt must have the same number of features, got Xs {tuple(xs.shape)} and "
                f"Xt {tuple(xt.shape)}."
            )
        ys_t = _as_labels(ys, xs.shape[0], "ys", "Xs", xs.device)
        yt_t = _as_labels(yt, xt.shape[0], "yt", "Xt", xs.device)
        if yt_t is not None and ys_t is None:
            raise ValueError(
                "yt (target labels) was given without ys: semi-supervised adaptation compares "
                "source and target labels, so pass the source labels ys too."
            )
        return xs, xt, ys_t, yt_t, xs_numpy

    def _cost(self, xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        c = self._metric_fn(xs, xt)  # (n_s, n_t)
        if not isinstance(c, torch.Tensor) or tuple(c.shape) != (xs.shape[0], xt.shape[0]):
            raise ValueError(
                f"metric must return a tensor of shape {(xs.shape[0], xt.shape[0])}, got "
                f"{getattr(c, 'shape', type(c).__name__)}."
            )
        check_finite(c, "the cost")
        value = 1.0
        if self.norm is not None:
            value = float({"max": c.max, "median": lambda: _median(c), "mean": c.mean}[self.norm]())
            if not value > 0:
                raise ValueError(
                    f"norm={self.norm!r} divides the cost by its {self.norm}, which is {value:g} "
                    "on these data (identical points?); use norm=None."
                )
            c = c / value
        self.norm_value_ = value
        return c

    def fit(self, Xs, ys=None, Xt=None, yt=None, *, a=None, b=None):
        """Fit the coupling between ``Xs`` and ``Xt``.

        Args:
            Xs: source points ``(n_s, d)``.
            ys: source labels ``(n_s,)`` (integers), needed by the class-regularized estimators.
            Xt: target points ``(n_t, d)``.
            yt: target labels ``(n_t,)`` with ``-1`` for unlabelled points (semi-supervised
                adaptation; needs ``ys``).
            a: source weights ``(n_s,)`` (default uniform); b: target weights ``(n_t,)``, same
                total mass.

        Returns:
            ``self``.
        """
        xs, xt, ys_t, yt_t, xs_numpy = self._check_fit_inputs(Xs, ys, Xt, yt)
        cost = self._cost(xs, xt)  # (n_s, n_t)
        if ys_t is not None and yt_t is not None:
            labelled = (ys_t != MISSING_LABEL).unsqueeze(1) & (yt_t != MISSING_LABEL).unsqueeze(0)
            mismatch = labelled & (ys_t.unsqueeze(1) != yt_t.unsqueeze(0))
            penalty = self.limit_max * float(cost.max())
            cost = torch.where(mismatch, torch.clamp_min(cost, penalty), cost)
        a = batch_weights(a, xs.shape[0], 1, False, cost, "a", "the rows of Xs").squeeze(0)
        b = batch_weights(b, xt.shape[0], 1, False, cost, "b", "the rows of Xt").squeeze(0)
        a, b = a / a.sum(), b / b.sum()
        check_equal_mass(a, b)
        with torch.no_grad():
            coupling, result = self._fit_coupling(cost, a, b, xs, xt, ys_t, yt_t)
        self._xs, self._xt, self._gamma, self._a, self._b = xs, xt, coupling, a, b
        self._ys = ys_t
        self._as_numpy = xs_numpy
        self.xs_, self.xt_ = Xs, Xt
        self.coupling_ = _to_output(coupling, xs_numpy)
        self.cost_ = _to_output(cost, xs_numpy)
        self.mu_s, self.mu_t = _to_output(a, xs_numpy), _to_output(b, xs_numpy)
        self.result_ = result
        self.converged_ = bool(torch.as_tensor(result.converged).all()) if result else True
        self.n_iter_ = getattr(result, "n_iter", None)
        return self

    def fit_transform(self, Xs, ys=None, Xt=None, yt=None, **kwargs):
        """:meth:`fit`, then :meth:`transform` of ``Xs``."""
        return self.fit(Xs, ys, Xt, yt, **kwargs).transform(Xs)

    # ----------------------------------------------------------------------------------------
    # mappings

    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, "_gamma"):
            raise RuntimeError(
                f"{type(self).__name__} is not fitted yet: call fit(Xs, ys, Xt) before {what}."
            )

    def _points_to_map(self, X, name: str, ref: torch.Tensor) -> tuple[torch.Tensor, bool]:
        x, as_numpy = _as_points(X, name, like=ref)
        if isinstance(X, torch.Tensor) and (x.dtype != ref.dtype or x.device != ref.device):
            x = x.to(dtype=ref.dtype, device=ref.device)
        if x.shape[1] != ref.shape[1]:
            raise ValueError(
                f"{name} must have {ref.shape[1]} features like the fit data, got shape "
                f"{tuple(x.shape)}."
            )
        return x, as_numpy

    @staticmethod
    def _barycentric(gamma: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """``diag(gamma 1)^-1 gamma dst`` ``(n, d)``; a row without mass stays where it is."""
        mass = gamma.sum(1, keepdim=True)  # (n, 1)
        moved = (gamma @ dst) / torch.where(mass > 0, mass, torch.ones_like(mass))
        return torch.where(mass > 0, moved, src)

    @staticmethod
    def _out_of_sample(x, fit_src, fit_moved):
        """Ferradans: move ``x`` ``(k, d)`` like its nearest fit point."""
        nearest = _costs.sqeuclidean(x, fit_src).argmin(1)  # (k,)
        return fit_moved[nearest] + x - fit_src[nearest]

    def _map(self, X, name, src, dst, gamma):
        x, as_numpy = self._points_to_map(X, name, src)
        moved = self._barycentric(gamma, src, dst)  # (n, d)
        if x.shape == src.shape and torch.equal(x, src):
            out = moved
        else:
            out = self._out_of_sample(x, src, moved)
        return _to_output(out.to(X.dtype) if isinstance(X, torch.Tensor) else out, as_numpy)

    def transform(self, Xs):
        """Move source points to the target domain.

        On the fit source points, the barycentric mapping
        :math:`\\mathrm{diag}(\\gamma 1)^{-1} \\gamma X_t` (:math:`n_s \\gamma X_t` for uniform
        weights). Any other point :math:`x` moves by the displacement of its nearest fit source
        point :math:`x_{i^*}`: :math:`\\hat x_{i^*} + x - x_{i^*}` (Ferradans et al. 2014).

        Args:
            Xs: points ``(k, d)``.

        Returns:
            ``(k, d)``, numpy for numpy input.
        """
        self._check_fitted("transform")
        return self._map(Xs, "Xs", self._xs, self._xt, self._gamma)

    def inverse_transform(self, Xt):
        """Move target points to the source domain: the barycentric mapping
        :math:`\\mathrm{diag}(\\gamma^T 1)^{-1} \\gamma^T X_s` on the fit target points, the
        nearest fit target point's displacement elsewhere.

        Args:
            Xt: points ``(k, d)``.

        Returns:
            ``(k, d)``, numpy for numpy input.
        """
        self._check_fitted("inverse_transform")
        return self._map(Xt, "Xt", self._xt, self._xs, self._gamma.T)

    def _propagate(self, y, n: int, name: str, points: str, gamma: torch.Tensor):
        labels = _as_labels(y, n, name, points, gamma.device)
        if bool((labels == MISSING_LABEL).any()):
            raise ValueError(f"{name} must label every fit point to propagate labels; got -1.")
        classes = torch.unique(labels)  # sorted
        masks = (labels.unsqueeze(1) == classes.unsqueeze(0)).to(gamma.dtype)  # (n, K)
        mass = gamma.sum(0, keepdim=True)  # (1, m)
        weights = gamma / torch.where(mass > 0, mass, torch.ones_like(mass))
        return _to_output(weights.T @ masks, isinstance(y, np.ndarray))  # (m, K)

    def transform_labels(self, ys):
        """Propagate source labels to the fit target points through the coupling.

        Row ``j`` holds the share of the mass arriving at target point ``j`` from each class,
        :math:`\\sum_{i: y_i = c} \\gamma_{ij} / \\sum_i \\gamma_{ij}` (columns: the sorted
        distinct labels of ``ys``); rows sum to one (Redko et al. 2019).

        Args:
            ys: labels of the fit source points ``(n_s,)``.

        Returns:
            ``(n_t, K)`` class proportions, numpy for numpy labels (float64) else a tensor.
        """
        self._check_fitted("transform_labels")
        return self._propagate(ys, self._xs.shape[0], "ys", "Xs", self._gamma)

    def inverse_transform_labels(self, yt):
        """Propagate target labels to the fit source points: ``(n_s, K)`` class proportions."""
        self._check_fitted("inverse_transform_labels")
        return self._propagate(yt, self._xt.shape[0], "yt", "Xt", self._gamma.T)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict[str, Any]:
        return {"metric": self.metric, "norm": self.norm}
