r"""Gradient estimators without relaxation: score functions (REINFORCE, NVIL), perturbed optimizers.

The stochastic softmax tricks of :mod:`couplings.structures.tricks` estimate
:math:`\nabla_\theta \mathbb{E}[f(z)]` by differentiating a relaxed sample: low variance, some
bias. The estimators here are the references they are compared with.

- **REINFORCE** (score function): :math:`(f(z) - b) \nabla_\theta \log p_\theta(z)`, unbiased
  for any baseline :math:`b` that does not depend on :math:`z`; with several samples the
  leave-one-out mean is such a baseline.
- **NVIL** (Mnih and Gregor, 2014): REINFORCE with a learned, input-dependent baseline and the
  learning signal centred and scaled by running estimates of its mean and variance.
- **Perturbed optimizer** (Berthet et al., 2020): the smoothed solver
  :math:`y_\sigma(\theta) = \mathbb{E}[y^*(\theta + \sigma Z)]` with the Monte-Carlo Jacobian
  :math:`J = \mathbb{E}[y^*(\theta + \sigma Z) \nabla \nu(Z)^\top] / \sigma`, where
  :math:`\nu = -\log` density of the noise: :math:`\nabla\nu(z) = z` (Gaussian),
  :math:`1 - e^{-z}` (Gumbel).

All functions return *surrogates*: tensors whose gradient is the estimator, so that training
code calls ``.backward()`` on them as on any loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._validation import as_tensor, check_choice, check_positive_int, check_positive_scalar
from ..permutations.operators import gumbel_noise
from .tricks import NOISES

__all__ = ["NVIL", "leave_one_out_baseline", "perturbed", "reinforce"]


def leave_one_out_baseline(f: torch.Tensor) -> torch.Tensor:
    r"""For ``n >= 2`` samples along axis 0, :math:`b_i = \frac{1}{n-1}\sum_{j \neq i} f_j`.

    Example:
        >>> import torch
        >>> from couplings.structures import leave_one_out_baseline
        >>> leave_one_out_baseline(torch.tensor([1.0, 2.0, 6.0]))
        tensor([4.0000, 3.5000, 1.5000])
    """
    f = as_tensor(f, "f")
    if f.dim() == 0 or f.shape[0] < 2:
        raise ValueError(
            f"the leave-one-out baseline needs at least 2 samples along axis 0, got shape "
            f"{tuple(f.shape)}."
        )
    n = f.shape[0]
    return (f.sum(0, keepdim=True) - f) / (n - 1)


def reinforce(f: torch.Tensor, log_prob: torch.Tensor,
              baseline: torch.Tensor | str | None = None) -> torch.Tensor:
    r"""Surrogate of the score-function estimator, :math:`\mathrm{mean}[(f - b)\log p]` with
    ``f`` and ``b`` held constant; add ``f.mean()`` yourself when ``f`` also depends on the
    parameters directly.

    Args:
        f: objective values of the samples, ``(n, *batch)``.
        log_prob: their log-probabilities, same shape, differentiable in the parameters.
        baseline: ``None``, a tensor broadcastable to ``f``, or ``"loo"`` for the
            leave-one-out mean over the ``n`` samples.

    Example:
        >>> import torch
        >>> from couplings.structures import reinforce
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> dist = torch.distributions.Categorical(logits=logits)
        >>> z = dist.sample((4000,), )
        >>> f = (z == 2).double()  # d E[f] / d logits = p2 (e2 - p)
        >>> reinforce(f, dist.log_prob(z), baseline="loo").backward()
        >>> [round(v, 1) for v in logits.grad.tolist()]
        [-0.1, -0.1, 0.2]
    """
    f = as_tensor(f, "f").detach()
    if not isinstance(log_prob, torch.Tensor) or log_prob.shape != f.shape:
        raise ValueError(
            f"log_prob must be a tensor of f's shape {tuple(f.shape)}, got "
            f"{getattr(log_prob, 'shape', type(log_prob).__name__)}."
        )
    if isinstance(baseline, str):
        check_choice(baseline, "baseline", ("loo",))
        baseline = leave_one_out_baseline(f)
    signal = f if baseline is None else f - as_tensor(baseline, "baseline").detach()
    return (signal * log_prob).mean()


class NVIL(nn.Module):
    r"""Neural variational inference and learning: REINFORCE with a learned baseline.

    The learning signal :math:`l = f - b_\phi(x)` is centred and scaled by exponential moving
    averages of its mean :math:`c` and variance :math:`v`:
    :math:`\hat l = (l - c) / \max(1, \sqrt{v})`. The surrogate's gradient is
    :math:`\hat l \nabla \log p` for the model and :math:`\nabla (l - c)^2` for the baseline.

    Args:
        baseline: a module mapping the context ``x`` to one value per sample, or ``None`` for
            the running mean alone.
        momentum: weight of the past in the moving averages.
        normalize: divide the centred signal by the running standard deviation (NVIL's
            variance normalisation, which rescales the gradient); ``False`` keeps the
            estimator unbiased.

    Example:
        >>> import torch
        >>> from couplings.structures import NVIL
        >>> nvil = NVIL(baseline=None)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> dist = torch.distributions.Categorical(logits=logits)
        >>> z = dist.sample((64,))
        >>> loss = nvil.surrogate((z == 2).float(), dist.log_prob(z))
        >>> loss.backward(); logits.grad.shape
        torch.Size([3])
    """

    def __init__(self, baseline: nn.Module | None = None, momentum: float = 0.9,
                 normalize: bool = True):
        super().__init__()
        if baseline is not None and not isinstance(baseline, nn.Module):
            raise TypeError(f"baseline must be an nn.Module or None, got {type(baseline)}.")
        momentum = float(momentum)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}.")
        self.baseline = baseline
        self.momentum = momentum
        self.normalize = bool(normalize)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("var", torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def surrogate(self, f: torch.Tensor, log_prob: torch.Tensor,
                  context: torch.Tensor | None = None) -> torch.Tensor:
        """Surrogate loss for the model (through ``log_prob``) and the baseline; updates the
        running statistics when the module is in training mode."""
        f = as_tensor(f, "f").detach()
        if log_prob.shape != f.shape:
            raise ValueError(f"log_prob must have f's shape {tuple(f.shape)}, got "
                             f"{tuple(log_prob.shape)}.")
        if self.baseline is not None:
            if context is None:
                raise ValueError("NVIL with a baseline network needs the context x.")
            b = self.baseline(context).reshape(f.shape)
        else:
            b = torch.zeros_like(f)
        signal = f - b.detach()
        if self.training:
            with torch.no_grad():
                m, v = signal.mean(), signal.var(unbiased=False) if signal.numel() > 1 else 0.0
                if not bool(self.initialized):
                    self.mean.copy_(m)
                    self.var.copy_(torch.as_tensor(v).clamp_min(1.0))
                    self.initialized.fill_(True)
                else:
                    self.mean.mul_(self.momentum).add_((1 - self.momentum) * m)
                    self.var.mul_(self.momentum).add_((1 - self.momentum) * v)
        centred = signal - self.mean
        scaled = centred / self.var.sqrt().clamp_min(1.0) if self.normalize else centred
        model_term = (scaled.detach() * log_prob).mean()
        baseline_term = ((f - self.mean - b) ** 2).mean() if self.baseline is not None else 0.0
        return model_term + baseline_term


class _Perturbed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, solver, theta, sigma, n_samples, noise, event_ndim, generator):
        shape = (n_samples, *theta.shape)
        if noise == "normal":
            z = torch.randn(shape, dtype=theta.dtype, device=theta.device, generator=generator)
            grad_nu = z
        else:
            z = gumbel_noise(shape, like=theta, generator=generator)
            grad_nu = 1 - torch.exp(-z)
        with torch.no_grad():
            y = solver(theta.detach() + sigma * z)  # (n_samples, *theta.shape)
        ctx.save_for_backward(y, grad_nu)
        ctx.sigma, ctx.event_ndim = sigma, event_ndim
        return y.mean(0)

    @staticmethod
    def backward(ctx, grad):
        y, grad_nu = ctx.saved_tensors
        # J^T g = E[<g, y*(theta + sigma Z)> grad_nu(Z)] / sigma, the inner product taken per
        # problem (over the event axes)
        event_dims = tuple(range(y.dim() - ctx.event_ndim, y.dim()))
        inner = (grad.unsqueeze(0) * y).sum(dim=event_dims, keepdim=True)
        return None, (inner * grad_nu).mean(0) / ctx.sigma, None, None, None, None, None


def perturbed(solver: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, *,
              sigma: float = 1.0, n_samples: int = 100, noise: str = "gumbel",
              event_ndim: int | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The perturbed optimizer :math:`\mathbb{E}[y^*(\theta + \sigma Z)]` with its Monte-Carlo
    Jacobian (Berthet et al., 2020).

    Args:
        solver: maps weights ``(n_samples, *theta.shape)`` to solutions of the same shape,
            batched over leading axes (for instance a structure's ``argmax``).
        theta: weights ``(*batch, *event)``.
        sigma: noise scale.
        n_samples: Monte-Carlo samples.
        noise: ``"gumbel"`` or ``"normal"``.
        event_ndim: number of trailing axes of ``theta`` that form one problem (default: all).
        generator: random source.

    Example:
        >>> import torch
        >>> from couplings.structures import Categorical, perturbed
        >>> theta = torch.tensor([-0.6, 1.9, -0.2, 1.1, -1.0])
        >>> y = perturbed(Categorical(5).argmax, theta, sigma=0.5, n_samples=200_000,
        ...               generator=torch.manual_seed(0))
        >>> [round(v, 2) for v in y.tolist()]  # softmax(theta / 0.5): .005 .815 .012 .165 .002
        [0.01, 0.82, 0.01, 0.16, 0.0]
    """
    theta = as_tensor(theta, "theta")
    sigma = check_positive_scalar(sigma, "sigma")
    n_samples = check_positive_int(n_samples, "n_samples")
    noise = check_choice(noise, "noise", NOISES)
    if not callable(solver):
        raise TypeError(f"solver must be callable, got {type(solver).__name__}.")
    if event_ndim is None:
        event_ndim = theta.dim()
    if isinstance(event_ndim, bool) or not isinstance(event_ndim, int) \
            or not 0 <= event_ndim <= theta.dim():
        raise ValueError(f"event_ndim must be an int in [0, {theta.dim()}], got {event_ndim!r}.")
    return _Perturbed.apply(solver, theta, sigma, n_samples, noise, event_ndim, generator)
