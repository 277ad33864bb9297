"""TACO's training recipe, each piece switchable: temperature task mixing, a naive warm-up
with learning-rate warm-up (warmup_ratio), and top-ranked hard negatives."""
import json

import pytest
import torch
from torch import nn

from conftest import TRAIN_TASKS as TASKS
from multitask_retriever.data import MultitaskBatches, temperature_batch_sizes
from multitask_retriever.specialization import make_combiner
from multitask_retriever.trainer import MultitaskTrainer, TrainConfig, TrainDataConfig, TrainModelConfig
from multitask_retriever.training_loop import OptimizerConfig


# --------------------------------------------------------------------------- task mixing
def test_temperature_one_splits_the_batch_in_proportion_to_the_task_sizes():
    assert temperature_batch_sizes({"a": 300, "b": 100}, 8, 1.0) == {"a": 6, "b": 2}


def test_higher_temperature_flattens_the_split():
    counts = {"aida": 3707, "fever": 1986, "hotpotqa": 173}
    assert temperature_batch_sizes(counts, 24, 1.0) == {"aida": 15, "fever": 8, "hotpotqa": 1}
    # rates n^(1/4): 7.80, 6.68, 3.63 of 18.11 for the 21 queries left after one each
    assert temperature_batch_sizes(counts, 24, 4.0) == {"aida": 10, "fever": 9, "hotpotqa": 5}


def test_every_task_keeps_at_least_one_query_and_the_total_is_exact():
    sizes = temperature_batch_sizes({"big": 100_000, "tiny": 1, "small": 5}, 7, 1.0)
    assert sizes == {"big": 5, "tiny": 1, "small": 1}
    assert sum(sizes.values()) == 7


def test_temperature_mixing_errors():
    with pytest.raises(ValueError, match="cannot give each of 3 tasks one"):
        temperature_batch_sizes({"a": 1, "b": 1, "c": 1}, 2, 4.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        temperature_batch_sizes({"a": 1}, 2, 0.0)


def test_train_config_uses_the_mixing_for_its_batch_sizes():
    data = TrainDataConfig(per_task_batch_size=4, task_temperature=1.0)
    assert data.batch_sizes({"a": 30, "b": 10}) == {"a": 6, "b": 2}
    assert TrainDataConfig(per_task_batch_size=4).batch_sizes({"a": 30, "b": 10}) == {"a": 4, "b": 4}
    with pytest.raises(ValueError, match="task_temperature or task_batch_sizes"):
        TrainDataConfig(task_temperature=4.0, task_batch_sizes={"a": 2})


# --------------------------------------------------------------------------- warm-up
def test_warmup_ratio_sets_the_learning_rate_and_tacos_warm_up_only():
    steps = OptimizerConfig(steps=50)
    config = TrainConfig(output_dir="x", method="taco", optim=steps, warmup_ratio=0.1)
    assert config.lr_warmup_steps == 5
    assert config.combiner_kwargs()["warmup_steps"] == 5
    pcgrad = TrainConfig(output_dir="x", method="pcgrad", optim=steps, warmup_ratio=0.1)
    assert "warmup_steps" not in pcgrad.combiner_kwargs()
    asked = TrainConfig(output_dir="x", method="cgd", optim=steps, warmup_ratio=0.1,
                        combiner_options={"warmup_steps": 5})
    assert asked.combiner_kwargs()["warmup_steps"] == 5
    assert "warmup_steps" not in TrainConfig(output_dir="x", optim=steps, warmup_ratio=0.1).combiner_kwargs()
    assert TrainConfig(output_dir="x", optim=OptimizerConfig(steps=50, warmup_steps=3)).lr_warmup_steps == 3


def test_warmup_ratio_excludes_explicit_warm_up_steps():
    with pytest.raises(ValueError, match="warmup_ratio or optim.warmup_steps"):
        TrainConfig(output_dir="x", warmup_ratio=0.1, optim=OptimizerConfig(warmup_steps=2))
    with pytest.raises(ValueError, match=r"warmup_ratio must be in \[0, 1\)"):
        TrainConfig(output_dir="x", warmup_ratio=1.0)


def _two_task_step(combiner, params, grads):
    for t, g in enumerate(grads):
        params[0].grad = g.clone()
        combiner.observe(t, loss=1.0 + 2.0 * t)  # unequal losses move CGD off the mean
    combiner.apply()
    return params[0].grad.clone()


@pytest.mark.parametrize("method", ["pcgrad", "cgd", "taco"])
def test_combiners_write_the_plain_mean_during_the_naive_warm_up(method):
    param = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    grads = [torch.tensor([1.0, 0.5, -1.0]), torch.tensor([-2.0, 0.25, 1.5])]  # conflicting
    combiner = make_combiner(method, [param], 2, warmup_steps=2)
    mean = (grads[0] + grads[1]) / 2
    for _ in range(2):
        assert torch.allclose(_two_task_step(combiner, [param], grads), mean)
    assert not torch.allclose(_two_task_step(combiner, [param], grads), mean)


# --------------------------------------------------------------------------- negatives
@pytest.fixture(scope="module")
def data(training_data):
    return training_data


def test_top_sampling_takes_the_first_positive_and_top_ranked_negatives(data):
    store, examples = data
    batches = MultitaskBatches(examples, store, 3, n_negatives=2, seed=1, sampling="top")
    for step in range(3):
        batch = batches.batch("nq", step)
        by_id = {e.qid: e for e in examples["nq"]}
        for i, qid in enumerate(batch.qids):
            example = by_id[qid]
            group = batch.passage_ids[i * 3:(i + 1) * 3]
            assert group == [example.positives[0], *example.negatives[:2]]


def test_sampled_negatives_vary_across_steps(data):
    store, examples = data
    batches = MultitaskBatches(examples, store, len(examples["nq"]), n_negatives=1, seed=1)
    first, second = batches.batch("nq", 0), batches.batch("nq", 1)
    groups = lambda b: {q: tuple(b.passage_ids[i * 2:i * 2 + 2]) for i, q in enumerate(b.qids)}  # noqa: E731
    assert groups(first) != groups(second)


def test_unknown_negative_sampling_is_refused(data):
    store, examples = data
    with pytest.raises(ValueError, match="negative sampling must be one of sample, top"):
        MultitaskBatches(examples, store, 2, sampling="best")
    with pytest.raises(ValueError, match="negative_sampling must be one of sample, top"):
        TrainDataConfig(negative_sampling="best")


# --------------------------------------------------------------------------- in a run
def test_a_run_logs_the_learning_rate_warm_up_and_mixed_batch_sizes(tiny_t5, data, tmp_path):
    store, examples = data
    config = TrainConfig(model=TrainModelConfig(name_or_path=str(tiny_t5), query_max_length=32, passage_max_length=64),
                         data=TrainDataConfig(tasks=TASKS, per_task_batch_size=2, task_temperature=1.0, n_negatives=1,
                                              negative_sampling="top"),
                         method="taco", optim=OptimizerConfig(lr=1e-3, steps=4), warmup_ratio=0.5,
                         output_dir=str(tmp_path), progress=False)
    MultitaskTrainer(config, examples=examples, store=store).train()
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [round(r["lr"], 6) for r in rows] == [0.0, 0.0005, 0.001, 0.0005]
    state = torch.load(tmp_path / "final" / "trainer_state.pt", weights_only=True)
    sizes = state["data"]["batch_sizes"]
    assert sum(sizes.values()) == 6 and sizes == config.data.batch_sizes({t: len(examples[t]) for t in TASKS})
    assert state["data"]["sampling"] == "top"


# --------------------------------------------------------------------------- prompts
def test_the_prompt_style_sets_the_trained_models_query_prompts(tiny_t5, data, tmp_path):
    store, examples = data
    config = TrainConfig(model=TrainModelConfig(name_or_path=str(tiny_t5), query_prompt_style="taco-t5",
                                                query_max_length=32, passage_max_length=64),
                         data=TrainDataConfig(tasks=TASKS, per_task_batch_size=2, n_negatives=1),
                         optim=OptimizerConfig(steps=1), output_dir=str(tmp_path), progress=False)
    trainer = MultitaskTrainer(config, examples=examples, store=store)
    assert trainer.encoder().format_query("who?", "nq") == "NQ <extra_id_1> who?"
    with pytest.raises(ValueError, match="unknown prompt style 'gtr'; known: short, taco-t5"):
        TrainModelConfig(query_prompt_style="gtr")
