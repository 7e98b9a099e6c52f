"""The sequence OT losses of Chen et al. 2019: value, bag-of-words optimum, gradients, padding."""

import ot
import pytest
import torch
import torch.nn.functional as F

from couplings.seq_ot import (
    SequenceOTLoss,
    SoftCopyOTLoss,
    sequence_ot_loss,
    soft_copy_ot_loss,
)
from couplings.solvers.ipot import ipot as _ipot

D = torch.float64


def ipot(*args, **kwargs):
    """IPOT at a fixed number of steps (``min_iter = max_iter``), as the losses run it."""
    return _ipot(*args, min_iter=kwargs["max_iter"], **kwargs)


def _problem(seed=0, batch=2, n=4, m=5, vocab=7, dim=3, dtype=D):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, n, vocab, generator=g, dtype=dtype)
    ids = torch.randint(vocab, (batch, m), generator=g)
    emb = torch.randn(vocab, dim, generator=g, dtype=dtype)
    return logits, ids, emb


def _hand_cost(logits, ids, emb):
    x = F.normalize(torch.softmax(logits, -1) @ emb, dim=-1)
    y = F.normalize(emb[ids], dim=-1)
    return 1 - x @ y.transpose(-2, -1)


def test_loss_is_the_transport_cost_of_the_ipot_plan_computed_by_hand():
    logits, ids, emb = _problem()
    loss = soft_copy_ot_loss(logits, ids, emb, beta=0.7, max_iter=20, reduction="none")
    cost = _hand_cost(logits, ids, emb)
    a = torch.full((2, 4), 0.25, dtype=D)
    b = torch.full((2, 5), 0.2, dtype=D)
    plan = ipot(cost, a, b, beta=0.7, max_iter=20).plan
    assert loss.shape == (2,)
    assert torch.allclose(loss, (plan * cost).sum((-2, -1)), atol=1e-12, rtol=0)
    # reductions
    mean = soft_copy_ot_loss(logits, ids, emb, beta=0.7, max_iter=20)
    total = soft_copy_ot_loss(logits, ids, emb, beta=0.7, max_iter=20, reduction="sum")
    assert torch.allclose(mean, loss.mean()) and torch.allclose(total, loss.sum())


def test_loss_approaches_the_exact_ot_cost_of_pot():
    """IPOT's plan converges to the exact plan: with enough iterations the loss is the exact OT
    value (network simplex, POT) on the same cosine cost."""
    logits, ids, emb = _problem(seed=1)
    loss = soft_copy_ot_loss(logits, ids, emb, beta=0.5, max_iter=500, reduction="none")
    cost = _hand_cost(logits, ids, emb)
    for i in range(2):
        exact = ot.emd2(torch.full((4,), 0.25, dtype=D), torch.full((5,), 0.2, dtype=D), cost[i])
        assert abs(float(loss[i]) - float(exact)) < 1e-4, (i, float(loss[i]), float(exact))


def test_one_hot_on_the_reference_in_any_order_is_zero_and_minimal():
    _, ids, emb = _problem(seed=2, batch=3, n=5, m=5, vocab=9, dim=6)
    perm = torch.tensor([4, 2, 0, 3, 1])
    one_hot = 40.0 * F.one_hot(ids[:, perm], 9).to(D)  # the reference words, shuffled
    zero = soft_copy_ot_loss(one_hot, ids, emb, reduction="none")
    assert bool((zero.abs() < 1e-8).all()), zero
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        other = soft_copy_ot_loss(torch.randn(3, 5, 9, generator=g, dtype=D) * 3, ids, emb,
                                  reduction="none")
        assert bool((other > zero + 1e-3).all())
    # the wrong bag of words costs something, even one-hot
    wrong = soft_copy_ot_loss(40.0 * F.one_hot((ids + 1) % 9, 9).to(D), ids, emb,
                              reduction="none")
    assert bool((wrong > 1e-2).all())


def test_loss_is_invariant_to_the_order_of_positions():
    logits, ids, emb = _problem(seed=4, n=6, m=4)
    base = soft_copy_ot_loss(logits, ids, emb, max_iter=30, reduction="none")
    shuffled = soft_copy_ot_loss(logits[:, torch.randperm(6)], ids[:, torch.tensor([2, 0, 3, 1])],
                                 emb, max_iter=30, reduction="none")
    assert torch.allclose(base, shuffled, atol=1e-12, rtol=0)


def test_gradients_flow_to_logits_and_embedding():
    logits, ids, emb = _problem(seed=5)
    logits.requires_grad_(True)
    emb.requires_grad_(True)
    soft_copy_ot_loss(logits, ids, emb).backward()
    for t in (logits, emb):
        assert t.grad is not None and bool(torch.isfinite(t.grad).all())
        assert float(t.grad.abs().sum()) > 1e-6
    # an nn.Embedding is accepted and receives the gradient
    module = torch.nn.Embedding(7, 3).double()
    soft_copy_ot_loss(logits.detach(), ids, module).backward()
    assert module.weight.grad is not None and float(module.weight.grad.abs().sum()) > 0


def test_gradcheck_through_the_unrolled_ipot():
    logits, ids, emb = _problem(seed=6, batch=1, n=3, m=3, vocab=4, dim=3)
    logits.requires_grad_(True)
    emb.requires_grad_(True)

    def f(z, e):
        return soft_copy_ot_loss(z, ids, e, beta=0.5, max_iter=8)

    assert torch.autograd.gradcheck(f, (logits, emb), eps=1e-6, atol=1e-6)


def test_padding_is_dropping_the_padded_tokens():
    logits, ids, emb = _problem(seed=7, batch=2, n=5, m=4)
    logits.requires_grad_(True)
    logits_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    target_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    ids = ids.clone()
    ids[1, 2:] = -1  # padded ids may be anything (here outside the vocabulary)
    # IPOT starts from a x b, so zero weights give the iterates of the smaller problem exactly
    batched = soft_copy_ot_loss(logits, ids, emb, logits_mask=logits_mask,
                                target_mask=target_mask, reduction="none")
    alone0 = soft_copy_ot_loss(logits[0], ids[0], emb)
    alone1 = soft_copy_ot_loss(logits[1, :3], ids[1, :2], emb)
    assert torch.allclose(batched, torch.stack([alone0, alone1]), atol=1e-12, rtol=0)
    batched.sum().backward()
    # padded positions get no gradient (up to log-domain round-off, ~1e-35 here)
    assert float(logits.grad[1, 3:].abs().max()) < 1e-20
    assert float(logits.grad[1, :3].abs().max()) > 0
    # 0/1 integer masks are accepted
    again = soft_copy_ot_loss(logits, ids, emb, logits_mask=logits_mask.long(),
                              target_mask=target_mask.int(), reduction="none")
    assert torch.allclose(again, batched)


def test_sequence_loss_against_source_embeddings():
    logits, ids, emb = _problem(seed=8)
    # shared vocabulary: the same computation as the soft-copy loss on the same ids
    assert torch.allclose(sequence_ot_loss(logits, ids, emb), soft_copy_ot_loss(logits, ids, emb))
    # a separate source vocabulary with a projection, by hand
    g = torch.Generator().manual_seed(9)
    src_emb = torch.randn(11, 2, generator=g, dtype=D, requires_grad=True)
    src = torch.randint(11, (2, 6), generator=g)
    proj = torch.nn.Linear(2, 3).double()
    loss = sequence_ot_loss(logits, src, emb, source_embedding=src_emb, projection=proj,
                            beta=1.0, max_iter=10, reduction="none")
    x = F.normalize(torch.softmax(logits, -1) @ emb, dim=-1)
    y = F.normalize(proj(src_emb[src]), dim=-1)
    cost = 1 - x @ y.transpose(-2, -1)
    plan = ipot(cost, torch.full((2, 4), 0.25, dtype=D), torch.full((2, 6), 1 / 6, dtype=D),
                beta=1.0, max_iter=10).plan
    assert torch.allclose(loss, (plan * cost).sum((-2, -1)), atol=1e-12, rtol=0)
    loss.sum().backward()
    assert float(proj.weight.grad.abs().sum()) > 0 and float(src_emb.grad.abs().sum()) > 0


def test_modules_match_the_functions():
    logits, ids, emb = _problem(seed=10)
    assert torch.equal(SoftCopyOTLoss(beta=1.0, max_iter=10)(logits, ids, emb),
                       soft_copy_ot_loss(logits, ids, emb, beta=1.0, max_iter=10))
    proj = torch.nn.Linear(3, 3).double()
    src_emb = torch.randn(5, 3, dtype=D)
    src = torch.randint(5, (2, 3))
    assert torch.equal(
        SequenceOTLoss(max_iter=10, projection=proj)(logits, src, emb, source_embedding=src_emb),
        sequence_ot_loss(logits, src, emb, source_embedding=src_emb, projection=proj,
                         max_iter=10))
    assert list(SequenceOTLoss(projection=proj).parameters())  # the projection is trained


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_unbatched_shapes(dtype):
    logits, ids, emb = _problem(seed=11, dtype=dtype)
    value = soft_copy_ot_loss(logits[0], ids[0], emb, reduction="none")
    assert value.shape == () and value.dtype == dtype
    assert torch.allclose(value, soft_copy_ot_loss(logits, ids, emb, reduction="none")[0])


def test_float32_zero_weights_and_large_batches_stay_finite():
    logits, ids, emb = _problem(seed=12, batch=16, n=12, m=12, vocab=30, dim=16,
                                dtype=torch.float32)
    mask = torch.arange(12) < torch.randint(1, 13, (16, 1), generator=torch.manual_seed(0))
    logits = (logits * 20).requires_grad_(True)
    loss = soft_copy_ot_loss(logits, ids, emb, logits_mask=mask, target_mask=mask)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize("change, match", [
    (lambda p: {**p, "logits": p["logits"][:, :, :6]}, "vocabulary"),
    (lambda p: {**p, "target_ids": p["target_ids"][:1]}, "batch size"),
    (lambda p: {**p, "target_ids": p["target_ids"][0]}, "shape"),
    (lambda p: {**p, "target_ids": p["target_ids"] + 7}, r"ids in \[7"),
    (lambda p: {**p, "target_ids": p["target_ids"].double()}, "integer"),
    (lambda p: {**p, "logits": p["logits"].clone().fill_(float("nan"))}, "finite"),
    (lambda p: {**p, "embedding": p["embedding"].clone().fill_(float("inf"))}, "finite"),
    (lambda p: {**p, "embedding": p["embedding"].float()}, "dtype"),
    (lambda p: {**p, "logits": p["logits"][0, 0]}, "shape"),
    (lambda p: {**p, "logits_mask": torch.zeros(2, 4, dtype=torch.bool)}, "padding"),
    (lambda p: {**p, "target_mask": torch.ones(2, 3, dtype=torch.bool)}, "shape"),
    (lambda p: {**p, "target_mask": torch.full((2, 5), 2)}, "boolean"),
    (lambda p: {**p, "beta": 0.0}, "beta"),
    (lambda p: {**p, "max_iter": 0}, "max_iter"),
    (lambda p: {**p, "reduction": "avg"}, "reduction"),
])
def test_bad_inputs_raise_clear_errors(change, match):
    logits, ids, emb = _problem()
    params = change({"logits": logits, "target_ids": ids, "embedding": emb})
    args = [params.pop(k) for k in ("logits", "target_ids", "embedding")]
    with pytest.raises((ValueError, TypeError), match=match):
        soft_copy_ot_loss(*args, **params)


def test_sequence_loss_needs_a_projection_between_different_dimensions():
    logits, ids, emb = _problem()
    src_emb = torch.randn(5, 2, dtype=D)
    with pytest.raises(ValueError, match="projection"):
        sequence_ot_loss(logits, torch.randint(5, (2, 3)), emb, source_embedding=src_emb)
    with pytest.raises(ValueError, match="projection must map"):
        sequence_ot_loss(logits, torch.randint(5, (2, 3)), emb, source_embedding=src_emb,
                         projection=torch.nn.Linear(2, 4).double())
    with pytest.raises(ValueError, match="source_embedding has 5 rows"):
        sequence_ot_loss(logits, torch.full((2, 3), 5), emb, source_embedding=src_emb,
                         projection=torch.nn.Linear(2, 3).double())
