"""The shared training loop on a two-layer regression net with dropout: exact resume, the
settings that define a run, leftovers of a killed save."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from multitask_retriever.config import moved_fields
from multitask_retriever.training_loop import FLAT_OPTIMIZER_FIELDS, OptimizerConfig, TrainingLoop


@moved_fields({name: f"optim.{name}" for name in FLAT_OPTIMIZER_FIELDS})  # recorded flat, as the trainers' configs
@dataclass
class _Config:
    output_dir: str
    optim: OptimizerConfig = field(default_factory=lambda: _optim())
    save_every: int = 0
    seed: int = 1
    progress: bool = False


def _optim(**changes) -> OptimizerConfig:
    return OptimizerConfig(**{"steps": 6, "lr": 1e-2, "warmup_steps": 1, **changes})


def _train(config: _Config, resume: bool = False, stop_after: int | None = None):
    """Returns (the net's weights, the log rows); dropout makes the result depend on the RNG."""
    loop = TrainingLoop(config, resume=resume)
    loop.start()
    net = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    if loop.state is not None:
        net.load_state_dict(loop.state["net"])
    inputs = torch.arange(12.0).reshape(4, 3) / 10

    def step(index: int) -> dict:
        loss = (net(inputs + index) ** 2).mean()
        loss.backward()
        return {"loss": loss.item()}

    history = loop.run(step, net.parameters(), lambda folder: {"net": net.state_dict()}, stop_after=stop_after)
    return net.state_dict(), history


def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path):
    whole, whole_log = _train(_Config(str(tmp_path / "a")))
    _train(_Config(str(tmp_path / "b")), stop_after=4)
    assert [p.name for p in (tmp_path / "b").glob("checkpoint-*")] == ["checkpoint-0000004"]
    resumed, resumed_log = _train(_Config(str(tmp_path / "b")), resume=True)
    assert resumed_log == whole_log and [row["step"] for row in whole_log] == [1, 2, 3, 4, 5, 6]
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    assert (tmp_path / "a" / "train_log.jsonl").read_bytes() == (tmp_path / "b" / "train_log.jsonl").read_bytes()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["final", "train_log.jsonl"]


def test_an_existing_run_needs_resume_and_its_own_settings(tmp_path):
    _train(_Config(str(tmp_path), _optim(steps=2)))
    with pytest.raises(FileExistsError, match="holds a training run"):
        TrainingLoop(_Config(str(tmp_path), _optim(steps=2)))
    with pytest.raises(ValueError, match=r"final: cannot resume with other settings than the run's "
                                         r"\(lr: 0.01 -> 0.02; seed: 1 -> 2\)"):
        TrainingLoop(_Config(str(tmp_path), _optim(steps=2, lr=2e-2), seed=2), resume=True)
    loop = TrainingLoop(_Config(str(tmp_path), _optim(steps=2), progress=True, save_every=1), resume=True)
    assert loop.finished and loop.step == 2


def test_the_loop_clears_what_a_killed_save_left(tmp_path):
    (tmp_path / ".checkpoint-0000002.4194305.x1x1x1x1.tmp").mkdir()  # no such pid
    (tmp_path / ".final.x2x2x2x2.tmp").mkdir()
    TrainingLoop(_Config(str(tmp_path)))
    assert list(tmp_path.iterdir()) == []
