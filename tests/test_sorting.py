"""The ``sorting`` experiment (Gumbel-Sinkhorn Table 1): a small run end to end."""

import json

import pytest

from couplings.experiments import get
from couplings.experiments.runner import run_experiment
from couplings.experiments.sorting import PAPER_PROP_ANY_WRONG, SortingConfig


def test_small_sorting_run_learns_and_reports_paper_beside_ours(tmp_path):
    config = SortingConfig(n_values=(5,), n_seeds=1, min_steps=300, steps_per_item=1,
                           n_test=200, test_ranges=((0.0, 1.0), (1000.0, 1001.0)))
    record = run_experiment(get("sorting"), config, seed=0, out=tmp_path, show_progress=False)
    metrics = json.loads(record.files.metrics.read_text())["metrics"]
    u01 = metrics["summary"]["U(0,1)"]["5"]
    assert u01["prop_any_wrong"] <= 0.01 and u01["kendall_tau"] >= 0.99
    assert metrics["criterion_u01_prop_any_wrong_le_0.01"] is True
    report = (tmp_path / "sorting" / "report.md").read_text()
    assert "N=5 (paper)" in report and "U(1000,1001)" in report
    assert (tmp_path / "sorting" / "prop_any_wrong_vs_n.png").stat().st_size > 10_000


def test_quick_setting_and_paper_table_shape():
    quick, full = SortingConfig.quick(), SortingConfig()
    assert set(quick.n_values) <= set(full.n_values)
    assert full.n_values == (5, 10, 15, 80, 100, 120) and full.n_seeds == 3
    assert (0.0, 1.0) in full.test_ranges and len(full.test_ranges) == 7
    assert all(len(row) == 6 for row in PAPER_PROP_ANY_WRONG.values())


def test_failed_trainings_are_restarted_and_the_best_by_validation_is_kept(tmp_path):
    # restart_above < 0 forces every restart: the unit trains 1 + max_restarts networks
    config = SortingConfig(n_values=(5,), n_seeds=1, min_steps=60, steps_per_item=1,
                           n_test=50, test_ranges=((0.0, 1.0),), restart_above=-1.0,
                           max_restarts=2)
    record = run_experiment(get("sorting"), config, seed=0, out=tmp_path, show_progress=False)
    metrics = json.loads(record.files.metrics.read_text())["metrics"]
    (unit,) = metrics["units"]
    assert unit["restarts"] == 2
    assert 0.0 <= unit["valid_prop_any_wrong"] <= 1.0
    assert 0.0 <= unit["check_prop_any_wrong"] <= 1.0
    assert "restarts per N: 5: 2" in (tmp_path / "sorting" / "report.md").read_text()


def test_linear_init_keeps_the_scores_linear_through_training():
    import torch

    from couplings.experiments.sorting import _train, make_network

    config = SortingConfig(n_values=(6,), min_steps=40, steps_per_item=1, n_valid=20)
    assert config.init == "linear" and config.lr == 0.1  # the defaults
    net, _ = _train(6, config, torch.Generator().manual_seed(0))
    assert torch.count_nonzero(net.g1[0].bias) == 0 and not net.g1[0].bias.requires_grad
    x = torch.rand(2, 6, 1, dtype=torch.float64) * 5
    # g2 started at zero, so the slopes start equal, and 40 steps order them by position
    assert torch.count_nonzero(make_network(6, 32, "linear").g2.weight) == 0
    slopes = net.g2.weight @ torch.relu(net.g1[0].weight[:, 0])  # (N,): row i is x_i s + c
    assert bool((slopes.diff() > 0).all()), slopes
    net = net.double()
    torch.testing.assert_close(net(2 * x) - net(x), net(x) - net(0 * x))
    # torch's default init puts kinks in [0, 1]: not linear
    other = make_network(6, 32, "torch").double()
    assert not torch.allclose(other(2 * x) - other(x), other(x) - other(0 * x))
    with pytest.raises(ValueError, match="init must be"):
        SortingConfig(init="glorot")
