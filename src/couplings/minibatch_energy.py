r"""The mini-batch energy distance of OT-GAN: entropic transport costs between four mini-batches.

For two independent mini-batches :math:`X, X'` of real samples, two independent mini-batches
:math:`Y, Y'` of generated samples and a transport cost :math:`W_c` between mini-batches,
Salimans et al. (2018) define the mini-batch energy distance

.. math::

    \mathcal{D}^2_{\mathrm{MED}}(p, g) = 2\,\mathbb{E}[W_c(X, Y)] - \mathbb{E}[W_c(X, X')]
        - \mathbb{E}[W_c(Y, Y')]

and train on its unbiased four-batch estimate (Algorithm 1 of the paper)

.. math::

    \mathcal{L} = W_c(X, Y) + W_c(X, Y') + W_c(X', Y) + W_c(X', Y')
        - 2 W_c(X, X') - 2 W_c(Y, Y'),

whose expectation is :math:`\mathbb{E}[\mathcal{L}] = 2\, \mathcal{D}^2_{\mathrm{MED}}` (each
cross term has expectation :math:`\mathbb{E}[W_c(X, Y)]`). It is 0 in expectation when the
generated and real distributions are equal, and, for a fixed critic, its gradient is an unbiased
estimate of that of :math:`2\mathcal{D}^2_{\mathrm{MED}}`, a discrepancy between the two
distributions themselves, whereas the expected mini-batch transport cost
:math:`\mathbb{E}[W_c(X, Y)]` alone is biased (it is not minimised by the data distribution).

Here :math:`W_c(X, Y) = \langle P, C \rangle` is the linear transport cost of the entropic plan
:math:`P` between the uniform empirical measures (:func:`couplings.sinkhorn`'s
``linear_value``, an average of the cost over the plan; OT-GAN's code normalises the plan's
rows to sum to one rather than ``1/n``, which scales its ``W`` by ``n``), and by default
:math:`c(x, y) = 1 - \cos(v(x), v(y))`, a cosine cost in :math:`[0, 2]` on features
:math:`v` learned by a critic that maximises :math:`\mathcal{L}` while the generator minimises
it. Gradients do not go through the Sinkhorn iterations: the plan is held fixed (the envelope
theorem), as in the paper.

References:
    Salimans, Zhang, Radford and Metaxas, "Improving GANs Using Optimal Transport", ICLR 2018.
    Szekely and Rizzo, "Energy statistics", 2013 (the energy distance this generalises).
"""

from __future__ import annotations

import torch
from torch import nn

from . import costs as _costs
from ._validation import (
    as_tensor,
    batch_cost,
    check_finite,
    check_float,
    check_positive_scalar,
    check_reduction,
    check_same_dtype_device,
    reduce_batch,
)
from .solvers.sinkhorn import Implicit, sinkhorn

__all__ = ["MinibatchEnergyDistance", "minibatch_energy_distance", "split_halves"]

# the six transport terms of the loss: (first batch, second batch, coefficient)
TERMS = ((0, 2, 1.0), (0, 3, 1.0), (1, 2, 1.0), (1, 3, 1.0), (0, 1, -2.0), (2, 3, -2.0))
NAMES = ("x", "x_prime", "y", "y_prime")


def _check_batches(batches) -> tuple[list[torch.Tensor], bool]:
    """Validate the four mini-batches; return them as ``(B, n_k, d)`` and 'was batched'."""
    out = [as_tensor(t, name) for t, name in zip(batches, NAMES, strict=True)]
    for t, name in zip(out, NAMES, strict=True):
        check_float(t, name)
    check_same_dtype_device(**dict(zip(NAMES, out, strict=True)))
    shapes = ", ".join(f"{name} {tuple(t.shape)}" for t, name in zip(out, NAMES, strict=True))
    dims = {t.dim() for t in out}
    if len(dims) != 1 or dims.pop() not in (2, 3):
        raise ValueError(
            "x, x_prime, y and y_prime must all have shape (n, d), or all (B, n, d) with one B; "
            f"got {shapes}."
        )
    if len({t.shape[-1] for t in out}) != 1:
        raise ValueError(f"the four mini-batches must share the feature dimension d, got {shapes}.")
    batched = out[0].dim() == 3
    if batched and len({t.shape[0] for t in out}) != 1:
        raise ValueError(f"the four mini-batches must share the batch size B, got {shapes}.")
    if any(t.shape[-2] == 0 for t in out):
        raise ValueError(f"every mini-batch needs at least one sample, got {shapes}.")
    for t, name in zip(out, NAMES, strict=True):
        check_finite(t, name)
    return [t if batched else t.unsqueeze(0) for t in out], batched


def minibatch_energy_distance(
    x: torch.Tensor,
    x_prime: torch.Tensor,
    y: torch.Tensor,
    y_prime: torch.Tensor,
    *,
    eps: float,
    cost="cosine",
    tol: float | None = None,
    max_iter: int = 1000,
    min_iter: int = 0,
    scaling: float | str | None = "auto",
    grad: str | Implicit = "envelope",
    check_every: int = 10,
) -> torch.Tensor:
    r"""OT-GAN's mini-batch energy distance estimate from two real and two generated batches.

    .. math::

        \mathcal{L} = W(X, Y) + W(X, Y') + W(X', Y) + W(X', Y') - 2 W(X, X') - 2 W(Y, Y'),
        \qquad \mathbb{E}[\mathcal{L}] = 2\,\big(2\,\mathbb{E}[W(X, Y)] - \mathbb{E}[W(X, X')]
        - \mathbb{E}[W(Y, Y')]\big),

    with :math:`W(X, Y) = \langle P_\varepsilon, C(X, Y) \rangle` the linear cost of the
    entropic plan between the uniform empirical measures of two batches. The six problems are
    solved together by one batched call of :func:`couplings.sinkhorn` when all four batches
    have the same size (a ``(6B, n, n)`` cost), otherwise by one call per distinct shape.

    Args:
        x, x_prime: two independent batches of real samples (or their features),
            ``(n, d)`` / ``(n', d)``, or batched ``(B, n, d)`` / ``(B, n', d)``.
        y, y_prime: two independent batches of generated samples, ``(m, d)`` / ``(m', d)`` or
            batched, with the same ``d`` (and ``B``).
        eps: entropic regularization, in the units of the cost. OT-GAN uses
            ``1 / lambda = 1 / 500 = 0.002`` on the cosine cost (in ``[0, 2]``) for CIFAR-10,
            and ``1`` for its 2-D toy. Small values need many iterations: use
            ``scaling=0.9`` and a looser ``tol`` (e.g. ``1e-4``), or a fixed depth as OT-GAN
            (``min_iter = max_iter = 500``: no convergence warning, ``P`` not exactly in
            :math:`U(a, b)`).
        cost: a cost name of :mod:`couplings.costs` (default ``"cosine"``,
            :math:`1 - \cos`, which normalizes the features itself) or a callable
            ``(B, n, d), (B, m, d) -> (B, n, m)``.
        tol, max_iter, min_iter, scaling, check_every: passed to :func:`~couplings.sinkhorn`.
        grad: ``"envelope"`` (default, as in the paper: the plan is held fixed, no
            back-propagation through the iterations; the gradient of each term is then
            :math:`\sum_{ij} P_{ij} \nabla C_{ij}`, the exact gradient of the *entropic*
            value :math:`\langle P, C\rangle + \varepsilon \mathrm{KL}` at convergence),
            ``"implicit"`` or ``"unroll"`` (the exact gradient of :math:`\langle P, C\rangle`
            through the plan, by implicit differentiation or through the iterations).

    Returns:
        The loss :math:`\mathcal{L}`, ``()`` or ``(B,)``, differentiable in the four batches
        (and through them in a critic and a generator).

    Raises:
        TypeError, ValueError: batches of different dimensions, batch sizes, dtypes or devices,
            an empty or non-finite batch, an unknown cost, or bad solver options.

    Example:
        >>> import torch
        >>> from couplings.minibatch_energy import minibatch_energy_distance
        >>> g = torch.Generator().manual_seed(0)
        >>> real = torch.randn(2, 64, 3, generator=g)  # X and X'
        >>> fake = torch.randn(2, 64, 3, generator=g) + 2.0  # Y and Y'
        >>> loss = minibatch_energy_distance(real[0], real[1], fake[0], fake[1], eps=0.1)
        >>> bool(loss > 0.5)
        True

    References:
        Salimans, Zhang, Radford and Metaxas, "Improving GANs Using Optimal Transport",
        ICLR 2018 (Algorithm 1).
    """
    batches, batched = _check_batches((x, x_prime, y, y_prime))  # each (B, n_k, d)
    cost_fn = _costs.get(cost)
    cost_name = cost if isinstance(cost, str) else getattr(cost, "__name__", "callable")
    bsz = batches[0].shape[0]
    matrices = []
    for i, j, _ in TERMS:
        c = cost_fn(batches[i], batches[j])
        expected = (bsz, batches[i].shape[1], batches[j].shape[1])
        if tuple(c.shape) != expected:
            raise ValueError(
                f"cost {cost_name!r} returned shape {tuple(c.shape)} for {NAMES[i]} and "
                f"{NAMES[j]}; expected {expected}."
            )
        matrices.append(batch_cost(c, f"cost {cost_name!r}")[0])  # (B, n_i, n_j)
    # one solve per distinct shape: a single (6B, n, n) solve when the four sizes agree
    groups: dict[tuple[int, int], list[int]] = {}
    for k, c in enumerate(matrices):
        groups.setdefault(tuple(c.shape[1:]), []).append(k)
    values: list[torch.Tensor | None] = [None] * len(TERMS)
    options = dict(eps=eps, tol=tol, max_iter=max_iter, min_iter=min_iter, scaling=scaling,
                   grad=grad, check_every=check_every)
    for members in groups.values():
        stacked = torch.cat([matrices[k] for k in members], dim=0)  # (len(members) B, n, m)
        linear = sinkhorn(stacked, **options).linear_value  # (len(members) B,)
        for k, part in zip(members, linear.split(bsz), strict=True):
            values[k] = part  # (B,)
    loss = sum(coef * v for (_, _, coef), v in zip(TERMS, values, strict=True))  # (B,)
    return loss if batched else loss.squeeze(0)


def split_halves(real: torch.Tensor, fake: torch.Tensor):
    r"""Split a batch of ``2n`` real and one of ``2m`` generated samples (or features) into the
    four mini-batches :math:`X, X', Y, Y'` of :func:`minibatch_energy_distance`.

    Args:
        real: ``(2n, d)`` or ``(B, 2n, d)``; the samples along the second-to-last axis.
        fake: ``(2m, d)`` or ``(B, 2m, d)``.

    Returns:
        ``(x, x_prime, y, y_prime)``: the first and second halves of ``real`` and of ``fake``
        (views, no copy).

    Example:
        >>> import torch
        >>> from couplings.minibatch_energy import split_halves
        >>> x, xp, y, yp = split_halves(torch.zeros(8, 3), torch.ones(6, 3))
        >>> x.shape, yp.shape
        (torch.Size([4, 3]), torch.Size([3, 3]))
    """
    out = []
    for t, name in ((real, "real"), (fake, "fake")):
        t = as_tensor(t, name)
        if t.dim() not in (2, 3) or t.shape[-2] < 2 or t.shape[-2] % 2:
            raise ValueError(
                f"{name} must have shape (2n, d) or (B, 2n, d) with an even number 2n >= 2 of "
                f"samples, to be split into two independent halves; got {tuple(t.shape)}."
            )
        half = t.shape[-2] // 2
        out += [t[..., :half, :], t[..., half:, :]]
    return tuple(out)


class MinibatchEnergyDistance(nn.Module):
    r"""OT-GAN's loss as a module: a critic's features of two real and two generated batches,
    a cosine cost and :func:`minibatch_energy_distance`.

    Called as ``loss(real, fake)`` with ``2n`` real and ``2m`` generated samples: the critic
    (if any) maps each to features ``(2n, k)`` (or ``(B, 2n, k)``), which
    :func:`split_halves` cuts into :math:`X, X'` and :math:`Y, Y'`. The generator descends
    the loss; the critic ascends it (OT-GAN alternates: one critic step for every few
    generator steps). The critic's parameters are registered in this module, so give the two
    optimizers ``generator.parameters()`` and ``loss.critic.parameters()``.

    Args:
        critic: an ``nn.Module`` mapping samples to features, or ``None`` (the cost on the
            samples themselves). The cosine cost l2-normalizes the features.
        eps: entropic regularization (see :func:`minibatch_energy_distance`).
        cost: a cost name or callable, default ``"cosine"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch of problems.
        **solver_options: ``tol``, ``max_iter``, ``min_iter``, ``scaling``, ``grad``,
            ``check_every``, passed on.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from couplings.minibatch_energy import MinibatchEnergyDistance
        >>> g = torch.Generator().manual_seed(0)
        >>> critic = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 8))
        >>> loss_fn = MinibatchEnergyDistance(critic, eps=0.1)
        >>> real = torch.randn(64, 2, generator=g)
        >>> fake = torch.randn(64, 2, generator=g, requires_grad=True)
        >>> loss_fn(real, fake).backward()
        >>> fake.grad.shape, critic[0].weight.grad.shape
        (torch.Size([64, 2]), torch.Size([16, 2]))
    """

    def __init__(self, critic: nn.Module | None = None, *, eps: float, cost="cosine",
                 reduction: str = "mean", **solver_options):
        super().__init__()
        if critic is not None and not callable(critic):
            raise TypeError(f"critic must be an nn.Module (or callable) or None, got "
                            f"{type(critic).__name__}.")
        unknown = set(solver_options) - {"tol", "max_iter", "min_iter", "scaling", "grad",
                                         "check_every"}
        if unknown:
            raise TypeError(f"unknown solver options {sorted(unknown)}; expected tol, max_iter, "
                            "min_iter, scaling, grad, check_every.")
        self.critic = critic
        self.eps, self.cost = check_positive_scalar(eps, "eps"), cost
        self.reduction = check_reduction(reduction)
        self.solver_options = solver_options
        _costs.get(cost)  # an unknown cost name fails here, not at the first call

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """The critic's features of ``samples`` (the samples themselves without a critic)."""
        return samples if self.critic is None else self.critic(samples)

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        x, x_prime, y, y_prime = split_halves(self.features(real), self.features(fake))
        value = minibatch_energy_distance(x, x_prime, y, y_prime, eps=self.eps, cost=self.cost,
                                          **self.solver_options)
        return reduce_batch(value, self.reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, cost={self.cost!r}"
