r"""``sst-variance``: bias and variance of gradient estimators where the true gradient is known.

For a perturbation model :math:`z = \arg\max_{z \in Z} \langle \theta + G, z \rangle` (Gumbel
:math:`G`) and the objective :math:`f(z) = \|z - t\|^2`, the gradient
:math:`\nabla_\theta \mathbb{E}[f(z)] = \nabla_\theta \sum_z P_\theta(z) f(z)` is computed exactly
by enumeration, with the exact law of the perturbation model:

- one-hot vectors: :math:`P_\theta = \mathrm{softmax}(\theta)` (Gumbel-max);
- k-subsets: the top-k set of :math:`\theta + G` has the Plackett-Luce law of its orderings,
  :math:`P_\theta(S) = \sum_{\text{orders } \pi \text{ of } S} \prod_t e^{\theta_{\pi_t}} /
  \sum_{i \notin \pi_{<t}} e^{\theta_i}`.

Each estimator then gives ``reps`` independent estimates from ``n`` samples each (equal sample
count), and we report its squared bias :math:`\|\bar g - \nabla\|^2`, its variance
:math:`\mathbb{E}\|g - \bar g\|^2` (both relative to :math:`\|\nabla\|^2`) and the cosine of
its mean with the truth, averaged over random problems :math:`(\theta, t)`. Estimators:
REINFORCE (no baseline, and the leave-one-out baseline for ``n >= 2``), NVIL (its running-mean
baseline, warmed up on the same problem, without the variance scaling that would rescale
the gradient), the relaxed stochastic softmax tricks of
every regularizer at several temperatures, their straight-through versions, and the perturbed
optimizer of Berthet et al. (which estimates the gradient of :math:`f(\mathbb{E}[z])`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import torch

from ..structures import (
    NVIL,
    Categorical,
    KSubset,
    StochasticSoftmaxTrick,
    perturbed,
    reinforce,
)
from .base import Experiment, ExperimentResult, RunContext, Table, torch_threads

__all__ = ["EXPERIMENT", "SSTVarianceConfig", "exact_topk_log_law"]


@dataclasses.dataclass(frozen=True)
class SSTVarianceConfig:
    """Settings; the defaults are the full setting.

    Attributes:
        d: number of items (one-hot vectors and k-subsets of ``d`` items).
        k: subset size.
        sample_counts: samples per estimate ``n``.
        taus: temperatures of the relaxed estimators.
        reps: independent estimates per estimator (for the mean and the variance).
        n_problems: random problems ``(theta, t)`` averaged over.
        nvil_warmup: NVIL steps on the problem before its estimates are taken.
        num_threads: torch threads.
    """

    d: int = 8
    k: int = 3
    sample_counts: tuple[int, ...] = (1, 4, 16)
    taus: tuple[float, ...] = (0.1, 0.5, 1.0)
    reps: int = 2000
    n_problems: int = 5
    nvil_warmup: int = 200
    num_threads: int = 1

    @classmethod
    def quick(cls) -> SSTVarianceConfig:
        return cls(sample_counts=(1, 4), taus=(0.5,), reps=400, n_problems=2, nvil_warmup=100)


def exact_topk_log_law(theta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of every k-subset under Gumbel top-k, ``(*batch, C(d, k))``, and the
    subsets as 0/1 rows ``(C(d, k), d)``; differentiable in ``theta`` ``(*batch, d)``."""
    d = theta.shape[-1]
    subsets = list(itertools.combinations(range(d), k))
    orders = torch.tensor([o for s in subsets for o in itertools.permutations(s)])  # (M, k)
    per_subset = math.factorial(k)
    logits = theta.unsqueeze(-2).expand(*theta.shape[:-1], len(orders), d)
    picked = torch.gather(logits, -1, orders.expand(*theta.shape[:-1], -1, -1))  # (*, M, k)
    # log of the remaining mass before each pick: logsumexp over items not yet picked
    taken = torch.zeros(*theta.shape[:-1], len(orders), d, dtype=torch.bool)
    log_rest = []
    for t in range(k):
        log_rest.append(torch.logsumexp(logits.masked_fill(taken, -math.inf), dim=-1))
        taken = taken.scatter(-1, orders[:, t:t + 1].expand(*taken.shape[:-1], 1), True)
    log_order = picked.sum(-1) - torch.stack(log_rest, -1).sum(-1)  # (*, M)
    log_law = torch.logsumexp(log_order.unflatten(-1, (len(subsets), per_subset)), dim=-1)
    rows = torch.zeros(len(subsets), d, dtype=theta.dtype)
    for i, s in enumerate(subsets):
        rows[i, list(s)] = 1.0
    return log_law, rows


def _log_prob_of(theta: torch.Tensor, z: torch.Tensor, structure) -> torch.Tensor:
    """Exact log-probability of hard samples ``z`` ``(n, reps, d)`` with ``theta`` ``(reps, d)``."""
    if isinstance(structure, Categorical):
        return (z * torch.log_softmax(theta, -1)).sum(-1)
    log_law, rows = exact_topk_log_law(theta, structure.k)  # (reps, C), (C, d)
    index = (z.unsqueeze(-2) == rows).all(-1).double().argmax(-1)  # (n, reps)
    return torch.gather(log_law.expand(z.shape[0], -1, -1), -1, index.unsqueeze(-1)).squeeze(-1)


def _objective(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((z - target) ** 2).sum(-1)


def _true_gradient(structure, theta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    t = theta.clone().requires_grad_(True)
    if isinstance(structure, Categorical):
        log_law, rows = torch.log_softmax(t, -1), torch.eye(structure.d, dtype=t.dtype)
    else:
        log_law, rows = exact_topk_log_law(t, structure.k)
    value = (log_law.exp() * _objective(rows, target)).sum()
    (grad,) = torch.autograd.grad(value, t)
    return grad


def _estimates(name: str, structure, theta, target, n, reps, generator, config) -> torch.Tensor:
    """``reps`` independent estimates ``(reps, d)``, each from ``n`` samples."""
    t = theta.expand(reps, -1).clone().requires_grad_(True)  # row r: estimate r
    kind, _, option = name.partition(":")
    if kind in ("reinforce", "reinforce-loo", "nvil"):
        sst = StochasticSoftmaxTrick(structure, t)
        z = sst.sample((n,), generator=generator)  # (n, reps, d)
        f = _objective(z, target)
        logp = _log_prob_of(t, z, structure)
        if kind == "nvil":
            nvil = NVIL(baseline=None, normalize=False)
            with torch.no_grad():  # warm up the running statistics on the same problem
                for _ in range(config.nvil_warmup):
                    zw = sst.sample((n,), generator=generator)
                    nvil.surrogate(_objective(zw, target), torch.zeros(n, reps))
            nvil.eval()
            surrogate = nvil.surrogate(f, logp) * reps
        else:
            surrogate = reinforce(f, logp, "loo" if kind == "reinforce-loo" else None) * reps
    elif kind == "perturbed":
        y = perturbed(structure.argmax, t, sigma=1.0, n_samples=n, event_ndim=1,
                      generator=generator)
        surrogate = _objective(y, target).sum()
    else:  # relaxed or straight-through SST: "sst:<reg>@<tau>" / "st:<reg>@<tau>"
        reg, _, tau = option.partition("@")
        sst = StochasticSoftmaxTrick(structure, t, tau=float(tau), reg=reg,
                                     straight_through=kind == "st")
        surrogate = _objective(sst.rsample((n,), generator=generator), target).mean(0).sum()
    (grad,) = torch.autograd.grad(surrogate, t)
    return grad.detach()


def _estimator_names(structure, config, n) -> list[str]:
    names = ["reinforce"] + (["reinforce-loo"] if n >= 2 else []) + ["nvil", "perturbed"]
    for reg in structure.regularizers:
        names += [f"sst:{reg}@{tau:g}" for tau in config.taus]
    names += [f"st:{structure.regularizers[0]}@{tau:g}" for tau in config.taus]
    return names


def run(config: SSTVarianceConfig, ctx: RunContext) -> ExperimentResult:
    structures = {"one-hot": Categorical(config.d), f"{config.k}-subset": KSubset(config.d,
                                                                                   config.k)}
    units = [(s, n, p) for s in structures for n in config.sample_counts
             for p in range(config.n_problems)]

    def work(unit):
        sname, n, p = unit
        structure = structures[sname]
        with torch_threads(config.num_threads):
            g = ctx.generator(list(structures).index(sname), n, p)
            theta = torch.randn(config.d, dtype=torch.float64, generator=g)
            target = torch.rand(config.d, dtype=torch.float64, generator=g)
            truth = _true_gradient(structure, theta, target)
            scale = float(truth.pow(2).sum())
            out = {}
            for name in _estimator_names(structure, config, n):
                est = _estimates(name, structure, theta, target, n, config.reps, g, config)
                mean = est.mean(0)
                out[name] = {
                    "bias2": float((mean - truth).pow(2).sum()) / scale,
                    "variance": float((est - mean).pow(2).sum(-1).mean()) / scale,
                    "cosine": float(torch.nn.functional.cosine_similarity(mean, truth, dim=0)),
                }
        return {"structure": sname, "n": n, "problem": p, "estimators": out}

    outcomes = ctx.map_units(units, work, key=lambda u: f"{u[0]}-n{u[1]}-p{u[2]}",
                             desc="sst-variance (structure, n, problem)")
    summary: dict = {}
    for o in outcomes:
        cell = summary.setdefault(o["structure"], {}).setdefault(str(o["n"]), {})
        for name, m in o["estimators"].items():
            for key, value in m.items():
                cell.setdefault(name, {}).setdefault(key, []).append(value)
    for per_n in summary.values():
        for cell in per_n.values():
            for name, m in cell.items():
                cell[name] = {key: float(np.mean(v)) for key, v in m.items()}

    criterion, versus_loo = {}, {}
    tables = []
    for sname, per_n in summary.items():
        ns = sorted(per_n, key=int)
        names = list(per_n[ns[-1]])
        rows = []
        for name in names:
            row = [name]
            for n in ns:
                m = per_n[n].get(name)
                row += [None, None, None] if m is None else [
                    round(m["variance"], 4), round(m["bias2"], 4), round(m["cosine"], 3)]
            rows.append(row)
        for n in ns:
            plain = per_n[n]["reinforce"]["variance"]
            for tau in config.taus:
                relaxed = [v["variance"] for k, v in per_n[n].items()
                           if k.startswith("sst:") and k.endswith(f"@{tau:g}")]
                criterion[f"{sname} n={n} tau={tau:g}"] = bool(max(relaxed) < plain)
            if "reinforce-loo" in per_n[n]:
                loo = per_n[n]["reinforce-loo"]["variance"]
                versus_loo[f"{sname} n={n}"] = sorted(
                    k for k, v in per_n[n].items() if k.startswith("sst:") and v["variance"] < loo)
        tables.append(Table(
            f"{sname} (d={config.d}): variance, squared bias (relative to |grad|^2), cosine",
            ["estimator"] + [f"{h} n={n}" for n in ns for h in ("var", "bias^2", "cos")],
            rows,
            caption=(f"Mean over {config.n_problems} random problems, {config.reps} estimates "
                     "each; 'sst:reg@tau' relaxed, 'st:' straight-through. REINFORCE's bias "
                     "is sampling error only (it is unbiased)."),
        ))
    figures = {"bias_variance": _figure(summary)}
    notes = [
        "Objective f(z) = |z - t|^2 with t ~ U(0,1)^d and theta ~ N(0, I); the exact gradient "
        "comes from the enumerated law of the Gumbel perturbation model.",
        "Criterion, per temperature: at each sample count, every relaxed SST estimator at that "
        "temperature has a smaller variance than REINFORCE with the same number of samples. "
        "Per (structure, n, tau): " + ", ".join(
            f"{key}: {'yes' if ok else 'NO'}" for key, ok in criterion.items()) + ".",
        "Against REINFORCE with the leave-one-out baseline (n >= 2), the relaxed estimators "
        "with a smaller variance are: " + "; ".join(
            f"{key}: {', '.join(v) or 'none'}" for key, v in versus_loo.items()) + ".",
    ]
    by_tau = {tau: all(ok for key, ok in criterion.items() if key.endswith(f"tau={tau:g}"))
              for tau in config.taus}
    return ExperimentResult(
        metrics={"summary": summary, "criterion": criterion,
                 "relaxed_below_reinforce_loo": versus_loo, "units": outcomes},
        tables=tables, figures=figures, notes=notes,
        headline={f"relaxed variance < REINFORCE's at every n, tau={tau:g}": ok
                  for tau, ok in by_tau.items()},
    )


def _figure(summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4.5), squeeze=False)
    for ax, (sname, per_n) in zip(axes[0], summary.items(), strict=True):
        n = sorted(per_n, key=int)[0]
        for name, m in per_n[n].items():
            family = name.split(":")[0].split("@")[0]
            marker = {"sst": "o", "st": "s", "perturbed": "^"}.get(family, "X")
            ax.scatter(max(m["variance"], 1e-6), max(m["bias2"], 1e-6), marker=marker)
            ax.annotate(name, (max(m["variance"], 1e-6), max(m["bias2"], 1e-6)), fontsize=6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("variance / |grad|^2")
        ax.set_ylabel("squared bias / |grad|^2")
        ax.set_title(f"{sname}, n={n} sample(s) per estimate")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(
    name="sst-variance",
    description="Bias and variance of SST, REINFORCE, NVIL and perturbed-optimizer gradients "
                "against the exact gradient (Paulus et al. 2020).",
    config_type=SSTVarianceConfig,
    run=run,
)
