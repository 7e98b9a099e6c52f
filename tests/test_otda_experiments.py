"""The OT domain-adaptation experiments: their ingredients, tiny end-to-end runs and resuming."""

import dataclasses
import json

import numpy as np
import ot
import pytest

from couplings.checkpoint import check_plain
from couplings.experiments import _otda, get, otda_moons
from couplings.experiments.otda_digits import OTDADigitsConfig, digits_problem, shift_digits
from couplings.experiments.otda_moons import OTDAMoonsConfig, moons_problem, svm_error
from couplings.experiments.runner import run_experiment


def test_configs_exist_and_quick_is_smaller():
    for name, config_type in (("otda-moons", OTDAMoonsConfig), ("otda-digits", OTDADigitsConfig)):
        experiment = get(name)
        assert experiment.config_type is config_type
        full, quick = experiment.config(), experiment.config(quick=True)
        assert quick.n_seeds < full.n_seeds
    moons = OTDAMoonsConfig()
    assert moons.angles == (10, 20, 30, 40, 50, 70, 90) and moons.n_seeds == 10
    assert set(OTDAMoonsConfig.quick().angles) < set(moons.angles)
    # the hyper-parameters of the protocol (ot_learning.md 4.4)
    assert moons.params("entropic") == {"eps": 0.1}
    assert moons.params("group-lasso") == {"eps": 0.1, "eta": 1.0, "max_iter": 20}
    with pytest.raises(ValueError, match="unknown methods"):
        OTDAMoonsConfig(methods=("none", "magic"))
    with pytest.raises(ValueError, match="unknown implementations"):
        OTDADigitsConfig(implementations=("sklearn",))


def test_moons_problem_rotates_target_and_test_about_the_source_mean():
    p0 = moons_problem(3, 0.0, n_per_class=40, n_test=100)
    p90 = moons_problem(3, 90.0, n_per_class=40, n_test=100)
    assert np.array_equal(p0["xs"], p90["xs"])  # the draw does not depend on the angle
    centre = p0["xs"].mean(0)
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    for key in ("xt", "xtest"):
        assert np.allclose((p0[key] - centre) @ rot.T + centre, p90[key])
    assert np.bincount(p0["ys"]).tolist() == [40, 40] and len(p0["ytest"]) == 100
    assert not np.allclose(p0["xs"], p0["xt"])  # fresh draws, not copies


def test_adapt_matches_pot_where_the_estimators_coincide():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(30, 3))
    ys = np.repeat([0, 1, 2], 10)
    xt = rng.normal(size=(25, 3)) @ np.diag([1.0, 2.0, 0.5]) + 1.0
    ours, info = _otda.adapt("exact", "couplings", {}, xs, ys, xt)
    theirs, _ = _otda.adapt("exact", "POT", {}, xs, ys, xt)
    assert info["fit_time_s"] >= 0 and np.allclose(ours, theirs, atol=1e-8)
    ours, _ = _otda.adapt("entropic", "couplings", {"eps": 1.0}, xs, ys, xt)
    theirs, _ = _otda.adapt("entropic", "POT", {"eps": 1.0}, xs, ys, xt)
    assert np.allclose(ours, theirs, atol=1e-5)
    none, _ = _otda.adapt("none", "", {}, xs, ys, xt)
    assert np.array_equal(none, xs)


def test_pot_learned_map_helper_is_pots_out_of_sample_map():
    rng = np.random.default_rng(1)
    xs, xt = rng.normal(size=(20, 2)), rng.normal(size=(20, 2)) + 2.0
    new = rng.normal(size=(7, 2))
    for kernel, bias in (("linear", True), ("gaussian", False)):
        est = ot.da.MappingTransport(kernel=kernel, mu=1.0, eta=0.1, bias=bias, max_iter=3)
        est.fit(Xs=xs, Xt=xt)
        # on points other than the fit set, POT's transform applies the learned map
        assert np.allclose(_otda._pot_map(est, new), est.transform(Xs=new))


def test_group_lasso_ot_beats_no_adaptation_on_a_rotation():
    p = moons_problem(0, 30.0, n_per_class=50, n_test=400)
    errors = {}
    for method, impl in (("none", ""), ("group-lasso", "couplings"), ("group-lasso", "POT")):
        moved, _ = _otda.adapt(method, impl, {"eps": 0.1, "eta": 1.0, "max_iter": 20},
                               p["xs"], p["ys"], p["xt"])
        errors[method, impl], _ = svm_error(moved, p["ys"], p["xtest"], p["ytest"],
                                            c_grid=(10.0,), gamma_grid=(1.0,))
    assert errors["group-lasso", "couplings"] < errors["none", ""] - 0.05, errors
    assert abs(errors["group-lasso", "couplings"] - errors["group-lasso", "POT"]) <= 0.05


def _tiny_moons():
    return dataclasses.replace(
        OTDAMoonsConfig.quick(), angles=(20, 40), n_seeds=1, n_per_class=30, n_test=200,
        methods=("none", "exact", "group-lasso"), svm_c=(10.0,), svm_gamma=(1.0,),
        cv_folds=2, gl_max_iter=5, figure_angles=(40,))


@pytest.fixture(scope="module")
def tiny_moons(tmp_path_factory):
    out = tmp_path_factory.mktemp("moons")
    record = run_experiment(get("otda-moons"), _tiny_moons(), seed=0, out=out,
                            show_progress=False)
    return record, json.loads((out / "otda-moons" / "metrics.json").read_text())


def test_moons_tiny_run_writes_the_tables_figure_and_metrics(tiny_moons):
    record, saved = tiny_moons
    tables = saved["tables"]
    main = tables[0]
    assert main["columns"] == ["method", "implementation", "20°", "40°"]
    labels = [(r[0], r[1]) for r in main["rows"]]
    assert labels[:5] == [("no adaptation", "—"), ("exact OT", "couplings"), ("exact OT", "POT"),
                          ("group-lasso OT", "couplings"), ("group-lasso OT", "POT")]
    assert main["rows"][3][3]["reference"] == otda_moons.PAPER["group-lasso"][40]
    assert " ± " in main["rows"][3][3]["ours"]
    assert [t["title"] for t in tables[1:3]] == ["Ours minus POT: difference of the mean errors",
                                                 "Targets of the issue"]
    metrics = saved["metrics"]
    assert set(metrics["summary"]) == {"none", "exact/couplings", "exact/POT",
                                       "group-lasso/couplings", "group-lasso/POT"}
    for key, s in metrics["summary"].items():
        for cell in s["per_angle"].values():
            assert 0 <= cell["mean"] <= 1 and len(cell["per_seed"]) == 1, key
    # exact OT is one linear program: both implementations give the same error
    assert metrics["gaps_vs_pot"]["exact"]["max_abs"] <= 0.01
    assert {t["implementation"] for t in metrics["targets"]} == {"couplings", "POT", "band"}
    band = next(t for t in metrics["targets"] if t["implementation"] == "band")
    none40 = metrics["summary"]["none"]["per_angle"]["40"]["mean"]
    gl40 = metrics["summary"]["group-lasso/couplings"]["per_angle"]["40"]["mean"]
    assert band["measured"] == pytest.approx(none40 - gl40)
    assert (record.out_dir / "transported_samples.png").read_bytes()[:4] == b"\x89PNG"
    check_plain(record.result.metrics["units"])


def test_moons_killed_run_resumes_to_the_same_result(tiny_moons, tmp_path, monkeypatch):
    _, saved = tiny_moons
    real_unit, calls = otda_moons.run_unit, []

    def dies_at_the_second_unit(*args):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(args[2:])
        return real_unit(*args)

    monkeypatch.setattr(otda_moons, "run_unit", dies_at_the_second_unit)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(get("otda-moons"), _tiny_moons(), seed=0, out=tmp_path,
                       show_progress=False)
    monkeypatch.setattr(otda_moons, "run_unit", real_unit)
    resumed = run_experiment(get("otda-moons"), _tiny_moons(), seed=0, out=tmp_path,
                             show_progress=False)
    assert resumed.resumed_units == 1
    units = resumed.result.metrics["units"]
    assert [(u["seed_index"], u["angle"]) for u in units] == [(0, 20), (0, 40)]
    for a, b in zip(saved["metrics"]["units"], units, strict=True):
        assert a["error"] == b["error"] and a["svm"] == b["svm"]


def test_shift_digits_rotates_blurs_and_changes_contrast():
    img = np.zeros((1, 8, 8))
    img[0, 2:6, 3:5] = 1.0
    assert np.allclose(shift_digits(img, angle=0.0, blur=0.0, gamma=1.0), img)
    assert np.allclose(shift_digits(img * 0.25, angle=0.0, blur=0.0, gamma=0.5), img * 0.5)
    blurred = shift_digits(img, angle=0.0, blur=1.0, gamma=1.0)
    assert np.isclose(blurred.sum(), img.sum(), rtol=0.05) and blurred.max() < 1.0


def test_digits_tiny_run_selects_on_validation_and_compares_with_pot(tmp_path):
    config = OTDADigitsConfig(
        n_seeds=1, per_class=5, n_target=80, n_val=30,
        methods=("none", "exact", "entropic", "mapping-linear"),
        entropic_eps=(0.1, 1.0), map_mu=(1.0,), map_eta=(0.1,), map_max_iter=2)
    p = digits_problem(0, config)
    assert p["xs"].shape == (50, 64) and p["xt"].shape == (80, 64)
    assert np.bincount(p["ys"]).tolist() == [5] * 10
    sq = ((p["xs"][:, None] - p["xt"][None]) ** 2).sum(-1)
    assert np.isclose(np.median(sq), 1.0)

    record = run_experiment(get("otda-digits"), config, seed=0, out=tmp_path,
                            show_progress=False)
    saved = json.loads((tmp_path / "otda-digits" / "metrics.json").read_text())
    table = saved["tables"][0]
    assert table["columns"] == ["method", "implementation", "accuracy",
                                "chosen hyper-parameters", "fit time (s)"]
    assert [r[:2] for r in table["rows"]] == [
        ["no adaptation", "—"], ["exact OT", "couplings"], ["exact OT", "POT"],
        ["entropic OT", "couplings"], ["entropic OT", "POT"], ["mapping (linear)", "couplings"],
        ["mapping (linear)", "POT"]]
    summary = saved["metrics"]["summary"]
    units = saved["metrics"]["units"]
    entropic = next(u for u in units if u["method"] == "entropic")["runs"]["couplings"]
    best = max(entropic, key=lambda r: r["val"])  # selection by validation accuracy
    assert summary["entropic/couplings"]["test_per_seed"] == [best["test"]]
    assert set(saved["metrics"]["gaps_vs_pot"]) == {"exact", "entropic", "mapping-linear"}
    assert saved["metrics"]["gaps_vs_pot"]["exact"]["max_grid"] == 0
    assert (record.out_dir / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
