"""Scratch matrices kept for the next solve on the CPU.

A dense solve on the CPU writes two ``n x m`` matrices that it drops when it returns: the cost
of a point cloud (when nothing keeps it: no autograd, see :func:`couplings.sinkhorn`) and the
kernel of the ``"kernel"`` backend. glibc's allocator may hand a freed block of a few MB back to
the operating system, and the next solve's first write into a fresh block then takes a page
fault per 4 KB page. At n = m = 1000 (float32) that was about 1 ms per matrix of a 9-13 ms
solve, in some processes and not in others (whether glibc trimmed its heap), and always for a
cost matrix allocated while the previous result still held its own. Keeping the released
buffers for the next solve removes it.

At most :data:`MAX_IDLE` idle buffers per ``(device, dtype)`` are kept, each of at most
:data:`LIMIT_BYTES`; CUDA has its own caching allocator and is not kept. :func:`clear` drops
them.
"""

from __future__ import annotations

import math
import threading

import torch

__all__ = ["LIMIT_BYTES", "MAX_IDLE", "take", "give", "clear"]

LIMIT_BYTES = 256 * 2**20
MAX_IDLE = 2  # a solve's cost and kernel
_idle: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
_lock = threading.Lock()


def take(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape``, with ``like``'s dtype and device: the
    smallest idle buffer of that kind that is large enough (it is no longer idle), else a new
    one."""
    numel = math.prod(shape)
    with _lock:
        pool = _idle.get((like.device, like.dtype), [])
        fits = [buf for buf in pool if buf.numel() >= numel]
        if fits:
            buf = min(fits, key=torch.Tensor.numel)
            _remove(pool, buf)
            return buf[:numel].view(shape)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def give(buf: torch.Tensor | None) -> None:
    """Keep the storage of ``buf``, which its owner no longer uses, for the next :func:`take`:
    on the CPU, up to :data:`LIMIT_BYTES`; when :data:`MAX_IDLE` buffers of its kind are
    already idle, the smallest of them all is dropped."""
    if buf is None or buf.device.type != "cpu":
        return
    storage = buf.untyped_storage()
    if storage.nbytes() > LIMIT_BYTES:
        return
    whole = buf.new_empty(0).set_(storage, 0, (storage.nbytes() // buf.element_size(),))
    with _lock:
        pool = _idle.setdefault((buf.device, buf.dtype), [])
        if any(kept.data_ptr() == whole.data_ptr() for kept in pool):
            return
        pool.append(whole)
        if len(pool) > MAX_IDLE:
            _remove(pool, min(pool, key=torch.Tensor.numel))


def _remove(pool: list[torch.Tensor], buf: torch.Tensor) -> None:
    """Remove ``buf`` itself from ``pool`` (``list.remove`` would compare tensors by value)."""
    del pool[next(i for i, kept in enumerate(pool) if kept is buf)]


def clear() -> None:
    """Drop every idle buffer."""
    with _lock:
        _idle.clear()
