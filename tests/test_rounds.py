"""ANCE-style negative rounds (`negative_rounds`): round folders, negatives mined by the previous
round's model, exact resume across and within rounds, refused setting changes, the plain layout at 0;
`training.train` runs them, a MultitaskTrainer is one round and never imports `rounds`."""
import ast
import inspect
import json
import subprocess
import sys

import pytest
import torch

from multitask_retriever.examples import read_training_examples
from multitask_retriever.encoder import DualEncoder
from multitask_retriever.training import train
from multitask_retriever.trainer import MultitaskTrainer, TrainConfig, TrainDataConfig, TrainModelConfig
from multitask_retriever.training_loop import OptimizerConfig

STEPS = 3


def _config(model, data_dir, out, steps=STEPS, lr=2e-3, negative_rounds=1, tasks=("nq",), **changes) -> TrainConfig:
    values = dict(model=TrainModelConfig(name_or_path=str(model), query_max_length=32, passage_max_length=64),
                  data=TrainDataConfig(dir=str(data_dir), tasks=list(tasks), per_task_batch_size=4, n_negatives=1,
                                       negative_rounds=negative_rounds),
                  optim=OptimizerConfig(lr=lr, steps=steps), method="single", seed=5, output_dir=str(out),
                  progress=False)
    values.update(changes)
    return TrainConfig(**values)


def test_round_1_trains_from_round_0_on_negatives_its_model_mined(tiny_bert, mini_kilt, tmp_path):
    out = tmp_path / "run"
    result = train(_config(tiny_bert, mini_kilt, out))
    round0 = out / "round-0" / "final" / "model"
    assert result.model_path == str(out / "round-1" / "final" / "model") and result.step == STEPS
    assert sorted(p.name for p in out.iterdir()) == ["round-0", "round-1"]
    assert sorted(p.name for p in (out / "round-1").iterdir()) == [
        "final", "negatives.jsonl", "negatives.jsonl.inputs.json", "train_log.jsonl",
        "training_examples.arrays"]  # no shards left
    inputs = json.loads((out / "round-1" / "negatives.jsonl.inputs.json").read_text())
    assert inputs["model"]["path"] == str(round0.resolve())
    state = torch.load(out / "round-1" / "final" / "trainer_state.pt", weights_only=True)
    assert state["config"]["model_name_or_path"] == str(round0)
    assert state["config"]["passages"] == str(out / "round-0" / "passages.jsonl")
    bm25 = read_training_examples(out / "round-0" / "training_examples.jsonl")["nq"]
    dense = read_training_examples(out / "round-1" / "negatives.jsonl")["nq"]
    assert [(e.qid, e.positives) for e in dense] == [(e.qid, e.positives) for e in bm25]
    assert [e.negatives for e in dense] != [e.negatives for e in bm25]


def _weights(path):
    return DualEncoder.from_pretrained(path).state_dict()


def test_a_run_stopped_inside_round_1_resumes_to_the_same_weights(tiny_bert, mini_kilt, tmp_path):
    straight = train(_config(tiny_bert, mini_kilt, tmp_path / "a"))
    b = tmp_path / "b"
    stopped = train(_config(tiny_bert, mini_kilt, b), stop_after=STEPS + 1)
    assert stopped.model_path == str(b / "round-1" / "checkpoint-0000001" / "model")
    mined = (b / "round-1" / "negatives.jsonl").stat().st_mtime_ns
    resumed = train(_config(tiny_bert, mini_kilt, b), resume=True)
    assert (b / "round-1" / "negatives.jsonl").stat().st_mtime_ns == mined  # reused, not mined again
    assert resumed.losses == straight.losses
    a_weights, b_weights = _weights(straight.model_path), _weights(resumed.model_path)
    assert a_weights.keys() == b_weights.keys()
    for name, tensor in a_weights.items():
        assert torch.equal(tensor, b_weights[name]), name


def test_resuming_with_another_setting_is_refused(tiny_bert, mini_kilt, tmp_path):
    train(_config(tiny_bert, mini_kilt, tmp_path), stop_after=STEPS + 1)
    with pytest.raises(ValueError, match=r"round-0/final: cannot resume with other settings .*lr: 0\.002 -> 0\.001"):
        train(_config(tiny_bert, mini_kilt, tmp_path, lr=1e-3), resume=True)


def test_zero_rounds_keep_the_plain_layout_and_the_layouts_do_not_mix(tiny_bert, mini_kilt, tmp_path):
    plain, rounds = tmp_path / "plain", tmp_path / "rounds"
    result = train(_config(tiny_bert, mini_kilt, plain, negative_rounds=0, steps=1))
    assert result.model_path == str(plain / "final" / "model")
    assert sorted(p.name for p in plain.iterdir()) == [
        "final", "passages.jsonl", "passages.jsonl.inputs.json",
        "passages.jsonl.offsets.npy", "train_log.jsonl", "training_examples.arrays",
        "training_examples.jsonl", "training_examples.jsonl.inputs.json"]
    with pytest.raises(ValueError, match="holds a run without negative rounds"):
        train(_config(tiny_bert, mini_kilt, plain, steps=1), resume=True)
    train(_config(tiny_bert, mini_kilt, rounds, steps=1), stop_after=1)
    with pytest.raises(ValueError, match="holds a run with negative rounds"):
        train(_config(tiny_bert, mini_kilt, rounds, negative_rounds=0, steps=1), resume=True)


def test_a_trainer_is_one_round_and_points_to_training_train(tiny_bert, mini_kilt, tmp_path):
    with pytest.raises(ValueError, match="negative_rounds 1: a MultitaskTrainer run is one round; "
                                         "train with multitask_retriever.training.train"):
        MultitaskTrainer(_config(tiny_bert, mini_kilt, tmp_path)).train()
    assert not any(tmp_path.iterdir())


def test_the_trainer_module_never_imports_rounds():
    """rounds builds on the trainer, not the other way round (no import inside a function either)."""
    import multitask_retriever.trainer as trainer

    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(trainer))):
        if isinstance(node, ast.ImportFrom):
            imported |= {node.module or "", *(f"{node.module or ''}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert "data" in imported  # `from .data import ...`: relative imports are seen
    assert not [m for m in imported if m.split(".")[-1] == "rounds"]


def test_negative_rounds_is_a_train_flag_and_needs_data_dir():
    out = subprocess.run([sys.executable, "-m", "multitask_retriever.cli", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--data-negative-rounds" in out and "ANCE-style rounds" in out
    with pytest.raises(ValueError, match="negative_rounds must be >= 0"):
        TrainDataConfig(negative_rounds=-1)
    with pytest.raises(ValueError, match="negative_rounds needs data_dir"):
        TrainDataConfig(negative_rounds=1)


def test_each_round_starts_with_the_previous_rounds_taco_state_and_optimiser_moments(tiny_bert, mini_kilt,
                                                                                   tmp_path):
    """As the official rounds: TACO's step count (so its warm-up is not repeated) and EMAs, and
    AdamW's moments carry into round 1; its learning-rate schedule starts afresh."""
    out = tmp_path / "run"
    train(_config(tiny_bert, mini_kilt, out, method="taco", tasks=["fever", "nq"]))
    round0 = torch.load(out / "round-0" / "final" / "trainer_state.pt", weights_only=True)
    round1 = torch.load(out / "round-1" / "final" / "trainer_state.pt", weights_only=True)
    assert round0["combiner"]["steps"] == STEPS and round1["combiner"]["steps"] == 2 * STEPS
    assert {int(s["step"]) for s in round0["optimizer"]["state"].values()} == {STEPS}
    assert {int(s["step"]) for s in round1["optimizer"]["state"].values()} == {2 * STEPS}
    log1 = [json.loads(line) for line in (out / "round-1" / "train_log.jsonl").read_text().splitlines()]
    assert log1[-1]["lr"] == pytest.approx(2e-3 * 1 / STEPS)  # linear decay over the round's own steps
