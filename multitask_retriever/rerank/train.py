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
import json
import logging
import random
import re
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from kilt.io import KiltExample, KiltFormatError, atomic_write, iter_jsonl
from kilt.passages import Passage, PassageStore

from ..checkpointing import FINAL_NAME, LOG_NAME, STATE_NAME, atomic_directory, latest_checkpoint, read_log, \
    rng_state, set_rng_state
from ..pipeline import default_passage_text
from ..retriever import Hit
from .base import Reranker
from .losses import LOSSES, RerankLoss, make_loss

log = logging.getLogger("mtr.rerank.train")



# ---------------------------------------------------------------------------- examples
@dataclass
class RerankExample:
    """One training query: its positive, its hard negatives, and optionally a teacher's
    scores and the passage ids, both aligned with `passages` ([positive, *candidates])."""

    qid: str
    query: str
    positive: str
    candidates: list[str]
    teacher_scores: list[float] | None = None
    passage_ids: list[str] | None = None

    def __post_init__(self) -> None:
        n = 1 + len(self.candidates)
        if self.teacher_scores is not None and len(self.teacher_scores) != n:
            raise ValueError(f"query {self.qid}: {len(self.teacher_scores)} teacher scores for {n} passages")
        if self.passage_ids is not None and len(self.passage_ids) != n:
            raise ValueError(f"query {self.qid}: {len(self.passage_ids)} passage ids for {n} passages")

    @property
    def passages(self) -> list[str]:
        return [self.positive, *self.candidates]


def _passage_id(hit: Hit | tuple[int, float] | int) -> int:
    if isinstance(hit, Hit):
        return int(hit.passage_id)
    if isinstance(hit, tuple):
        return int(hit[0])
    return int(hit)


def _holds_provenance(passage: Passage, spans: list[tuple[str, int | None, int | None]]) -> bool:
    for wikipedia_id, start, end in spans:
        if passage.wikipedia_id != wikipedia_id or start is None:
            continue
        end = start if end is None else end
        if passage.start_paragraph_id <= end and start <= passage.end_paragraph_id:
            return True
    return False


def _page_passages(store: PassageStore, pid: int) -> list[int]:
    """Ids of every passage of `pid`'s page (passage ids number each page contiguously)."""
    page = store.page_id(pid)
    first, last = pid, pid
    while first > 0 and store.page_id(first - 1) == page:
        first -= 1
    while last + 1 < len(store) and store.page_id(last + 1) == page:
        last += 1
    return list(range(first, last + 1))


def _provenance_passage(store: PassageStore, on_gold: list[int], passages: dict[int, Passage],
                        spans: list[tuple[str, int | None, int | None]]) -> int | None:
    """A passage holding a provenance paragraph on a page of `on_gold` (added to `passages`)."""
    pages_seen = set()
    for pid in on_gold:
        if passages[pid].wikipedia_id in pages_seen:
            continue
        pages_seen.add(passages[pid].wikipedia_id)
        page = _page_passages(store, pid)
        for other, passage in zip(page, store.get_many(page)):
            if _holds_provenance(passage, spans):
                passages[other] = passage
                return other
    return None


def examples_from_candidates(
    task_examples: Sequence[KiltExample],
    hits_per_query: Sequence[Sequence[Hit | tuple[int, float] | int]],
    store: PassageStore,
    *,
    num_negatives: int | None = None,
    passage_text: Callable[[Hit], str] = default_passage_text,
) -> list[RerankExample]:
    """Training examples from first-stage candidates (our Retriever's hits or BM25's ids).

    The positive is a passage of a gold page, preferably the one holding a provenance
    paragraph (looked up on any retrieved gold page); the negatives are the candidates on
    no gold page, in rank order. Queries with no gold page among their candidates are
    skipped: the reranker only ever sees retrieved candidates.
    """
    if len(task_examples) != len(hits_per_query):
        raise ValueError(f"{len(task_examples)} examples but {len(hits_per_query)} candidate lists")

    def text(pid: int, passage: Passage) -> str:
        return passage_text(Hit(passage_id=pid, score=0.0, wikipedia_id=passage.wikipedia_id,
                                title=passage.title, text=passage.text))

    out: list[RerankExample] = []
    skipped = 0
    for example, hits in zip(task_examples, hits_per_query):
        gold = set(example.gold_pages)
        pids = list(dict.fromkeys(_passage_id(h) for h in hits))
        passages = dict(zip(pids, store.get_many(pids)))
        on_gold = [pid for pid in pids if passages[pid].wikipedia_id in gold]
        if not on_gold:
            skipped += 1
            continue
        spans = [(p.wikipedia_id, p.start_paragraph_id, p.end_paragraph_id)
                 for group in example.evidence for p in group]
        positive = next((pid for pid in on_gold if _holds_provenance(passages[pid], spans)), None)
        if positive is None and any(start is not None for _, start, _ in spans):
            positive = _provenance_passage(store, on_gold, passages, spans)
        if positive is None:
            positive = on_gold[0]
        negatives = [pid for pid in pids if passages[pid].wikipedia_id not in gold][:num_negatives]
        out.append(RerankExample(
            qid=example.id, query=example.input, positive=text(positive, passages[positive]),
            candidates=[text(pid, passages[pid]) for pid in negatives],
            passage_ids=[str(pid) for pid in (positive, *negatives)],
        ))
    if skipped:
        log.info("skipped %d of %d queries with no gold page among their candidates", skipped, len(task_examples))
    return out


# ---------------------------------------------------------------------------- teachers
def read_teacher_file(path: str | Path) -> dict[str, dict[str, float]]:
    """Teacher scores per query and passage id from JSONL lines `{"qid", "pid", "score"}`
    or ranked lists `{"qid", "ranking": [pid, ...]}` (best first; rank r scores -r)."""
    path = Path(path)
    teacher: dict[str, dict[str, float]] = {}
    ranked: set[str] = set()
    for line, row in iter_jsonl(path):
        def fail(what: str) -> KiltFormatError:
            return KiltFormatError(f"{path}:{line}: {what}")

        if not isinstance(row, dict) or "qid" not in row:
            raise fail('expected an object with "qid" and either "pid" and "score" or "ranking"')
        qid = str(row["qid"])
        if qid in ranked:
            raise fail(f"query {qid} already has a ranking")
        if "ranking" in row:
            ranking = row["ranking"]
            if qid in teacher:
                raise fail(f"query {qid} already has scores")
            if not isinstance(ranking, list) or not ranking:
                raise fail('"ranking" must be a non-empty list of passage ids')
            ids = [str(pid) for pid in ranking]
            if len(set(ids)) != len(ids):
                raise fail(f"query {qid}: the ranking repeats a passage id")
            teacher[qid] = {pid: -float(rank) for rank, pid in enumerate(ids, start=1)}
            ranked.add(qid)
        elif "pid" in row and "score" in row:
            score = row["score"]
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not np.isfinite(score):
                raise fail(f'"score" must be a finite number, got {score!r}')
            scores = teacher.setdefault(qid, {})
            pid = str(row["pid"])
            if pid in scores:
                raise fail(f"query {qid}, passage {pid}: scored twice")
            scores[pid] = float(score)
        else:
            raise fail('expected "pid" and "score", or "ranking"')
    return teacher


def attach_teacher_scores(examples: Sequence[RerankExample],
                          teacher: Mapping[str, Mapping[str, float]]) -> list[RerankExample]:
    """Copies of `examples` carrying the teacher's score of each of their passages.

    Queries the teacher did not score are dropped; a passage missing from a scored query
    (e.g. below a teacher's top-k ranking) scores below every passage the teacher scored.
    """
    out, dropped = [], 0
    for example in examples:
        if example.passage_ids is None:
            raise ValueError(f"query {example.qid}: teacher scores need passage ids")
        scores = teacher.get(example.qid)
        if scores is None:
            dropped += 1
            continue
        known = [scores[pid] for pid in example.passage_ids if pid in scores]
        if not known:
            raise ValueError(f"query {example.qid}: the teacher scores none of its passages "
                             f"{example.passage_ids[:5]}...; do the passage ids match?")
        floor = min(scores.values()) - 1.0
        out.append(dataclasses.replace(
            example, teacher_scores=[scores.get(pid, floor) for pid in example.passage_ids]))
    if dropped:
        warnings.warn(f"dropped {dropped} of {len(examples)} queries the teacher did not score", stacklevel=2)
    return out


def write_teacher_file(reranker: Reranker, examples: Sequence[RerankExample], path: str | Path,
                       batch_size: int = 32, progress: bool = True) -> int:
    """Score every example's passages with `reranker` and write `{"qid", "pid", "score"}`
    lines (atomically), so any of our rerankers can teach another; returns the line count."""
    lines = 0
    with atomic_write(path) as f:
        for example in tqdm(examples, desc="teacher", unit="query", disable=not progress):
            if example.passage_ids is None:
                raise ValueError(f"query {example.qid}: writing teacher scores needs passage ids")
            scores = reranker.rerank(example.query, example.passages, batch_size=batch_size)
            for pid, score in zip(example.passage_ids, scores):
                f.write(json.dumps({"qid": example.qid, "pid": pid, "score": score}) + "\n")
                lines += 1
    return lines


# ---------------------------------------------------------------------------- training
@dataclass
class RerankTrainConfig:
    """One reranker training stage (the CLI's `mtr train-reranker` flags)."""

    loss: str = field(default="lce", metadata={"help": " | ".join(LOSSES)})
    loss_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "e.g. {temperature: 2.0} for kl"})
    lr: float = 3e-5
    weight_decay: float = 0.01
    scheduler: str = field(default="linear", metadata={"help": "transformers schedule: linear | constant | cosine"})
    warmup_steps: int = 0
    steps: int = 1000
    batch_size: int = field(default=8, metadata={"help": "queries per step (per process)"})
    group_size: int = field(default=8, metadata={"help": "passages per query: 1 positive + group_size-1 negatives"})
    max_grad_norm: float = field(default=10.0, metadata={"help": "gradient clipping norm (0 = none)"})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16"})
    seed: int = 0
    output_dir: str = field(default="", metadata={"help": "checkpoints, final weights and train_log.jsonl"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only the final one)"})
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")


@dataclass
class RerankBatch:
    """What a loss sees besides the scores: the group's queries, texts and teacher scores."""

    qids: list[str]
    queries: list[str]
    passages: list[list[str]]
    teacher_scores: torch.Tensor | None


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
        qids, queries, passages, teacher = [], [], [], []
        for position in range(first, first + per_process):
            example = self._example(position)
            chosen = rng.sample(range(1, len(example.passages)), self.config.group_size - 1)
            qids.append(example.qid)
            queries.append(example.query)
            passages.append([example.passages[i] for i in (0, *chosen)])
            if example.teacher_scores is not None:
                teacher.append([example.teacher_scores[i] for i in (0, *chosen)])
        teacher_scores = torch.tensor(teacher, dtype=torch.float32) if len(teacher) == len(qids) else None
        return RerankBatch(qids, queries, passages, teacher_scores)


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


def _accelerator(mixed_precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        # accelerate fixes the precision per process; a later stage may ask for another
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision)


def _trainable_named(reranker: Reranker) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in reranker.named_parameters() if p.requires_grad}


def _load_trainable(named: dict[str, torch.nn.Parameter], state: dict[str, Any], checkpoint: Path) -> None:
    missing = set(named) - set(state["trainable"])
    if missing:
        raise ValueError(f"{checkpoint}: no saved values for trainable parameters {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(state["trainable"][name])


def train_reranker(reranker: Reranker, examples: Sequence[RerankExample], config: RerankTrainConfig,
                   loss: RerankLoss | None = None, resume: bool = False) -> dict[str, Any]:
    """Train `reranker.trainable_parameters()` for `config.steps` steps of `loss` (default:
    `make_loss(config.loss, **config.loss_options)`); with `resume`, continue from the
    latest checkpoint in `config.output_dir` (a finished run only loads its weights).
    The reranker ends on the accelerator's device.

    Returns {"step", "loss" (last step's), "losses" (every step's, resumed ones included),
    "reranker_path" (the final `save_pretrained` folder), "seconds" (this call)}.
    """
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    started = time.perf_counter()
    if not config.output_dir:
        raise ValueError("RerankTrainConfig.output_dir is required (checkpoints and the log go there)")
    output_dir = Path(config.output_dir)
    log_path = output_dir / LOG_NAME
    loss_fn = loss if loss is not None else make_loss(config.loss, **config.loss_options)
    examples = _usable_examples(examples, config, loss_fn)
    named = _trainable_named(reranker)
    if not named:
        raise ValueError(f"{type(reranker).__name__} has no trainable parameters")
    checkpoint = latest_checkpoint(output_dir) if output_dir.is_dir() else None
    if checkpoint is not None and not resume:
        raise FileExistsError(f"{output_dir}: holds a training run ({checkpoint.name}); "
                              "pass resume=True to continue it, or choose another output_dir")

    accelerator = _accelerator(config.mixed_precision)
    set_seed(config.seed)
    reranker.to(accelerator.device)
    state = None
    if checkpoint is not None:
        state = torch.load(checkpoint / STATE_NAME, map_location="cpu", weights_only=True)
        _load_trainable(named, state, checkpoint)
        if checkpoint.name == FINAL_NAME:
            losses = [row["loss"] for row in read_log(log_path)]
            log.info("%s: already trained (%d steps); loaded its weights", output_dir, state["step"])
            return {"step": int(state["step"]), "loss": losses[-1] if losses else None, "losses": losses,
                    "reranker_path": str(checkpoint / "reranker"), "seconds": time.perf_counter() - started}

    optimizer = torch.optim.AdamW(list(named.values()), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.steps)
    # stepped here once per global step, so the scheduler is not handed to accelerate
    optimizer = accelerator.prepare(optimizer)
    step = 0
    if state is not None:
        step = int(state["step"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state["scaler"]:
            accelerator.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        log.info("%s: resuming at step %d", output_dir, step)
    history = [row for row in read_log(log_path) if row["step"] <= step]
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(log_path) as f:  # drops the steps logged after the checkpoint
            f.writelines(json.dumps(row) + "\n" for row in history)

    def save(folder: Path) -> None:
        if accelerator.is_main_process:
            with atomic_directory(folder) as tmp:
                reranker.save_pretrained(tmp / "reranker")
                torch.save({
                    "step": step,
                    "trainable": {name: p.detach().cpu() for name, p in named.items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else {},
                    "rng": rng_state(),
                    "config": dataclasses.asdict(config),
                }, tmp / STATE_NAME)
            for old in output_dir.glob("checkpoint-*"):
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    sampler = _GroupSampler(examples, config, accelerator.num_processes, accelerator.process_index)
    params = list(named.values())
    was_training = reranker.training
    reranker.train()
    bar = tqdm(total=config.steps, initial=step, desc=f"train {reranker.method or 'reranker'}", unit="step",
               disable=not config.progress or not accelerator.is_main_process)
    log_file = open(log_path, "a", encoding="utf-8") if accelerator.is_main_process else None
    try:
        while step < config.steps:
            batch = sampler.batch(step)
            with accelerator.autocast():
                value = loss_fn(reranker.score(batch.queries, batch.passages), batch)
            if not torch.isfinite(value):
                raise FloatingPointError(f"step {step + 1}: the {loss_fn.name or 'training'} loss is {value.item()}")
            accelerator.backward(value)
            if accelerator.num_processes > 1:
                for param in params:
                    if param.grad is not None:
                        param.grad = accelerator.reduce(param.grad, reduction="mean")
            row = {"step": step + 1, "loss": accelerator.reduce(value.detach(), reduction="mean").item()}
            if config.max_grad_norm > 0:
                row["grad_norm"] = float(accelerator.clip_grad_norm_(params, config.max_grad_norm))
            row["lr"] = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            history.append(row)
            if log_file is not None:
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if config.save_every and step % config.save_every == 0 and step < config.steps:
                save(output_dir / f"checkpoint-{step:07d}")
        save(output_dir / FINAL_NAME)
    finally:
        if log_file is not None:
            log_file.close()
        bar.close()
        reranker.train(was_training)
    losses = [row["loss"] for row in history]
    return {"step": step, "loss": losses[-1], "losses": losses,
            "reranker_path": str(output_dir / FINAL_NAME / "reranker"), "seconds": time.perf_counter() - started}


def train_stages(reranker: Reranker, stages: Sequence[tuple[str, Sequence[RerankExample], RerankTrainConfig]],
                 output_dir: str | Path, resume: bool = True) -> dict[str, dict[str, Any]]:
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
