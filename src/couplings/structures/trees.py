r"""Spanning trees of an undirected graph and spanning arborescences of a directed one.

A :class:`SpanningTree` of a connected graph on ``n`` vertices is a set of ``n - 1`` edges with
no cycle; an :class:`Arborescence` rooted at ``r`` is a set of directed edges in which every
vertex but ``r`` has exactly one parent and every vertex is reachable from ``r`` (a directed
spanning tree with its edges pointing away from the root). Both are encoded as 0/1 vectors
``z`` over the graph's edges, ``event_shape = (n_edges,)``, with one weight per edge ``w``.

**Log-partition: the matrix-tree theorem.** With :math:`A_{ij} = e^{w_{ij}}` for an edge
:math:`i \to j` and the in-degree Laplacian :math:`L = \operatorname{diag}(\mathbf 1^\top A) -
A`, Tutte's theorem gives

.. math::

    Z(w) = \sum_{T} \prod_{e \in T} e^{w_e} = \det L^{(r)},

:math:`L^{(r)}` being :math:`L` with the root's row and column removed. An undirected spanning
tree is the same as an arborescence of the symmetric digraph (each edge in both directions)
rooted at any vertex, so Kirchhoff's theorem is the case of a symmetric :math:`A` (root 0).

**Stabilisation.** A determinant of a Laplacian by a plain LU or Cholesky factorisation loses
everything to cancellation when the weights span many orders of magnitude (a vertex reached
only through an edge :math:`e^{-50}` times lighter than the others has a pivot
:math:`e^{-50} + 2 - 2` that rounds to 0). Here :math:`\det L^{(r)}` is the product of the
pivots of a Gaussian elimination of the non-root vertices that never subtracts, in the manner
of the Grassmann-Taksar-Heyman algorithm for Markov chains: eliminating vertex ``k`` leaves the
Laplacian of the reduced graph (Kron reduction) with weights
:math:`A'_{ij} = A_{ij} + A_{ik} A_{kj} / d_k`, the pivot is ``k``'s in-weight
:math:`d_k = \sum_i A_{ik}` (a sum of positive terms), and self-loops are dropped. All of it
runs in the log domain (log-sum-exps of log-weights), in float64 whatever the input dtype, with
each column (the in-edges of a vertex) shifted by its largest weight: nothing overflows,
underflows or cancels, whatever the spread of ``w``, and no weight is clipped. The error in
:math:`\log Z` is a few float64 roundings of numbers the size of that spread (float32 inputs
get float32-rounded results of a float64 computation). Absent edges are a finite sentinel
(:math:`-10^{300}`, so that autograd never meets ``-inf - (-inf)``); the weights are assumed
far below :math:`10^{290}` in magnitude.
``log_partition`` costs :math:`O(n^3)` per problem and is differentiable by autograd to any
order; the marginals :math:`\mu = \nabla_w \log Z` are its autograd gradient, and the
``"custom"`` backward of ``relaxed`` is the Hessian-vector product
:math:`\nabla^2 \log Z(w / \tau)\, g / \tau` (double backward), computed without keeping the
forward's graph.

**Argmax.** The maximum spanning tree is Kruskal's on the rank order of the weights
(``scipy.sparse.csgraph.minimum_spanning_tree``, exact: no arithmetic on the weights); the
maximum arborescence is the Chu-Liu/Edmonds algorithm (Chu & Liu, 1965; Edmonds, 1967),
:math:`O(n^3)` per problem. Both loop over the batch on the CPU.

References: Koo, Globerson, Carreras & Collins (2007), "Structured prediction models via the
matrix-tree theorem"; Grassmann, Taksar & Heyman (1985), "Regenerative analysis and steady
state distributions for Markov chains"; Paulus et al. (2020), "Gradient estimation with
stochastic softmax tricks".
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .._validation import as_tensor
from .base import Structure, check_weights, logaddexp

__all__ = ["Arborescence", "SpanningTree"]

# log-weight of an absent edge: exp(_ABSENT - anything real) is exactly 0, and sums of two of
# them stay finite in float64 (autograd through logaddexp(-inf, -inf) would give nan)
_ABSENT = -1e300

# brute-force enumeration checks at most this many candidate edge sets
_MAX_CANDIDATES = 2_000_000
_CHUNK = 50_000


# --------------------------------------------------------------------------------------------
# input checks


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"n must be an int (the number of vertices), got {n!r}.")
    if n < 2:
        raise ValueError(f"n must be at least 2 vertices, got {n}.")
    return int(n)


def _parse_edges(edges, n: int) -> np.ndarray:
    """``edges`` as an ``(n_edges, 2)`` int64 array of vertices in ``0..n-1``, no self-loops."""
    if isinstance(edges, torch.Tensor):
        edges = edges.detach().cpu().numpy()
    try:
        arr = np.asarray(edges)
    except ValueError as err:  # ragged nested sequences
        raise ValueError(f"edges must be a sequence of pairs (i, j), got {edges!r:.80}.") from err
    if arr.size == 0:
        arr = np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(
            f"edges must be a sequence of pairs (i, j), shape (n_edges, 2), got shape "
            f"{arr.shape}."
        )
    if arr.dtype.kind not in "iu":
        raise TypeError(f"edges must hold integer vertex indices, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        i = int(np.flatnonzero(bad.any(1))[0])
        raise ValueError(
            f"edges must hold vertices in 0..{n - 1}, got edge {tuple(arr[i].tolist())} "
            f"(index {i})."
        )
    loops = arr[:, 0] == arr[:, 1]
    if loops.any():
        i = int(np.flatnonzero(loops)[0])
        raise ValueError(
            f"edges must not hold self-loops, got edge {tuple(arr[i].tolist())} (index {i})."
        )
    return arr


def _first_duplicate(keys: np.ndarray) -> int | None:
    """Index of the first row of ``keys`` ``(m, 2)`` equal to an earlier row, or None."""
    seen: set[tuple[int, int]] = set()
    for i, key in enumerate(map(tuple, keys.tolist())):
        if key in seen:
            return i
        seen.add(key)
    return None


def _unreachable(n: int, edges: np.ndarray, start: int, directed: bool) -> list[int]:
    """The vertices that cannot be reached from ``start`` along ``edges``."""
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for i, j in edges.tolist():
        neighbours[i].append(j)
        if not directed:
            neighbours[j].append(i)
    seen = [False] * n
    seen[start] = True
    stack = [start]
    while stack:
        for j in neighbours[stack.pop()]:
            if not seen[j]:
                seen[j] = True
                stack.append(j)
    return [v for v in range(n) if not seen[v]]


def _check_edge_values(z, n_edges: int, name: str = "z") -> torch.Tensor:
    z = as_tensor(z, name)
    if z.dim() < 1 or z.shape[-1] != n_edges:
        raise ValueError(f"{name} must have shape (*batch, {n_edges}), got {tuple(z.shape)}.")
    return z


# --------------------------------------------------------------------------------------------
# the log-partition: subtraction-free elimination in the log domain


def _log_matrix_tree(log_a: torch.Tensor, root: int) -> torch.Tensor:
    r"""``log det`` of the in-degree Laplacian of ``exp(log_a)`` without the root's row and
    column, i.e. the log of the total weight of the arborescences rooted at ``root``.

    ``log_a`` is ``(B, n, n)`` float64, ``log_a[b, i, j]`` the log-weight of ``i -> j``,
    :data:`_ABSENT` where there is no edge (the diagonal is ignored). Every vertex must be reachable
    from the root along present edges. Returns ``(B,)``.
    """
    n = log_a.shape[-1]
    order = torch.tensor([root] + [v for v in range(n) if v != root], device=log_a.device)
    a = log_a.index_select(-2, order).index_select(-1, order)  # the root is vertex 0 now
    # scale column j (the in-edges of j) by its largest weight: det scales by the same factor
    shift = a[..., 1:].amax(dim=-2).detach()
    a = torch.cat([a[..., :1], a[..., 1:] - shift.unsqueeze(-2)], dim=-1)
    log_z = shift.sum(-1)
    for m in range(n - 1, 0, -1):  # eliminate the last vertex, m, of the current m + 1
        into = a[..., :m, m]  # its in-edges, from the root and the vertices left
        out = a[..., m, :m]  # its out-edges
        log_d = torch.logsumexp(into, dim=-1)  # the pivot: m's in-weight
        log_z = log_z + log_d
        if m > 1:
            through = into.unsqueeze(-1) + out.unsqueeze(-2) - log_d[..., None, None]
            a = logaddexp(a[..., :m, :m], through)  # i -> j, directly or via m
            # the diagonal (self-loops i -> m -> i) is never read: a vertex's pivot sums its
            # column without it, and its column and row leave the matrix with it
    return log_z


class _EFMarginalsFn(torch.autograd.Function):
    """``forward(w, tau, log_partition) = grad log_partition(w / tau)`` without a graph; the
    backward is the Hessian-vector product of ``log_partition`` at ``w / tau``, over ``tau``."""

    @staticmethod
    def forward(ctx, w, tau, log_partition):
        ctx.tau, ctx.log_partition = tau, log_partition
        ctx.save_for_backward(w)
        with torch.enable_grad():
            x = (w / tau).detach().requires_grad_(True)
            (mu,) = torch.autograd.grad(log_partition(x).sum(), x)
        return mu

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        with torch.enable_grad():
            x = (w / ctx.tau).detach().requires_grad_(True)
            (mu,) = torch.autograd.grad(ctx.log_partition(x).sum(), x, create_graph=True)
            (hvp,) = torch.autograd.grad(mu, x, grad_outputs=grad)
        return hvp / ctx.tau, None, None


class _TreeStructure(Structure):
    """What spanning trees and arborescences share: the log-partition by the matrix-tree
    theorem, the marginals as its gradient, the ``"ef"`` relaxation and its backward."""

    regularizers = ("ef",)
    n: int
    root: int
    edges: torch.Tensor
    _directed: bool

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.n_edges,)

    @property
    def n_edges(self) -> int:
        """Number of edges of the graph, the length of ``w`` and ``z``."""
        return int(self.edges.shape[0])

    def _flat_index(self, device) -> torch.Tensor:
        """Positions ``i * n + j`` of the edges in a flattened ``(n, n)`` matrix (both
        directions for an undirected graph, the forward ones first)."""
        i, j = self.edges[:, 0], self.edges[:, 1]
        index = i * self.n + j
        if not self._directed:
            index = torch.cat([index, j * self.n + i])
        return index.to(device)

    def _scatter(self, x: torch.Tensor, fill) -> torch.Tensor:
        """``x`` ``(*batch, n_edges)`` into ``(*batch, n, n)`` (symmetric if undirected)."""
        if not self._directed:
            x = torch.cat([x, x], dim=-1)
        index = self._flat_index(x.device).expand(x.shape)
        flat = torch.full(x.shape[:-1] + (self.n * self.n,), fill, dtype=x.dtype,
                          device=x.device)
        return flat.scatter(-1, index, x).reshape(x.shape[:-1] + (self.n, self.n))

    def _log_partition(self, w: torch.Tensor) -> torch.Tensor:
        """``log_partition`` for valid ``w`` ``(*batch, n_edges)``, in w's dtype."""
        batch = w.shape[:-1]
        x = w.reshape(-1, self.n_edges).to(torch.float64)
        log_z = _log_matrix_tree(self._scatter(x, _ABSENT), self.root)
        return log_z.to(w.dtype).reshape(batch)

    def log_partition(self, w: torch.Tensor) -> torch.Tensor:
        r""":math:`\log \sum_T \exp \sum_{e \in T} w_e` over the trees ``T``, shape ``(*batch,)``.

        By the matrix-tree theorem, as a subtraction-free elimination in the log domain (see the
        module docstring): exact to float64 rounding for any spread of ``w``, in ``w``'s dtype,
        differentiable to any order.

        Args:
            w: edge weights ``(*batch, n_edges)``, float32 or float64.
        """
        w = check_weights(w, self.event_shape)
        return self._log_partition(w)

    def marginals(self, w: torch.Tensor) -> torch.Tensor:
        r"""Edge marginals :math:`P(e \in T)` under :math:`p(T) \propto e^{\langle w, z_T
        \rangle}`, shape of ``w``; they sum to ``n - 1``.

        The gradient of ``log_partition`` (autograd); differentiable in ``w`` (its Jacobian is
        the covariance of ``z``).

        Args:
            w: edge weights ``(*batch, n_edges)``, float32 or float64.
        """
        w = check_weights(w, self.event_shape)
        return self._marginals(w)

    def _marginals(self, w: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = w if w.requires_grad else w.detach().requires_grad_(True)
            (mu,) = torch.autograd.grad(self._log_partition(x).sum(), x,
                                        create_graph=w.requires_grad)
        return mu

    def _scaled(self, w: torch.Tensor, tau: float) -> torch.Tensor:
        x = w / tau
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"w / tau overflows at tau = {tau!r} (max |w| = {float(w.abs().max()):.3g}); "
                "use a larger tau."
            )
        return x

    def _relaxed(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        return self._marginals(self._scaled(w, tau))

    def _relaxed_custom(self, w: torch.Tensor, tau: float, reg: str) -> torch.Tensor:
        self._scaled(w, tau)
        return _EFMarginalsFn.apply(w, tau, self._log_partition)


# --------------------------------------------------------------------------------------------
# spanning trees


class SpanningTree(_TreeStructure):
    r"""Spanning trees of a connected undirected graph on vertices ``0..n-1``.

    ``z`` is the 0/1 indicator of a tree's ``n - 1`` edges among the graph's ``n_edges``, and
    ``w`` holds one weight per edge.

    - ``argmax``: the maximum spanning tree (Kruskal's algorithm on the rank order of ``w``;
      ties: the edge listed first is preferred);
    - ``log_partition``: :math:`\log \sum_T \prod_{e \in T} e^{w_e}`, Kirchhoff's matrix-tree
      theorem evaluated by a subtraction-free log-domain elimination (see the module
      docstring);
    - ``marginals``: :math:`P(e \in T)`, its gradient; ``relaxed(w, tau, reg="ef")`` is
      ``marginals(w / tau)``, the argmax over the spanning-tree polytope of
      :math:`\langle w, z \rangle + \tau H(z)` (:math:`H` the exponential family's entropy);
    - ``"custom"`` backward: the Hessian-vector product of ``log_partition`` at ``w / tau``,
      divided by ``tau`` (the covariance of ``z``);
    - ``enumerate``: all spanning trees, by brute force (small graphs).

    Args:
        n: number of vertices, at least 2.
        edges: pairs ``(i, j)``, ``i != j``, each undirected edge once; default: the complete
            graph, ``(i, j)`` for ``i < j`` in row-major order. The graph must be connected.

    Attributes:
        edges: ``(n_edges, 2)`` LongTensor, the edges in the order of ``w``'s last axis.

    Example:
        >>> import torch
        >>> from couplings.structures import SpanningTree
        >>> tree = SpanningTree(3)
        >>> tree.edges.tolist()
        [[0, 1], [0, 2], [1, 2]]
        >>> w = torch.tensor([2.0, 0.0, 1.0])
        >>> tree.argmax(w)
        tensor([1., 0., 1.])
        >>> tree.enumerate().shape  # Cayley: 3 ** (3 - 2) trees
        torch.Size([3, 3])
        >>> tree.marginals(torch.zeros(3))  # each edge is in 2 of the 3 trees
        tensor([0.6667, 0.6667, 0.6667])
        >>> round(tree.relaxed(w, tau=0.5).sum().item(), 4)  # n - 1 edges
        2.0
    """

    _directed = False

    def __init__(self, n: int, edges=None):
        self.n = _check_n(n)
        self.root = 0
        if edges is None:
            edges = [(i, j) for i in range(self.n) for j in range(i + 1, self.n)]
        arr = _parse_edges(edges, self.n)
        dup = _first_duplicate(np.sort(arr, axis=1))
        if dup is not None:
            raise ValueError(
                f"edges must list each undirected edge once, got {tuple(arr[dup].tolist())} "
                f"(index {dup}) twice ((i, j) and (j, i) are the same edge)."
            )
        missing = _unreachable(self.n, arr, 0, directed=False)
        if missing:
            raise ValueError(
                f"SpanningTree needs a connected graph, but vertices {missing} are not connected "
                "to vertex 0 by the edges."
            )
        self.edges = torch.from_numpy(arr)

    def argmax(self, w: torch.Tensor) -> torch.Tensor:
        r"""The maximum spanning tree :math:`\arg\max_T \sum_{e \in T} w_e`, a 0/1 tensor of
        ``w``'s shape, dtype and device with ``n - 1`` ones per problem (no gradient).

        Kruskal's algorithm (scipy) on the ranks of ``w``, so it is exact whatever the values;
        among equal weights the edge listed first is preferred.

        Args:
            w: edge weights ``(*batch, n_edges)``.
        """
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import minimum_spanning_tree

        w = check_weights(w, self.event_shape)
        flat = w.detach().reshape(-1, self.n_edges).cpu().numpy()
        lo = self.edges.min(dim=1).values.numpy()
        hi = self.edges.max(dim=1).values.numpy()
        out = np.zeros(flat.shape, dtype=np.float64)
        ranks = np.arange(1, self.n_edges + 1, dtype=np.float64)
        for b in range(flat.shape[0]):
            order = np.argsort(-flat[b], kind="stable")  # best first; ties: listed first
            rank = np.empty(self.n_edges, dtype=np.float64)
            rank[order] = ranks  # positive: scipy reads 0 as no edge
            graph = coo_matrix((rank, (lo, hi)), shape=(self.n, self.n)).tocsr()
            tree = minimum_spanning_tree(graph).tocoo()
            out[b, order[np.rint(tree.data).astype(np.int64) - 1]] = 1.0
        return torch.from_numpy(out).to(dtype=w.dtype, device=w.device).reshape(w.shape)

    def enumerate(self) -> torch.Tensor:
        """All spanning trees, ``(n_trees, n_edges)`` float64 0/1, in lexicographic order of
        their edge indices.

        Brute force over the :math:`\\binom{n_{edges}}{n - 1}` edge subsets (a subset is a tree
        iff its reduced Laplacian has determinant 1); refused above 2,000,000 subsets.
        """
        k = self.n - 1
        count = math.comb(self.n_edges, k)
        if count > _MAX_CANDIDATES:
            raise ValueError(
                f"enumerating spanning trees checks C({self.n_edges}, {k}) = {count} edge "
                f"subsets, more than {_MAX_CANDIDATES}; use a smaller graph."
            )
        edges = self.edges.numpy()
        subsets = np.fromiter(itertools.chain.from_iterable(
            itertools.combinations(range(self.n_edges), k)), dtype=np.int64,
            count=count * k).reshape(count, k)
        keep = []
        for start in range(0, count, _CHUNK):
            chunk = subsets[start:start + _CHUNK]
            i, j = edges[chunk, 0], edges[chunk, 1]  # (S, k)
            rows = np.arange(len(chunk))[:, None]
            lap = np.zeros((len(chunk), self.n, self.n))
            np.add.at(lap, (rows, i, i), 1.0)
            np.add.at(lap, (rows, j, j), 1.0)
            np.add.at(lap, (rows, i, j), -1.0)
            np.add.at(lap, (rows, j, i), -1.0)
            det = np.linalg.det(lap[:, 1:, 1:])  # the number of spanning trees: 0 or 1
            keep.append(chunk[np.abs(det - 1.0) < 0.5])
        trees = np.concatenate(keep)
        out = np.zeros((len(trees), self.n_edges))
        out[np.arange(len(trees))[:, None], trees] = 1.0
        return torch.from_numpy(out)

    def to_adjacency(self, z: torch.Tensor) -> torch.Tensor:
        """Edge values ``(*batch, n_edges)`` (a tree, or marginals) to the symmetric adjacency
        matrices ``(*batch, n, n)``, zero off the graph's edges; dtype of ``z``.

        Example:
            >>> import torch
            >>> SpanningTree(3).to_adjacency(torch.tensor([1.0, 0.0, 1.0]))
            tensor([[0., 1., 0.],
                    [1., 0., 1.],
                    [0., 1., 0.]])
        """
        z = _check_edge_values(z, self.n_edges)
        return self._scatter(z, 0)

    def __repr__(self) -> str:
        return f"SpanningTree(n={self.n}, n_edges={self.n_edges})"


# --------------------------------------------------------------------------------------------
# arborescences


def _find_cycle(parent: np.ndarray) -> list[int] | None:
    """A cycle of the parent pointers (``parent[root] = -1``) as a list of vertices, or None."""
    n = len(parent)
    state = np.zeros(n, dtype=np.int8)  # 0 unseen, 1 on the current path, 2 done
    for start in range(n):
        path = []
        v = start
        while v != -1 and state[v] == 0:
            state[v] = 1
            path.append(v)
            v = int(parent[v])
        if v != -1 and state[v] == 1:
            return path[path.index(v):]
        state[path] = 2
    return None


def _chu_liu_edmonds(weights: np.ndarray, root: int) -> np.ndarray:
    """Maximum arborescence of the digraph ``weights`` ``(n, n)`` (``-inf``: no edge; every
    vertex reachable from ``root``): the parent of each vertex, ``-1`` for the root.

    Each vertex takes its best in-edge; a cycle among those is contracted into one vertex, with
    the weight of an edge into it reduced by the cycle edge it replaces, and the problem is
    solved again (Chu & Liu, 1965; Edmonds, 1967).
    """
    n = weights.shape[0]
    weights = weights.copy()
    weights[:, root] = -np.inf
    np.fill_diagonal(weights, -np.inf)
    parent = weights.argmax(axis=0)  # ties: the smallest parent
    parent[root] = -1
    cycle = _find_cycle(parent)
    if cycle is None:
        return parent
    in_cycle = np.zeros(n, dtype=bool)
    in_cycle[cycle] = True
    rest = np.flatnonzero(~in_cycle)  # the root is among them
    cyc = np.asarray(cycle)
    m = len(rest)  # the contracted cycle is vertex m of the smaller problem
    small = np.full((m + 1, m + 1), -np.inf)
    small[:m, :m] = weights[np.ix_(rest, rest)]
    leave = weights[np.ix_(cyc, rest)]  # cycle -> rest
    leave_from = leave.argmax(axis=0)
    small[m, :m] = leave.max(axis=0)
    enter = weights[np.ix_(rest, cyc)] - weights[parent[cyc], cyc]  # rest -> cycle, relative
    enter_at = enter.argmax(axis=1)
    small[:m, m] = enter.max(axis=1)
    small_parent = _chu_liu_edmonds(small, int(np.flatnonzero(rest == root)[0]))
    result = parent.copy()  # the cycle's vertices keep their cycle edges but one
    for a, v in enumerate(rest.tolist()):
        p = small_parent[a]
        if p == -1:
            continue
        result[v] = cyc[leave_from[a]] if p == m else rest[p]
    u = small_parent[m]  # the cycle is entered from rest[u], at cycle vertex cyc[enter_at[u]]
    result[cyc[enter_at[u]]] = rest[u]
    return result


class Arborescence(_TreeStructure):
    r"""Spanning arborescences of a directed graph on ``0..n-1`` rooted at ``root``.

    An arborescence gives every vertex but the root exactly one parent, with every vertex
    reachable from the root (a directed spanning tree, edges pointing away from the root).
    ``z`` is the 0/1 indicator of its ``n - 1`` edges among the graph's ``n_edges`` directed
    edges ``(parent, child)``, and ``w`` holds one weight per edge.

    - ``argmax``: the maximum arborescence, by Chu-Liu/Edmonds (:math:`O(n^3)`; ties are
      broken deterministically);
    - ``log_partition``: :math:`\log \sum_T \prod_{e \in T} e^{w_e}`, Tutte's directed
      matrix-tree theorem (in-degree Laplacian without the root's row and column) evaluated by
      a subtraction-free log-domain elimination (see the module docstring);
    - ``marginals``: :math:`P(e \in T)`, its gradient; ``relaxed(w, tau, reg="ef")`` is
      ``marginals(w / tau)``;
    - ``"custom"`` backward: the Hessian-vector product of ``log_partition`` at ``w / tau``,
      divided by ``tau``;
    - ``enumerate``: all arborescences, by brute force over one parent per non-root vertex.

    Args:
        n: number of vertices, at least 2.
        root: the root, in ``0..n-1``.
        edges: directed pairs ``(parent, child)``, each once, none into the root; default: all
            ``(i, j)`` with ``i != j`` and ``j != root``, in row-major order. Every vertex must
            be reachable from the root.

    Attributes:
        edges: ``(n_edges, 2)`` LongTensor, ``(parent, child)`` in the order of ``w``'s last
            axis.

    Example:
        >>> import torch
        >>> from couplings.structures import Arborescence
        >>> arb = Arborescence(3, root=0)
        >>> arb.edges.tolist()
        [[0, 1], [0, 2], [1, 2], [2, 1]]
        >>> w = torch.tensor([1.0, 0.0, 2.0, 0.5])
        >>> arb.argmax(w)  # 0 -> 1 -> 2
        tensor([1., 0., 1., 0.])
        >>> arb.enumerate()
        tensor([[1., 1., 0., 0.],
                [1., 0., 1., 0.],
                [0., 1., 0., 1.]], dtype=torch.float64)
        >>> round(arb.log_partition(torch.zeros(4)).exp().item(), 4)  # 3 arborescences
        3.0
        >>> arb.marginals(torch.zeros(4))
        tensor([0.6667, 0.6667, 0.3333, 0.3333])
    """

    _directed = True

    def __init__(self, n: int, root: int = 0, edges=None):
        self.n = _check_n(n)
        if isinstance(root, bool) or not isinstance(root, int | np.integer):
            raise TypeError(f"root must be an int vertex index, got {root!r}.")
        if not 0 <= root < self.n:
            raise ValueError(f"root must be a vertex in 0..{self.n - 1}, got {root}.")
        self.root = int(root)
        if edges is None:
            edges = [(i, j) for i in range(self.n) for j in range(self.n)
                     if i != j and j != self.root]
        arr = _parse_edges(edges, self.n)
        dup = _first_duplicate(arr)
        if dup is not None:
            raise ValueError(
                f"edges must list each directed edge once, got {tuple(arr[dup].tolist())} "
                f"(index {dup}) twice."
            )
        into_root = arr[:, 1] == self.root
        if into_root.any():
            i = int(np.flatnonzero(into_root)[0])
            raise ValueError(
                f"edges into the root {self.root} are not allowed in an arborescence, got "
                f"{tuple(arr[i].tolist())} (index {i})."
            )
        missing = _unreachable(self.n, arr, self.root, directed=True)
        if missing:
            raise ValueError(
                f"every vertex must be reachable from the root {self.root} along the directed "
                f"edges, but vertices {missing} are not."
            )
        self.edges = torch.from_numpy(arr)

    def argmax(self, w: torch.Tensor) -> torch.Tensor:
        r"""The maximum arborescence :math:`\arg\max_T \sum_{e \in T} w_e`, a 0/1 tensor of
        ``w``'s shape, dtype and device with ``n - 1`` ones per problem (no gradient).

        Chu-Liu/Edmonds, :math:`O(n^3)` per problem, looping over the batch on the CPU.

        Args:
            w: edge weights ``(*batch, n_edges)``.
        """
        w = check_weights(w, self.event_shape)
        flat = w.detach().reshape(-1, self.n_edges).cpu().to(torch.float64).numpy()
        parents, children = self.edges[:, 0].numpy(), self.edges[:, 1].numpy()
        lookup = np.full((self.n, self.n), -1, dtype=np.int64)
        lookup[parents, children] = np.arange(self.n_edges)
        out = np.zeros(flat.shape, dtype=np.float64)
        child = np.array([v for v in range(self.n) if v != self.root])
        for b in range(flat.shape[0]):
            weights = np.full((self.n, self.n), -np.inf)
            weights[parents, children] = flat[b]
            parent = _chu_liu_edmonds(weights, self.root)
            out[b, lookup[parent[child], child]] = 1.0
        return torch.from_numpy(out).to(dtype=w.dtype, device=w.device).reshape(w.shape)

    def enumerate(self) -> torch.Tensor:
        """All arborescences, ``(n_trees, n_edges)`` float64 0/1.

        Brute force over one in-edge per non-root vertex, keeping the choices without a cycle;
        refused above 2,000,000 choices.
        """
        parents, children = self.edges[:, 0].numpy(), self.edges[:, 1].numpy()
        vertices = [v for v in range(self.n) if v != self.root]
        options = [np.flatnonzero(children == v) for v in vertices]
        count = math.prod(len(o) for o in options)
        if count > _MAX_CANDIDATES:
            raise ValueError(
                f"enumerating arborescences checks {count} choices of parents, more than "
                f"{_MAX_CANDIDATES}; use a smaller graph."
            )
        grids = np.meshgrid(*options, indexing="ij")
        choices = np.stack([g.reshape(-1) for g in grids], axis=1)  # (count, n - 1) edges
        keep = []
        for start in range(0, count, _CHUNK):
            chunk = choices[start:start + _CHUNK]
            parent = np.full((len(chunk), self.n), self.root, dtype=np.int64)
            parent[:, vertices] = parents[chunk]
            ancestor = parent.copy()
            for _ in range(self.n):  # n - 1 steps up from any vertex reach the root, unless
                ancestor = np.take_along_axis(parent, ancestor, axis=1)  # it is on a cycle
            keep.append(chunk[(ancestor == self.root).all(axis=1)])
        trees = np.concatenate(keep)
        out = np.zeros((len(trees), self.n_edges))
        out[np.arange(len(trees))[:, None], trees] = 1.0
        return torch.from_numpy(out)

    def to_adjacency(self, z: torch.Tensor) -> torch.Tensor:
        """Edge values ``(*batch, n_edges)`` (an arborescence, or marginals) to adjacency
        matrices ``(*batch, n, n)`` with entry ``[parent, child]``; dtype of ``z``.

        Example:
            >>> import torch
            >>> Arborescence(3).to_adjacency(torch.tensor([1.0, 0.0, 1.0, 0.0]))
            tensor([[0., 1., 0.],
                    [0., 0., 1.],
                    [0., 0., 0.]])
        """
        z = _check_edge_values(z, self.n_edges)
        return self._scatter(z, 0)

    def __repr__(self) -> str:
        return f"Arborescence(n={self.n}, root={self.root}, n_edges={self.n_edges})"
