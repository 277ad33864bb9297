"""kilt.bm25: BM25 over passages, page-level rankings, KILT prediction files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kilt.bm25 import BM25Retriever, bm25_predictions
from kilt.eval import evaluate
from kilt.io import read_predictions, read_task_file
from kilt.passages import Passage, iter_passage_file, write_passages
from kilt.tasks import find_task_files

CORPUS = [
    Passage(10, "100", "Volcano", "A volcano erupts molten lava from a crater.", 1, 1),
    Passage(11, "200", "River", "The river flows slowly to a wide delta by the sea.", 1, 1),
    Passage(12, "300", "Glacier", "A glacier is a slowly moving river of ice on a mountain.", 1, 1),
    Passage(13, "400", "Desert", "Sand dunes cover the hot desert.", 1, 1),
]


@pytest.fixture(scope="module")
def hand() -> BM25Retriever:
    return BM25Retriever.build(CORPUS)


def test_search_ranks_by_bm25_and_leaves_out_passages_without_query_terms(hand):
    ranked = hand.search(["rivers of ice"], k=4)[0]
    assert [pid for pid, _ in ranked] == [12, 11]
    assert ranked[0][1] > ranked[1][1] > 0


def test_search_stems_and_drops_stopwords(hand):
    assert [pid for pid, _ in hand.search(["erupting volcanoes"], k=4)[0]] == [10]
    assert hand.search(["the of and"], k=4) == [[]]


def test_search_caps_k_at_corpus_size(hand):
    ranked = hand.search(["river sand lava"], k=50)[0]
    assert sorted(pid for pid, _ in ranked) == [10, 11, 12, 13]


def test_search_rejects_bad_arguments(hand):
    with pytest.raises(ValueError, match="k must be >= 1"):
        hand.search(["lava"], k=0)
    with pytest.raises(TypeError, match="not one string"):
        hand.search("lava", k=1)


def test_search_pages_keeps_each_page_once_at_its_best_passage():
    corpus = [
        Passage(0, "1", "Ice", "ice ice ice cold", 1, 1),
        Passage(1, "2", "Snow", "snow and ice", 1, 1),
        Passage(2, "1", "Ice", "ice floes", 1, 1),
        Passage(3, "3", "Rain", "rain water", 1, 1),
    ]
    retriever = BM25Retriever.build(corpus)
    assert [pid for pid, _ in retriever.search(["ice"], k=3)[0]] == [0, 2, 1]
    assert retriever.search_pages(["ice"], k=2) == [["1", "2"]]


def test_build_rejects_an_empty_corpus():
    with pytest.raises(ValueError, match="no passages"):
        BM25Retriever.build([])


def test_save_and_load_give_the_same_results(hand, tmp_path):
    hand.save(tmp_path / "bm25")
    hand.save(tmp_path / "bm25")  # overwriting a saved index works
    loaded = BM25Retriever.load(tmp_path / "bm25")
    queries = ["rivers of ice", "hot sand", "lava crater"]
    assert loaded.search(queries, k=3) == hand.search(queries, k=3)
    assert loaded.search_pages(queries, k=3) == hand.search_pages(queries, k=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]


def test_load_of_a_folder_without_an_index_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved BM25Retriever"):
        BM25Retriever.load(tmp_path)


@pytest.fixture(scope="module")
def mini_bm25(mini_kilt, tmp_path_factory) -> BM25Retriever:
    path = tmp_path_factory.mktemp("mini") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    return BM25Retriever.build(iter_passage_file(path))


@pytest.fixture(scope="module")
def dev_scores(mini_kilt, mini_bm25, tmp_path_factory) -> dict[str, dict[str, float]]:
    out = tmp_path_factory.mktemp("predictions")
    scores = {}
    for task, splits in sorted(find_task_files(mini_kilt).items()):
        guess = out / f"{task}.jsonl"
        bm25_predictions(mini_bm25, splits["dev"], guess, k=10)
        scores[task] = evaluate(splits["dev"], guess)
    return scores


def test_predictions_rank_k_distinct_pages_per_query(mini_kilt, mini_bm25, tmp_path):
    gold = mini_kilt / "nq-dev-kilt.jsonl"
    n = bm25_predictions(mini_bm25, gold, tmp_path / "nq.jsonl", k=5)
    predictions = read_predictions(tmp_path / "nq.jsonl")
    examples = read_task_file(gold)
    assert n == len(examples) == len(predictions)
    assert set(predictions) == {e.id for e in examples}
    for line in open(tmp_path / "nq.jsonl"):
        record = json.loads(line)
        pages = [p["wikipedia_id"] for out in record["output"] for p in out["provenance"]]
        query = next(e.input for e in examples if e.id == record["id"])
        sharing_a_term = {mini_bm25._pages.page_id(d) for d, _ in mini_bm25._search_docs([query], 1000)[0]}
        assert len(pages) == len(set(pages)) == min(5, len(sharing_a_term))


def test_search_pages_looks_deeper_when_one_page_fills_the_first_passages():
    corpus = [Passage(i, "1", "Ice", f"ice cold {i}", 1, 1) for i in range(12)]
    corpus += [Passage(12, "2", "Snow", "snow and ice", 1, 1), Passage(13, "3", "Rain", "rain", 1, 1)]
    retriever = BM25Retriever.build(corpus)
    assert retriever.search_pages(["ice"], k=2) == [["1", "2"]]
    assert retriever.search_pages(["ice"], k=3) == [["1", "2"]]


def test_bm25_on_mini_kilt_dev_is_far_above_chance(dev_scores):
    chance = 2 / 82  # two gold pages among the knowledge source's 82, at best
    for task, scores in dev_scores.items():
        assert scores["Rprec"] > 10 * chance, task


def test_mini_kilt_is_not_solved_by_word_overlap(dev_scores):
    rprec = [scores["Rprec"] for scores in dev_scores.values()]
    assert sum(rprec) / len(rprec) < 0.95
