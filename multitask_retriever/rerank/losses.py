"""Reranker training losses over groups of scored passages.

Every loss takes the reranker's scores `[B, n]` for B queries with n passages each, where
column 0 is the labelled positive, and the batch (for `teacher_scores [B, n]`, aligned
with the scores, when the loss distils a teacher). Losses are means over the batch, so
their scale does not depend on the batch size.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class TeacherBatch(Protocol):
    """What a loss may read from a batch besides the scores."""

    teacher_scores: torch.Tensor | None


class RerankLoss:
    """A loss over `[B, n]` scores; subclasses set `needs_teacher` when they read teacher scores."""

    name: str = ""
    needs_teacher: bool = False

    def __call__(self, scores: torch.Tensor, batch: TeacherBatch) -> torch.Tensor:
        raise NotImplementedError

    def _teacher(self, scores: torch.Tensor, batch: TeacherBatch) -> torch.Tensor:
        teacher = batch.teacher_scores
        if teacher is None:
            raise ValueError(f"the {self.name} loss needs teacher scores; the batch has none")
        if teacher.shape != scores.shape:
            raise ValueError(f"teacher scores have shape {tuple(teacher.shape)}, scores {tuple(scores.shape)}")
        return teacher.to(device=scores.device, dtype=torch.float32)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class ListwiseCE(RerankLoss):
    """Localized contrastive estimation (LCE): softmax cross-entropy of the positive
    (column 0) against its group of hard negatives."""

    name = "lce"

    def __call__(self, scores: torch.Tensor, batch: TeacherBatch) -> torch.Tensor:
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores.float(), target)


class MarginMSE(RerankLoss):
    """Margin-MSE (Hofstaetter et al. 2020): squared error between the student's and the
    teacher's margins s_0 - s_j for every negative j, averaged over all (query, j)."""

    name = "margin-mse"
    needs_teacher = True

    def __call__(self, scores: torch.Tensor, batch: TeacherBatch) -> torch.Tensor:
        if scores.shape[1] < 2:
            raise ValueError("margin-mse needs at least one negative per group")
        teacher = self._teacher(scores, batch)
        scores = scores.float()
        student_margin = scores[:, :1] - scores[:, 1:]
        teacher_margin = teacher[:, :1] - teacher[:, 1:]
        return F.mse_loss(student_margin, teacher_margin)


class DistillKL(RerankLoss):
    """KL(teacher || student) between the groups' softmax distributions at `temperature`,
    multiplied by temperature**2 so gradient sizes do not shrink as it grows (Hinton et al.)."""

    name = "kl"
    needs_teacher = True

    def __init__(self, temperature: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def __call__(self, scores: torch.Tensor, batch: TeacherBatch) -> torch.Tensor:
        teacher = self._teacher(scores, batch)
        t = self.temperature
        student_log_probs = F.log_softmax(scores.float() / t, dim=1)
        teacher_log_probs = F.log_softmax(teacher / t, dim=1)
        kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
        return kl * t * t


class RankNet(RerankLoss):
    """RankNet (Burges et al. 2005): logistic loss log(1 + exp(s_j - s_i)) for every pair the
    teacher orders i above j, averaged over those pairs; ties are no pair. The distillation
    loss of Pezzuti et al. (2025), whose teachers give rankings."""

    name = "ranknet"
    needs_teacher = True

    def __call__(self, scores: torch.Tensor, batch: TeacherBatch) -> torch.Tensor:
        teacher = self._teacher(scores, batch)
        scores = scores.float()
        ordered = teacher[:, :, None] > teacher[:, None, :]  # [B, i, j]: teacher puts i above j
        if not ordered.any():
            return scores.sum() * 0.0  # keeps the graph: no ordered pair, nothing to learn
        diff = scores[:, :, None] - scores[:, None, :]
        return F.softplus(-diff[ordered]).mean()


class QueryLikelihood(RerankLoss):
    """For LLM rerankers whose score is the mean log-likelihood of the query's tokens given
    the passage: minimise the negative of the positive's score, i.e. maximise the
    likelihood of the query given its positive passage (negatives are ignored)."""

    name = "query-likelihood"

    def __call__(self, scores: torch.Tensor, batch: TeacherBatch) -> torch.Tensor:
        return -scores[:, 0].float().mean()


class ListwiseQueryLikelihood(RerankLoss):
    """The LLM rerankers' training objective: softmax cross-entropy of the positive (column 0)
    over its group, plus `ql_weight` times the negative query log-likelihood given the
    positive. Q-PEFT's released code pairs the positive's likelihood with a pairwise hinge
    against negatives instead."""

    name = "lce+ql"

    def __init__(self, ql_weight: float = 1.0, temperature: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.ql_weight = ql_weight
        self.temperature = temperature

    def __call__(self, scores: torch.Tensor, batch: TeacherBatch) -> torch.Tensor:
        scores = scores.float()
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        lce = F.cross_entropy(scores / self.temperature, target)
        return lce - self.ql_weight * scores[:, 0].mean()


LOSSES: dict[str, type[RerankLoss]] = {
    cls.name: cls for cls in (ListwiseCE, MarginMSE, DistillKL, RankNet, QueryLikelihood, ListwiseQueryLikelihood)
}


def distill_losses() -> list[str]:
    """Names of the losses that learn from teacher scores."""
    return [name for name, cls in LOSSES.items() if cls.needs_teacher]


def make_loss(name: str, **kwargs) -> RerankLoss:
    """The loss registered as `name` (lce, margin-mse, kl, ranknet, query-likelihood, lce+ql)."""
    if name not in LOSSES:
        raise ValueError(f"unknown reranker loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)


class QueryLikelihoodHinge(RerankLoss):
    """The training loss of Q-PEFT's released code (Peng et al. 2024, "pairwise_v2"): for every
    (positive, negative) pair of a query, a hinge max(0, margin - (s_pos - s_neg)) on the query
    likelihood scores, plus the negative query likelihood given the positive; each term is a
    mean over the pairs (so the second equals minus the positives' mean score). The released
    code pairs one positive with each negative and uses margin 0."""

    name = "ql+hinge"

    def __init__(self, margin: float = 0.0):
        if margin < 0:
            raise ValueError(f"margin must be non-negative, got {margin}")
        self.margin = margin

    def __call__(self, scores: torch.Tensor, batch: TeacherBatch) -> torch.Tensor:
        if scores.shape[1] < 2:
            raise ValueError("ql+hinge needs at least one negative per group")
        scores = scores.float()
        hinge = F.relu(self.margin - (scores[:, :1] - scores[:, 1:])).mean()
        return hinge - scores[:, 0].mean()


LOSSES[QueryLikelihoodHinge.name] = QueryLikelihoodHinge
