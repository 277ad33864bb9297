"""Search results as every retriever returns them: `Hit`s, and the `SearchBackend` protocol
that the dense retriever and BM25 both implement."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from .passages import PassageStore


@dataclass(frozen=True)
class Hit:
    """One retrieved passage and its score (higher is better)."""

    passage_id: int
    score: float
    wikipedia_id: str
    title: str
    text: str


class SearchBackend(Protocol):
    """Anything that returns each query's passage hits, best first (dense `Retriever`, BM25)."""

    def search(self, queries: Sequence[str], task: str | None = None, k: int = 100) -> list[list[Hit]]: ...


def read_hits(store: PassageStore, passage_ids: Sequence[int], scores: Sequence[float]) -> list[Hit]:
    """Hits for ranked passage ids and their scores, with title and text read from `store`."""
    passages = store.get_many(passage_ids)
    return [Hit(p.id, float(s), p.wikipedia_id, p.title, p.text) for p, s in zip(passages, scores)]
