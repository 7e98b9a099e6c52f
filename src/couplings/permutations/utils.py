"""Permutations as index vectors and as matrices; applying and inverting them on batches.

Convention: a permutation of ``n`` items is an index tensor ``sigma`` ``(B, n)`` (long), or the
matrix ``P`` ``(B, n, n)`` with ``P[b, i, sigma[b, i]] = 1``: item ``i`` goes to position
``sigma[i]``. Applying it to a sequence ``x`` puts ``x[i]`` at position ``sigma[i]``, which is
``P^T x``.
"""

from __future__ import annotations

import torch

__all__ = [
    "to_matrix",
    "to_indices",
    "invert_permutation",
    "apply_permutation",
    "kendall_tau",
    "random_permutation",
]


def _check_indices(sigma: torch.Tensor, name: str = "sigma") -> None:
    if not isinstance(sigma, torch.Tensor) or sigma.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor of indices, got {sigma!r:.60}.")
    n = sigma.shape[-1]
    expected = torch.arange(n, device=sigma.device).expand_as(sigma)
    if not torch.equal(torch.sort(sigma, dim=-1).values, expected):
        raise ValueError(f"{name} must hold a permutation of 0..{n - 1} along its last axis.")


def to_matrix(sigma: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Index vectors ``(..., n)`` to permutation matrices ``(..., n, n)``.

    Example:
        >>> import torch
        >>> to_matrix(torch.tensor([1, 2, 0]))
        tensor([[0., 1., 0.],
                [0., 0., 1.],
                [1., 0., 0.]])
    """
    _check_indices(sigma)
    n = sigma.shape[-1]
    return torch.nn.functional.one_hot(sigma.long(), n).to(dtype)


def to_indices(matrix: torch.Tensor) -> torch.Tensor:
    """Permutation matrices ``(..., n, n)`` to index vectors ``(..., n)`` (argmax of each row).

    Example:
        >>> import torch
        >>> to_indices(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        tensor([1, 0])
    """
    return matrix.argmax(dim=-1)


def invert_permutation(sigma: torch.Tensor) -> torch.Tensor:
    """The inverse permutation, ``(..., n)``: ``inv[sigma[i]] = i``.

    Example:
        >>> import torch
        >>> invert_permutation(torch.tensor([2, 0, 1]))
        tensor([1, 2, 0])
    """
    _check_indices(sigma)
    inv = torch.empty_like(sigma)
    src = torch.arange(sigma.shape[-1], device=sigma.device).expand_as(sigma).to(sigma.dtype)
    return inv.scatter_(-1, sigma, src)


def apply_permutation(x: torch.Tensor, sigma: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Move item ``i`` of ``x`` along ``dim`` to position ``sigma[..., i]``, for each batch entry.

    Works for sequences ``(B, n)``, pieces of images ``(B, n, C, H, W)``, or any ``(B, n, ...)``
    with ``dim = 1``; ``sigma`` is ``(B, n)``.

    Example:
        >>> import torch
        >>> apply_permutation(torch.tensor([[10, 20, 30]]), torch.tensor([[2, 0, 1]]))
        tensor([[20, 30, 10]])
    """
    _check_indices(sigma)
    if dim < 0:
        dim += x.dim()
    if dim != 1 or x.shape[:2] != sigma.shape:
        raise ValueError(
            f"apply_permutation expects x of shape (B, n, ...) with dim=1 and sigma (B, n); got "
            f"x {tuple(x.shape)}, sigma {tuple(sigma.shape)}, dim {dim}."
        )
    source = invert_permutation(sigma)  # position j takes item source[j]
    index = source.reshape(source.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return torch.gather(x, 1, index)


def kendall_tau(sigma: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    r"""Kendall's rank correlation between two batches of permutations ``(B, n)``, in [-1, 1].

    :math:`\tau = (\#\text{concordant} - \#\text{discordant}) / \binom{n}{2}`: 1 for equal
    permutations, -1 for reversed ones. (Equal to ``scipy.stats.kendalltau`` on permutations,
    which have no ties.)

    Example:
        >>> import torch
        >>> kendall_tau(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[3, 2, 1, 0]]))
        tensor([-1.])
    """
    _check_indices(sigma, "sigma")
    _check_indices(pi, "pi")
    if sigma.shape != pi.shape:
        raise ValueError(f"sigma and pi must have one shape, got {sigma.shape} and {pi.shape}.")
    n = sigma.shape[-1]
    if n < 2:
        return torch.ones(sigma.shape[:-1], device=sigma.device)
    ds = torch.sign(sigma.unsqueeze(-1) - sigma.unsqueeze(-2)).float()  # (..., n, n)
    dp = torch.sign(pi.unsqueeze(-1) - pi.unsqueeze(-2)).float()
    return (ds * dp).sum((-2, -1)) / (n * (n - 1))


def random_permutation(batch: int, n: int, *, generator: torch.Generator | None = None,
                       device=None) -> torch.Tensor:
    """Uniformly random permutations ``(batch, n)`` (argsort of uniform noise).

    Example:
        >>> import torch
        >>> sigma = random_permutation(2, 5, generator=torch.Generator().manual_seed(0))
        >>> sigma.shape, sorted(sigma[0].tolist())
        (torch.Size([2, 5]), [0, 1, 2, 3, 4])
    """
    noise = torch.rand(batch, n, generator=generator, device=device)
    return noise.argsort(dim=-1)
