"""Where the Sinkhorn loop keeps its check schedule and its results per problem: when each
problem is next checked, the errors and iterations it was last checked at, whether it is still
active, and its error and iterations so far.

These are arrays of ``B`` numbers, and the loop runs about 45 operations on them at each
check. On the CPU they are numpy arrays: an operation on a few numbers costs about 1 us there
against about 3 us for torch's (dispatch and the tensor-iterator setup), which made the checks
about a tenth of a whole solve at ``n = 1000`` (float32, 2 cores; three or four checks of
about 125 us in a solve of 5 ms). Elsewhere (a GPU) they stay torch tensors on the device,
so that a solve still syncs only at its checks. :func:`~.sinkhorn._check_steps` takes either
kind (:func:`xp`). The over-relaxation and the rates it comes from stay torch tensors on the
device: their rounding steers the iterations, and numpy's ``pow`` rounds differently from
torch's in the last place.

Example:
    >>> import torch
    >>> book = Bookkeeping(torch.zeros(2, 3))
    >>> book.host, book.full(2, 1.5).tolist(), book.give(book.full(2, 0, "long")).tolist()
    (True, [1.5, 1.5], [0, 0])
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

__all__ = ["Bookkeeping", "xp"]

_NUMPY_REALS = {torch.float32: np.float32, torch.float64: np.float64}


def xp(x):
    """The array module of ``x``: numpy for a numpy array, else torch."""
    return np if isinstance(x, np.ndarray) else torch


def as_long(x):
    """``x`` as 64-bit integers, either kind."""
    return x.astype(np.int64) if isinstance(x, np.ndarray) else x.long()


class Bookkeeping:
    """How the loop makes, reads and hands back its per-problem arrays for problems held in
    tensors like ``like`` (its device and real dtype): numpy on the CPU in float32 or float64
    (``host``), torch on ``like``'s device otherwise."""

    def __init__(self, like: torch.Tensor):
        self.device, self.dtype = like.device, like.dtype
        self.host = like.device.type == "cpu" and like.dtype in _NUMPY_REALS
        self.xp = np if self.host else torch

    def full(self, size: int, value, kind: str = "real"):
        """``(size,)`` filled with ``value``; ``kind`` ``"real"`` (the problems' dtype),
        ``"long"`` or ``"bool"``."""
        if self.host:
            dtype = {"real": _NUMPY_REALS.get(self.dtype), "long": np.int64,
                     "bool": np.bool_}[kind]
            return np.full(size, value, dtype=dtype)
        dtype = {"real": self.dtype, "long": torch.long, "bool": torch.bool}[kind]
        return torch.full((size,), value, dtype=dtype, device=self.device)

    def take(self, t: torch.Tensor):
        """A ``(B,)`` tensor of the solve (on its device, or a CPU tensor) as a bookkeeping
        array."""
        if self.host:
            return t.detach().cpu().numpy()
        return t.to(self.device)

    def give(self, x) -> torch.Tensor:
        """A bookkeeping array as a tensor on the solve's device (on the CPU, sharing memory:
        the loop never writes an array in place)."""
        return torch.from_numpy(x) if self.host else x

    def quiet(self):
        """A context for numpy arithmetic that may meet ``0 / 0`` or ``log(0)``: torch gives
        ``nan`` and ``inf`` there silently, and so must numpy."""
        return np.errstate(all="ignore") if self.host else contextlib.nullcontext()

    def schedule(self, active, due_at, limit: int) -> tuple[int, int, list[int]]:
        """The number of ``active`` problems, the earliest ``due_at`` among them (``limit``
        if none) and their ``due_at`` values, on the host: one sync on a device."""
        if self.host:
            dues = due_at[active]
            return len(dues), (int(dues.min()) if len(dues) else limit), dues.tolist()
        soonest = torch.where(active, due_at, limit).min()
        n_active, soonest, *dues = torch.cat([active.sum().unsqueeze(0), soonest.unsqueeze(0),
                                              torch.where(active, due_at, -1)]).tolist()
        return n_active, soonest, [d for d in dues if d >= 0]
