"""Reranker losses against values worked out by hand from their formulas."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from multitask_retriever.rerank.losses import (
    DistillKL,
    ListwiseCE,
    MarginMSE,
    QueryLikelihood,
    RankNet,
    make_loss,
)

SCORES = [[2.0, 1.0, 0.0], [0.0, 3.0, -1.0]]
TEACHER = [[0.5, 1.5, -1.0], [2.0, 0.0, 1.0]]


def _batch(teacher=TEACHER):
    return SimpleNamespace(teacher_scores=None if teacher is None else torch.tensor(teacher))


def _scores():
    return torch.tensor(SCORES, requires_grad=True)


def _softmax(row, t=1.0):
    exps = [math.exp(x / t) for x in row]
    return [e / sum(exps) for e in exps]


def test_listwise_ce_is_cross_entropy_of_column_zero():
    row_losses = [math.log(sum(math.exp(x) for x in row)) - row[0] for row in SCORES]
    expected = sum(row_losses) / 2
    assert ListwiseCE()(_scores(), _batch(None)).item() == pytest.approx(expected, abs=1e-6)


def test_margin_mse_compares_positive_minus_negative_margins():
    # row 0: student margins (1, 2), teacher (-1, 1.5); row 1: student (-3, 1), teacher (2, 1)
    squared = [(1 - -1) ** 2, (2 - 1.5) ** 2, (-3 - 2) ** 2, (1 - 1) ** 2]
    assert MarginMSE()(_scores(), _batch()).item() == pytest.approx(sum(squared) / 4, abs=1e-6)


def test_distill_kl_is_teacher_to_student_kl_scaled_by_t_squared():
    t = 2.0
    expected = 0.0
    for s_row, t_row in zip(SCORES, TEACHER):
        p, q = _softmax(t_row, t), _softmax(s_row, t)
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = expected / 2 * t * t
    assert DistillKL(temperature=t)(_scores(), _batch()).item() == pytest.approx(expected, abs=1e-6)


def test_distill_kl_is_zero_when_student_matches_teacher():
    assert DistillKL()(torch.tensor(TEACHER), _batch()).item() == pytest.approx(0.0, abs=1e-7)


def test_ranknet_averages_logistic_loss_over_teacher_ordered_pairs():
    # row 0 teacher order 1 > 0 > 2: pairs (1,0) (1,2) (0,2); row 1 order 0 > 2 > 1: (0,2) (0,1) (2,1)
    def pair(s, i, j):
        return math.log1p(math.exp(s[j] - s[i]))

    s0, s1 = SCORES
    losses = [pair(s0, 1, 0), pair(s0, 1, 2), pair(s0, 0, 2), pair(s1, 0, 2), pair(s1, 0, 1), pair(s1, 2, 1)]
    assert RankNet()(_scores(), _batch()).item() == pytest.approx(sum(losses) / 6, abs=1e-6)


def test_ranknet_ignores_teacher_ties():
    scores = torch.tensor([[0.0, 1.0, 5.0]])
    teacher = SimpleNamespace(teacher_scores=torch.tensor([[1.0, 1.0, 0.0]]))
    expected = (math.log1p(math.exp(5.0 - 0.0)) + math.log1p(math.exp(5.0 - 1.0))) / 2
    assert RankNet()(scores, teacher).item() == pytest.approx(expected, abs=1e-6)


def test_ranknet_with_all_ties_is_zero_and_still_differentiable():
    scores = _scores()
    loss = RankNet()(scores, _batch([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(scores.grad, torch.zeros(2, 3))


def test_query_likelihood_is_minus_mean_positive_score():
    scores = torch.tensor([[-1.5, -0.2], [-0.5, -9.0]])
    assert QueryLikelihood()(scores, _batch(None)).item() == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("name", ["lce", "margin-mse", "kl", "ranknet", "query-likelihood"])
def test_every_loss_backpropagates_to_the_scores(name):
    scores = _scores()
    make_loss(name)(scores, _batch()).backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["margin-mse", "kl", "ranknet"])
def test_distillation_losses_need_teacher_scores(name):
    loss = make_loss(name)
    assert loss.needs_teacher
    with pytest.raises(ValueError, match="needs teacher scores"):
        loss(_scores(), _batch(None))


def test_teacher_scores_must_match_the_scores_shape():
    with pytest.raises(ValueError, match=r"shape \(1, 3\)"):
        RankNet()(_scores(), _batch([[1.0, 2.0, 3.0]]))


def test_make_loss_passes_options_and_rejects_unknown_names():
    assert make_loss("kl", temperature=3.0).temperature == 3.0
    with pytest.raises(ValueError, match="unknown reranker loss 'hinge'.*lce"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="temperature must be positive"):
        make_loss("kl", temperature=0.0)


def test_ql_hinge_is_the_pairwise_hinge_plus_the_positives_negative_likelihood():
    scores = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -4.0]], requires_grad=True)
    # hinges max(0, -(s0 - sj)): row 0 -> 0 and 0.5, row 1 -> 2 and 0; mean 0.625; -mean(s0) = 2
    loss = make_loss("ql+hinge")(scores, _batch(None))
    assert loss.item() == pytest.approx(2.625, abs=1e-6)
    loss.backward()
    # d/ds0: -1/4 per active hinge of its row, -1/2 from the likelihood term; d/dsj: +1/4 if its hinge is active
    assert scores.grad.flatten().tolist() == pytest.approx([-0.75, 0.0, 0.25, -0.75, 0.25, 0.0], abs=1e-6)


def test_ql_hinge_margin_widens_every_hinge():
    scores = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -4.0]])
    # margin 1: row 0 -> 0 and 1.5, row 1 -> 3 and 0; mean 1.125; plus 2
    assert make_loss("ql+hinge", margin=1.0)(scores, _batch(None)).item() == pytest.approx(3.125, abs=1e-6)
    with pytest.raises(ValueError, match="at least one negative"):
        make_loss("ql+hinge")(scores[:, :1], _batch(None))


def test_every_rerankers_training_loss_is_registered():
    from multitask_retriever.rerank import METHODS, reranker_class
    from multitask_retriever.rerank.losses import LOSSES, ListwiseQueryLikelihood

    assert {m: reranker_class(m).training_loss for m in METHODS} == {
        **{m: "lce+ql" for m in METHODS if m != "cross-encoder"}, "cross-encoder": "lce"}
    assert all(name in LOSSES for name in ("lce", "lce+ql"))
    assert isinstance(make_loss("lce+ql", ql_weight=0.5), ListwiseQueryLikelihood)
