"""BM25 as a search backend that returns the same `Hit`s as the dense `Retriever`, so the
Pipeline, reranker training and the experiment runner treat sparse and dense alike."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kilt.bm25 import BM25Retriever
from kilt.passages import PassageStore, iter_passage_file

from .retriever import Hit


class BM25Backend:
    """`search(queries, task, k) -> list[list[Hit]]` over a passage file with BM25."""

    def __init__(self, bm25: BM25Retriever, store: PassageStore):
        self.bm25 = bm25
        self.store = store

    @classmethod
    def build(cls, store: PassageStore) -> "BM25Backend":
        return cls(BM25Retriever.build(iter_passage_file(store.path)), store)

    @classmethod
    def load(cls, path: str | Path, store: PassageStore) -> "BM25Backend":
        return cls(BM25Retriever.load(path), store)

    def save(self, path: str | Path) -> None:
        self.bm25.save(path)

    def search(self, queries: Sequence[str], task: str | None = None, k: int = 100) -> list[list[Hit]]:
        """BM25 ignores the task: it has no prompts."""
        out = []
        for ranked in self.bm25.search(list(queries), k=k):
            passages = self.store.get_many([pid for pid, _ in ranked])
            out.append([Hit(p.id, float(score), p.wikipedia_id, p.title, p.text)
                        for p, (_, score) in zip(passages, ranked)])
        return out
