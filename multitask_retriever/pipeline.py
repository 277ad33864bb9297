"""Retrieve-then-rerank: a retriever's passages for the top k pages (`kilt.hits`'s page
contract), the first `rerank_k` passages reordered by a reranker's scores fused with the
retriever's (`rerank.fusion`), and the top k pages of the final order as KILT predictions."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, overload

from tqdm.auto import tqdm

from kilt.hits import PASSAGES_PER_PAGE, Hit, SearchBackend, hits_for_pages, top_page_hits, top_pages
from kilt.predict import predict_file
from kilt.tasks import check_queries

from .rerank.base import Reranker, default_passage_text
from .rerank.fusion import Fusion


@dataclass
class PipelineResult:
    """One query's final ranking of passages; `rerank_scores[i]` belongs to `hits[i]` for
    i < len(rerank_scores); `k` is the number of pages asked for (None: all)."""

    query: str
    hits: list[Hit]
    rerank_scores: list[float] = field(default_factory=list)
    k: int | None = None

    @property
    def pages(self) -> list[str]:
        """The top `k` wikipedia ids of the final ranking, each at its best passage's rank."""
        return top_pages(self.hits, self.k)

    @property
    def page_hits(self) -> list[Hit]:
        """The best passage of each of the top `k` pages (title, text, score), best first."""
        return top_page_hits(self.hits, self.k)


class Pipeline:
    """`Pipeline(retriever, reranker, fusion)(queries, task, k=100, rerank_k=20)`: the passages
    of each query's top `k` pages, the first `rerank_k` of them reranked.

    `fusion` decides the final order of the reranked head from both scores; the default
    (`Fusion()`, method none) is the reranker's order.
    """

    #: queries whose candidates go to the reranker together
    rerank_queries_per_call = 16

    def __init__(self, retriever: SearchBackend, reranker: Reranker | None = None, fusion: Fusion | None = None,
                 passage_text: Callable[[Hit], str] = default_passage_text, rerank_batch_size: int = 32):
        self.retriever = retriever
        self.reranker = reranker
        self.fusion = fusion or Fusion()
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
        batch = check_queries([queries] if single else queries)
        if k < 1 or rerank_k < 0:
            raise ValueError(f"k must be >= 1 and rerank_k >= 0, got {k} and {rerank_k}")
        found = hits_for_pages(self.retriever, batch, k, task=task, depth=max(PASSAGES_PER_PAGE * k, rerank_k))
        results = [PipelineResult(q, hits, k=k) for q, hits in zip(batch, found)]
        if self.reranker is not None and rerank_k > 0:
            step = self.rerank_queries_per_call
            with tqdm(total=len(results), desc="rerank", unit="query", disable=not progress) as bar:
                for start in range(0, len(results), step):
                    self._rerank(results[start : start + step], rerank_k, task)
                    bar.update(len(results[start : start + step]))
        return results[0] if single else results

    def _rerank(self, results: list[PipelineResult], rerank_k: int, task: str | None) -> None:
        heads = [result.hits[:rerank_k] for result in results]
        scores = self.reranker.rerank_many([r.query for r in results],
                                           [[self.passage_text(h) for h in head] for head in heads],
                                           batch_size=self.rerank_batch_size, tasks=[task] * len(results))
        for result, head, row in zip(results, heads, scores):
            if len(row) != len(head):
                raise RuntimeError(f"reranker returned {len(row)} scores for {len(head)} passages")
            order = self.fusion.order([h.score for h in head], row, task)
            result.hits = [head[i] for i in order] + result.hits[rerank_k:]
            result.rerank_scores = [row[i] for i in order]

    def predict(self, task_file: str | Path, out_path: str | Path, task: str | None = None, k: int = 100,
                rerank_k: int = 20, batch_size: int = 64, max_queries: int = 0, progress: bool = True) -> int:
        """Run the first `max_queries` (0 = all) queries of a KILT task file and write a KILT
        prediction file; `task` defaults to the file name's. Returns the count."""
        def rank_pages(queries: list[str], task: str | None) -> list[list[str]]:
            return [result.pages for result in self(queries, task=task, k=k, rerank_k=rerank_k)]

        return predict_file(rank_pages, task_file, out_path, task=task, batch_size=batch_size,
                            max_queries=max_queries, progress=progress)
