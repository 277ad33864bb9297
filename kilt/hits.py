"""Search results as every retriever returns them: `Hit`s, the `SearchBackend` protocol that the
dense retriever and BM25 both implement, and the one page contract every page ranking follows.

The page contract: ``k`` counts pages. A ranked list of passages gives its distinct pages in the
order of each page's best (first-ranked) passage, at most ``k`` of them (`top_pages`). A search
for ``k`` pages (`hits_for_pages`) asks the backend for ``depth`` passages (default
``PASSAGES_PER_PAGE * k``) and, for each query whose passages hold fewer than ``k`` pages while
the backend returned all it was asked for, asks again at double the depth, until the query has
``k`` pages or the backend returns fewer passages than asked (corpus, or scored passages,
exhausted). For an exact search the pages are thus the first ``k`` distinct pages of the full
ranking, whatever the starting depth.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence

from .passages import PassageStore
from .tasks import check_queries

#: passages asked for per wanted page at first: a page often owns several of the top passages
PASSAGES_PER_PAGE = 4


class Hit:
    """One retrieved passage and its score (higher is better).

    Title and text are given, or read from `store` when first asked for: page rankings and
    predictions need only the page id, which the store knows without reading the passage file.
    """

    __slots__ = ("passage_id", "score", "wikipedia_id", "_title", "_text", "_store")

    def __init__(self, passage_id: int, score: float, wikipedia_id: str, title: str | None = None,
                 text: str | None = None, *, store: PassageStore | None = None):
        if store is None and (title is None or text is None):
            raise TypeError("a Hit needs its title and text, or a store to read them from")
        self.passage_id = passage_id
        self.score = score
        self.wikipedia_id = wikipedia_id
        self._title, self._text, self._store = title, text, store

    @property
    def title(self) -> str:
        if self._title is None:
            self._read()
        return self._title  # type: ignore[return-value]

    @property
    def text(self) -> str:
        if self._text is None:
            self._read()
        return self._text  # type: ignore[return-value]

    def _read(self) -> None:
        passage = self._store[self.passage_id]  # type: ignore[index]
        self._title = passage.title if self._title is None else self._title
        self._text = passage.text if self._text is None else self._text

    def _fields(self) -> tuple[Any, ...]:
        return self.passage_id, self.score, self.wikipedia_id, self.title, self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hit) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.passage_id, self.score, self.wikipedia_id))

    def __repr__(self) -> str:
        return f"Hit(passage_id={self.passage_id!r}, score={self.score!r}, wikipedia_id={self.wikipedia_id!r})"


class SearchBackend(Protocol):
    """Anything that returns each query's passage hits, best first (dense `Retriever`, BM25)."""

    def search(self, queries: Sequence[str], task: str | None = None, k: int = 100) -> list[list[Hit]]: ...


def read_hits(store: PassageStore, passage_ids: Sequence[int], scores: Sequence[float]) -> list[Hit]:
    """Hits for ranked passage ids and their scores; page ids come from `store`'s index, title
    and text are read from its passage file only when asked for."""
    return [Hit(int(pid), float(s), store.page_id(pid), store=store) for pid, s in zip(passage_ids, scores)]


def top_page_hits(hits: Iterable[Hit], k: int | None = None) -> list[Hit]:
    """Each distinct page's best passage among `hits` (ranked best first), in that passage's
    rank; at most `k` (None: all). The one page aggregation: every page ranking goes through it."""
    best: dict[str, Hit] = {}
    for hit in hits:
        if k is not None and len(best) >= k:
            break
        best.setdefault(hit.wikipedia_id, hit)
    return list(best.values())


def top_pages(hits: Iterable[Hit], k: int | None = None) -> list[str]:
    """The wikipedia ids of `top_page_hits`: the page ranking of a passage ranking."""
    return [hit.wikipedia_id for hit in top_page_hits(hits, k)]


def hits_for_pages(backend: SearchBackend, queries: Sequence[str], k: int, task: str | None = None,
                   depth: int | None = None) -> list[list[Hit]]:
    """Each query's passage hits, best first, deep enough to hold `k` distinct pages where the
    backend has them: `depth` passages at first (default ``PASSAGES_PER_PAGE * k``), doubled
    for the queries that still lack pages (the policy in this module's docstring)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    depth = PASSAGES_PER_PAGE * k if depth is None else depth
    if depth < 1:
        raise ValueError(f"the passage depth must be >= 1, got {depth}")
    queries = check_queries(queries)
    hits = backend.search(queries, task=task, k=depth)
    todo = [i for i, row in enumerate(hits) if _lacks_pages(row, k, depth)]
    while todo:
        depth *= 2
        for i, row in zip(todo, backend.search([queries[i] for i in todo], task=task, k=depth)):
            hits[i] = row
        todo = [i for i in todo if _lacks_pages(hits[i], k, depth)]
    return hits


def _lacks_pages(row: Sequence[Hit], k: int, depth: int) -> bool:
    """Whether a query's `depth`-deep search holds fewer than `k` pages and may hold more deeper."""
    return len(row) >= depth and len(top_pages(row, k)) < k


def search_pages(backend: SearchBackend, queries: Sequence[str], k: int, task: str | None = None,
                 depth: int | None = None) -> list[list[str]]:
    """Each query's top `k` pages (`hits_for_pages`, then `top_pages`)."""
    return [top_pages(row, k) for row in hits_for_pages(backend, queries, k, task=task, depth=depth)]
