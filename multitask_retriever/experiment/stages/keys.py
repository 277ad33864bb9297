"""The library configs the stages train with (`TrainConfig`, `RerankTrainConfig`) and the stage
keys they give; the spellings here are stamped on existing work folders, so they only change
when a change must retrain."""
from __future__ import annotations

import dataclasses
from typing import Any

from ...config import flat_fields, replace_places, section_places, unmoved_fields
from ...rerank.losses import make_loss
from ...rerank.train import RerankTrainConfig
from ...trainer import TrainConfig
from ..cache import stage_key
from ..config import ExperimentConfig

#: how rerankers read their inputs, in every reranker's stage key: a change here retrains them
RERANK_INPUTS = {"query_cut": "task-aware"}

#: the naive base model every fine-tuned system continues from under `base_steps`
BASE_RUN = "naive-base"

#: TrainConfig fields added after stage keys were first pinned: keyed only when set, so the
#: finished stages of earlier work folders keep their keys
_LATER_TRAIN_FIELDS = {"negative_rounds": 0, "warmup_ratio": 0.0, "task_temperature": 0.0,
                       "negative_sampling": "sample", "query_prompt_style": "", "init_from": "",
                       "model_storage_dtype": "float32"}


def train_config(c: ExperimentConfig, method: str, tasks: list[str], start: str, data_dir: str, passages: str,
                 negatives: str, output_dir: str, progress: bool) -> TrainConfig:
    """The TrainConfig of a fine-tuned dual encoder (`method`: a combiner or single): the
    experiment's `train` section, and what the experiment sets for every stage or system."""
    return replace_places(TrainConfig(), {
        **section_places(c.train), "model.name_or_path": start, "data.dir": data_dir, "data.passages": passages,
        "data.tasks": tasks, "method": method, "data.negatives": negatives,
        "model.query_max_length": c.query_max_length, "model.passage_max_length": c.passage_max_length,
        "seed": c.seed, "output_dir": output_dir, "progress": progress})


def train_stage_key(examples_key: str | None, train: TrainConfig) -> str:
    """A dual-encoder training stage's key: its training data's key and every TrainConfig field,
    sections spelled flat (taco_beta, ...) and moved fields by their old names (lr, data_dir, ...)."""
    fields = {k: v for k, v in flat_fields(train, unmoved=True).items()
              if k not in _LATER_TRAIN_FIELDS or v != _LATER_TRAIN_FIELDS[k]}
    if train.method != "taco":  # added later, and only TACO reads it: other methods keep their keys
        fields.pop("taco_scale")
    if train.method in ("pcgrad", "cgd") and train.warmup_ratio:  # their naive warm-up became opt-in
        fields["warmup_ratio_scope"] = "taco"
    if train.data.negative_rounds:  # rounds now carry the combiner and optimiser state
        fields["round_state"] = "carried"
    return stage_key(examples=examples_key, train=fields)


def llm_reranker_train_config(c: ExperimentConfig, loss: str, output_dir: str, progress: bool,
                              steps: int = 0) -> RerankTrainConfig:
    """An LLM reranker's training: the `rerank` section with `llm_reranker_lr` for its small
    modules; `steps` overrides the budget."""
    return replace_places(RerankTrainConfig(), {
        **section_places(c.rerank), "optim.steps": steps or c.rerank.steps, "optim.lr": c.llm_reranker_lr,
        "loss": loss, "seed": c.seed, "output_dir": output_dir, "progress": progress})


def llm_reranker_key(retriever_key: str, method: str, start: str, train: RerankTrainConfig,
                     max_train_queries: int, rerank_k: int, **holdout: Any) -> str:
    """An LLM reranker stage's key. The loss enters as the repr of its object and the config with
    the default loss name, the spelling stamped on existing work folders."""
    keyed = dataclasses.replace(train, loss=RerankTrainConfig.loss)
    loss = make_loss(train.loss, **train.loss_options)
    return stage_key(retriever=retriever_key, method=method, start=start, train=unmoved_fields(keyed),
                     loss=repr(loss), max_train_queries=max_train_queries, rerank_k=rerank_k, **holdout)


def cross_encoder_train_config(c: ExperimentConfig, distill: bool, output_dir: str,
                               progress: bool, steps: int = 0) -> RerankTrainConfig:
    """A cross-encoder stage: contrastive (LCE) or distillation (`distill_loss`), the `rerank`
    section's settings; `steps`, else `cross_encoder_steps`, overrides its budget."""
    return replace_places(RerankTrainConfig(), {
        **section_places(c.rerank), "optim.steps": steps or c.cross_encoder_steps or c.rerank.steps,
        "loss": c.distill_loss if distill else "lce", "seed": c.seed, "output_dir": output_dir, "progress": progress})


def cross_encoder_key(retriever_key: str, method: str, start: str, train: RerankTrainConfig, distill: bool,
                      teacher_key: str | None, max_train_queries: int, rerank_k: int, **data: Any) -> str:
    """A cross-encoder stage's key: a distill stage keys on its teacher scores' key, a contrastive
    one on loss=None (its loss is the one its config names)."""
    source = {"teacher": teacher_key} if distill else {"loss": repr(None)}
    return stage_key(retriever=retriever_key, method=method, start=start, train=unmoved_fields(train), **source,
                     max_train_queries=max_train_queries, rerank_k=rerank_k, **data)
