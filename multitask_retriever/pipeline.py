"""Retrieve-then-rerank: a retriever's top-k passages, the first `rerank_k` reordered by a
reranker, and page-level KILT predictions from the final order."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, overload

from tqdm.auto import tqdm

from kilt.hits import Hit, SearchBackend
from kilt.predict import predict_file

from .rerank.base import Reranker, default_passage_text


@dataclass
class PipelineResult:
    """One query's final ranking; `rerank_scores[i]` belongs to `hits[i]` for i < len(rerank_scores)."""

    query: str
    hits: list[Hit]
    rerank_scores: list[float] = field(default_factory=list)

    @property
    def pages(self) -> list[str]:
        """Wikipedia ids in order of their first passage in the final ranking."""
        return list(dict.fromkeys(h.wikipedia_id for h in self.hits))


class Pipeline:
    """`Pipeline(retriever, reranker)(queries, task, k=100, rerank_k=20)`."""

    def __init__(self, retriever: SearchBackend, reranker: Reranker | None = None,
                 passage_text: Callable[[Hit], str] = default_passage_text, rerank_batch_size: int = 32):
        self.retriever = retriever
        self.reranker = reranker
        self.passage_text = passage_text
        self.rerank_batch_size = rerank_batch_size

    @overload
    def __call__(self, queries: str, task: str | None = ..., k: int = ..., rerank_k: int = ...,
                 progress: bool = ...) -> PipelineResult: ...
    @overload
    def __call__(self, queries: Sequence[str], task: str | None = ..., k: int = ..., rerank_k: int = ...,
                 progress: bool = ...) -> list[PipelineResult]: ...

    def __call__(self, queries, task=None, k=100, rerank_k=20, progress=False):
        single = isinstance(queries, str)
        batch = [queries] if single else list(queries)
        if rerank_k > k:
            raise ValueError(f"rerank_k ({rerank_k}) cannot exceed k ({k})")
        for i, q in enumerate(batch):
            if not q or not q.strip():
                raise ValueError(f"query {i} is empty")
        results = [PipelineResult(q, hits) for q, hits in zip(batch, self.retriever.search(batch, task=task, k=k))]
        if self.reranker is not None and rerank_k > 0:
            for result in tqdm(results, desc="rerank", unit="query", disable=not progress):
                self._rerank(result, rerank_k)
        return results[0] if single else results

    def _rerank(self, result: PipelineResult, rerank_k: int) -> None:
        head, tail = result.hits[:rerank_k], result.hits[rerank_k:]
        scores = self.reranker.rerank(result.query, [self.passage_text(h) for h in head],
                                      batch_size=self.rerank_batch_size)
        if len(scores) != len(head):
            raise RuntimeError(f"reranker returned {len(scores)} scores for {len(head)} passages")
        order = sorted(range(len(head)), key=lambda i: -scores[i])  # stable: ties keep retrieval order
        result.hits = [head[i] for i in order] + tail
        result.rerank_scores = [scores[i] for i in order]

    def predict(self, task_file: str | Path, out_path: str | Path, task: str | None = None, k: int = 100,
                rerank_k: int = 20, batch_size: int = 64, max_queries: int = 0, progress: bool = True) -> int:
        """Run the first `max_queries` (0 = all) queries of a KILT task file and write a KILT
        prediction file; `task` defaults to the file name's. Returns the count."""
        def rank_pages(queries: list[str], task: str | None) -> list[list[str]]:
            return [result.pages for result in self(queries, task=task, k=k, rerank_k=rerank_k)]

        return predict_file(rank_pages, task_file, out_path, task=task, batch_size=batch_size,
                            max_queries=max_queries, progress=progress)
