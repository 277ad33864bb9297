"""`mtr train-reranker`: its flags and choices come from RerankTrainConfig and the registries,
and every method trains the same way (one stage in --output-dir)."""
from __future__ import annotations


import pytest

from kilt.passages import write_passages
from multitask_retriever.cli import build_parser, main
from multitask_retriever.config import config_from_args, replace_places
from multitask_retriever.rerank import METHODS
from multitask_retriever.rerank.train import RerankTrainConfig

REQUIRED = ["train-reranker", "--data-dir", "d", "--passages", "p", "--output-dir", "out"]


def test_unset_flags_are_the_configs_defaults():
    args = build_parser().parse_args([*REQUIRED, "--method", "qpeft-a"])
    assert config_from_args(RerankTrainConfig, args) == RerankTrainConfig(output_dir="out")


def test_every_config_field_has_its_flag():
    args = build_parser().parse_args([*REQUIRED, "--method", "lora", "--optim-steps", "7", "--batch-size", "3",
                                      "--optim-lr", "0.5", "--scheduler", "cosine", "--optim-max-grad-norm", "2"])
    assert config_from_args(RerankTrainConfig, args) == replace_places(RerankTrainConfig(output_dir="out"), {
        "optim.steps": 7, "batch_size": 3, "optim.lr": 0.5, "scheduler": "cosine", "optim.max_grad_norm": 2.0})


def test_the_method_choices_are_the_registry():
    parser = build_parser()
    for method in METHODS:
        assert parser.parse_args([*REQUIRED, "--method", method]).method == method
    with pytest.raises(SystemExit):
        parser.parse_args([*REQUIRED, "--method", "monot5"])


@pytest.fixture(scope="module")
def passages(mini_kilt, tmp_path_factory):
    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    return path


@pytest.mark.parametrize("method, model", [("prompt-tuning", "tiny_llama"), ("cross-encoder", "tiny_bert")])
def test_one_stage_of_any_method_trains_in_the_output_dir(request, method, model, passages, mini_kilt, tmp_path,
                                                          capsys):
    out = tmp_path / "run"
    assert main(["train-reranker", "--method", method, "--model", str(request.getfixturevalue(model)),
                 "--data-dir", str(mini_kilt), "--tasks", "nq", "--passages", str(passages), "--output-dir", str(out),
                 "--optim-steps", "2", "--batch-size", "2", "--group-size", "3", "--max-queries", "4",
                 "--progress", "false"]) == 0
    assert f"reranker: {out / 'final' / 'reranker'}" in capsys.readouterr().out
    state = (out / "final" / "reranker" / "mtr_reranker.json").read_text()
    assert f'"method": "{method}"' in state


def test_the_output_dir_is_required(mini_kilt, capsys):
    assert main(["train-reranker", "--method", "lora", "--data-dir", str(mini_kilt), "--passages", "p"]) == 2
    assert "--output-dir is required" in capsys.readouterr().err
