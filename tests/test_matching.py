"""Tests of the Hungarian ``matching`` against enumeration of all assignments."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from couplings.solvers.matching import Matching, matching

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _brute_force(scores: np.ndarray, sign: float = 1.0) -> tuple[tuple[int, ...], float]:
    """Best injective assignment of rows to columns by enumeration (max of sign * score)."""
    n, m = scores.shape
    rows = np.arange(n)
    best = max(
        itertools.permutations(range(m), n),
        key=lambda cols: sign * scores[rows, list(cols)].sum(),
    )
    return best, float(scores[rows, list(best)].sum())


def _scores(seed: int, shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_equals_enumeration_batched(n):
    scores = _scores(n, (5, n, n))  # (B, n, n)
    res = matching(scores)
    assert isinstance(res, Matching)
    assert res.indices.shape == (5, n) and res.indices.dtype == torch.int64
    assert res.matrix.shape == (5, n, n)
    for k in range(5):
        best, best_value = _brute_force(scores[k].numpy())
        assert tuple(res.indices[k].tolist()) == best, k
        assert (scores[k] * res.matrix[k]).sum().item() == pytest.approx(best_value, rel=1e-12)


@pytest.mark.parametrize(("n", "m"), [(2, 5), (3, 4), (4, 6), (1, 3)])
def test_rectangular_equals_enumeration(n, m):
    scores = _scores(10 * n + m, (3, n, m))  # (B, n, m)
    res = matching(scores)
    assert res.matrix.shape == (3, n, m)
    for k in range(3):
        best, _ = _brute_force(scores[k].numpy())
        assert tuple(res.indices[k].tolist()) == best, k
        assert len(set(res.indices[k].tolist())) == n  # distinct columns
        torch.testing.assert_close(res.matrix[k].sum(1), torch.ones(n, dtype=torch.float64))
        assert bool((res.matrix[k].sum(0) <= 1).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrix_is_permutation_matrix_consistent_with_indices(dtype, device):
    scores = _scores(7, (4, 6, 6), dtype=dtype).to(device)
    indices, matrix = matching(scores)
    assert matrix.dtype == dtype and matrix.device == scores.device
    assert indices.dtype == torch.int64 and indices.device == scores.device
    assert bool(((matrix == 0) | (matrix == 1)).all())
    ones = torch.ones(4, 6, dtype=dtype, device=device)
    torch.testing.assert_close(matrix.sum(-1), ones)
    torch.testing.assert_close(matrix.sum(-2), ones)
    torch.testing.assert_close(matrix.argmax(-1), indices)
    for k in range(4):
        assert sorted(indices[k].tolist()) == list(range(6))


def test_maximizes_not_minimizes():
    scores = _scores(8, (5, 5))
    res = matching(scores)
    best, best_value = _brute_force(scores.numpy(), sign=1.0)
    worst, worst_value = _brute_force(scores.numpy(), sign=-1.0)
    assert best != worst
    assert (scores * res.matrix).sum().item() == pytest.approx(best_value)
    # minimizing a cost is matching its negation
    assert tuple(matching(-scores).indices.tolist()) == worst
    # a known answer: the anti-diagonal carries the large scores
    anti = torch.eye(4).flip(-1) * 10.0 + torch.eye(4)
    assert matching(anti).indices.tolist() == [3, 2, 1, 0]


def test_unbatched_shapes_and_no_gradient():
    scores = _scores(9, (3, 4)).requires_grad_(True)
    res = matching(scores)
    assert res.indices.shape == (3,) and res.matrix.shape == (3, 4)
    assert not res.matrix.requires_grad and not res.indices.requires_grad
    assert res.matrix.dtype == scores.dtype


def test_numpy_input_accepted():
    scores = np.array([[0.0, 2.0], [3.0, 0.0]])
    assert matching(scores).indices.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        ([[1.0, 2.0], [3.0, 4.0]], TypeError, "torch.Tensor"),
        (torch.ones(3, 3, dtype=torch.int64), TypeError, "floating dtype"),
        (torch.ones(3), ValueError, "shape"),
        (torch.ones(2, 2, 3, 3), ValueError, "shape"),
        (torch.ones(4, 3), ValueError, "n <= m"),
        (torch.ones(0, 3), ValueError, "at least one row"),
        (torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), ValueError, "1 non-finite"),
        (torch.tensor([[0.0, float("-inf")], [1.0, 0.0]]), ValueError, "finite"),
    ],
)
def test_bad_inputs_raise(scores, error, match):
    with pytest.raises(error, match=match):
        matching(scores)
