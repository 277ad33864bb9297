"""Sharded corpus encoding and the passage Index (flat, HNSW, IVF, IVF-PQ, torch backend)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from multitask_retriever import encoding, indexing
from multitask_retriever.encoder import DualEncoder
from multitask_retriever.encoding import encode_corpus, read_manifest, shard_paths
from multitask_retriever.indexing import Index, IndexConfig

DIM = 32


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1000, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((20, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """2000 vectors around 40 centres, and 50 queries near random vectors."""
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((40, DIM)) * 3
    data = centres[rng.integers(0, 40, 2000)] + rng.standard_normal((2000, DIM))
    queries = data[rng.integers(0, 2000, 50)] + 0.3 * rng.standard_normal((50, DIM))
    return data.astype(np.float32), queries.astype(np.float32)


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def write_passage_file(path: Path, n: int) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "wikipedia_id": str(1000 + i // 3), "title": f"Page {i // 3}",
                                "text": f"passage number {i} " + "word " * (i % 7), "start_paragraph_id": 1,
                                "end_paragraph_id": 1}) + "\n")
    return path


class SeededEncoder:
    """Encoder test double: each passage's vector is drawn from a generator seeded by its id."""

    def __init__(self, dim: int = 8, name: str = "seeded"):
        self.dim = dim
        self.config = SimpleNamespace(model_name_or_path=name)
        self.calls = 0

    def encode_passages(self, passages, batch_size=64):
        self.calls += 1
        return np.stack([np.random.default_rng(p.id).standard_normal(self.dim) for p in passages]).astype(np.float32)


class CrashingEncoder:
    """Delegates to a real encoder and raises on call number `crash_on` (a simulated crash)."""

    def __init__(self, encoder, crash_on: int):
        self.encoder, self.crash_on, self.calls = encoder, crash_on, 0
        self.dim, self.config = encoder.dim, encoder.config

    def encode_passages(self, passages, batch_size=64):
        self.calls += 1
        if self.calls == self.crash_on:
            raise RuntimeError("simulated crash")
        return self.encoder.encode_passages(passages, batch_size=batch_size)


def read_shards(out_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    manifest = read_manifest(out_dir)
    files = [shard_paths(out_dir, i) for i in range(manifest["num_shards"])]
    return np.concatenate([np.load(v) for v, _ in files]), np.concatenate([np.load(i) for _, i in files])


# --------------------------------------------------------------------------- IndexConfig
@pytest.mark.parametrize("kwargs, message", [
    ({"index_type": "lsh"}, "index_type"),
    ({"metric": "l2"}, "metric"),
    ({"backend": "torch", "index_type": "hnsw"}, "torch backend"),
    ({"nprobe": 0}, "nprobe"),
])
def test_index_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IndexConfig(**kwargs)


def test_default_nlist_and_pq_m():
    assert indexing.default_nlist(1_000_000) == 4000
    assert indexing.default_nlist(2000) == 51  # at least 39 training vectors per cell
    assert indexing.default_pq_m(768) == 96
    assert indexing.default_pq_m(36) == 4


# --------------------------------------------------------------------------- search
def test_flat_equals_brute_force(vectors, queries):
    scores, ids = Index.build(vectors, IndexConfig("flat", device="cpu")).search(queries, 10)
    want_scores, want_ids = brute_force(vectors, queries, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_search_returns_given_passage_ids(vectors, queries):
    ids = np.arange(len(vectors)) * 10 + 7
    _, found = Index.build(vectors, IndexConfig(device="cpu"), ids=ids).search(queries, 5)
    np.testing.assert_array_equal(found, ids[brute_force(vectors, queries, 5)[1]])


def test_missing_results_have_id_minus_one_and_score_minus_inf(vectors, queries):
    scores, ids = Index.build(vectors[:3], IndexConfig(device="cpu")).search(queries[:2], 5)
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert sorted(ids[0, :3]) == [0, 1, 2]


def test_float16_vectors_are_indexed(vectors, queries):
    half = vectors.astype(np.float16)
    _, ids = Index.build(half, IndexConfig(device="cpu")).search(queries, 10)
    np.testing.assert_array_equal(ids, brute_force(half.astype(np.float32), queries, 10)[1])


def test_torch_backend_equals_faiss_flat(vectors, queries, monkeypatch):
    monkeypatch.setattr(indexing, "_TORCH_SCORE_ELEMENTS", 20 * 64)  # one query and 568 passages per matmul
    faiss_scores, faiss_ids = Index.build(vectors, IndexConfig(device="cpu")).search(queries, 10)
    torch_index = Index.build(vectors, IndexConfig(backend="torch", device="cpu"))
    assert not torch_index.on_gpu
    scores, ids = torch_index.search(queries, 10)
    np.testing.assert_array_equal(ids, faiss_ids)
    np.testing.assert_allclose(scores, faiss_scores, atol=1e-5)


def test_torch_backend_pads_missing_results(vectors, queries):
    scores, ids = Index.build(vectors[:3], IndexConfig(backend="torch", device="cpu")).search(queries[:1], 5)
    assert (ids[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()


def test_torch_backend_sizes_query_batches_to_its_memory_budget(vectors, queries, monkeypatch):
    index = Index.build(vectors, IndexConfig(backend="torch", device="cpu"))
    searcher = index._searcher
    monkeypatch.setattr(searcher, "_memory_budget", lambda: 1000 * 8 * 6 + 6 * (32 * 8 + 10 * 32))
    assert searcher._batch_shape(20, 10) == (6, 1000)  # 6 queries against all 1000 vectors at once
    monkeypatch.setattr(searcher, "_memory_budget", lambda: 300 * 8 + 32 * 8 + 10 * 32)
    assert searcher._batch_shape(20, 10) == (1, 300)  # too little room for one query: fewer vectors
    scores, ids = index.search(queries, 10)
    want_scores, want_ids = brute_force(vectors, queries, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def _half_precision_searcher(vectors: np.ndarray) -> "indexing._TorchSearcher":
    """The torch backend as CUDA runs it by default (float16 vectors), here on CPU."""
    searcher = indexing._TorchSearcher(vectors.shape[1], "cpu", float16=True)
    assert searcher.dtype == torch.float32  # float16 applies on CUDA only ...
    searcher.dtype = torch.float16  # ... but the code path is the same on CPU
    searcher.add(vectors)
    return searcher


def test_half_precision_search_ranks_as_float32_except_near_ties(clustered):
    data, queries = clustered
    scores, ids = _half_precision_searcher(data).search(queries, 10)
    exact = queries.astype(np.float64) @ data.T.astype(np.float64)
    _, want_ids = brute_force(data, queries, 10)
    # re-scored in float32: the inner products with the float16-rounded vectors
    rounded = queries.astype(np.float64) @ data.T.astype(np.float16).astype(np.float64)
    assert scores.dtype == np.float32 and (np.diff(scores, axis=1) <= 0).all()
    np.testing.assert_allclose(scores, np.take_along_axis(rounded, ids, 1), rtol=1e-6, atol=1e-4)
    # a rank differs only where the two passages' exact scores lie within half precision's error
    near = 2 ** -9 * (np.abs(queries) @ np.abs(data).T).max(1, keepdims=True)
    gap = np.abs(np.take_along_axis(exact, ids, 1) - np.take_along_axis(exact, want_ids, 1))
    assert (gap <= near).all()
    assert (ids == want_ids).mean() > 0.9


def test_half_precision_search_pads_missing_results(vectors, queries):
    scores, ids = _half_precision_searcher(vectors[:3]).search(queries[:2], 5)
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert sorted(ids[0, :3]) == [0, 1, 2]


APPROXIMATE = {
    "hnsw": (IndexConfig("hnsw", device="cpu", hnsw_m=16), 0.95),
    "ivf": (IndexConfig("ivf", device="cpu", nprobe=2), 0.9),
    "ivfpq": (IndexConfig("ivfpq", device="cpu", nprobe=8, pq_m=16, pq_bits=5), 0.5),
}


@pytest.mark.parametrize("name", APPROXIMATE)
def test_approximate_index_recall_at_10(clustered, name):
    data, queries = clustered
    config, bound = APPROXIMATE[name]
    _, exact = brute_force(data, queries, 10)
    _, found = Index.build(data, config).search(queries, 10)
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall >= bound


def test_query_dim_mismatch_is_an_error(vectors):
    with pytest.raises(ValueError, match="query dim 16 != index dim 32"):
        Index.build(vectors, IndexConfig(device="cpu")).search(np.zeros((1, 16), np.float32), 3)


def test_build_rejects_duplicate_ids(vectors):
    with pytest.raises(ValueError, match="unique"):
        Index.build(vectors[:3], IndexConfig(device="cpu"), ids=[1, 1, 2])


# --------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("config", [
    IndexConfig("flat", device="cpu"), IndexConfig("hnsw", device="cpu", hnsw_m=8),
    IndexConfig("ivf", device="cpu"), IndexConfig("ivfpq", device="cpu", pq_m=8, pq_bits=4),
    IndexConfig("flat", backend="torch", device="cpu"),
], ids=["flat", "hnsw", "ivf", "ivfpq", "torch"])
def test_save_load_round_trip(tmp_path, clustered, config):
    data, queries = clustered
    index = Index.build(data, config, ids=np.arange(len(data)) + 5, encoder_name="enc")
    index.save(tmp_path / "index")
    loaded = Index.load(tmp_path / "index", expected_dim=DIM)
    assert (loaded.config, loaded.encoder_name, len(loaded)) == (config, "enc", len(data))
    for got, want in zip(loaded.search(queries, 10), index.search(queries, 10)):
        np.testing.assert_array_equal(got, want)


def test_load_overrides_search_parameters(tmp_path, clustered):
    data, queries = clustered
    Index.build(data, IndexConfig("ivf", device="cpu", nprobe=1)).save(tmp_path / "index")
    loaded = Index.load(tmp_path / "index", nprobe=1000)
    assert loaded.config.nprobe == 1000
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], brute_force(data, queries, 10)[1])
    with pytest.raises(TypeError, match="pq_m"):
        Index.load(tmp_path / "index", pq_m=4)


def test_load_truncated_index_file_names_it(tmp_path, vectors):
    folder = Index.build(vectors, IndexConfig(device="cpu")).save(tmp_path / "index")
    path = folder / "index.faiss"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*truncated"):
        Index.load(folder)


def test_load_corrupt_index_file_names_it(tmp_path, vectors):
    folder = Index.build(vectors, IndexConfig(device="cpu")).save(tmp_path / "index")
    path = folder / "index.faiss"
    data = bytearray(path.read_bytes())
    data[:4] = b"junk"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(f"{path}: cannot read the FAISS index")):
        Index.load(folder)


def test_load_rejects_ids_that_do_not_match_the_metadata(tmp_path, vectors):
    folder = Index.build(vectors, IndexConfig(device="cpu")).save(tmp_path / "index")
    np.save(folder / "ids.npy", np.arange(len(vectors), dtype=np.int64)[::-1].copy())
    with pytest.raises(ValueError, match="ids.npy: does not match"):
        Index.load(folder)


def test_load_checks_the_encoder_dim(tmp_path, vectors):
    folder = Index.build(vectors, IndexConfig(device="cpu")).save(tmp_path / "index")
    with pytest.raises(ValueError, match="index dim 32 != encoder dim 16"):
        Index.load(folder, expected_dim=16)


def test_load_without_metadata_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="index_meta.json"):
        Index.load(tmp_path)


def test_a_save_that_fails_midway_leaves_the_previous_index_loadable(tmp_path, vectors, monkeypatch):
    ids = np.arange(len(vectors)) + 100
    folder = Index.build(vectors, IndexConfig(device="cpu"), ids=ids).save(tmp_path / "index")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def write_half_then_die(index, path):
        Path(path).write_bytes(b"half an index")
        raise RuntimeError("killed")

    monkeypatch.setattr(indexing.faiss, "write_index", write_half_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        Index.build(vectors[:10], IndexConfig(device="cpu")).save(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no temporary folder left
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    np.testing.assert_array_equal(Index.load(folder).ids, ids)


def test_a_save_removes_the_temporary_files_of_killed_saves(tmp_path, vectors):
    folder = Index.build(vectors, IndexConfig(device="cpu")).save(tmp_path / "index")
    (folder / ".index.faiss.12345.tmp").write_bytes(b"left by an earlier version's save")
    (tmp_path / ".index.99999999.abcd_123.tmp").mkdir()  # a killed save's folder (no such process)
    (tmp_path / ".index.99999999.abcd_123.tmp" / "index.faiss").write_bytes(b"partial")
    Index.build(vectors[:10], IndexConfig(device="cpu")).save(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["index"]
    assert sorted(p.name for p in folder.iterdir()) == ["ids.npy", "index.faiss", "index_meta.json"]
    assert len(Index.load(folder)) == 10


def test_a_save_refuses_a_folder_holding_other_files(tmp_path, vectors):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: holds files that are not part of an index "
                                                   "(manifest.json); save an index to a folder of its own")):
        Index.build(vectors, IndexConfig(device="cpu")).save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


# --------------------------------------------------------------------------- encode_corpus
def test_encode_corpus_writes_shards_and_manifest(tmp_path):
    passages = write_passage_file(tmp_path / "passages.jsonl", 50)
    encoder = SeededEncoder()
    out = encode_corpus(encoder, passages, tmp_path / "shards", shard_size=20, batch_size=4, progress=False)
    manifest = read_manifest(out)
    assert (manifest["num_passages"], manifest["num_shards"], manifest["dim"]) == (50, 3, 8)
    assert (manifest["encoder"], manifest["dtype"], manifest["shard_size"]) == ("seeded", "float32", 20)
    assert [len(np.load(shard_paths(out, i)[1])) for i in range(3)] == [20, 20, 10]
    vectors, ids = read_shards(out)
    np.testing.assert_array_equal(ids, np.arange(50))
    np.testing.assert_array_equal(vectors, SeededEncoder().encode_passages([SimpleNamespace(id=i) for i in range(50)]))


def test_encode_corpus_float16(tmp_path):
    passages = write_passage_file(tmp_path / "passages.jsonl", 10)
    out = encode_corpus(SeededEncoder(), passages, tmp_path / "shards", shard_size=4, dtype="float16", progress=False)
    vectors, _ = read_shards(out)
    assert vectors.dtype == np.float16 and read_manifest(out)["dtype"] == "float16"


def test_encode_corpus_resumes_byte_identical(tmp_path, tiny_bert):
    passages = write_passage_file(tmp_path / "passages.jsonl", 40)
    encoder = DualEncoder.from_pretrained(tiny_bert)
    reference = encode_corpus(encoder, passages, tmp_path / "reference", shard_size=10, batch_size=4,
                              progress=False)
    crashing = CrashingEncoder(encoder, crash_on=3)  # shard_size 10 < 4 * 16: one call per shard
    with pytest.raises(RuntimeError, match="simulated crash"):
        encode_corpus(crashing, passages, tmp_path / "resumed", shard_size=10, batch_size=4, progress=False)
    finished = sorted(p.name for p in (tmp_path / "resumed").glob("shard-*.npy"))
    assert finished == ["shard-00000.ids.npy", "shard-00000.npy", "shard-00001.ids.npy", "shard-00001.npy"]
    assert not read_manifest(tmp_path / "resumed", require_complete=False)["complete"]

    resuming = CrashingEncoder(encoder, crash_on=0)
    encode_corpus(resuming, passages, tmp_path / "resumed", shard_size=10, batch_size=4, progress=False)
    assert resuming.calls == 2  # shards 2 and 3 only
    for i in range(4):
        for got, want in zip(shard_paths(tmp_path / "resumed", i), shard_paths(reference, i)):
            assert got.read_bytes() == want.read_bytes()
    assert read_manifest(tmp_path / "resumed")["num_passages"] == 40


def test_encode_corpus_skips_finished_shards(tmp_path):
    passages = write_passage_file(tmp_path / "passages.jsonl", 30)
    out = encode_corpus(SeededEncoder(), passages, tmp_path / "shards", shard_size=10, progress=False)
    again = SeededEncoder()
    encode_corpus(again, passages, out, shard_size=10, progress=False)
    assert again.calls == 0


@pytest.mark.parametrize("change, field, value", [
    ({"encoder": SeededEncoder(name="other")}, "encoder", "other"),
    ({"encoder": SeededEncoder(dim=4)}, "dim", 4),
    ({"shard_size": 7}, "shard_size", 7),
    ({"dtype": "float16"}, "dtype", "float16"),
])
def test_encode_corpus_rejects_a_manifest_mismatch_unless_overwriting(tmp_path, change, field, value):
    passages = write_passage_file(tmp_path / "passages.jsonl", 30)
    encode_corpus(SeededEncoder(), passages, tmp_path / "shards", shard_size=10, progress=False)
    kwargs = {"encoder": SeededEncoder(), "shard_size": 10, **change}
    with pytest.raises(ValueError, match=f"manifest.json: .*{field}"):
        encode_corpus(passage_file=passages, out_dir=tmp_path / "shards", progress=False, **kwargs)
    encode_corpus(passage_file=passages, out_dir=tmp_path / "shards", progress=False, overwrite=True, **kwargs)
    assert read_manifest(tmp_path / "shards")[field] == value


def test_encode_corpus_rejects_a_changed_passage_file(tmp_path):
    passages = write_passage_file(tmp_path / "passages.jsonl", 30)
    encode_corpus(SeededEncoder(), passages, tmp_path / "shards", shard_size=10, progress=False)
    write_passage_file(passages, 31)
    with pytest.raises(ValueError, match="passage_file_bytes"):
        encode_corpus(SeededEncoder(), passages, tmp_path / "shards", shard_size=10, progress=False)


def test_encode_corpus_max_shards_stops_early_and_resumes(tmp_path):
    passages = write_passage_file(tmp_path / "passages.jsonl", 30)
    out = encode_corpus(SeededEncoder(), passages, tmp_path / "shards", shard_size=10, max_shards=1,
                        progress=False)
    assert [shard_paths(out, i)[0].exists() for i in range(3)] == [True, False, False]
    with pytest.raises(ValueError, match="not finished"):
        Index.from_shards(out, IndexConfig(device="cpu"))
    encode_corpus(SeededEncoder(), passages, out, shard_size=10, progress=False)
    assert read_manifest(out)["complete"]


def test_encode_corpus_splits_shards_across_processes(tmp_path, monkeypatch):
    passages = write_passage_file(tmp_path / "passages.jsonl", 50)
    out = tmp_path / "shards"

    def run_as(process_index):
        state = SimpleNamespace(process_index=process_index, num_processes=2, is_main_process=process_index == 0,
                                is_local_main_process=process_index == 0, wait_for_everyone=lambda: None)
        monkeypatch.setattr(encoding, "distributed_state", lambda: state)
        encode_corpus(SeededEncoder(), passages, out, shard_size=10, progress=False)

    run_as(0)
    assert [shard_paths(out, i)[0].exists() for i in range(5)] == [True, False, True, False, True]
    run_as(1)
    assert [shard_paths(out, i)[0].exists() for i in range(5)] == [True] * 5
    assert not read_manifest(out, require_complete=False)["complete"]  # written by the main process
    run_as(0)  # in a real launch the main process waits for the others instead
    assert read_manifest(out)["num_shards"] == 5


# --------------------------------------------------------------------------- from_shards
@pytest.mark.parametrize("config", [IndexConfig("flat", device="cpu"), IndexConfig("ivf", device="cpu", nprobe=2),
                                    IndexConfig("ivfpq", device="cpu", pq_m=4, pq_bits=4, nprobe=2)],
                         ids=["flat", "ivf", "ivfpq"])
def test_from_shards_equals_build_on_the_concatenation(tmp_path, config):
    passages = write_passage_file(tmp_path / "passages.jsonl", 400)
    out = encode_corpus(SeededEncoder(), passages, tmp_path / "shards", shard_size=90, progress=False)
    vectors, ids = read_shards(out)
    queries = np.random.default_rng(3).standard_normal((10, 8)).astype(np.float32)
    from_shards = Index.from_shards(out, config, progress=False)
    assert from_shards.encoder_name == "seeded"
    for got, want in zip(from_shards.search(queries, 10), Index.build(vectors, config, ids=ids).search(queries, 10)):
        np.testing.assert_array_equal(got, want)


def test_from_shards_reports_a_missing_shard(tmp_path):
    passages = write_passage_file(tmp_path / "passages.jsonl", 30)
    out = encode_corpus(SeededEncoder(), passages, tmp_path / "shards", shard_size=10, progress=False)
    shard_paths(out, 1)[1].unlink()
    with pytest.raises(FileNotFoundError, match="shard-00001.ids.npy"):
        Index.from_shards(out, IndexConfig(device="cpu"))


def test_the_torch_backend_keeps_its_own_copy_of_the_vectors():
    vectors = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    index = Index.build(vectors, IndexConfig(backend="torch", device="cpu"))
    before = index.search(vectors[:3], 5)
    vectors[:] = 0.0  # the caller reuses its buffer
    after = index.search(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)[:3], 5)
    np.testing.assert_array_equal(before[1], after[1])


def test_a_resume_with_another_batch_size_is_refused(tmp_path):
    passages = write_passage_file(tmp_path / "passages.jsonl", 30)
    out = encode_corpus(SeededEncoder(), passages, tmp_path / "shards", shard_size=10, max_shards=1,
                        batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"other settings .*batch_size"):
        encode_corpus(SeededEncoder(), passages, out, shard_size=10, batch_size=8, progress=False)


def test_k_is_clamped_to_the_index_size(vectors, queries):
    index = Index.build(vectors[:5], IndexConfig(device="cpu"))
    scores, ids = index.search(queries, 10**8)
    assert ids.shape == (len(queries), 5) and sorted(ids[0].tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("index_type, nlist, needed", [("ivf", 64, 64), ("ivfpq", 4, 256)])
def test_too_few_vectors_for_ivf_are_a_clear_error(vectors, index_type, nlist, needed):
    with pytest.raises(ValueError, match=rf"needs at least {needed} vectors to train on, got 50"):
        Index.build(vectors[:50], IndexConfig(index_type=index_type, ivf_nlist=nlist, device="cpu"))


@pytest.mark.parametrize("factory", ["Flat", "IVF4,PQ4x4np,RFlat"])
def test_a_flat_store_reserved_for_n_vectors_never_moves_while_they_are_added(factory):
    """Storage grown by doubling would be copied each time: up to twice the index at the peak."""
    import faiss

    vectors = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    index = faiss.index_factory(8, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    indexing._reserve(index, len(vectors))
    flat = faiss.downcast_index(index)
    flat = faiss.downcast_index(flat.refine_index) if isinstance(flat, faiss.IndexRefine) else flat
    index.add(vectors[:10])
    where = int(flat.codes.data())
    for start in range(10, 300, 10):
        index.add(vectors[start:start + 10])
    assert int(flat.codes.data()) == where and flat.codes.size() == 300 * 8 * 4
    np.testing.assert_array_equal(flat.reconstruct_n(0, 300), vectors)
