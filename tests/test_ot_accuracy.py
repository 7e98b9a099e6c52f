"""The ``ot-accuracy`` experiment: Sinkhorn against exact OT over eps, float32 and float64."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from couplings.checkpoint import check_plain
from couplings.experiments import get
from couplings.experiments.ot_accuracy import OTAccuracyConfig, make_problem, solve_unit
from couplings.experiments.runner import run_experiment


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One run of the quick setting, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("results")
    record = run_experiment(get("ot-accuracy"), seed=0, out=out, quick=True, show_progress=False)
    return record, json.loads(record.files.metrics.read_text())


def _solves(metrics, dtype=None):
    return [u for u in metrics["solves_by_unit"] if dtype is None or u["dtype"] == dtype]


def test_quick_setting_is_what_the_issue_asks_for():
    config = OTAccuracyConfig.quick()
    assert config.n != config.m
    assert set(config.dtypes) == {"float32", "float64"}
    assert max(config.eps_rel) == 1.0 and min(config.eps_rel) == config.criterion_eps_rel == 1e-3
    assert config.n_problems >= 2
    full = OTAccuracyConfig()
    assert full.n > config.n and min(full.eps_rel) <= 1e-4


def test_problems_are_seeded_non_uniform_and_unbalanced_in_size():
    p, q = make_problem(11, 30, 20, 2), make_problem(11, 30, 20, 2)
    assert torch.equal(p.cost, q.cost) and torch.equal(p.a, q.a) and p.emd == q.emd
    assert not torch.equal(make_problem(12, 30, 20, 2).cost, p.cost)
    assert p.cost.shape == (30, 20) and p.cost.dtype == torch.float64
    assert math.isclose(float(p.a.sum()), 1.0, rel_tol=1e-12)
    assert math.isclose(float(p.b.sum()), 1.0, rel_tol=1e-12)
    assert float(p.a.max() / p.a.min()) > 3 and float(p.b.max() / p.b.min()) > 3
    entropy = min(float(-(w * w.log()).sum()) for w in (p.a, p.b))
    assert math.isclose(p.min_entropy, entropy, rel_tol=1e-12)
    assert p.min_entropy < math.log(20)  # non-uniform weights: below the uniform entropy


def test_exact_reference_agrees_with_a_linear_program():
    p = make_problem(5, 7, 5, 2)
    n, m = p.cost.shape
    rows = np.kron(np.eye(n), np.ones((1, m)))  # sum_j P_ij = a_i
    cols = np.kron(np.ones((1, n)), np.eye(m))  # sum_i P_ij = b_j
    lp = linprog(p.cost.numpy().ravel(), A_eq=np.vstack([rows, cols]),
                 b_eq=np.concatenate([p.a.numpy(), p.b.numpy()]), bounds=(0, None),
                 method="highs")
    assert lp.status == 0
    assert math.isclose(p.emd, lp.fun, rel_tol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_solve_respects_the_theory(dtype):
    config = OTAccuracyConfig(n=20, m=15, n_problems=1, eps_rel=(0.3, 0.01))
    for k in range(2):
        r = solve_unit(config, 0, 0, dtype, k)
        check_plain(r)  # it can go into a checkpoint
        assert r["finite"] and r["converged"] and r["convergence_warnings"] == 0
        slack = 1e-5 * r["emd"]
        assert -slack <= r["value"] - r["emd"] <= r["bound"] + slack
        assert r["linear_value"] >= r["emd"] - slack
        assert r["linear_value"] <= r["value"] + slack  # the KL term is >= 0
        assert r["bound_holds"] and r["linear_ge_emd"]


def test_non_convergence_is_recorded_not_raised():
    config = OTAccuracyConfig(n=20, m=15, n_problems=1, eps_rel=(1e-3,), max_iter=50)
    r = solve_unit(config, 0, 0, "float64", 0)  # the ConvergenceWarning must not escape
    assert not r["converged"] and r["convergence_warnings"] == 1
    assert r["n_iter"] >= config.max_iter  # (the eps-scaling stages alone may exceed it)
    assert r["marginal_error"] > config.tol_float64
    assert r["finite"]


def test_config_validation():
    with pytest.raises(ValueError, match="dtypes"):
        OTAccuracyConfig(dtypes=("float16",))
    with pytest.raises(ValueError, match="eps_rel"):
        OTAccuracyConfig(eps_rel=(0.1, -1.0))
    with pytest.raises(ValueError, match="n must be a positive int"):
        OTAccuracyConfig(n=0)


def test_quick_run_is_accurate(quick_run):
    _, record = quick_run
    metrics = record["metrics"]
    config = OTAccuracyConfig.quick()
    solves = _solves(metrics)
    assert len(solves) == config.n_problems * 2 * len(config.eps_rel)
    for u in solves:
        assert u["finite"], u
        for key in ("value", "linear_value", "emd", "marginal_error"):
            assert isinstance(u[key], float) and math.isfinite(u[key]), (key, u)
        # value - emd within [0, eps min(H(a), H(b))], up to round-off and marginal error
        slack = 2 * u["marginal_error"] * 40 + 1e-5 * u["emd"]
        assert -slack <= u["value"] - u["emd"] <= u["bound"] + 1e-5 * u["emd"], u
        assert u["linear_value"] >= u["emd"] - slack, u
    assert metrics["all_finite"] and metrics["bound_holds"] and metrics["linear_ge_emd"]

    # the 1% criterion at eps = 1e-3 * mean cost, checked on the raw solves
    for dtype in ("float64", "float32"):
        at_criterion = [u for u in _solves(metrics, dtype) if u["eps_rel"] == 1e-3]
        assert len(at_criterion) == config.n_problems
        for u in at_criterion:
            assert abs(u["linear_value"] - u["emd"]) <= 0.01 * u["emd"], u
    assert metrics["criterion"]["per_dtype"] == {"float32": True, "float64": True}
    assert metrics["criterion"]["holds"] is True

    # errors shrink with eps: the bias of value follows the bound, linear_value is far better
    for dtype in ("float32", "float64"):
        value_err = metrics[dtype]["value_rel_error_mean"]
        assert all(x > y for x, y in zip(value_err, value_err[1:], strict=False))
        linear_err = metrics[dtype]["linear_rel_error_mean"]
        assert linear_err[-1] < 0.1 * value_err[-1]
        assert all(x <= b for x, b in zip(value_err, metrics["bound_rel_mean"], strict=True))


def test_quick_run_report(quick_run):
    run, record = quick_run
    md = run.files.markdown.read_text()
    assert "| 0.001 |" in md  # the criterion's row
    assert "Criterion (linear_value within 1% of the exact value at eps = 0.001 * mean cost, " \
           "float32 and float64): holds." in md
    for figure in ("error_vs_eps.png", "iterations_vs_eps.png"):
        assert (run.out_dir / figure).read_bytes()[:4] == b"\x89PNG"
        assert f"]({figure})" in md
    table = record["tables"][0]
    assert len(table["rows"]) == len(OTAccuracyConfig.quick().eps_rel)
    assert "theory bound (rel.)" in table["columns"]
    assert record["headline"]["bound holds"] is True


@pytest.mark.slow
def test_full_setting_has_no_nan_or_inf(tmp_path):
    run = run_experiment(get("ot-accuracy"), seed=0, out=tmp_path, show_progress=False)
    metrics = run.result.metrics
    assert metrics["all_finite"] and metrics["bound_holds"] and metrics["linear_ge_emd"]
    assert metrics["criterion"]["holds"]
