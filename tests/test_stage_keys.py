"""The stage keys of `mtr benchmark-quality` for the committed configs are pinned: finished
stages in existing work folders stay valid as long as the same settings give the same key.
The expected keys were computed by the code that first wrote those work folders; TACO's changed
once, when its default update scale became the mean gradient's (taco_scale: mean)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from multitask_retriever.config import config_from_args, load_config_file
from multitask_retriever.experiment import ExperimentConfig
from multitask_retriever.experiment.builders import (llm_reranker_key, llm_reranker_train_config, train_config,
                                                     train_stage_key)
from multitask_retriever.rerank.train import RerankTrainConfig
from multitask_retriever.specialization import TacoConfig
from multitask_retriever.trainer import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "scripts" / "configs"


def _config(*names: str) -> ExperimentConfig:
    files = [load_config_file(CONFIGS / f"{name}.yaml") for name in names]
    return config_from_args(ExperimentConfig, None, files, data_dir="DATA")


@pytest.mark.parametrize("files, method, tasks, key", [
    (["cpu"], "taco", ["fever", "nq"], "22d7818d7639622a"),
    (["cpu"], "naive", ["fever", "nq"], "9c28ef6bcf2ede50"),
    (["cpu"], "single", ["nq"], "a9c1e6c2745b69a7"),
    (["cpu", "quality-realkilt-slice"], "taco", ["fever", "nq"], "4a7ba0aa94423d49"),
    (["cpu", "quality-realkilt"], "taco", ["fever", "nq"], "3c848734ba48a79a"),
])
def test_dense_training_keys_are_those_of_earlier_runs(files, method, tasks, key):
    train = train_config(_config(*files), method, tasks, "START", "DATA", "PASSAGES", "EXAMPLES.jsonl", "OUT",
                         progress=False)
    assert train_stage_key("EXKEY", train) == key


@pytest.mark.parametrize("files, key", [(["cpu"], "eaa81789e5338353"),
                                        (["cpu", "quality-realkilt-slice"], "2858e583489126cd")])
def test_llm_reranker_keys_are_those_of_earlier_runs(files, key):
    c = _config(*files)
    train = llm_reranker_train_config(c, "lce+ql", "OUT", progress=False)
    assert llm_reranker_key("RKEY", "qpeft-a", "START", train, c.max_train_queries, c.rerank_k) == key


def test_a_changed_taco_setting_changes_the_key():
    c = _config("cpu")
    keys = {train_stage_key("EXKEY", train_config(config, "taco", ["nq"], "START", "DATA", "PASSAGES",
                                                  "EXAMPLES.jsonl", "OUT", progress=False))
            for config in (c, dataclasses.replace(c, taco=TacoConfig(tau=1.0)),
                           dataclasses.replace(c, taco=TacoConfig(scale="official")))}
    assert len(keys) == 3


@pytest.mark.parametrize("method", ["naive", "pcgrad", "cgd"])
def test_taco_scale_is_not_part_of_other_methods_keys(method):
    c = _config("cpu")
    keys = {train_stage_key("EXKEY", train_config(config, method, ["nq"], "START", "DATA", "PASSAGES",
                                                  "EXAMPLES.jsonl", "OUT", progress=False))
            for config in (c, dataclasses.replace(c, taco=TacoConfig(scale="official")))}
    assert len(keys) == 1


def test_without_the_cpu_file_the_budgets_are_the_librarys():
    c, train, rerank = ExperimentConfig(), TrainConfig(), RerankTrainConfig()
    assert (c.train.steps, c.train.per_task_batch_size, c.train.n_negatives, c.train.warmup_steps) == \
        (train.optim.steps, train.data.per_task_batch_size, train.data.n_negatives, train.optim.warmup_steps)
    assert (c.rerank.steps, c.rerank.batch_size, c.rerank.group_size, c.rerank.lr) == \
        (rerank.optim.steps, rerank.batch_size, rerank.group_size, rerank.optim.lr)
    assert c.train.taco == train.taco
