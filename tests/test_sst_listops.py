"""The ListOps latent-tree experiment: data, latent graphs, metrics and a tiny end-to-end run."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from couplings.experiments.runner import run_experiment
from couplings.experiments.sst_listops import (
    EXPERIMENT,
    METHODS,
    OPERATORS,
    TOKENS,
    ListOpsModel,
    SSTListOpsConfig,
    edge_precision_recall,
    evaluate_op,
    is_arborescence,
    latent_graph,
    make_listops,
    true_adjacency,
)
from couplings.structures import Arborescence

REFERENCE_OPS = {  # numpy's versions, as in Nangia & Bowman's generator
    "MAX": lambda v: int(np.max(v)),
    "MIN": lambda v: int(np.min(v)),
    "MED": lambda v: int(np.median(v)),
    "SM": lambda v: int(np.sum(v) % 10),
}


def parse(text: str):
    """Value and parent of each token of a bracketed prefix expression, by a stack (written
    independently of the generator's recursion)."""
    stack, parents, value = [], [], None
    for pos, tok in enumerate(text.split()):
        parents.append(stack[-1][0] if stack else -1)
        if tok.startswith("["):
            stack.append((pos, tok[1:], []))
        elif tok == "]":
            _, op, args = stack.pop()
            v = REFERENCE_OPS[op](args)
            if stack:
                stack[-1][2].append(v)
            else:
                value = v
        else:
            stack[-1][2].append(int(tok))
    assert not stack
    return value, parents


def test_evaluate_op_matches_numpy():
    rng = np.random.default_rng(0)
    for _ in range(500):
        values = rng.integers(0, 10, size=int(rng.integers(1, 7))).tolist()
        for op in OPERATORS:
            assert evaluate_op(op, values) == REFERENCE_OPS[op](values), (op, values)
    with pytest.raises(ValueError):
        evaluate_op("PROD", [1, 2])


@pytest.mark.parametrize("operators", [("MAX", "MIN", "MED"), tuple(OPERATORS)])
def test_generated_labels_and_parents_match_an_independent_parser(operators):
    data = make_listops(3000, max_depth=3, max_args=4, max_len=20, operators=operators,
                        rng=np.random.default_rng(1))
    assert data.tokens.shape == (3000, 20)
    assert int(data.lengths.max()) <= 20 and int(data.lengths.min()) >= 4
    used = set()
    for i in range(len(data)):
        n = int(data.lengths[i])
        value, parents = parse(data.text(i))
        assert value == int(data.labels[i]), data.text(i)
        assert parents == data.parents[i, :n].tolist(), data.text(i)
        assert bool((data.tokens[i, n:] == 0).all()) and bool((data.parents[i, n:] == -1).all())
        used |= {TOKENS[t] for t in data.tokens[i, :n].tolist() if TOKENS[t].startswith("[")}
    assert used == {f"[{op}" for op in operators}
    # nesting happens, and up to max_depth lists deep
    depth = (data.tokens >= 11) & (data.tokens <= 14)
    depth = depth.long().cumsum(1) - (data.tokens == 15).long().cumsum(1)
    assert int(depth.max()) == 3
    # every label occurs and the sequences are distinct
    assert set(data.labels.tolist()) == set(range(10))
    assert len({data.text(i) for i in range(len(data))}) == len(data)


def test_true_parents_form_arborescences_rooted_at_the_first_token():
    data = make_listops(500, rng=np.random.default_rng(2))
    adj = true_adjacency(data.parents)
    assert bool(is_arborescence(adj, data.lengths).all())
    real = torch.arange(data.tokens.shape[1]) < data.lengths[:, None]
    # the root has no parent; every other real token exactly one, and it is an operator
    assert torch.equal(adj.sum(1)[:, 0], torch.zeros(500))
    assert torch.equal(adj.sum(1)[:, 1:], real[:, 1:].float())
    parent_tok = data.tokens.gather(1, data.parents.clamp_min(0))
    assert bool(((parent_tok >= 11) & (parent_tok <= 14))[real[:, :] & (data.parents >= 0)]
                .all())
    # operators are followed (in the sequence) by their children: parents come first
    child = torch.arange(data.tokens.shape[1]).expand_as(data.parents)
    assert bool((data.parents < child)[data.parents >= 0].all())


def test_generator_is_seeded():
    a = make_listops(200, rng=np.random.default_rng(5))
    b = make_listops(200, rng=np.random.default_rng(5))
    c = make_listops(200, rng=np.random.default_rng(6))
    for field in ("tokens", "lengths", "parents", "labels"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.tokens, c.tokens)


def test_is_arborescence_rejects_cycles_two_parents_and_a_parent_of_the_root():
    def graph(edges, n=4):
        a = torch.zeros(n, n)
        for p, c in edges:
            a[p, c] = 1.0
        return a

    cases = {
        ((0, 1), (0, 2), (2, 3)): True,
        ((0, 1), (2, 3), (3, 2)): False,  # 2 and 3 form a cycle, unreachable
        ((0, 1), (0, 2), (1, 3), (2, 3)): False,  # two parents
        ((0, 1), (0, 2)): False,  # 3 has no parent
        ((0, 1), (0, 2), (0, 3), (3, 0)): False,  # an edge into the root
    }
    adj = torch.stack([graph(e) for e in cases])
    assert is_arborescence(adj, torch.full((len(cases),), 4)).tolist() == list(cases.values())
    # vertices past the length are ignored
    assert is_arborescence(graph(((0, 1), (0, 2)))[None], torch.tensor([3])).tolist() == [True]


def test_edge_precision_recall_on_hand_made_graphs():
    true = torch.zeros(3, 4, 4)
    true[:, 0, 1] = true[:, 0, 2] = true[:, 2, 3] = 1.0
    pred = torch.zeros(3, 4, 4)
    pred[0] = true[0]  # exact
    pred[1, 0, 1] = pred[1, 1, 2] = pred[1, 2, 3] = pred[1, 3, 1] = 1.0  # 2 right of 4
    # pred[2] empty
    precision, recall = edge_precision_recall(pred, true)
    assert torch.allclose(precision, torch.tensor([1.0, 0.5, 0.0]))
    assert torch.allclose(recall, torch.tensor([1.0, 2 / 3, 0.0]))


def _random_batch(seed=0, n=6):
    data = make_listops(n, rng=np.random.default_rng(seed)).subset(slice(None))
    scores = torch.randn(n, data.tokens.shape[1], data.tokens.shape[1],
                         generator=torch.manual_seed(seed))
    return data, scores


def test_hard_graphs_arborescence_is_always_a_tree_and_head_one_parent_each():
    data, scores = _random_batch(3, n=12)
    assert len(set(data.lengths.tolist())) > 1  # padding is exercised
    real = (torch.arange(data.tokens.shape[1]) < data.lengths[:, None]).float()
    for method in ("arborescence", "head", "independent", "oracle"):
        adj = latent_graph(method, scores, data.lengths, hard=True, parents=data.parents)
        assert set(adj.unique().tolist()) <= {0.0, 1.0}
        # nothing touches padding, no self-loops, nothing enters the root
        assert bool((adj * (1 - real[:, :, None])).eq(0).all())
        assert bool((adj * (1 - real[:, None, :])).eq(0).all())
        assert bool(adj.diagonal(dim1=1, dim2=2).eq(0).all()) and bool(adj[:, :, 0].eq(0).all())
        if method in ("arborescence", "oracle"):
            assert bool(is_arborescence(adj, data.lengths).all()), method
        if method == "head":
            assert torch.equal(adj.sum(1)[:, 1:], real[:, 1:])
    # the arborescence argmax is the best tree: no tree listed by brute force scores higher
    s = torch.randn(1, 6, 6, generator=torch.manual_seed(1))
    best = latent_graph("arborescence", s, torch.tensor([6]), hard=True)
    arb = Arborescence(6)
    trees = arb.to_adjacency(arb.enumerate().float())
    assert abs(float((best * s).sum()) - float((trees * s).sum((-2, -1)).max())) < 1e-5


def test_relaxed_arborescence_is_a_distribution_over_parents_and_ignores_padding():
    data, scores = _random_batch(7, n=8)
    scores.requires_grad_(True)
    adj = latent_graph("arborescence", scores, data.lengths, tau=0.7,
                       generator=torch.manual_seed(0))
    real = (torch.arange(data.tokens.shape[1]) < data.lengths[:, None]).float()
    # marginals: every real non-root token has total in-weight 1
    assert torch.allclose(adj.sum(1)[:, 1:], real[:, 1:], atol=1e-5)
    assert float(adj.detach().min()) >= 0
    # without noise, a padded sequence's graph is the marginals of its own arborescences
    batch = latent_graph("arborescence", scores.detach(), data.lengths, tau=0.7,
                         noise_scale=0.0)
    for b in range(len(data)):
        m = int(data.lengths[b])
        arb = Arborescence(m)
        i, j = arb.edges[:, 0], arb.edges[:, 1]
        alone = arb.to_adjacency(arb.marginals(scores.detach()[b, :m, :m][i, j] / 0.7))
        assert torch.allclose(batch[b, :m, :m], alone, atol=1e-5)
    # gradients reach the real scores only
    (adj * torch.randn(adj.shape, generator=torch.manual_seed(1))).sum().backward()
    grad = scores.grad
    assert float(grad[:, 1:, 1:].abs().sum()) > 0
    pad = 1 - real[:, :, None] * real[:, None, :]
    assert float((grad * pad).abs().max()) == 0.0


def test_model_shapes_and_gradients():
    data, _ = _random_batch(8, n=5)
    model = ListOpsModel(emb=8, hidden=16, rounds=3)
    scores = model.scores(data.tokens, data.lengths)
    width = data.tokens.shape[1]
    assert scores.shape == (5, width, width)
    for method in METHODS:
        adj = latent_graph(method, scores, data.lengths, tau=1.0, parents=data.parents,
                           generator=torch.manual_seed(0))
        assert adj.shape == (5, width, width)
        logits = model.classify(data.tokens, adj)
        assert logits.shape == (5, 10)
        model.zero_grad()
        logits.sum().backward(retain_graph=True)
        lstm_grad = model.lstm.weight_ih_l0.grad
        if method == "oracle":  # the structure does not depend on the encoder
            assert lstm_grad is None or float(lstm_grad.abs().sum()) == 0
        else:
            assert lstm_grad is not None and float(lstm_grad.abs().sum()) > 0, method


def test_config_validation():
    with pytest.raises(ValueError):
        SSTListOpsConfig(methods=("arborescence", "spanning"))
    with pytest.raises(ValueError):
        SSTListOpsConfig(operators=("MAX", "PROD"))
    with pytest.raises(ValueError):
        make_listops(3, operators=(), rng=np.random.default_rng(0))


def test_tiny_end_to_end_run(tmp_path):
    config = dataclasses.replace(SSTListOpsConfig.quick(), n_train=300, n_valid=60, n_test=60,
                                 steps=12, eval_every=6, batch_size=16, emb=8, hidden=16,
                                 max_len=14)
    record = run_experiment(EXPERIMENT, config, seed=0, out=tmp_path, show_progress=False)
    out = json.loads((tmp_path / "sst-listops" / "metrics.json").read_text())["metrics"]
    summary = out["summary"]
    assert set(summary) == set(METHODS)
    for method, m in summary.items():
        for key in ("accuracy", "edge_precision", "edge_recall", "valid_tree", "exact_tree"):
            assert 0.0 <= m[f"{key}_mean"] <= 1.0, (method, key)
            assert m[f"{key}_std"] == 0.0  # one seed
    assert summary["oracle"]["edge_precision_mean"] == 1.0
    assert summary["oracle"]["exact_tree_mean"] == 1.0
    assert summary["arborescence"]["valid_tree_mean"] == 1.0
    # an arborescence has n - 1 edges, as many as the true tree: precision = recall
    a = summary["arborescence"]
    assert abs(a["edge_precision_mean"] - a["edge_recall_mean"]) < 1e-6
    assert len(out["units"]) == len(METHODS)
    assert set(out["criterion"]) == {f"arborescence beats independent on {k}"
                                     for k in ("accuracy", "edge precision", "edge recall")}
    assert record.result.tables and set(record.result.figures) == {"metrics", "example_parse"}
    assert (tmp_path / "sst-listops" / "report.md").exists()
