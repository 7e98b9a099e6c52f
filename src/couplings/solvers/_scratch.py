"""Scratch matrices kept for the next solve on the CPU.

A solve's ``n x m`` scratch matrix (the kernel of the ``"kernel"`` backend) is written once per
absorption and dropped when the solve returns. On the CPU, glibc's allocator may hand a freed
block of a few MB back to the operating system, and the next solve's first write into a fresh
block then takes a page fault per 4 KB page. At n = m = 1000 (float32) that was 1.3 ms of a 9.5
ms solve, in some processes and not in others (whether glibc trimmed its heap), for the
absorption and for the next cost matrix. Keeping the last released buffer for the next solve
removes it.

At most one idle buffer per ``(device, dtype)`` is kept, of at most :data:`LIMIT_BYTES`; CUDA
has its own caching allocator and is not kept. :func:`clear` drops them.
"""

from __future__ import annotations

import math
import threading

import torch

__all__ = ["LIMIT_BYTES", "take", "give", "clear"]

LIMIT_BYTES = 256 * 2**20
_idle: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
_lock = threading.Lock()


def take(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape``, with ``like``'s dtype and device: the
    idle buffer of that kind when it is large enough (it is no longer idle), else a new one."""
    numel = math.prod(shape)
    with _lock:
        buf = _idle.get((like.device, like.dtype))
        if buf is not None and buf.numel() >= numel:
            del _idle[like.device, like.dtype]
            return buf[:numel].view(shape)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def give(buf: torch.Tensor | None) -> None:
    """Keep the storage of ``buf``, which its owner no longer uses, for the next :func:`take`:
    on the CPU, up to :data:`LIMIT_BYTES`, in place of a smaller idle buffer of its kind."""
    if buf is None or buf.device.type != "cpu":
        return
    storage = buf.untyped_storage()
    if storage.nbytes() > LIMIT_BYTES:
        return
    whole = buf.new_empty(0).set_(storage, 0, (storage.nbytes() // buf.element_size(),))
    with _lock:
        old = _idle.get((buf.device, buf.dtype))
        if old is None or old.numel() < whole.numel():
            _idle[buf.device, buf.dtype] = whole


def clear() -> None:
    """Drop every idle buffer."""
    with _lock:
        _idle.clear()
