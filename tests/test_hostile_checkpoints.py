"""A resumed run reads its trainer state with weights_only: a planted state file cannot run code,
and a state that is unreadable or incomplete is refused in one line naming the file."""
from dataclasses import dataclass, field

import pytest
import torch

from multitask_retriever.training_loop import STATE_NAME, CheckpointError, OptimizerConfig, TrainingLoop, load_state


@dataclass
class _Config:
    output_dir: str
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(steps=4, lr=1e-3, max_grad_norm=0.0))
    save_every: int = 0
    seed: int = 0
    progress: bool = False


class _Planted:
    """Unpickling this creates the file `marker`: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(run, state) -> None:
    folder = run / "checkpoint-0000002"
    folder.mkdir(parents=True)
    torch.save(state, folder / STATE_NAME)


def _resume(run):
    return TrainingLoop(_Config(str(run)), resume=True)


def test_a_planted_object_in_the_state_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    _plant(tmp_path / "run", {"step": 2, "config": {}, "payload": _Planted(marker)})
    with pytest.raises(CheckpointError, match=r"checkpoint-0000002/trainer_state\.pt: refused"):
        _resume(tmp_path / "run")
    assert not marker.exists()


def test_a_state_of_tensors_and_plain_values_loads(tmp_path):
    state = {"step": 2, "config": {"lr": 1e-3}, "rng": {"python": (3, (1, 2), None), "torch": torch.zeros(3)}}
    _plant(tmp_path / "run", state)
    loaded = load_state(tmp_path / "run" / "checkpoint-0000002" / STATE_NAME, ("step",))
    assert loaded["rng"]["python"] == (3, (1, 2), None)
    assert torch.equal(loaded["rng"]["torch"], torch.zeros(3))


@pytest.mark.parametrize("content, message", [
    (b"not a torch file", "not a readable trainer state"),
    (b"", "not a readable trainer state"),
])
def test_an_unreadable_state_is_one_line(tmp_path, content, message):
    folder = tmp_path / "run" / "checkpoint-0000002"
    folder.mkdir(parents=True)
    (folder / STATE_NAME).write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        _resume(tmp_path / "run")
    assert "\n" not in str(err.value) and STATE_NAME in str(err.value)


@pytest.mark.parametrize("state, missing", [({"config": {}}, "step"), ({"step": 2}, "config"), ([1, 2], None)])
def test_a_state_without_its_keys_is_refused(tmp_path, state, missing):
    _plant(tmp_path / "run", state)
    with pytest.raises(CheckpointError, match=f"lacks {missing}" if missing else "not a trainer state"):
        _resume(tmp_path / "run")


def test_a_state_that_cannot_restore_the_optimiser_is_refused(tmp_path):
    run = tmp_path / "run"
    config = _Config(str(run))
    from multitask_retriever.training_loop import run_settings
    _plant(run, {"step": 2, "config": {}, "settings": run_settings(config), "optimizer": {}, "rng": {}})
    loop = TrainingLoop(config, resume=True)
    loop.start()
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(CheckpointError, match="cannot restore the run"):
        loop.run(lambda step: {"loss": 0.0}, [param], save=lambda folder: {})


def test_mtr_train_resume_refuses_a_planted_state_in_one_line(tmp_path, capsys):
    from multitask_retriever.cli import main

    marker = tmp_path / "pwned"
    _plant(tmp_path / "run", {"step": 2, "config": {}, "payload": _Planted(marker)})
    code = main(["train", "--output-dir", str(tmp_path / "run"), "--resume", "--optim-steps", "4"])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert "refused" in err and err.count("\n") == 1
