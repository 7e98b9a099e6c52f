"""The ``monge-map`` experiment: its problems and a small end-to-end run."""

import dataclasses
import json
import math

import torch

from couplings.experiments import get
from couplings.experiments.monge_map import MongeMapConfig, gaussian_problem, ring_sampler
from couplings.experiments.runner import run_experiment


def test_gaussian_problems_are_valid_and_non_trivial():
    for d in (2, 5):
        m1, s1, m2, s2 = gaussian_problem(d)
        assert m1.shape == m2.shape == (d,) and s1.shape == s2.shape == (d, d)
        for s in (s1, s2):
            assert torch.allclose(s, s.T, atol=1e-6)
            assert float(torch.linalg.eigvalsh(s).min()) > 0.1
        # not commuting: the map is not a rescaling along shared axes
        assert float((s1 @ s2 - s2 @ s1).abs().max()) > 0.1
    assert torch.equal(gaussian_problem(5)[1], gaussian_problem(5)[1])  # deterministic


def test_ring_sampler_has_eight_modes_of_the_stated_scale():
    points = ring_sampler(radius=2.0, sigma=0.2)(4000, torch.Generator().manual_seed(0))
    angles = torch.arange(8) * (2 * math.pi / 8)
    centres = 2.0 * torch.stack([angles.cos(), angles.sin()], -1)
    dist = torch.cdist(points, centres)
    nearest = dist.argmin(-1)
    counts = torch.bincount(nearest, minlength=8)
    assert bool((counts > 400).all())  # 500 expected per mode
    # distance to the nearest centre: Rayleigh with sigma 0.2, mean 0.2 * sqrt(pi / 2) = 0.25
    assert abs(float(dist.min(-1).values.mean()) - 0.2 * math.sqrt(math.pi / 2)) < 0.01


def test_monge_map_small_run(tmp_path):
    config = dataclasses.replace(
        MongeMapConfig.quick(), dims=(2,), seeds=(0, 1), dual_steps=40, map_steps=40,
        batch_size=64, hidden=(16,), sinkhorn_n=150, n_test=200, ring_methods=("sinkhorn",))
    record = run_experiment(get("monge-map"), config, seed=0, out=tmp_path,
                            show_progress=False)
    out = tmp_path / "monge-map"
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    gaussian = metrics["summary"]["gaussian"]
    assert set(gaussian) == {"d=2 entropy", "d=2 l2", "d=2 sinkhorn"}
    for cell in gaussian.values():
        assert len(cell["rel_error"]["values"]) == 2
        assert 0 < cell["rel_error"]["mean"] < 2
        # W2 of the 2-D problem, as the closed form gives it (up to the test sample)
        assert abs(cell["displacement"] - 1.57) < 0.1
    # even 200 samples give a barycentric map far closer to T than the identity (error 1)
    assert gaussian["d=2 sinkhorn"]["barycentric_rel_error"]["max"] < 0.5
    ring = metrics["summary"]["ring"]
    # the identity leaves mu far from nu; two samples of nu are close
    for key in ("sinkhorn_div", "energy"):
        assert ring["floor"][key]["mean"] < ring["identity"][key]["mean"]
        assert ring["barycentric"][key]["mean"] < ring["identity"][key]["mean"]
    assert (out / "gaussian_2d.png").exists() and (out / "ring_maps.png").exists()
    assert record.result.headline
