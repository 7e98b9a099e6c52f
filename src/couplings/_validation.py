"""Input checks shared by the public entry points.

Every public function validates its inputs once, here, and raises a ``TypeError`` or
``ValueError`` that names the argument, what was received and what is expected. Solvers below
the entry points assume valid, batched inputs.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch

# half precision is refused: log-sum-exp over a cost scaled by 1/eps needs float32 at least
FLOAT_DTYPES = (torch.float32, torch.float64)


def as_tensor(x, name: str) -> torch.Tensor:
    """Return ``x`` as a tensor; numpy arrays are converted, anything else is refused."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TypeError(
        f"{name} must be a torch.Tensor (or a numpy array), got {type(x).__name__}."
    )


def check_float(x: torch.Tensor, name: str) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64), got {x.dtype}. "
            f"Convert it with {name}.float() or {name}.double()."
        )


def check_same_dtype_device(**tensors: torch.Tensor | None) -> None:
    """All given tensors share one dtype and one device."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    k0, v0 = items[0]
    for k, v in items[1:]:
        if v.dtype != v0.dtype:
            raise TypeError(
                f"{k} has dtype {v.dtype} but {k0} has dtype {v0.dtype}; all inputs must share "
                f"one dtype. Convert with .to({v0.dtype})."
            )
        if v.device != v0.device:
            raise ValueError(
                f"{k} is on device {v.device} but {k0} is on {v0.device}; all inputs must be on "
                f"one device. Move them with .to('{v0.device}')."
            )


def check_finite(x: torch.Tensor, name: str, hint: str = "") -> None:
    if x.is_floating_point():
        # one reduction instead of four passes: a nan or inf entry makes the sum non-finite, so
        # a finite sum clears the tensor; otherwise (or if the sum overflowed) look entry-wise
        with torch.no_grad():
            if bool(torch.isfinite(x.sum())):
                return
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} must be finite, got {bad} non-finite entries (nan or inf) out of "
            f"{x.numel()}.{hint}"
        )


def check_positive_scalar(value, name: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a positive real number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return value


def check_nonnegative_scalar(value, name: str) -> float:
    """A finite real number ``>= 0``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number >= 0, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return value


def check_nonnegative_int(value, name: str) -> int:
    """An int ``>= 0`` (an iteration count that may be zero)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    return value


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be a positive int, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    return value


def batch_cost(cost: torch.Tensor, name: str = "cost") -> tuple[torch.Tensor, bool]:
    """Check a cost matrix and return it as ``(B, n, m)`` with a flag 'was batched'."""
    cost = as_tensor(cost, name)
    check_float(cost, name)
    if cost.dim() not in (2, 3):
        raise ValueError(
            f"{name} must have shape (n, m) or (B, n, m), got shape {tuple(cost.shape)}."
        )
    if cost.shape[-1] == 0 or cost.shape[-2] == 0:
        raise ValueError(
            f"{name} must have at least one row and one column, got {tuple(cost.shape)}."
        )
    check_finite(
        cost, name, " To forbid a pair, give its row or column zero weight instead."
    )
    batched = cost.dim() == 3
    return (cost if batched else cost.unsqueeze(0)), batched


def batch_weights(
    w, size: int, batch: int, batched: bool, like: torch.Tensor, name: str, axis: str,
    *, allow_zero_mass: bool = False,
) -> torch.Tensor:
    """Check a weight vector against the problem and return it as ``(B, size)``.

    ``None`` gives uniform weights ``1 / size``. Weights may be zero but not negative; a batched
    problem accepts either ``(size,)`` (shared by the batch) or ``(B, size)``. The total mass of
    each batch entry must be positive unless ``allow_zero_mass`` (a block of rows of a sharded
    problem may carry none; its total is then checked over the ranks).
    """
    if w is None:
        return like.new_full((batch, size), 1.0 / size)
    w = as_tensor(w, name)
    check_float(w, name)
    expected = f"({size},)" + (f" or ({batch}, {size})" if batched else "")
    if w.dim() == 1 and w.shape[0] == size:
        w = w.unsqueeze(0).expand(batch, size)
    elif batched and w.dim() == 2 and tuple(w.shape) == (batch, size):
        pass
    else:
        raise ValueError(
            f"{name} must have shape {expected} to match {axis}, "
            f"got shape {tuple(w.shape)}."
        )
    check_same_dtype_device(cost=like, **{name: w})
    with torch.no_grad():  # the three checks in one read: a sum is finite iff every entry is
        total, smallest, least_mass = torch.stack(
            [w.sum(), w.min(), w.sum(-1).min()]).tolist()
    if not math.isfinite(total):
        check_finite(w, name)  # says how many entries are not finite
    if smallest < 0:
        raise ValueError(f"{name} must be non-negative, got min {smallest:.3g}.")
    if not allow_zero_mass and not least_mass > 0:
        raise ValueError(f"{name} must have a positive total mass, got a batch entry summing to 0.")
    return w


def check_equal_mass(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> None:
    """Balanced OT needs ``sum(a) == sum(b)`` for every problem of the batch."""
    ma, mb = a.sum(-1), b.sum(-1)
    tol = rtol * torch.maximum(ma, mb) + (1e-6 if a.dtype == torch.float32 else 1e-12)
    gap = (ma - mb).abs()
    if bool((gap > tol).any()):
        i = int(torch.argmax(gap))
        raise ValueError(
            "balanced OT needs a and b to have equal total mass, got sum(a) = "
            f"{float(ma[i]):.6g} and sum(b) = {float(mb[i]):.6g} (batch entry {i}). Normalize "
            "both, e.g. a / a.sum(-1, keepdim=True), or use unbalanced OT."
        )


REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction) -> str:
    """A loss module's ``reduction`` over the batch: ``"mean"``, ``"sum"`` or ``"none"``."""
    return check_choice(reduction, "reduction", REDUCTIONS)


def reduce_batch(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a checked ``reduction`` to per-problem ``values`` ``(B,)``."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def check_scaling(scaling):
    """``scaling`` of the Sinkhorn loop: ``"auto"``, ``None`` or a number in ``(0, 1)``."""
    if isinstance(scaling, str):
        if scaling != "auto":
            raise ValueError(f"scaling must be 'auto', None or a number in (0, 1), got "
                             f"{scaling!r}.")
        return scaling
    if scaling is None:
        return None
    scaling = check_positive_scalar(scaling, "scaling")
    if scaling >= 1:
        raise ValueError(f"scaling must be in (0, 1), 'auto' or None, got {scaling!r}.")
    return scaling
