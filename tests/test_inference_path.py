"""The inference path end to end (issue 3 acceptance): passages -> encode_corpus (interrupted and
resumed) -> Index.from_shards (every type) -> save/load -> Retriever -> KILT predictions -> kilt.eval,
on a tiny T5 and a tiny BERT built from configs (random weights), through the API and through
`mtr encode|index|retrieve`; load errors of the retriever; the packaged MiniLM on the mini KILT."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kilt.eval import evaluate
from kilt.eval import main as eval_main
from kilt.io import read_predictions, read_task_file
from kilt.hits import read_hits, top_pages
from kilt.passages import PassageStore, iter_passage_file, write_passages
from multitask_retriever.cli import main as mtr
from multitask_retriever.encoder import DualEncoder
from multitask_retriever.encoding import encode_corpus, read_manifest, shard_paths
from multitask_retriever.indexing import Index, IndexConfig
from multitask_retriever.retriever import Retriever, load_retriever

# small-corpus settings: the mini KILT has 94 passages
CONFIGS = {
    "flat": IndexConfig("flat", device="cpu"),
    "torch": IndexConfig("flat", backend="torch", device="cpu"),
    "hnsw": IndexConfig("hnsw", device="cpu", hnsw_m=8),
    "ivf": IndexConfig("ivf", device="cpu", ivf_nlist=4, nprobe=4),  # all cells visited: exact
    "ivfpq": IndexConfig("ivfpq", device="cpu", ivf_nlist=2, nprobe=2, pq_m=4, pq_bits=4),
}
METRICS = ("Rprec", "recall@5", "success_rate@5")


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


@pytest.fixture(scope="module")
def passage_file(tmp_path_factory, mini_kilt):
    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    return path


def brute_force_pages(encoder, shard_dir, queries, task, k) -> list[list[str]]:
    """Page rankings from numpy exact inner products over the shards (the reference): the first
    k distinct pages of each query's full ranking."""
    manifest = read_manifest(shard_dir)
    files = [shard_paths(shard_dir, i) for i in range(manifest["num_shards"])]
    vectors = np.concatenate([np.load(v) for v, _ in files]).astype(np.float64)
    ids = np.concatenate([np.load(i) for _, i in files])
    scores = encoder.encode_queries(queries, task=task).astype(np.float64) @ vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")
    store = PassageStore(manifest["passage_file"], progress=False)
    return [top_pages(read_hits(store, ids[row].tolist(), scores[i, row].tolist()), k) for i, row in enumerate(top)]


@pytest.mark.parametrize("fixture", ["tiny_t5", "tiny_bert"])
def test_encode_resume_index_retrieve_and_score(request, fixture, passage_file, mini_kilt, tmp_path):
    encoder = DualEncoder.from_pretrained(request.getfixturevalue(fixture))
    assert encoder.config.pooling == ("first_decoder" if fixture == "tiny_t5" else "mean")
    reference = encode_corpus(encoder, passage_file, tmp_path / "reference", shard_size=30, batch_size=8,
                              progress=False)

    # interrupted on the third shard, resumed: the finished shards are not redone, all are identical
    with pytest.raises(RuntimeError, match="simulated crash"):
        encode_corpus(CrashingEncoder(encoder, 3), passage_file, tmp_path / "shards", shard_size=30,
                      batch_size=8, progress=False)
    assert not read_manifest(tmp_path / "shards", require_complete=False)["complete"]
    resuming = CrashingEncoder(encoder, 0)
    shards = encode_corpus(resuming, passage_file, tmp_path / "shards", shard_size=30, batch_size=8, progress=False)
    manifest = read_manifest(shards)
    assert (manifest["num_passages"], manifest["num_shards"], resuming.calls) == (94, 4, 2)
    for i in range(4):
        for got, want in zip(shard_paths(shards, i), shard_paths(reference, i)):
            assert got.read_bytes() == want.read_bytes()

    gold = mini_kilt / "nq-dev-kilt.jsonl"
    queries = [e.input for e in read_task_file(gold)]
    store = PassageStore(passage_file, progress=False)
    exact = brute_force_pages(encoder, shards, queries, "nq", k=5)
    for name, config in CONFIGS.items():
        index = Index.from_shards(shards, config, progress=False)
        assert len(index) == 94 and index.dim == encoder.dim
        folder = index.save(tmp_path / f"index-{name}")
        if name == "flat":
            loaded = load_retriever(request.getfixturevalue(fixture), folder, passage_file, progress=False)
        else:
            loaded = Retriever(encoder, Index.load(folder, expected_dim=encoder.dim), store)
        query_vectors = encoder.encode_queries(queries, task="nq")
        (got_scores, got_ids), (want_scores, want_ids) = (loaded.index.search(query_vectors, 10),
                                                          index.search(query_vectors, 10))
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5)  # torch: other matmul blocking

        retriever = Retriever(encoder, index, store)
        hits = retriever.search(queries[:2], task="nq", k=7)
        assert [len(h) for h in hits] == [7, 7]
        assert all(a.score >= b.score for h in hits for a, b in zip(h, h[1:]))
        assert hits[0][0].text == store[hits[0][0].passage_id].text

        out = tmp_path / f"nq-{name}.jsonl"
        assert loaded.predict(gold, out, k=5, progress=False) == len(queries)  # task "nq" from the file name
        predictions = read_predictions(out)
        assert all(1 <= len(pages) <= 5 for pages in predictions.values())
        if name in ("flat", "torch", "ivf"):  # exact searches: the pages of numpy brute force
            assert [predictions[e.id] for e in read_task_file(gold)] == exact
        scores = evaluate(gold, out, ks=(1, 5))
        assert all(0.0 <= scores[m] <= 1.0 for m in METRICS)


def test_mtr_encode_index_retrieve_then_kilt_eval(tiny_bert, passage_file, mini_kilt, tmp_path, capsys):
    assert mtr(["encode", "--encoder", str(tiny_bert), "--passages", str(passage_file), "--out-dir",
                str(tmp_path / "shards"), "--shard-size", "40", "--batch-size", "16", "--device", "cpu"]) == 0
    assert mtr(["index", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "index"),
                "--index-type", "hnsw", "--hnsw-m", "8", "--device", "cpu"]) == 0
    pairs = []
    for command, task_file in (("retrieve", "fever-dev-kilt.jsonl"), ("search", "wow-dev-kilt.jsonl")):
        pred = tmp_path / task_file.replace("-kilt", "-pred")
        assert mtr([command, "--encoder", str(tiny_bert), "--index", str(tmp_path / "index"), "--passages",
                    str(passage_file), "--queries", str(mini_kilt / task_file), "--out", str(pred), "--k", "5",
                    "--device", "cpu"]) == 0
        pairs += [str(mini_kilt / task_file), str(pred)]
    capsys.readouterr()
    assert eval_main([*pairs, "--ks", "1,5", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert {"fever", "wow"} <= set(table)
    assert all(0.0 <= table[t]["Rprec"] <= 1.0 for t in table)


def _encode_and_index(tiny_bert, passage_file, folder: Path, *index_args: str) -> Path:
    assert mtr(["encode", "--encoder", str(tiny_bert), "--passages", str(passage_file), "--out-dir",
                str(folder / "shards"), "--batch-size", "16", "--device", "cpu"]) == 0
    assert mtr(["index", "--shards", str(folder / "shards"), "--out", str(folder / "index"), "--device", "cpu",
                *index_args]) == 0
    return folder / "index"


def _retrieve(tiny_bert, index, passage_file, queries, out, *extra) -> int:
    return mtr(["retrieve", "--encoder", str(tiny_bert), "--index", str(index), "--passages", str(passage_file),
                "--queries", str(queries), "--out", str(out), "--k", "5", "--device", "cpu", *extra])


def test_mtr_retrieve_can_search_a_flat_index_with_another_backend(tiny_bert, passage_file, mini_kilt, tmp_path):
    index = _encode_and_index(tiny_bert, passage_file, tmp_path)
    queries = mini_kilt / "nq-dev-kilt.jsonl"
    assert _retrieve(tiny_bert, index, passage_file, queries, tmp_path / "faiss.jsonl") == 0
    assert _retrieve(tiny_bert, index, passage_file, queries, tmp_path / "torch.jsonl", "--backend", "torch") == 0
    assert (tmp_path / "faiss.jsonl").read_text() == (tmp_path / "torch.jsonl").read_text()


def test_mtr_retrieve_applies_search_settings_to_the_saved_index(tiny_bert, passage_file, mini_kilt, tmp_path,
                                                                  capsys):
    index = _encode_and_index(tiny_bert, passage_file, tmp_path, "--index-type", "hnsw", "--hnsw-m", "8")
    queries = mini_kilt / "nq-dev-kilt.jsonl"
    assert _retrieve(tiny_bert, index, passage_file, queries, tmp_path / "p.jsonl", "--hnsw-ef-search", "4") == 0
    assert _retrieve(tiny_bert, index, passage_file, queries, tmp_path / "q.jsonl", "--backend", "torch") == 2
    assert "the torch backend searches exactly" in capsys.readouterr().err


def test_mtr_retrieve_with_an_index_of_another_dim_is_a_clear_error(tiny_bert, passage_file, tmp_path, capsys):
    vectors = np.random.default_rng(0).standard_normal((94, 16)).astype(np.float32)
    Index.build(vectors, IndexConfig(device="cpu")).save(tmp_path / "index")
    assert mtr(["retrieve", "--encoder", str(tiny_bert), "--index", str(tmp_path / "index"), "--passages",
                str(passage_file), "--queries", "unused.jsonl", "--out", str(tmp_path / "p.jsonl"),
                "--device", "cpu"]) == 2
    assert "index dim 16 != encoder dim 32" in capsys.readouterr().err


def test_truncated_ids_file_is_a_clear_error(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    folder = Index.build(vectors, IndexConfig(device="cpu")).save(tmp_path / "index")
    ids = folder / "ids.npy"
    ids.write_bytes(ids.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"ids\.npy: cannot read ids \(truncated or corrupt\?\)"):
        Index.load(folder)


def test_an_index_larger_than_the_passage_file_is_rejected(tiny_bert, passage_file, tmp_path):
    encoder = DualEncoder.from_pretrained(tiny_bert)
    vectors = np.random.default_rng(0).standard_normal((200, encoder.dim)).astype(np.float32)
    index = Index.build(vectors, IndexConfig(device="cpu"))
    with pytest.raises(ValueError, match="do not belong together"):
        Retriever(encoder, index, PassageStore(passage_file, progress=False))


def test_search_pages_orders_pages_by_their_first_passage(tiny_bert, passage_file):
    encoder = DualEncoder.from_pretrained(tiny_bert)
    passages = list(iter_passage_file(passage_file))
    index = Index.build(encoder.encode_passages(passages), IndexConfig(device="cpu"))
    retriever = Retriever(encoder, index, PassageStore(passage_file, progress=False))
    queries = ["who wrote hamlet", "the longest river in africa"]
    pages = retriever.search_pages(queries, task="nq", k=6)
    for query_pages, hits in zip(pages, retriever.search(queries, task="nq", k=24)):
        first_seen = list(dict.fromkeys(h.wikipedia_id for h in hits))
        assert query_pages == first_seen[:6]


@pytest.mark.slow
def test_packaged_minilm_retrieves_the_mini_kilt(passage_file, mini_kilt, tmp_path):
    """Zero-shot all-MiniLM-L6-v2 (real weights) with an exact index: well above chance on nq dev."""
    from multitask_retriever.models import packaged_minilm_path

    encoder = DualEncoder.from_pretrained(packaged_minilm_path())
    shards = encode_corpus(encoder, passage_file, tmp_path / "shards", shard_size=50, batch_size=32, progress=False)
    retriever = Retriever(encoder, Index.from_shards(shards, IndexConfig(device="cpu"), progress=False),
                          PassageStore(passage_file, progress=False))
    out = tmp_path / "nq-pred.jsonl"
    retriever.predict(mini_kilt / "nq-dev-kilt.jsonl", out, k=10, progress=False)
    scores = evaluate(mini_kilt / "nq-dev-kilt.jsonl", out, ks=(1, 10))
    assert scores["Rprec"] >= 0.6  # measured 0.80 (82 pages, 10 queries; chance is about 0.01)
    assert scores["recall@10"] >= 0.9


def test_mtr_retrieve_device_places_the_index_too(tiny_bert, passage_file, mini_kilt, tmp_path):
    """--device cpu searches on the CPU even where the index was saved to search on a GPU."""
    index = _encode_and_index(tiny_bert, passage_file, tmp_path)
    meta = json.loads((index / "index_meta.json").read_text())
    meta["config"]["device"] = "cuda"
    (index / "index_meta.json").write_text(json.dumps(meta))
    assert _retrieve(tiny_bert, index, passage_file, mini_kilt / "nq-dev-kilt.jsonl", tmp_path / "p.jsonl") == 0
    loaded = load_retriever(tiny_bert, index, passage_file, device="cpu", progress=False)
    assert loaded.index.config.device == "cpu" and not loaded.index.on_gpu


def test_an_index_with_another_passage_file_is_refused_unless_forced(tiny_bert, passage_file, mini_kilt, tmp_path,
                                                                      capsys):
    index = _encode_and_index(tiny_bert, passage_file, tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text(passage_file.read_text().replace(" the ", " a ", 1))  # the same ids, other text
    capsys.readouterr()
    queries = mini_kilt / "nq-dev-kilt.jsonl"
    assert _retrieve(tiny_bert, index, other, queries, tmp_path / "p.jsonl") == 2
    assert "index and passage file do not belong together" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()
    assert _retrieve(tiny_bert, index, other, queries, tmp_path / "p.jsonl", "--force") == 0


def test_an_index_of_another_encoder_is_refused_unless_forced(tiny_bert, passage_file, mini_kilt, tmp_path, capsys):
    from transformers import BertModel

    index = _encode_and_index(tiny_bert, passage_file, tmp_path)
    other = tmp_path / "other-weights"  # the same architecture and file sizes, other weights
    shutil.copytree(tiny_bert, other)
    model = BertModel.from_pretrained(other)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.neg_()
    model.save_pretrained(other)
    queries = mini_kilt / "nq-dev-kilt.jsonl"
    capsys.readouterr()
    assert _retrieve(other, index, passage_file, queries, tmp_path / "p.jsonl") == 2
    assert "index and encoder do not belong together" in capsys.readouterr().err
    assert _retrieve(other, index, passage_file, queries, tmp_path / "p.jsonl", "--force") == 0
