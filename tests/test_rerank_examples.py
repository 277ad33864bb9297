"""`examples_from_search`: the reranker training data both `mtr train-reranker` and
`mtr benchmark-quality` train on, searched per task at a depth and built from the candidates."""
from __future__ import annotations

import pytest

from kilt.bm25 import BM25Retriever
from kilt.io import read_task_file
from kilt.passages import PassageStore, write_passages
from multitask_retriever.rerank.examples import examples_from_candidates, examples_from_search

TASKS = ["nq", "fever"]


@pytest.fixture(scope="module")
def store(mini_kilt, tmp_path_factory) -> PassageStore:
    path = tmp_path_factory.mktemp("corpus") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, words=100)
    return PassageStore(path)


@pytest.fixture(scope="module")
def bm25(store) -> BM25Retriever:
    return BM25Retriever.build(store)


@pytest.fixture(scope="module")
def queries(mini_kilt) -> dict:
    return {t: read_task_file(mini_kilt / f"{t}-train-kilt.jsonl") for t in TASKS}


class Recording:
    """A search backend that records each call's (task, k, number of queries)."""

    def __init__(self, backend):
        self.backend = backend
        self.calls: list[tuple[str | None, int, int]] = []

    def search(self, queries, task=None, k=10):
        self.calls.append((task, k, len(queries)))
        return self.backend.search(queries, task=task, k=k)


def test_the_examples_are_those_of_each_tasks_candidates_in_task_order(store, bm25, queries):
    expected = []
    for task, task_queries in queries.items():
        hits = bm25.search([e.input for e in task_queries], task=task, k=5)
        expected += examples_from_candidates(task_queries, hits, store, num_negatives=2, task=task)
    assert examples_from_search(queries, bm25, store, 5, num_negatives=2) == expected
    assert {e.task for e in expected} == set(TASKS)


def test_each_task_is_searched_at_the_depth_in_batches(store, bm25, queries):
    recording = Recording(bm25)
    batched = examples_from_search(queries, recording, store, 4, batch_size=3)
    sizes = {t: len(q) for t, q in queries.items()}
    assert recording.calls == [(t, 4, min(3, n - i)) for t, n in sizes.items() for i in range(0, n, 3)]
    assert batched == examples_from_search(queries, bm25, store, 4)


def test_a_depth_below_one_is_refused(store, bm25, queries):
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        examples_from_search(queries, bm25, store, 0)
