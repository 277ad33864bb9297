"""No `mtr` command writes over one of its own inputs, whatever the options: it stops with one
line naming the file, exit code 2, and the input is left as it was. Outputs that
cannot be written, a finished training run without --resume and bad settings stop the same way."""
from __future__ import annotations

import os
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


def test_no_option_lets_chunk_write_over_its_input(kilt_copy, capsys):
    ks = kilt_copy / "knowledge_source.jsonl"
    before = ks.read_bytes()
    code = main(["chunk", str(ks), str(ks), "--overwrite"])  # --overwrite is gone: it only ever allowed this
    assert code == 2 and "unrecognized arguments: --overwrite" in capsys.readouterr().err
    assert ks.read_bytes() == before


def test_pipeline_refuses_a_negative_rerank_k(kilt_copy, tmp_path, capsys):
    assert main(["pipeline", "--passages", "p", "--queries", str(kilt_copy / "nq-dev-kilt.jsonl"),
                 "--out", str(tmp_path / "out.jsonl"), "--rerank-k", "-1"]) == 2
    assert "argument --rerank-k: must be >= 0, got -1" in capsys.readouterr().err


def test_mine_negatives_refuses_a_negative_keep(kilt_copy, tmp_path, capsys):
    passages = tmp_path / "passages.jsonl"
    assert main(["chunk", str(kilt_copy / "knowledge_source.jsonl"), str(passages)]) == 0
    capsys.readouterr()
    assert main(["mine-negatives", "--data-dir", str(kilt_copy), "--passages", str(passages),
                 "--out", str(tmp_path / "neg.jsonl"), "--keep", "-2"]) == 2
    assert "argument --keep: must be >= 0, got -2" in capsys.readouterr().err
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


@pytest.fixture
def unwritable(tmp_path):
    """A folder no file can be written in: read-only, or, where the tests run as root (whom
    permissions do not stop), a path under a regular file."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):
        (tmp_path / "file.txt").write_text("")
        yield tmp_path / "file.txt" / "sub"
    else:
        yield folder
    folder.chmod(0o700)


def _one_error_line(command: str, capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith(f"mtr {command}: error: ")
    return err.strip()


def test_chunk_into_an_unwritable_folder_is_one_line_naming_the_output(mini_kilt, unwritable, capsys):
    out = unwritable / "passages.jsonl"
    assert main(["chunk", str(mini_kilt / "knowledge_source.jsonl"), str(out)]) == 2
    assert f"{out}: cannot write there" in _one_error_line("chunk", capsys)


def test_bm25_into_an_unwritable_folder_is_one_line_naming_the_output(mini_kilt, unwritable, tmp_path, capsys):
    passages = tmp_path / "passages.jsonl"
    assert main(["chunk", str(mini_kilt / "knowledge_source.jsonl"), str(passages)]) == 0
    capsys.readouterr()
    assert main(["bm25", str(passages), str(mini_kilt / "nq-dev-kilt.jsonl"), "--out-dir", str(unwritable)]) == 2
    assert f"{unwritable / 'nq-dev-bm25.jsonl'}: cannot write there" in _one_error_line("bm25", capsys)


def test_retrieve_into_an_unwritable_folder_stops_before_loading_anything(mini_kilt, unwritable, capsys):
    out = unwritable / "pred.jsonl"  # the encoder and index do not exist: the output is checked first
    assert main(["retrieve", "--encoder", "e", "--index", "i", "--passages", "p",
                 "--queries", str(mini_kilt / "nq-dev-kilt.jsonl"), "--out", str(out)]) == 2
    assert f"{out}: cannot write there" in _one_error_line("retrieve", capsys)


def test_train_again_in_a_finished_run_without_resume_is_one_line(tiny_bert, mini_kilt, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model-name-or-path", str(tiny_bert), "--data-dir", str(mini_kilt), "--data-tasks", "nq",
            "--method", "single", "--optim-steps", "1", "--data-per-task-batch-size", "2", "--data-n-negatives", "1",
            "--progress", "false", "--output-dir", str(run)]
    assert main(argv) == 0
    log = (run / "train_log.jsonl").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    error = _one_error_line("train", capsys)
    assert error.startswith(f"mtr train: error: {run}: holds a training run (final)") and "--resume" in error
    assert (run / "train_log.jsonl").read_bytes() == log
    assert main([*argv, "--resume"]) == 0  # with --resume: already trained, nothing to do


@pytest.mark.parametrize("name, value", [("rerank_k", -1), ("rerank_k", 0), ("k", 0), ("rerank_queries", -1)])
def test_experiment_config_refuses_out_of_range_depths(name, value):
    from multitask_retriever.experiment import ExperimentConfig

    with pytest.raises(ValueError, match=f"^{name} must be"):
        ExperimentConfig(**{name: value})


def test_benchmark_quality_refuses_a_negative_rerank_k_in_one_line(mini_kilt, tmp_path, capsys):
    assert main(["benchmark-quality", str(mini_kilt), "--out", str(tmp_path / "r.json"), "--rerank-k", "-1"]) == 2
    assert "rerank_k must be >= 1, got -1" in _one_error_line("benchmark-quality", capsys)
    assert not (tmp_path / "r.json").exists()


def test_benchmark_quality_refuses_a_report_over_its_data_or_config(kilt_copy, tmp_path, capsys):
    gold = kilt_copy / "nq-dev-kilt.jsonl"
    _refused(["benchmark-quality", str(kilt_copy), "--out", str(gold), "--quiet"], gold, capsys)
    config = tmp_path / "run.json"
    config.write_text('{"systems": ["bm25"]}')
    _refused(["benchmark-quality", str(kilt_copy), "--config", str(config), "--out", str(config), "--quiet"],
             config, capsys)
    assert config.read_text() == '{"systems": ["bm25"]}'
