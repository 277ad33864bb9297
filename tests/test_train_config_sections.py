"""TrainConfig in sections (model, data, optim, taco) and RerankTrainConfig's optim section: the
flat spellings of earlier versions (file keys, flags, keywords, attributes) still give the same
config, and a run records its settings as before, so runs saved earlier resume."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from multitask_retriever.cli import build_parser
from multitask_retriever.config import config_from_args
from multitask_retriever.rerank.train import RerankTrainConfig
from multitask_retriever.trainer import TrainConfig, TrainDataConfig, TrainModelConfig
from multitask_retriever.training_loop import STATE_NAME, OptimizerConfig, TrainingLoop, run_settings

OLD = {"model_name_or_path": "m", "data_dir": "d", "passages": "p.jsonl", "per_task_batch_size": 2, "lr": 1e-5,
       "steps": 3, "mixed_precision": "bf16"}
NEW = {"model": {"name_or_path": "m"}, "data": {"dir": "d", "passages": "p.jsonl", "per_task_batch_size": 2},
       "optim": {"lr": 1e-5, "steps": 3, "mixed_precision": "bf16"}}
EXPECTED = TrainConfig(model=TrainModelConfig(name_or_path="m"),
                       data=TrainDataConfig(dir="d", passages="p.jsonl", per_task_batch_size=2),
                       optim=OptimizerConfig(lr=1e-5, steps=3, mixed_precision="bf16", weight_decay=0.0,
                                             max_grad_norm=1.0))

#: what `run_settings` gave for TrainConfig(output_dir="x") when TrainConfig was flat
FLAT_SETTINGS = {
    "model_name_or_path": "t5-base", "init_from": "", "pooling": "auto", "normalize": None, "data_dir": "",
    "passages": "", "tasks": [], "method": "naive", "per_task_batch_size": 16, "task_batch_sizes": {},
    "task_temperature": 0.0, "n_negatives": 2, "negatives": "bm25", "negative_sampling": "sample",
    "negative_depth": 100, "negatives_per_query": 30, "max_train_queries": 0, "lr": 5e-06, "weight_decay": 0.0,
    "warmup_steps": 0, "warmup_ratio": 0.0, "steps": 1000, "max_grad_norm": 1.0, "temperature": 1.0,
    "query_max_length": 64, "query_prompt_style": "", "task_query_max_lengths": {}, "passage_max_length": 160,
    "gather_negatives": True, "mixed_precision": "no", "gradient_checkpointing": False, "seed": 42,
    "taco": {"beta": 0.999, "tau": 2.0, "warmup_steps": 0, "exact": False, "median": "nonzero", "scale": "mean"},
    "combiner_options": {}, "diagnostics_depth": 4}


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_old_flat_file_keys_give_the_config_of_the_sections(caplog):
    assert config_from_args(TrainConfig, None, OLD) == config_from_args(TrainConfig, None, NEW) == EXPECTED


def test_each_old_file_key_is_one_deprecation_line_but_those_spelled_as_their_flat_place(caplog):
    config_from_args(TrainConfig, None, [OLD, {"steps": 4}])
    assert _messages(caplog) == [
        "config key 'passages' is deprecated: write it as data.passages",
        "config key 'per_task_batch_size' is deprecated: write it as data.per_task_batch_size",
        "config key 'lr' is deprecated: write it as optim.lr",
        "config key 'steps' is deprecated: write it as optim.steps",
        "config key 'mixed_precision' is deprecated: write it as optim.mixed_precision"]


def test_old_flags_give_the_config_of_the_section_flags_with_one_line_each(caplog):
    parser = build_parser()
    shared = ["train", "--model-name-or-path", "m", "--data-dir", "d"]
    old = parser.parse_args([*shared, "--passages", "p.jsonl", "--per-task-batch-size", "2", "--lr", "1e-5",
                             "--steps", "3", "--mixed-precision", "bf16"])
    assert _messages(caplog) == ["--passages is deprecated: use --data-passages",
                                 "--per-task-batch-size is deprecated: use --data-per-task-batch-size",
                                 "--lr is deprecated: use --optim-lr", "--steps is deprecated: use --optim-steps",
                                 "--mixed-precision is deprecated: use --optim-mixed-precision"]
    new = parser.parse_args([*shared, "--data-passages", "p.jsonl", "--data-per-task-batch-size", "2",
                             "--optim-lr", "1e-5", "--optim-steps", "3", "--optim-mixed-precision", "bf16"])
    assert config_from_args(TrainConfig, old) == config_from_args(TrainConfig, new) == EXPECTED


def test_old_keywords_warn_and_keep_the_owners_other_defaults():
    with pytest.warns(DeprecationWarning, match=r"TrainConfig\(steps=\.\.\.\) is deprecated: use optim\.steps"):
        config = TrainConfig(model_name_or_path="m", data_dir="d", passages="p.jsonl", per_task_batch_size=2,
                             lr=1e-5, steps=3, mixed_precision="bf16")
    assert config == EXPECTED
    with pytest.warns(DeprecationWarning):
        assert TrainConfig(steps=3).optim == OptimizerConfig(lr=5e-6, steps=3, weight_decay=0.0, max_grad_norm=1.0)


def test_old_attribute_names_read_the_new_places():
    assert (EXPECTED.lr, EXPECTED.steps, EXPECTED.data_dir, EXPECTED.model_name_or_path) == (1e-5, 3, "d", "m")


def test_train_help_lists_the_section_flags_with_the_owners_defaults_and_hides_the_old_ones():
    out = subprocess.run([sys.executable, "-m", "multitask_retriever.cli", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--model-name-or-path", "--model-query-max-length", "--data-dir", "--data-tasks",
                 "--data-negative-rounds", "--optim-lr", "--optim-steps", "--warmup-ratio", "--taco-beta"):
        assert re.search(rf"^\s+{flag}\b", out, re.M), flag
    assert re.search(r"--optim-lr OPTIM_LR\s+peak learning rate \[default:\s+5e-06", out)
    assert re.search(r"--optim-max-grad-norm OPTIM_MAX_GRAD_NORM\s+gradient clipping norm \(0 = none\)\s+"
                     r"\[default: 1\.0", out)
    assert not re.search(r"^\s+--(lr|steps|passages|per-task-batch-size)\b", out, re.M)


def test_rerank_train_config_takes_its_old_keys_flags_and_keywords(caplog):
    expected = RerankTrainConfig(optim=OptimizerConfig(lr=1e-4, steps=7, weight_decay=0.01, max_grad_norm=10.0),
                                 batch_size=2)
    assert config_from_args(RerankTrainConfig, None, {"lr": 1e-4, "steps": 7, "batch_size": 2}) == expected
    args = build_parser().parse_args(["train-reranker", "--data-dir", "d", "--passages", "p", "--output-dir", "o",
                                      "--method", "lora", "--lr", "1e-4", "--steps", "7", "--batch-size", "2"])
    assert config_from_args(RerankTrainConfig, args, output_dir="") == expected
    with pytest.warns(DeprecationWarning, match=r"RerankTrainConfig\(lr=\.\.\.\) is deprecated: use optim\.lr"):
        assert RerankTrainConfig(lr=1e-4, steps=7, batch_size=2) == expected
    assert _messages(caplog) == ["config key 'lr' is deprecated: write it as optim.lr",
                                 "config key 'steps' is deprecated: write it as optim.steps",
                                 "--lr is deprecated: use --optim-lr", "--steps is deprecated: use --optim-steps"]


def test_train_reranker_help_shows_the_rerankers_optimiser_defaults():
    out = subprocess.run([sys.executable, "-m", "multitask_retriever.cli", "train-reranker", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert re.search(r"--optim-lr OPTIM_LR\s+peak learning rate \[default:\s+3e-05", out)
    assert re.search(r"--optim-weight-decay OPTIM_WEIGHT_DECAY\s+AdamW weight decay \[default:\s+0\.01", out)


def test_a_run_records_its_settings_spelled_flat_as_before():
    assert run_settings(TrainConfig(output_dir="x")) == FLAT_SETTINGS
    assert run_settings(RerankTrainConfig(output_dir="x")) == {
        "loss": "lce", "loss_options": {}, "lr": 3e-05, "weight_decay": 0.01, "scheduler": "linear",
        "warmup_steps": 0, "steps": 1000, "batch_size": 8, "group_size": 8, "max_grad_norm": 10.0,
        "mixed_precision": "no", "seed": 0}


@pytest.mark.parametrize("recorded", ["settings", "config"])
def test_a_checkpoint_saved_by_the_flat_config_resumes(tmp_path, recorded):
    """Settings of a run saved before the sections (or, older still, only its config) compare equal
    to the same settings spelled in sections; other settings are still refused."""
    folder = tmp_path / "run" / "checkpoint-0000002"
    folder.mkdir(parents=True)
    saved = {"step": 2, "config": {**FLAT_SETTINGS, "output_dir": str(tmp_path / "run"), "save_every": 1,
                                   "progress": False}}
    if recorded == "settings":
        saved["settings"] = FLAT_SETTINGS
    torch.save(saved, folder / STATE_NAME)
    loop = TrainingLoop(TrainConfig(output_dir=str(tmp_path / "run"), save_every=1, progress=False), resume=True)
    assert loop.step == 2
    with pytest.raises(ValueError, match=r"other settings than the run's \(lr: 5e-06 -> 1e-05\)"):
        TrainingLoop(TrainConfig(output_dir=str(tmp_path / "run"), optim=OptimizerConfig(lr=1e-5, max_grad_norm=1.0)),
                     resume=True)
