"""``batched_mv``: the kernel domain's and the implicit gradient's matrix-vector products.

Each CPU branch (one matrix, one product per matrix, one multiply-and-sum, chunks of it) is
reached by moving its thresholds, and checked against a float64 ``einsum`` reference, on
contiguous and strided matrices, in both directions, with gradients. These are torch's
branches, so the native kernels (``tests/test_native.py``) are switched off here.
"""

import pytest
import torch

from couplings.solvers import _native, _softmin
from couplings.solvers._softmin import batched_mv


@pytest.fixture(autouse=True)
def torch_branches_only(monkeypatch):
    monkeypatch.setattr(_native, "enabled", False)


def reference(mat, vec, transpose):
    m64, v64 = mat.double(), vec.double()
    return (torch.einsum("bij,bi->bj", m64, v64) if transpose
            else torch.einsum("bij,bj->bi", m64, v64))


BRANCHES = {
    # name: (batch, thresholds (loop_from, chunk)) chosen so that exactly that branch runs
    "single": (1, (1, 1 << 22)),
    "loop": (5, (1, 1 << 22)),
    "multiply-sum": (5, (1 << 14, 1 << 22)),
    "chunks": (5, (1 << 14, 2 * 7 * 6)),  # two matrices per chunk: chunks of 2, 2, 1
}


@pytest.mark.parametrize("branch", sorted(BRANCHES))
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("strided", [False, True])
def test_every_branch_matches_the_reference(monkeypatch, branch, transpose, strided):
    bsz, (loop_from, chunk) = BRANCHES[branch]
    monkeypatch.setattr(_softmin, "_MV_LOOP_FROM", loop_from)
    monkeypatch.setattr(_softmin, "_MV_CHUNK", chunk)
    gen = torch.Generator().manual_seed(0)
    if strided:  # a transposed view, as the implicit gradient passes
        mat = torch.randn(bsz, 6, 7, generator=gen).transpose(-2, -1)
    else:
        mat = torch.randn(bsz, 7, 6, generator=gen)
    vec = torch.randn(bsz, 7 if transpose else 6, generator=gen)
    out = batched_mv(mat, vec, transpose=transpose)
    assert out.shape == (bsz, 6 if transpose else 7)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(mat, vec, transpose),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("branch", sorted(BRANCHES))
def test_gradients_flow_through_every_branch(monkeypatch, branch):
    bsz, (loop_from, chunk) = BRANCHES[branch]
    monkeypatch.setattr(_softmin, "_MV_LOOP_FROM", loop_from)
    monkeypatch.setattr(_softmin, "_MV_CHUNK", chunk)
    gen = torch.Generator().manual_seed(1)
    mat = torch.randn(bsz, 7, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    vec = torch.randn(bsz, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, v: batched_mv(m, v, transpose=True), (mat, vec))


def test_default_thresholds_take_one_product_per_large_matrix(monkeypatch):
    calls = []
    real_linear = torch.nn.functional.linear

    def spy(v, m):
        calls.append(tuple(m.shape))
        return real_linear(v, m)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    side = 1 << 7  # 2^14 entries per matrix: from _MV_LOOP_FROM on
    mat = torch.rand(2, side, side)
    vec = torch.rand(2, side)
    out = batched_mv(mat, vec)
    assert calls == [(side, side), (side, side)]
    torch.testing.assert_close(out.double(), reference(mat, vec, False), rtol=1e-5, atol=1e-4)
    calls.clear()
    small = batched_mv(torch.rand(3, 8, 8), torch.rand(3, 8))  # multiply-and-sum: no product
    assert calls == [] and small.shape == (3, 8)


@pytest.mark.parametrize("transpose", [False, True])
def test_a_matrix_gives_the_same_bits_in_any_batch(transpose):
    """The solver compacts its batch as problems converge: a problem's products must not
    depend on which others share its batch, nor on whether it is alone."""
    gen = torch.Generator().manual_seed(2)
    for side in (12, 1 << 8):  # multiply-and-sum, and one product per matrix
        mat = torch.rand(4, side, side, generator=gen)
        vec = torch.rand(4, side, generator=gen)
        whole = batched_mv(mat, vec, transpose=transpose)
        for keep in ([1, 3], [2]):
            part = batched_mv(mat[keep], vec[keep], transpose=transpose)
            assert torch.equal(part, whole[keep])
