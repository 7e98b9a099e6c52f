r"""Sinkhorn networks: permutation-equivariant score networks, and their unscrambling loss.

A shared network :math:`g_1` embeds each of the ``n`` items of an input on its own, and a linear
map :math:`g_2` turns each embedding into one row of the score matrix
``log_alpha`` ``(B, n, n)`` (row ``i``: where item ``i`` should go). Permuting the items permutes
the rows of ``log_alpha`` the same way: the network is permutation equivariant. The Sinkhorn
operator (or Gumbel-Sinkhorn noise, for training) turns the scores into a soft permutation, and
the Hungarian matching into a hard one.

References:
    Mena, Belanger, Linderman and Snoek, "Learning Latent Permutations with Gumbel-Sinkhorn
    Networks", ICLR 2018, section 4 and appendix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..solvers.matching import matching
from .distributions import GumbelSinkhorn

__all__ = ["SinkhornNetwork", "unscramble_loss", "soft_unscramble"]


class SinkhornNetwork(nn.Module):
    """Scores ``(B, n, n)`` for putting each of ``n`` items at each of ``n`` positions.

    Args:
        g1: shared item encoder, mapping ``(B * n, *item_shape)`` to ``(B * n, hidden)``.
        hidden: width of ``g1``'s output.
        n_items: number of items (and positions) ``n``.

    Use :meth:`mlp` for numbers or vectors and :meth:`cnn` for image pieces.

    Example:
        >>> import torch
        >>> from couplings.permutations import SinkhornNetwork
        >>> net = SinkhornNetwork.mlp(n_items=5, in_features=1, hidden=16)
        >>> net(torch.rand(3, 5, 1)).shape
        torch.Size([3, 5, 5])
    """

    def __init__(self, g1: nn.Module, hidden: int, n_items: int):
        super().__init__()
        self.g1, self.n_items = g1, n_items
        self.g2 = nn.Linear(hidden, n_items)

    @classmethod
    def mlp(cls, n_items: int, in_features: int = 1, hidden: int = 32) -> SinkhornNetwork:
        """``g1`` = Linear + ReLU on each item (the paper's network for sorting numbers)."""
        g1 = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        return cls(g1, hidden, n_items)

    @classmethod
    def cnn(
        cls, n_items: int, piece_shape: tuple[int, int, int], channels: int = 32,
        hidden: int = 64,
    ) -> SinkhornNetwork:
        """``g1`` = a small CNN on each image piece ``(C, H, W)``: a 3x3 convolution, ReLU, max
        pooling, then a linear layer and ReLU (after the paper's "convolution + max pooling"
        jigsaw network; the reference code's 5x5 kernels and bias-free ``g2`` differ)."""
        c, h, w = piece_shape
        g1 = nn.Sequential(
            nn.Conv2d(c, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(),
            nn.Linear(channels * math.ceil(h / 2) * math.ceil(w / 2), hidden),
            nn.ReLU(),
        )
        return cls(g1, hidden, n_items)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Scores ``log_alpha`` ``(B, n, n)`` for items ``(B, n, *item_shape)``."""
        if items.dim() < 3 or items.shape[1] != self.n_items:
            raise ValueError(
                f"items must have shape (B, {self.n_items}, ...), got {tuple(items.shape)}."
            )
        bsz, n = items.shape[:2]
        emb = self.g1(items.reshape(bsz * n, *items.shape[2:]))  # (B * n, hidden)
        return self.g2(emb).reshape(bsz, n, n)

    @torch.no_grad()
    def predict(self, items: torch.Tensor) -> torch.Tensor:
        """Hard assignment: ``sigma`` ``(B, n)``, item ``i`` goes to position ``sigma[i]``."""
        return matching(self(items)).indices


def soft_unscramble(plan: torch.Tensor, scrambled: torch.Tensor) -> torch.Tensor:
    r"""Reorder items with a (soft) permutation: position ``j`` gets ``sum_i P_ij x_i``.

    ``plan`` ``(..., B, n, n)``, ``scrambled`` ``(B, n, *item_shape)``; returns
    ``(..., B, n, *item_shape)``, i.e. :math:`P^T x` on the item axis.

    Example:
        >>> import torch
        >>> swap = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # item 0 -> position 1
        >>> soft_unscramble(swap, torch.tensor([[[10.0], [20.0]]])).squeeze(-1)
        tensor([[20., 10.]])
    """
    bsz, n = scrambled.shape[:2]
    flat = scrambled.reshape(bsz, n, -1)  # (B, n, D)
    out = plan.transpose(-2, -1) @ flat  # (..., B, n, D)
    return out.reshape(*plan.shape[:-2], n, *scrambled.shape[2:])


def unscramble_loss(
    log_alpha: torch.Tensor,
    scrambled: torch.Tensor,
    ordered: torch.Tensor,
    *,
    tau: float = 1.0,
    n_samples: int = 5,
    noise_factor: float = 1.0,
    n_iter: int = 20,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The paper's regression loss: mean squared error between the ordered items and the
    scrambled items reordered by Gumbel-Sinkhorn samples,
    :math:`\mathbb{E}_G \|x_{\text{ordered}} - S((X + G)/\tau)^T x_{\text{scrambled}}\|^2`.

    Args:
        log_alpha: scores ``(B, n, n)`` from a :class:`SinkhornNetwork`.
        scrambled: items in input order ``(B, n, *item_shape)``.
        ordered: the same items in their true order ``(B, n, *item_shape)``.
        tau, n_samples, noise_factor, n_iter: Gumbel-Sinkhorn settings.
        generator: source of the Gumbel noise (default: the global torch RNG).

    Returns:
        A scalar, averaged over samples, batch and items.

    Example:
        >>> import torch
        >>> x = torch.rand(4, 6, 1, generator=torch.Generator().manual_seed(0))
        >>> net = SinkhornNetwork.mlp(n_items=6)
        >>> loss = unscramble_loss(net(x), x, x.sort(dim=1).values)
        >>> loss.backward()
        >>> loss.dim(), net.g2.weight.grad is not None
        (0, True)
    """
    dist = GumbelSinkhorn(log_alpha, tau, noise_factor, n_iter)
    soft = dist.rsample((n_samples,), generator=generator)
    recon = soft_unscramble(soft, scrambled)  # (S, B, n, ...)
    return ((recon - ordered.unsqueeze(0)) ** 2).mean()
