"""The teacher stage: a trained reranker's scores of the retriever's training candidates, which
the cross-encoder's distill stages learn from."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from ..cache import stage_key
from ..systems import check_teacher
from .context import StageContext


class TrainedRerankers(Protocol):
    """What the teacher needs of the reranker stages (`RerankerStages`)."""

    def reranker(self, method: str, retriever_name: str) -> Any: ...
    def reranker_key(self, retriever_name: str, method: str) -> str: ...
    def train_examples(self, retriever_name: str, method: str, per_task: int = 0) -> list: ...
    def data_key(self) -> dict[str, Any]: ...


log = logging.getLogger("mtr.experiment")


class TeacherStage:
    """Teacher scores per retriever, cached under teachers/<retriever>+<teacher>."""

    def __init__(self, context: StageContext, rerankers: TrainedRerankers):
        self.context = context
        self.rerankers = rerankers

    def examples(self, retriever_name: str):
        """The training examples the teacher scores: up to `teacher_queries` per task."""
        return self.rerankers.train_examples(retriever_name, "the teacher", self.context.config.teacher_queries)

    def scores(self, retriever_name: str) -> Path:
        """The teacher's scores of the retriever's candidates for up to `teacher_queries` train
        queries per task (a `{"qid", "pid", "score"}` file)."""
        from ...rerank.examples import write_teacher_file

        ctx, c = self.context, self.context.config
        name = check_teacher(c.teacher)
        teacher = self.rerankers.reranker(name, retriever_name)
        folder = ctx.work / "teachers" / f"{retriever_name}+{name}"
        key = stage_key(teacher=self.rerankers.reranker_key(retriever_name, name), queries=c.teacher_queries,
                        max_train_queries=c.max_train_queries, rerank_k=c.rerank_k, **self.rerankers.data_key())
        path = folder / "scores.jsonl"
        with ctx.cache.stage(f"teacher {retriever_name}+{name}"):
            if not ctx.cache.cached(folder, key):
                lines = write_teacher_file(teacher, self.examples(retriever_name), path, progress=ctx.progress)
                log.info("teacher %s scored %d (query, passage) pairs", name, lines)
                ctx.cache.finish(folder, key)
        return path
