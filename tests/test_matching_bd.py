"""The ``matching-bd`` experiment (Linderman et al. 2018, Table 1): model, metric, pipeline."""

import dataclasses
import itertools
import json
import math

import pytest
import torch

from couplings.checkpoint import check_plain
from couplings.experiments import get
from couplings.experiments.matching_bd import (
    EXACT_SAMPLED,
    PAPER_TABLE,
    MatchingBDConfig,
    bhattacharyya_distance,
    calibration_unit,
    choose_settings,
    empirical_pmf,
    exact_posterior,
    make_problem,
    relaxed_log_likelihood,
    run_unit,
    score_matrix,
)
from couplings.experiments.runner import run_experiment
from couplings.permutations.birkhoff import round_to_permutation
from couplings.permutations.mallows import all_permutations, permutation_rank
from couplings.permutations.utils import to_matrix
from couplings.solvers.matching import matching

F64 = torch.float64


def _small_config():
    """The quick setting, cut down further so that the whole pipeline runs in seconds."""
    return dataclasses.replace(
        MatchingBDConfig.quick(), sigmas=(0.1, 0.5), n_reps=4, reps_per_unit=2,
        calibration_reps=2, tau_grid=(1.0,), scale_max_grid=(0.1, 0.3), n_steps=80,
        n_eval_samples=200, mallows_thetas=(0.5, 5.0),
    )


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    record = run_experiment(get("matching-bd"), _small_config(), seed=0, out=out,
                            show_progress=False)
    return record, json.loads(record.files.metrics.read_text())


def test_exact_posterior_matches_brute_force_enumeration():
    problem = make_problem(3)
    sigma = 0.5
    obs = problem.observations(sigma)
    post = exact_posterior(problem.centres, obs, sigma)
    assert post.shape == (720,) and post.dtype == F64
    assert abs(float(post.sum()) - 1) < 1e-12 and bool((post >= 0).all())
    # reference: Gaussian log-likelihood of y given P^T x for each of itertools' permutations
    logits = []
    for perm in itertools.permutations(range(6)):
        pred = torch.empty_like(problem.centres)
        pred[list(perm)] = problem.centres  # centre i observed at position perm[i]
        logits.append(float(-((obs - pred) ** 2).sum()) / (2 * sigma**2))
    torch.testing.assert_close(post, torch.softmax(torch.tensor(logits, dtype=F64), 0))


def test_relaxed_likelihood_is_exact_at_permutation_matrices():
    problem = make_problem(5)
    sigma = 0.25
    obs = problem.observations(sigma)
    mats = to_matrix(all_permutations(6), dtype=F64)  # (720, 6, 6)
    ll = relaxed_log_likelihood(mats, problem.centres, obs, sigma)
    linear = (mats * score_matrix(problem.centres, obs, sigma)).sum((-2, -1))
    torch.testing.assert_close(ll - linear, (ll - linear)[:1].expand(720))  # a constant shift
    torch.testing.assert_close(torch.softmax(ll, 0), exact_posterior(problem.centres, obs, sigma))


def test_small_noise_posterior_concentrates_on_the_truth_and_its_map_is_hungarian():
    for seed in range(5):
        problem = make_problem(seed)
        obs = problem.observations(0.01)
        post = exact_posterior(problem.centres, obs, 0.01)
        truth = int(permutation_rank(problem.perm))
        assert float(post[truth]) > 0.99
        map_perm = matching(score_matrix(problem.centres, obs, 0.01)).indices
        assert int(permutation_rank(map_perm)) == int(post.argmax())


def test_bhattacharyya_distance_properties():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(720, generator=gen, dtype=F64), 0)
    q = torch.softmax(torch.randn(720, generator=gen, dtype=F64), 0)
    assert float(bhattacharyya_distance(p, p)) < 1e-6  # the exact posterior as q: BD 0
    d = float(bhattacharyya_distance(p, q))
    assert 0 < d < 1 and d == pytest.approx(float(bhattacharyya_distance(q, p)), abs=1e-15)
    disjoint = torch.zeros(720, dtype=F64)
    disjoint[p.argmin()] = 1.0
    assert float(bhattacharyya_distance(torch.nn.functional.one_hot(p.argmax(), 720).double(),
                                        disjoint)) == 1.0


def test_exact_posterior_through_the_histogram_pipeline_gives_bd_near_zero():
    """Samples of the exact posterior, relaxed by small noise, rounded back by the Hungarian
    algorithm and histogrammed, are scored as a variational method is: BD is 0 up to the
    Monte-Carlo error of the histogram, and exactly 0 for the exact law itself."""
    problem = make_problem(11)
    sigma = 0.5
    post = exact_posterior(problem.centres, problem.observations(sigma), sigma)
    gen = torch.Generator().manual_seed(1)
    draws = torch.multinomial(post, 20_000, replacement=True, generator=gen)
    mats = to_matrix(all_permutations(6)[draws], dtype=F64)  # (S, 6, 6)
    relaxed = mats + 0.05 * torch.randn(mats.shape, generator=gen, dtype=F64)
    pmf = empirical_pmf(round_to_permutation(relaxed))
    assert torch.equal(pmf, torch.bincount(draws, minlength=720).double() / 20_000)
    assert float(bhattacharyya_distance(post, pmf)) < 0.05
    assert float(bhattacharyya_distance(post, post)) < 1e-6


def test_unit_record_is_plain_finite_and_seeded():
    config = dataclasses.replace(_small_config(), n_steps=10, n_eval_samples=50)
    settings = {"stick-breaking": (1.0, 0.3, None), "rounding": (1.0, 0.1, None)}
    r = run_unit(config, 0, 1, 0, settings=settings)
    check_plain(r)  # it can go into a checkpoint
    assert r["reps"] == [0, 1] and r["sigma"] == 0.5
    for method, values in r["bd"].items():
        assert len(values) == 2 and all(0 <= v <= 1 for v in values), method
    again = run_unit(config, 0, 1, 0, settings=settings)
    assert again["bd"] == r["bd"]  # determined by (seed, sigma, chunk) alone


def test_small_run_produces_finite_bds_in_the_unit_interval(small_run):
    run, record = small_run
    metrics = record["metrics"]
    config = _small_config()
    assert metrics["all_finite"] is True and metrics["all_in_unit_interval"] is True
    methods = {"stick-breaking", "rounding", "mallows-0.5", "mallows-5", EXACT_SAMPLED}
    assert set(metrics["bd"]) == methods
    for method in methods:
        cells = metrics["bd"][method]
        assert [c["sigma"] for c in cells] == list(config.sigmas)
        for c in cells:
            assert c["n"] == config.n_reps and 0 <= c["mean"] <= 1 and math.isfinite(c["sd"])
    for unit in metrics["units"]:
        for values in unit["bd"].values():
            assert all(0 <= v <= 1 and math.isfinite(v) for v in values)
    # the fitted posteriors are far better than a near-uniform Mallows law at sigma = 0.1
    for method in ("stick-breaking", "rounding"):
        assert metrics["bd"][method][0]["mean"] < 0.5
    # the grid search picked a triple of the grid (tau, scale, prior) for every sigma and method
    config = _small_config()
    assert len(config.grid()) == 1 * 2 * 2
    assert len(metrics["settings"]) == 2 and len(metrics["calibration"]) == 2 * 4
    for chosen in metrics["settings"]:
        for method in ("stick-breaking", "rounding"):
            assert chosen[method]["tau"] == 1.0 and chosen[method]["scale_max"] in (0.1, 0.3)
            assert chosen[method]["prior_scale"] in config.prior_scale_grid


def test_small_run_report_has_the_paper_column_and_figure(small_run):
    run, record = small_run
    table = record["tables"][0]
    assert table["columns"][:2] == ["method", "σ=0.1"]
    rows = {row[0]: row for row in table["rows"]}
    # Compared cells: ours as "mean ± s.e.", the paper's number beside it
    assert rows["Stick-breaking"][1]["reference"] == PAPER_TABLE["stick-breaking"][0]
    assert rows["Rounding"][2]["reference"] == PAPER_TABLE["rounding"][2]
    assert rows["Mallows θ=5"][1]["reference"] == PAPER_TABLE["mallows-5"][0]
    assert rows["exact posterior, sampled (floor)"][1]["reference"] is None
    assert "±" in rows["Rounding"][1]["ours"]
    md = run.files.markdown.read_text()
    assert "σ=0.1 (paper)" in md and "(bd_vs_sigma.png)" in md
    assert (run.out_dir / "bd_vs_sigma.png").read_bytes()[:4] == b"\x89PNG"


def test_settings_match_the_paper_protocol():
    full, quick = MatchingBDConfig(), MatchingBDConfig.quick()
    assert full.n == 6 and full.dim == 2 and full.sigmas == (0.1, 0.25, 0.5, 0.75)
    assert full.n_reps == 200 and full.lr == 0.1 and full.sinkhorn_iters == 10
    assert full.mallows_thetas == (0.1, 0.5, 2.0, 5.0, 10.0)
    assert full.n_eval_samples == 1000 and full.calibrate
    assert all(0.01 <= v <= 1 for v in (*full.tau_grid, *full.scale_max_grid))
    assert quick.sigmas == full.sigmas and 10 <= quick.n_reps < full.n_reps


def test_config_validation():
    with pytest.raises(ValueError, match="n must be in"):
        MatchingBDConfig(n=9)
    with pytest.raises(ValueError, match="temperatures"):
        MatchingBDConfig(tau_grid=(0.0,))
    with pytest.raises(ValueError, match="sigmas"):
        MatchingBDConfig(sigmas=(0.1, -1.0))
    with pytest.raises(ValueError, match="noise-scale"):
        MatchingBDConfig(scale_max_grid=(0.005,))
    with pytest.raises(ValueError, match="n_reps"):
        MatchingBDConfig(n_reps=0)
    for bad in ((), (0.0,), (None, -1.0), (math.inf,)):
        with pytest.raises(ValueError, match="prior_scale_grid"):
            MatchingBDConfig(prior_scale_grid=bad)


def test_choose_settings_takes_the_best_triple():
    config = dataclasses.replace(MatchingBDConfig.quick(), sigmas=(0.1, 0.5))
    calibration = []
    for k in range(2):
        for g, (tau, scale, prior) in enumerate(config.grid()):
            # a made-up BD, lowest at grid index 5 - k for stick-breaking and 2 + k for rounding
            calibration.append({"sigma_index": k, "tau": tau, "scale_max": scale,
                                "prior_scale": prior,
                                "bd": {"stick-breaking": abs(g - (5 - k)) / 10,
                                       "rounding": abs(g - (2 + k)) / 10}})
    chosen = choose_settings(config, calibration)
    for k in range(2):
        assert chosen[k]["stick-breaking"] == config.grid()[5 - k]
        assert chosen[k]["rounding"] == config.grid()[2 + k]


def test_grid_points_share_their_noise():
    # common random numbers: two grid points with the same setting get the same fits, so the
    # grid search compares settings and not noise draws; another sigma gets other noise
    config = dataclasses.replace(
        _small_config(), tau_grid=(1.0, 1.0), scale_max_grid=(0.3,), prior_scale_grid=(None,),
        calibration_reps=3, n_steps=20,
    )
    first, second = (calibration_unit(config, 0, 1, g) for g in (0, 1))
    assert first["bd"] == second["bd"]
    other_sigma = dataclasses.replace(config, sigmas=(0.5, 0.5))
    assert calibration_unit(other_sigma, 0, 0, 0)["bd"] != first["bd"]
