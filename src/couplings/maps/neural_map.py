r"""A neural Monge map fitted to a transport plan (Seguy et al. 2018, Alg. 2).

Given a plan :math:`\pi` between :math:`\mu` and :math:`\nu` (learned by the stochastic dual, or
any discrete plan), fit :math:`f_\theta` by

.. math::

    \min_\theta\ \mathbb{E}_{(X, Y) \sim \pi} \|f_\theta(X) - Y\|^2
    = \mathbb{E}_{\mu \times \nu}\big[h(X, Y)\, \|f_\theta(X) - Y\|^2\big],

with :math:`h = d\pi / d(\mu \otimes \nu)` the plan's density. Its minimizer is the barycentric
projection :math:`\bar\pi(x) = \mathbb{E}_\pi[Y \mid X = x]`, which for the squared Euclidean
cost converges to the Monge map as the regularization vanishes; the network extends it to new
points. For a discrete plan :math:`P` this is the weighted regression
:math:`\sum_i (\sum_j P_{ij}) \|f(x_i) - \bar T(x_i)\|^2` (plus a constant).

References:
    Seguy, Damodaran, Flamary, Courty, Rolet and Blondel, "Large-Scale Optimal Transport and
    Mapping Estimation", ICLR 2018.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import (
    as_tensor,
    check_choice,
    check_finite,
    check_float,
    check_positive_int,
    check_positive_scalar,
)
from ..result import OTResult
from ._common import ACTIVATIONS, Measure, check_hidden, mlp, seeded
from .barycentric import barycentric_projection
from .stochastic_dual import StochasticDualOT

__all__ = ["NeuralMongeMap"]


class NeuralMongeMap(nn.Module):
    r"""A map :math:`f_\theta: \mathbb{R}^d \to \mathbb{R}^{d'}` (an MLP, by default residual:
    :math:`f(x) = x + g_\theta(x)`) fitted to a transport plan by minibatch Adam.

    Three ways to fit (:meth:`fit`):

    - ``fit(x, y, dual=ot)``: Seguy's Alg. 2 with a fitted :class:`StochasticDualOT`; each step
      draws ``batch_size`` points from each measure (points or samplers) and minimizes
      :math:`\frac{1}{p^2}\sum_{ij} h(x_i, y_j)\|f(x_i) - y_j\|^2`;
    - ``fit(x, y, plan=P)``: a plan ``(n, m)`` or an :class:`~couplings.OTResult` (Sinkhorn,
      exact OT) between the points; regression on its barycentric projection, weighted by the
      row masses;
    - ``fit(x, targets=t, weights=w)``: regression on given images ``t`` ``(n, d')``.

    Args:
        hidden, activation: widths and activation of the MLP.
        residual: parametrize :math:`f(x) = x + g(x)` (needs ``d = d'``); the map starts at the
            identity.
        lr: Adam learning rate, decayed by a cosine schedule to zero at ``max_iter``.
        batch_size: points per step (from each measure with ``dual``).
        max_iter: number of steps.
        weight_decay: Adam's weight decay.

    Attributes (after :meth:`fit`): ``n_iter``, ``loss`` (mean training loss over the last
    10% of the steps) and ``history`` ``[(step, mean loss), ...]``.

    Example:
        >>> import torch
        >>> from couplings import emd, PointCloud
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 2, generator=g)
        >>> y = 2 * torch.randn(200, 2, generator=g) + 1
        >>> f = NeuralMongeMap(hidden=(32,), max_iter=300, batch_size=64)
        >>> f = f.fit(x, y, plan=emd(PointCloud(x, y)), generator=g)
        >>> f.transform(torch.zeros(5, 2)).shape
        torch.Size([5, 2])
    """

    def __init__(self, *, hidden=(128, 128), activation: str = "relu", residual: bool = True,
                 lr: float = 1e-3, batch_size: int = 256, max_iter: int = 2000,
                 weight_decay: float = 0.0):
        super().__init__()
        self.hidden = check_hidden(hidden)
        self.activation = check_choice(activation, "activation", tuple(ACTIVATIONS))
        self.residual = bool(residual)
        self.lr = check_positive_scalar(lr, "lr")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.max_iter = check_positive_int(max_iter, "max_iter")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, int | float) or (
                weight_decay < 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}.")
        self.weight_decay = float(weight_decay)
        self.net: nn.Module | None = None

    # ------------------------------------------------------------------ fitting

    def fit(self, x, y=None, *, plan=None, dual: StochasticDualOT | None = None, targets=None,
            weights=None, generator: torch.Generator | None = None) -> NeuralMongeMap:
        """Fit the map; exactly one of ``plan``, ``dual``, ``targets`` must be given.

        Args:
            x: source points ``(n, d)``, or a sampler ``sampler(p, generator) -> (p, d)`` (with
                ``dual`` only).
            y: target points ``(m, d')`` (or a sampler with ``dual``); not used with
                ``targets``.
            plan: a plan ``(n, m)`` between ``x`` and ``y``, or an
                :class:`~couplings.OTResult`.
            dual: a fitted :class:`StochasticDualOT`; for discrete potentials ``x`` and ``y``
                must be its fitted points.
            targets: images ``(n, d')`` of ``x``.
            weights: non-negative weights ``(n,)`` of the regression on ``targets``.
            generator: seeds the minibatches and the initialization.

        Returns:
            ``self``.
        """
        given = [name for name, v in (("plan", plan), ("dual", dual), ("targets", targets))
                 if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of plan=, dual= or targets=, got "
                             f"{given or 'none'}.")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        if dual is not None:
            return self._fit_dual(x, y, dual, gen)
        x = as_tensor(x, "x")
        check_float(x, "x")
        if x.dim() != 2:
            raise ValueError(f"x must be points of shape (n, d), got {tuple(x.shape)}.")
        check_finite(x, "x")
        if plan is not None:
            if y is None:
                raise ValueError("fit(x, y, plan=P) needs the target points y.")
            p = plan.plan if isinstance(plan, OTResult) else as_tensor(plan, "plan")
            if p.dim() != 2 or p.shape[0] != x.shape[0]:
                raise ValueError(f"plan must have shape ({x.shape[0]}, m) for x of shape "
                                 f"{tuple(x.shape)}, got {tuple(p.shape)}.")
            targets = barycentric_projection(p, y)
            weights = p.sum(-1)
        targets = as_tensor(targets, "targets")
        check_float(targets, "targets")
        if targets.dim() != 2 or targets.shape[0] != x.shape[0]:
            raise ValueError(f"targets must have shape ({x.shape[0]}, d'), got "
                             f"{tuple(targets.shape)}.")
        check_finite(targets, "targets")
        source = Measure(x, weights, "x", "weights")
        self._build(x.shape[1], targets.shape[1], x, gen)

        def loss_fn():
            idx = source.sample_index(self.batch_size, gen).to(x.device)
            return ((self.net_forward(x[idx]) - targets[idx]) ** 2).sum(-1).mean()

        return self._train(loss_fn)

    def _fit_dual(self, x, y, dual: StochasticDualOT, gen) -> NeuralMongeMap:
        if not isinstance(dual, StochasticDualOT):
            raise TypeError(f"dual must be a StochasticDualOT, got {type(dual).__name__}.")
        dual._check_fitted()
        if y is None:
            raise ValueError("fit(x, y, dual=ot) needs the target measure y (points or sampler).")
        if dual.potentials == "discrete":
            mu, nu = dual.mu, dual.nu
            for name, given, fitted in (("x", x, mu.points), ("y", y, nu.points)):
                if not (isinstance(given, torch.Tensor) and given.shape == fitted.shape):
                    raise ValueError(f"with discrete potentials, {name} must be the fitted "
                                     f"points of shape {tuple(fitted.shape)}.")
        else:
            mu = Measure(x, None, "x", "-", probe_generator=gen)
            nu = Measure(y, None, "y", "-", probe_generator=gen)
            if mu.dim != dual.mu.dim or nu.dim != dual.nu.dim:
                raise ValueError(f"x and y must have dimensions {dual.mu.dim} and {dual.nu.dim} "
                                 f"as in the dual's fit, got {mu.dim} and {nu.dim}.")
        like = mu.points if mu.discrete else mu.sample(2, gen)[0]
        self._build(mu.dim, nu.dim, like, gen)
        p = self.batch_size

        def loss_fn():
            (xs, ix), (ys, iy) = mu.sample(p, gen), nu.sample(p, gen)
            with torch.no_grad():
                h = dual._density(xs, ix, ys, iy)  # (p, p)
            fx = self.net_forward(xs)  # (p, d')
            sq = (fx * fx).sum(-1)[:, None] - 2 * fx @ ys.T + (ys * ys).sum(-1)[None, :]
            return (h * sq).mean()

        return self._train(loss_fn)

    def _build(self, d_in: int, d_out: int, like: torch.Tensor, gen) -> None:
        if self.residual and d_in != d_out:
            raise ValueError(f"residual=True needs equal source and target dimensions, got "
                             f"{d_in} and {d_out}; use residual=False.")
        with seeded(gen):
            self.net = mlp(d_in, d_out, self.hidden, self.activation).to(
                dtype=like.dtype, device=like.device)
        if self.residual:  # start at the identity map
            last = self.net[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.d_in, self.d_out = d_in, d_out

    def _train(self, loss_fn) -> NeuralMongeMap:
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.max_iter)
        self.history, losses = [], []
        every = max(1, self.max_iter // 20)
        for step in range(1, self.max_iter + 1):
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if step % every == 0:
                self.history.append((step, sum(losses[-every:]) / every))
        tail = losses[-max(1, self.max_iter // 10):]
        self.n_iter, self.loss = self.max_iter, sum(tail) / len(tail)
        return self

    # ------------------------------------------------------------------ evaluation

    def net_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return x + out if self.residual else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The map on points ``(n, d)`` (differentiable); see :meth:`transform`."""
        if self.net is None:
            raise RuntimeError("this NeuralMongeMap is not fitted yet; call fit(...) first.")
        x = as_tensor(x, "x")
        check_float(x, "x")
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"x must have shape (n, {self.d_in}), got {tuple(x.shape)}.")
        check_finite(x, "x")
        param = next(self.net.parameters())
        if x.dtype != param.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the map was fitted in {param.dtype}.")
        return self.net_forward(x)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The fitted map on new points ``(n, d)`` -> ``(n, d')``, without gradients."""
        with torch.no_grad():
            return self.forward(x)
