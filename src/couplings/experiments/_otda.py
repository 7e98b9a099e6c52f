r"""Shared pieces of the OT domain-adaptation experiments (``otda-moons``, ``otda-digits``).

Each method of Courty et al. (TPAMI 2017) is built twice from the same hyper-parameters, once
from :mod:`couplings.da` (``"couplings"``) and once from POT's ``ot.da`` (``"POT"``), so the two
run side by side on the same data (``couplings.da`` | POT):

- ``exact``: ``ExactTransport()`` | ``EMDTransport()``;
- ``entropic``: ``SinkhornTransport(eps=eps)`` | ``SinkhornTransport(reg_e=eps)``;
- ``group-lasso``: ``GroupLassoTransport(eps=eps, eta=eta)`` |
  ``SinkhornL1l2Transport(reg_e=eps, reg_cl=eta)``;
- ``laplacian``: ``LaplacianTransport(eta=eta, alpha=alpha, eps=0, n_neighbors=k,
  prune=False)`` | ``EMDLaplaceTransport(reg_lap=eta, reg_src=1 - alpha, similarity_param=k)``;
- ``laplacian-pruned``: ``LaplacianTransport(eta=eta, alpha=alpha, eps=0, n_neighbors=8,
  prune=True)`` | none;
- ``mapping-linear`` / ``mapping-kernel``: ``MappingTransport(kernel="linear" | "gaussian",
  mu, eta, sigma, bias)`` in both.

``laplacian`` is POT's estimator (kNN graphs with ``k = 3`` by default, no use of the labels);
``laplacian-pruned`` is the paper's (8 neighbours, source graph pruned across classes), which POT
does not offer. The source points are moved by the barycentric mapping of the fitted coupling,
:math:`\hat x^s_i = \sum_j \gamma_{ij} x^t_j / \sum_j \gamma_{ij}`, except for the mapping
estimators, whose learned map :math:`T` moves them (:math:`\hat x^s_i = T(x^s_i)`, computed the
same way for POT from its ``mapping_``); a classifier is then trained on :math:`(\hat X_s, y_s)`.
``none`` (no adaptation) trains it on :math:`(X_s, y_s)`.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["IMPLEMENTATIONS", "METHOD_LABELS", "ONLY_OURS", "OT_METHODS", "adapt",
           "implementations_of", "make_estimator", "mean_std", "warnings_note"]

IMPLEMENTATIONS = ("couplings", "POT")
OT_METHODS = ("exact", "entropic", "group-lasso", "laplacian", "laplacian-pruned",
              "mapping-linear", "mapping-kernel")
# methods that only this library implements
ONLY_OURS = ("laplacian-pruned",)
METHOD_LABELS = {
    "none": "no adaptation",
    "exact": "exact OT",
    "entropic": "entropic OT",
    "group-lasso": "group-lasso OT",
    "laplacian": "Laplacian OT",
    "laplacian-pruned": "Laplacian OT (paper's graph)",
    "mapping-linear": "mapping (linear)",
    "mapping-kernel": "mapping (Gaussian kernel)",
}


def implementations_of(method: str, implementations) -> list[str | None]:
    """The implementations of ``implementations`` that run ``method`` (``[None]`` for ``none``).

    Example:
        >>> implementations_of("laplacian-pruned", IMPLEMENTATIONS)
        ['couplings']
    """
    if method == "none":
        return [None]
    if method in ONLY_OURS:
        return [i for i in implementations if i == "couplings"]
    return list(implementations)


def make_estimator(method: str, implementation: str, params: Mapping[str, Any]):
    """An unfitted transport estimator of ``method`` from ``implementation``.

    Args:
        method: one of :data:`OT_METHODS`.
        implementation: ``"couplings"`` or ``"POT"``.
        params: hyper-parameters in this library's names: ``eps`` (entropy), ``eta`` (class or
            Laplacian or mapping regularization), ``alpha`` (Laplacian source/target balance),
            ``max_iter`` (outer iterations), ``inner_max_iter`` (group lasso's Sinkhorn
            iterations per step; POT's default 200 when absent, ours 10 000), ``n_neighbors``
            (Laplacian kNN graphs), ``mu``, ``sigma``, ``bias`` (mapping).

    Returns:
        An object with ``fit(Xs, ys, Xt)`` and ``transform(Xs)``.
    """
    if method not in OT_METHODS:
        raise ValueError(f"unknown method {method!r}; known: {OT_METHODS}.")
    p = dict(params)
    if implementation == "POT":
        import ot

        if method == "exact":
            return ot.da.EMDTransport()
        if method == "entropic":
            return ot.da.SinkhornTransport(reg_e=p["eps"])
        if method == "group-lasso":
            return ot.da.SinkhornL1l2Transport(reg_e=p["eps"], reg_cl=p["eta"],
                                               max_iter=p["max_iter"],
                                               max_inner_iter=p.get("inner_max_iter", 200))
        if method == "laplacian":
            # POT's reg_src weighs the source-graph term: our 1 - alpha
            return ot.da.EMDLaplaceTransport(reg_lap=p["eta"], reg_src=1.0 - p["alpha"],
                                             similarity_param=p.get("n_neighbors", 3),
                                             max_iter=p["max_iter"])
        if method in ONLY_OURS:
            raise ValueError(f"POT has no {method!r} estimator.")
        kernel = "linear" if method == "mapping-linear" else "gaussian"
        return ot.da.MappingTransport(kernel=kernel, mu=p["mu"], eta=p["eta"],
                                      sigma=p.get("sigma", 1.0), bias=p.get("bias", False),
                                      max_iter=p["max_iter"])
    if implementation == "couplings":
        from .. import da

        if method == "exact":
            return da.ExactTransport()
        if method == "entropic":
            return da.SinkhornTransport(eps=p["eps"])
        if method == "group-lasso":
            inner = {"inner_max_iter": p["inner_max_iter"]} if "inner_max_iter" in p else {}
            return da.GroupLassoTransport(eps=p["eps"], eta=p["eta"], max_iter=p["max_iter"],
                                          **inner)
        if method == "laplacian":
            return da.LaplacianTransport(eta=p["eta"], alpha=p["alpha"], eps=0.0,
                                         n_neighbors=p.get("n_neighbors", 3), prune=False,
                                         max_iter=p["max_iter"])
        if method == "laplacian-pruned":
            return da.LaplacianTransport(eta=p["eta"], alpha=p["alpha"], eps=0.0,
                                         n_neighbors=p.get("n_neighbors", 8), prune=True,
                                         max_iter=p["max_iter"])
        kernel = "linear" if method == "mapping-linear" else "gaussian"
        return da.MappingTransport(kernel=kernel, mu=p["mu"], eta=p["eta"],
                                   sigma=p.get("sigma", 1.0), bias=p.get("bias", False),
                                   max_iter=p["max_iter"])
    raise ValueError(f"unknown implementation {implementation!r}; known: {IMPLEMENTATIONS}.")


def adapt(method: str, implementation: str, params: Mapping[str, Any], xs: np.ndarray,
          ys: np.ndarray, xt: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit ``method`` on ``(xs, ys) -> xt`` and move ``xs`` by its barycentric mapping.

    Warnings raised during the fit (non-convergence) are caught and counted, not shown.

    Args:
        method: ``"none"`` or one of :data:`OT_METHODS`.
        implementation: ``"couplings"`` or ``"POT"``.
        params: hyper-parameters, see :func:`make_estimator`.
        xs: ``(n_s, d)`` labelled source points; ys: ``(n_s,)`` their labels.
        xt: ``(n_t, d)`` unlabelled target points.

    Returns:
        The transported source ``(n_s, d)`` (float64) and ``{"fit_time_s", "warnings"}``
        (the fit time and the distinct warning messages).

    Example:
        >>> import numpy as np
        >>> xs = np.array([[0.0, 0.0], [1.0, 0.0]]); xt = xs + 5.0
        >>> moved, info = adapt("exact", "POT", {}, xs, np.array([0, 1]), xt)
        >>> moved.tolist(), info["warnings"]
        ([[5.0, 5.0], [6.0, 5.0]], [])
    """
    if method == "none":
        return np.asarray(xs, dtype=np.float64), {"fit_time_s": 0.0, "warnings": []}
    estimator = make_estimator(method, implementation, params)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(xs, ys, xt)
        if method.startswith("mapping") and implementation == "POT":
            moved = _pot_map(estimator, xs)
        else:  # ours: the learned map for the mapping estimators, else barycentric
            moved = np.asarray(estimator.transform(xs), dtype=np.float64)
    elapsed = time.perf_counter() - start
    messages = sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught})
    if not np.isfinite(moved).all():
        raise FloatingPointError(
            f"{implementation} {method} with {dict(params)} transported the source to "
            "non-finite points."
        )
    return moved, {"fit_time_s": elapsed, "warnings": messages}


def _pot_map(estimator, x: np.ndarray) -> np.ndarray:
    """POT's learned map at ``x`` (its ``transform`` gives the barycentric map on fit points)."""
    import ot

    if estimator.kernel == "gaussian":
        features = ot.utils.kernel(x, estimator.xs_, method="gaussian", sigma=estimator.sigma)
    else:
        features = x
    if estimator.bias:
        features = np.concatenate([features, np.ones((x.shape[0], 1))], axis=1)
    return np.asarray(features @ estimator.mapping_, dtype=np.float64)


def warnings_note(fits) -> str | None:
    """One sentence on the fits that warned: ``fits`` is ``[(label, [message, ...]), ...]``.

    Messages differing only in their numbers count as one.

    Example:
        >>> warnings_note([("gl/POT", ["W: gap 0.1"]), ("gl/POT", ["W: gap 0.2"]), ("x", [])])
        'Fits that warned: gl/POT: 2 (W: gap #).'
    """
    counts: dict[str, int] = {}
    kinds: dict[str, set[str]] = {}
    for label, messages in fits:
        if messages:
            counts[label] = counts.get(label, 0) + 1
            kinds.setdefault(label, set()).update(
                re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", m) for m in messages)
    if not counts:
        return None
    return "Fits that warned: " + "; ".join(
        f"{label}: {n} ({' | '.join(sorted(kinds[label]))})" for label, n in counts.items()) + "."


def mean_std(values, scale: float = 1.0, digits: int = 3) -> str:
    """``"mean ± std"`` of ``values`` (times ``scale``), rounded to ``digits``.

    Example:
        >>> mean_std([0.1, 0.3])
        '0.200 ± 0.100'
    """
    v = scale * np.asarray(values, dtype=np.float64)
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"
