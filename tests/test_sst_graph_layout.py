"""The graph-layout experiment: its data, model pieces, metrics and a tiny end-to-end run."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from couplings.experiments.runner import run_experiment
from couplings.experiments.sst_graph_layout import (
    EXPERIMENT,
    EdgeEncoder,
    GraphLayoutModel,
    MessageDecoder,
    SSTGraphLayoutConfig,
    edge_precision_recall,
    make_graph_layout_data,
    spring_layout_step,
)
from couplings.structures import SpanningTree


def _is_spanning_tree(z: torch.Tensor, n: int) -> bool:
    """n - 1 edges connecting every vertex (union-find)."""
    edges = SpanningTree(n).edges[z.bool()].tolist()
    if len(edges) != n - 1:
        return False
    parent = list(range(n))

    def find(v):
        while parent[v] != v:
            v = parent[v]
        return v

    for i, j in edges:
        ri, rj = find(i), find(j)
        if ri == rj:
            return False
        parent[ri] = rj
    return True


def test_data_trees_are_spanning_trees_and_trajectories_have_the_layout_shape():
    pos, trees = make_graph_layout_data(50, 7, 6, torch.manual_seed(0))
    assert pos.shape == (50, 6, 7, 2) and trees.shape == (50, 21)
    assert all(_is_spanning_tree(t, 7) for t in trees)
    # every frame is centred and scaled to a largest coordinate of exactly 1 (spring_layout)
    assert torch.allclose(pos.mean(-2), torch.zeros(50, 6, 2, dtype=pos.dtype), atol=1e-12)
    assert torch.allclose(pos.abs().amax((-2, -1)), torch.ones(50, 6, dtype=pos.dtype))
    # the trees vary, and the layout moves
    assert len({tuple(t.tolist()) for t in trees}) > 40
    assert float((pos[:, 1:] - pos[:, :-1]).abs().mean()) > 1e-2


def test_spring_layout_step_matches_networkx():
    nx = pytest.importorskip("networkx")
    n, steps = 10, 15
    tree = SpanningTree(n)
    gen = torch.manual_seed(3)
    z = tree.argmax(torch.randn(4, tree.n_edges, dtype=torch.float64, generator=gen))
    pos0 = torch.randn(4, n, 2, dtype=torch.float64, generator=gen)
    ours = pos0
    for b in range(4):
        graph = nx.Graph()
        graph.add_edges_from(map(tuple, tree.edges[z[b].bool()].tolist()))
        pos = {i: pos0[b, i].numpy() for i in range(n)}
        reference = []
        for _ in range(steps):
            pos = nx.spring_layout(graph, pos=pos, iterations=1, threshold=1e-10,
                                   center=np.zeros(2))
            reference.append(np.stack([pos[i] for i in range(n)]))
        ours = pos0[b]
        adjacency = tree.to_adjacency(z[b])
        for t in range(steps):
            ours = spring_layout_step(ours, adjacency)
            assert np.allclose(ours.numpy(), reference[t], atol=1e-10), (b, t)


def test_spring_layout_step_is_batched():
    tree = SpanningTree(6)
    z = tree.argmax(torch.randn(3, tree.n_edges, dtype=torch.float64))
    adjacency = tree.to_adjacency(z)
    pos = torch.randn(3, 6, 2, dtype=torch.float64)
    batched = spring_layout_step(pos, adjacency)
    for b in range(3):
        assert torch.allclose(batched[b], spring_layout_step(pos[b], adjacency[b]))


def test_encoder_shapes_and_vertex_permutation_equivariance():
    torch.manual_seed(0)
    n = 6
    enc = EdgeEncoder(n, timesteps=5, hidden=16)
    x = torch.randn(4, 5, n, 2)
    theta = enc(x)
    assert theta.shape == (4, 15)
    # relabelling the vertices relabels the edges: theta_{perm(i), perm(j)} is unchanged
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    theta_perm = enc(x[:, :, perm])
    edges = SpanningTree(n).edges.tolist()
    index = {tuple(e): k for k, e in enumerate(edges)}
    for k, (i, j) in enumerate(edges):
        pi, pj = int(perm[i]), int(perm[j])
        assert torch.allclose(theta_perm[:, k], theta[:, index[(min(pi, pj), max(pi, pj))]],
                              atol=1e-5)
    two = EdgeEncoder(n, timesteps=5, hidden=16, out_features=2)
    assert two(x).shape == (4, 15, 2)


def test_decoder_uses_only_sampled_edges_with_one_edge_type():
    torch.manual_seed(0)
    dec = MessageDecoder(4, hidden=8, msg_hidden=8, edge_types=1)
    x = torch.randn(2, 3, 4, 2)
    z = torch.zeros(2, 6)
    z[:, 0] = 1.0  # only the edge (0, 1)
    out = dec.rollout(x, z)
    # moving vertex 3, connected to nobody, changes only vertex 3's prediction
    x2 = x.clone()
    x2[:, :, 3] += 1.0
    out2 = dec.rollout(x2, z)
    assert torch.allclose(out[:, :, :3], out2[:, :, :3])
    assert not torch.allclose(out[:, :, 3], out2[:, :, 3])
    # teacher forcing every step = one step from each true frame
    step = dec.step(x[:, 1], dec.edge_weights(z))
    assert torch.allclose(out[:, 1], step)
    rolled = dec.rollout(x, z, pred_steps=2)
    assert torch.allclose(rolled[:, 1], dec.step(rolled[:, 0], dec.edge_weights(z)))


def test_subsampled_nll_is_unbiased():
    torch.manual_seed(0)
    model = GraphLayoutModel("tree", 5, 6, hidden=8, msg_hidden=8, tau=1.0)
    x, z = torch.randn(3, 6, 5, 2), torch.rand(3, 10)
    with torch.no_grad():
        full = model.nll(x, z)
        gen = torch.manual_seed(1)
        sub = torch.stack([model.nll(x, z, frames=2, generator=gen) for _ in range(3000)])
    assert torch.allclose(sub.mean(0), full, rtol=0.03)
    assert torch.allclose(model.nll(x, z, frames=5), full)  # all T - 1 frames: exact


def test_edge_precision_recall_on_hand_made_cases():
    true = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]] * 4)
    pred = torch.tensor([
        [1.0, 1.0, 0.0, 0.0, 1.0],  # exact
        [1.0, 0.0, 1.0, 0.0, 0.0],  # 1 of 2 right, 1 of 3 found
        [1.0, 1.0, 1.0, 1.0, 1.0],  # everything
        [0.0, 0.0, 0.0, 0.0, 0.0],  # nothing
    ])
    precision, recall = edge_precision_recall(pred, true)
    assert torch.allclose(precision, torch.tensor([1.0, 0.5, 0.6, 0.0]))
    assert torch.allclose(recall, torch.tensor([1.0, 1 / 3, 1.0, 0.0]))


def test_tree_model_hard_samples_are_spanning_trees_and_kl_is_the_gumbel_kl():
    torch.manual_seed(0)
    model = GraphLayoutModel("tree", 6, 4, hidden=8, msg_hidden=8, tau=1.0)
    theta = 3 * torch.randn(40, 15)
    z = model.hard_sample(theta, torch.manual_seed(1))
    assert all(_is_spanning_tree(t, 6) for t in z)
    relaxed = model.relaxed_sample(theta, torch.manual_seed(1))
    assert torch.allclose(relaxed.sum(-1), torch.full((40,), 5.0), atol=1e-4)
    # KL(Gumbel(u, 1) || Gumbel(0, 1)) by Monte Carlo, for one u
    u = torch.tensor(0.7, dtype=torch.float64)
    g = -torch.log(-torch.log(torch.rand(400_000, dtype=torch.float64,
                                         generator=torch.manual_seed(2))))
    x = u + g
    mc = ((-(x - u) - torch.exp(-(x - u))) - (-x - torch.exp(-x))).mean()
    assert abs(float(mc) - float(u + torch.exp(-u) - 1)) < 5e-3
    assert torch.allclose(model.kl(torch.zeros(1, 15)), torch.zeros(1))
    topk = GraphLayoutModel("topk", 6, 4, hidden=8, msg_hidden=8, tau=1.0)
    assert torch.equal(topk.hard_sample(theta).sum(-1), torch.full((40,), 5.0))
    indep = GraphLayoutModel("indep", 6, 4, hidden=8, msg_hidden=8, tau=1.0)
    z = indep.hard_sample(torch.randn(40, 15, 2))
    assert z.shape == (40, 15) and set(z.unique().tolist()) <= {0.0, 1.0}


def test_tiny_end_to_end_run(tmp_path):
    config = dataclasses.replace(
        SSTGraphLayoutConfig.quick(), n_vertices=5, n_train=64, n_valid=16, n_test=16,
        steps=4, batch_size=8, hidden=8, msg_hidden=8, eval_every=2, n_figure=2)
    record = run_experiment(EXPERIMENT, config, seed=0, out=tmp_path, show_progress=False)
    metrics = json.loads((tmp_path / "sst-graph-layout" / "metrics.json").read_text())["metrics"]
    summary = metrics["summary"]["10"]
    assert set(summary) == {"tree", "topk", "indep"}
    for method, cell in summary.items():
        assert 0 <= cell["precision_mean"] <= 1 and 0 <= cell["recall_mean"] <= 1, method
        assert 0 <= cell["f1_mean"] <= 1, method
        assert np.isfinite(cell["elbo_mean"]) and cell["elbo_mean"] < 0, method
    # a spanning tree or its complement: n - 1 = 4 edges, or 10 - 4 = 6
    tree_unit = next(u for u in metrics["units"] if u["method"] == "tree")
    assert tree_unit["edges_per_sample"] in (4.0, 6.0)
    assert set(metrics["criterion"]["10"]) == {"precision", "recall", "f1"}
    assert len(record.result.headline) == 1
    assert (tmp_path / "sst-graph-layout" / "layouts.png").exists()
