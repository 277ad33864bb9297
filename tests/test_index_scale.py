"""Indexes toward full KILT (22-36M passages): IVF training samples of at least 39 vectors per
cell, index_type=auto by size and device, IVF-PQ with exact re-ranking (refine), and
memory-mapped loading."""
from __future__ import annotations

import json
import logging
import os
import sys

import faiss
import numpy as np
import pytest

from multitask_retriever import indexing
from multitask_retriever.indexing import Index, IndexConfig

GiB = 2**30


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """4000 unit vectors of dim 32 around 60 centres, and 40 queries from the same mixture."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((60, 32))
    data = centres[rng.integers(0, 60, 4000)] + 0.6 * rng.standard_normal((4000, 32))
    queries = centres[rng.integers(0, 60, 40)] + 0.6 * rng.standard_normal((40, 32))
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return data.astype(np.float32), queries.astype(np.float32)


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries.astype(np.float64) @ data.T.astype(np.float64)), axis=1, kind="stable")[:, :k]


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact)]))


def trained_rows(monkeypatch) -> list[int]:
    """Records the number of vectors each IVF / PQ training sees."""
    rows: list[int] = []
    train = indexing._FaissSearcher.train
    monkeypatch.setattr(indexing._FaissSearcher, "train", lambda self, sample: (rows.append(len(sample)),
                                                                                train(self, sample)))
    return rows


# --------------------------------------------------------------------------- training sample
@pytest.mark.parametrize("n, nlist, sample", [
    (22_000_000, 18_762, 731_718), (25_000_000, 20_000, 780_000), (36_000_000, 24_000, 936_000)])
def test_at_kilt_scale_the_default_sample_has_39_vectors_per_default_cell(n, nlist, sample):
    assert indexing.default_nlist(n) == nlist
    assert indexing.train_sample_size(n, nlist, None) == sample == 39 * nlist


@pytest.mark.parametrize("n", [39, 100, 2000, 50_000, 1_000_000, 5_625_000, 10**8, 10**10])
def test_the_defaults_never_sample_fewer_than_39_vectors_per_cell(n):
    nlist = indexing.default_nlist(n)
    assert indexing.train_sample_size(n, nlist, None) >= 39 * nlist


def test_the_default_sample_is_300000_where_that_is_more_and_all_vectors_where_fewer():
    assert indexing.train_sample_size(1_000_000, 4000, None) == 300_000
    assert indexing.train_sample_size(200_000, 1788, None) == 200_000


def test_an_explicit_train_size_below_39_per_cell_is_refused_naming_it():
    with pytest.raises(ValueError) as excinfo:
        indexing.train_sample_size(25_000_000, 20_000, 300_000)
    assert str(excinfo.value) == ("train_size=300000 samples 15 vectors per IVF cell of 20000; at least 39 are "
                                  "needed: set train_size >= 780000 (or leave it unset), or a smaller ivf_nlist")


def test_an_explicit_train_size_of_39_per_cell_or_all_vectors_is_accepted():
    assert indexing.train_sample_size(25_000_000, 20_000, 780_000) == 780_000
    assert indexing.train_sample_size(1000, 40, 5000) == 1000  # the corpus has fewer than 39 per cell


def test_a_real_build_trains_on_39_vectors_per_cell_above_the_base_sample(clustered, monkeypatch):
    data, _ = clustered
    monkeypatch.setattr(indexing, "DEFAULT_TRAIN_SIZE", 100)  # as 300000 is to 25M vectors
    rows = trained_rows(monkeypatch)
    index = Index.build(data, IndexConfig("ivf", device="cpu"))
    nlist = faiss.extract_index_ivf(index._searcher.index).nlist
    assert (nlist, rows) == (indexing.default_nlist(4000), [39 * nlist])


def test_a_real_build_refuses_a_train_size_below_39_per_cell(clustered, monkeypatch):
    rows = trained_rows(monkeypatch)
    with pytest.raises(ValueError, match=r"^train_size=500 samples 10 vectors per IVF cell of 50; .* >= 1950 "):
        Index.build(clustered[0], IndexConfig("ivf", device="cpu", ivf_nlist=50, train_size=500))
    assert rows == []


def test_an_ivf_nlist_too_large_for_the_corpus_is_warned_not_refused(clustered, caplog):
    with caplog.at_level(logging.WARNING, logger="multitask_retriever.indexing"):
        index = Index.build(clustered[0][:300], IndexConfig("ivf", device="cpu", ivf_nlist=10))
    assert len(index) == 300
    assert "ivf_nlist=10 cells get 30 of the 300 vectors each to train on" in caplog.text


# --------------------------------------------------------------------------- index_type=auto
@pytest.mark.parametrize("n, dim, device, gpu_free, float16, chosen", [
    (1000, 768, "cpu", 0, True, "flat"),
    (5_000_000, 768, "cpu", 0, True, "flat"),  # 15.4 GB of float32 vectors: within 32 GiB
    (25_000_000, 768, "cpu", 0, True, "ivfpq"),  # 76.8 GB
    (25_000_000, 768, "cuda", 139 * GiB, True, "flat"),  # 38.4 GB of float16 on an H200
    (36_000_000, 768, "cuda:0", 139 * GiB, True, "flat"),  # 55.3 GB
    (25_000_000, 768, "cuda", 80 * GiB, True, "flat"),  # 38.4 GB within 3/4 of 80 GiB
    (25_000_000, 768, "cuda", 80 * GiB, False, "ivfpq"),  # 76.8 GB of float32: over 3/4 of 80 GiB
    (25_000_000, 768, "cuda", 40 * GiB, True, "ivfpq"),
    (1000, 768, "cuda", 0, True, "ivfpq"),  # no free GPU memory
], ids=["cpu-small", "cpu-5M", "cpu-25M", "h200-25M", "h200-36M", "80GiB-25M", "80GiB-25M-float32", "40GiB-25M",
        "full-gpu"])
def test_auto_picks_flat_while_the_vectors_fit_the_device(n, dim, device, gpu_free, float16, chosen):
    assert indexing.auto_index_type(n, dim, device, 32 * GiB, gpu_free, float16) == chosen


def test_auto_keeps_flat_up_to_exactly_max_flat_bytes():
    assert indexing.auto_index_type(1000, 8, "cpu", 32_000) == "flat"
    assert indexing.auto_index_type(1001, 8, "cpu", 32_000) == "ivfpq"


def test_auto_is_the_default_and_builds_a_flat_index_for_a_small_corpus(clustered):
    data, queries = clustered
    assert IndexConfig().index_type == "auto"
    index = Index.build(data, IndexConfig(device="cpu"))
    assert index.config.index_type == "flat"
    np.testing.assert_array_equal(index.search(queries, 10)[1], exact_top(data, queries, 10))


def test_auto_builds_ivfpq_over_max_flat_bytes_and_saves_the_type_built(clustered, tmp_path):
    index = Index.build(clustered[0], IndexConfig(device="cpu", max_flat_bytes=4000 * 32 * 4 - 1, pq_m=8))
    assert index.config.index_type == "ivfpq"
    index.save(tmp_path / "index")
    assert json.loads((tmp_path / "index" / "index_meta.json").read_text())["index_type"] == "ivfpq"


def test_auto_keeps_refine_for_ivfpq_only(clustered):
    flat = Index.build(clustered[0], IndexConfig(device="cpu", refine=4))
    ivfpq = Index.build(clustered[0], IndexConfig(device="cpu", refine=4, max_flat_bytes=1, pq_m=8))
    assert (flat.config.index_type, flat.config.refine, ivfpq.config.index_type, ivfpq.config.refine) == (
        "flat", 0, "ivfpq", 4)


def test_auto_with_the_torch_backend_is_flat(clustered):
    index = Index.build(clustered[0], IndexConfig(backend="torch", device="cpu", max_flat_bytes=1))
    assert index.config.index_type == "flat"


# --------------------------------------------------------------------------- refine
def test_refine_only_applies_to_ivfpq():
    with pytest.raises(ValueError, match="^refine re-scores IVF-PQ's candidates: index_type must be 'ivfpq'"):
        IndexConfig("flat", refine=4)


def test_ivfpq_with_refine_recalls_at_least_as_much_as_without(clustered):
    data, queries = clustered
    exact = exact_top(data, queries, 10)
    base = IndexConfig("ivfpq", device="cpu", nprobe=16, pq_m=4, pq_bits=6)
    plain = recall_at(Index.build(data, base).search(queries, 10)[1], exact, 10)
    refined = recall_at(Index.build(data, IndexConfig(**{**vars(base), "refine": 8})).search(queries, 10)[1], exact, 10)
    assert refined >= plain and refined >= 0.95


def test_refined_scores_are_exact_inner_products(clustered):
    data, queries = clustered
    scores, ids = Index.build(data, IndexConfig("ivfpq", device="cpu", pq_m=4, pq_bits=6, refine=4)).search(queries, 10)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, data[ids]), rtol=1e-5, atol=1e-6)


def test_a_refined_index_with_its_base_moved_searches_alike(clustered):
    """The GPU placement moves only IVF-PQ's base, keeping the float vectors (simulated on CPU)."""
    data, queries = clustered
    index = Index.build(data, IndexConfig("ivfpq", device="cpu", pq_m=4, pq_bits=6, refine=4))
    moved = indexing._with_base_moved(index._searcher.index, faiss.clone_index)
    for got, want in zip(moved.search(queries, 10), index._searcher.index.search(queries, 10)):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- memory-mapped loading
@pytest.mark.parametrize("config", [
    IndexConfig("flat", device="cpu"), IndexConfig("hnsw", device="cpu", hnsw_m=8),
    IndexConfig("ivf", device="cpu"), IndexConfig("ivfpq", device="cpu", pq_m=8, pq_bits=6),
    IndexConfig("ivfpq", device="cpu", pq_m=8, pq_bits=6, refine=4),
    IndexConfig("flat", backend="torch", device="cpu"),
], ids=["flat", "hnsw", "ivf", "ivfpq", "ivfpq-refine", "torch"])
def test_a_memory_mapped_index_searches_as_a_loaded_one(tmp_path, clustered, config):
    data, queries = clustered
    Index.build(data, config, ids=np.arange(len(data)) + 3).save(tmp_path / "index")
    mapped = Index.load(tmp_path / "index", mmap=True)
    assert mapped.config == config
    for got, want in zip(mapped.search(queries, 20), Index.load(tmp_path / "index").search(queries, 20)):
        np.testing.assert_array_equal(got, want)


def test_a_memory_mapped_index_can_be_saved_again(tmp_path, clustered):
    data, queries = clustered
    Index.build(data, IndexConfig("flat", device="cpu")).save(tmp_path / "index")
    Index.load(tmp_path / "index", mmap=True).save(tmp_path / "copy")
    for got, want in zip(Index.load(tmp_path / "copy").search(queries, 5), Index.load(tmp_path / "index").search(queries, 5)):
        np.testing.assert_array_equal(got, want)


def _mapped_files() -> str:
    with open("/proc/self/maps", encoding="utf-8") as f:
        return f.read()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(faiss, "IO_FLAG_MMAP_IFC"),
                    reason="reads /proc/self/maps; needs faiss's zero-copy memory mapping")
@pytest.mark.parametrize("index_type", ["flat", "ivfpq"])
def test_a_memory_mapped_index_maps_its_file_instead_of_reading_it(tmp_path, clustered, index_type):
    config = IndexConfig(index_type, device="cpu", pq_m=8, pq_bits=6)
    path = os.path.realpath(Index.build(clustered[0], config).save(tmp_path / "index") / "index.faiss")
    loaded = Index.load(tmp_path / "index")
    assert path not in _mapped_files()
    mapped = Index.load(tmp_path / "index", mmap=True)
    assert path in _mapped_files() and len(mapped) == len(loaded)


# --------------------------------------------------------------------------- saved format
def test_an_index_saved_before_these_options_still_loads(tmp_path, clustered):
    data, queries = clustered
    folder = Index.build(data, IndexConfig("ivf", device="cpu")).save(tmp_path / "index")
    meta = json.loads((folder / "index_meta.json").read_text())
    for name in ("max_flat_bytes", "refine"):
        del meta["config"][name]
    meta["config"]["train_size"] = 300_000
    (folder / "index_meta.json").write_text(json.dumps(meta))
    loaded = Index.load(folder)
    assert (loaded.config.index_type, loaded.config.train_size, loaded.config.refine) == ("ivf", 300_000, 0)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], Index.load(folder, mmap=True).search(queries, 5)[1])
