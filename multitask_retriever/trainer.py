"""Multitask dual-encoder training on `accelerate`: one batch per task per step, one backward
per task, the task gradients merged by a `GradientCombiner` (naive, taco, pcgrad, cgd, ...),
then AdamW with a linear schedule. Single-task training is the same loop with one task.

    trainer = MultitaskTrainer(TrainConfig(model_name_or_path=..., data_dir=..., method="taco", ...))
    result = trainer.train(resume=True)      # result.model_path: a DualEncoder folder

Checkpoints (`output_dir/checkpoint-<step>/`: model, optimiser, scheduler, scaler, RNG,
combiner state, data position) are written atomically; `resume=True` continues exactly
where the run stopped. Multi-GPU/multi-node: `accelerate launch -m multitask_retriever.cli train ...`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from kilt.io import atomic_write
from kilt.passages import PassageStore, write_passages

from .data import (
    DEFAULT_DEPTH,
    DEFAULT_KEEP,
    MultitaskBatches,
    TrainingExample,
    build_training_examples,
    example_counts,
    read_training_examples,
    task_train_files,
    write_training_examples,
)
from .losses import ContrastiveLoss
from .specialization import COMBINERS, TacoConfig
from .checkpointing import (FINAL_NAME, LOG_NAME, STATE_NAME, atomic_directory, latest_checkpoint, read_log,
                            rng_state, set_rng_state)

log = logging.getLogger("mtr.train")



def methods() -> list[str]:
    """Training methods: every registered gradient combiner, and "single" (one task)."""
    return [*COMBINERS, "single"]

MODEL_DIR = "model"
EXAMPLES_NAME = "training_examples.jsonl"
DIAGNOSTICS_NAME = "specialization.json"


@dataclass
class TrainConfig:
    """Multitask dual-encoder training (`mtr train` flags and YAML keys)."""

    model_name_or_path: str = field(default="t5-base", metadata={"help": "Hugging Face name or local folder"})
    pooling: str = field(default="auto", metadata={"help": "auto | mean | cls | first_decoder (EncoderConfig)"})
    normalize: bool | None = field(default=None, metadata={"help": "L2-normalise embeddings; unset: as the checkpoint"})
    data_dir: str = field(default="", metadata={"help": "KILT folder with <task>-train-kilt.jsonl files"})
    passages: str = field(default="", metadata={
        "help": "passage file from `mtr chunk`; default: chunk DATA_DIR/knowledge_source.jsonl[.gz] into OUTPUT_DIR"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "default: every task with a train file"})
    method: str = field(default="naive", metadata={"help": "a gradient combiner (naive | taco | pcgrad | cgd) or single (one task)"})
    per_task_batch_size: int = field(default=16, metadata={"help": "queries per task per step and process"})
    task_batch_sizes: dict[str, int] = field(default_factory=dict, metadata={"help": "per-task overrides"})
    n_negatives: int = field(default=2, metadata={"help": "hard negatives per query (plus in-batch negatives)"})
    negatives: str = field(default="bm25", metadata={
        "help": "bm25 | none (random only) | a file from `mtr mine-negatives` (ANCE-style rounds)"})
    negative_depth: int = field(default=DEFAULT_DEPTH, metadata={"help": "hits searched per query for negatives"})
    negatives_per_query: int = field(default=DEFAULT_KEEP, metadata={"help": "hard negatives kept per query"})
    max_train_queries: int = field(default=0, metadata={"help": "cap on training queries per task (0 = all)"})
    lr: float = 5e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    steps: int = 1000
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = none)"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature (TACO: 1, raw dot product)"})
    query_max_length: int = field(default=64, metadata={"help": "query tokens incl. prompt (saved with the model)"})
    task_query_max_lengths: dict[str, int] = field(default_factory=dict, metadata={
        "help": "per-task query lengths used in training, e.g. {wow: 260, fever: 68}"})
    passage_max_length: int = 160
    gather_negatives: bool = field(default=True, metadata={"help": "share passages across processes"})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16"})
    gradient_checkpointing: bool = False
    seed: int = 42
    output_dir: str = field(default="", metadata={"help": "checkpoints, final model, train_log.jsonl"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only the final one)"})
    taco: TacoConfig = field(default_factory=TacoConfig, metadata={"help": "TACO's settings (method taco)"})
    combiner_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "extra make_combiner options (pcgrad / cgd)"})
    diagnostics_depth: int = field(default=4, metadata={
        "help": "module-name depth of the per-layer specialisation summary saved with checkpoints"})
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in methods():
            raise ValueError(f"method must be one of {', '.join(methods())}, got {self.method!r}")
        if self.method == "single" and len(self.tasks) != 1:
            raise ValueError(f"method single trains one task; got tasks {self.tasks or '(all)'}")
        for name in ("steps", "per_task_batch_size", "query_max_length", "passage_max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("n_negatives", "warmup_steps", "save_every", "max_train_queries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")

    @property
    def combiner_method(self) -> str:
        return "naive" if self.method == "single" else self.method

    def combiner_kwargs(self) -> dict[str, Any]:
        """Options passed to `make_combiner`: the run's seed, TACO's settings for taco, then
        `combiner_options`."""
        taco = self.taco.combiner_options() if self.method == "taco" else {}
        return {"seed": self.seed, **taco, **self.combiner_options}


@dataclass
class TrainResult:
    """What a run produced: the final DualEncoder folder and the per-step log."""

    model_path: str
    step: int
    losses: list[float]
    task_losses: dict[str, list[float]]
    seconds: float


class _PairEncoder(nn.Module):
    """Queries and passages in one forward call, so DDP sees one forward per backward."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, queries: Mapping[str, torch.Tensor], passages: Mapping[str, torch.Tensor]):
        return self.encoder.embed(queries), self.encoder.embed(passages)


def _accelerator(mixed_precision: str):
    """An Accelerator; unused parameters (e.g. BERT's pooler) are allowed under DDP."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state()  # accelerate fixes the precision per process
    return Accelerator(mixed_precision=mixed_precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


class MultitaskTrainer:
    """Trains one DualEncoder on several KILT tasks with a gradient combiner (see module doc).

    `encoder` (a DualEncoder) and `examples` ({task: [TrainingExample]}) default to what
    `config` names; `store` is the PassageStore the examples' passage ids refer to.
    """

    def __init__(self, config: TrainConfig, encoder: Any = None,
                 examples: Mapping[str, list[TrainingExample]] | None = None, store: PassageStore | None = None):
        if not config.output_dir:
            raise ValueError("TrainConfig.output_dir is required (checkpoints and the log go there)")
        if (examples is None) != (store is None):
            raise ValueError("pass examples and the PassageStore they refer to together")
        self.config = config
        self.output_dir = Path(config.output_dir)
        self._encoder = encoder
        self._examples = dict(examples) if examples is not None else None
        self._store = store

    # ----------------------------------------------------------------- inputs
    def passage_store(self) -> PassageStore:
        """The passage file named by the config, chunked from the knowledge source if needed."""
        if self._store is None:
            cfg = self.config
            if cfg.passages:
                path = Path(cfg.passages)
            else:
                if not cfg.data_dir:
                    raise ValueError("set TrainConfig.passages or data_dir")
                sources = [Path(cfg.data_dir) / n for n in ("knowledge_source.jsonl", "knowledge_source.jsonl.gz")]
                source = next((s for s in sources if s.is_file()), None)
                if source is None:
                    raise FileNotFoundError(f"{cfg.data_dir}: no knowledge_source.jsonl[.gz]; set TrainConfig.passages")
                path = self.output_dir / "passages.jsonl"
                if not path.is_file():
                    write_passages(source, path, progress=cfg.progress)
            self._store = PassageStore(path, progress=self.config.progress)
        return self._store

    def training_examples(self) -> dict[str, list[TrainingExample]]:
        """Examples per task: from a mined-negatives file, or built once (BM25) and cached in
        OUTPUT_DIR/training_examples.jsonl so that a resumed run sees the same data."""
        if self._examples is None:
            cfg = self.config
            tasks = list(cfg.tasks)
            if cfg.negatives not in ("bm25", "none"):
                examples = read_training_examples(cfg.negatives, tasks)
            else:
                cache = self.output_dir / EXAMPLES_NAME
                if cache.is_file():
                    examples = read_training_examples(cache, tasks)
                else:
                    if not cfg.data_dir:
                        raise ValueError("TrainConfig.data_dir is required to build training examples")
                    files = task_train_files(cfg.data_dir, tasks)
                    examples = build_training_examples(files, self.passage_store(), cfg.negatives,
                                                       depth=cfg.negative_depth, keep=cfg.negatives_per_query,
                                                       max_queries=cfg.max_train_queries, progress=cfg.progress)
                    write_training_examples(cache, examples)
            if cfg.max_train_queries:
                examples = {t: e[:cfg.max_train_queries] for t, e in examples.items()}
            self._examples = examples
        return self._examples

    def encoder(self):
        """The DualEncoder to train (built from the config on first use)."""
        if self._encoder is None:
            from .encoder import DualEncoder

            cfg = self.config
            overrides: dict[str, Any] = {"query_max_length": cfg.query_max_length,
                                         "passage_max_length": cfg.passage_max_length}
            if cfg.pooling != "auto":
                overrides["pooling"] = cfg.pooling
            if cfg.normalize is not None:
                overrides["normalize"] = cfg.normalize
            self._encoder = DualEncoder.from_pretrained(cfg.model_name_or_path, **overrides)
        return self._encoder

    # ----------------------------------------------------------------- training
    def train(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train to `config.steps`; with `resume`, continue from the latest checkpoint in
        `output_dir` (a finished run only reports). `stop_after` ends this call after that
        global step with a checkpoint, as an interruption would (for tests and time slicing)."""
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        from .specialization import make_combiner

        started = time.perf_counter()
        cfg = self.config
        out = self.output_dir
        log_path = out / LOG_NAME
        checkpoint = latest_checkpoint(out) if out.is_dir() else None
        if checkpoint is not None and not resume:
            raise FileExistsError(f"{out}: holds a training run ({checkpoint.name}); pass resume=True "
                                  "(mtr train --resume) to continue it, or choose another output_dir")
        if checkpoint is not None and checkpoint.name == FINAL_NAME:
            state = torch.load(checkpoint / STATE_NAME, map_location="cpu", weights_only=True)
            log.info("%s: already trained (%d steps)", out, state["step"])
            return self._result(checkpoint / MODEL_DIR, int(state["step"]), read_log(log_path), started)

        accelerator = _accelerator(cfg.mixed_precision)
        set_seed(cfg.seed)
        with accelerator.main_process_first():  # chunking, BM25 and caches are written once
            examples = self.training_examples()
            store = self.passage_store()
        tasks = list(examples)
        if cfg.method == "single" and len(tasks) != 1:
            raise ValueError(f"method single trains one task; got {tasks}")
        encoder = self.encoder()
        if checkpoint is not None:
            self._load_weights(encoder, checkpoint / MODEL_DIR)
        if cfg.gradient_checkpointing:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        sizes = {t: cfg.task_batch_sizes.get(t, cfg.per_task_batch_size) for t in tasks}
        batches = MultitaskBatches(examples, store, sizes, cfg.n_negatives, cfg.seed,
                                   accelerator.num_processes, accelerator.process_index)
        query_lengths = {t: cfg.task_query_max_lengths.get(t, cfg.query_max_length) for t in tasks}
        loss_fn = ContrastiveLoss(cfg.temperature, gather=cfg.gather_negatives)

        encoder.train()
        model = accelerator.prepare(_PairEncoder(encoder))
        params = [p for p in encoder.parameters() if p.requires_grad]
        optimizer = accelerator.prepare(torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
        # stepped once per global step here, so it is not handed to accelerate
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=cfg.warmup_steps,
                                  num_training_steps=cfg.steps)
        combiner = make_combiner(cfg.combiner_method, params, len(tasks), **cfg.combiner_kwargs())

        step = 0
        if checkpoint is not None:
            state = torch.load(checkpoint / STATE_NAME, map_location="cpu", weights_only=False)
            batches.check_state(state["data"], str(checkpoint))
            step = int(state["step"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if accelerator.scaler is not None and state["scaler"]:
                accelerator.scaler.load_state_dict(state["scaler"])
            combiner.load_state_dict(state["combiner"])
            set_rng_state(state["rng"])
            log.info("%s: resuming at step %d", out, step)
        history = [row for row in read_log(log_path) if row["step"] <= step]
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            with atomic_write(log_path) as f:  # drops steps logged after the checkpoint
                f.writelines(json.dumps(row) + "\n" for row in history)
            if step == 0:
                log.info("training %s on %s", cfg.method, json.dumps(example_counts(examples)))

        def save(folder: Path, final: bool = False) -> None:
            if accelerator.is_main_process:
                with atomic_directory(folder) as tmp:
                    accelerator.unwrap_model(model).encoder.save_pretrained(tmp / MODEL_DIR)
                    state = {"step": step, "config": dataclasses.asdict(cfg), "combiner": combiner.state_dict(),
                             "data": batches.state_dict()}
                    if not final:
                        state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                     scaler=accelerator.scaler.state_dict() if accelerator.scaler else {},
                                     rng=rng_state())
                    torch.save(state, tmp / STATE_NAME)
                    if hasattr(combiner, "diagnostics"):  # per-layer task-weight statistics (taco)
                        named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
                        (tmp / DIAGNOSTICS_NAME).write_text(json.dumps(
                            combiner.diagnostics(named, depth=cfg.diagnostics_depth), indent=1) + "\n")
                for old in out.glob("checkpoint-*"):
                    if old != folder:
                        shutil.rmtree(old, ignore_errors=True)
            accelerator.wait_for_everyone()

        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.method}", unit="step",
                   disable=not cfg.progress or not accelerator.is_main_process)
        log_file = open(log_path, "a", encoding="utf-8") if accelerator.is_main_process else None
        try:
            while step < cfg.steps and (stop_after is None or step < stop_after):
                row = self._step(step, tasks, batches, query_lengths, encoder, model, loss_fn, optimizer,
                                 combiner, accelerator, params)
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
                if step < cfg.steps and ((cfg.save_every and step % cfg.save_every == 0) or step == stop_after):
                    save(out / f"checkpoint-{step:07d}")
            if step >= cfg.steps:
                save(out / FINAL_NAME, final=True)
        finally:
            if log_file is not None:
                log_file.close()
            bar.close()
        folder = out / (FINAL_NAME if step >= cfg.steps else f"checkpoint-{step:07d}")
        return self._result(folder / MODEL_DIR, step, history, started)

    def _step(self, step: int, tasks: list[str], batches: MultitaskBatches, query_lengths: dict[str, int],
              encoder: Any, model: nn.Module, loss_fn: ContrastiveLoss, optimizer, combiner, accelerator,
              params: list[nn.Parameter]) -> dict[str, Any]:
        """One update: per task, zero the gradient, forward, backward, let the combiner observe;
        then the combined gradient is written (and clipped). Gradients stay AMP-scaled while
        combined: every combiner's output scales with a common factor of its inputs."""
        row: dict[str, Any] = {"step": step + 1}
        losses = []
        for t, task in enumerate(tasks):
            batch = batches.batch(task, step)
            features = batch.tokenize(encoder, query_lengths[task])
            optimizer.zero_grad(set_to_none=True)
            with accelerator.autocast():
                queries, passages = model(features["query"], features["passage"])
            value = loss_fn(queries, passages, batch.exclude)
            if not torch.isfinite(value) and self.config.mixed_precision != "fp16":
                raise FloatingPointError(f"step {step + 1}: task {task} loss is {value.item()}")
            accelerator.backward(value)
            loss = accelerator.reduce(value.detach(), reduction="mean").item()
            combiner.observe(t, loss=loss)
            row[f"loss/{task}"] = loss
            losses.append(loss)
        combiner.apply()
        if self.config.max_grad_norm > 0:
            row["grad_norm"] = float(accelerator.clip_grad_norm_(params, self.config.max_grad_norm))
        row["loss"] = sum(losses) / len(losses)
        return row

    @staticmethod
    def _load_weights(encoder: Any, folder: Path) -> None:
        """Copy a checkpoint's saved DualEncoder weights into `encoder` (exact, float32 as saved)."""
        from .encoder import DualEncoder

        saved = DualEncoder.from_pretrained(folder)
        missing, unexpected = encoder.load_state_dict(saved.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"{folder}: weights do not fit the model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")

    def _result(self, model_path: Path, step: int, history: list[dict], started: float) -> TrainResult:
        task_losses: dict[str, list[float]] = {}
        for row in history:
            for key, value in row.items():
                if key.startswith("loss/"):
                    task_losses.setdefault(key[5:], []).append(value)
        return TrainResult(str(model_path), step, [row["loss"] for row in history], task_losses,
                           time.perf_counter() - started)


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Shortcut: `MultitaskTrainer(config).train(resume)`."""
    return MultitaskTrainer(config).train(resume=resume)
