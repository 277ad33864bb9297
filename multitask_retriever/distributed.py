"""The process group of a multi-process launch (`accelerate launch`), with a timeout long
enough for stages that one process runs while the others wait at a barrier.

torch's default (30 min) kills the waiting processes of a full-KILT run: building and saving a
flat index over 25M passages (about 77 GB of float32 vectors read and written), BM25 over the
corpus or a checkpoint save run on the main process alone. `DEFAULT_TIMEOUT` (6 h) covers
those with room to spare on slow disks, yet a process that really died still stops the run
the same day rather than never.

accelerate's `PartialState` is a per-process singleton and the process group is created once,
by whichever `PartialState`, `AcceleratorState` or `Accelerator` comes first: later timeouts
are ignored. So the first of them in a process must get the timeout: `distributed_state()`,
or `Accelerator(kwargs_handlers=[process_group_kwargs()])` for a trainer.
"""
from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import PartialState
    from accelerate.utils import InitProcessGroupKwargs

#: how long a process waits at a barrier (or any collective) before the run is declared dead
DEFAULT_TIMEOUT = timedelta(hours=6)


def process_group_kwargs(timeout: timedelta = DEFAULT_TIMEOUT) -> InitProcessGroupKwargs:
    """The kwargs handler giving an `Accelerator` created first in its process this timeout."""
    from accelerate.utils import InitProcessGroupKwargs

    return InitProcessGroupKwargs(timeout=timeout)


def distributed_state(timeout: timedelta = DEFAULT_TIMEOUT) -> PartialState:
    """This process's accelerate `PartialState`; if it is the first in the process, the process
    group it creates has `timeout` (module doc). As an `Accelerator` does, it runs on CPUs
    (gloo) where `accelerate launch --cpu` asked for it (ACCELERATE_USE_CPU)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=timeout)
