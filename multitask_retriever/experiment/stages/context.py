"""What every stage reads: the experiment's config, its input files, the stage cache and the device."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import StageCache
from ..config import ExperimentConfig


@dataclass
class StageContext:
    """The inputs and settings shared by every stage of one experiment run."""

    config: ExperimentConfig
    knowledge_source: Path
    task_files: dict[str, dict[str, Path]]
    cache: StageCache
    device: Any
    progress: bool = True
    warnings: list[str] = field(default_factory=list)

    @property
    def work(self) -> Path:
        return self.cache.work

    @property
    def data_dir(self) -> Path:
        return Path(self.config.data_dir)

    def train_tasks(self) -> list[str]:
        """The tasks with a train file, in task order."""
        return [t for t, splits in self.task_files.items() if "train" in splits]
