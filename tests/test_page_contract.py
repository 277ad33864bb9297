"""The one page contract (kilt.hits): k counts pages everywhere; a ranked list of passages gives
its distinct pages at their best passage's rank (`top_pages`); a search for k pages goes deeper,
doubling, until it has k pages or the backend runs out (`hits_for_pages`); hits read passage
text only when asked; and `mtr retrieve`, `mtr bm25` and `mtr pipeline --rerank-k 0` write the
same prediction files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kilt.hits import Hit, hits_for_pages, read_hits, search_pages, top_page_hits, top_pages
from kilt.io import read_predictions
from kilt.passages import Passage, PassageStore
from multitask_retriever.cli import main as mtr
from multitask_retriever.pipeline import Pipeline
from multitask_retriever.rerank.base import Reranker


def hit(pid: int, page: str, score: float = 0.0) -> Hit:
    return Hit(pid, score, page, "", "")


class Ranking:
    """A backend whose every query has `pages[i]` as the page of its passage ranked i; records
    the (queries, depth) of each search."""

    def __init__(self, pages: dict[str, list[str]]):
        self.pages = pages
        self.calls: list[tuple[list[str], int]] = []

    def search(self, queries, task=None, k=100):
        self.calls.append((list(queries), k))
        return [[Hit(i, -i, page, "", str(i)) for i, page in enumerate(self.pages[q][:k])] for q in queries]


# --------------------------------------------------------------------------- top_pages
def test_each_page_comes_once_at_its_best_passage():
    hits = [hit(0, "a"), hit(1, "a"), hit(2, "b"), hit(3, "c"), hit(4, "b")]
    assert top_pages(hits) == ["a", "b", "c"]


def test_k_counts_pages_not_passages():
    hits = [hit(0, "a"), hit(1, "a"), hit(2, "b"), hit(3, "c")]
    assert top_pages(hits, 2) == ["a", "b"]
    assert top_pages(hits, 10) == ["a", "b", "c"]


def test_each_page_hit_is_the_pages_best_passage():
    hits = [hit(0, "a", 0.9), hit(1, "b", 0.8), hit(2, "a", 0.7), hit(3, "c", 0.6)]
    assert [(h.passage_id, h.score) for h in top_page_hits(hits, 2)] == [(0, 0.9), (1, 0.8)]


# --------------------------------------------------------------------------- hits_for_pages
def test_the_search_starts_at_four_passages_per_page():
    backend = Ranking({"q": list("abcdefghij")})
    assert search_pages(backend, ["q"], 2) == [["a", "b"]]
    assert backend.calls == [(["q"], 8)]


def test_a_query_short_of_pages_is_searched_again_at_double_depth():
    backend = Ranking({"one page first": ["a"] * 10 + ["b", "c"], "many pages": list("abcdefgh")})
    pages = search_pages(backend, ["one page first", "many pages"], 2, depth=4)
    assert pages == [["a", "b"], ["a", "b"]]
    assert backend.calls == [(["one page first", "many pages"], 4), (["one page first"], 8),
                             (["one page first"], 16)]


def test_the_search_stops_when_the_backend_has_no_more_passages():
    backend = Ranking({"q": ["a", "a", "a", "b", "b"]})
    hits = hits_for_pages(backend, ["q"], 3, depth=2)
    assert [h.passage_id for h in hits[0]] == [0, 1, 2, 3, 4]
    assert top_pages(hits[0], 3) == ["a", "b"]
    assert [depth for _, depth in backend.calls] == [2, 4, 8]


def test_bad_arguments_are_refused():
    backend = Ranking({"q": ["a"]})
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        hits_for_pages(backend, ["q"], 0)
    with pytest.raises(ValueError, match="got one str"):
        hits_for_pages(backend, "q", 1)


# --------------------------------------------------------------------------- lazy text
def test_hits_read_the_passage_file_only_for_their_text(tmp_path, monkeypatch):
    path = tmp_path / "passages.jsonl"
    path.write_text("".join(json.dumps(vars(Passage(i, str(10 + i // 2), f"T{i}", f"text {i}", 1, 1))) + "\n"
                            for i in range(4)))
    store = PassageStore(path, progress=False)
    reads: list[int] = []
    read = store._read
    monkeypatch.setattr(store, "_read", lambda f, pid: reads.append(pid) or read(f, pid))
    hits = read_hits(store, [3, 0, 2], [0.9, 0.5, 0.1])
    assert top_pages(hits) == ["11", "10"] and reads == []
    assert (hits[0].title, hits[0].text, hits[0].score) == ("T3", "text 3", 0.9)
    assert reads == [3]


def test_a_hit_without_its_text_needs_a_store_to_read_it_from():
    with pytest.raises(TypeError, match="title and text, or a store"):
        Hit(0, 1.0, "10")


# --------------------------------------------------------------------------- the pipeline
class Reverse(Reranker):
    """Scores a passage by its text, the passage's rank: the head comes out reversed."""

    method = "reverse"

    def score(self, queries, passages, tasks=None):
        return torch.tensor([[float(p) for p in row] for row in passages])

    def save_pretrained(self, path) -> None: ...

    @classmethod
    def create(cls, model="", **options): ...

    @classmethod
    def from_pretrained(cls, path, **kwargs): ...


def test_the_pipeline_without_reranking_gives_the_pages_of_search_pages():
    backend = Ranking({"q": ["a"] * 12 + list("bcdef")})
    assert Pipeline(backend)("q", k=3, rerank_k=0).pages == search_pages(backend, ["q"], 3)[0] == ["a", "b", "c"]


def test_reranked_hits_give_at_most_k_pages_by_the_same_rule():
    backend = Ranking({"q": ["a", "a", "b", "c", "d"]})
    result = Pipeline(backend, Reverse())("q", k=2, rerank_k=3)
    assert [h.passage_id for h in result.hits] == [2, 1, 0, 3, 4]
    assert result.pages == top_pages(result.hits, 2) == ["b", "a"]


def test_the_reranked_head_may_be_deeper_than_k_pages():
    backend = Ranking({"q": list("abcdefgh")})
    result = Pipeline(backend, Reverse())("q", k=1, rerank_k=6)
    assert backend.calls == [(["q"], 6)] and result.pages == ["f"]


# --------------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def built(tiny_bert, mini_kilt, tmp_path_factory) -> dict[str, Path]:
    """A passage file of the mini KILT and a flat index of tiny BERT's vectors."""
    folder = tmp_path_factory.mktemp("built")
    paths = {"passages": folder / "passages.jsonl", "index": folder / "index", "encoder": tiny_bert}
    assert mtr(["chunk", str(mini_kilt / "knowledge_source.jsonl"), str(paths["passages"])]) == 0
    assert mtr(["encode", "--encoder", str(tiny_bert), "--passages", str(paths["passages"]), "--out-dir",
                str(folder / "shards"), "--batch-size", "16", "--device", "cpu"]) == 0
    assert mtr(["index", "--shards", str(folder / "shards"), "--out", str(paths["index"]),
                "--index-type", "flat", "--device", "cpu"]) == 0
    return paths


def _pages_per_query(path: Path) -> list[int]:
    return [len(pages) for pages in read_predictions(path).values()]


def test_retrieve_and_pipeline_without_reranking_write_the_same_file(built, mini_kilt, tmp_path, k=5):
    queries = mini_kilt / "nq-dev-kilt.jsonl"
    common = ["--encoder", str(built["encoder"]), "--index", str(built["index"]), "--passages",
              str(built["passages"]), "--queries", str(queries), "--k", str(k), "--device", "cpu"]
    assert mtr(["retrieve", *common, "--out", str(tmp_path / "retrieve.jsonl")]) == 0
    assert mtr(["pipeline", *common, "--rerank-k", "0", "--out", str(tmp_path / "pipeline.jsonl")]) == 0
    assert (tmp_path / "pipeline.jsonl").read_bytes() == (tmp_path / "retrieve.jsonl").read_bytes()
    assert _pages_per_query(tmp_path / "retrieve.jsonl") == [k] * 10  # 10 queries; 82 pages to find


def test_bm25_and_the_bm25_pipeline_write_the_same_file(built, mini_kilt, tmp_path):
    queries = mini_kilt / "nq-dev-kilt.jsonl"
    assert mtr(["bm25", str(built["passages"]), str(queries), "--out-dir", str(tmp_path), "--k", "5"]) == 0
    assert mtr(["pipeline", "--passages", str(built["passages"]), "--queries", str(queries), "--k", "5",
                "--rerank-k", "0", "--out", str(tmp_path / "pipeline.jsonl")]) == 0
    assert (tmp_path / "pipeline.jsonl").read_bytes() == (tmp_path / "nq-dev-bm25.jsonl").read_bytes()
