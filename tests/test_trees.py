"""Spanning trees and arborescences against brute force.

Every exactness check compares with the enumeration of all trees: the log-partition is
``logsumexp`` of the tree scores and the marginals the softmax-weighted average of the trees.
The enumeration itself is checked against Cayley's formula and networkx's tree counts.
Tolerances: float64 results agree with the enumeration to 1e-8 (they are exact to ~1e-14);
float32 results, computed in float64 internally, only carry the float32 rounding of the output:
``|d log Z| <= 1e-6 max(1, |log Z|)`` and ``|d mu| <= 1e-6``.
"""

import functools

import networkx as nx
import numpy as np
import pytest
import torch

from couplings.structures import Arborescence, FiniteDifference, SpanningTree

F64 = torch.float64


@functools.lru_cache(maxsize=1)
def _connected_atlas():
    """Every connected graph with 2 to 6 vertices, up to isomorphism: ``(n, edges, graph)``."""
    out = []
    for g in nx.graph_atlas_g():
        n = g.number_of_nodes()
        if 2 <= n <= 6 and nx.is_connected(g):
            out.append((n, sorted(tuple(sorted(e)) for e in g.edges()), g))
    return tuple(out)


def _atlas():
    graphs = _connected_atlas()
    assert len(graphs) == 1 + 2 + 6 + 21 + 112  # connected graphs on 2, 3, 4, 5, 6 vertices
    return graphs


def _both_ways(edges, root):
    return [(i, j) for a, b in edges for i, j in ((a, b), (b, a)) if j != root]


def _reachable_from(n, edges, root):
    seen, stack = {root}, [root]
    while stack:
        v = stack.pop()
        for i, j in edges:
            if i == v and j not in seen:
                seen.add(j)
                stack.append(j)
    return len(seen) == n


def _brute(structure, w):
    """log Z and marginals by enumeration, for w ``(B, n_edges)``, in float64."""
    z = structure.enumerate()
    scores = w.to(F64) @ z.T
    return torch.logsumexp(scores, -1), torch.softmax(scores, -1) @ z


def _check_exact(structure, w, atol=1e-8):
    log_z, mu = _brute(structure, w)
    torch.testing.assert_close(structure.log_partition(w), log_z, rtol=0, atol=atol)
    torch.testing.assert_close(structure.marginals(w), mu, rtol=0, atol=atol)


# sparse graphs on 6 vertices: a path, a cycle, a star, a cycle with a pendant path, two
# triangles joined by a bridge, and a vertex hanging from a heavy triangle by one edge
SPARSE6 = [
    [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)],
    [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 5)],
    [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5)],
    [(0, 1), (1, 2), (2, 0), (2, 3), (3, 4), (4, 5)],
    [(0, 1), (1, 2), (0, 2), (2, 3), (3, 4), (4, 5), (3, 5)],
    [(0, 1), (1, 2), (2, 3), (1, 3), (3, 4), (4, 5), (2, 5), (1, 5)],
]


# --------------------------------------------------------------------------------------------
# enumeration


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_enumerate_counts_on_complete_graphs(n):
    # Cayley: n^(n-2) labelled trees; as many arborescences of the complete digraph per root
    for structure in (SpanningTree(n), Arborescence(n, root=n - 1)):
        z = structure.enumerate()
        assert z.dtype == F64 and z.shape == (n ** (n - 2), structure.n_edges)
        assert bool((z.sum(-1) == n - 1).all())
        assert len(set(map(tuple, z.tolist()))) == len(z)


def test_enumerate_gives_valid_distinct_trees():
    for n, edges, _ in _atlas()[-112::7]:  # a sample of the 6-vertex graphs
        for structure in (SpanningTree(n, edges), Arborescence(n, 0, _both_ways(edges, 0))):
            z = structure.enumerate()
            assert len(set(map(tuple, z.tolist()))) == len(z)
            directed = isinstance(structure, Arborescence)
            for row in z.bool():
                g = nx.DiGraph() if directed else nx.Graph()
                g.add_nodes_from(range(n))
                g.add_edges_from(structure.edges[row].tolist())
                assert nx.is_arborescence(g) if directed else nx.is_tree(g)
                if directed:
                    assert g.in_degree(0) == 0


def test_enumerate_refuses_large_graphs():
    with pytest.raises(ValueError, match="edge subsets"):
        SpanningTree(12).enumerate()
    with pytest.raises(ValueError, match="choices of parents"):
        Arborescence(10).enumerate()


# --------------------------------------------------------------------------------------------
# log-partition and marginals are exact


def test_spanning_tree_exact_on_every_connected_graph_up_to_6_vertices(gen):
    for n, edges, g in _atlas():
        tree = SpanningTree(n, edges)
        assert len(tree.enumerate()) == round(nx.number_of_spanning_trees(g))
        w = 2 * torch.randn(2, tree.n_edges, generator=gen, dtype=F64)
        _check_exact(tree, w)


def test_arborescence_exact_on_every_connected_graph_up_to_6_vertices(gen):
    checked_random = 0
    for index, (n, edges, _) in enumerate(_atlas()):
        root = index % n
        both = _both_ways(edges, root)
        arb = Arborescence(n, root, both)
        g = nx.DiGraph(both)
        g.add_nodes_from(range(n))
        assert len(arb.enumerate()) == round(nx.number_of_spanning_trees(g, root=root))
        _check_exact(arb, 2 * torch.randn(1, arb.n_edges, generator=gen, dtype=F64))
        # one random orientation of every edge, kept when the root still reaches everything
        flip = torch.rand(len(edges), generator=gen) < 0.5
        oriented = [(b, a) if f else (a, b) for (a, b), f in zip(edges, flip.tolist(), strict=True)]
        oriented = [e for e in oriented if e[1] != 0]
        if _reachable_from(n, oriented, 0):
            arb = Arborescence(n, 0, oriented)
            _check_exact(arb, 2 * torch.randn(1, arb.n_edges, generator=gen, dtype=F64))
            checked_random += 1
    assert checked_random >= 20


def test_exact_for_widely_spread_weights_in_float64(gen):
    # weights over [-1000, 1000]: exp(w) over- and underflows float64, yet no clipping is
    # needed and the result keeps float64's relative accuracy
    for structure in (SpanningTree(6), SpanningTree(6, SPARSE6[4]), Arborescence(5, root=2)):
        w = 2000 * torch.rand(3, structure.n_edges, generator=gen, dtype=F64) - 1000
        log_z, mu = _brute(structure, w)
        torch.testing.assert_close(structure.log_partition(w), log_z, rtol=1e-12, atol=0)
        torch.testing.assert_close(structure.marginals(w), mu, rtol=0, atol=1e-9)


def test_large_offsets_cost_no_accuracy(gen):
    # a constant added to every weight of a spanning tree, or to every in-edge of a vertex of an
    # arborescence (each arborescence takes one), adds to log Z and leaves the marginals; the
    # per-vertex shift of the elimination removes it exactly
    tree = SpanningTree(6, SPARSE6[5])
    x = torch.randn(3, tree.n_edges, generator=gen, dtype=F64)
    w = x + 1e8
    base = w - 1e8  # exact: x rounded to the resolution of 1e8
    torch.testing.assert_close(tree.marginals(w), tree.marginals(base), rtol=0, atol=1e-12)
    torch.testing.assert_close(tree.log_partition(w) - 5e8, tree.log_partition(base),
                               rtol=0, atol=1e-6)
    arb = Arborescence(6, root=2)
    offset = 1e8 * torch.tensor([1.0, 1.5, 0.0, 1.2, 1.9, 1.1], dtype=F64)
    w = torch.randn(3, arb.n_edges, generator=gen, dtype=F64) + offset[arb.edges[:, 1]]
    base = w - offset[arb.edges[:, 1]]
    torch.testing.assert_close(arb.marginals(w), arb.marginals(base), rtol=0, atol=1e-12)


def _float32_structures():
    out = [SpanningTree(6), Arborescence(6), Arborescence(6, root=3)]
    for edges in SPARSE6:
        out.append(SpanningTree(6, edges))
        out.append(Arborescence(6, 0, _both_ways(edges, 0)))
    return out


@pytest.mark.parametrize("structure", _float32_structures(), ids=repr)
def test_float32_weights_over_a_range_of_50(structure, gen):
    w = (50 * torch.rand(4, structure.n_edges, generator=gen, dtype=F64) - 25).float()
    log_z, mu = _brute(structure, w.double())
    got_log_z, got_mu = structure.log_partition(w), structure.marginals(w)
    assert got_log_z.dtype == got_mu.dtype == torch.float32
    assert bool(torch.isfinite(got_log_z).all()) and bool(torch.isfinite(got_mu).all())
    err = (got_log_z.double() - log_z).abs()
    assert bool((err <= 1e-6 * log_z.abs().clamp_min(1)).all()), err
    assert float((got_mu.double() - mu).abs().max()) <= 1e-6


def test_float32_light_bridge_does_not_cancel():
    # vertex 0 hangs from a heavy triangle by an edge exp(-50) times lighter: a float32 LU or
    # Cholesky of the Laplacian minor rounds its pivot exp(-50) + 2 - 2 to 0
    tree = SpanningTree(4, [(0, 1), (1, 2), (2, 3), (1, 3)])
    w = torch.tensor([-25.0, 25.0, 25.0, 25.0])
    log_z, mu = _brute(tree, w.double())
    torch.testing.assert_close(tree.log_partition(w).double(), log_z, rtol=1e-6, atol=0)
    torch.testing.assert_close(tree.marginals(w).double(), mu, rtol=0, atol=1e-6)
    arb = Arborescence(4, 0, [(0, 1), (1, 2), (2, 1), (2, 3), (3, 2), (1, 3), (3, 1)])
    w = torch.tensor([-25.0] + [25.0] * 6)
    log_z, mu = _brute(arb, w.double())
    torch.testing.assert_close(arb.log_partition(w).double(), log_z, rtol=1e-6, atol=0)
    torch.testing.assert_close(arb.marginals(w).double(), mu, rtol=0, atol=1e-6)


def test_edge_in_no_arborescence_has_marginal_zero():
    # 2 -> 1 would need 1 -> 2 as 2's only parent: a cycle
    arb = Arborescence(3, 0, [(0, 1), (1, 2), (2, 1)])
    mu = arb.marginals(torch.tensor([0.3, -1.0, 2.0], dtype=F64))
    torch.testing.assert_close(mu, torch.tensor([1.0, 1.0, 0.0], dtype=F64), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# argmax


def _best_by_enumeration(structure, w):
    z = structure.enumerate()
    return z[(w.to(F64) @ z.T).argmax(-1)]


def test_argmax_is_the_best_enumerated_tree(gen):
    for index, (n, edges, _) in enumerate(_atlas()):
        root = index % n
        for structure in (SpanningTree(n, edges), Arborescence(n, root, _both_ways(edges, root))):
            w = torch.randn(3, structure.n_edges, generator=gen, dtype=F64)
            z = structure.argmax(w)
            assert z.dtype == F64 and z.shape == w.shape
            torch.testing.assert_close(z, _best_by_enumeration(structure, w), rtol=0, atol=0)


def test_argmax_with_ties_is_a_best_tree(gen):
    # integer weights in {0, 1, 2}: many ties; the value must still be the best
    for structure in (SpanningTree(6), Arborescence(6, root=4), SpanningTree(6, SPARSE6[5]),
                      Arborescence(6, 0, _both_ways(SPARSE6[5], 0))):
        w = torch.randint(0, 3, (20, structure.n_edges), generator=gen).to(F64)
        z = structure.argmax(w)
        best = _best_by_enumeration(structure, w)
        torch.testing.assert_close((z * w).sum(-1), (best * w).sum(-1), rtol=0, atol=0)
        members = set(map(tuple, structure.enumerate().tolist()))
        assert all(tuple(row) in members for row in z.tolist())


@pytest.mark.parametrize("n", [8, 13, 25])
def test_argmax_matches_networkx_on_larger_graphs(n, gen):
    for trial in range(3):
        root = trial % n
        dense = Arborescence(n, root)
        keep = torch.rand(dense.n_edges, generator=gen) < 0.3
        keep |= dense.edges[:, 0] == root  # keep the graph reachable
        for arb in (dense, Arborescence(n, root, dense.edges[keep])):
            w = torch.randn(2, arb.n_edges, generator=gen, dtype=F64)
            z = arb.argmax(w)
            for b in range(2):
                g = nx.DiGraph()
                g.add_weighted_edges_from(
                    (i, j, x) for (i, j), x in zip(arb.edges.tolist(), w[b].tolist(), strict=True))
                best = nx.maximum_spanning_arborescence(g)
                chosen = nx.DiGraph(arb.edges[z[b].bool()].tolist())
                assert nx.is_arborescence(chosen) and chosen.number_of_nodes() == n
                assert chosen.in_degree(root) == 0
                assert float(z[b] @ w[b]) == pytest.approx(best.size(weight="weight"), abs=1e-9)
        tree = SpanningTree(n)
        w = torch.randn(tree.n_edges, generator=gen, dtype=F64)
        z = tree.argmax(w)
        g = nx.Graph()
        g.add_weighted_edges_from(
            (i, j, x) for (i, j), x in zip(tree.edges.tolist(), w.tolist(), strict=True))
        chosen = nx.Graph(tree.edges[z.bool()].tolist())
        assert nx.is_tree(chosen) and chosen.number_of_nodes() == n
        best = nx.maximum_spanning_tree(g).size(weight="weight")
        assert float(z @ w) == pytest.approx(best, abs=1e-9)


def test_argmax_is_exact_for_close_large_weights():
    # the weights differ by less than their float64 resolution after a shift such as
    # (max - w) + 1: ranks are used, not arithmetic
    tree = SpanningTree(3)
    w = torch.tensor([1e17, 1e17 + 64, 1e17 + 32], dtype=F64)
    torch.testing.assert_close(tree.argmax(w), torch.tensor([0.0, 1.0, 1.0], dtype=F64))


# --------------------------------------------------------------------------------------------
# relaxations and their gradients


@pytest.mark.parametrize("structure", [SpanningTree(5), SpanningTree(6, SPARSE6[3]),
                                       Arborescence(5), Arborescence(5, root=3)], ids=repr)
def test_relaxed_tends_to_argmax_and_sums_to_n_minus_1(structure, gen):
    w = torch.randn(4, structure.n_edges, generator=gen, dtype=F64)
    scores = (w @ structure.enumerate().T).sort(-1, descending=True).values
    gap = float((scores[:, 0] - scores[:, 1]).min())
    assert gap > 1e-3
    z = structure.relaxed(w, tau=gap / 40)
    torch.testing.assert_close(z, structure.argmax(w), rtol=0, atol=1e-9)
    for tau in (0.3, 1.0, 5.0):
        mu = structure.relaxed(w, tau=tau)
        assert bool(((mu >= 0) & (mu <= 1 + 1e-12)).all())
        torch.testing.assert_close(mu.sum(-1), torch.full((4,), structure.n - 1.0, dtype=F64))
    torch.testing.assert_close(structure.relaxed(w, tau=0.5), structure.marginals(w / 0.5))


GRAD_STRUCTURES = [SpanningTree(4), SpanningTree(5, [(0, 1), (1, 2), (2, 0), (2, 3), (3, 4)]),
                   Arborescence(4, root=1), Arborescence(4, 0, [(0, 1), (1, 2), (2, 1), (2, 3),
                                                                (3, 2), (0, 3)])]


@pytest.mark.parametrize("structure", GRAD_STRUCTURES, ids=repr)
def test_gradcheck(structure, gen):
    w = torch.randn(2, structure.n_edges, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(structure.log_partition, (w,))
    assert torch.autograd.gradgradcheck(structure.log_partition, (w,))
    for backward in ("autograd", "custom"):
        assert torch.autograd.gradcheck(
            lambda x, b=backward: structure.relaxed(x, 0.7, backward=b), (w,))
    assert torch.autograd.gradgradcheck(lambda x: structure.relaxed(x, 0.7), (w,))


@pytest.mark.parametrize("structure", [SpanningTree(5), Arborescence(4, root=2),
                                       SpanningTree(6, SPARSE6[4])], ids=repr)
def test_hessian_is_the_covariance_of_z(structure, gen):
    # at w = 0 (every comparison in the elimination a tie) and for weights spread over 2000
    z = structure.enumerate()
    spread = 2000 * torch.rand(structure.n_edges, generator=gen, dtype=F64) - 1000
    for w in (torch.zeros(structure.n_edges, dtype=F64), spread):
        p = torch.softmax(z @ w, 0)
        mu = p @ z
        cov = (z * p[:, None]).T @ z - torch.outer(mu, mu)
        # row e of the Jacobian of the marginals, for every e at once: a batch of copies of w
        eye = torch.eye(structure.n_edges, dtype=F64)
        for backward in ("autograd", "custom"):
            x = w.repeat(structure.n_edges, 1).requires_grad_(True)
            (hess,) = torch.autograd.grad(structure.relaxed(x, backward=backward), x, eye)
            torch.testing.assert_close(hess, cov, rtol=0, atol=1e-10)


@pytest.mark.parametrize("structure", GRAD_STRUCTURES, ids=repr)
def test_custom_and_finite_difference_backward_match_autograd(structure, gen):
    w = torch.randn(3, structure.n_edges, generator=gen, dtype=F64)
    g = torch.randn(3, structure.n_edges, generator=gen, dtype=F64)
    grads = {}
    for name, backward in (("autograd", "autograd"), ("custom", "custom"),
                           ("fd", FiniteDifference(1e-4))):
        x = w.clone().requires_grad_(True)
        z = structure.relaxed(x, 0.8, backward=backward)
        torch.testing.assert_close(z, structure.marginals(w / 0.8), rtol=0, atol=1e-12)
        (grads[name],) = torch.autograd.grad(z, x, g)
    torch.testing.assert_close(grads["custom"], grads["autograd"], rtol=0, atol=1e-12)
    torch.testing.assert_close(grads["fd"], grads["autograd"], rtol=0, atol=1e-7)
    # the Jacobian is the covariance of z over tau: symmetric, rows summing to 0
    x = w[0].clone().requires_grad_(True)
    jac = torch.autograd.functional.jacobian(lambda v: structure.relaxed(v, 0.8), x)
    torch.testing.assert_close(jac, jac.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(jac.sum(-1), torch.zeros_like(w[0]), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# dtypes, batches, adjacency


@pytest.mark.parametrize("structure", [SpanningTree(5, SPARSE6[1][:4] + [(0, 4)]),
                                       Arborescence(4, root=2)], ids=repr)
def test_float32_and_batches(structure, gen):
    w = torch.randn(3, 2, structure.n_edges, generator=gen)
    calls = {
        "argmax": structure.argmax,
        "log_partition": structure.log_partition,
        "marginals": structure.marginals,
        "relaxed": lambda v: structure.relaxed(v, 0.5),
        "custom": lambda v: structure.relaxed(v, 0.5, backward="custom"),
    }
    for name, call in calls.items():
        out = call(w)
        assert out.shape == w.shape[: 2 if name == "log_partition" else 3], name
        assert out.dtype == torch.float32 and out.device == w.device, name
        one_by_one = torch.stack([call(v) for v in w.reshape(6, -1)]).reshape(out.shape)
        torch.testing.assert_close(out, one_by_one, rtol=1e-6, atol=1e-6)
    x = w.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(structure.relaxed(x, 0.5, backward="custom").sum(), x)
    assert grad.dtype == torch.float32
    empty = torch.zeros(0, structure.n_edges)
    assert structure.log_partition(empty).shape == (0,)
    assert structure.argmax(empty).shape == structure.marginals(empty).shape == empty.shape


def test_numpy_weights_are_accepted():
    tree = SpanningTree(3)
    w = np.array([2.0, 0.0, 1.0])
    torch.testing.assert_close(tree.argmax(w), torch.tensor([1.0, 0.0, 1.0], dtype=F64))


def test_to_adjacency(gen):
    tree = SpanningTree(6, SPARSE6[5])
    z = tree.argmax(torch.randn(2, tree.n_edges, generator=gen))
    adj = tree.to_adjacency(z)
    assert adj.shape == (2, 6, 6) and adj.dtype == torch.float32
    torch.testing.assert_close(adj, adj.transpose(-1, -2))
    torch.testing.assert_close(adj.sum((-1, -2)), torch.full((2,), 10.0))
    i, j = tree.edges.T
    torch.testing.assert_close(adj[:, i, j], z)

    arb = Arborescence(5, root=2)
    z = arb.argmax(torch.randn(3, arb.n_edges, generator=gen, dtype=F64))
    adj = arb.to_adjacency(z)
    in_degree = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0], dtype=F64).expand(3, 5)
    torch.testing.assert_close(adj.sum(-2), in_degree)
    i, j = arb.edges.T
    torch.testing.assert_close(adj[:, i, j], z)
    with pytest.raises(ValueError, match=r"shape \(\*batch, 16\)"):
        arb.to_adjacency(torch.zeros(3, 15))


# --------------------------------------------------------------------------------------------
# input validation


@pytest.mark.parametrize("make, error, match", [
    (lambda: SpanningTree(4, [(0, 1), (2, 3)]), ValueError, "connected"),
    (lambda: SpanningTree(3, [(0, 1), (1, 1), (1, 2)]), ValueError, "self-loops"),
    (lambda: SpanningTree(3, [(0, 1), (1, 2), (1, 0)]), ValueError, "each undirected edge once"),
    (lambda: SpanningTree(3, [(0, 1), (1, 3)]), ValueError, r"vertices in 0\.\.2"),
    (lambda: SpanningTree(3, [(0, 1, 2)]), ValueError, "pairs"),
    (lambda: SpanningTree(3, [(0.0, 1.0), (1.0, 2.0)]), TypeError, "integer"),
    (lambda: SpanningTree(3, []), ValueError, "connected"),
    (lambda: SpanningTree(1), ValueError, "at least 2"),
    (lambda: SpanningTree(3.0), TypeError, "int"),
    (lambda: SpanningTree(True), TypeError, "int"),
    (lambda: Arborescence(3, edges=[(0, 1), (1, 2), (2, 0)]), ValueError, "into the root"),
    (lambda: Arborescence(3, edges=[(0, 1), (2, 1)]), ValueError, r"reachable.*\[2\]"),
    (lambda: Arborescence(3, edges=[(0, 1), (1, 2), (0, 1)]), ValueError, "directed edge once"),
    (lambda: Arborescence(3, edges=[(0, 1), (2, 2)]), ValueError, "self-loops"),
    (lambda: Arborescence(3, root=3), ValueError, "root"),
    (lambda: Arborescence(3, root="0"), TypeError, "root"),
])
def test_bad_graphs(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("structure", [SpanningTree(4), Arborescence(4)], ids=repr)
def test_bad_weights(structure):
    e = structure.n_edges
    methods = [structure.argmax, structure.log_partition, structure.marginals,
               structure.relaxed, lambda w: structure.relaxed(w, backward="custom")]
    for method in methods:
        with pytest.raises(ValueError, match="shape"):
            method(torch.zeros(2, e + 1))
        with pytest.raises(ValueError, match="finite"):
            method(torch.full((e,), float("nan")))
        with pytest.raises(TypeError, match="floating dtype"):
            method(torch.zeros(e, dtype=torch.int64))
        with pytest.raises(TypeError, match="torch.Tensor"):
            method([0.0] * e)
    with pytest.raises(ValueError, match="reg"):
        structure.relaxed(torch.zeros(e), reg="euclidean")
    with pytest.raises(ValueError, match="backward"):
        structure.relaxed(torch.zeros(e), backward="implicit")
    with pytest.raises(ValueError, match="tau"):
        structure.relaxed(torch.zeros(e), tau=0.0)
    with pytest.raises(ValueError, match="overflows"):
        structure.relaxed(torch.full((e,), 1e30), tau=1e-30)


def test_attributes_and_repr():
    tree = SpanningTree(4, torch.tensor([[1, 0], [1, 2], [3, 2]]))
    assert tree.edges.dtype == torch.int64 and tree.edges.tolist() == [[1, 0], [1, 2], [3, 2]]
    assert tree.event_shape == (3,) and tree.regularizers == ("ef",)
    assert repr(tree) == "SpanningTree(n=4, n_edges=3)"
    arb = Arborescence(4, root=1)
    assert arb.n_edges == 9 and bool((arb.edges[:, 1] != 1).all())
    assert repr(arb) == "Arborescence(n=4, root=1, n_edges=9)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(gen):
    for structure in (SpanningTree(6, SPARSE6[4]), Arborescence(6, root=1)):
        w = torch.randn(3, structure.n_edges, generator=gen)
        wc = w.cuda()
        for name in ("argmax", "log_partition", "marginals"):
            out = getattr(structure, name)(wc)
            assert out.device == wc.device
            torch.testing.assert_close(out.cpu(), getattr(structure, name)(w))
        out = structure.relaxed(wc.requires_grad_(True), 0.5, backward="custom")
        (grad,) = torch.autograd.grad(out.sum(), wc)
        assert grad.device == wc.device
