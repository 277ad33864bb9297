"""Multitask dual-encoder training on `accelerate`: one batch per task per step, one backward
per task, the task gradients merged by a `GradientCombiner` (naive, taco, pcgrad, cgd, ...),
then AdamW with a linear schedule. Single-task training is the same loop with one task.

    trainer = MultitaskTrainer(TrainConfig(model=TrainModelConfig(name_or_path=...),
                                           data=TrainDataConfig(dir=...), method="taco", ...))
    result = trainer.train(resume=True)      # result.model_path: a DualEncoder folder

A trainer is one run; `training.train` is the entry point that also runs ANCE-style negative
rounds (`data.negative_rounds`), each a MultitaskTrainer run in OUTPUT_DIR/round-K.
Checkpoints, exact resume and the log come from `training_loop`; each checkpoint adds the
model, the combiner state and the data position. Multi-GPU/multi-node:
`accelerate launch -m multitask_retriever.cli train ...`.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from kilt.passages import PassageStore

from .config import check_fields, moved_fields
from .devices import STORAGE_HELP
from .data import (
    DEFAULT_DEPTH,
    DEFAULT_KEEP,
    NEGATIVE_SAMPLING,
    MultitaskBatches,
    prepare_training_data,
    temperature_batch_sizes,
)
from .examples import TrainingExample, example_counts
from .losses import ContrastiveLoss
from .specialization import COMBINERS, TacoConfig
from .training_loop import (FLAT_OPTIMIZER_FIELDS, STATE_NAME, OptimizerConfig, RunResult, TrainingLoop, load_state,
                            read_log)

log = logging.getLogger("mtr.train")



def methods() -> list[str]:
    """Training methods: every registered gradient combiner, and "single" (one task)."""
    return [*COMBINERS, "single"]

MODEL_DIR = "model"
DIAGNOSTICS_NAME = "specialization.json"


def round_dir(output_dir: str | Path, k: int) -> Path:
    """The folder of round `k` of a run with negative rounds in `output_dir` (see `rounds`)."""
    return Path(output_dir) / f"round-{k}"


@dataclass
class TrainModelConfig:
    """The dual encoder trained: where it starts and how it reads (TrainConfig's `model` section)."""

    name_or_path: str = field(default="t5-base", metadata={"help": "Hugging Face name or local folder"})
    init_from: str = field(default="", metadata={
        "help": "start from a trained DualEncoder instead: its folder, or a finished `mtr train` output folder "
                "(its final model); a fresh optimiser and schedule. The two-phase protocol: train a naive base, "
                "then continue every method from it"})
    pooling: str = field(default="auto", metadata={"help": "auto | mean | cls | first_decoder (EncoderConfig)"})
    normalize: bool | None = field(default=None, metadata={"help": "L2-normalise embeddings; unset: as the checkpoint"})
    query_max_length: int = field(default=64, metadata={"help": "query tokens incl. prompt (saved with the model)",
                                                        "min": 1})
    query_prompt_style: str = field(default="", metadata={
        "help": "query prompts: short ('nq: {query}') | taco-t5 (the official '<TASK> <extra_id_1> {query}'); "
                "empty: the start model's"})
    task_query_max_lengths: dict[str, int] = field(default_factory=dict, metadata={
        "help": "per-task query lengths used in training, e.g. {wow: 260, fever: 68}", "min": 1})
    passage_max_length: int = field(default=160, metadata={"min": 1})
    gradient_checkpointing: bool = False
    storage_dtype: str = field(default="float32", metadata={"help": STORAGE_HELP + " (EncoderConfig)"})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.query_prompt_style:
            from .encoder import query_prompts_for

            query_prompts_for(self.query_prompt_style)  # ValueError listing the styles


@dataclass
class TrainDataConfig:
    """What the steps train on: tasks, batches and hard negatives (TrainConfig's `data` section)."""

    dir: str = field(default="", metadata={"help": "KILT folder with <task>-train-kilt.jsonl files"})
    passages: str = field(default="", metadata={
        "help": "passage file from `mtr chunk`; default: chunk DATA_DIR/knowledge_source.jsonl[.gz] into OUTPUT_DIR"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "default: every task with a train file"})
    per_task_batch_size: int = field(default=16, metadata={"help": "queries per task per step and process", "min": 1})
    task_batch_sizes: dict[str, int] = field(default_factory=dict, metadata={"help": "per-task overrides", "min": 1})
    task_temperature: float = field(default=0.0, metadata={
        "help": "0: per_task_batch_size queries of every task per step; T > 0: the same total split over "
                "tasks in proportion to n_t^(1/T), n_t a task's training queries (official TACO: 4)", "min": 0})
    n_negatives: int = field(default=2, metadata={"help": "hard negatives per query (plus in-batch negatives)",
                                                  "min": 0})
    negatives: str = field(default="bm25", metadata={
        "help": "bm25 | none (random only) | a file from `mtr mine-negatives` (ANCE-style rounds)"})
    negative_sampling: str = field(default="sample", metadata={
        "help": "sample: n_negatives drawn from a query's kept hard negatives each step; top: its top-ranked "
                "ones and first positive, as the official TACO code"})
    negative_depth: int = field(default=DEFAULT_DEPTH, metadata={"help": "hits searched per query for negatives",
                                                                 "min": 1})
    negatives_per_query: int = field(default=DEFAULT_KEEP, metadata={"help": "hard negatives kept per query", "min": 0})
    negative_rounds: int = field(default=0, metadata={
        "help": "ANCE-style rounds after the first run: each mines negatives with the previous round's model "
                "and trains on from its weights for STEPS more steps (OUTPUT_DIR/round-K; 0 = one run)", "min": 0})
    max_train_queries: int = field(default=0, metadata={"help": "cap on training queries per task (0 = all)", "min": 0})
    gather_negatives: bool = field(default=True, metadata={"help": "share passages across processes"})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.task_temperature and self.task_batch_sizes:
            raise ValueError("set task_temperature or task_batch_sizes, not both")
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling must be one of {', '.join(NEGATIVE_SAMPLING)}, "
                             f"got {self.negative_sampling!r}")
        if self.negative_rounds and not self.dir:
            raise ValueError("negative_rounds needs data_dir (data.dir: the training queries negatives are mined for)")

    def batch_sizes(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Queries per task and step, given each task's training-query count."""
        if self.task_temperature:
            return temperature_batch_sizes(counts, self.per_task_batch_size * len(counts), self.task_temperature)
        return {t: self.task_batch_sizes.get(t, self.per_task_batch_size) for t in counts}


#: the flat fields of TrainConfig before its sections, and their places now
_MOVED = {"model_name_or_path": "model.name_or_path", "data_dir": "data.dir",
          **{name: f"model.{name}" for name in ("init_from", "pooling", "normalize", "query_max_length",
                                                  "passage_max_length", "query_prompt_style",
                                                  "task_query_max_lengths", "gradient_checkpointing")},
          **{name: f"data.{name}" for name in ("passages", "tasks", "per_task_batch_size", "task_batch_sizes",
                                                 "task_temperature", "n_negatives", "negatives", "negative_sampling",
                                                 "negative_depth", "negatives_per_query", "negative_rounds",
                                                 "max_train_queries", "gather_negatives")},
          **{name: f"optim.{name}" for name in FLAT_OPTIMIZER_FIELDS}}


@moved_fields(_MOVED)
@dataclass
class TrainConfig:
    """Multitask dual-encoder training (`mtr train` flags and YAML keys)."""

    model: TrainModelConfig = field(default_factory=TrainModelConfig, metadata={"help": "the dual encoder trained"})
    data: TrainDataConfig = field(default_factory=TrainDataConfig, metadata={"help": "tasks, batches, negatives"})
    method: str = field(default="naive", metadata={"help": "a gradient combiner (naive | taco | pcgrad | cgd) or single (one task)"})
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=5e-6, weight_decay=0.0,
                                                                           max_grad_norm=1.0),
                                   metadata={"help": "AdamW, schedule and step budget"})
    warmup_ratio: float = field(default=0.0, metadata={
        "help": "share of steps with learning-rate warm-up and, for taco, plain averaged task gradients "
                "(official TACO: 0.1); replaces optim.warmup_steps and taco.warmup_steps. pcgrad and cgd warm "
                "up only when asked: combiner_options {warmup_steps: N}", "min": 0, "below": 1})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature (TACO: 1, raw dot product)",
                                                      "above": 0})
    seed: int = field(default=42, metadata={"min": 0})
    output_dir: str = field(default="", metadata={"help": "checkpoints, final model, train_log.jsonl"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only the final one)", "min": 0})
    taco: TacoConfig = field(default_factory=TacoConfig, metadata={"help": "TACO's settings (method taco)"})
    combiner_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "extra make_combiner options (pcgrad / cgd)"})
    diagnostics_depth: int = field(default=4, metadata={
        "help": "module-name depth of the per-layer specialisation summary saved with checkpoints", "min": 1})
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        if self.method not in methods():
            raise ValueError(f"method must be one of {', '.join(methods())}, got {self.method!r}")
        if self.method == "single" and len(self.data.tasks) != 1:
            raise ValueError(f"method single trains one task; got tasks {self.data.tasks or '(all)'}")
        if self.warmup_ratio and (self.optim.warmup_steps or self.taco.warmup_steps):
            raise ValueError("set warmup_ratio or optim.warmup_steps / taco.warmup_steps, not both")

    @property
    def combiner_method(self) -> str:
        return "naive" if self.method == "single" else self.method

    @property
    def lr_warmup_steps(self) -> int:
        """Learning-rate warm-up steps: `warmup_ratio` of the steps, else `optim.warmup_steps`."""
        return round(self.warmup_ratio * self.optim.steps) if self.warmup_ratio else self.optim.warmup_steps

    def combiner_kwargs(self) -> dict[str, Any]:
        """Options passed to `make_combiner`: the run's seed, TACO's settings and the naive warm-up
        of `warmup_ratio` for taco (as the official recipe: PCGrad and CGD have none), then
        `combiner_options`."""
        options: dict[str, Any] = {"seed": self.seed}
        if self.method == "taco":
            options.update(self.taco.combiner_options())
            if self.warmup_ratio:
                options["warmup_steps"] = self.lr_warmup_steps
        return {**options, **self.combiner_options}


def init_model_path(path: str | Path) -> Path:
    """The DualEncoder folder `--init-from` names: the folder itself, or a finished training run's
    final model (the last round's for a run with negative rounds)."""
    from .training_loop import FINAL_NAME

    folder = Path(path)
    rounds = sorted(folder.glob("round-*"), key=lambda p: int(p.name.split("-")[1]) if p.name[6:].isdigit() else -1)
    for candidate in (folder, folder / FINAL_NAME / MODEL_DIR, *(r / FINAL_NAME / MODEL_DIR for r in rounds[::-1])):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{folder}: init_from needs a trained model folder or a finished `mtr train` output "
                            f"folder (no config.json, no {FINAL_NAME}/{MODEL_DIR}); finish or resume that run first")


def _specialization(combiner: Any, encoder: nn.Module, tasks: list[str], depth: int) -> dict[str, Any]:
    """{"tasks": training order, "layers": per-layer task-weight statistics} of a TACO combiner."""
    named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    return {"tasks": tasks, "layers": combiner.diagnostics(named, depth=depth)}


def specialization_summary(checkpoint: str | Path, depth: int = 4) -> dict[str, Any]:
    """TACO's per-layer task-weight statistics at a saved checkpoint of a taco run (its `final/`
    or a `checkpoint-<step>/` folder): rebuilt from the saved weights and combiner state, or, in a
    final folder, which keeps no combiner state unless kept to be continued, as saved beside it."""
    from .encoder import DualEncoder
    from .specialization import TaskSpecialization
    checkpoint = Path(checkpoint)
    state = load_state(checkpoint / STATE_NAME, ("data",))
    if "combiner" not in state:
        return json.loads((checkpoint / DIAGNOSTICS_NAME).read_text(encoding="utf-8"))
    tasks = list(state["data"]["tasks"])
    encoder = DualEncoder.from_pretrained(checkpoint / MODEL_DIR)
    params = [p for p in encoder.parameters() if p.requires_grad]
    combiner = TaskSpecialization(params, len(tasks), exact=bool(state["combiner"]["exact"]))
    combiner.load_state_dict(state["combiner"])
    return _specialization(combiner, encoder, tasks, depth)


@dataclass
class TrainResult(RunResult):
    """What a run produced (`model_path`: the final DualEncoder folder), with each task's losses."""

    task_losses: dict[str, list[float]] = field(default_factory=dict)


class _PairEncoder(nn.Module):
    """Queries and passages in one forward call, so DDP sees one forward per backward."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, queries: Mapping[str, torch.Tensor], passages: Mapping[str, torch.Tensor]):
        return self.encoder.embed(queries), self.encoder.embed(passages)


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
    def data(self) -> tuple[PassageStore, dict[str, Sequence[TrainingExample]]]:
        """The PassageStore and examples per task given, else those `config` names
        (`prepare_training_data`: chunked, mined and cached in `output_dir` once)."""
        if self._examples is None:
            data = self.config.data
            self._store, self._examples = prepare_training_data(
                self.output_dir, data.dir, data.passages, data.tasks, data.negatives, depth=data.negative_depth,
                keep=data.negatives_per_query, max_queries=data.max_train_queries, progress=self.config.progress)
        return self._store, self._examples

    def encoder(self):
        """The DualEncoder to train (built from the config on first use)."""
        if self._encoder is None:
            from .encoder import DualEncoder, query_prompts_for

            model = self.config.model
            overrides: dict[str, Any] = {"query_max_length": model.query_max_length,
                                         "passage_max_length": model.passage_max_length,
                                         "storage_dtype": model.storage_dtype}
            if model.pooling != "auto":
                overrides["pooling"] = model.pooling
            if model.normalize is not None:
                overrides["normalize"] = model.normalize
            if model.query_prompt_style:
                overrides["query_prompts"] = query_prompts_for(model.query_prompt_style)
            start = init_model_path(model.init_from) if model.init_from else model.name_or_path
            self._encoder = DualEncoder.from_pretrained(start, **overrides)
        return self._encoder

    # ----------------------------------------------------------------- training
    def train(self, resume: bool = False, stop_after: int | None = None, carry_from: Path | None = None,
              keep_optimizer: bool = False) -> TrainResult:
        """Train to `config.optim.steps`; with `resume`, continue from the latest checkpoint in
        `output_dir` (a finished run only reports). `stop_after` ends this call after that
        global step with a checkpoint, as an interruption would (for tests and time slicing).

        `carry_from` (a finished run's final folder, kept with `keep_optimizer`) starts a new run
        with that run's combiner state (TACO's EMAs) and optimiser moments, as the official
        ANCE rounds do; the learning-rate schedule starts afresh. A config with
        `data.negative_rounds` is refused: `training.train` runs it, round by round."""
        from .specialization import make_combiner

        cfg = self.config
        if cfg.data.negative_rounds:
            raise ValueError(f"negative_rounds {cfg.data.negative_rounds}: a MultitaskTrainer run is one round; "
                             "train with multitask_retriever.training.train")
        if round_dir(self.output_dir, 0).is_dir():
            raise ValueError(f"{self.output_dir}: holds a run with negative rounds ({round_dir(self.output_dir, 0)}); "
                             "resume it with its negative_rounds, or choose another output_dir")
        started = time.perf_counter()
        loop = TrainingLoop(cfg, resume=resume, desc=f"train {cfg.method}")
        if loop.finished:
            log.info("%s: already trained (%d steps)", self.output_dir, loop.step)
            return self._result(loop.checkpoint / MODEL_DIR, loop.step, read_log(loop.log_path), started)

        accelerator = loop.start()
        with accelerator.main_process_first():  # chunking, BM25 and caches are written once
            store, examples = self.data()
        tasks = list(examples)
        if cfg.method == "single" and len(tasks) != 1:
            raise ValueError(f"method single trains one task; got {tasks}")
        encoder = self.encoder()
        if loop.checkpoint is not None:
            self._load_weights(encoder, loop.checkpoint / MODEL_DIR)
        if cfg.model.gradient_checkpointing:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        sizes = cfg.data.batch_sizes({t: len(examples[t]) for t in tasks})
        batches = MultitaskBatches(examples, store, sizes, cfg.data.n_negatives, cfg.seed,
                                   accelerator.num_processes, accelerator.process_index, cfg.data.negative_sampling)
        query_lengths = {t: cfg.model.task_query_max_lengths.get(t, cfg.model.query_max_length) for t in tasks}
        loss_fn = ContrastiveLoss(cfg.temperature, gather=cfg.data.gather_negatives)

        encoder.train()
        model = accelerator.prepare(_PairEncoder(encoder))
        params = [p for p in encoder.parameters() if p.requires_grad]
        combiner = make_combiner(cfg.combiner_method, params, len(tasks), **cfg.combiner_kwargs())
        carried = None
        if loop.state is not None:
            batches.check_state(loop.state["data"], str(loop.checkpoint))
            combiner.load_state_dict(loop.state["combiner"])
        else:
            if carry_from is not None:
                carried = load_state(Path(carry_from) / STATE_NAME, ("combiner", "optimizer"))
                combiner.load_state_dict(carried["combiner"])
            if accelerator.is_main_process:
                log.info("training %s on %s", cfg.method, json.dumps(example_counts(examples)))

        def step(index: int) -> dict[str, Any]:
            return self._step(index, tasks, batches, query_lengths, encoder, model, loss_fn, combiner, accelerator)

        def save(folder: Path) -> dict[str, Any]:
            accelerator.unwrap_model(model).encoder.save_pretrained(folder / MODEL_DIR)
            if hasattr(combiner, "diagnostics"):  # per-layer task-weight statistics (taco)
                summary = _specialization(combiner, encoder, tasks, cfg.diagnostics_depth)
                (folder / DIAGNOSTICS_NAME).write_text(json.dumps(summary, indent=1) + "\n")
            return {"combiner": combiner.state_dict(), "data": batches.state_dict()}

        history = loop.run(step, params, save, stop_after=stop_after, warmup_steps=cfg.lr_warmup_steps,
                           keep_optimizer=keep_optimizer, resume_only=("combiner",),
                           optimizer_moments=carried["optimizer"]["state"] if carried else None)
        return self._result(loop.folder / MODEL_DIR, loop.step, history, started)

    def _step(self, step: int, tasks: list[str], batches: MultitaskBatches, query_lengths: dict[str, int],
              encoder: Any, model: nn.Module, loss_fn: ContrastiveLoss, combiner, accelerator) -> dict[str, Any]:
        """One step's gradient: per task, zero the gradient, forward, backward, let the combiner
        observe; then the combined gradient is written. Gradients stay AMP-scaled while
        combined: every combiner's output scales with a common factor of its inputs."""
        row: dict[str, Any] = {}
        losses = []
        for t, task in enumerate(tasks):
            batch = batches.batch(task, step)
            features = batch.tokenize(encoder, query_lengths[task])
            encoder.zero_grad(set_to_none=True)
            with accelerator.autocast():
                queries, passages = model(features["query"], features["passage"])
            value = loss_fn(queries, passages, batch.exclude)
            if not torch.isfinite(value) and accelerator.mixed_precision != "fp16":
                raise FloatingPointError(f"step {step + 1}: task {task} loss is {value.item()}")
            accelerator.backward(value)
            loss = accelerator.reduce(value.detach(), reduction="mean").item()
            combiner.observe(t, loss=loss)
            row[f"loss/{task}"] = loss
            losses.append(loss)
        combiner.apply()
        row["loss"] = sum(losses) / len(losses)
        row["update_norm"] = combiner.last_update_norm
        if hasattr(combiner, "weight_entropy"):  # taco: how far the weights are from uniform
            row["weight_entropy"] = combiner.weight_entropy()
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
        return TrainResult(str(model_path), step, [row["loss"] for row in history], time.perf_counter() - started,
                           task_losses)

