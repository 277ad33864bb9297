"""Issue 23, item 3: passage files, encoders and shards are identified by content, not by size,
mtime or path. An index refuses a same-size passage file with other content and an encoder
symlink pointing at other weights; the passage offsets cache is keyed by content; `Index.from_shards`
refuses shards with bad ids or non-finite vectors, naming the shard; the digest cache is only
a shortcut."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kilt import digest
from kilt.digest import digest_cache_path, file_digest
from kilt.passages import PassageStore, write_passages
from multitask_retriever.cli import main as mtr
from multitask_retriever.encoding import encode_corpus, model_fingerprint, shard_paths
from multitask_retriever.indexing import Index, IndexConfig, IndexMismatchError
from multitask_retriever.retriever import Retriever, load_retriever

FLAT = IndexConfig("flat", device="cpu")


class SeededEncoder:
    """Encoder double without files: passage i's vector is drawn from a generator seeded by i."""

    dim = 8
    config = SimpleNamespace(model_name_or_path="seeded")

    def encode_passages(self, passages, batch_size=64):
        return np.stack([np.random.default_rng(p.id).standard_normal(self.dim) for p in passages]).astype(np.float32)


def blake2b(data: bytes) -> str:
    return "blake2b:" + hashlib.blake2b(data, digest_size=32).hexdigest()


def short(digest: str) -> str:
    """A digest as error messages show it: "blake2b:" and 16 hex digits."""
    return digest[:24] + "..."


def rewrite_keeping_mtime(path: Path, text: str) -> None:
    """Write `text` into `path` in place (same inode), then set its mtime back."""
    before = path.stat()
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def rotate_page_ids(text: str) -> str:
    """The passage file with each passage's wikipedia_id moved to the next passage: the same
    ids and bytes in all (so the same size), the wrong pages."""
    records = [json.loads(line) for line in text.splitlines()]
    pages = [r["wikipedia_id"] for r in records]
    for record, page in zip(records, pages[-1:] + pages[:-1]):
        record["wikipedia_id"] = page
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def swap_two_letters(text: str) -> str:
    """The passage file with two letters of one passage's text swapped (the same size)."""
    start = text.index('"text": "') + len('"text": "')
    return text[:start] + text[start + 1] + text[start] + text[start + 2:]


@pytest.fixture(scope="module")
def passage_file(tmp_path_factory, mini_kilt) -> Path:
    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    return path


@pytest.fixture(scope="module")
def seeded_index(passage_file, tmp_path_factory) -> Path:
    """An index folder of SeededEncoder vectors of `passage_file`, built through shards."""
    folder = tmp_path_factory.mktemp("seeded")
    shards = encode_corpus(SeededEncoder(), passage_file, folder / "shards", shard_size=40, progress=False)
    return Index.from_shards(shards, FLAT, progress=False).save(folder / "index")


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- passage file identity
@pytest.mark.parametrize("change", [rotate_page_ids, swap_two_letters], ids=["rotated page ids", "swapped letters"])
def test_a_same_size_passage_file_with_other_content_is_refused(change, passage_file, seeded_index, tmp_path):
    other = tmp_path / "passages.jsonl"
    other.write_text(change(passage_file.read_text()))
    assert other.stat().st_size == passage_file.stat().st_size and other.read_text() != passage_file.read_text()
    index = Index.load(seeded_index)
    with pytest.raises(IndexMismatchError) as excinfo:
        Retriever(SeededEncoder(), index, PassageStore(other, progress=False))
    assert one_line_error(excinfo) == (
        f"{other}: content differs from the passage file the index {seeded_index} was built from (digest "
        f"{short(file_digest(other))}, recorded {short(file_digest(passage_file))}); index and passage file do "
        f"not belong together: give the passage file the index was built from ({passage_file}) or rebuild the index "
        f"from this one (force to use them anyway)")


def test_the_same_passages_at_another_path_are_accepted(passage_file, seeded_index, tmp_path):
    copy = tmp_path / "copy.jsonl"
    shutil.copy(passage_file, copy)
    retriever = Retriever(SeededEncoder(), Index.load(seeded_index), PassageStore(copy, progress=False))
    assert retriever.passages.digest == file_digest(passage_file)


def test_a_passage_file_with_more_passages_is_refused_by_count(passage_file, seeded_index, tmp_path):
    index = Index.load(seeded_index)
    more = tmp_path / "more.jsonl"
    last = json.loads(passage_file.read_text().splitlines()[-1])
    more.write_text(passage_file.read_text() + json.dumps({**last, "id": last["id"] + 1}) + "\n")
    with pytest.raises(IndexMismatchError) as excinfo:
        Retriever(SeededEncoder(), index, PassageStore(more, progress=False))
    assert one_line_error(excinfo).startswith(
        f"{more}: {last['id'] + 2} passages, but the index {seeded_index} was built from a passage file of "
        f"{last['id'] + 1}; index and passage file do not belong together")


def test_mtr_retrieve_refuses_a_rotated_passage_file_with_exit_2(tiny_bert, passage_file, mini_kilt, tmp_path,
                                                                 capsys):
    assert mtr(["encode", "--encoder", str(tiny_bert), "--passages", str(passage_file), "--out-dir",
                str(tmp_path / "shards"), "--device", "cpu"]) == 0
    assert mtr(["index", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "index"),
                "--device", "cpu"]) == 0
    rotated = tmp_path / "rotated.jsonl"
    rotated.write_text(rotate_page_ids(passage_file.read_text()))
    capsys.readouterr()
    assert mtr(["retrieve", "--encoder", str(tiny_bert), "--index", str(tmp_path / "index"), "--passages",
                str(rotated), "--queries", str(mini_kilt / "nq-dev-kilt.jsonl"), "--out", str(tmp_path / "p.jsonl"),
                "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"mtr retrieve: error: {rotated}: content differs from the passage file the index ")
    assert not (tmp_path / "p.jsonl").exists()


def test_encoding_refuses_to_resume_on_a_same_size_changed_passage_file(tmp_path, passage_file):
    path = tmp_path / "passages.jsonl"
    shutil.copy(passage_file, path)
    encode_corpus(SeededEncoder(), path, tmp_path / "shards", shard_size=40, max_shards=1, progress=False)
    rewrite_keeping_mtime(path, rotate_page_ids(path.read_text()))
    with pytest.raises(ValueError, match=r"shards were encoded with other settings \(passage_file_digest: "):
        encode_corpus(SeededEncoder(), path, tmp_path / "shards", shard_size=40, progress=False)


# --------------------------------------------------------------------------- indexes saved before digests
def _as_format_1(index_dir: Path, folder: Path) -> Path:
    """A copy of `index_dir` whose metadata is as an index saved before content digests."""
    old = Path(shutil.copytree(index_dir, folder))
    meta = json.loads((old / "index_meta.json").read_text())
    for key in ("encoder_digest", "passage_file", "passage_file_digest", "passages"):
        del meta[key]
    (old / "index_meta.json").write_text(json.dumps({**meta, "format": 1}))
    return old


def lengthen_a_text(text: str) -> str:
    """The passage file with one passage's text a letter longer."""
    return text.replace('"text": "', '"text": "x', 1)


@pytest.mark.parametrize("edit, refused", [(rotate_page_ids, False), (lengthen_a_text, True)],
                         ids=["same size accepted", "other size refused"])
def test_an_index_saved_before_digests_is_checked_by_size(edit, refused, passage_file, seeded_index, tmp_path):
    index = Index.load(_as_format_1(seeded_index, tmp_path / "old"))
    other = tmp_path / "other.jsonl"
    other.write_text(edit(passage_file.read_text()))
    if refused:
        with pytest.raises(IndexMismatchError, match=re.escape(f"{other}: {other.stat().st_size} bytes, but")):
            Retriever(SeededEncoder(), index, PassageStore(other, progress=False))
    else:
        Retriever(SeededEncoder(), index, PassageStore(other, progress=False))


def test_an_index_saved_before_digests_warns_to_rebuild(passage_file, seeded_index, tmp_path, caplog):
    index = Index.load(_as_format_1(seeded_index, tmp_path / "old"))
    with caplog.at_level(logging.WARNING, logger="multitask_retriever.indexing"):
        Retriever(SeededEncoder(), index, PassageStore(passage_file, progress=False))
    assert [r.getMessage() for r in caplog.records] == [
        f"the index {tmp_path / 'old'} predates content digests: its passage file is checked by size and its "
        f"encoder by name only; encode and index again to have them checked by content"]


# --------------------------------------------------------------------------- encoder identity
@pytest.fixture
def two_models(tiny_bert, tmp_path) -> tuple[Path, Path]:
    """Two model folders of the same architecture and file sizes: tiny_bert's weights and others."""
    from transformers import BertModel

    same, other = tmp_path / "model-a", tmp_path / "model-b"
    shutil.copytree(tiny_bert, same)
    shutil.copytree(tiny_bert, other)
    model = BertModel.from_pretrained(other)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.neg_()
    model.save_pretrained(other)
    assert (same / "model.safetensors").stat().st_size == (other / "model.safetensors").stat().st_size
    return same, other


def _index_through(link: Path, passage_file: Path, folder: Path) -> Path:
    assert mtr(["encode", "--encoder", str(link), "--passages", str(passage_file), "--out-dir",
                str(folder / "shards"), "--device", "cpu"]) == 0
    assert mtr(["index", "--shards", str(folder / "shards"), "--out", str(folder / "index"), "--device", "cpu"]) == 0
    return folder / "index"


def test_an_encoder_symlink_pointing_at_another_model_is_refused(two_models, passage_file, tmp_path):
    same, other = two_models
    link = tmp_path / "encoder"
    link.symlink_to(same, target_is_directory=True)
    index = _index_through(link, passage_file, tmp_path)
    link.unlink()
    link.symlink_to(other, target_is_directory=True)  # the same path string, other weights
    with pytest.raises(IndexMismatchError) as excinfo:
        load_retriever(link, index, passage_file, device="cpu", progress=False)
    assert one_line_error(excinfo).startswith(
        f"{link}: its files differ from those of the encoder the index {index} was built with (digest "
        f"{short(model_fingerprint(other))}, recorded {short(model_fingerprint(same))}); index and encoder do not "
        f"belong together: use the encoder the index was built with ({link}) or encode and index the passages "
        f"with this one")


def test_a_copy_of_the_encoder_at_another_path_is_accepted(two_models, passage_file, tmp_path):
    same, _ = two_models
    index = _index_through(same, passage_file, tmp_path)
    copy = Path(shutil.copytree(same, tmp_path / "moved"))
    shutil.rmtree(same)
    assert load_retriever(copy, index, passage_file, device="cpu", progress=False).index is not None


@pytest.mark.parametrize("extra", ["README.md", ".hidden.json", "onnx/model.onnx"])
def test_the_model_fingerprint_ignores_files_that_are_not_the_model(extra, two_models):
    same, _ = two_models
    before = model_fingerprint(same)
    (same / extra).parent.mkdir(exist_ok=True)
    (same / extra).write_text("not part of the model")
    assert model_fingerprint(same) == before


def test_the_model_fingerprint_covers_the_tokenizer(two_models):
    same, _ = two_models
    before = model_fingerprint(same)
    tokenizer = same / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"[unused0]"', '"[unused9]"', 1))
    assert model_fingerprint(same) != before


# --------------------------------------------------------------------------- the passage offsets cache
def test_the_offsets_cache_is_not_trusted_after_a_same_size_same_mtime_change(tmp_path, passage_file):
    path = tmp_path / "p.jsonl"
    shutil.copy(passage_file, path)
    first = PassageStore(path, progress=False)
    assert path.with_name("p.jsonl.offsets.npy").is_file()
    pid = next(i for i in range(1, len(first)) if first.page_id(i) != first.page_id(i - 1))  # a page's first
    page_before = first.page_id(pid - 1)
    rewrite_keeping_mtime(path, rotate_page_ids(path.read_text()))
    store = PassageStore(path, progress=False)
    assert store.page_id(pid) == store[pid].wikipedia_id == page_before


def test_the_offsets_cache_is_reused_for_the_same_content(tmp_path, passage_file, monkeypatch):
    path = tmp_path / "p.jsonl"
    shutil.copy(passage_file, path)
    PassageStore(path, progress=False)
    monkeypatch.setattr(PassageStore, "_build", lambda self, progress: pytest.fail("offsets rebuilt"))
    assert PassageStore(path, progress=False)[0].id == 0


# --------------------------------------------------------------------------- shards
def _corrupt(shards: Path, shard: int, kind: str, change) -> None:
    vectors_path, ids_path = shard_paths(shards, shard)
    path = ids_path if kind == "ids" else vectors_path
    np.save(path, change(np.load(path)))


def _with(array: np.ndarray, index, value) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


# shard_size 10 over 30 passages: shard k holds ids 10k..10k+9
BAD_SHARDS = {
    "out-of-range id": (1, "ids", lambda a: _with(a, 2, 30),
                        "shard-00001.ids.npy: passage id 30 is out of range (the passage file has 30 passages)"),
    "negative id": (1, "ids", lambda a: _with(a, 0, -1),
                    "shard-00001.ids.npy: passage id -1 is out of range (the passage file has 30 passages)"),
    "duplicate across shards": (2, "ids", lambda a: _with(a, 4, 3),
                                "shard-00002.ids.npy: passage id 3 is also in shard-00000.ids.npy"),
    "duplicate within a shard": (1, "ids", lambda a: _with(a, 5, 11),
                                 "shard-00001.ids.npy: passage id 11 appears twice"),
    "int32 ids": (0, "ids", lambda a: a.astype(np.int32),
                  "shard-00000.ids.npy: (10,) int32 ids for 10 vectors, expected (10,) int64"),
    "ids fewer than vectors": (2, "ids", lambda a: a[:-1],
                               "shard-00002.ids.npy: (9,) int64 ids for 10 vectors, expected (10,) int64"),
    "NaN vector": (1, "vectors", lambda a: _with(a, (3, 0), np.nan),
                   "shard-00001.npy: vector 3 is not finite (NaN or inf)"),
    "infinite vector": (2, "vectors", lambda a: _with(a, (9, 7), -np.inf),
                        "shard-00002.npy: vector 9 is not finite (NaN or inf)"),
}


@pytest.fixture
def shards(tmp_path) -> Path:
    passages = tmp_path / "passages.jsonl"
    passages.write_text("".join(json.dumps({"id": i, "wikipedia_id": str(i // 2), "title": f"P{i // 2}",
                                            "text": f"passage {i}", "start_paragraph_id": 1,
                                            "end_paragraph_id": 1}) + "\n" for i in range(30)))
    return encode_corpus(SeededEncoder(), passages, tmp_path / "shards", shard_size=10, progress=False)


@pytest.mark.parametrize("shard, kind, change, message", BAD_SHARDS.values(), ids=BAD_SHARDS.keys())
def test_a_bad_shard_is_refused_naming_it(shards, shard, kind, change, message):
    _corrupt(shards, shard, kind, change)
    with pytest.raises(ValueError) as excinfo:
        Index.from_shards(shards, FLAT, progress=False)
    assert one_line_error(excinfo) == (f"{shards}/{message}; the shard is corrupt: delete shard-{shard:05d}.npy "
                                       f"and run encode again to redo it")


def test_a_nan_vector_is_refused_before_an_ivf_index_trains_on_it(shards):
    _corrupt(shards, 2, "vectors", lambda a: _with(a, (6, 1), np.nan))
    with pytest.raises(ValueError, match=re.escape(f"{shards}/shard-00002.npy: vector 6 is not finite")):
        Index.from_shards(shards, IndexConfig("ivf", device="cpu", ivf_nlist=2), progress=False)


def test_a_truncated_ids_file_is_refused_naming_it(shards):
    ids_path = shard_paths(shards, 1)[1]
    ids_path.write_bytes(ids_path.read_bytes()[:100])
    with pytest.raises(ValueError) as excinfo:
        Index.from_shards(shards, FLAT, progress=False)
    message = one_line_error(excinfo)
    assert message.startswith(f"{ids_path}: cannot read it (truncated or corrupt?): ")
    assert message.endswith("; the shard is corrupt: delete shard-00001.npy and run encode again to redo it")


def test_mtr_index_refuses_a_nan_shard_with_exit_2(shards, tmp_path, capsys):
    _corrupt(shards, 0, "vectors", lambda a: _with(a, (0, 0), np.nan))
    assert mtr(["index", "--shards", str(shards), "--out", str(tmp_path / "index"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mtr index: error: {shards}/shard-00000.npy: vector 0 is not finite (NaN or inf); the shard is corrupt: "
        f"delete shard-00000.npy and run encode again to redo it")
    assert not (tmp_path / "index").exists()


def test_sound_shards_are_indexed_with_their_ids(shards):
    index = Index.from_shards(shards, FLAT, progress=False)
    np.testing.assert_array_equal(index.ids, np.arange(30))


# --------------------------------------------------------------------------- the digest cache
@pytest.fixture
def hashes(monkeypatch, tmp_path) -> list[Path]:
    """The files `file_digest` reads, in order (a cache hit reads none); the cache in tmp_path/cache."""
    monkeypatch.setenv("MTR_CACHE", str(tmp_path / "cache"))
    read: list[Path] = []
    original = digest._hash_file

    def counting(path):
        read.append(path)
        return original(path)

    monkeypatch.setattr(digest, "_hash_file", counting)
    return read


def test_the_digest_cache_is_reused_while_the_file_is_unchanged(tmp_path, hashes):
    path = tmp_path / "f.bin"
    path.write_bytes(b"some content")
    assert file_digest(path) == blake2b(b"some content")
    assert file_digest(path) == blake2b(b"some content")
    assert hashes == [path]
    assert digest_cache_path(path).parent == tmp_path / "cache" / "digests"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "f.bin"]  # nothing beside the file


def _in_place_same_size(path: Path) -> None:
    rewrite_keeping_mtime(path, "SOME content")


def _replaced(path: Path) -> None:
    other = path.with_name("new")
    other.write_text("SOME content")
    os.utime(other, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    os.replace(other, path)


def _appended(path: Path) -> None:
    with open(path, "a") as f:
        f.write("!")


@pytest.mark.parametrize("change, content", [(_in_place_same_size, b"SOME content"), (_replaced, b"SOME content"),
                                             (_appended, b"some content!")],
                         ids=["in place, same size and mtime", "replaced by a file of the same mtime", "appended"])
def test_the_digest_is_computed_again_when_the_file_changes(change, content, tmp_path, hashes):
    path = tmp_path / "f.bin"
    path.write_bytes(b"some content")
    file_digest(path)
    change(path)
    assert file_digest(path) == blake2b(content)
    assert hashes == [path, path]


def test_a_file_changed_while_hashed_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTR_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "f.bin"
    path.write_bytes(b"some content")
    original = digest._hash_file

    def hash_then_append(p):
        result = original(p)
        _appended(p)
        return result

    monkeypatch.setattr(digest, "_hash_file", hash_then_append)
    assert file_digest(path) == blake2b(b"some content")
    assert not digest_cache_path(path).exists()


def test_the_digest_is_computed_where_its_cache_cannot_be_written(tmp_path, hashes):
    path = tmp_path / "f.bin"
    path.write_bytes(b"some content")
    digest_cache_path(path).mkdir(parents=True)  # in the way of the cache file, as a read-only folder would be
    assert file_digest(path) == file_digest(path) == blake2b(b"some content")
    assert hashes == [path, path]
