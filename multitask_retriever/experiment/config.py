"""What `mtr benchmark-quality` builds and scores: `ExperimentConfig`.

Dual-encoder training settings sit in its `train:` section (fields of `TrainConfig`) and the
rerankers' in `rerank:` (fields of `RerankTrainConfig`); their budgets default to the library's,
sized for a GPU; scripts/configs/cpu.yaml holds the budgets of the committed CPU runs. What only
an experiment has (seeds, depths, hold-outs, teacher, base model) stays top-level, as do the
settings every stage shares (seed, max_train_queries, query and passage lengths). The old flat
spellings (`steps`, `reranker_lr`, `taco`, ...) still load, with a deprecation warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import check_fields, field_like, moved_fields, section_of, section_places
from ..indexing import IndexConfig
from ..rerank.base import make_config
from ..rerank.cross_encoder import CrossEncoderConfig
from ..rerank.losses import distill_losses
from ..rerank.train import RerankTrainConfig
from ..trainer import TrainConfig
from .systems import RERANKERS, RETRIEVERS

DEFAULT_SYSTEMS = ["bm25", "zero-shot", "naive", "taco", "taco+cross-encoder", "taco+qpeft-a"]


#: what the systems are scored on: the dev files, or held-out training queries
SCORE_ON = ("dev", "validation")

#: the places of the TrainConfig fields an experiment sets for every fine-tuned dual encoder (the
#: others are set per system, top-level, or left at the library's); its `train` section names each
#: by its last part, as they were spelled when TrainConfig was flat
TRAIN_FIELDS = ("optim.steps", "data.per_task_batch_size", "data.n_negatives", "optim.lr", "optim.warmup_steps",
                "warmup_ratio", "data.task_temperature", "model.query_prompt_style", "data.negative_sampling",
                "temperature", "taco", "optim.mixed_precision", "model.storage_dtype")

#: the places of the RerankTrainConfig fields an experiment sets for its rerankers (`lr`: the cross-encoder's)
RERANK_FIELDS = ("optim.steps", "batch_size", "group_size", "optim.lr", "optim.mixed_precision")

TrainSection = section_of(
    TrainConfig, "TrainSection", TRAIN_FIELDS, module=__name__, lr=3e-5, temperature=0.05,
    doc="Dual-encoder fine-tuning (TrainConfig fields); lr 3e-5 and temperature 0.05 suit the MiniLM start.")

RerankSection = section_of(
    RerankTrainConfig, "RerankSection", RERANK_FIELDS, module=__name__,
    doc="Reranker training (RerankTrainConfig fields); lr is the cross-encoder's (see llm_reranker_lr).")

#: the IndexConfig fields an experiment sets for every dense retriever's index (device: top-level)
INDEX_FIELDS = ("index_type", "backend", "ivf_nlist", "nprobe", "pq_m", "pq_bits", "train_size", "refine",
                "gpu_float16", "max_flat_bytes")

IndexSection = section_of(
    IndexConfig, "IndexSection", INDEX_FIELDS, module=__name__, index_type="flat",
    doc="The index each dense retriever is searched through (IndexConfig fields); exact (flat) unless set: "
        "a corpus whose vectors do not fit in memory wants ivfpq with refine, or auto.")

#: the flat spellings of earlier configs and their places now
MOVED = {**{name: f"train.{name}" for name in TrainSection.__places__},
         **{f"reranker_{name}": f"rerank.{name}" for name in RerankSection.__places__}}


@moved_fields(MOVED)
@dataclass
class ExperimentConfig:
    """What to build and score on a KILT folder."""

    data_dir: str = ""
    knowledge_source: str = field(default="", metadata={"help": "default: DATA_DIR/knowledge_source.jsonl[.gz]"})
    work_dir: str = field(default="", metadata={"help": "stage cache; default: runs/<data folder name>"})
    systems: list[str] = field(default_factory=lambda: list(DEFAULT_SYSTEMS), metadata={
        "help": f"retrievers {', '.join(RETRIEVERS)} or single-<task>, each alone or as <retriever>+<reranker>; "
                f"rerankers: {', '.join(RERANKERS)}, and cross-encoder schedules such as cross-encoder.distill "
                f"or cross-encoder.contrastive.distill"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "default: every task with a dev file"})
    encoder: str = field(default="", metadata={"help": "dual-encoder start point; default: packaged all-MiniLM-L6-v2"})
    cross_encoder: str = field(default="", metadata={"help": "cross-encoder start point; default: packaged MiniLM"})
    cross_encoder_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "CrossEncoderConfig fields of the trained cross-encoders, e.g. {lora_rank: 16} for LoRA "
                "adapters or {storage_dtype: float16}"})
    llm: str = field(default="", metadata={"help": "LLM for LLM rerankers; default: packaged SmolLM2-135M (GGUF)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda: encoders, rerankers and indexes"})
    seed: int = field_like(TrainConfig, "seed", default=0)
    seeds: list[int] = field(default_factory=list, metadata={
        "help": "two or more seeds: run every system once per seed (WORK_DIR/seed-<s>) and report means, "
                "seed-to-seed spread and tests pooled over seeds against naive", "min": 0})
    passage_words: int = field(default=100, metadata={"min": 1})
    k: int = field(default=100, metadata={"min": 1})
    encode_batch_size: int = field(default=64, metadata={"min": 1})
    zero_shot_prompts: bool = field(default=False, metadata={
        "help": "task prompts on zero-shot queries (default off: the pretrained model never saw them)"})
    train: TrainSection = field(default_factory=TrainSection)  # type: ignore[valid-type]
    base_steps: int = field(default=0, metadata={
        "help": "two-phase protocol: a naive base trained this many steps, which every fine-tuned system "
                "(naive, taco, pcgrad, cgd, single-<task>) then continues from for train.steps more with a fresh "
                "optimiser; 0: each system trains from the start encoder", "min": 0})
    base_dir: str = field(default="", metadata={
        "help": "folder of the naive base (default: WORK_DIR/train/naive-base); a seed study shares one"})
    base_seed: int = field(default=-1, metadata={
        "help": "seed of the naive base (-1: the run's seed); a seed study trains one base with its first seed",
        "min": -1})
    index: IndexSection = field(default_factory=IndexSection)  # type: ignore[valid-type]
    query_max_length: int = field_like(TrainConfig, "model.query_max_length")
    passage_max_length: int = field_like(TrainConfig, "model.passage_max_length")
    # reranking
    rerank: RerankSection = field(default_factory=RerankSection)  # type: ignore[valid-type]
    rerank_k: int = field(default=20, metadata={
        "help": "candidates reranked per query, and the depth rerankers train on", "min": 1})
    rerank_queries: int = field(default=0, metadata={"help": "cap on reranked dev queries per task (0 = all)",
                                                     "min": 0})
    dev_queries: int = field(default=0, metadata={
        "help": "score every system on the first N dev queries of each task (0 = all), so that every row "
                "of the table stands on the same queries", "min": 0})
    cross_encoder_steps: int = field(default=0, metadata={
        "help": "cross-encoder training steps (0: rerank.steps); its fresh scoring head may need more than "
                "the LLM rerankers' small modules", "min": 0})
    teacher: str = field(default="qpeft-a", metadata={
        "help": "reranker (any LLM reranker, or a cross-encoder schedule without distill) whose scores on the "
                "retriever's training candidates the cross-encoder.*distill* "
                "schedules learn from (trained on the same candidates first); <reranker>@fused teaches its "
                "scores fused with the retriever's by the fitted fusion weights"})
    teacher_queries: int = field(default=0, metadata={
        "help": "training queries per task the teacher scores (0 = all)", "min": 0})
    distill_loss: str = field(default="ranknet", metadata={"help": " | ".join(distill_losses())})
    llm_reranker_lr: float = field(default=1e-3, metadata={
        "help": "learning rate of the LLM rerankers' small modules", "min": 0})
    llm_reranker_loss: str = field(default="", metadata={
        "help": "loss of the LLM rerankers (a rerank.losses name, e.g. ql+hinge as Q-PEFT's released code); "
                "empty: each method's own (lce+ql)"})
    max_train_queries: int = field_like(TrainConfig, "data.max_train_queries")
    reranker_epochs: float = field(default=0.0, metadata={
        "help": "passes over the rerankers' training queries; sets their step counts (0: rerank.steps and "
                "cross_encoder_steps)", "min": 0})
    score_on: str = field(default="dev", metadata={
        "help": "dev | validation: score on a held-out, grouped share (validation_split) of each task's "
                "training queries, training on the rest, and never read the dev files; for choosing settings "
                "before the one run scored on dev"})
    validation_split: float = field(default=0.2, metadata={
        "help": "share of each task's training queries scored under score_on validation (whole conversations, "
                "documents or subjects)"})
    fusion_validation: float = field(default=0.1, metadata={
        "help": "share of each task's training queries held out from reranker training, on which the weights "
                "of <system>@fused are fitted (0: none held out, and no @fused system)", "min": 0, "max": 1})
    fusion_min_validation: int = field(default=0, metadata={
        "help": "hold out at least this many of each task's training queries (never more than half of them), "
                "so that a small task has enough to fit its own weight on (50: the per-task minimum)", "min": 0})
    fusion_holdout_retriever: bool = field(default=False, metadata={
        "help": "hold the fusion validation queries out of the dual encoder's training too, so that the fit "
                "does not favour a retriever that has seen them"})
    fusion_per_task: bool = field(default=True, metadata={
        "help": "one fusion weight per task (a task with fewer than 50 validation queries uses the global one)"})
    fresh: bool = False

    @property
    def work_path(self) -> Path:
        """The stage cache folder: `work_dir`, else runs/<data folder name>."""
        return Path(self.work_dir or Path("runs") / Path(self.data_dir).resolve().name)

    def __post_init__(self) -> None:
        check_fields(self)
        make_config(CrossEncoderConfig, self.cross_encoder_options)  # unknown or invalid fields, named
        IndexConfig(**section_places(self.index), device=self.device)  # an index type or combination it refuses
        if self.score_on not in SCORE_ON:
            raise ValueError(f"score_on must be one of {', '.join(SCORE_ON)}, got {self.score_on!r}")
        if not 0.0 < self.validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1), got {self.validation_split}")
