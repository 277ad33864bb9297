"""The training loop both trainers share (dual encoder, rerankers), on `accelerate`.

A run lives in `config.output_dir`: `checkpoint-<step>/` folders written atomically every
`save_every` steps, `final/` at the end, and `train_log.jsonl` with one row per step. A
resumed run restores weights, optimiser, scheduler, AMP scaler, RNG and the caller's own
state, so it continues exactly as if never stopped; it refuses settings other than the
checkpoint's. The caller supplies the step (forward and backward) and its own state:

    loop = TrainingLoop(config, resume=True, desc="train naive")
    accelerator = loop.start()                      # seeded; build the model after this
    ...load own state from loop.checkpoint / loop.state when resuming...
    history = loop.run(step_fn, params, save=lambda folder: {...})
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from kilt.io import iter_jsonl
from safeio.atomic import atomic_directory, atomic_write, remove_orphans_in
from safeio.lock import FolderLock

from .config import check_fields, unmoved_fields
from .devices import resolve_mixed_precision
from .distributed import distributed_state, process_group_kwargs

log = logging.getLogger("mtr.train")

STATE_NAME = "trainer_state.pt"
LOG_NAME = "train_log.jsonl"
FINAL_NAME = "final"
#: config fields a resumed run may change; every other field defines the run (negative_rounds:
#: each round is a run of its own, and a run of N rounds is the start of one of more)
NOT_RUN_SETTINGS = frozenset({"output_dir", "progress", "save_every", "negative_rounds", "storage_dtype"})
_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


#: the OptimizerConfig fields each trainer config had flat before its `optim` section (old spellings)
FLAT_OPTIMIZER_FIELDS = ("lr", "weight_decay", "warmup_steps", "steps", "max_grad_norm", "mixed_precision")


@dataclasses.dataclass
class OptimizerConfig:
    """AdamW, its linear-warm-up schedule and the step budget, as the loop runs them: the `optim`
    section of every trainer config, each of which gives its own defaults."""

    lr: float = dataclasses.field(default=3e-5, metadata={"help": "peak learning rate", "min": 0})
    weight_decay: float = dataclasses.field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0})
    warmup_steps: int = dataclasses.field(default=0, metadata={"help": "learning-rate warm-up steps", "min": 0})
    steps: int = dataclasses.field(default=1000, metadata={"help": "training steps", "min": 1})
    max_grad_norm: float = dataclasses.field(default=1.0, metadata={"help": "gradient clipping norm (0 = none)",
                                                                    "min": 0})
    mixed_precision: str = dataclasses.field(default="no", metadata={
        "help": "no | fp16 | bf16 | auto (bf16 on recent GPUs and on CPUs with native bfloat16, where it trains "
                "about 1.8x faster; fp16 on older GPUs; else no)"})

    def __post_init__(self) -> None:
        check_fields(self)
        resolve_mixed_precision(self.mixed_precision, "cpu")  # ValueError naming the choices


class LoopConfig(Protocol):
    """The fields of a trainer config (a dataclass) that the loop reads."""

    output_dir: str
    save_every: int
    seed: int
    progress: bool
    optim: OptimizerConfig


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every device): call before any random draw of a run."""
    from accelerate.utils import set_seed

    set_seed(seed)


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


class CheckpointError(ValueError):
    """A saved trainer state that cannot be used: unreadable, not tensors and plain values, or incomplete."""


def load_state(path: str | Path, required: Sequence[str] = ("step",)) -> dict[str, Any]:
    """A trainer state file, read with ``weights_only=True``: tensors, numbers, strings, lists,
    tuples and dicts only, so a planted file cannot run code. `required` keys must be present."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\. |\n\n|$)", str(err), re.S)
        reason = " ".join((detail.group(1) if detail else str(err)).split())
        if "Unsupported global" in reason:
            raise CheckpointError(f"{path}: refused, it holds objects other than tensors and plain values "
                                  f"({reason}); only resume from trainer states written by mtr") from None
        raise CheckpointError(f"{path}: not a readable trainer state ({reason}); delete the checkpoint "
                              "folder to start over") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable trainer state ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); delete the checkpoint "
                              "folder to start over") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a trainer state (a {type(state).__name__}, not a dict)")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: trainer state lacks {', '.join(missing)}; it was not written by "
                              "this run's trainer (delete the checkpoint folder to start over)")
    return state


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The final folder if the run finished, else the checkpoint with the highest step."""
    if (output_dir / FINAL_NAME / STATE_NAME).is_file():
        return output_dir / FINAL_NAME
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*")
             if (m := _CHECKPOINT.search(p.name)) and (p / STATE_NAME).is_file()]
    return max(found)[1] if found else None


@dataclasses.dataclass
class RunResult:
    """What a training run produced, whichever model it trained (dual encoder or reranker):
    the final saved model folder, its last step, every step's loss (resumed ones included) and
    this call's seconds; the trainers return it (or a subclass with their own extras)."""

    model_path: str
    step: int
    losses: list[float]
    seconds: float

    @property
    def loss(self) -> float | None:
        """The last step's loss; None when no step was logged."""
        return self.losses[-1] if self.losses else None


def read_log(path: Path) -> list[dict]:
    """Rows of a training log; a line cut short by a crash is ignored."""
    return [row for _, row in iter_jsonl(path, skip_invalid=True)] if path.is_file() else []


def run_settings(config: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What defines a run: the config's fields but `NOT_RUN_SETTINGS`, plus the caller's `extra`."""
    if isinstance(config, Mapping):
        return {**{k: v for k, v in config.items() if k not in NOT_RUN_SETTINGS}, **(extra or {})}
    kept = {k: v for k, v in unmoved_fields(config).items() if k not in NOT_RUN_SETTINGS}
    for f in dataclasses.fields(config):  # a section's fields that never had a flat name, kept nested
        if dataclasses.is_dataclass(getattr(config, f.name)) and isinstance(kept.get(f.name), Mapping):
            kept[f.name] = {k: v for k, v in kept[f.name].items() if k not in NOT_RUN_SETTINGS}
            if not kept[f.name]:
                del kept[f.name]
    return {**kept, **(extra or {})}


def _check_settings(saved: Mapping[str, Any], now: Mapping[str, Any], checkpoint: Path) -> None:
    absent = "(unset)"
    differ = [k for k in sorted({*saved, *now}) if saved.get(k, absent) != now.get(k, absent)]
    if differ:
        changes = "; ".join(f"{k}: {saved.get(k, absent)!r} -> {now.get(k, absent)!r}" for k in differ)
        raise ValueError(f"{checkpoint}: cannot resume with other settings than the run's ({changes}); "
                         "use the run's settings or another output_dir")


def _accelerator(mixed_precision: str):
    """An Accelerator at `mixed_precision` (auto resolved for this process's device); unused
    parameters (e.g. BERT's pooler) are allowed under DDP."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    # the first state of the process creates the process group: with the long timeout
    mixed_precision = resolve_mixed_precision(mixed_precision, distributed_state().device)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state()  # accelerate fixes the precision per process
    return Accelerator(mixed_precision=mixed_precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True),
                                        process_group_kwargs()])


def _distance(params: Sequence[torch.Tensor], before: Sequence[torch.Tensor]) -> float:
    """L2 norm of what the optimiser step moved the parameters (the update actually taken)."""
    with torch.no_grad():
        norms = [torch.linalg.vector_norm(p.detach().float() - b.float()) for p, b in zip(params, before)]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


class TrainingLoop:
    """One run in `config.output_dir` (see the module doc).

    On construction: leftovers of an interrupted save are removed and the latest checkpoint
    is found; without `resume` an existing run is a FileExistsError, with it the
    checkpoint's settings (`run_settings(config, settings)`) must equal this call's.
    `state` is the checkpoint's saved state (with the caller's entries), `finished` whether
    the run already ended.
    """

    def __init__(self, config: LoopConfig, resume: bool = False, desc: str = "train",
                 settings: Mapping[str, Any] | None = None):
        if not config.output_dir:
            raise ValueError(f"{type(config).__name__}.output_dir is required (checkpoints and the log go there)")
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.desc = desc
        self.settings = run_settings(config, settings)
        self.checkpoint = self._latest_checkpoint()
        if self.checkpoint is not None and not resume:
            raise FileExistsError(f"{self.output_dir}: holds a training run ({self.checkpoint.name}); pass "
                                  "resume=True (mtr ... --resume) to continue it, or choose another output_dir")
        self.state: dict[str, Any] | None = None
        self._lock: FolderLock | None = None
        if self.checkpoint is not None:
            self.state = load_state(self.checkpoint / STATE_NAME, ("step", "config"))
            if "settings" in self.state:
                _check_settings(self.state["settings"], self.settings, self.checkpoint)
            else:  # written before runs recorded their settings: the config is what there is
                _check_settings(run_settings(self.state["config"]), run_settings(config), self.checkpoint)
        self.step = int(self.state["step"]) if self.state is not None else 0
        self.accelerator = None

    def _latest_checkpoint(self) -> Path | None:
        """The checkpoint to resume from, after the main process removed the temporary
        folders of an interrupted save."""
        if not self.output_dir.is_dir():
            return None
        processes = distributed_state()  # not a plain PartialState: it would fix a one-process state on CPUs
        with processes.main_process_first():
            if processes.is_main_process:
                remove_orphans_in(self.output_dir)
            return latest_checkpoint(self.output_dir)

    @property
    def finished(self) -> bool:
        return self.checkpoint is not None and self.checkpoint.name == FINAL_NAME

    @property
    def log_path(self) -> Path:
        return self.output_dir / LOG_NAME

    def history(self) -> list[dict]:
        """The logged rows up to the checkpoint's step."""
        return [row for row in read_log(self.log_path) if row["step"] <= self.step]

    def start(self):
        """Create the Accelerator, take the output folder's writer lock on the main process (a
        second run on the folder outside this launch is refused) and seed every RNG with
        `config.seed`; returns the Accelerator."""
        self.accelerator = _accelerator(self.config.optim.mixed_precision)
        if self.accelerator.is_main_process and not self.finished:  # a finished run writes nothing
            self._lock = FolderLock(self.output_dir).acquire()
        seed_everything(self.config.seed)
        return self.accelerator

    def run(self, step_fn: Callable[[int], dict[str, Any]], params: Sequence[torch.nn.Parameter],
            save: Callable[[Path], Mapping[str, Any]], schedule: str = "linear",
            stop_after: int | None = None, warmup_steps: int | None = None, keep_optimizer: bool = False,
            optimizer_moments: Mapping[int, Any] | None = None, resume_only: Sequence[str] = ()) -> list[dict]:
        """Train from `self.step` to `config.optim.steps` (or `stop_after`, which ends with a checkpoint
        as an interruption would); returns the log rows of the whole run. The learning rate
        warms up over `warmup_steps` (default: `config.optim.warmup_steps`).

        `step_fn(step)` leaves the gradients of `params` in place and returns its log values;
        the loop clips them, steps AdamW and the `schedule` (a transformers scheduler name) and
        logs {"step", **values, "grad_norm", "lr", "step_norm"} (step_norm: the L2 norm of the
        parameter change the optimiser made). `save(folder)` writes the caller's files
        into a checkpoint folder and returns its entries of the saved state. `keep_optimizer`
        keeps the optimiser state in the final folder too; `optimizer_moments` (the "state" of
        such a saved optimiser) starts a new run with those moments. The caller's state entries
        named in `resume_only` go into checkpoints only, not into the final folder (unless
        `keep_optimizer`: a run kept to be continued keeps them).
        """
        from transformers import get_scheduler

        optim, accelerator = self.config.optim, self.accelerator
        if accelerator is None:
            raise RuntimeError("call start() before run()")
        params = list(params)
        optimizer = accelerator.prepare(torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay))
        # stepped once per global step here, so it is not handed to accelerate
        scheduler = get_scheduler(schedule, optimizer, num_training_steps=optim.steps,
                                  num_warmup_steps=optim.warmup_steps if warmup_steps is None else warmup_steps)
        if self.state is None and optimizer_moments is not None:
            fresh = optimizer.state_dict()  # this run's learning rates, the carried per-parameter state
            optimizer.load_state_dict({**fresh, "state": dict(optimizer_moments)})
        if self.state is not None:
            self._restore(optimizer, scheduler)
        history = self._restart_log()

        def checkpoint(final: bool = False) -> None:
            self._save_checkpoint(save, optimizer, scheduler, final=final, keep_optimizer=keep_optimizer,
                                  resume_only=resume_only)

        try:
            self._train(lambda: self._step(step_fn, params, optimizer, scheduler), history, checkpoint, stop_after)
        finally:
            if self._lock is not None:
                self._lock.release()
        return history

    def _train(self, step: Callable[[], dict[str, Any]], history: list[dict], checkpoint: Callable[..., None],
               stop_after: int | None) -> None:
        """Run `step` until `config.optim.steps` (or `stop_after`), appending its rows to `history` and
        the log file, with a checkpoint every `save_every` steps, at `stop_after` and at the end."""
        cfg, steps, accelerator = self.config, self.config.optim.steps, self.accelerator
        bar = tqdm(total=steps, initial=self.step, desc=self.desc, unit="step",
                   disable=not cfg.progress or not accelerator.is_main_process)
        log_file = open(self.log_path, "a", encoding="utf-8") if accelerator.is_main_process else None
        try:
            while self.step < steps and (stop_after is None or self.step < stop_after):
                row = step()
                history.append(row)
                if log_file is not None:
                    log_file.write(json.dumps(row) + "\n")
                    log_file.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                if self.step < steps and ((cfg.save_every and self.step % cfg.save_every == 0)
                                              or self.step == stop_after):
                    checkpoint()
            if self.step >= steps:
                checkpoint(final=True)
        finally:
            if log_file is not None:
                log_file.close()
            bar.close()

    def _restore(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Load the checkpoint's optimiser, scheduler, AMP scaler and RNG states (the RNG last:
        nothing may draw between here and the first step); a state that does not fit is a
        CheckpointError."""
        accelerator = self.accelerator
        try:
            optimizer.load_state_dict(self.state["optimizer"])
            scheduler.load_state_dict(self.state["scheduler"])
            if accelerator.scaler is not None and self.state["scaler"]:
                accelerator.scaler.load_state_dict(self.state["scaler"])
            set_rng_state(self.state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{self.checkpoint / STATE_NAME}: cannot restore the run from it "
                                  f"({type(err).__name__}: {err}); delete the checkpoint folder to "
                                  "start over") from None
        log.info("%s: resuming at step %d", self.output_dir, self.step)

    def _restart_log(self) -> list[dict]:
        """The log rows up to the checkpoint's step, rewritten as the log file (the main process
        drops steps logged after the checkpoint)."""
        history = self.history()
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.log_path) as f:
                f.writelines(json.dumps(row) + "\n" for row in history)
        return history

    def _step(self, step_fn: Callable[[int], dict[str, Any]], params: list[torch.nn.Parameter],
              optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
        """One training step: `step_fn`'s gradients clipped, AdamW and the schedule stepped,
        `self.step` advanced; returns the step's log row."""
        max_grad_norm, accelerator = self.config.optim.max_grad_norm, self.accelerator
        row = {"step": self.step + 1, **step_fn(self.step)}
        if max_grad_norm > 0:
            row["grad_norm"] = float(accelerator.clip_grad_norm_(params, max_grad_norm))
        row["lr"] = scheduler.get_last_lr()[0]
        before = [p.detach().clone() for p in params]
        optimizer.step()
        row["step_norm"] = _distance(params, before)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return row

    def _save_checkpoint(self, save: Callable[[Path], Mapping[str, Any]], optimizer: torch.optim.Optimizer,
                         scheduler: Any, final: bool, keep_optimizer: bool, resume_only: Sequence[str] = ()) -> None:
        """Write `self.folder` atomically (the caller's files, then the trainer state; a checkpoint
        also holds what resuming needs) and remove the other checkpoints; every process waits."""
        accelerator, folder = self.accelerator, self.folder
        if accelerator.is_main_process:
            with atomic_directory(folder) as tmp:
                state = {"step": self.step, "config": unmoved_fields(self.config), "settings": self.settings,
                         **save(tmp)}
                if final and not keep_optimizer:
                    for name in resume_only:
                        state.pop(name, None)
                if final and keep_optimizer:
                    state.update(optimizer=optimizer.state_dict())
                if not final:
                    state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                 scaler=accelerator.scaler.state_dict() if accelerator.scaler else {},
                                 rng=rng_state())
                torch.save(state, tmp / STATE_NAME)
            for old in self.output_dir.glob("checkpoint-*"):
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    @property
    def folder(self) -> Path:
        """The checkpoint folder of the current step (`final/` once the run has ended)."""
        return self.output_dir / (FINAL_NAME if self.step >= self.config.optim.steps else f"checkpoint-{self.step:07d}")
