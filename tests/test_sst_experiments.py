"""The stochastic-softmax-trick experiments: their exact ingredients and small end-to-end runs."""

import dataclasses
import itertools
import json

import torch

from couplings.experiments import get
from couplings.experiments.runner import run_experiment
from couplings.experiments.sst_subset import SSTSubsetConfig, make_sequences
from couplings.experiments.sst_variance import (
    SSTVarianceConfig,
    _true_gradient,
    exact_topk_log_law,
)
from couplings.structures import Categorical, KSubset, StochasticSoftmaxTrick

from .test_tricks import gumbel_topk_law


def test_exact_topk_law_is_the_plackett_luce_sum_and_a_distribution():
    theta = torch.tensor([[0.3, -1.0, 2.0, 0.0, 0.7], [1.0, 1.0, 1.0, 1.0, 1.0]],
                         dtype=torch.float64)
    log_law, rows = exact_topk_log_law(theta, 2)
    assert rows.shape == (10, 5) and bool((rows.sum(-1) == 2).all())
    assert torch.allclose(log_law.exp().sum(-1), torch.ones(2, dtype=torch.float64))
    reference = gumbel_topk_law(theta[0], 2)
    for i, subset in enumerate(itertools.combinations(range(5), 2)):
        assert abs(float(log_law[0, i].exp()) - reference[subset]) < 1e-12
    assert torch.allclose(log_law[1].exp(), torch.full((10,), 0.1, dtype=torch.float64))
    # k = 1 is the softmax
    log1, _ = exact_topk_log_law(theta[:1], 1)
    assert torch.allclose(log1, torch.log_softmax(theta[:1], -1))


def test_true_gradient_matches_a_finite_difference_of_the_expectation():
    theta = torch.randn(6, dtype=torch.float64, generator=torch.manual_seed(0))
    target = torch.rand(6, dtype=torch.float64, generator=torch.manual_seed(1))

    def expectation(t, structure):
        if isinstance(structure, Categorical):
            law, rows = torch.softmax(t, -1), torch.eye(6, dtype=torch.float64)
        else:
            log_law, rows = exact_topk_log_law(t, structure.k)
            law = log_law.exp()
        return float((law * ((rows - target) ** 2).sum(-1)).sum())

    for structure in (Categorical(6), KSubset(6, 2)):
        grad = _true_gradient(structure, theta, target)
        h = 1e-6
        fd = torch.tensor([(expectation(theta + h * e, structure)
                            - expectation(theta - h * e, structure)) / (2 * h)
                           for e in torch.eye(6, dtype=torch.float64)], dtype=torch.float64)
        assert torch.allclose(grad, fd, atol=1e-8)


def test_sst_variance_small_run(tmp_path):
    config = dataclasses.replace(SSTVarianceConfig.quick(), d=5, k=2, sample_counts=(2,),
                                 reps=300, n_problems=1, nvil_warmup=20)
    record = run_experiment(get("sst-variance"), config, seed=0, out=tmp_path,
                            show_progress=False)
    metrics = json.loads((tmp_path / "sst-variance" / "metrics.json").read_text())["metrics"]
    summary = metrics["summary"]
    assert set(summary) == {"one-hot", "2-subset"}
    for per_n in summary.values():
        cell = per_n["2"]
        assert {"reinforce", "reinforce-loo", "nvil", "perturbed"} <= set(cell)
        for name, m in cell.items():
            assert m["variance"] >= 0 and m["bias2"] >= 0, name
        # the score-function estimators are unbiased: their squared bias is sampling error,
        # of the order of variance / reps
        for name in ("reinforce", "reinforce-loo"):
            assert cell[name]["bias2"] < 20 * cell[name]["variance"] / config.reps, name
    assert set(metrics["criterion"]) == {"one-hot n=2 tau=0.5", "2-subset n=2 tau=0.5"}
    assert record.result.headline


def test_make_sequences_places_one_contiguous_block():
    x, y, relevant = make_sequences(200, 20, 4, 0.3, torch.manual_seed(2))
    assert x.shape == (200, 20, 2) and y.shape == (200,)
    assert torch.equal(relevant.sum(-1), torch.full((200,), 4.0))
    # contiguous: the block's first and last positions are k - 1 apart
    idx = relevant.nonzero()[:, 1].reshape(200, 4)
    assert bool((idx[:, -1] - idx[:, 0] == 3).all())
    assert torch.allclose(y, (x[..., 0] * relevant).sum(-1) / 2)
    # the markers carry the signal, with noise
    assert float(x[..., 1][relevant.bool()].mean()) > 0.9
    assert abs(float(x[..., 1][~relevant.bool()].mean())) < 0.1


def test_sst_subset_small_run(tmp_path):
    config = dataclasses.replace(SSTSubsetConfig.quick(), d=12, n_train=400, n_test=200,
                                 steps=20, relaxations=("E.F. ent. top k", "Corr. top k"))
    run_experiment(get("sst-subset"), config, seed=0, out=tmp_path, show_progress=False)
    metrics = json.loads((tmp_path / "sst-subset" / "metrics.json").read_text())["metrics"]
    for r in config.relaxations:
        m = metrics["summary"]["5"][r]
        assert 0 <= m["precision_mean"] <= 1 and m["mse_mean"] > 0
    assert set(metrics["criterion"]) == {"5"}


def test_hard_test_selection_is_a_k_subset():
    sst = StochasticSoftmaxTrick(KSubset(12, 5), torch.randn(3, 12))
    assert torch.equal(sst.mode.sum(-1), torch.full((3,), 5.0))
