r"""Maximum-weight matching by the Hungarian algorithm: the exact argmax over permutations.

For a score matrix ``X`` ``(n, m)`` with ``n <= m``,

.. math::

    M(X) = \mathop{\arg\max}_{\sigma} \sum_{i=1}^n X_{i, \sigma(i)},

over injective maps :math:`\sigma: \{1..n\} \to \{1..m\}` (permutations when ``n = m``). It is the
vertex of the Birkhoff polytope that maximizes :math:`\langle X, P\rangle`, the zero-temperature
limit of the Sinkhorn operator :math:`S(X / \tau)`, and exact OT with cost ``-X`` and uniform
marginals.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .._validation import as_tensor, check_float

__all__ = ["matching", "Matching"]


class Matching(NamedTuple):
    """A maximum-weight matching, batched as the scores were.

    Attributes:
        indices: ``(B, n)`` int64, ``indices[b, i]`` is the column matched to row ``i``.
        matrix: ``(B, n, m)`` 0/1 matrix, ``matrix[b, i, indices[b, i]] = 1``, with the dtype and
            device of the scores.
    """

    indices: torch.Tensor
    matrix: torch.Tensor


def _check_scores(scores) -> tuple[torch.Tensor, bool]:
    """Validate the scores and return them as ``(B, n, m)`` with a flag 'was batched'."""
    scores = as_tensor(scores, "scores")
    check_float(scores, "scores")
    if scores.dim() not in (2, 3):
        raise ValueError(
            f"scores must have shape (n, m) or (B, n, m), got shape {tuple(scores.shape)}."
        )
    n, m = scores.shape[-2:]
    if n == 0 or m == 0:
        raise ValueError(
            f"scores must have at least one row and one column, got shape {tuple(scores.shape)}."
        )
    if n > m:
        raise ValueError(
            f"scores must have no more rows than columns (n <= m) so that every row gets a "
            f"distinct column, got shape {tuple(scores.shape)}. Match the transpose "
            "scores.transpose(-2, -1) instead."
        )
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        raise ValueError(
            f"scores must be finite, got {int((~finite).sum())} non-finite entries (nan or inf) "
            f"out of {scores.numel()}. To forbid a pair, give it a large negative finite score."
        )
    batched = scores.dim() == 3
    return (scores if batched else scores.unsqueeze(0)), batched


def matching(scores: torch.Tensor) -> Matching:
    r"""Maximum-weight matching of rows to columns (the Hungarian algorithm).

    Solves :math:`\max_\sigma \sum_i X_{i, \sigma(i)}` over injective maps from rows to columns
    with scipy's ``linear_sum_assignment(X, maximize=True)``, one problem at a time. The result
    is piecewise constant in the scores and carries no gradient; for a differentiable
    relaxation use the Sinkhorn operator (entropic OT with cost ``-X / tau``).

    Args:
        scores: score matrix ``X`` ``(B, n, m)`` or ``(n, m)`` with ``n <= m``; larger is
            better. To minimize a cost ``C``, pass ``-C``.

    Returns:
        :class:`Matching` with ``indices`` ``(B, n)`` (int64, the column of each row) and the
        0/1 ``matrix`` ``(B, n, m)`` (a permutation matrix when ``n = m``), in the dtype and on
        the device of ``scores``. The batch axis is absent for an unbatched call. Ties are
        broken by scipy.

    Raises:
        TypeError: if ``scores`` is not a floating tensor (or numpy array).
        ValueError: for a shape other than ``(n, m)`` or ``(B, n, m)``, ``n > m``, an empty
            matrix, or non-finite scores.

    Example:
        >>> import torch
        >>> from couplings.solvers.matching import matching
        >>> scores = torch.tensor([[1.0, 5.0, 0.0], [4.0, 4.0, 2.0]])
        >>> res = matching(scores)
        >>> res.indices
        tensor([1, 0])
        >>> res.matrix
        tensor([[0., 1., 0.],
                [1., 0., 0.]])

    References:
        Kuhn, "The Hungarian Method for the Assignment Problem", Naval Research Logistics
        Quarterly, 1955. Mena, Belanger, Linderman and Snoek, "Learning Latent Permutations with
        Gumbel-Sinkhorn Networks", ICLR 2018 (the matching operator :math:`M(X)`).
    """
    x, batched = _check_scores(scores)  # (B, n, m)
    bsz, n, m = x.shape
    x64 = x.detach().to("cpu", torch.float64).numpy()
    columns = np.zeros((bsz, n), dtype=np.int64)
    for k in range(bsz):
        rows, cols = linear_sum_assignment(x64[k], maximize=True)
        columns[k, rows] = cols
    indices = torch.from_numpy(columns).to(x.device)  # (B, n)
    matrix = x.new_zeros(bsz, n, m)
    matrix.scatter_(-1, indices.unsqueeze(-1), 1.0)  # (B, n, m)
    if not batched:
        indices, matrix = indices.squeeze(0), matrix.squeeze(0)
    return Matching(indices, matrix)
