"""The teacher stage: a trained reranker's scores of the retriever's training candidates, which
the cross-encoder's distill stages learn from; a fused teacher (`<reranker>@fused`) gives the
reranker's scores interpolated with the retriever's by the fitted fusion weights."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Protocol

from ..cache import stage_key
from ..systems import check_teacher
from .context import StageContext


class TrainedRerankers(Protocol):
    """What the teacher needs of the reranker stages (`RerankerStages`)."""

    def reranker(self, method: str, retriever_name: str) -> Any: ...
    def reranker_key(self, retriever_name: str, method: str) -> str: ...
    def train_examples(self, retriever_name: str, method: str, per_task: int = 0) -> list: ...
    def data_key(self) -> dict[str, Any]: ...


class FittedFusion(Protocol):
    """What a fused teacher needs of the fusion stage (`FusionStage`)."""

    def fusion(self, retriever_name: str, reranker_name: str, reranker: Any) -> Any: ...


class Retrievers(Protocol):
    """What a fused teacher needs of the retriever stages (`RetrieverStages`)."""

    def retriever(self, name: str) -> Any: ...


log = logging.getLogger("mtr.experiment")


class TeacherStage:
    """Teacher scores per retriever, cached under teachers/<retriever>+<teacher>."""

    def __init__(self, context: StageContext, rerankers: TrainedRerankers, retrievers: Retrievers):
        self.context = context
        self.rerankers = rerankers
        self.retrievers = retrievers
        self.fusion: FittedFusion | None = None  # set once the fusion stage exists (it needs the rerankers)

    def examples(self, retriever_name: str):
        """The training examples the teacher scores: up to `teacher_queries` per task."""
        return self.rerankers.train_examples(retriever_name, "the teacher", self.context.config.teacher_queries)

    def scores(self, retriever_name: str) -> Path:
        """The teacher's scores of the retriever's candidates for up to `teacher_queries` train
        queries per task (a `{"qid", "pid", "score"}` file)."""
        from ...rerank.examples import write_teacher_file

        ctx, c = self.context, self.context.config
        name = check_teacher(c.teacher)
        base, fused, _ = name.partition("@")
        teacher = self.rerankers.reranker(base, retriever_name)
        examples = self.examples(retriever_name)
        combine, fusion_key = self._fused(retriever_name, base, teacher, examples) if fused else (None, {})
        folder = ctx.work / "teachers" / f"{retriever_name}+{name}"
        key = stage_key(teacher=self.rerankers.reranker_key(retriever_name, base), queries=c.teacher_queries,
                        max_train_queries=c.max_train_queries, rerank_k=c.rerank_k, **self.rerankers.data_key(),
                        **fusion_key)
        path = folder / "scores.jsonl"
        with ctx.cache.stage(f"teacher {retriever_name}+{name}"):
            if not ctx.cache.cached(folder, key):
                lines = write_teacher_file(teacher, examples, path, progress=ctx.progress, combine=combine)
                log.info("teacher %s scored %d (query, passage) pairs", name, lines)
                ctx.cache.finish(folder, key)
        return path

    def _fused(self, retriever_name: str, reranker_name: str, reranker: Any,
               examples: list) -> tuple[Callable, dict[str, Any]]:
        """How a fused teacher turns an example's reranker scores into its own, and its key: the
        fitted fusion interpolates them with the retriever's scores of the same passages (a
        positive outside the retriever's top `rerank_k` takes the lowest score there)."""
        if self.fusion is None:
            raise RuntimeError("a fused teacher needs the fusion stage")
        fusion = self.fusion.fusion(retriever_name, reranker_name, reranker)
        found = self._retriever_scores(retriever_name, examples)

        def combine(example: Any, scores: list[float]) -> list[float]:
            mine = found[example.qid]
            floor = min(mine.values(), default=0.0)
            return fusion.scores([mine.get(pid, floor) for pid in example.passage_ids], scores, example.task)

        return combine, {"fusion": dataclasses.asdict(fusion)}

    def _retriever_scores(self, retriever_name: str, examples: list) -> dict[str, dict[str, float]]:
        """Each example's top `rerank_k` passages by the retriever: query id -> passage id -> score."""
        search, depth = self.retrievers.retriever(retriever_name), self.context.config.rerank_k
        found: dict[str, dict[str, float]] = {}
        for task in dict.fromkeys(e.task for e in examples):
            mine = [e for e in examples if e.task == task]
            for i in range(0, len(mine), 64):
                chunk = mine[i : i + 64]
                for example, hits in zip(chunk, search.search([e.query for e in chunk], task=task, k=depth)):
                    found[example.qid] = {str(h.passage_id): h.score for h in hits}
        return found
