"""Hostile inputs (issue 23): every number is range-checked where it is declared, so the
Python API, config files and flags refuse it alike; every failure on a user file is one line
naming the file (exit 2, no traceback); every subcommand's --help works."""
from __future__ import annotations

import argparse
import importlib
import re
import shutil
from pathlib import Path

import pytest
import torch

from kilt.passages import write_passages
from multitask_retriever.cli import build_parser, main


def _cls(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(f"multitask_retriever.{module}"), name)


def _one_error_line(command: str, capsys) -> str:
    """stderr's one line besides progress bars (which tqdm redraws after a carriage return)."""
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line.strip() and "\r" not in line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"mtr {command}: error: "), err
    return lines[0]


def _last_error_line(command: str, capsys) -> str:
    """argparse's error line (after its usage lines)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def passages(mini_kilt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    return path


# --------------------------------------------------------------------------- numbers, Python API
@pytest.mark.parametrize("cls, name, value, message", [
    ("training_loop:OptimizerConfig", "lr", -1, "lr must be >= 0, got -1"),
    ("training_loop:OptimizerConfig", "weight_decay", -3, "weight_decay must be >= 0, got -3"),
    ("training_loop:OptimizerConfig", "max_grad_norm", -1, "max_grad_norm must be >= 0, got -1"),
    ("trainer:TrainConfig", "temperature", 0, "temperature must be > 0, got 0"),
    ("trainer:TrainConfig", "warmup_ratio", 1.0, "warmup_ratio must be in [0, 1), got 1.0"),
    ("training_loop:OptimizerConfig", "lr", float("nan"), "lr must be a finite number, got nan"),
    ("trainer:TrainDataConfig", "task_batch_sizes", {"nq": 0}, "task_batch_sizes['nq'] must be >= 1, got 0"),
    ("trainer:TrainModelConfig", "task_query_max_lengths", {"wow": -5},
     "task_query_max_lengths['wow'] must be >= 1, got -5"),
    ("rerank.train:RerankTrainConfig", "lr", -1, "lr must be >= 0, got -1"),  # old keywords: optim's ranges
    ("rerank.train:RerankTrainConfig", "weight_decay", -3, "weight_decay must be >= 0, got -3"),
    ("rerank.train:RerankTrainConfig", "max_grad_norm", -1, "max_grad_norm must be >= 0, got -1"),
    ("experiment:ExperimentConfig", "lr", -1, "lr must be >= 0, got -1"),  # TrainConfig's range, via field_like
    ("experiment:ExperimentConfig", "seeds", [1, -2], "seeds[1] must be >= 0, got -2"),
    ("experiment:ExperimentConfig", "fusion_validation", 1.5, "fusion_validation must be in [0, 1], got 1.5"),
    ("indexing:IndexConfig", "pq_bits", 17, "pq_bits must be in [1, 16], got 17"),
    ("encoder:EncoderConfig", "query_max_length", 0, "query_max_length must be >= 1, got 0"),
    ("rerank.cross_encoder:CrossEncoderConfig", "max_length", 0, "max_length must be >= 1, got 0"),
    ("rerank.qpeft:QPeftConfig", "num_heads", 0, "num_heads must be >= 1, got 0"),
    ("rerank.peft_baselines:LoraConfig", "dropout", 1.0, "dropout must be in [0, 1), got 1.0"),
])
def test_a_number_out_of_its_declared_range_is_named_with_its_value(cls, name, value, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _cls(cls)(**{name: value})


@pytest.mark.parametrize("cls, name, value, expected", [
    ("trainer:TrainDataConfig", "task_batch_sizes", {"nq": "x"}, "dict[str, int]"),
    ("trainer:TrainDataConfig", "task_batch_sizes", ["nq"], "dict[str, int]"),
    ("trainer:TrainModelConfig", "task_query_max_lengths", {"wow": 2.5}, "dict[str, int]"),
    ("trainer:TrainConfig", "combiner_options", {1: "a"}, "dict[str, Any]"),
    ("training_loop:OptimizerConfig", "steps", "10", "int"),
    ("rerank.train:RerankTrainConfig", "loss_options", "temperature=2", "dict[str, Any]"),
    ("encoder:EncoderConfig", "query_prompts", {"nq": 3}, "dict[str, str]"),
    ("rerank.llm_scoring:LLMScoringConfig", "task_instructions", {"nq": None}, "dict[str, str]"),
    ("experiment:ExperimentConfig", "seeds", ["1"], "list[int]"),
])
def test_a_value_of_the_wrong_type_is_named_not_a_traceback(cls, name, value, expected):
    config = _cls(cls)
    message = f"{config.__name__} field {name!r} expects {expected}, got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        config(**{name: value})


def test_search_pages_names_the_k_it_was_given():
    """The check comes before k is multiplied into a passage depth (it said "got -4")."""
    from multitask_retriever.retriever import Retriever

    with pytest.raises(ValueError, match=r"got -1 and 4$"):
        Retriever.search_pages(object.__new__(Retriever), ["q"], k=-1)


# --------------------------------------------------------------------------- numbers, files and flags
@pytest.mark.parametrize("command, text, message", [
    ("train", "lr: -1\n", "lr must be >= 0, got -1.0"),
    ("train", "weight_decay: -3\n", "weight_decay must be >= 0, got -3.0"),
    ("train", "max_grad_norm: -1\n", "max_grad_norm must be >= 0, got -1.0"),
    ("train", "task_batch_sizes: {nq: x}\n",
     "TrainDataConfig field 'task_batch_sizes' expects dict[str, int], got {'nq': 'x'}"),
    ("train", "taco: {tau: fast}\n", "TacoConfig field 'tau' expects float, got 'fast'"),
    ("benchmark-quality", "seeds: [0, -1]\n", "seeds[1] must be >= 0, got -1"),
])
def test_a_config_file_value_out_of_range_or_type_is_one_line(command, text, message, mini_kilt, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    argv = [command, "--config", str(config)]
    if command == "benchmark-quality":
        argv += [str(mini_kilt), "--out", str(tmp_path / "r.json")]
    assert main(argv) == 2
    assert _one_error_line(command, capsys) == f"mtr {command}: error: {message}"


@pytest.mark.parametrize("argv, message", [
    (["train", "--optim-max-grad-norm", "-1"], "max_grad_norm must be >= 0, got -1.0"),
    (["index", "--shards", "s", "--out", "o", "--pq-bits", "17"], "pq_bits must be in [1, 16], got 17"),
    # checked before any retrieval: the passage file "p" does not exist
    (["train-reranker", "--method", "zero-shot", "--data-dir", "d", "--passages", "p", "--output-dir", "o",
      "--optim-lr", "-1"], "lr must be >= 0, got -1.0"),
])
def test_a_config_flag_out_of_range_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    assert _one_error_line(argv[0], capsys) == f"mtr {argv[0]}: error: {message}"


RETRIEVE = ["retrieve", "--encoder", "e", "--index", "i", "--passages", "p", "--queries", "q", "--out", "o"]


@pytest.mark.parametrize("argv, flag, value, bound", [
    (RETRIEVE, "--k", "-1", ">= 1"),
    (["pipeline", "--passages", "p", "--queries", "q", "--out", "o"], "--k", "0", ">= 1"),
    (["train-reranker", "--method", "zero-shot", "--data-dir", "d", "--passages", "p", "--output-dir", "o"],
     "--max-queries", "-1", ">= 0"),
    (["mine-negatives", "--data-dir", "d", "--passages", "p", "--out", "o"], "--max-queries", "-1", ">= 0"),
    (["bm25", "p", "q", "--out-dir", "o"], "--k", "-1", ">= 1"),
    (["chunk", "ks", "out"], "--words", "0", ">= 1"),
    (["encode", "--encoder", "e", "--passages", "p", "--out-dir", "o"], "--batch-size", "0", ">= 1"),
    (["kilt-subset", "k", "ks", "o"], "--distractors", "-1", ">= 0"),
])
def test_a_flag_out_of_range_names_the_value_given(argv, flag, value, bound, capsys):
    assert main([*argv, flag, value]) == 2
    assert _last_error_line(argv[0], capsys) == f"mtr {argv[0]}: error: argument {flag}: must be {bound}, got {value}"


def test_a_flag_that_is_no_number_names_the_text_given(capsys):
    assert main([*RETRIEVE, "--k", "ten"]) == 2
    assert _last_error_line("retrieve", capsys) == "mtr retrieve: error: argument --k: expected int, got 'ten'"


# --------------------------------------------------------------------------- user files
def _append_line(source: Path, target: Path, line: bytes) -> int:
    """`target`: `source` with `line` appended; returns that line's number."""
    data = source.read_bytes()
    target.write_bytes(data + line + b"\n")
    return data.count(b"\n") + 1


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(scope="module")
def saved_rerankers(tiny_bert, tiny_gpt2, tmp_path_factory) -> dict[str, Path]:
    from multitask_retriever.rerank import make_reranker

    root = tmp_path_factory.mktemp("rerankers")
    folders = {"cross-encoder": (str(tiny_bert), root / "ce"), "qpeft-a": (str(tiny_gpt2), root / "qpeft")}
    for method, (model, folder) in folders.items():
        make_reranker(method, model).save_pretrained(folder)
    return {method: folder for method, (_, folder) in folders.items()}


def _reranker_copy(saved_rerankers, method: str, tmp_path: Path) -> Path:
    folder = tmp_path / "reranker"
    shutil.copytree(saved_rerankers[method], folder)
    return folder


def _pipeline(reranker: Path, passages: Path, mini_kilt: Path, tmp_path: Path) -> list[str]:
    return ["pipeline", "--passages", str(passages), "--queries", str(mini_kilt / "nq-dev-kilt.jsonl"),
            "--out", str(tmp_path / "pred.jsonl"), "--reranker", str(reranker)]


def _config_not_utf8_yaml(tmp_path, **_):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"lr: 0.1\n# caf\xe9\n")
    return ["train", "--config", str(config)], f"{config}:2: not UTF-8 (byte 0xe9 at byte 6 of the line)"


def _config_not_utf8_json(tmp_path, mini_kilt, **_):
    config = tmp_path / "run.json"
    config.write_bytes(b'{"systems": ["\xff"]}')
    return (["benchmark-quality", str(mini_kilt), "--config", str(config), "--out", str(tmp_path / "r.json")],
            f"{config}:1: not UTF-8 (byte 0xff at byte 15 of the line)")


def _config_unparsable(tmp_path, **_):
    config = tmp_path / "run.yaml"
    config.write_text("lr: [0.1\n")  # yaml's message spans several lines
    return ["train", "--config", str(config)], f"{config}: cannot parse config"


def _passages_not_utf8(tmp_path, passages, mini_kilt, **_):
    bad = tmp_path / "passages.jsonl"
    line = _append_line(passages, bad, b'{"id": 9999, "text": "\xff"}')
    return (["bm25", str(bad), str(mini_kilt / "nq-dev-kilt.jsonl"), "--out-dir", str(tmp_path / "o")],
            f"{bad}:{line}: not UTF-8 (byte 0xff at byte 23 of the line)")


def _task_not_utf8(tmp_path, passages, mini_kilt, **_):
    bad = tmp_path / "nq-dev-kilt.jsonl"
    line = _append_line(mini_kilt / "nq-dev-kilt.jsonl", bad, b'{"id": "x", "input": "\xff"}')
    return (["bm25", str(passages), str(bad), "--out-dir", str(tmp_path / "o")],
            f"{bad}:{line}: not UTF-8 (byte 0xff at byte 23 of the line)")


def _reranker_meta_not_utf8(tmp_path, passages, mini_kilt, saved_rerankers, **_):
    folder = _reranker_copy(saved_rerankers, "cross-encoder", tmp_path)
    (folder / "mtr_reranker.json").write_bytes(b'{"method": "\xff"}')
    return (_pipeline(folder, passages, mini_kilt, tmp_path),
            f"{folder / 'mtr_reranker.json'}:1: not UTF-8 (byte 0xff at byte 13 of the line)")


def _reranker_meta_invalid_json(tmp_path, passages, mini_kilt, saved_rerankers, **_):
    folder = _reranker_copy(saved_rerankers, "cross-encoder", tmp_path)
    (folder / "mtr_reranker.json").write_text('{"method": ')
    return _pipeline(folder, passages, mini_kilt, tmp_path), f"{folder / 'mtr_reranker.json'}:1: invalid JSON"


def _cross_encoder_weights_corrupt(tmp_path, passages, mini_kilt, saved_rerankers, **_):
    folder = _reranker_copy(saved_rerankers, "cross-encoder", tmp_path)
    weights = _truncate(folder / "model.safetensors")
    return _pipeline(folder, passages, mini_kilt, tmp_path), f"{weights}: cannot read the weights"


def _llm_reranker_weights_corrupt(tmp_path, passages, mini_kilt, saved_rerankers, **_):
    folder = _reranker_copy(saved_rerankers, "qpeft-a", tmp_path)
    weights = _truncate(folder / "module.safetensors")
    return _pipeline(folder, passages, mini_kilt, tmp_path), f"{weights}: cannot read the weights"


def _encoder_weights_corrupt(tmp_path, passages, tiny_bert, **_):
    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_bert, encoder)
    weights = _truncate(encoder / "model.safetensors")
    return (["encode", "--encoder", str(encoder), "--passages", str(passages), "--out-dir", str(tmp_path / "s")],
            f"{weights}: cannot read the weights")


def _encoder_missing_folder(tmp_path, passages, **_):
    (tmp_path / "out").mkdir()  # `out/nope` reads as a folder and as a hub name: the message covers both
    return (["encode", "--encoder", "out/nope", "--passages", str(passages), "--out-dir", str(tmp_path / "s")],
            "out/nope: no such model folder, and no Hugging Face model of that name is available offline")


def _encoder_unknown_hub_name(tmp_path, passages, **_):
    return (["encode", "--encoder", "nobody/no-such-model", "--passages", str(passages), "--out-dir", "s"],
            "nobody/no-such-model: no such model folder, and no Hugging Face model of that name is available offline")


def _evaluate_missing_guess(tmp_path, mini_kilt, **_):
    return (["evaluate", str(mini_kilt / "nq-dev-kilt.jsonl"), str(tmp_path / "missing.jsonl")],
            f"{tmp_path / 'missing.jsonl'}: file not found")


@pytest.mark.parametrize("case", [
    _config_not_utf8_yaml, _config_not_utf8_json, _config_unparsable, _passages_not_utf8, _task_not_utf8,
    _reranker_meta_not_utf8, _reranker_meta_invalid_json, _cross_encoder_weights_corrupt,
    _llm_reranker_weights_corrupt, _encoder_weights_corrupt, _encoder_missing_folder, _encoder_unknown_hub_name,
    _evaluate_missing_guess,
], ids=lambda case: case.__name__.strip("_").replace("_", "-"))
def test_a_bad_user_file_is_one_line_naming_it(case, request, tmp_path, passages, mini_kilt, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    models = {name: request.getfixturevalue(name) for name in ("tiny_bert", "saved_rerankers")
              if name in case.__code__.co_varnames}
    argv, expected = case(tmp_path=tmp_path, passages=passages, mini_kilt=mini_kilt, **models)
    capsys.readouterr()
    assert main(argv) == 2
    assert _one_error_line(argv[0], capsys).startswith(f"mtr {argv[0]}: error: {expected}")


def test_an_error_loading_a_run_is_one_line(tmp_path, capsys, monkeypatch):
    """What the training loop raises for a bad trainer_state.pt (a ValueError naming it, its
    message perhaps on several lines) comes out as one line."""
    from multitask_retriever.trainer import MultitaskTrainer

    state = tmp_path / "run" / "final" / "trainer_state.pt"

    def bad_state(self, resume=False, stop_after=None):
        raise ValueError(f"{state}: lacks the keys 'step', 'config'\n(written by another version?)")

    monkeypatch.setattr(MultitaskTrainer, "train", bad_state)
    assert main(["train", "--output-dir", str(tmp_path / "run"), "--resume"]) == 2
    assert _one_error_line("train", capsys) == \
        f"mtr train: error: {state}: lacks the keys 'step', 'config' (written by another version?)"


def test_a_state_file_without_its_keys_is_one_line_naming_it(tiny_bert, mini_kilt, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model-name-or-path", str(tiny_bert), "--data-dir", str(mini_kilt), "--data-tasks", "nq",
            "--method", "single", "--optim-steps", "1", "--data-per-task-batch-size", "2", "--data-n-negatives", "1",
            "--progress", "false", "--output-dir", str(run)]
    assert main(argv) == 0
    state = run / "final" / "trainer_state.pt"
    torch.save({}, state)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert str(state) in _one_error_line("train", capsys)


# --------------------------------------------------------------------------- --help
def _subcommands() -> list[str]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_a_working_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mtr {command} ") and "options:" in out


def test_evaluate_takes_options_before_its_files(mini_kilt, tmp_path, capsys):
    from kilt.io import read_task_file, write_predictions

    gold = mini_kilt / "nq-dev-kilt.jsonl"
    write_predictions(tmp_path / "guess.jsonl", [(e.id, e.gold_pages) for e in read_task_file(gold)])
    assert main(["evaluate", "--json", "--ks", "1", str(gold), str(tmp_path / "guess.jsonl")]) == 0
    assert '"Rprec": 1.0' in capsys.readouterr().out
