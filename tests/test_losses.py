"""The contrastive loss on hand-computed examples, and its cross-process gather's gradients."""
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multitask_retriever.losses import ContrastiveLoss, contrastive_loss

E = math.e
# two queries, groups of two passages: query 0 -> passages 0,1 ; query 1 -> passages 2,3
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def test_hand_computed_value():
    # scores row 0: [1, 0, 0, 1], target 0; row 1: [0, 0, 1, 1], target 2
    expected = math.log(2 + 2 * E) - 1
    assert contrastive_loss(Q, P).item() == pytest.approx(expected, abs=1e-6)
    assert ContrastiveLoss()(Q, P).item() == pytest.approx(expected, abs=1e-6)


def test_temperature_divides_scores():
    expected = math.log(2 * E ** 2 + 2) - 2  # scores doubled by temperature 0.5
    assert contrastive_loss(Q, P, temperature=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_explicit_targets():
    # query 0 -> passage 3 (score 1 of [1, 0, 0, 1]); query 1 -> passage 0 (score 0 of [0, 0, 1, 1])
    expected = ((math.log(2 + 2 * E) - 1) + math.log(2 + 2 * E)) / 2
    assert contrastive_loss(Q, P, targets=torch.tensor([3, 0])).item() == pytest.approx(expected, abs=1e-6)


def test_exclude_removes_passages_from_the_softmax():
    exclude = torch.tensor([[False, False, False, True], [False, False, False, False]])
    expected = ((math.log(E + 2) - 1) + (math.log(2 + 2 * E) - 1)) / 2
    assert contrastive_loss(Q, P, exclude=exclude).item() == pytest.approx(expected, abs=1e-6)


def test_exclude_may_not_mask_the_positive():
    with pytest.raises(ValueError, match="own positive"):
        contrastive_loss(Q, P, exclude=torch.tensor([[True, False, False, False], [False] * 4]))


def test_gradient_matches_the_softmax_formula():
    q = Q.clone().requires_grad_()
    contrastive_loss(q, P).backward()
    # d/dq0 of the mean loss: (sum_j softmax_j p_j - p_0) / 2 = [-1 / (2e + 2), 1/4]
    assert q.grad[0].tolist() == pytest.approx([-1 / (2 * E + 2), 0.25], abs=1e-6)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="groups"):
        contrastive_loss(Q, P[:3])
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveLoss(temperature=0)


def _worker(rank: int, world: int, init_file: str, queries, passages, exclude, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n_q, n_p = queries.shape[0] // world, passages.shape[0] // world
        q = queries[rank * n_q:(rank + 1) * n_q].clone().requires_grad_()
        p = passages[rank * n_p:(rank + 1) * n_p].clone().requires_grad_()
        local_exclude = exclude[rank * n_q:(rank + 1) * n_q, rank * n_p:(rank + 1) * n_p]
        loss = ContrastiveLoss(temperature=0.7, gather=True)(q, p, local_exclude)
        loss.backward()
        out[rank] = (loss.item(), q.grad.clone(), p.grad.clone())
    finally:
        dist.destroy_process_group()


def test_gather_across_processes_gives_the_global_loss_gradient():
    """Two gloo processes: the mean of their losses is the single-process loss over all queries
    against all passages, and each process's gradient / world size (DDP's average) equals
    the single-process gradient of its own rows."""
    torch.manual_seed(0)
    world, n_q, group, dim = 2, 3, 2, 4
    queries = torch.randn(world * n_q, dim)
    passages = torch.randn(world * n_q * group, dim)
    exclude = torch.zeros(world * n_q, world * n_q * group, dtype=torch.bool)
    exclude[0, 3] = True  # within process 0's block
    q_ref, p_ref = queries.clone().requires_grad_(), passages.clone().requires_grad_()
    reference = contrastive_loss(q_ref, p_ref, temperature=0.7, exclude=exclude)
    reference.backward()

    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        out = manager.dict()
        mp.spawn(_worker, args=(world, os.path.join(tmp, "init"), queries, passages, exclude, out), nprocs=world)
        results = dict(out)
    losses = [results[r][0] for r in range(world)]
    assert sum(losses) / world == pytest.approx(reference.item(), abs=1e-5)
    q_grad = torch.cat([results[r][1] for r in range(world)]) / world
    p_grad = torch.cat([results[r][2] for r in range(world)]) / world
    torch.testing.assert_close(q_grad, q_ref.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p_grad, p_ref.grad, atol=1e-6, rtol=1e-5)
