"""MultitaskTrainer: every combiner and single-task training lower the loss; resume is exact;
`mtr train` runs from the command line."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TRAIN_TASKS as TASKS
from multitask_retriever.cli import main
from multitask_retriever.config import replace_places
from multitask_retriever.data import MultitaskBatches
from multitask_retriever.examples import TrainingExample, read_training_examples, write_training_examples
from multitask_retriever.encoder import DualEncoder
from multitask_retriever.losses import ContrastiveLoss
from multitask_retriever.specialization import COMBINERS, TacoConfig
from multitask_retriever.trainer import (MultitaskTrainer, TrainConfig, TrainDataConfig, TrainModelConfig,
                                         specialization_summary)
from multitask_retriever.training_loop import OptimizerConfig

METHODS = sorted(COMBINERS) + ["single"]


@pytest.fixture(scope="module")
def data(training_data):
    return training_data


def _config(model, out, steps=6, tasks=TASKS, **changes):
    values = dict(model=TrainModelConfig(name_or_path=str(model), query_max_length=32, passage_max_length=64),
                  data=TrainDataConfig(tasks=list(tasks), per_task_batch_size=4, n_negatives=1),
                  optim=OptimizerConfig(lr=2e-3, steps=steps, warmup_steps=1), seed=5, output_dir=str(out),
                  progress=False, taco=TacoConfig(warmup_steps=2))
    values.update(changes)
    return TrainConfig(**values)


def _held_out_loss(model_path, examples, store) -> float:
    """Mean loss over fixed batches (another seed than training's), in eval mode."""
    encoder = DualEncoder.from_pretrained(model_path).eval()
    batches = MultitaskBatches(examples, store, 8, n_negatives=1, seed=123)
    loss = ContrastiveLoss()
    values = []
    with torch.no_grad():
        for task in batches.tasks:
            for step in range(2):
                batch = batches.batch(task, step)
                features = batch.tokenize(encoder)
                values.append(loss(encoder.embed(features["query"]), encoder.embed(features["passage"]),
                                   batch.exclude).item())
    return sum(values) / len(values)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_lowers_the_loss(method, tiny_t5, data, tmp_path):
    store, examples = data
    if method == "single":
        examples = {"nq": examples["nq"]}
    cfg = _config(tiny_t5, tmp_path / method, method=method, tasks=list(examples), steps=25)
    result = MultitaskTrainer(cfg, examples=examples, store=store).train()
    assert result.step == 25 and len(result.losses) == 25
    assert sorted(result.task_losses) == sorted(examples)
    before = _held_out_loss(tiny_t5, examples, store)
    after = _held_out_loss(result.model_path, examples, store)
    assert after < 0.8 * before, (method, before, after)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first, (method, result.losses)


def _assert_same_state(a, b, where="combiner"):
    """Nested dicts / lists / tensors equal to 1e-6 (combiner states hold EMAs and RNG states)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=where)
    else:
        assert a == b, where


RESUMABLE = [(m, False) for m in sorted(COMBINERS)] + ([("taco", True)] if "taco" in COMBINERS else [])


@pytest.mark.parametrize("method,exact", RESUMABLE)
def test_resume_is_exact(method, exact, tiny_t5, data, tmp_path):
    """6 steps straight == 3 steps, stop, resume, 3 steps (weights, log, combiner state)."""
    store, examples = data

    def config(run):
        return _config(tiny_t5, tmp_path / run, method=method, taco=TacoConfig(warmup_steps=2, exact=exact))

    straight = MultitaskTrainer(config("a"), examples=examples, store=store).train(keep_optimizer=True)
    stopped = MultitaskTrainer(config("b"), examples=examples, store=store).train(stop_after=3)
    assert stopped.step == 3 and stopped.model_path.endswith("checkpoint-0000003/model")
    state = torch.load(tmp_path / "b" / "checkpoint-0000003" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 3 and state["combiner"]["steps"] == 3 and state["data"]["seed"] == 5
    with pytest.raises(FileExistsError, match="resume"):
        MultitaskTrainer(config("b"), examples=examples, store=store).train()
    resumed = MultitaskTrainer(config("b"), examples=examples, store=store).train(resume=True, keep_optimizer=True)
    assert resumed.step == 6 and resumed.losses == straight.losses
    a, b = DualEncoder.from_pretrained(straight.model_path), DualEncoder.from_pretrained(resumed.model_path)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=name)
    assert not list((tmp_path / "b").glob("checkpoint-*"))  # replaced by final/
    finals = [torch.load(tmp_path / run / "final" / "trainer_state.pt", weights_only=True) for run in "ab"]
    _assert_same_state(finals[0]["combiner"], finals[1]["combiner"])
    assert finals[1]["combiner"]["steps"] == 6
    again = MultitaskTrainer(config("b")).train(resume=True)
    assert again.model_path == resumed.model_path and again.losses == resumed.losses  # finished: no training


def test_a_finished_run_keeps_its_combiner_state_only_when_kept_to_be_continued(tiny_t5, data, tmp_path):
    """TACO's per-task EMAs are resuming state (hundreds of MB for a real model): a finished run's
    final folder holds its weights and summary, not them, unless trained with keep_optimizer."""
    store, examples = data
    MultitaskTrainer(_config(tiny_t5, tmp_path, method="taco", steps=2), examples=examples, store=store).train()
    final = torch.load(tmp_path / "final" / "trainer_state.pt", weights_only=True)
    assert final["step"] == 2 and "combiner" not in final and "optimizer" not in final
    assert (tmp_path / "final" / "specialization.json").is_file()


def test_resume_rejects_other_data(tiny_t5, data, tmp_path):
    store, examples = data
    MultitaskTrainer(_config(tiny_t5, tmp_path), examples=examples, store=store).train(stop_after=2)
    fewer = {task: task_examples[:-1] for task, task_examples in examples.items()}
    with pytest.raises(ValueError, match="other data or batching"):
        MultitaskTrainer(_config(tiny_t5, tmp_path), examples=fewer, store=store).train(resume=True)


OTHER_SETTINGS = [
    ({"method": "pcgrad"}, "method: 'naive' -> 'pcgrad'"),
    ({"optim.lr": 1e-3}, "lr: 0.002 -> 0.001"),  # named as the runs' settings record them, flat
    ({"optim.steps": 8}, "steps: 6 -> 8"),
    ({"data.per_task_batch_size": 2, "seed": 6}, "per_task_batch_size: 4 -> 2; seed: 5 -> 6"),
]


def test_resume_refuses_settings_other_than_the_runs(tiny_t5, data, tmp_path):
    store, examples = data
    MultitaskTrainer(_config(tiny_t5, tmp_path), examples=examples, store=store).train(stop_after=1)
    for change, named in OTHER_SETTINGS:
        with pytest.raises(ValueError, match=f"checkpoint-0000001: cannot resume with other settings .*"
                                             f"{re.escape(named)}\\)"):
            MultitaskTrainer(replace_places(_config(tiny_t5, tmp_path), change), examples=examples,
                             store=store).train(resume=True)
    # what does not define the run may change
    resumed = MultitaskTrainer(_config(tiny_t5, tmp_path, progress=True, save_every=2), examples=examples,
                               store=store).train(resume=True)
    assert resumed.step == 6


def test_a_fresh_run_rebuilds_training_examples_left_from_other_inputs(tiny_bert, mini_kilt, data, tmp_path):
    """A run killed before its first checkpoint leaves its caches; a new run on other data must not use them."""
    out = tmp_path / "run"
    stale = TrainingExample("nq", "stale", "a query of another data set", (0,), (1,), ("no-page",))
    write_training_examples(out / "training_examples.jsonl", {"nq": [stale]})
    assert main(["train", "--model-name-or-path", str(tiny_bert), "--data-dir", str(mini_kilt), "--tasks", "nq",
                 "--method", "single", "--steps", "1", "--per-task-batch-size", "2", "--n-negatives", "1",
                 "--progress", "false", "--output-dir", str(out)]) == 0
    used = read_training_examples(out / "training_examples.jsonl")
    assert [e.qid for e in used["nq"]] == [e.qid for e in data[1]["nq"]]


def test_log_and_final_model(tiny_t5, data, tmp_path):
    store, examples = data
    result = MultitaskTrainer(_config(tiny_t5, tmp_path, steps=2, save_every=1), examples=examples,
                              store=store).train()
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {f"loss/{t}" for t in TASKS} | {"loss", "lr", "grad_norm"} <= set(rows[0])
    assert rows[0]["loss"] == pytest.approx(sum(rows[0][f"loss/{t}"] for t in TASKS) / 3)
    assert rows[0]["lr"] == pytest.approx(0.0) and rows[1]["lr"] == pytest.approx(2e-3)  # 1 warm-up step
    encoder = DualEncoder.from_pretrained(result.model_path)
    assert encoder.config.pooling == "first_decoder" and encoder.config.passage_max_length == 64


@pytest.mark.parametrize("method, entropy", [("naive", False), ("taco", True)])
def test_the_log_shows_each_steps_update_and_taco_weight_entropy(tiny_t5, data, tmp_path, method, entropy):
    """update_norm: the combined gradient's norm; step_norm: how far AdamW moved the weights
    (0 at step 1, whose learning rate is 0 in the warm-up); weight_entropy for TACO only."""
    store, examples = data
    MultitaskTrainer(_config(tiny_t5, tmp_path, method=method, steps=3), examples=examples, store=store).train()
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(r["update_norm"] > 0 for r in rows)
    assert rows[0]["step_norm"] == 0.0 and rows[1]["step_norm"] > 0
    assert all(("weight_entropy" in r) == entropy for r in rows)
    if entropy:
        assert 0 < rows[-1]["weight_entropy"] <= math.log(len(TASKS)) + 1e-6


def test_config_errors():
    with pytest.raises(ValueError, match="method must be one of naive"):
        TrainConfig(method="nope", output_dir="x")
    with pytest.raises(ValueError, match="method single trains one task"):
        TrainConfig(method="single", data=TrainDataConfig(tasks=["nq", "fever"]), output_dir="x")
    with pytest.raises(ValueError, match="output_dir is required"):
        MultitaskTrainer(TrainConfig())


def test_cli_help_lists_the_config_flags():
    out = subprocess.run([sys.executable, "-m", "multitask_retriever.cli", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--config", "--resume", "--method", "--data-per-task-batch-size", "--taco-beta", "--data-n-negatives",
                 "--model-name-or-path", "--data-dir", "--optim-lr", "--optim-steps"):
        assert flag in out


def test_cli_trains_two_steps_from_a_yaml(tiny_bert, mini_kilt, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {{name_or_path: {tiny_bert}, task_query_max_lengths: {{fever: 24}}}}\n"
                      f"data: {{dir: {mini_kilt}, tasks: [nq, fever], per_task_batch_size: 2, n_negatives: 1}}\n"
                      f"method: naive\noptim: {{steps: 5}}\nprogress: false\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--optim-steps", "2", "--output-dir", str(out)]) == 0
    assert f"model: {out / 'final' / 'model'}" in capsys.readouterr().out
    rows = (out / "train_log.jsonl").read_text().splitlines()
    assert len(rows) == 2 and DualEncoder.from_pretrained(out / "final" / "model").config.pooling == "mean"
    assert (out / "training_examples.jsonl").is_file() and (out / "passages.jsonl").is_file()


def test_cli_mine_negatives_then_train_on_them(tiny_bert, mini_kilt, data, tmp_path):
    store, _ = data
    negatives = tmp_path / "negatives.jsonl"
    assert main(["mine-negatives", "--data-dir", str(mini_kilt), "--passages", str(store.path),
                 "--out", str(negatives), "--tasks", "wow", "--keep", "3"]) == 0
    rows = [json.loads(line) for line in negatives.read_text().splitlines()]
    assert len(rows) == 14 and all(r["task"] == "wow" and len(r["negatives"]) == 3 for r in rows)
    assert main(["train", "--model-name-or-path", str(tiny_bert), "--passages", str(store.path),
                 "--negatives", str(negatives), "--tasks", "wow", "--method", "single", "--steps", "1",
                 "--per-task-batch-size", "2", "--progress", "false", "--output-dir", str(tmp_path / "r")]) == 0


@pytest.mark.skipif("taco" not in COMBINERS, reason="no taco combiner registered")
def test_taco_writes_per_layer_specialisation_summaries(tiny_t5, data, tmp_path):
    store, examples = data
    MultitaskTrainer(_config(tiny_t5, tmp_path, method="taco", steps=3), examples=examples, store=store).train()
    summary = json.loads((tmp_path / "final" / "specialization.json").read_text())
    assert summary["tasks"] == TASKS
    layers = summary["layers"]
    assert "backbone.encoder.block.0" in layers and "backbone.decoder.block.1" in layers
    assert set(layers["backbone.encoder.block.0"]) >= {"entropy", "gini", "top_share", "task_weights"}
    assert sum(layers["backbone.encoder.block.0"]["task_weights"]) == pytest.approx(1.0)
    rebuilt = specialization_summary(tmp_path / "final", depth=4)  # from the checkpoint on disk
    assert rebuilt["tasks"] == TASKS and rebuilt["layers"].keys() == layers.keys()
    for name, stats in layers.items():
        assert rebuilt["layers"][name]["entropy"] == pytest.approx(stats["entropy"])
        assert rebuilt["layers"][name]["task_weights"] == pytest.approx(stats["task_weights"])


def test_the_final_model_is_stored_in_the_storage_dtype_and_loads_as_float32(tiny_bert, data, tmp_path):
    store, examples = data
    config = replace_places(_config(tiny_bert, tmp_path / "run", steps=2), {"model.storage_dtype": "float16"})
    result = MultitaskTrainer(config, examples=examples, store=store).train()
    from safetensors import safe_open

    with safe_open(str(Path(result.model_path) / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} == {torch.float16}
    loaded = DualEncoder.from_pretrained(result.model_path)
    assert loaded.config.storage_dtype == "float16"
    assert {p.dtype for p in loaded.backbone.parameters()} == {torch.float32}


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_auto_mixed_precision_trains_in_bfloat16_only_where_the_cpu_has_it(monkeypatch, native, expected):
    from multitask_retriever.training_loop import _accelerator

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _accelerator("auto").mixed_precision == expected
