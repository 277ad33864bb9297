"""kilt.bm25 at scale: the block-built index equals bm25s's own, numba and numpy search return
the same hits (and bm25s's numpy search's, up to the order of equal scores), saved indexes are
memory-mapped and cached per passage-file content, and query lists can be searched in shards."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import Stemmer

from kilt import bm25_topk
from kilt.bm25 import BM25Config, BM25Retriever, cached_index_dir, merge_shards, search_shard, shard_slice
from kilt.bm25_index import build_matrix
from kilt.io import read_task_file
from kilt.passages import Passage, PassageStore, write_passages
from kilt.tasks import find_task_files

import bm25s  # noqa: E402  (imported by kilt.bm25 first, with jax hidden)

with_numba = pytest.mark.skipif(bm25_topk.available_backend() != "numba", reason="numba is not installed")
WORDS = "ice river sand lava snow rain delta crater glacier dune sea wind stone cloud".split()


def store_of(passages: list[Passage], path: Path) -> PassageStore:
    path.write_text("".join(json.dumps(vars(p)) + "\n" for p in passages))
    return PassageStore(path, progress=False)


def synthetic(n: int, seed: int = 0) -> list[Passage]:
    """`n` passages of 1-12 words from a 14-word vocabulary: many equal scores."""
    rng = random.Random(seed)
    return [Passage(i, str(i // 3), f"P{i // 3}", " ".join(rng.choices(WORDS, k=rng.randint(1, 12))), 1, 1)
            for i in range(n)]


@pytest.fixture(scope="module")
def mini_store(mini_kilt, tmp_path_factory) -> PassageStore:
    path = tmp_path_factory.mktemp("mini") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    return PassageStore(path, progress=False)


@pytest.fixture(scope="module")
def mini_queries(mini_kilt) -> list[str]:
    return [e.input for splits in find_task_files(mini_kilt).values() for e in read_task_file(splits["dev"])]


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory) -> PassageStore:
    return store_of(synthetic(300), tmp_path_factory.mktemp("synthetic") / "passages.jsonl")


SYNTHETIC_QUERIES = ["ice", "river sand", "lava lava crater", "the of", "snow rain wind stone", "glacier sea dune",
                     "unknownword"]  # stopwords only, and an unknown word: no term to score


def bm25s_model(store: PassageStore, config: BM25Config):
    """bm25s's own index of the store, built the way kilt.bm25 did before block building."""
    from bm25s.tokenization import Tokenized, Tokenizer

    tokenizer = Tokenizer(stemmer=Stemmer.Stemmer(config.stemmer), stopwords=config.stopwords)
    ids = list(tokenizer.streaming_tokenize(f"{p.title} {p.text}" for p in store.get_many(range(len(store)))))
    model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method, backend="numpy")
    model.index(Tokenized(ids=ids, vocab=tokenizer.get_vocab_dict()), show_progress=False)
    return model


# --------------------------------------------------------------------------- building
@pytest.mark.parametrize("method", ["lucene", "robertson", "atire"])
@pytest.mark.parametrize("corpus", ["mini_store", "synthetic_store"])
def test_block_built_matrix_equals_bm25s_own_index(corpus, method, request):
    store = request.getfixturevalue(corpus)
    config = BM25Config(method=method)
    ours = BM25Retriever.build(store, config).model
    theirs = bm25s_model(store, config)
    assert ours.vocab_dict == theirs.vocab_dict
    assert ours.scores["num_docs"] == theirs.scores["num_docs"] == len(store)
    for name in ("indptr", "indices"):
        assert ours.scores[name].dtype == theirs.scores[name].dtype
        assert np.array_equal(ours.scores[name], theirs.scores[name]), name
    assert ours.scores["data"].dtype == np.float32
    np.testing.assert_allclose(ours.scores["data"], theirs.scores["data"], rtol=1e-6)


def test_block_size_does_not_change_the_matrix(synthetic_store):
    texts = [f"{p.title} {p.text}" for p in synthetic_store.get_many(range(len(synthetic_store)))]

    def build(block: int):
        tokenizer = bm25s_tokenizer()
        return build_matrix(texts, tokenizer, k1=0.9, b=0.4, method="lucene", block=block)

    (one, vocab_one), (many, vocab_many) = build(10_000), build(7)
    assert vocab_one == vocab_many
    for name in ("data", "indices", "indptr"):
        assert np.array_equal(one[name], many[name]), name


def bm25s_tokenizer():
    from bm25s.tokenization import Tokenizer

    return Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en")


def test_methods_scoring_documents_without_the_query_terms_are_refused(synthetic_store):
    with pytest.raises(ValueError, match="method must be one of robertson, lucene, atire, got 'bm25l'"):
        BM25Retriever.build(synthetic_store, BM25Config(method="bm25l"))


# --------------------------------------------------------------------------- searching
@with_numba
@pytest.mark.parametrize("corpus,queries", [("mini_store", "mini_queries"), ("synthetic_store", None)])
def test_numba_and_numpy_backends_return_the_same_hits(corpus, queries, request):
    store = request.getfixturevalue(corpus)
    queries = request.getfixturevalue(queries) if queries else SYNTHETIC_QUERIES
    numba = BM25Retriever.build(store, backend="numba", threads=2)
    numpy = BM25Retriever(numba.model, store, numba.config, backend="numpy")
    for k in (1, 7, 100):
        fast, slow = numba._search_docs(queries, k), numpy._search_docs(queries, k)
        assert [[d for d, _ in q] for q in fast] == [[d for d, _ in q] for q in slow]
        for a, b in zip(fast, slow):
            np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-6)


@with_numba
def test_thread_count_does_not_change_the_hits(synthetic_store):
    one = BM25Retriever.build(synthetic_store, backend="numba", threads=1)
    two = BM25Retriever(one.model, synthetic_store, one.config, backend="numba", threads=2)
    queries = SYNTHETIC_QUERIES * 5
    assert one._search_docs(queries, 10) == two._search_docs(queries, 10)


@pytest.mark.parametrize("corpus,queries", [("mini_store", "mini_queries"), ("synthetic_store", None)])
def test_hits_are_bm25s_numpy_search_up_to_the_order_of_equal_scores(corpus, queries, request):
    store = request.getfixturevalue(corpus)
    queries = request.getfixturevalue(queries) if queries else SYNTHETIC_QUERIES
    ours = BM25Retriever.build(store)
    model = bm25s_model(store, ours.config)
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
                            show_progress=False)
    docs, scores = model.retrieve(tokens, k=20, show_progress=False, backend_selection="numpy")
    for ranked, row_d, row_s in zip(ours._search_docs(queries, 20), docs, scores):
        theirs = [(int(d), float(s)) for d, s in zip(row_d, row_s) if s > 0]
        np.testing.assert_allclose([s for _, s in ranked], [s for _, s in theirs], rtol=1e-6)
        last = ranked[-1][1] if ranked else 0.0
        assert {d for d, s in ranked if s > last} == {d for d, s in theirs if s > last}


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=with_numba)])
def test_hits_are_the_positive_scores_sorted_by_score_then_passage_id(synthetic_store, backend):
    retriever = BM25Retriever.build(synthetic_store, backend=backend)
    tokens = [retriever.model.get_tokens_ids(q) for q in
              bm25s.tokenize(SYNTHETIC_QUERIES, stopwords="en", stemmer=Stemmer.Stemmer("english"),
                                           return_ids=False, show_progress=False)]
    for k in (1, 5, 50):
        for query, ids, ranked in zip(SYNTHETIC_QUERIES, tokens, retriever._search_docs(SYNTHETIC_QUERIES, k)):
            row = retriever.model.get_scores_from_ids(ids) if ids else np.zeros(len(synthetic_store))
            expected = sorted(((-float(s), d) for d, s in enumerate(row) if s > 0))[:k]
            assert ranked == [(d, -s) for s, d in expected], query


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=with_numba)])
def test_equal_scores_rank_the_lower_passage_id_first_even_at_the_cut_off(tmp_path, backend):
    corpus = [Passage(i, str(i), "Same", "cold ice", 1, 1) for i in range(5)]
    corpus[3] = Passage(3, "3", "Same", "cold ice ice", 1, 1)
    retriever = BM25Retriever.build(store_of(corpus, tmp_path / "passages.jsonl"), backend=backend)
    assert [h.passage_id for h in retriever.search(["ice"], k=3)[0]] == [3, 0, 1]


def test_without_numba_the_numpy_backend_is_used_and_recorded(tmp_path):
    store_of(synthetic(40), tmp_path / "passages.jsonl")
    script = '''
    import json, sys
    sys.modules["numba"] = None  # numba not importable
    from kilt.bm25 import BM25Retriever, CONFIG_FILE
    from kilt.passages import PassageStore
    retriever = BM25Retriever.build(PassageStore(sys.argv[1], progress=False))
    assert retriever.backend == "numpy", retriever.backend
    assert [h.passage_id for h in retriever.search(["ice"], k=2)[0]]
    retriever.save(sys.argv[2])
    print(json.load(open(sys.argv[2] + "/" + CONFIG_FILE))["search_backend"])
    '''
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(tmp_path / "passages.jsonl"),
                           str(tmp_path / "index")], env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root),
                                                           "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["numpy"]


# --------------------------------------------------------------------------- saving, mmap, cache
@pytest.fixture(scope="module")
def saved(synthetic_store, tmp_path_factory) -> tuple[BM25Retriever, Path]:
    retriever = BM25Retriever.build(synthetic_store)
    folder = tmp_path_factory.mktemp("saved") / "bm25"
    retriever.save(folder)
    return retriever, folder


def test_mmap_load_leaves_the_matrix_on_disk_and_searches_the_same(saved):
    retriever, folder = saved
    mapped = BM25Retriever.load(folder, retriever.store, mmap=True)
    assert all(isinstance(mapped.model.scores[n], np.memmap) for n in ("data", "indices", "indptr"))
    assert mapped._search_docs(SYNTHETIC_QUERIES, 10) == retriever._search_docs(SYNTHETIC_QUERIES, 10)


def test_load_memory_maps_by_default_only_large_indexes(saved, monkeypatch):
    retriever, folder = saved
    assert not isinstance(BM25Retriever.load(folder, retriever.store).model.scores["data"], np.memmap)
    monkeypatch.setattr("kilt.bm25.MMAP_BYTES", 1)
    assert isinstance(BM25Retriever.load(folder, retriever.store).model.scores["data"], np.memmap)


def test_saved_config_records_the_search_backend_and_still_loads(saved):
    retriever, folder = saved
    record = json.loads((folder / "kilt_bm25.json").read_text())
    assert record["search_backend"] == bm25_topk.available_backend() and record["k1"] == 0.9
    assert BM25Retriever.load(folder, retriever.store).config == retriever.config


def test_cached_builds_once_per_passage_content_then_loads(tmp_path, monkeypatch):
    passages = synthetic(30)
    first = store_of(passages, tmp_path / "a.jsonl")
    built = BM25Retriever.cached(first, cache_dir=tmp_path / "cache")
    folder = cached_index_dir(first, tmp_path / "cache")
    assert folder.parent == tmp_path / "cache" / "bm25" and (folder / "kilt_bm25.json").is_file()

    monkeypatch.setattr(BM25Retriever, "build", lambda *a, **k: pytest.fail("rebuilt a cached index"))
    copy = store_of(passages, tmp_path / "b.jsonl")  # same content, other path: same index
    again = BM25Retriever.cached(copy, cache_dir=tmp_path / "cache")
    assert cached_index_dir(copy, tmp_path / "cache") == folder
    assert again._search_docs(["ice sand"], 5) == built._search_docs(["ice sand"], 5)


def test_cache_folder_differs_by_passage_content_and_config(tmp_path):
    one = store_of(synthetic(30), tmp_path / "a.jsonl")
    other = store_of(synthetic(30, seed=1), tmp_path / "b.jsonl")
    folders = {cached_index_dir(one, tmp_path), cached_index_dir(other, tmp_path),
               cached_index_dir(one, tmp_path, BM25Config(k1=1.2))}
    assert len(folders) == 3


# --------------------------------------------------------------------------- shards
def test_shards_cover_every_query_once_in_order():
    slices = [shard_slice(10, i, 3) for i in range(3)]
    assert [list(range(10))[s] for s in slices] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="shard_index < num_shards"):
        shard_slice(10, 3, 3)


def test_two_shards_merged_equal_one(saved):
    retriever, _ = saved
    queries = SYNTHETIC_QUERIES * 4
    whole = search_shard(retriever, queries, k=5, shard_index=0, num_shards=1, batch_size=4)
    halves = [search_shard(retriever, queries, k=5, shard_index=i, num_shards=2, batch_size=4) for i in range(2)]
    assert len(halves[0]) == len(halves[1]) == len(queries) // 2
    assert merge_shards(halves) == whole == retriever.search(queries, k=5)
