"""The ``celegans`` experiment: simulator, the three methods, and a small run end to end."""

import dataclasses
import json

import pytest
import torch

from couplings.experiments.celegans import (
    FITS,
    CelegansConfig,
    _masked_scores,
    _profile_objective,
    fit_gumbel_sinkhorn,
    fit_map,
    identity_accuracy,
    simulate_worms,
)

torch.set_num_threads(1)

SMALL = CelegansConfig(n_neurons=12, n_steps=60, vi_steps=60, n_samples=2, map_iters=3,
                       faq_steps=5)


def _worms(seed=0, **kwargs):
    settings = dict(n_neurons=12, n_worms=2, n_steps=30, candidates=4, known_fraction=0.25)
    settings.update(kwargs)
    return simulate_worms(generator=torch.Generator().manual_seed(seed), **settings)


def test_simulator_shapes_and_stable_weights():
    data = _worms()
    assert data.latent.shape == data.observed.shape == (2, 30, 12)
    assert data.identity.shape == data.known.shape == (2, 12)
    assert data.candidates.shape == (2, 12, 12) and data.connectivity.shape == (12, 12)
    assert not bool(data.weights[~data.connectivity].any())
    assert float(torch.linalg.eigvals(data.weights).abs().max()) <= 1.0
    assert data.known.sum(-1).tolist() == [3, 3]
    for m in range(2):
        assert sorted(data.identity[m].tolist()) == list(range(12))


def test_observed_is_the_permuted_latent_dynamics():
    data = _worms(1)
    for m in range(2):
        perm = torch.nn.functional.one_hot(data.identity[m], 12).double()  # P[k, pi(k)] = 1
        assert torch.allclose(data.observed[m], (perm @ data.latent[m].T).T)
        latent = data.latent[m]
        start = torch.ones(1, 12, dtype=torch.float64)  # Ytilde_0 = 1
        previous = torch.cat([start, latent[:-1]])  # (T, N)
        noise = latent - previous @ data.weights.T  # (T, N): the innovations
        assert 0.05 < float(noise.var()) < 0.2  # noise variance 0.1
        assert abs(float(noise.mean())) < 0.1


def test_candidates_include_the_truth_and_known_rows_only_the_truth():
    data = _worms(2, candidates=5)
    rows = torch.arange(12)
    for m in range(2):
        assert bool(data.candidates[m, rows, data.identity[m]].all())
        counts = data.candidates[m].sum(-1)
        assert (counts[data.known[m]] == 1).all()
        assert (counts[~data.known[m]] == 5).all()


@pytest.mark.parametrize("method", sorted(FITS))
def test_every_method_respects_known_neurons_and_candidates(method):
    data = _worms(3, candidates=6, known_fraction=0.5)
    estimate = FITS[method](data, SMALL, torch.Generator().manual_seed(0))
    assert torch.equal(estimate[data.known], data.identity[data.known])
    for m in range(2):
        assert sorted(estimate[m].tolist()) == list(range(12))
        assert bool(data.candidates[m, torch.arange(12), estimate[m]].all())


@pytest.mark.parametrize("method", sorted(FITS))
def test_only_the_truth_allowed_gives_perfect_accuracy(method):
    data = _worms(4, candidates=1, known_fraction=0.0)
    estimate = FITS[method](data, SMALL, torch.Generator().manual_seed(0))
    assert identity_accuracy(estimate, data) == 1.0


def test_accuracy_counts_only_unknown_neurons():
    data = _worms(5, known_fraction=0.5)
    wrong = data.identity.clone()
    wrong[~data.known] = -1
    assert identity_accuracy(data.identity, data) == 1.0
    assert identity_accuracy(wrong, data) == 0.0


def test_gumbel_sinkhorn_beats_chance_clearly():
    config = dataclasses.replace(SMALL, n_neurons=20, vi_steps=150, n_samples=2)
    data = simulate_worms(n_neurons=20, n_worms=2, n_steps=80, candidates=6, known_fraction=0.2,
                          generator=torch.Generator().manual_seed(7))
    estimate = fit_gumbel_sinkhorn(data, config, torch.Generator().manual_seed(0))
    assert identity_accuracy(estimate, data) >= 0.6  # chance is 1/6


def test_map_from_the_barycenter_beats_chance_clearly():
    accuracies = []
    for seed in range(3):
        data = simulate_worms(n_neurons=20, n_worms=2, n_steps=100, candidates=5,
                              known_fraction=0.2, generator=torch.Generator().manual_seed(seed))
        estimate = fit_map(data, SMALL, torch.Generator().manual_seed(0), start="barycenter")
        accuracies.append(identity_accuracy(estimate, data))
    assert sum(accuracies) / 3 >= 0.45  # chance is 1/5; measured 0.68


def test_map_only_accepts_moves_that_lower_the_map_objective():
    from couplings.permutations import matching

    data = _worms(6, candidates=5)
    ridge = data.noise_var / data.weight_var
    estimate = fit_map(data, SMALL, torch.Generator().manual_seed(3))
    # the random start fit_map draws from the same generator
    scores = torch.rand(data.candidates.shape, generator=torch.Generator().manual_seed(3),
                        dtype=data.observed.dtype)
    start = matching(_masked_scores(scores, data.candidates)).matrix
    final = torch.nn.functional.one_hot(estimate, 12).double()
    start_loss, _ = _profile_objective(data.observed, start, data.connectivity, ridge)
    final_loss, _ = _profile_objective(data.observed, final, data.connectivity, ridge)
    assert final_loss <= start_loss
    truth = torch.nn.functional.one_hot(data.identity, 12).double()
    truth_loss, _ = _profile_objective(data.observed, truth, data.connectivity, ridge)
    assert truth_loss < start_loss  # the objective does prefer the truth to a random start


def test_map_rejects_an_unknown_start():
    with pytest.raises(ValueError, match="start must be"):
        fit_map(_worms(), SMALL, torch.Generator().manual_seed(0), start="zeros")


def test_small_run_reports_paper_beside_ours(tmp_path):
    from couplings.experiments import get
    from couplings.experiments.runner import run_experiment

    config = dataclasses.replace(SMALL, candidate_values=(2, 3), worm_counts=(1,),
                                 known_values=(0.4,), width_candidates=(2, 3), n_seeds=1,
                                 vi_steps=30)
    record = run_experiment(get("celegans"), config, seed=0, out=tmp_path, show_progress=False)
    metrics = json.loads(record.files.metrics.read_text())["metrics"]
    assert set(metrics["summary"]) == {s.key for s in config.settings()}
    assert isinstance(metrics["criterion_gs_beats_map_and_naive_everywhere"], bool)
    assert isinstance(metrics["criterion_gs_beats_paper_baselines_everywhere"], bool)
    for key, wins in metrics["gs_beats_baselines"].items():  # both MAPs, so the stricter one
        assert wins <= metrics["gs_beats_paper_baselines"][key]
    report = (tmp_path / "celegans" / "report.md").read_text()
    assert "(paper)" in report and "0.97" in report  # Table 2, 40% known, eta 0.1
    assert "MAP (random start)" in report and "MAP (barycenter start)" in report
    assert (tmp_path / "celegans" / "accuracy_per_column.png").stat().st_size > 10_000
