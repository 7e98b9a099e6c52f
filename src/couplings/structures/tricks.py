r"""Stochastic softmax tricks: a perturbation model and its relaxation, for any structure.

A perturbation model samples a structure by solving a linear program at random weights,

.. math::  U = \theta + s \, G, \qquad z^* = \arg\max_{z \in Z} \langle U, z \rangle,

with :math:`G` i.i.d. Gumbel (or Gaussian) noise. Its stochastic softmax trick (SST) replaces the
argmax by a regularized one at temperature :math:`\tau`,

.. math::  z_\tau = \arg\max_{z \in \operatorname{conv}(Z)} \langle U, z \rangle - \tau R(z),

which is differentiable in :math:`\theta` through :math:`U` (the reparameterization trick) and
tends to :math:`z^*` as :math:`\tau \to 0`. With the one-hot structure, Gumbel noise and the
entropy this is the Gumbel-softmax (Concrete) distribution; with permutations, Gumbel-Sinkhorn.

References:
    Paulus, Choi, Tarlow, Krause and Maddison, "Gradient Estimation with Stochastic Softmax
    Tricks", NeurIPS 2020.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch.distributions import Distribution, constraints

from .._validation import check_choice, check_positive_scalar
from ..permutations.operators import gumbel_noise
from .base import FiniteDifference, Structure, check_weights
from .subsets import Categorical

__all__ = ["StochasticSoftmaxTrick", "perturb"]

NOISES = ("gumbel", "normal")


def perturb(theta: torch.Tensor, sample_shape=(), *, noise: str = "gumbel",
            scale: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Random utilities :math:`U = \theta + s G`, shape ``(*sample_shape, *theta.shape)``.

    ``noise="gumbel"`` draws standard Gumbel noise
    (:func:`couplings.permutations.gumbel_noise`, finite in float32); ``"normal"`` standard
    Gaussian noise.

    Example:
        >>> import torch
        >>> from couplings.structures import perturb
        >>> u = perturb(torch.zeros(3), (100_000,), generator=torch.manual_seed(0))
        >>> round(float(u.mean()), 2)  # Euler's constant 0.577
        0.58
    """
    noise = check_choice(noise, "noise", NOISES)
    shape = torch.Size(sample_shape) + theta.shape
    if scale == 0:  # no noise: nothing is drawn from the generator
        return theta.expand(shape)
    if noise == "normal":
        g = torch.randn(shape, dtype=theta.dtype, device=theta.device, generator=generator)
    else:
        g = gumbel_noise(shape, like=theta, generator=generator)
    return theta + scale * g


class StochasticSoftmaxTrick(Distribution):
    r"""The perturbation model of a structure and its stochastic softmax trick.

    Args:
        structure: a :class:`~couplings.structures.Structure` (one-hot, k-subset, spanning
            tree, arborescence, permutation, ...).
        theta: weights ``(*batch, *structure.event_shape)``.
        tau: temperature of the relaxation.
        reg: the relaxation's regularizer, one of ``structure.regularizers``.
        noise: ``"gumbel"`` or ``"normal"``.
        noise_scale: :math:`s`, the noise's scale.
        straight_through: ``rsample`` returns the hard sample in the forward pass and the
            relaxed sample's gradient in the backward pass.
        backward: how ``relaxed`` is differentiated (see :meth:`Structure.relaxed`).

    ``rsample(sample_shape)``: relaxed samples ``(*sample_shape, *batch, *event)``,
    differentiable in ``theta``; ``sample``: hard samples (the exact argmax at the same kind of
    noise); ``mode``: the argmax at ``theta``; ``log_prob(z)``: only for one-hot structures with
    Gumbel noise, where the law is the softmax of ``theta / noise_scale``.

    Example:
        >>> import torch
        >>> from couplings.structures import KSubset, StochasticSoftmaxTrick
        >>> theta = torch.tensor([2.0, 0.0, 1.0, -1.0], requires_grad=True)
        >>> sst = StochasticSoftmaxTrick(KSubset(4, 2), theta, tau=0.5)
        >>> z = sst.rsample((16,), generator=torch.manual_seed(0))
        >>> z.shape, bool(torch.allclose(z.sum(-1), torch.full((16,), 2.0)))
        (torch.Size([16, 4]), True)
        >>> z[:, 0].mean().backward()
        >>> bool(theta.grad[0] > 0)
        True
        >>> sst.mode
        tensor([1., 0., 1., 0.])
    """

    arg_constraints = {"theta": constraints.real}
    has_rsample = True

    def __init__(
        self,
        structure: Structure,
        theta: torch.Tensor,
        tau: float = 1.0,
        *,
        reg: str | None = None,
        noise: str = "gumbel",
        noise_scale: float = 1.0,
        straight_through: bool = False,
        backward: str | FiniteDifference = "autograd",
        validate_args: bool | None = None,
    ):
        if not isinstance(structure, Structure):
            raise TypeError(
                f"structure must be a couplings.structures.Structure, got "
                f"{type(structure).__name__}."
            )
        self.structure = structure
        self.theta = check_weights(theta, structure.event_shape, "theta")
        self.tau = check_positive_scalar(tau, "tau")
        self.reg = structure._check_reg(reg)
        self.noise = check_choice(noise, "noise", NOISES)
        if isinstance(noise_scale, bool) or not (
            isinstance(noise_scale, Real) and math.isfinite(noise_scale) and noise_scale >= 0
        ):
            raise ValueError(f"noise_scale must be a number >= 0, got {noise_scale!r}.")
        self.noise_scale = float(noise_scale)
        self.straight_through = bool(straight_through)
        self.backward = backward
        k = len(structure.event_shape)
        super().__init__(batch_shape=self.theta.shape[:self.theta.dim() - k],
                         event_shape=structure.event_shape, validate_args=validate_args)

    def utilities(self, sample_shape=(), *, generator: torch.Generator | None = None):
        """The perturbed weights ``U = theta + noise_scale * G``, ``(*sample_shape, *batch,
        *event)``, differentiable in ``theta``."""
        return perturb(self.theta, sample_shape, noise=self.noise, scale=self.noise_scale,
                       generator=generator)

    def relax(self, utilities: torch.Tensor) -> torch.Tensor:
        """The relaxed (or straight-through) sample at given utilities."""
        soft = self.structure.relaxed(utilities, self.tau, reg=self.reg, backward=self.backward)
        if self.straight_through:
            return self.structure.argmax(utilities) + soft - soft.detach()
        return soft

    def rsample(self, sample_shape=(), *, generator: torch.Generator | None = None):
        """Relaxed samples :math:`z_\\tau(\\theta + sG)`, differentiable in ``theta``."""
        return self.relax(self.utilities(sample_shape, generator=generator))

    def sample(self, sample_shape=(), *, generator: torch.Generator | None = None):
        """Hard samples :math:`z^*(\\theta + sG)` (no gradient)."""
        with torch.no_grad():
            return self.structure.argmax(self.utilities(sample_shape, generator=generator))

    @property
    def mode(self) -> torch.Tensor:
        """The argmax at ``theta`` (the most likely structure for the one-hot case)."""
        return self.structure.argmax(self.theta.detach())

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-probability of one-hot ``value`` under Gumbel-max: ``log softmax(theta / s)``."""
        if not isinstance(self.structure, Categorical) or self.noise != "gumbel":
            raise NotImplementedError(
                "log_prob is exact only for Categorical with Gumbel noise; the perturbation "
                f"model of {type(self.structure).__name__} has no tractable law."
            )
        if self.noise_scale == 0:
            raise ValueError("log_prob needs noise_scale > 0 (the law is a point mass at 0).")
        logp = torch.log_softmax(self.theta / self.noise_scale, dim=-1)
        return (value * logp).sum(-1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.structure!r}, tau={self.tau}, reg={self.reg!r}, "
                f"noise={self.noise!r}, batch_shape={tuple(self.batch_shape)})")
