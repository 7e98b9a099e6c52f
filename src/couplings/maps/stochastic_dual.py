r"""Regularized optimal transport by stochastic gradient ascent on its dual (Seguy et al. 2018).

For measures :math:`\mu, \nu` (discrete or continuous) and a cost :math:`c`, the regularized
problem :math:`\min_\pi \int c\, d\pi + \varepsilon R(\pi)` over couplings has the dual

.. math::

    \max_{u, v}\ \mathbb{E}_{\mu}[u(X)] + \mathbb{E}_{\nu}[v(Y)]
        + \mathbb{E}_{\mu \times \nu}\big[F_\varepsilon(u(X), v(Y), c(X, Y))\big],

an expectation, hence maximizable by stochastic gradients on minibatches of
:math:`\mu \times \nu`. With :math:`z = u(x) + v(y) - c(x, y)`:

- entropy, :math:`R(\pi) = \int (\log \tfrac{d\pi}{d\mu d\nu} - 1) d\pi`:
  :math:`F_\varepsilon = -\varepsilon e^{z/\varepsilon}`, plan
  :math:`d\pi = e^{z/\varepsilon} d\mu d\nu`;
- L2, :math:`R(\pi) = \int (\tfrac{d\pi}{d\mu d\nu})^2 d\mu d\nu`:
  :math:`F_\varepsilon = -\tfrac{1}{4\varepsilon} z_+^2`, plan
  :math:`d\pi = \tfrac{1}{2\varepsilon} z_+ d\mu d\nu` (sparse).

The potentials are vectors for discrete measures, neural networks or Gaussian-kernel expansions
(on anchor points, an RKHS potential as in Genevay et al. 2016) for continuous ones.

Conventions: the entropic regularizer is the relative entropy to :math:`\mu \otimes \nu`, as in
:func:`couplings.sinkhorn`, whose dual has the extra constant :math:`+\varepsilon` (mass one):
at the optimum ``value`` here equals ``sinkhorn(...).value - eps``, and the potentials agree up to
an additive constant ``(u + k, v - k)``. The L2 problem with uniform weights on ``n`` and ``m``
points is POT's ``ot.smooth.smooth_ot_dual(a, b, M, reg, reg_type="l2")`` with
``reg = 2 * eps * n * m``, and the losses are POT's ``ot.stochastic.loss_dual_entropic`` /
``loss_dual_quadratic``.

References:
    Seguy, Damodaran, Flamary, Courty, Rolet and Blondel, "Large-Scale Optimal Transport and
    Mapping Estimation", ICLR 2018 (Alg. 1). Genevay, Cuturi, Peyre and Bach, "Stochastic
    Optimization for Large-scale Optimal Transport", NeurIPS 2016.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from .. import costs as _costs
from .._validation import check_choice, check_positive_int, check_positive_scalar
from ..result import ConvergenceWarning
from ._common import ACTIVATIONS, Measure, check_hidden, mlp, seeded

__all__ = ["StochasticDualOT", "KernelPotential"]

REGS = ("entropy", "l2")
POTENTIALS = ("discrete", "neural", "kernel")
_DEFAULT_LR = {"discrete": 0.05, "neural": 1e-3, "kernel": 0.02}


def _exp_lin(z: torch.Tensor) -> torch.Tensor:
    """``exp(z)``, continued linearly above ``z0 = log(max float) / 4`` so that an early, badly
    scaled iterate gives a large finite gradient instead of ``inf``."""
    z0 = math.log(torch.finfo(z.dtype).max) / 4
    return torch.exp(z.clamp_max(z0)) * (1 + (z - z0).clamp_min(0))


def _dual_terms(z: torch.Tensor, reg: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``F_eps`` and the plan density ``h`` at ``z = u + v - c``."""
    if reg == "entropy":
        h = _exp_lin(z / eps)
        return -eps * h, h
    zp = z.clamp_min(0)
    return -zp * zp / (4 * eps), zp / (2 * eps)


class KernelPotential(nn.Module):
    r"""A Gaussian-kernel expansion :math:`u(x) = s\,(\sum_k \alpha_k
    e^{-\|x - z_k\|^2 / (2h^2)} + \beta)` on fixed anchor points :math:`z_k` (an RKHS function
    plus a constant), with output scale ``s``.

    Args:
        anchors: ``(K, d)``.
        bandwidth: ``h``.
        scale: ``s``, e.g. the cost's scale.
    """

    def __init__(self, anchors: torch.Tensor, bandwidth: float, scale: float = 1.0):
        super().__init__()
        self.register_buffer("anchors", anchors.detach().clone())
        self.bandwidth, self.scale = float(bandwidth), float(scale)
        self.alpha = nn.Parameter(anchors.new_zeros(anchors.shape[0]))
        self.beta = nn.Parameter(anchors.new_zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.exp(-_costs.sqeuclidean(x, self.anchors) / (2 * self.bandwidth**2))  # (n, K)
        return self.scale * (k @ self.alpha + self.beta)


class _NeuralPotential(nn.Module):
    def __init__(self, d: int, hidden, activation: str, scale: float):
        super().__init__()
        self.net, self.scale = mlp(d, 1, hidden, activation), float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.net(x).squeeze(-1)


class _DiscretePotential(nn.Module):
    def __init__(self, n: int, like: torch.Tensor, scale: float):
        super().__init__()
        self.theta, self.scale = nn.Parameter(like.new_zeros(n)), float(scale)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.scale * self.theta[index]

    def values(self) -> torch.Tensor:
        return self.scale * self.theta


class StochasticDualOT:
    r"""Entropic or L2-regularized OT between discrete or continuous measures, by Adam on the
    stochastic dual (Seguy et al. 2018, Alg. 1).

    Each step draws ``batch_size`` points from each measure (with replacement, following the
    weights) and ascends :math:`\frac1p\sum_i u(x_i) + \frac1p\sum_j v(y_j) +
    \frac{1}{p^2}\sum_{ij} F_\varepsilon(u(x_i) + v(y_j) - c(x_i, y_j))`. For discrete
    potentials with ``batch_size >= max(n, m)`` the exact (weighted, full) dual is used. The
    learning rate decays by a cosine schedule to zero at ``max_iter``.

    Accuracy, measured: full-batch discrete potentials reach :func:`~couplings.sinkhorn`'s dual
    value to 1e-8 and POT's L2 plan to 1e-6 (L1) in under 1000 steps. Minibatches much smaller
    than ``n`` converge slowly for discrete potentials (200 x 150 points, ``eps = 0.2``, batch
    64, 5000 Adam steps: dual value 3.66 against 3.94); for a problem that fits in memory,
    Sinkhorn is the better solver, and this one is for samplers and very large ``n``.

    Args:
        eps: regularization strength :math:`\varepsilon > 0`, in the units of the cost.
        reg: ``"entropy"`` or ``"l2"``.
        potentials: ``"discrete"`` (a value per point; both measures must be points),
            ``"neural"`` (an MLP per measure) or ``"kernel"`` (Gaussian-kernel expansions on
            ``n_anchors`` anchors drawn from each measure).
        cost: a cost name of :mod:`couplings.costs` or a callable ``(n, d), (m, d) -> (n, m)``.
        hidden, activation: the MLPs' widths and activation (``"relu"``, ``"silu"``, ``"tanh"``,
            ``"softplus"``, ``"elu"``).
        n_anchors: anchors per kernel potential.
        bandwidth: kernel bandwidth ``h``; ``None`` takes the median distance between anchors.
        lr: Adam learning rate; ``None`` picks 0.05 (discrete), 1e-3 (neural), 0.02 (kernel).
            Potentials are parametrized in units of the mean cost of a first batch.
        batch_size: points drawn from each measure per step (``p``; a step costs ``O(p^2)``).
        max_iter: number of steps.
        tol: if given, stop once the marginal error (see ``error``) is ``<= tol``, checked every
            ``check_every`` steps, and warn (:class:`~couplings.ConvergenceWarning`) if it never
            is; ``None`` runs ``max_iter`` steps and only reports the error.
        check_every: steps between two records of ``history`` (and checks of ``tol``).
        eval_size: points per measure of the fixed evaluation sample on which the error and the
            value of a continuous problem are estimated.
        lr_decay: cosine decay of the learning rate to zero at ``max_iter``.
        anneal: fraction of the steps over which ``eps`` decreases geometrically from the mean
            cost of a first batch to its final value (epsilon scaling); ``0`` trains at ``eps``
            throughout. Annealing avoids the blow-up of :math:`e^{z/\varepsilon}` that small
            ``eps`` causes early in training.
        optimal_shift: entropy only: maximize the dual over the additive constant
            :math:`u \to u + k` in closed form, :math:`k = -\varepsilon \log
            \mathbb{E}_{\mu\otimes\nu} e^{(u + v - c)/\varepsilon}`, i.e. ascend
            :math:`\mathbb{E}[u] + \mathbb{E}[v] - \varepsilon \log \mathbb{E}\,
            e^{(u + v - c)/\varepsilon} - \varepsilon` (a log-sum-exp over the batch's pairs).
            Same maximizer as Seguy's objective (equal values at the optimal shift), but it never
            overflows and cannot leave the density stuck at zero after an overshoot, which
            plain Adam on Seguy's objective does for small ``eps`` (measured: collapse in 5-D at
            ``eps = 0.05``). ``False`` ascends Seguy's objective as written. On minibatches
            the log of the batch mean is a biased estimate, with a bias of order
            ``1 / batch_size**2``.

    Attributes (after :meth:`fit`):
        n_iter: steps run.
        error: L1 marginal violation of the plan :math:`\sum_i |\sum_j P_{ij} - a_i| +
            \sum_j |\sum_i P_{ij} - b_j|`: exact for discrete potentials (when ``n m <= 4e6``),
            otherwise a Monte Carlo estimate on the evaluation sample (whose floor is its
            sampling noise, larger for small ``eps``).
        converged: ``error <= tol``, or ``None`` when ``tol`` is ``None``.
        value: the dual objective (exact for discrete potentials, else estimated).
        history: ``[(step, running mean of the minibatch objective), ...]``.

    Example:
        >>> import torch
        >>> from couplings import sinkhorn, PointCloud
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(20, 2, dtype=torch.float64, generator=g)
        >>> y = torch.randn(30, 2, dtype=torch.float64, generator=g) + 1
        >>> ot = StochasticDualOT(eps=0.5, potentials="discrete", batch_size=30, max_iter=1500)
        >>> ot = ot.fit(x, y, generator=g)
        >>> ref = sinkhorn(PointCloud(x, y), eps=0.5)
        >>> abs(ot.value - (float(ref.value) - 0.5)) < 1e-3  # same dual, up to the constant eps
        True
        >>> bool((ot.plan() - ref.plan).abs().sum() < 1e-2)
        True
    """

    def __init__(self, *, eps: float, reg: str = "entropy", potentials: str = "neural",
                 cost="sqeuclidean", hidden=(128, 128), activation: str = "relu",
                 n_anchors: int = 256, bandwidth: float | None = None, lr: float | None = None,
                 batch_size: int = 512, max_iter: int = 5000, tol: float | None = None,
                 check_every: int = 100, eval_size: int = 1000, lr_decay: bool = True,
                 anneal: float = 0.0, optimal_shift: bool = True):
        self.eps = check_positive_scalar(eps, "eps")
        self.reg = check_choice(reg, "reg", REGS)
        self.potentials = check_choice(potentials, "potentials", POTENTIALS)
        self.cost_fn = _costs.get(cost)
        self.hidden = check_hidden(hidden)
        self.activation = check_choice(activation, "activation", tuple(ACTIVATIONS))
        self.n_anchors = check_positive_int(n_anchors, "n_anchors")
        self.bandwidth = check_positive_scalar(bandwidth, "bandwidth", allow_none=True)
        self.lr = check_positive_scalar(lr if lr is not None else _DEFAULT_LR[potentials], "lr")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.tol = check_positive_scalar(tol, "tol", allow_none=True)
        self.check_every = check_positive_int(check_every, "check_every")
        self.eval_size = check_positive_int(eval_size, "eval_size")
        self.lr_decay = bool(lr_decay)
        if isinstance(anneal, bool) or not isinstance(anneal, int | float) or not (
                0 <= anneal <= 1):
            raise ValueError(f"anneal must be a fraction in [0, 1], got {anneal!r}.")
        self.anneal = float(anneal)
        self.optimal_shift = bool(optimal_shift)
        self._shift = 0.0
        self._fitted = False

    # ------------------------------------------------------------------ fitting

    def fit(self, x, y, a=None, b=None, *, generator: torch.Generator | None = None):
        """Maximize the dual between ``x`` and ``y``.

        Args:
            x: source points ``(n, d)`` or a sampler ``sampler(p, generator) -> (p, d)``.
            y: target points ``(m, d')`` or a sampler.
            a, b: weights of the points ``(n,)`` / ``(m,)`` (normalized; default uniform).
            generator: seeds the minibatches and the initialization of the networks.

        Returns:
            ``self``.
        """
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        mu = Measure(x, a, "x", "a", probe_generator=gen)
        nu = Measure(y, b, "y", "b", probe_generator=gen)
        if self.potentials == "discrete" and not (mu.discrete and nu.discrete):
            raise ValueError("potentials='discrete' needs x and y given as points (n, d); for "
                             "samplers use potentials='neural' or 'kernel'.")
        if mu.dtype != nu.dtype or mu.device != nu.device:
            raise TypeError(f"x and y must share dtype and device, got {mu.dtype}/{mu.device} "
                            f"and {nu.dtype}/{nu.device}.")
        self.mu, self.nu = mu, nu
        p = self.batch_size
        full = self.potentials == "discrete" and p >= max(mu.size, nu.size)
        xb, _ = mu.sample(min(p, 1000), gen)
        yb, _ = nu.sample(min(p, 1000), gen)
        scale = float(self._cost(xb, yb).mean().clamp_min(1e-12))
        self.cost_scale = scale
        with seeded(gen):
            self.u_net, self.v_net = self._build(mu, gen, scale), self._build(nu, gen, scale)
        params = list(self.u_net.parameters()) + list(self.v_net.parameters())
        opt = torch.optim.Adam(params, lr=self.lr)
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.max_iter)
                 if self.lr_decay else None)
        self._eval = self._eval_sample(gen)
        self.history: list[tuple[int, float]] = []
        self.converged = None
        running, count = 0.0, 0
        n_anneal = int(self.anneal * self.max_iter)
        eps0 = max(self.eps, scale)
        for step in range(1, self.max_iter + 1):
            eps_t = (eps0 * (self.eps / eps0) ** (step / n_anneal) if step < n_anneal
                     else self.eps)
            if full:
                obj = self._full_objective(eps_t)
            else:
                (xs, ix), (ys, iy) = mu.sample(p, gen), nu.sample(p, gen)
                u, v = self._u(xs, ix), self._v(ys, iy)
                z = u[:, None] + v[None, :] - self._cost(xs, ys)  # (p, p)
                if self._log_form():
                    lme = torch.logsumexp((z / eps_t).flatten(), 0) - 2 * math.log(p)
                    obj = u.mean() + v.mean() - eps_t * lme - eps_t
                else:
                    obj = u.mean() + v.mean() + _dual_terms(z, self.reg, eps_t)[0].mean()
            opt.zero_grad(set_to_none=True)
            (-obj).backward()
            opt.step()
            if sched is not None:
                sched.step()
            running, count = running + float(obj.detach()), count + 1
            if step % self.check_every == 0 or step == self.max_iter:
                self.history.append((step, running / count))
                running, count = 0.0, 0
                if self.tol is not None and step < self.max_iter:
                    self._update_shift()
                    if self._error() <= self.tol:
                        break
        self.n_iter = step
        self._update_shift()
        self._fitted = True
        self.error = self._error()
        self.value = self._value()
        if self.tol is not None:
            self.converged = self.error <= self.tol
            if not self.converged:
                warnings.warn(
                    f"StochasticDualOT: marginal error {self.error:.3g} > tol={self.tol:g} after "
                    f"{self.n_iter} steps (eps={self.eps:g}, reg={self.reg!r}). Increase "
                    "max_iter or batch_size, tune lr, or increase eps.",
                    ConvergenceWarning, stacklevel=2)
        return self

    def _cost(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.cost_fn(x, y)

    def _build(self, measure: Measure, gen: torch.Generator, scale: float) -> nn.Module:
        like = torch.zeros((), dtype=measure.dtype, device=measure.device)
        if self.potentials == "discrete":
            return _DiscretePotential(measure.size, like, scale)
        if self.potentials == "neural":
            return _NeuralPotential(measure.dim, self.hidden, self.activation, scale).to(
                dtype=measure.dtype, device=measure.device)
        if measure.discrete and measure.size <= self.n_anchors:
            anchors = measure.points
        else:
            anchors, _ = measure.sample(self.n_anchors, gen)
        h = self.bandwidth
        if h is None:
            d = _costs.euclidean(anchors, anchors)
            h = float(d[d > 0].median()) if bool((d > 0).any()) else 1.0
        return KernelPotential(anchors, h, scale)

    def _log_form(self) -> bool:
        return self.reg == "entropy" and self.optimal_shift

    @torch.no_grad()
    def _update_shift(self) -> None:
        """Move the optimal additive constant of the log-form objective into ``u``."""
        if not self._log_form():
            return
        if self._exact():
            a, b = self.mu.full_weights(), self.nu.full_weights()
            index_x = torch.arange(self.mu.size, device=self.mu.device)
            index_y = torch.arange(self.nu.size, device=self.nu.device)
            z = (self._u(self.mu.points, index_x)[:, None] + self._v(self.nu.points, index_y)
                 - self._cost(self.mu.points, self.nu.points)) / self.eps
            lme = torch.logsumexp((z + a.log()[:, None] + b.log()[None, :]).flatten(), 0)
        else:
            (xs, ix), (ys, iy) = self._eval
            z = (self._u(xs, ix)[:, None] + self._v(ys, iy)[None, :] - self._cost(xs, ys))
            lme = torch.logsumexp((z / self.eps).flatten(), 0) - 2 * math.log(z.shape[0])
        self._shift -= self.eps * float(lme)

    def _u(self, x, index):
        u = self.u_net(index) if self.potentials == "discrete" else self.u_net(x)
        return u + self._shift if self._shift else u

    def _v(self, y, index):
        return self.v_net(index) if self.potentials == "discrete" else self.v_net(y)

    def _exact(self) -> bool:
        return self.potentials == "discrete" and self.mu.size * self.nu.size <= 4_000_000

    def _full_objective(self, eps: float | None = None) -> torch.Tensor:
        a, b = self.mu.full_weights(), self.nu.full_weights()
        u, v = self.u_net.values() + self._shift, self.v_net.values()
        eps = self.eps if eps is None else eps
        z = u[:, None] + v[None, :] - self._cost(self.mu.points, self.nu.points)  # (n, m)
        if self._log_form():
            lme = torch.logsumexp((z / eps + a.log()[:, None] + b.log()[None, :]).flatten(), 0)
            return a @ u + b @ v - eps * lme - eps
        return a @ u + b @ v + a @ _dual_terms(z, self.reg, eps)[0] @ b

    def _eval_sample(self, gen):
        if self._exact():
            return None
        return self.mu.sample(self.eval_size, gen), self.nu.sample(self.eval_size, gen)

    @torch.no_grad()
    def _error(self) -> float:
        if self._exact():
            a, b = self.mu.full_weights(), self.nu.full_weights()
            index_x = torch.arange(self.mu.size, device=self.mu.device)
            index_y = torch.arange(self.nu.size, device=self.nu.device)
            h = self._density(self.mu.points, index_x, self.nu.points, index_y)
            p = a[:, None] * h * b[None, :]
            return float((p.sum(1) - a).abs().sum() + (p.sum(0) - b).abs().sum())
        (xs, ix), (ys, iy) = self._eval
        h = self._density(xs, ix, ys, iy)
        return float((h.mean(1) - 1).abs().mean() + (h.mean(0) - 1).abs().mean())

    @torch.no_grad()
    def _value(self) -> float:
        if self._exact():
            return float(self._full_objective())
        (xs, ix), (ys, iy) = self._eval
        u, v = self._u(xs, ix), self._v(ys, iy)
        f, _ = _dual_terms(u[:, None] + v[None, :] - self._cost(xs, ys), self.reg, self.eps)
        return float(u.mean() + v.mean() + f.mean())

    # ------------------------------------------------------------------ evaluation

    def _check_fitted(self):
        if not self._fitted:
            raise RuntimeError("this StochasticDualOT is not fitted yet; call fit(x, y) first.")

    def _points(self, x, measure: Measure, name: str):
        """Points to evaluate a potential on, and their indices for discrete potentials."""
        if self.potentials == "discrete":
            if x is not None:
                raise ValueError(f"discrete potentials are defined on the fitted points only; "
                                 f"call without {name} (got a tensor).")
            return measure.points, torch.arange(measure.size, device=measure.device)
        if x is None:
            if not measure.discrete:
                raise ValueError(f"{name} is required: the fitted measure is a sampler.")
            return measure.points, None
        x = Measure(x, None, name, "-").points
        if x is None or x.shape[1] != measure.dim:
            raise ValueError(f"{name} must be points of shape (n, {measure.dim}), got "
                             f"{tuple(x.shape) if x is not None else 'a sampler'}.")
        if x.dtype != measure.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but the fit used {measure.dtype}.")
        return x, None

    def _density(self, xs, ix, ys, iy) -> torch.Tensor:
        z = self._u(xs, ix)[:, None] + self._v(ys, iy)[None, :] - self._cost(xs, ys)
        return _dual_terms(z, self.reg, self.eps)[1]

    def potential_values(self, x=None, y=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The potentials ``u(x)`` ``(n,)`` and ``v(y)`` ``(m,)`` (detached). Discrete
        potentials: call without arguments (the fitted points); others: any points, or the
        fitted points by default."""
        self._check_fitted()
        (xs, ix), (ys, iy) = self._points(x, self.mu, "x"), self._points(y, self.nu, "y")
        with torch.no_grad():
            return self._u(xs, ix), self._v(ys, iy)

    def density(self, x=None, y=None) -> torch.Tensor:
        r"""The plan's density with respect to :math:`\mu \otimes \nu`, ``(n, m)``:
        :math:`e^{(u + v - c)/\varepsilon}` or :math:`(u + v - c)_+ / (2\varepsilon)`."""
        self._check_fitted()
        (xs, ix), (ys, iy) = self._points(x, self.mu, "x"), self._points(y, self.nu, "y")
        with torch.no_grad():
            return self._density(xs, ix, ys, iy)

    def plan(self, x=None, y=None, a=None, b=None) -> torch.Tensor:
        r"""The plan :math:`P_{ij} = a_i b_j h(x_i, y_j)` on points, ``(n, m)``.

        Discrete potentials: the fitted points and weights (call without arguments). Others: the
        given points with weights ``a``, ``b`` (default uniform), or the fitted points; the
        marginals of such a plan are those of the learned continuous plan, up to sampling.
        """
        h = self.density(x, y)  # (n, m)
        a = self._plan_weights(a, x, self.mu, h.shape[0], "a")
        b = self._plan_weights(b, y, self.nu, h.shape[1], "b")
        return a[:, None] * h * b[None, :]

    def _plan_weights(self, w, x, measure: Measure, size: int, name: str) -> torch.Tensor:
        if self.potentials == "discrete" or (x is None and w is None):
            if w is not None:
                raise ValueError(f"{name} is fixed by the fit for discrete potentials.")
            return measure.full_weights()
        if w is None:
            return torch.full((size,), 1.0 / size, dtype=measure.dtype, device=measure.device)
        return Measure(torch.zeros(size, 1, dtype=measure.dtype), w, "x", name).weights

    def __repr__(self) -> str:
        state = (f"n_iter={self.n_iter}, error={self.error:.3g}, value={self.value:.6g}"
                 if self._fitted else "not fitted")
        return (f"StochasticDualOT(reg={self.reg!r}, eps={self.eps:g}, "
                f"potentials={self.potentials!r}, {state})")
