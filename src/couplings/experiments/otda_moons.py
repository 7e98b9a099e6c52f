r"""``otda-moons``: OT domain adaptation on rotated two moons (Courty et al. 2017, Table 1).

Protocol (Courty, Flamary, Tuia, Rakotomamonjy, "Optimal Transport for Domain Adaptation",
TPAMI 2017, section 6.1, after Germain et al. 2013):

- source: ``make_moons`` with 150 points per class and noise 0.1, labelled;
- target: 300 fresh moons rotated by :math:`\theta` about the source mean, unlabelled;
- test: 1000 fresh moons rotated the same way;
- an SVM with a Gaussian kernel, ``C`` and ``gamma`` chosen by 5-fold cross-validation on the
  (transported) source, is trained on the transported source :math:`(\hat X_s, y_s)` and its
  error measured on the test set.

Methods: no adaptation, exact OT, entropic OT (OT-IT), group-lasso OT (OT-GL) and Laplacian OT,
each from :mod:`couplings.da` and from POT's ``ot.da`` on the same data (same seeds), with the
paper's number beside each row; and the paper's Laplacian OT (8-neighbour graphs, the source graph
pruned across classes), which POT does not offer, from :mod:`couplings.da` only. The same source,
target and test draws serve every angle of a seed; one unit of work (checkpointed) is one ``(seed,
angle)`` with every method.

Hyper-parameters are fixed once, as in our POT run of the protocol (``ot_learning.md`` 4.4):
entropic ``eps = 0.1``; group lasso ``eps = 0.1``, ``eta = 1``, 20 conditional-gradient steps;
Laplacian ``eta = 10``, ``alpha = 0.5`` (weight of the target graph), 3-neighbour graphs (POT's
default), exact inner problems, 10 steps. Each group-lasso implementation keeps its own inner
Sinkhorn budget (ours: to tolerance 1e-9, at most 10 000 iterations; POT: 200 iterations). The
costs are squared Euclidean distances, not normalised. The paper does not state the noise level,
the rotation centre or how its hyper-parameters were chosen, and its no-adaptation row is not
reproduced by ``make_moons`` (it depends strongly on noise and centre): compare the OT rows, and
ours with POT's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ._otda import (
    IMPLEMENTATIONS,
    METHOD_LABELS,
    adapt,
    implementations_of,
    mean_std,
    warnings_note,
)
from .base import Compared, Experiment, ExperimentResult, RunContext, Table, torch_threads

__all__ = ["EXPERIMENT", "PAPER", "OTDAMoonsConfig", "moons_problem", "run_unit", "svm_error"]

METHODS = ("none", "exact", "entropic", "group-lasso", "laplacian", "laplacian-pruned")

# Courty et al. 2017, Table 1: mean error over 10 realizations
PAPER = {
    "none": {10: 0.0, 20: 0.104, 30: 0.24, 40: 0.312, 50: 0.4, 70: 0.764, 90: 0.828},
    "exact": {10: 0.0, 20: 0.028, 30: 0.065, 40: 0.109, 50: 0.206, 70: 0.394, 90: 0.507},
    "entropic": {10: 0.0, 20: 0.007, 30: 0.054, 40: 0.102, 50: 0.221, 70: 0.398, 90: 0.508},
    "group-lasso": {10: 0.0, 20: 0.0, 30: 0.0, 40: 0.013, 50: 0.196, 70: 0.378, 90: 0.508},
    "laplacian": {10: 0.0, 20: 0.0, 30: 0.004, 40: 0.062, 50: 0.201, 70: 0.402, 90: 0.524},
}
PAPER["laplacian-pruned"] = PAPER["laplacian"]
# the paper's other baselines (no OT), shown for context
PAPER_BASELINES = {
    "DASVM": {10: 0.0, 20: 0.0, 30: 0.259, 40: 0.284, 50: 0.334, 70: 0.747, 90: 0.82},
    "PBDA": {10: 0.0, 20: 0.094, 30: 0.103, 40: 0.225, 50: 0.412, 70: 0.626, 90: 0.687},
}
TOLERANCE_VS_POT = 0.05  # the issue's bar: every OT row within 0.05 of POT's same estimator


@dataclasses.dataclass(frozen=True)
class OTDAMoonsConfig:
    """Settings; the defaults are the full setting.

    Attributes:
        angles: rotation angles of the target, in degrees.
        n_seeds: independent draws of (source, target, test), the same for every angle.
        n_per_class: source (and target) points per moon.
        n_test: test points.
        noise: ``make_moons`` noise.
        methods: ``"none"`` and OT methods of :mod:`couplings.experiments._otda`.
        implementations: ``"couplings"`` and/or ``"POT"``.
        svm_c, svm_gamma: cross-validation grid of the RBF SVM.
        cv_folds: cross-validation folds.
        sinkhorn_eps: entropic OT regularization.
        gl_eps, gl_eta, gl_max_iter: group-lasso OT entropy, class regularization and
            conditional-gradient steps.
        lap_eta, lap_alpha, lap_neighbors, lap_max_iter: Laplacian OT regularization, weight
            of the target-graph term, neighbours of the kNN graphs (POT's default 3; the
            ``laplacian-pruned`` variant uses the paper's 8 and class pruning) and
            conditional-gradient steps.
        figure_angles: angles drawn in the figure (those also in ``angles``), seed 0.
        num_threads: torch threads.
    """

    angles: tuple[int, ...] = (10, 20, 30, 40, 50, 70, 90)
    n_seeds: int = 10
    n_per_class: int = 150
    n_test: int = 1000
    noise: float = 0.1
    methods: tuple[str, ...] = METHODS
    implementations: tuple[str, ...] = IMPLEMENTATIONS
    svm_c: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    svm_gamma: tuple[float, ...] = (0.1, 1.0, 10.0)
    cv_folds: int = 5
    sinkhorn_eps: float = 0.1
    gl_eps: float = 0.1
    gl_eta: float = 1.0
    gl_max_iter: int = 20
    lap_eta: float = 10.0
    lap_alpha: float = 0.5
    lap_neighbors: int = 3
    lap_max_iter: int = 10
    figure_angles: tuple[int, ...] = (20, 40, 70)
    num_threads: int = 1

    @classmethod
    def quick(cls) -> OTDAMoonsConfig:
        """Two seeds, angles 20 and 40 (the full CV grid)."""
        return cls(angles=(20, 40), n_seeds=2)

    def __post_init__(self):
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; known: {list(METHODS)}.")
        unknown = set(self.implementations) - set(IMPLEMENTATIONS)
        if unknown:
            raise ValueError(f"unknown implementations {sorted(unknown)}; known: "
                             f"{list(IMPLEMENTATIONS)}.")
        if self.n_seeds < 1 or self.n_per_class < self.cv_folds or not self.angles:
            raise ValueError(f"need n_seeds >= 1, n_per_class >= cv_folds and some angles, "
                             f"got {self.n_seeds}, {self.n_per_class}, {self.angles}.")

    def params(self, method: str) -> dict[str, Any]:
        """Hyper-parameters of ``method`` (this library's names)."""
        return {
            "exact": {},
            "entropic": {"eps": self.sinkhorn_eps},
            "group-lasso": {"eps": self.gl_eps, "eta": self.gl_eta,
                            "max_iter": self.gl_max_iter},
            "laplacian": {"eta": self.lap_eta, "alpha": self.lap_alpha,
                          "n_neighbors": self.lap_neighbors, "max_iter": self.lap_max_iter},
            "laplacian-pruned": {"eta": self.lap_eta, "alpha": self.lap_alpha,
                                 "n_neighbors": 8, "max_iter": self.lap_max_iter},
            "none": {},
        }[method]


def _rotate(x: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:
    t = np.deg2rad(angle)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (x - centre) @ rot.T + centre


def moons_problem(seed: int, angle: float, *, n_per_class: int = 150, n_test: int = 1000,
                  noise: float = 0.1) -> dict[str, np.ndarray]:
    """Source, target and test moons of one draw, the target and test rotated by ``angle``.

    The draw depends on ``seed`` only (not on ``angle``); the rotation is about the mean of the
    source points.

    Returns:
        ``{"xs", "ys", "xt", "yt", "xtest", "ytest"}``: ``(2 n_per_class, 2)`` source and target
        points with labels, ``(n_test, 2)`` test points with labels.

    Example:
        >>> p = moons_problem(0, 90.0, n_per_class=5, n_test=8)
        >>> p["xs"].shape, p["xt"].shape, p["xtest"].shape, sorted(set(p["ys"].tolist()))
        ((10, 2), (10, 2), (8, 2), [0, 1])
    """
    from sklearn.datasets import make_moons

    states = np.random.default_rng(seed).integers(0, 2**31 - 1, size=3)
    xs, ys = make_moons((n_per_class, n_per_class), noise=noise, random_state=int(states[0]))
    xt, yt = make_moons((n_per_class, n_per_class), noise=noise, random_state=int(states[1]))
    n0 = n_test // 2
    xe, ye = make_moons((n0, n_test - n0), noise=noise, random_state=int(states[2]))
    centre = xs.mean(0)
    return {"xs": xs, "ys": ys, "xt": _rotate(xt, angle, centre), "yt": yt,
            "xtest": _rotate(xe, angle, centre), "ytest": ye}


def svm_error(x: np.ndarray, y: np.ndarray, xtest: np.ndarray, ytest: np.ndarray, *,
              c_grid=(0.1, 1.0, 10.0, 100.0), gamma_grid=(0.1, 1.0, 10.0),
              folds: int = 5) -> tuple[float, dict[str, float]]:
    """Test error of an RBF SVM whose ``C`` and ``gamma`` are chosen by CV on ``(x, y)``.

    Returns:
        The error on ``(xtest, ytest)`` and the chosen ``{"C", "gamma"}``.

    Example:
        >>> p = moons_problem(0, 0.0, n_per_class=20, n_test=100)
        >>> err, best = svm_error(p["xs"], p["ys"], p["xtest"], p["ytest"])
        >>> err < 0.1, sorted(best)
        (True, ['C', 'gamma'])
    """
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    search = GridSearchCV(SVC(kernel="rbf"), {"C": list(c_grid), "gamma": list(gamma_grid)},
                          cv=folds)
    search.fit(x, y)
    error = float(1.0 - search.score(xtest, ytest))
    return error, {k: float(v) for k, v in search.best_params_.items()}


def _method_keys(config: OTDAMoonsConfig) -> list[tuple[str, str | None]]:
    """(method, implementation) pairs of the run; ``none`` has no implementation."""
    return [(m, impl) for m in config.methods
            for impl in implementations_of(m, config.implementations)]


def _key(method: str, impl: str | None) -> str:
    return method if impl is None else f"{method}/{impl}"


def run_unit(config: OTDAMoonsConfig, ctx: RunContext, seed_index: int,
             angle: int) -> dict[str, Any]:
    """Every method on the draw of ``seed_index`` rotated by ``angle``; plain data."""
    p = moons_problem(ctx.unit_seed(seed_index), angle, n_per_class=config.n_per_class,
                      n_test=config.n_test, noise=config.noise)
    keep = seed_index == 0 and angle in config.figure_angles
    record: dict[str, Any] = {"seed_index": seed_index, "angle": angle, "error": {},
                              "svm": {}, "fit_time_s": {}, "warnings": {}}
    samples: dict[str, Any] = {}
    for method, impl in _method_keys(config):
        key = _key(method, impl)
        moved, info = adapt(method, impl or "", config.params(method), p["xs"], p["ys"],
                            p["xt"])
        error, best = svm_error(moved, p["ys"], p["xtest"], p["ytest"], c_grid=config.svm_c,
                                gamma_grid=config.svm_gamma, folds=config.cv_folds)
        record["error"][key] = error
        record["svm"][key] = best
        record["fit_time_s"][key] = info["fit_time_s"]
        if info["warnings"]:
            record["warnings"][key] = info["warnings"]
        if keep and method != "none":
            samples[key] = torch.from_numpy(moved).float()
    if keep:
        samples.update(xs=torch.from_numpy(p["xs"]).float(), ys=torch.from_numpy(p["ys"]),
                       xt=torch.from_numpy(p["xt"]).float())
    record["samples"] = samples or None
    return record


def _summarize(config: OTDAMoonsConfig, records: list[dict]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for method, impl in _method_keys(config):
        key = _key(method, impl)
        per_angle = {}
        for angle in config.angles:
            errs = [r["error"][key] for r in records if r["angle"] == angle]
            per_angle[str(angle)] = {"mean": float(np.mean(errs)), "std": float(np.std(errs)),
                                     "per_seed": errs}
        times = [r["fit_time_s"][key] for r in records]
        summary[key] = {"per_angle": per_angle, "fit_time_s_mean": float(np.mean(times))}
    return summary


def _gaps(config: OTDAMoonsConfig, summary: dict) -> dict[str, Any]:
    """Mean error of ours minus POT's, per OT method and angle."""
    gaps: dict[str, Any] = {}
    if not {"couplings", "POT"} <= set(config.implementations):
        return gaps
    for method in config.methods:
        if len(implementations_of(method, config.implementations)) < 2:
            continue
        diff = {str(a): summary[f"{method}/couplings"]["per_angle"][str(a)]["mean"]
                - summary[f"{method}/POT"]["per_angle"][str(a)]["mean"] for a in config.angles}
        worst = max(abs(v) for v in diff.values())
        gaps[method] = {"diff": diff, "max_abs": worst, "within": worst <= TOLERANCE_VS_POT}
    return gaps


def _targets(config: OTDAMoonsConfig, summary: dict, gaps: dict) -> list[dict[str, Any]]:
    """The issue's done-when targets, measured (only those whose angles were run)."""
    out = []
    if "group-lasso" in config.methods:
        for impl in config.implementations:
            per = summary[f"group-lasso/{impl}"]["per_angle"]
            low = [a for a in config.angles if a <= 30]
            if low:
                worst = max(per[str(a)]["mean"] for a in low)
                out.append({"target": f"group-lasso OT ({impl}) error <= 0.02 for angles "
                                      f"{low}", "measured": worst, "holds": worst <= 0.02,
                            "implementation": impl})
            if 40 in config.angles:
                v = per["40"]["mean"]
                out.append({"target": f"group-lasso OT ({impl}) error <= 0.12 at 40°",
                            "measured": v, "holds": v <= 0.12, "implementation": impl})
    # the other bands of our POT run (ot_learning.md 4.4): information, not targets
    if "couplings" in config.implementations:
        if 90 in config.angles:
            ot_rows = [m for m in config.methods if m != "none"]
            if ot_rows:
                v = min(summary[f"{m}/couplings"]["per_angle"]["90"]["mean"] for m in ot_rows)
                out.append({"target": "(band) every OT row (couplings) error >= 0.4 at 90°",
                            "measured": v, "holds": v >= 0.4, "implementation": "band"})
        high = [a for a in config.angles if a >= 40]
        if high and {"none", "group-lasso"} <= set(config.methods):
            margin = min(summary["none"]["per_angle"][str(a)]["mean"]
                         - summary["group-lasso/couplings"]["per_angle"][str(a)]["mean"]
                         for a in high)
            out.append({"target": "(band) group-lasso OT (couplings) below no adaptation for "
                                  f"angles {high} (smallest margin)", "measured": margin,
                        "holds": margin > 0, "implementation": "band"})
    if gaps:
        worst = max(g["max_abs"] for g in gaps.values())
        out.append({"target": f"every OT row within {TOLERANCE_VS_POT} of POT's (max |ours - "
                              "POT| over methods and angles)", "measured": worst,
                    "holds": worst <= TOLERANCE_VS_POT, "implementation": "couplings"})
    return out


def run(config: OTDAMoonsConfig, ctx: RunContext) -> ExperimentResult:
    units = [(s, a) for s in range(config.n_seeds) for a in config.angles]

    def work(unit):
        with torch_threads(config.num_threads):
            return run_unit(config, ctx, *unit)

    records = ctx.map_units(units, work, key=lambda u: f"seed{u[0]}/angle{u[1]}",
                            desc="otda-moons (seed, angle)")
    summary = _summarize(config, records)
    gaps = _gaps(config, summary)
    targets = _targets(config, summary, gaps)
    angles = config.angles

    rows = []
    for method, impl in _method_keys(config):
        per = summary[_key(method, impl)]["per_angle"]
        rows.append([METHOD_LABELS[method], impl or "—"] + [
            Compared(mean_std(per[str(a)]["per_seed"]), PAPER[method].get(a)) for a in angles])
    for name, values in PAPER_BASELINES.items():
        rows.append([name, "paper only"] + [Compared(None, values.get(a)) for a in angles])
    tables = [Table(
        "Two moons: test error on the rotated target",
        ["method", "implementation"] + [f"{a}°" for a in angles],
        rows,
        caption=(f"Mean ± std over {config.n_seeds} seed(s) of the SVM's error on "
                 f"{config.n_test} rotated test points; paper: Courty et al. 2017, Table 1 "
                 "(10 realizations; noise and rotation centre unstated)."),
        reference_label="paper",
    )]
    if gaps:
        tables.append(Table(
            "Ours minus POT: difference of the mean errors",
            ["method"] + [f"{a}°" for a in angles] + ["max |diff|", f"≤ {TOLERANCE_VS_POT}"],
            [[METHOD_LABELS[m]] + [round(g["diff"][str(a)], 3) for a in angles]
             + [round(g["max_abs"], 3), g["within"]] for m, g in gaps.items()],
            caption="Same data, same seeds, same hyper-parameters and the same SVM protocol.",
        ))
    tables.append(Table(
        "Targets of the issue",
        ["target", "measured", "holds"],
        [[t["target"], round(t["measured"], 4), t["holds"]] for t in targets],
        caption=(f"Means over {config.n_seeds} seed(s)"
                 + (" (the targets are stated for 10 seeds)" if config.n_seeds < 10 else "")
                 + ". Rows marked (band) are the other bands of our POT run of the protocol "
                 "(ot_learning.md 4.4), for information."),
    ))
    tables.append(Table(
        "Mean fit time per transport (s)",
        ["method"] + list(config.implementations),
        [[METHOD_LABELS[m]] + [round(summary[_key(m, i)]["fit_time_s_mean"], 3)
                               if i in implementations_of(m, config.implementations) else None
                               for i in config.implementations]
         for m in config.methods if m != "none"],
        caption=f"One fit of {2 * config.n_per_class} x {2 * config.n_per_class} points, "
                f"{config.num_threads} thread(s).",
    ))
    notes = [
        "Hyper-parameters (fixed, as in our POT run of the protocol): entropic eps = "
        f"{config.sinkhorn_eps}; group lasso eps = {config.gl_eps}, eta = {config.gl_eta}, "
        f"{config.gl_max_iter} steps; Laplacian eta = {config.lap_eta}, alpha = "
        f"{config.lap_alpha}, {config.lap_neighbors}-NN graphs (the paper's variant: 8-NN, "
        f"source graph pruned across classes), exact inner OT, {config.lap_max_iter} steps. "
        f"SVM grid C in {list(config.svm_c)}, gamma in {list(config.svm_gamma)}, "
        f"{config.cv_folds}-fold CV.",
        "The paper's no-adaptation row is not reproduced by make_moons (noise and rotation "
        "centre unstated); compare the OT rows, and ours with POT's.",
    ]
    warned = warnings_note((k, ws) for r in records for k, ws in r["warnings"].items())
    if warned:
        notes.append(warned)
    figures = {}
    if any(r["samples"] for r in records):
        figures["transported_samples"] = _figure(config, records)
    gl_targets = [t["holds"] for t in targets
                  if t["target"].startswith("group-lasso OT (couplings)")]
    headline: dict[str, Any] = {}
    if gl_targets:
        headline["group-lasso OT targets hold"] = all(gl_targets)
    if gaps:
        headline[f"every OT row within {TOLERANCE_VS_POT} of POT"] = all(
            g["within"] for g in gaps.values())
    return ExperimentResult(
        metrics={"summary": summary, "gaps_vs_pot": gaps, "targets": targets,
                 "paper": {k: {str(a): v for a, v in d.items()} for k, d in PAPER.items()},
                 "units": [{k: v for k, v in r.items() if k != "samples"} for r in records]},
        tables=tables, figures=figures, notes=notes, headline=headline,
    )


def _figure(config: OTDAMoonsConfig, records: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in records if r["samples"]]
    shown.sort(key=lambda r: r["angle"])
    impl = "couplings" if "couplings" in config.implementations else config.implementations[0]
    methods = [m for m in config.methods if impl in implementations_of(m, (impl,))]
    fig, axes = plt.subplots(len(shown), len(methods) + 1,
                             figsize=(2.6 * (len(methods) + 1), 2.6 * len(shown)),
                             squeeze=False)
    colors = np.array(["tab:blue", "tab:red"])
    for row, r in zip(axes, shown, strict=True):
        s = r["samples"]
        xs, ys, xt = s["xs"].numpy(), s["ys"].numpy(), s["xt"].numpy()
        for j, ax in enumerate(row):
            ax.scatter(xt[:, 0], xt[:, 1], s=4, c="0.7", label="target")
            if j == 0:
                ax.scatter(xs[:, 0], xs[:, 1], s=4, c=colors[ys], label="source")
                ax.set_title(f"{r['angle']}°: source / target", fontsize=8)
            else:
                key = f"{methods[j - 1]}/{impl}"
                moved = s[key].numpy()
                ax.scatter(moved[:, 0], moved[:, 1], s=4, c=colors[ys], label="transported")
                err = r["error"][key]
                ax.set_title(f"{METHOD_LABELS[methods[j - 1]]} ({impl})\nerror {err:.3f}",
                             fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
    fig.suptitle("Two moons, seed 0: target (grey), source / transported source (by class)",
                 fontsize=9)
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(
    name="otda-moons",
    description="OT domain adaptation on rotated two moons, ours beside POT's ot.da "
                "(Courty et al. 2017, Table 1).",
    config_type=OTDAMoonsConfig,
    run=run,
)
