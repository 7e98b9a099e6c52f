r"""Correlated k-subsets: k-subsets of a chain with a bonus for neighbours chosen together.

The items ``0..d-1`` lie on a chain (the words of a sentence, the frames of a signal). A point is
a k-subset :math:`x \in \{0, 1\}^d` together with the products of neighbours,

.. math::  z = (x_1, \dots, x_d, \; x_1 x_2, \dots, x_{d-1} x_d) \in \{0, 1\}^{2d - 1},

so that :math:`\langle w, z \rangle = \sum_i u_i x_i + \sum_i p_i x_i x_{i+1}` scores the items
(``u``) and their adjacency (``p``): positive ``p`` favours contiguous selections. The
exponential family over this set is a chain-structured model restricted to :math:`|x| = k`;
its log-partition and its argmax are dynamic programmes over (position, count, last bit), in
log-space and max-plus algebra respectively, :math:`O(dk)` per problem. This is the correlated
top-k of the stochastic softmax tricks paper, whose relaxation is the exponential-family
marginals :math:`\mu(w / \tau)`.

References:
    Paulus, Choi, Tarlow, Krause and Maddison, "Gradient Estimation with Stochastic Softmax
    Tricks", NeurIPS 2020 (section 6, subset selection).
"""

from __future__ import annotations

import itertools

import torch

from .._validation import check_positive_int
from .base import Structure, check_weights, logaddexp

__all__ = ["ChainKSubset"]


class ChainKSubset(Structure):
    r"""k-subsets of a chain of ``d`` items, with pairwise terms on neighbours.

    Weights and points have ``event_shape = (2d - 1,)``: the first ``d`` entries are the items,
    the last ``d - 1`` the neighbour pairs ``(i, i+1)``. ``split(w)`` and ``join(u, p)`` convert.

    - ``argmax``: the best k-subset by a max-plus dynamic programme (Viterbi);
    - ``log_partition``: the log-space dynamic programme; ``marginals`` its gradient;
    - ``relaxed(w, tau, reg="ef")``: :math:`\mu(w / \tau)`.

    Args:
        d: chain length (``>= 2``).
        k: subset size, ``1 <= k <= d - 1``.

    Example:
        >>> import torch
        >>> from couplings.structures import ChainKSubset
        >>> chain = ChainKSubset(5, 2)
        >>> u = torch.tensor([1.0, 0.0, 0.9, 0.0, 0.95])
        >>> chain.split(chain.argmax(chain.join(u, torch.zeros(4))))[0]  # items alone: 0 and 4
        tensor([1., 0., 0., 0., 1.])
        >>> chain.split(chain.argmax(chain.join(u, torch.ones(4))))[0]  # a bonus for neighbours
        tensor([1., 1., 0., 0., 0.])
    """

    regularizers = ("ef",)

    def __init__(self, d: int, k: int):
        self.d = check_positive_int(d, "d")
        self.k = check_positive_int(k, "k")
        if self.d < 2 or not 1 <= self.k <= self.d - 1:
            raise ValueError(f"ChainKSubset needs d >= 2 and 1 <= k <= d - 1, got d={d}, k={k}.")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (2 * self.d - 1,)

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(*batch, 2d-1)`` -> items ``(*batch, d)`` and pairs ``(*batch, d-1)``."""
        return z[..., :self.d], z[..., self.d:]

    def join(self, u: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Items ``(*batch, d)`` and pairs ``(*batch, d-1)`` -> ``(*batch, 2d-1)``."""
        if u.shape[-1] != self.d or p.shape[-1] != self.d - 1:
            raise ValueError(f"join needs u (*, {self.d}) and p (*, {self.d - 1}), got "
                             f"{tuple(u.shape)} and {tuple(p.shape)}.")
        return torch.cat([u, p], dim=-1)

    def _dp(self, w: torch.Tensor, reduce) -> torch.Tensor:
        """Value of the programme over (position, count, last bit) with ``reduce`` as the sum."""
        u, p = self.split(w)
        batch = w.shape[:-1]
        neg = torch.finfo(w.dtype).min / 4  # a finite -inf: no inf - inf in the gradients
        # state (*batch, k+1 counts, 2 last bits): after item 0
        state = torch.full((*batch, self.k + 1, 2), neg, dtype=w.dtype, device=w.device)
        state[..., 0, 0] = 0.0
        state[..., 1, 1] = u[..., 0]
        for i in range(1, self.d):
            off = reduce(state[..., 0], state[..., 1])  # item i not taken: any last bit
            on = reduce(state[..., :-1, 0], state[..., :-1, 1] + p[..., i - 1, None])
            on = on + u[..., i, None]
            first = torch.full_like(off[..., :1], neg)
            state = torch.stack([off, torch.cat([first, on], dim=-1)], dim=-1)
        return reduce(state[..., self.k, 0], state[..., self.k, 1])

    def log_partition(self, w: torch.Tensor) -> torch.Tensor:
        w = check_weights(w, self.event_shape)
        return self._dp(w, logaddexp)

    def argmax(self, w: torch.Tensor) -> torch.Tensor:
        w = check_weights(w, self.event_shape)
        with torch.enable_grad():
            x = w.detach().requires_grad_(True)
            # the gradient of the max-plus value is the indicator of the maximizing path; the
            # two-way max routes it to one argument (the first on ties), so the result is 0/1
            best = self._dp(x, lambda a, b: torch.stack([a, b], -1).max(-1).values)
            (z,) = torch.autograd.grad(best.sum(), x)
        return z.detach()

    def _relaxed(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        return self.marginals(w / tau)

    def enumerate(self) -> torch.Tensor:
        rows = []
        for subset in itertools.combinations(range(self.d), self.k):
            x = torch.zeros(self.d, dtype=torch.float64)
            x[list(subset)] = 1.0
            rows.append(torch.cat([x, x[:-1] * x[1:]]))
        return torch.stack(rows)
