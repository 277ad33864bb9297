"""No `mtr` command writes over one of its own inputs unless --overwrite is given: it stops
with one line naming the file, exit code 2, and the input is left as it was."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from multitask_retriever.cli import main


@pytest.fixture
def kilt_copy(mini_kilt, tmp_path) -> Path:
    folder = tmp_path / "kilt"
    shutil.copytree(mini_kilt, folder)
    return folder


def _refused(argv: list[str], protected: Path, capsys) -> None:
    before = protected.read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to write over an input" in err and str(protected.name) in err and len(err.splitlines()) == 1
    assert protected.read_bytes() == before


def test_chunk_refuses_its_knowledge_source_as_output(kilt_copy, capsys):
    ks = kilt_copy / "knowledge_source.jsonl"
    _refused(["chunk", str(ks), str(ks)], ks, capsys)


def test_bm25_refuses_to_replace_a_task_file_by_its_predictions(kilt_copy, tmp_path, capsys):
    passages = tmp_path / "passages.jsonl"
    assert main(["chunk", str(kilt_copy / "knowledge_source.jsonl"), str(passages)]) == 0
    gold = kilt_copy / "nq-dev.jsonl"
    shutil.copy(kilt_copy / "nq-dev-kilt.jsonl", gold)
    (kilt_copy / "nq-dev-bm25.jsonl").symlink_to(gold)  # the output name is a link to the gold file
    capsys.readouterr()
    _refused(["bm25", str(passages), str(gold), "--out-dir", str(kilt_copy)], gold, capsys)


def test_bm25_names_predictions_of_any_task_file_apart_from_it(kilt_copy, tmp_path):
    passages = tmp_path / "passages.jsonl"
    assert main(["chunk", str(kilt_copy / "knowledge_source.jsonl"), str(passages)]) == 0
    gold = kilt_copy / "nq-dev.jsonl"
    shutil.copy(kilt_copy / "nq-dev-kilt.jsonl", gold)
    before = gold.read_bytes()
    assert main(["bm25", str(passages), str(gold), "--out-dir", str(kilt_copy), "--k", "5"]) == 0
    assert gold.read_bytes() == before and (kilt_copy / "nq-dev-bm25.jsonl").is_file()


def test_kilt_subset_refuses_to_shrink_its_own_folder(kilt_copy, capsys):
    gold = kilt_copy / "nq-dev-kilt.jsonl"
    before = gold.read_bytes()
    _refused(["kilt-subset", str(kilt_copy), str(kilt_copy / "knowledge_source.jsonl"), str(kilt_copy),
              "--queries", "2"], kilt_copy / "knowledge_source.jsonl", capsys)
    assert gold.read_bytes() == before


def test_retrieve_refuses_its_queries_as_output(kilt_copy, capsys):
    queries = kilt_copy / "nq-dev-kilt.jsonl"
    _refused(["retrieve", "--encoder", "e", "--index", "i", "--passages", "p", "--queries", str(queries),
              "--out", str(queries)], queries, capsys)


def test_pipeline_refuses_its_queries_as_output(kilt_copy, capsys):
    queries = kilt_copy / "nq-dev-kilt.jsonl"
    _refused(["pipeline", "--passages", "p", "--queries", str(queries), "--out", str(queries)], queries, capsys)


def test_overwrite_allows_it(kilt_copy, tmp_path):
    ks = kilt_copy / "knowledge_source.jsonl"
    copy = tmp_path / "ks.jsonl"
    shutil.copy(ks, copy)
    assert main(["chunk", str(copy), str(copy), "--overwrite"]) == 0
    assert copy.read_text().startswith('{"id"') or copy.read_text().startswith("{")


def test_pipeline_refuses_a_negative_rerank_k(kilt_copy, tmp_path, capsys):
    assert main(["pipeline", "--passages", "p", "--queries", str(kilt_copy / "nq-dev-kilt.jsonl"),
                 "--out", str(tmp_path / "out.jsonl"), "--rerank-k", "-1"]) == 2
    assert "--rerank-k >= 0" in capsys.readouterr().err


def test_mine_negatives_refuses_a_negative_keep(kilt_copy, tmp_path, capsys):
    passages = tmp_path / "passages.jsonl"
    assert main(["chunk", str(kilt_copy / "knowledge_source.jsonl"), str(passages)]) == 0
    capsys.readouterr()
    assert main(["mine-negatives", "--data-dir", str(kilt_copy), "--passages", str(passages),
                 "--out", str(tmp_path / "neg.jsonl"), "--keep", "-2"]) == 2
    assert "keep and max_queries >= 0" in capsys.readouterr().err
    assert not (tmp_path / "neg.jsonl").exists()


@pytest.mark.parametrize("command", [
    ["encode", "--encoder", "./no/such/model", "--passages", "{passages}", "--out-dir", "o"],
    ["train-reranker", "--method", "zero-shot", "--model", "/no/such/llm", "--data-dir", "{kilt}", "--tasks", "nq",
     "--passages", "{passages}", "--output-dir", "o", "--max-queries", "2"],
])
def test_a_missing_model_folder_is_named_in_one_line(command, mini_kilt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["chunk", str(mini_kilt / "knowledge_source.jsonl"), "passages.jsonl"]) == 0
    capsys.readouterr()
    argv = [a.format(passages="passages.jsonl", kilt=mini_kilt) for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("model folder not found")
