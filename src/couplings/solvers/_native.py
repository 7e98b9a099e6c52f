r"""Native CPU kernels for the kernel-domain Sinkhorn update, built on first use.

On this project's CPUs (AMD EPYC, torch's CPU wheel with MKL) a matrix-vector product runs on
one thread at about half the memory bandwidth the two cores reach, and the kernel backend's
update is mostly such a product plus about a dozen small torch operations. The C source next
to this module (``_native_kernels.c``) does both in one call:

* ``batched_mv``: ``K w`` or ``K^T w`` for a batch of contiguous matrices, split across
  torch's threads (rows in blocks; columns in slices, every row added in order). float32,
  best of 300, 2 cores: 38 against 71 us at ``n = m = 1000`` (rows), 33 against 76 us
  (columns); 1.7 against 3.5 ms at 4000; 40 against 100 us for ``B = 1024`` matrices of
  ``32 x 32`` (columns).
* ``kernel_update``: the whole update of :meth:`KernelSoftmin._matvec
  <couplings.solvers._softmin.KernelSoftmin._matvec>` (the weighted exponentials, the product,
  the logarithms and the four numbers its safety test reads) with one call instead of about
  twelve torch operations.
* ``ctransform`` and ``absorb``: the c-transforms that anchor a solve's first kernel (31 and
  41 against 136 and 104 us for the compiled ones at ``n = m = 1000``, rows and columns) and
  the absorption that writes a kernel (225 against 310 us).
* ``sqeuclidean_into``: a point cloud's squared Euclidean cost in one pass for ``d <= 3``
  (88 against 183 us at ``n = m = 1000``, ``d = 2``), and ``sqeuclidean_pull``, its gradient
  in the points, one pass over the incoming gradient per side.

In float32 the exponentials and logarithms are the C source's own (a polynomial after a
range reduction, which the compiler vectorizes; glibc's ``expf`` and ``logf`` are scalar
calls): within one unit in the last place for ``exp`` and three for ``log``, tested.

Each output entry is summed in an order fixed by the matrix size alone (not by the batch, the
thread count or the data's alignment), so a problem's results are the same bit for bit in any
batch, as the solver's active-set compaction requires.

The library is compiled with the C compiler (``$CC``, else ``cc``) into a cache directory
(``$COUPLINGS_CACHE_DIR``, else ``$XDG_CACHE_HOME/couplings``, else ``~/.cache/couplings``)
under a name that hashes the source, the compiler and the CPU's flags (it is built for the
CPU it runs on), written atomically, so concurrent processes can race safely. It links the
OpenMP runtime torch has already loaded; where that would load a second runtime instead (two
thread pools fighting over the cores), or where anything fails, the kernels are not used and
torch's operations run instead, with the same results up to rounding. ``COUPLINGS_NATIVE=0``
turns them off; :func:`status` says what happened.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import re
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["absorb", "available", "batched_mv", "ctransform", "kernel_update",
           "sqeuclidean_into", "sqeuclidean_pull", "status", "usable"]

_SOURCE = Path(__file__).with_name("_native_kernels.c")
_VERSION = 7  # couplings_native_version() of the source this module calls
_FLAGS = ["-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared", "-fopenmp"]
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_OPENMP = re.compile(r"\S*/lib(?:g|i)?omp[^/\s]*\.so[^/\s]*")

enabled = os.environ.get("COUPLINGS_NATIVE", "1") != "0"  # tests switch it per test
_lib = None
_status = "not loaded yet"
_lock = threading.Lock()


def _cache_dir() -> Path:
    root = os.environ.get("COUPLINGS_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "couplings"


def _cpu_flags() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags (Linux), else its name."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _openmp_runtimes() -> set[str] | None:
    """The OpenMP runtimes mapped into this process (Linux), ``None`` where unknown."""
    try:
        with open("/proc/self/maps") as fh:
            return {os.path.realpath(p) for p in _OPENMP.findall(fh.read())}
    except OSError:
        return None


def _build() -> Path:
    compiler = shlex.split(os.environ.get("CC", "cc"))
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True,
                             check=True, timeout=60).stdout.splitlines()[:1]
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), *compiler, *_FLAGS, *version,
                                    _cpu_flags()]).encode()).hexdigest()[:20]
    target = _cache_dir() / f"couplings-native-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([*compiler, *_FLAGS, str(_SOURCE), "-o", tmp, "-lm"],
                       capture_output=True, text=True, check=True, timeout=300)
        os.replace(tmp, target)  # atomic: a concurrent build writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _declare(lib):
    ptr, long_, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        signatures = {
            "batched_mv": [ptr, ptr, ptr, long_, long_, long_, int_, int_],
            "kernel_update": [ptr] * 8 + [long_, long_, long_, int_, int_, int_, ptr, ptr,
                                                      real, ptr, ptr, ptr, int_],
            "ctransform": [ptr, ptr, real, ptr, long_, long_, long_, int_, int_],
            "absorb": [ptr, ptr, ptr, ptr, real, real, real, long_, long_, long_, int_],
            "sqeuclidean": [ptr] * 5 + [long_, long_, long_, long_, ptr, int_],
            "sqeuclidean_pull": [ptr] * 6 + [long_, long_, long_, long_, int_, int_],
        }
        for name, argtypes in signatures.items():
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes, fn.restype = argtypes, None


def _load():
    """Build and load the library once per process; ``None`` (and :func:`status` says why)
    when that is not possible here."""
    global _lib, _status
    with _lock:
        if _status != "not loaded yet":
            return _lib
        try:
            before = _openmp_runtimes()
            lib = ctypes.CDLL(str(_build()))
            after = _openmp_runtimes()
            if before is not None and after is not None and len(after) > max(1, len(before)):
                _status = ("not used: it would run a second OpenMP runtime beside torch's "
                           f"({sorted(after)})")
                return None
            if lib.couplings_native_version() != _VERSION:
                _status = "not used: the cached library is of another version"
                return None
            _declare(lib)
            _lib, _status = lib, "loaded"
        except Exception as err:  # no compiler, no OpenMP, a read-only cache...
            detail = getattr(err, "stderr", "") or ""
            _status = f"not used: {type(err).__name__}: {err} {detail}"[:500]
        return _lib


def available() -> bool:
    """Whether the native kernels run in this process (builds them on the first call)."""
    return enabled and (_lib is not None or _load() is not None)


def status() -> str:
    """``"loaded"``, ``"disabled"`` (``COUPLINGS_NATIVE=0``), ``"not loaded yet"`` or why they
    are not used."""
    return "disabled" if not enabled else _status


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the native kernels can take these tensors: on the CPU, float32 or float64, of
    one dtype, recording no autograd graph, and the kernels available."""
    first = tensors[0]
    if first.device.type != "cpu" or first.dtype not in _DTYPES:
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != first.dtype or (grad and t.requires_grad):
            return False
    return available()


def _fn(name: str, dtype: torch.dtype):
    lib = _lib if _lib is not None else _load()
    if lib is None:
        raise RuntimeError(f"couplings' native kernels are {status()}")
    return getattr(lib, f"{name}_{_DTYPES[dtype]}")


def batched_mv(mat: torch.Tensor, vec: torch.Tensor, *, transpose: bool = False) -> torch.Tensor:
    """``mat @ vec`` ``(B, n)`` for ``mat`` ``(B, n, m)``, ``vec`` ``(B, m)``; with
    ``transpose``, ``vec @ mat`` ``(B, m)`` for ``vec`` ``(B, n)``. ``mat`` contiguous or the
    transpose of a contiguous tensor; only where :func:`usable`."""
    if not mat.is_contiguous():  # a transposed view: the other product of its storage
        mat, transpose = mat.transpose(-2, -1), not transpose
    mat = mat.contiguous()
    vec = vec.contiguous()
    bsz, n, m = mat.shape
    out = mat.new_empty(bsz, m if transpose else n)
    _fn("batched_mv", mat.dtype)(mat.data_ptr(), vec.data_ptr(), out.data_ptr(), bsz, n, m,
                                 0 if transpose else 1, torch.get_num_threads())
    return out


def kernel_update(kernel, pot, anchor, weights, other, *, rows: bool, positive: bool,
                  old=None, excess=None, cap: float = math.inf, error_weights=None,
                  error_of_relaxed: bool = False):
    r"""One kernel-domain update: with ``d = pot - anchor`` (0 where the weight is 0, unless
    ``positive``) and ``w = weights e^d``, ``out = other - log(K w)`` (``rows``) or
    ``other - log(K^T w)``; returns ``out``, ``(min d, min log S, max log S, sum w)`` over
    the batch (NaN where any met a NaN), and the epilogue's two results (``None`` unless
    asked):

    * ``relaxed = out + clamp((out - old) * excess, -cap, cap)`` ``(B, l)``, for ``old``
      ``(B, l)`` and ``excess`` ``(B,)``;
    * ``error`` ``(B,)``, :math:`\sum_p w_p |e^{r_p - out_p} - 1|` over the
      positive ``error_weights`` ``(B, l)``, with ``r`` the relaxed result
      (``error_of_relaxed``) or ``old``.

    ``kernel`` ``(B, n, m)`` contiguous; ``pot``, ``anchor``, ``weights`` ``(B, k)``,
    ``other`` ``(B, l)``; only where :func:`usable`."""
    bsz, n, m = kernel.shape
    # (the loop's tensors are contiguous already: .contiguous() returns them as they are)
    pot, anchor, weights, other = (pot.contiguous(), anchor.contiguous(), weights.contiguous(),
                                   other.contiguous())
    out, scaled = torch.empty_like(other), torch.empty_like(pot)
    stats = (ctypes.c_double * 4)()
    relaxed = error = old_ptr = excess_ptr = relaxed_ptr = weights_ptr = error_ptr = None
    if old is not None:  # (each contiguous tensor is kept alive until the call returns)
        old = old.contiguous()
        old_ptr = old.data_ptr()
        if excess is not None:
            excess = excess.contiguous()  # (B, 1) or (B,)
            relaxed = torch.empty_like(other)
            excess_ptr, relaxed_ptr = excess.data_ptr(), relaxed.data_ptr()
        if error_weights is not None:
            error_weights = error_weights.contiguous()
            error = other.new_empty(bsz)
            weights_ptr, error_ptr = error_weights.data_ptr(), error.data_ptr()
    _fn("kernel_update", kernel.dtype)(
        kernel.data_ptr(), pot.data_ptr(), anchor.data_ptr(), weights.data_ptr(),
        other.data_ptr(), out.data_ptr(), scaled.data_ptr(), ctypes.addressof(stats), bsz, n,
        m, int(rows), int(positive), torch.get_num_threads(), old_ptr, excess_ptr, cap,
        relaxed_ptr, weights_ptr, error_ptr, int(error_of_relaxed))
    return out, tuple(stats), relaxed, error


def ctransform(cost: torch.Tensor, h: torch.Tensor, scale: float, *, rows: bool) -> torch.Tensor:
    """``min_j (scale C_ij - h_j)`` ``(B, n)`` for ``h`` ``(B, m)`` (``rows``), else
    ``min_i (scale C_ij - h_i)`` ``(B, m)`` for ``h`` ``(B, n)``; ``h = -inf`` leaves an index
    out. ``cost`` ``(B, n, m)`` contiguous; only where :func:`usable`."""
    bsz, n, m = cost.shape
    h = h.contiguous()
    out = cost.new_empty(bsz, n if rows else m)
    _fn("ctransform", cost.dtype)(cost.data_ptr(), h.data_ptr(), scale, out.data_ptr(), bsz, n,
                                  m, int(rows), torch.get_num_threads())
    return out


def absorb(out, alpha, beta, cost, scale: float, cutoff: float, *,
           upper: float = math.inf) -> torch.Tensor:
    """``out_ij = exp(min(z_ij, upper))`` for ``z_ij = alpha_i + beta_j - scale C_ij`` where
    ``z_ij`` is at least ``cutoff``, else 0, written into ``out`` ``(B, n, m)`` and returned.
    ``out`` and ``cost`` contiguous; only where :func:`usable`. In float32 the exponential is
    the vectorized one of the C source (within one unit in the last place of the exact value;
    0 below ``exp(-87.3)``)."""
    bsz, n, m = cost.shape
    alpha, beta = alpha.contiguous(), beta.contiguous()
    _fn("absorb", cost.dtype)(out.data_ptr(), alpha.data_ptr(), beta.data_ptr(),
                              cost.data_ptr(), scale, cutoff, upper, bsz, n, m,
                              torch.get_num_threads())
    return out


def sqeuclidean_into(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor):
    """``|x_i - y_j|^2`` as ``max(0, |x_i|^2 + |y_j|^2 - 2 <x_i, y_j>)`` ``(B, n, m)`` (the
    formula of :func:`couplings.costs.sqeuclidean`) for ``x`` ``(B, n, d)``, ``y`` ``(B, m, d)``,
    written into ``out`` (contiguous); returns ``out`` and each problem's smallest and largest
    entry, ``(lo, hi)`` ``(B,)`` each, ``hi`` NaN where a NaN arose (a NaN point, or overflowing
    norms: the clamp at 0 alone would make such an entry 0, so a caller must check ``hi``).
    Only where :func:`usable`. One pass over the matrix instead of three, fast for ``d <= 3``
    (unrolled): 88 against 183 us at ``n = m = 1000``, ``d = 2``; far slower than torch's
    batched product from ``d = 5`` on."""
    bsz, n, d = x.shape
    m = y.shape[1]
    x, yt = x.contiguous(), y.transpose(-2, -1).contiguous()
    x2, y2 = (x * x).sum(-1), (yt * yt).sum(-2)
    rows = x.new_empty(bsz, n, 2)  # each row's (min, max)
    _fn("sqeuclidean", x.dtype)(x.data_ptr(), yt.data_ptr(), x2.data_ptr(), y2.data_ptr(),
                                out.data_ptr(), bsz, n, m, d, rows.data_ptr(),
                                torch.get_num_threads())
    return out, (rows[..., 0].amin(-1), rows[..., 1].amax(-1))


def sqeuclidean_pull(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, rows: bool):
    """The gradient of ``sum_ij grad_ij |x_i - y_j|^2`` in ``x`` ``(B, n, d)`` (``rows``):
    ``2 (x_i sum_j grad_ij - sum_j grad_ij y_j)``, else in ``y`` ``(B, m, d)``; one pass over
    ``grad`` ``(B, n, m)``. Only where :func:`usable`."""
    bsz, n, m = grad.shape
    d = x.shape[-1]
    grad, x, y = grad.contiguous(), x.contiguous(), y.contiguous()
    yt = y.transpose(-2, -1).contiguous()
    out = torch.empty_like(x if rows else y)
    acc = grad.new_empty(0 if rows else bsz * (d + 1) * m)
    _fn("sqeuclidean_pull", grad.dtype)(grad.data_ptr(), x.data_ptr(), yt.data_ptr(),
                                        y.data_ptr(), out.data_ptr(), acc.data_ptr(), bsz, n, m,
                                        d, int(rows), torch.get_num_threads())
    return out
