"""Training queries held out from reranker training to fit fusion weights on: split by query
group (a conversation, document or subject never sits on both sides)."""
from __future__ import annotations

from typing import Any

from kilt.io import KiltExample, read_task_file
from kilt.tasks import query_group

from .context import StageContext


class HoldOut:
    """Each task's capped training queries, split once per run into (training, validation)."""

    def __init__(self, context: StageContext):
        self.context = context
        self._splits: dict[str, tuple[list[KiltExample], list[KiltExample]]] = {}

    def _split(self, task: str) -> tuple[list[KiltExample], list[KiltExample]]:
        from ...rerank.fusion import split_validation

        if task not in self._splits:
            c = self.context.config
            queries = read_task_file(self.context.task_files[task]["train"])
            if c.max_train_queries:
                queries = queries[: c.max_train_queries]
            self._splits[task] = split_validation(queries, c.fusion_validation, seed=c.seed,
                                                  minimum=c.fusion_min_validation,
                                                  key=lambda e: query_group(e.id, e.meta, task))
        return self._splits[task]

    def train_queries(self, task: str) -> list[KiltExample]:
        """The queries rerankers train on: the train file less the fusion validation part."""
        return self._split(task)[0]

    def validation_queries(self, task: str) -> list[KiltExample]:
        """Training-file queries held out from reranker training, for fitting the fusion weights."""
        return self._split(task)[1]

    def key(self) -> dict[str, Any]:
        """The grouped hold-out of fusion validation queries, as stage keys hold it (empty when unused)."""
        c = self.context.config
        if not c.fusion_validation:
            return {}
        return {"fusion_validation": c.fusion_validation, "grouped": True,
                **({"fusion_min_validation": c.fusion_min_validation} if c.fusion_min_validation else {})}
