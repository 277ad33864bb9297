"""The public training entry point of the dual encoder: `train(config)`, whatever the method
or the negative rounds its config names."""
from __future__ import annotations

from .trainer import MultitaskTrainer, TrainConfig, TrainResult


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Train the DualEncoder `config` describes into `config.output_dir`; with `resume`,
    continue the run found there (a finished run only reports its result)."""
    return MultitaskTrainer(config).train(resume=resume)


__all__ = ["TrainConfig", "TrainResult", "train"]
