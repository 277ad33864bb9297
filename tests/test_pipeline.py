"""The Pipeline: the reranked head's final order fuses both scores, and rerankers score the
candidates of many queries in one call exactly as one query at a time."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kilt.hits import Hit
from multitask_retriever.pipeline import Pipeline
from multitask_retriever.rerank import make_reranker
from multitask_retriever.rerank.base import Reranker
from multitask_retriever.rerank.fusion import Fusion

# retriever scores 0.9, 0.8, 0.5, 0.1 and reranker scores -3, -1, -2, 0; with rerank_k=3 the
# fourth hit is not reranked and stays last, and scores are normalised over the head of three
HITS = [Hit(i, s, f"page{i}", f"t{i}", f"passage {i}") for i, s in enumerate([0.9, 0.8, 0.5, 0.1])]
RERANKER_SCORES = {"passage 0": -3.0, "passage 1": -1.0, "passage 2": -2.0, "passage 3": 0.0}


class _Fixed:
    def search(self, queries, task=None, k=100):
        return [list(HITS[:k]) for _ in queries]


class _Lookup(Reranker):
    method = "lookup"

    def score(self, queries, passages, tasks=None):
        return torch.tensor([[RERANKER_SCORES[p.split("\n")[-1]] for p in row] for row in passages])

    def save_pretrained(self, path: str | Path) -> None: ...

    @classmethod
    def from_pretrained(cls, path, **kwargs): ...

    @classmethod
    def create(cls, model="", **options): ...


def _pages(fusion: Fusion | None) -> list[str]:
    return Pipeline(_Fixed(), _Lookup(), fusion)("q", task="nq", k=4, rerank_k=3).pages


def test_without_fusion_the_reranker_orders_the_head():
    assert _pages(None) == ["page1", "page2", "page0", "page3"]


def test_interpolation_weights_the_normalised_scores():
    # head: retriever 0.9, 0.8, 0.5 -> 1, 0.75, 0; reranker -3, -1, -2 -> 0, 1, 0.5
    # alpha 0.5: hit0 0.5, hit1 0.875, hit2 0.25
    assert _pages(Fusion("interpolate", alpha=0.5)) == ["page1", "page0", "page2", "page3"]
    # alpha 0.1: hit0 0.9, hit1 0.1 + 0.675 = 0.775, hit2 0.05
    assert _pages(Fusion("interpolate", alpha=0.1)) == ["page0", "page1", "page2", "page3"]
    assert _pages(Fusion("interpolate", alpha=0.0)) == ["page0", "page1", "page2", "page3"]


def test_per_task_alphas_follow_the_call_task():
    fusion = Fusion("interpolate", alpha=0.0, task_alphas={"nq": 1.0})
    assert _pages(fusion) == ["page1", "page2", "page0", "page3"]


def test_rrf_adds_reciprocal_ranks():
    # retriever ranks 1, 2, 3; reranker ranks 3, 1, 2: hit0 1/61 + 1/63, hit1 1/62 + 1/61, hit2 1/63 + 1/62
    assert _pages(Fusion("rrf")) == ["page1", "page0", "page2", "page3"]


def test_the_raw_reranker_scores_are_kept_in_final_order():
    result = Pipeline(_Fixed(), _Lookup(), Fusion("interpolate", alpha=0.5))("q", task="nq", k=4, rerank_k=3)
    assert result.rerank_scores == [-1.0, -3.0, -2.0]


QUERIES = ["who wrote hamlet", "a much longer query about the plays of william shakespeare and his life", "x"]
ROWS = [["Hamlet\nA tragedy by Shakespeare.", "Macbeth\nAnother play."],
        ["Shakespeare\nAn English playwright born in Stratford-upon-Avon in 1564.", "Paris\nA city.", "Oslo"],
        []]


@pytest.mark.parametrize("method, model", [("cross-encoder", "tiny_bert"), ("zero-shot", "tiny_gpt2"),
                                           ("qpeft-a", "tiny_gpt2")])
def test_many_queries_in_one_call_score_as_one_at_a_time(request, method, model):
    torch.manual_seed(0)
    reranker = make_reranker(method, str(request.getfixturevalue(model)))
    together = reranker.rerank_many(QUERIES, ROWS, batch_size=2)
    alone = [reranker.rerank(q, row, batch_size=2) for q, row in zip(QUERIES, ROWS)]
    assert [len(row) for row in together] == [2, 3, 0]
    for a, b in zip(together, alone):
        assert a == pytest.approx(b, abs=1e-4)


def test_a_call_with_an_empty_query_is_refused_before_any_scoring(request):
    reranker = make_reranker("cross-encoder", str(request.getfixturevalue("tiny_bert")))
    with pytest.raises(ValueError, match=r"empty query \(number 1"):
        reranker.rerank_many(["q", " "], [["p"], ["p"]])
