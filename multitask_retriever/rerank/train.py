"""One training loop for every reranker (cross-encoder, Q-PEFT, ID-SPAM, PEFT baselines).

A step draws `batch_size` training queries, each with its positive and `group_size - 1`
hard negatives, scores the groups with `Reranker.score`, and applies a `RerankLoss`.
Single-stage contrastive (LCE), single-stage distillation from teacher scores or
rankings, and the two in sequence (`train_stages`) follow Pezzuti et al. (ECIR 2025).
Checkpoints are complete (weights, optimiser, scheduler, step, RNG), so a run resumes
exactly where it stopped; a finished stage is never redone.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch


from ..config import check_fields, moved_fields
from ..training_loop import FINAL_NAME, FLAT_OPTIMIZER_FIELDS, OptimizerConfig, RunResult, TrainingLoop, read_log
from .base import Reranker
from .examples import RerankExample
from .losses import LOSSES, RerankLoss, make_loss

log = logging.getLogger("mtr.rerank.train")


# ---------------------------------------------------------------------------- training
@moved_fields({name: f"optim.{name}" for name in FLAT_OPTIMIZER_FIELDS})
@dataclass
class RerankTrainConfig:
    """One reranker training stage (the CLI's `mtr train-reranker` flags)."""

    loss: str = field(default="lce", metadata={"help": " | ".join(LOSSES)})
    loss_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "e.g. {temperature: 2.0} for kl"})
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=3e-5, weight_decay=0.01,
                                                                           max_grad_norm=10.0))
    scheduler: str = field(default="linear", metadata={"help": "transformers schedule: linear | constant | cosine"})
    batch_size: int = field(default=8, metadata={"help": "queries per step (per process)", "min": 1})
    group_size: int = field(default=8, metadata={"help": "passages per query: 1 positive + group_size-1 negatives",
                                                 "min": 1})
    seed: int = field(default=0, metadata={"min": 0})
    output_dir: str = field(default="", metadata={"help": "checkpoints, final weights and train_log.jsonl"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only the final one)", "min": 0})
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class RerankBatch:
    """What a loss sees besides the scores: the group's queries, texts and teacher scores."""

    qids: list[str]
    queries: list[str]
    passages: list[list[str]]
    teacher_scores: torch.Tensor | None
    tasks: list[str | None] | None = None


class _GroupSampler:
    """Step -> batch, a pure function of (seed, step): the order of queries is a fresh
    permutation per epoch, and each query's negatives are a random sample per step."""

    def __init__(self, examples: Sequence[RerankExample], config: RerankTrainConfig,
                 num_processes: int, process_index: int):
        self.examples = examples
        self.config = config
        self.num_processes = num_processes
        self.process_index = process_index
        self._orders: dict[int, list[int]] = {}

    def _example(self, position: int) -> RerankExample:
        epoch, offset = divmod(position, len(self.examples))
        if epoch not in self._orders:
            self._orders = {epoch: random.Random(self.config.seed * 1_000_003 + epoch).sample(
                range(len(self.examples)), len(self.examples))}
        return self.examples[self._orders[epoch][offset]]

    def batch(self, step: int) -> RerankBatch:
        per_process = self.config.batch_size
        first = (step * self.num_processes + self.process_index) * per_process
        rng = random.Random(f"{self.config.seed}:{step}:{self.process_index}")
        qids, queries, passages, teacher, tasks = [], [], [], [], []
        for position in range(first, first + per_process):
            example = self._example(position)
            chosen = rng.sample(range(1, len(example.passages)), self.config.group_size - 1)
            qids.append(example.qid)
            queries.append(example.query)
            tasks.append(example.task)
            passages.append([example.passages[i] for i in (0, *chosen)])
            if example.teacher_scores is not None:
                teacher.append([example.teacher_scores[i] for i in (0, *chosen)])
        teacher_scores = torch.tensor(teacher, dtype=torch.float32) if len(teacher) == len(qids) else None
        return RerankBatch(qids, queries, passages, teacher_scores, tasks)


def _usable_examples(examples: Sequence[RerankExample], config: RerankTrainConfig,
                     loss: RerankLoss) -> list[RerankExample]:
    if not examples:
        raise ValueError("no training examples")
    if loss.needs_teacher:
        missing = next((e.qid for e in examples if e.teacher_scores is None), None)
        if missing is not None:
            raise ValueError(f"the {loss.name} loss needs teacher scores; query {missing} has none "
                             f"(see attach_teacher_scores)")
    usable = [e for e in examples if len(e.candidates) >= config.group_size - 1]
    if len(usable) < len(examples):
        warnings.warn(f"skipping {len(examples) - len(usable)} of {len(examples)} queries with fewer than "
                      f"group_size-1={config.group_size - 1} negatives", stacklevel=3)
    if not usable:
        raise ValueError(f"no query has the group_size-1={config.group_size - 1} negatives a group needs")
    return usable


def _trainable_named(reranker: Reranker) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in reranker.named_parameters() if p.requires_grad}


def _load_trainable(named: dict[str, torch.nn.Parameter], values: Mapping[str, torch.Tensor], source: Path) -> None:
    """Copy saved `values` into the trainable parameters; a missing one is an error naming `source`."""
    missing = set(named) - set(values)
    if missing:
        raise ValueError(f"{source}: no saved values for trainable parameters {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(values[name])


def train_reranker(reranker: Reranker, examples: Sequence[RerankExample], config: RerankTrainConfig,
                   loss: RerankLoss | None = None, resume: bool = False) -> RunResult:
    """Train `reranker.trainable_parameters()` for `config.optim.steps` steps of `loss` (default:
    `make_loss(config.loss, **config.loss_options)`); with `resume`, continue from the
    latest checkpoint in `config.output_dir` (a finished run only loads its weights).
    The reranker ends on the accelerator's device.

    Returns the run's `RunResult`: its `model_path` is the final `save_pretrained` folder.
    """
    started = time.perf_counter()
    loss_fn = loss if loss is not None else make_loss(config.loss, **config.loss_options)
    examples = _usable_examples(examples, config, loss_fn)
    named = _trainable_named(reranker)
    if not named:
        raise ValueError(f"{type(reranker).__name__} has no trainable parameters")
    loop = TrainingLoop(config, resume=resume, desc=f"train {reranker.method or 'reranker'}",
                        settings={"reranker": reranker.method or type(reranker).__name__,
                                  "loss": loss_fn.name or type(loss_fn).__name__})
    accelerator = loop.start()
    reranker.to(accelerator.device)
    final_path = loop.output_dir / FINAL_NAME / "reranker"
    if loop.state is not None and "trainable" in loop.state:
        _load_trainable(named, loop.state["trainable"], loop.checkpoint)
    elif loop.finished:  # the final state keeps no copy of the weights: read them from final/reranker
        _load_trainable(named, dict(type(reranker).from_pretrained(final_path).named_parameters()), final_path)
    if loop.finished:
        losses = [row["loss"] for row in read_log(loop.log_path)]
        log.info("%s: already trained (%d steps); loaded its weights", loop.output_dir, loop.step)
        return RunResult(str(final_path), loop.step, losses, time.perf_counter() - started)

    sampler = _GroupSampler(examples, config, accelerator.num_processes, accelerator.process_index)
    params = list(named.values())

    def step(index: int) -> dict[str, Any]:
        batch = sampler.batch(index)
        with accelerator.autocast():
            value = loss_fn(reranker.score(batch.queries, batch.passages, tasks=batch.tasks), batch)
        if not torch.isfinite(value):
            raise FloatingPointError(f"step {index + 1}: the {loss_fn.name or 'training'} loss is {value.item()}")
        accelerator.backward(value)
        if accelerator.num_processes > 1:
            for param in params:
                if param.grad is not None:
                    param.grad = accelerator.reduce(param.grad, reduction="mean")
        return {"loss": accelerator.reduce(value.detach(), reduction="mean").item()}

    def save(folder: Path) -> dict[str, Any]:
        reranker.save_pretrained(folder / "reranker")
        return {"trainable": {name: p.detach().cpu() for name, p in named.items()}}

    was_training = reranker.training
    reranker.train()
    try:
        history = loop.run(step, params, save, schedule=config.scheduler, resume_only=("trainable",))
    finally:
        reranker.train(was_training)
    losses = [row["loss"] for row in history]
    return RunResult(str(final_path), loop.step, losses, time.perf_counter() - started)


def train_stages(reranker: Reranker, stages: Sequence[tuple[str, Sequence[RerankExample], RerankTrainConfig]],
                 output_dir: str | Path, resume: bool = True) -> dict[str, RunResult]:
    """Train `reranker` through stages in order (e.g. contrastive then distillation), each in
    `output_dir/<i>-<name>` with its final checkpoint kept. With `resume`, finished stages
    only reload their weights and an interrupted stage continues from its checkpoint."""
    names = [name for name, _, _ in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    results = {}
    for i, (name, examples, config) in enumerate(stages, start=1):
        if not re.fullmatch(r"[\w.-]+", name):
            raise ValueError(f"stage name {name!r} must be a plain folder name (letters, digits, _ . -)")
        stage_config = dataclasses.replace(config, output_dir=str(Path(output_dir) / f"{i}-{name}"))
        results[name] = train_reranker(reranker, examples, stage_config, resume=resume)
    return results
