"""kilt.bm25: BM25 over a passage file, hits and page-level rankings, KILT prediction files."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kilt.bm25 import BM25Retriever
from kilt.eval import evaluate
from kilt.hits import Hit
from kilt.io import read_predictions, read_task_file
from kilt.passages import Passage, PassageStore, write_passages
from kilt.predict import predict_file
from kilt.tasks import find_task_files

CORPUS = [
    Passage(0, "100", "Volcano", "A volcano erupts molten lava from a crater.", 1, 1),
    Passage(1, "200", "River", "The river flows slowly to a wide delta by the sea.", 1, 1),
    Passage(2, "300", "Glacier", "A glacier is a slowly moving river of ice on a mountain.", 1, 1),
    Passage(3, "400", "Desert", "Sand dunes cover the hot desert.", 1, 1),
]


def store_of(passages: list[Passage], path: Path) -> PassageStore:
    path.write_text("".join(json.dumps(vars(p)) + "\n" for p in passages))
    return PassageStore(path, progress=False)


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> BM25Retriever:
    return BM25Retriever.build(store_of(CORPUS, tmp_path_factory.mktemp("hand") / "passages.jsonl"))


def ids(hits: list[Hit]) -> list[int]:
    return [h.passage_id for h in hits]


def test_search_ranks_by_bm25_and_leaves_out_passages_without_query_terms(hand):
    ranked = hand.search(["rivers of ice"], k=4)[0]
    assert ids(ranked) == [2, 1]
    assert ranked[0].score > ranked[1].score > 0


def test_hits_carry_the_passage_read_from_the_store(hand):
    (hit,) = hand.search(["erupting volcanoes"], task="nq", k=1)[0]
    volcano = CORPUS[0]
    assert (hit.passage_id, hit.wikipedia_id, hit.title, hit.text) == (0, volcano.wikipedia_id, volcano.title,
                                                                        volcano.text)


def test_search_stems_and_drops_stopwords(hand):
    assert ids(hand.search(["erupting volcanoes"], k=4)[0]) == [0]
    assert hand.search(["the of and"], k=4) == [[]]


def test_search_caps_k_at_corpus_size(hand):
    ranked = hand.search(["river sand lava"], k=50)[0]
    assert sorted(ids(ranked)) == [0, 1, 2, 3]


def test_search_rejects_bad_arguments(hand):
    with pytest.raises(ValueError, match="k must be >= 1"):
        hand.search(["lava"], k=0)
    with pytest.raises(ValueError, match="got one str"):
        hand.search("lava", k=1)


def test_search_pages_keeps_each_page_once_at_its_best_passage(tmp_path):
    corpus = [
        Passage(0, "1", "Ice", "ice ice ice cold", 1, 1),
        Passage(1, "2", "Snow", "snow and ice", 1, 1),
        Passage(2, "1", "Ice", "ice floes", 1, 1),
        Passage(3, "3", "Rain", "rain water", 1, 1),
    ]
    retriever = BM25Retriever.build(store_of(corpus, tmp_path / "passages.jsonl"))
    assert ids(retriever.search(["ice"], k=3)[0]) == [0, 2, 1]
    assert retriever.search_pages(["ice"], k=2) == [["1", "2"]]


def test_build_rejects_an_empty_corpus(tmp_path):
    with pytest.raises(ValueError, match="passages.jsonl: no passages"):
        BM25Retriever.build(store_of([], tmp_path / "passages.jsonl"))


def test_save_and_load_give_the_same_results(hand, tmp_path):
    hand.save(tmp_path / "bm25")
    hand.save(tmp_path / "bm25")  # overwriting a saved index works
    loaded = BM25Retriever.load(tmp_path / "bm25", hand.store)
    queries = ["rivers of ice", "hot sand", "lava crater"]
    assert loaded.search(queries, k=3) == hand.search(queries, k=3)
    assert loaded.search_pages(queries, k=3) == hand.search_pages(queries, k=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]


def test_load_of_a_folder_without_an_index_says_so(hand, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved BM25Retriever"):
        BM25Retriever.load(tmp_path, hand.store)


def test_load_over_another_passage_file_is_an_error(hand, tmp_path):
    hand.save(tmp_path / "bm25")
    other = store_of(CORPUS[:3], tmp_path / "other.jsonl")
    with pytest.raises(ValueError, match="holds 4 passages but .*other.jsonl has 3"):
        BM25Retriever.load(tmp_path / "bm25", other)


@pytest.fixture(scope="module")
def mini_bm25(mini_kilt, tmp_path_factory) -> BM25Retriever:
    path = tmp_path_factory.mktemp("mini") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    return BM25Retriever.build(PassageStore(path, progress=False))


def bm25_predict(retriever: BM25Retriever, task_file: Path, out: Path, k: int) -> int:
    return predict_file(lambda queries, task: retriever.search_pages(queries, k=k), task_file, out, progress=False)


@pytest.fixture(scope="module")
def dev_scores(mini_kilt, mini_bm25, tmp_path_factory) -> dict[str, dict[str, float]]:
    out = tmp_path_factory.mktemp("predictions")
    scores = {}
    for task, splits in sorted(find_task_files(mini_kilt).items()):
        guess = out / f"{task}.jsonl"
        bm25_predict(mini_bm25, splits["dev"], guess, k=10)
        scores[task] = evaluate(splits["dev"], guess)
    return scores


def test_predictions_rank_k_distinct_pages_per_query(mini_kilt, mini_bm25, tmp_path):
    gold = mini_kilt / "nq-dev-kilt.jsonl"
    n = bm25_predict(mini_bm25, gold, tmp_path / "nq.jsonl", k=5)
    predictions = read_predictions(tmp_path / "nq.jsonl")
    examples = read_task_file(gold)
    assert n == len(examples) == len(predictions)
    assert set(predictions) == {e.id for e in examples}
    for line in open(tmp_path / "nq.jsonl"):
        record = json.loads(line)
        pages = [p["wikipedia_id"] for out in record["output"] for p in out["provenance"]]
        query = next(e.input for e in examples if e.id == record["id"])
        sharing_a_term = {h.wikipedia_id for h in mini_bm25.search([query], k=1000)[0]}
        assert len(pages) == len(set(pages)) == min(5, len(sharing_a_term))


def test_search_pages_looks_deeper_when_one_page_fills_the_first_passages(tmp_path):
    corpus = [Passage(i, "1", "Ice", f"ice cold {i}", 1, 1) for i in range(12)]
    corpus += [Passage(12, "2", "Snow", "snow and ice", 1, 1), Passage(13, "3", "Rain", "rain", 1, 1)]
    retriever = BM25Retriever.build(store_of(corpus, tmp_path / "passages.jsonl"))
    assert retriever.search_pages(["ice"], k=2) == [["1", "2"]]
    assert retriever.search_pages(["ice"], k=3) == [["1", "2"]]


def test_bm25_on_mini_kilt_dev_is_far_above_chance(dev_scores):
    chance = 2 / 82  # two gold pages among the knowledge source's 82, at best
    for task, scores in dev_scores.items():
        assert scores["Rprec"] > 10 * chance, task


def test_mini_kilt_is_not_solved_by_word_overlap(dev_scores):
    rprec = [scores["Rprec"] for scores in dev_scores.values()]
    assert sum(rprec) / len(rprec) < 0.95


# --------------------------------------------------------------------------- no jax
FAKE_JAX_LAX = '''
import numpy as np

CALLS = []


def top_k(x, k):
    CALLS.append(k)
    x = np.asarray(x)
    order = np.argsort(-x, kind="stable")[:k]
    return x[order], order
'''

SEARCH = '''
import sys
from kilt.bm25 import BACKEND, BM25Retriever
from kilt.passages import PassageStore

retriever = BM25Retriever.build(PassageStore(sys.argv[1], progress=False))
assert retriever.search(["rivers of ice"], k=2) and retriever.search_pages(["rivers of ice"], k=2) == [["300", "200"]]
assert retriever.model.backend == BACKEND == "numpy", retriever.model.backend
'''


def run_with_a_fake_jax(tmp_path: Path, script: str, passages: Path) -> None:
    """Run `script` in a fresh interpreter in which `import jax` finds a fake jax whose
    `lax.top_k` counts its calls (so the check means something where jax is not installed)."""
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text("from . import lax\n")
    (tmp_path / "jax" / "lax.py").write_text(FAKE_JAX_LAX)
    root = Path(__file__).resolve().parents[1]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{root}", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(passages)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_bm25_never_imports_jax(tmp_path):
    store_of(CORPUS, tmp_path / "passages.jsonl")
    run_with_a_fake_jax(tmp_path, SEARCH + '''
assert "jax" not in sys.modules, "building or searching BM25 imported jax"
import bm25s.selection
assert not bm25s.selection.JAX_IS_AVAILABLE
import jax  # importable all along: only hidden from bm25s
''', tmp_path / "passages.jsonl")


def test_bm25_selects_top_k_with_numpy_even_when_jax_is_imported(tmp_path):
    store_of(CORPUS, tmp_path / "passages.jsonl")
    run_with_a_fake_jax(tmp_path, '''
import jax.lax
''' + SEARCH + '''
import bm25s.selection
assert bm25s.selection.JAX_IS_AVAILABLE
assert jax.lax.CALLS == [1], f"jax.lax.top_k called by the search: {jax.lax.CALLS}"  # [1]: bm25s's import probe
''', tmp_path / "passages.jsonl")
