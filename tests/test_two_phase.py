"""The two-phase protocol: a naive base model, then a method continues from it (`init_from`)
with a fresh optimiser and schedule."""
import pytest
import torch

from conftest import TRAIN_TASKS as TASKS
from multitask_retriever.encoder import DualEncoder
from multitask_retriever.specialization import TacoConfig
from multitask_retriever.trainer import (MultitaskTrainer, TrainConfig, TrainDataConfig, TrainModelConfig,
                                         init_model_path)
from multitask_retriever.training_loop import OptimizerConfig


def _config(out, name_or_path="t5-base", init_from="", **changes) -> TrainConfig:
    values = dict(model=TrainModelConfig(name_or_path=name_or_path, init_from=init_from, query_max_length=32,
                                         passage_max_length=64),
                  data=TrainDataConfig(tasks=TASKS, per_task_batch_size=4, n_negatives=1),
                  optim=OptimizerConfig(lr=2e-3, steps=3), seed=5, output_dir=str(out), progress=False)
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def base(tiny_t5, training_data, tmp_path_factory):
    store, examples = training_data
    out = tmp_path_factory.mktemp("base")
    MultitaskTrainer(_config(out, name_or_path=str(tiny_t5)), examples=examples, store=store).train()
    return out


def _weights(path):
    return DualEncoder.from_pretrained(path).state_dict()


def test_init_from_a_run_folder_starts_from_its_final_model(base):
    assert init_model_path(base) == base / "final" / "model"
    assert init_model_path(base / "final" / "model") == base / "final" / "model"


def test_init_from_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "checkpoint-0000002").mkdir()
    with pytest.raises(FileNotFoundError, match="finish or resume that run first"):
        init_model_path(tmp_path)


def test_a_continuation_starts_from_the_base_weights_not_the_model_name(base, training_data, tmp_path):
    store, examples = training_data
    trainer = MultitaskTrainer(_config(tmp_path, name_or_path="no-such-model", init_from=str(base),
                                       method="taco"), examples=examples, store=store)
    start, saved = trainer.encoder().state_dict(), _weights(base / "final" / "model")
    assert all(torch.equal(start[name], saved[name]) for name in saved)


def test_a_resumed_continuation_equals_an_uninterrupted_one(base, training_data, tmp_path):
    store, examples = training_data

    def run(out, **kwargs):
        cfg = _config(out, init_from=str(base), method="taco", taco=TacoConfig(warmup_steps=1))
        return MultitaskTrainer(cfg, examples=examples, store=store).train(**kwargs)

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=2)
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.losses == straight.losses
    a, b = _weights(straight.model_path), _weights(resumed.model_path)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_benchmark_quality_continues_every_system_from_one_naive_base_and_names_tacos_scales(mini_kilt, tiny_bert, tmp_path):
    import json

    from conftest import kilt_folder
    from multitask_retriever.cli import main

    data = kilt_folder(mini_kilt, tmp_path / "kilt", ["fever", "nq"])
    work = tmp_path / "work"
    assert main(["benchmark-quality", str(data), "--out", str(tmp_path / "r.json"), "--work-dir", str(work),
                 "--quiet", "--systems", "naive,taco,taco.official", "--encoder", str(tiny_bert), "--k", "20", "--steps", "2",
                 "--base-steps", "3", "--per-task-batch-size", "4"]) == 0
    base = work / "train" / "naive-base" / "run"
    assert len((base / "train_log.jsonl").read_text().splitlines()) == 3
    scales = {}
    for name in ("naive", "taco", "taco.official"):
        state = torch.load(work / "train" / name / "run" / "final" / "trainer_state.pt", weights_only=True)
        assert state["config"]["model_name_or_path"] == str(base / "final" / "model")
        assert state["step"] == 2
        scales[name] = (state["config"]["method"], state["config"]["taco"]["scale"])
    assert scales["taco"] == ("taco", "mean") and scales["taco.official"] == ("taco", "official")


def test_a_seed_study_continues_every_seed_from_one_shared_base(mini_kilt, tiny_bert, tmp_path, caplog):
    import logging

    from conftest import kilt_folder
    from multitask_retriever.cli import main

    data = kilt_folder(mini_kilt, tmp_path / "kilt", ["fever", "nq"])
    work = tmp_path / "work"
    with caplog.at_level(logging.INFO, logger="mtr"):
        assert main(["benchmark-quality", str(data), "--out", str(tmp_path / "r.json"), "--work-dir", str(work),
                     "--quiet", "--systems", "naive,taco", "--seeds", "3,4", "--encoder", str(tiny_bert), "--k",
                     "20", "--steps", "2", "--base-steps", "2", "--per-task-batch-size", "4"]) == 0
    assert sum(r.getMessage().startswith("trained naive-base") for r in caplog.records) == 1
    base = work / "naive-base" / "run"
    assert torch.load(base / "final" / "trainer_state.pt", weights_only=True)["config"]["seed"] == 3
    assert not any((work / f"seed-{s}" / "train" / "naive-base").exists() for s in (3, 4))
    for seed in (3, 4):
        state = torch.load(work / f"seed-{seed}" / "train" / "taco" / "run" / "final" / "trainer_state.pt",
                           weights_only=True)
        assert state["config"]["model_name_or_path"] == str(base / "final" / "model")
        assert state["config"]["seed"] == seed
