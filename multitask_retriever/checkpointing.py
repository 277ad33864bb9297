"""Checkpoint plumbing shared by the training loops: atomic folders (kilt.io.atomic_directory),
RNG state, the latest checkpoint of a run, and its JSONL log."""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kilt.io import atomic_directory, iter_jsonl  # noqa: F401  (atomic_directory: re-exported)

STATE_NAME = "trainer_state.pt"
LOG_NAME = "train_log.jsonl"
FINAL_NAME = "final"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (and CUDA) random states, for exact resume."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The final folder if the run finished, else the checkpoint with the highest step."""
    if (output_dir / FINAL_NAME / STATE_NAME).is_file():
        return output_dir / FINAL_NAME
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*")
             if (m := _CHECKPOINT.search(p.name)) and (p / STATE_NAME).is_file()]
    return max(found)[1] if found else None


def read_log(path: Path) -> list[dict]:
    """Rows of a training log; a line cut short by a crash is ignored."""
    return [row for _, row in iter_jsonl(path, skip_invalid=True)] if path.is_file() else []
