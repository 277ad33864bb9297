"""The public training entry point of the dual encoder: `train(config)`, whatever the method
or the negative rounds its config names."""
from __future__ import annotations

from .rounds import train_with_rounds
from .trainer import MultitaskTrainer, TrainConfig, TrainResult


def train(config: TrainConfig, resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Train the DualEncoder `config` describes into `config.output_dir`: with `data.negative_rounds`,
    round 0 and the rounds after it (`rounds.train_with_rounds`), else one `MultitaskTrainer` run.
    `resume` continues the run found there (a finished run only reports its result);
    `stop_after` ends early with a checkpoint, as an interruption would."""
    if config.data.negative_rounds:
        return train_with_rounds(config, resume=resume, stop_after=stop_after)
    return MultitaskTrainer(config).train(resume=resume, stop_after=stop_after)


__all__ = ["TrainConfig", "TrainResult", "train"]
