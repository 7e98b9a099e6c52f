r"""Sequence-level optimal-transport losses for sequence-to-sequence models (Chen et al. 2019).

A decoder trained by maximum likelihood (MLE) is corrected token by token; these losses compare
the *bag* of what it generates with the bag of reference words, so a synonym or a word in a
nearby position costs little. At each target position ``t`` the decoder's distribution
:math:`\mathrm{softmax}(z_t)` over the vocabulary gives a *soft embedding*

.. math::

    \hat y_t = \mathrm{softmax}(z_t)^\top E \in \mathbb{R}^d,

with :math:`E` ``(V, d)`` the decoder's word embedding (differentiable in the logits, unlike a
sampled word). With the reference embeddings :math:`y_s = E_{w_s}`, both :math:`\ell_2`-normalised,
the cost is the cosine distance :math:`C_{ts} = 1 - \cos(\hat y_t, y_s) \in [0, 2]` and the loss
is the transport cost of the IPOT plan :math:`T` between uniform weights on the two sequences:

.. math::

    \mathcal L_{\mathrm{copy}} = \langle C, T \rangle, \qquad
    T = \mathrm{IPOT}_\beta(C, a, b)\ \text{(unrolled, gradients flow through it)}.

IPOT (Xie et al.) is a proximal-point method whose plan converges to the *exact* OT plan, so with
enough iterations the loss is the exact OT cost, a bag-of-words matching; after the few unrolled
iterations used in training it is a smoothed version of it. It vanishes (up to the unconverged
mass, of order :math:`e^{-t \min_{C_{ij} > 0} C_{ij} / \beta}` after ``t`` steps) when the
softmax is one-hot on the reference words in any order, and it does not depend on the order of
the positions. The number of iterations is fixed (``max_iter``): the loss is the cost of the plan
after ``max_iter`` proximal steps (IPOT's fixed-depth mode, ``min_iter = max_iter``, which
reports its marginal error but does not warn).

:func:`soft_copy_ot_loss` matches the generated soft embeddings to the reference target
sequence (the "soft-copying" term); :func:`sequence_ot_loss` matches them to the *source* sequence
(the "sequence-level" term, which asks the output to carry the content of the input). The source
words live in the source vocabulary; pass ``source_embedding`` (default: the same ``embedding``,
i.e. a shared vocabulary, as with joint sub-words) and optionally a ``projection`` (e.g. a learned
``nn.Linear``) mapping source embeddings into the decoder's embedding space. Chen et al. train
``MLE + 0.1 * OT``.

Padding: sequences of different lengths in one batch are given masks; a padded position gets
weight zero in the transport problem (``a_i = 0`` or ``b_j = 0``), which gives exactly the loss of
the unpadded sequence (the padded rows and columns of the plan are zero, and neither the padded
logits nor the padded ids receive a gradient, up to round-off).

Settings in the literature: the authors' NMT code uses ``beta = 0.5`` with 50 outer iterations,
their texar code ``beta = 1`` with 10; both 1 inner iteration.

References:
    Chen, Zhang, Zhang, Tao, Gan, Zhang, Li, Shen, Chen and Carin, "Improving Sequence-to-Sequence
    Learning via Optimal Transport", ICLR 2019;
    Xie, Wang, Wang and Zha, "A Fast Proximal Point Method for Computing Exact Wasserstein
    Distance", UAI 2019 (IPOT).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import (
    as_tensor,
    check_finite,
    check_float,
    check_positive_int,
    check_positive_scalar,
    check_reduction,
    check_same_dtype_device,
    reduce_batch,
)
from .solvers.ipot import ipot

__all__ = ["SequenceOTLoss", "SoftCopyOTLoss", "sequence_ot_loss", "soft_copy_ot_loss"]



# ---------------------------------------------------------------------------------------------
# validation


def _embedding_matrix(embedding, name: str) -> torch.Tensor:
    """The ``(V, d)`` weight of an ``nn.Embedding`` or a ``(V, d)`` tensor."""
    if isinstance(embedding, nn.Embedding):
        embedding = embedding.weight
    embedding = as_tensor(embedding, name)
    check_float(embedding, name)
    if embedding.dim() != 2 or embedding.shape[0] == 0 or embedding.shape[1] == 0:
        raise ValueError(f"{name} must be an nn.Embedding or a (V, d) tensor, got shape "
                         f"{tuple(embedding.shape)}.")
    check_finite(embedding, name)
    return embedding


def _batch_logits(logits) -> tuple[torch.Tensor, bool]:
    logits = as_tensor(logits, "logits")
    check_float(logits, "logits")
    if logits.dim() not in (2, 3) or logits.shape[-2] == 0:
        raise ValueError("logits must have shape (n, V) or (B, n, V) with n >= 1, got shape "
                         f"{tuple(logits.shape)}.")
    check_finite(logits, "logits")
    batched = logits.dim() == 3
    return (logits if batched else logits.unsqueeze(0)), batched


def _batch_ids(ids, name: str, batch: int, batched: bool) -> torch.Tensor:
    ids = as_tensor(ids, name)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (e.g. torch.long), got {ids.dtype}.")
    expected = "(B, m)" if batched else "(m,)"
    if ids.dim() != (2 if batched else 1) or ids.shape[-1] == 0:
        raise ValueError(f"{name} must have shape {expected} (the logits are "
                         f"{'batched' if batched else 'unbatched'}), got shape "
                         f"{tuple(ids.shape)}.")
    ids = ids if batched else ids.unsqueeze(0)
    if ids.shape[0] != batch:
        raise ValueError(f"{name} has batch size {ids.shape[0]} but logits have {batch}.")
    return ids.long()


def _batch_mask(mask, name: str, shape: tuple[int, int], batched: bool, like: torch.Tensor,
                what: str) -> torch.Tensor:
    """``(B, n)`` bool mask (``True`` = a real token); ``None`` is all ``True``."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=like.device)
    mask = as_tensor(mask, name)
    mask = mask if batched else mask.unsqueeze(0)
    if tuple(mask.shape) != shape:
        expected = shape if batched else shape[1:]
        raise ValueError(f"{name} must have shape {expected} to match {what}, got shape "
                         f"{tuple(mask.shape) if batched else tuple(mask.shape[1:])}.")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must be boolean (True = real token, False = padding) "
                             "or hold only 0 and 1.")
        mask = mask != 0
    if mask.device != like.device:
        raise ValueError(f"{name} is on device {mask.device} but logits are on {like.device}.")
    if not bool(mask.any(-1).all()):
        i = int((~mask.any(-1)).nonzero()[0, 0])
        raise ValueError(f"{name} marks every position of batch entry {i} as padding; each "
                         "sequence needs at least one real token.")
    return mask


def _check_ids_in_vocab(ids: torch.Tensor, mask: torch.Tensor, vocab: int, name: str,
                        emb_name: str) -> torch.Tensor:
    """Ids of the real tokens must index ``emb_name``; padded ids are replaced by 0."""
    real = ids[mask]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= vocab):
        raise ValueError(f"{name} holds ids in [{int(real.min())}, {int(real.max())}] but "
                         f"{emb_name} has {vocab} rows (ids must lie in [0, {vocab - 1}]); "
                         "check that the ids and the embedding use the same vocabulary.")
    return ids.masked_fill(~mask, 0)


def _check_options(beta, max_iter, n_inner, reduction):
    beta = check_positive_scalar(beta, "beta")
    max_iter = check_positive_int(max_iter, "max_iter")
    n_inner = check_positive_int(n_inner, "n_inner")
    reduction = check_reduction(reduction)
    return beta, max_iter, n_inner, reduction


# ---------------------------------------------------------------------------------------------
# the computation


def soft_embeddings(logits: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    r"""Soft embeddings :math:`\mathrm{softmax}(z_t)^\top E`: ``(..., V)`` logits and a
    ``(V, d)`` embedding give ``(..., d)``."""
    return torch.softmax(logits, dim=-1) @ embedding


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Cosine distance :math:`1 - \cos(x_i, y_j)`, ``(B, n, d)`` and ``(B, m, d)`` give
    ``(B, n, m)`` with entries in ``[0, 2]``."""
    return 1 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(-2, -1)


def _weights(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    w = mask.to(like.dtype)
    return w / w.sum(-1, keepdim=True)


def _ot_value(x, x_mask, y, y_mask, beta, max_iter, n_inner, grad, reduction, batched):
    cost = cosine_cost(x, y)  # (B, n, m)
    a, b = _weights(x_mask, cost), _weights(y_mask, cost)  # zero weight on padding
    # a fixed number of proximal steps is the loss's definition (Chen et al. unroll 10 to 50)
    result = ipot(cost, a, b, beta=beta, max_iter=max_iter, min_iter=max_iter, n_inner=n_inner,
                  grad=grad)
    value = (result.plan * cost).sum((-2, -1))  # <C, T>, (B,)
    if reduction == "none" and not batched:
        return value.squeeze(0)
    return reduce_batch(value, reduction)


def soft_copy_ot_loss(
    logits,
    target_ids,
    embedding,
    *,
    logits_mask=None,
    target_mask=None,
    beta: float = 0.5,
    max_iter: int = 50,
    n_inner: int = 1,
    grad: str = "unroll",
    reduction: str = "mean",
) -> torch.Tensor:
    r"""OT between the decoder's soft embeddings and the reference sequence's embeddings.

    :math:`\langle C, T\rangle` with :math:`C_{ts} = 1 - \cos(\mathrm{softmax}(z_t)^\top E,
    E_{w_s})` and :math:`T` the IPOT plan between uniform weights on the real (unpadded)
    positions of each sequence; see the module docstring.

    Args:
        logits: decoder logits ``(n, V)`` or ``(B, n, V)`` (teacher-forced or free-running).
        target_ids: reference token ids ``(m,)`` or ``(B, m)``, integers in ``[0, V)``.
        embedding: the decoder's word embedding, an ``nn.Embedding`` or a ``(V, d)`` tensor;
            its ``V`` must be the logits' vocabulary size.
        logits_mask: ``(n,)`` / ``(B, n)`` bool, ``True`` at generated positions to match,
            ``False`` at padding (default: all).
        target_mask: ``(m,)`` / ``(B, m)`` bool for the reference (default: all).
        beta: IPOT proximal step (the literature uses 0.5 to 1).
        max_iter: IPOT outer iterations (10 to 50 in the literature).
        n_inner: IPOT inner Sinkhorn iterations per outer one (1 in the literature).
        grad: differentiation mode passed to IPOT (``"unroll"``: back-propagate through the
            iterations, as Chen et al.).
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for ``(B,)`` values
            (a scalar for an unbatched call).

    Returns:
        The loss, differentiable in the logits and the embedding.

    Raises:
        ValueError / TypeError: on mismatched shapes or vocabularies, ids out of range,
            non-finite inputs, an all-padding sequence, or bad options.

    Example:
        >>> import torch
        >>> from couplings.seq_ot import soft_copy_ot_loss
        >>> E = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
        >>> target = torch.tensor([3, 1, 4, 1])
        >>> logits = 30.0 * torch.eye(10)[target.flip(0)]  # the reference words, reversed
        >>> float(soft_copy_ot_loss(logits, target, E)) < 1e-6  # a bag-of-words match
        True
        >>> logits = torch.zeros(4, 10, requires_grad=True)
        >>> loss = soft_copy_ot_loss(logits, target, E)
        >>> loss.backward(); bool(loss > 0.1), logits.grad.shape
        (True, torch.Size([4, 10]))
    """
    logits, batched = _batch_logits(logits)
    batch, n, vocab = logits.shape
    emb = _embedding_matrix(embedding, "embedding")
    if emb.shape[0] != vocab:
        raise ValueError(f"embedding has {emb.shape[0]} rows (vocabulary size) but logits have "
                         f"{vocab} entries per position; they must share one vocabulary.")
    check_same_dtype_device(logits=logits, embedding=emb)
    ids = _batch_ids(target_ids, "target_ids", batch, batched)
    m = ids.shape[1]
    x_mask = _batch_mask(logits_mask, "logits_mask", (batch, n), batched, logits, "the logits")
    y_mask = _batch_mask(target_mask, "target_mask", (batch, m), batched, logits,
                         "target_ids")
    ids = _check_ids_in_vocab(ids.to(logits.device), y_mask, vocab, "target_ids", "embedding")
    beta, max_iter, n_inner, reduction = _check_options(beta, max_iter, n_inner, reduction)
    x = soft_embeddings(logits, emb)  # (B, n, d)
    y = emb[ids]  # (B, m, d)
    return _ot_value(x, x_mask, y, y_mask, beta, max_iter, n_inner, grad, reduction, batched)


def sequence_ot_loss(
    logits,
    source_ids,
    embedding,
    *,
    source_embedding=None,
    projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
    logits_mask=None,
    source_mask=None,
    beta: float = 0.5,
    max_iter: int = 50,
    n_inner: int = 1,
    grad: str = "unroll",
    reduction: str = "mean",
) -> torch.Tensor:
    r"""OT between the decoder's soft embeddings and the *source* sequence's embeddings.

    The sequence-level term of Chen et al.: :math:`\langle C, T\rangle` with
    :math:`C_{ts} = 1 - \cos(\mathrm{softmax}(z_t)^\top E, \phi(E^{src}_{x_s}))`, where
    :math:`E^{src}` is ``source_embedding`` (default ``embedding``: one shared vocabulary) and
    :math:`\phi` is ``projection`` (default the identity). With separate vocabularies, either the
    two embedding spaces must be aligned or ``projection`` (e.g. a trained ``nn.Linear(d_src,
    d)``) maps one into the other; otherwise the cosine between them means nothing.

    Args:
        logits: decoder logits ``(n, V)`` or ``(B, n, V)``.
        source_ids: source token ids ``(m,)`` or ``(B, m)``, indexing ``source_embedding``.
        embedding: the decoder's word embedding (``nn.Embedding`` or ``(V, d)``).
        source_embedding: the source word embedding (``nn.Embedding`` or ``(V_src, d_src)``);
            default ``embedding``.
        projection: callable mapping ``(B, m, d_src)`` to ``(B, m, d)``; default none (then
            ``d_src`` must equal ``d``).
        logits_mask, source_mask: bool masks, ``False`` at padding (default: all real).
        beta, max_iter, n_inner, grad, reduction: as in :func:`soft_copy_ot_loss`.

    Returns:
        The loss, differentiable in the logits, both embeddings and the projection.

    Example:
        >>> import torch
        >>> from couplings.seq_ot import sequence_ot_loss
        >>> g = torch.Generator().manual_seed(0)
        >>> E_tgt, E_src = torch.randn(10, 8, generator=g), torch.randn(6, 4, generator=g)
        >>> proj = torch.nn.Linear(4, 8)
        >>> logits = torch.randn(2, 5, 10, generator=g, requires_grad=True)
        >>> source = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
        >>> loss = sequence_ot_loss(logits, source, E_tgt, source_embedding=E_src,
        ...                         projection=proj, source_mask=source != 0)
        >>> loss.backward(); proj.weight.grad.shape
        torch.Size([8, 4])
    """
    logits, batched = _batch_logits(logits)
    batch, n, vocab = logits.shape
    emb = _embedding_matrix(embedding, "embedding")
    if emb.shape[0] != vocab:
        raise ValueError(f"embedding has {emb.shape[0]} rows (vocabulary size) but logits have "
                         f"{vocab} entries per position; they must share one vocabulary.")
    src_emb = emb if source_embedding is None else _embedding_matrix(source_embedding,
                                                                     "source_embedding")
    check_same_dtype_device(logits=logits, embedding=emb, source_embedding=src_emb)
    if projection is not None and not callable(projection):
        raise TypeError(f"projection must be callable (e.g. an nn.Linear), got "
                        f"{type(projection).__name__}.")
    ids = _batch_ids(source_ids, "source_ids", batch, batched)
    m = ids.shape[1]
    x_mask = _batch_mask(logits_mask, "logits_mask", (batch, n), batched, logits, "the logits")
    y_mask = _batch_mask(source_mask, "source_mask", (batch, m), batched, logits, "source_ids")
    ids = _check_ids_in_vocab(ids.to(logits.device), y_mask, src_emb.shape[0], "source_ids",
                              "source_embedding" if source_embedding is not None else
                              "embedding (shared with the source)")
    beta, max_iter, n_inner, reduction = _check_options(beta, max_iter, n_inner, reduction)
    x = soft_embeddings(logits, emb)  # (B, n, d)
    y = src_emb[ids]  # (B, m, d_src)
    if projection is not None:
        y = projection(y)  # (B, m, d)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != (batch, m, emb.shape[1]):
            raise ValueError(f"projection must map (B, m, d_src) = {(batch, m, src_emb.shape[1])}"
                             f" to (B, m, d) = {(batch, m, emb.shape[1])}, got "
                             f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y)}.")
        check_finite(y, "projection(source embeddings)")
    elif src_emb.shape[1] != emb.shape[1]:
        raise ValueError(f"source_embedding has dimension {src_emb.shape[1]} but embedding has "
                         f"{emb.shape[1]}; pass a projection (e.g. nn.Linear"
                         f"({src_emb.shape[1]}, {emb.shape[1]})) to map one onto the other.")
    return _ot_value(x, x_mask, y, y_mask, beta, max_iter, n_inner, grad, reduction, batched)


class SoftCopyOTLoss(nn.Module):
    """:func:`soft_copy_ot_loss` as a module, holding the IPOT settings.

    ``SoftCopyOTLoss(beta, max_iter)(logits, target_ids, embedding, logits_mask=None,
    target_mask=None)``.

    Example:
        >>> import torch
        >>> from couplings.seq_ot import SoftCopyOTLoss
        >>> emb = torch.nn.Embedding(12, 6)
        >>> logits = torch.randn(3, 7, 12, requires_grad=True)
        >>> SoftCopyOTLoss(beta=1.0, max_iter=10)(logits, torch.randint(12, (3, 5)), emb).backward()
        >>> emb.weight.grad.shape
        torch.Size([12, 6])
    """

    def __init__(self, beta: float = 0.5, max_iter: int = 50, n_inner: int = 1,
                 grad: str = "unroll", reduction: str = "mean"):
        super().__init__()
        self.beta, self.max_iter, self.n_inner, self.reduction = _check_options(
            beta, max_iter, n_inner, reduction)
        self.grad = grad

    def forward(self, logits, target_ids, embedding, logits_mask=None,
                target_mask=None) -> torch.Tensor:
        return soft_copy_ot_loss(logits, target_ids, embedding, logits_mask=logits_mask,
                                 target_mask=target_mask, beta=self.beta,
                                 max_iter=self.max_iter, n_inner=self.n_inner, grad=self.grad,
                                 reduction=self.reduction)


class SequenceOTLoss(nn.Module):
    """:func:`sequence_ot_loss` as a module; an optional ``projection`` module (trained with the
    model) maps source embeddings into the decoder's embedding space.

    ``SequenceOTLoss(beta, max_iter, projection=None)(logits, source_ids, embedding,
    source_embedding=None, logits_mask=None, source_mask=None)``.

    Example:
        >>> import torch
        >>> from couplings.seq_ot import SequenceOTLoss
        >>> loss_fn = SequenceOTLoss(projection=torch.nn.Linear(4, 6))
        >>> logits = torch.randn(2, 5, 12)
        >>> src_emb, tgt_emb = torch.nn.Embedding(9, 4), torch.nn.Embedding(12, 6)
        >>> loss = loss_fn(logits, torch.randint(9, (2, 3)), tgt_emb, source_embedding=src_emb)
        >>> loss.backward(); loss_fn.projection.weight.grad.shape
        torch.Size([6, 4])
    """

    def __init__(self, beta: float = 0.5, max_iter: int = 50, n_inner: int = 1,
                 grad: str = "unroll", reduction: str = "mean",
                 projection: nn.Module | None = None):
        super().__init__()
        self.beta, self.max_iter, self.n_inner, self.reduction = _check_options(
            beta, max_iter, n_inner, reduction)
        self.grad = grad
        self.projection = projection

    def forward(self, logits, source_ids, embedding, source_embedding=None, logits_mask=None,
                source_mask=None) -> torch.Tensor:
        return sequence_ot_loss(logits, source_ids, embedding, source_embedding=source_embedding,
                                projection=self.projection, logits_mask=logits_mask,
                                source_mask=source_mask, beta=self.beta, max_iter=self.max_iter,
                                n_inner=self.n_inner, grad=self.grad, reduction=self.reduction)
