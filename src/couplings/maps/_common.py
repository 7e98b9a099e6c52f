"""Helpers shared by the map estimators: samplers, minibatches, small networks, seeding."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from .._validation import as_tensor, check_finite, check_float, check_positive_int

Sampler = Callable[[int, torch.Generator], torch.Tensor]

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "softplus": nn.Softplus,
               "elu": nn.ELU}


def check_hidden(hidden) -> tuple[int, ...]:
    if isinstance(hidden, int):
        hidden = (hidden,)
    if not isinstance(hidden, Sequence) or isinstance(hidden, str):
        raise TypeError(f"hidden must be a sequence of layer widths, got {hidden!r}.")
    return tuple(check_positive_int(h, "hidden width") for h in hidden)


def mlp(d_in: int, d_out: int, hidden: tuple[int, ...], activation: str) -> nn.Sequential:
    """A fully connected network ``d_in -> hidden... -> d_out``."""
    layers: list[nn.Module] = []
    width = d_in
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


@contextlib.contextmanager
def seeded(generator: torch.Generator | None) -> Iterator[None]:
    """Run the block (e.g. a network's initialization) with torch's global RNG seeded from
    ``generator``, restoring the global state afterwards; unchanged when ``generator`` is None."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Measure:
    """A measure to draw minibatches from: weighted points ``(n, d)`` or a sampler.

    A sampler is a callable ``sampler(batch_size, generator) -> (batch_size, d)`` tensor.
    """

    def __init__(self, x, weights, name: str, wname: str, *, like: torch.Tensor | None = None,
                 probe_generator: torch.Generator | None = None):
        self.name = name
        if callable(x) and not isinstance(x, torch.Tensor):
            if weights is not None:
                raise ValueError(f"{wname} applies to points; {name} is a sampler, so pass "
                                 f"{wname}=None.")
            self.sampler: Sampler | None = x
            self.points = None
            self.weights = None
            probe = self._call_sampler(2, probe_generator or torch.Generator().manual_seed(0))
            self.dim, self.dtype, self.device = probe.shape[1], probe.dtype, probe.device
            self.size = None
            return
        self.sampler = None
        x = as_tensor(x, name)
        check_float(x, name)
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"{name} must be points of shape (n, d) with n >= 1 (or a sampler "
                             f"callable), got shape {tuple(x.shape)}.")
        check_finite(x, name)
        self.points, self.size, self.dim = x, x.shape[0], x.shape[1]
        self.dtype, self.device = x.dtype, x.device
        if weights is None:
            self.weights = None
        else:
            w = as_tensor(weights, wname)
            check_float(w, wname)
            if w.shape != (self.size,):
                raise ValueError(f"{wname} must have shape ({self.size},) to match {name}, got "
                                 f"{tuple(w.shape)}.")
            check_finite(w, wname)
            if bool((w < 0).any()) or float(w.sum()) <= 0:
                raise ValueError(f"{wname} must be non-negative with a positive sum.")
            self.weights = (w / w.sum()).to(x.dtype)

    def _call_sampler(self, n: int, generator: torch.Generator) -> torch.Tensor:
        out = self.sampler(n, generator)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the sampler {self.name} must return a tensor of shape "
                             f"({n}, d) when called as sampler({n}, generator), got {got}.")
        check_float(out, f"samples of {self.name}")
        check_finite(out, f"samples of {self.name}")
        return out

    @property
    def discrete(self) -> bool:
        return self.points is not None

    def full_weights(self) -> torch.Tensor:
        if self.weights is not None:
            return self.weights
        return torch.full((self.size,), 1.0 / self.size, dtype=self.dtype, device=self.device)

    def sample_index(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.weights is None:
            return torch.randint(0, self.size, (n,), generator=generator)
        return torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor |
                                                                  None]:
        """Points ``(n, d)`` drawn from the measure, and their indices for a discrete one."""
        if self.sampler is not None:
            return self._call_sampler(n, generator), None
        idx = self.sample_index(n, generator).to(self.device)
        return self.points[idx], idx
