r"""Permutations as a structure: the permutation module's operators behind the common interface.

The Birkhoff polytope's exact argmax is the Hungarian matching :math:`M(X)` and its
entropic argmax the Sinkhorn operator :math:`S(X / \tau)`
(:func:`couplings.permutations.sinkhorn_operator`, itself the library's one Sinkhorn solver).
Nothing here re-implements them.
"""

from __future__ import annotations

import torch

from .._validation import check_positive_int
from ..permutations.mallows import MAX_EXACT_N, all_permutations
from ..permutations.operators import sinkhorn_operator
from ..solvers.matching import matching
from .base import Structure, check_weights

__all__ = ["Permutation"]


class Permutation(Structure):
    r"""Permutation matrices of size ``n``: ``z[i, j] = 1`` when item ``i`` goes to position ``j``.

    - ``argmax``: the Hungarian matching (maximizing :math:`\langle w, z \rangle`);
    - ``relaxed(w, tau, reg="entropy")``: the Sinkhorn operator :math:`S(w / \tau)` with
      ``n_iter`` rounds (a fixed-depth layer; gradients by unrolling);
    - ``log_partition``: :math:`\log \mathrm{perm}(e^{w})` by enumeration, for
      ``n <= 8`` only (the permanent is #P-hard);
    - ``enumerate``: all ``n!`` permutation matrices (``n <= 8``).

    Args:
        n: number of items.
        n_iter: Sinkhorn rounds of the relaxation.

    Example:
        >>> import torch
        >>> from couplings.structures import Permutation
        >>> perm = Permutation(3)
        >>> w = torch.tensor([[0., 5., 0.], [5., 0., 0.], [0., 0., 5.]])
        >>> perm.argmax(w)
        tensor([[0., 1., 0.],
                [1., 0., 0.],
                [0., 0., 1.]])
        >>> soft = perm.relaxed(w, tau=0.5)
        >>> bool(torch.allclose(soft.sum(-2), torch.ones(3))), round(float(soft[0, 1]), 3)
        (True, 1.0)
    """

    regularizers = ("entropy",)

    def __init__(self, n: int, n_iter: int = 20):
        self.n = check_positive_int(n, "n")
        self.n_iter = check_positive_int(n_iter, "n_iter")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.n, self.n)

    def argmax(self, w: torch.Tensor) -> torch.Tensor:
        w = check_weights(w, self.event_shape)
        flat = w.detach().reshape(-1, self.n, self.n)
        return matching(flat).matrix.reshape(w.shape)

    def _relaxed(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        flat = w.reshape(-1, self.n, self.n)
        return sinkhorn_operator(flat, tau, self.n_iter).reshape(w.shape)

    def _check_small(self) -> None:
        if self.n > MAX_EXACT_N:
            raise ValueError(
                f"exact sums over permutations are limited to n <= {MAX_EXACT_N}, got n={self.n}."
            )

    def enumerate(self) -> torch.Tensor:
        self._check_small()
        perms = all_permutations(self.n)  # (n!, n)
        return torch.nn.functional.one_hot(perms, self.n).to(torch.float64)

    def log_partition(self, w: torch.Tensor) -> torch.Tensor:
        w = check_weights(w, self.event_shape)
        self._check_small()
        perms = all_permutations(self.n).to(w.device)  # (n!, n)
        rows = torch.arange(self.n, device=w.device)
        scores = w[..., rows, perms].sum(-1)  # (*batch, n!)
        return torch.logsumexp(scores, dim=-1)
