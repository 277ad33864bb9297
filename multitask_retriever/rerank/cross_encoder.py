"""Cross-encoder reranker: a transformer reads "[CLS] query [SEP] passage [SEP]" and a
one-logit head scores the pair (the point-wise "mono" encoder of Pezzuti et al., ECIR 2025).

The model is `AutoModelForSequenceClassification` with one label: a trained cross-encoder
(e.g. an MS MARCO one) keeps its head, and a plain encoder folder (all-MiniLM-L6-v2, BERT,
ELECTRA) gets a freshly initialised head, drawn from torch's global RNG.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BatchEncoding

from kilt.tasks import check_queries, keeps_end, query_window
from safeio.atomic import atomic_directory

from ..config import check_fields
from ..devices import DTYPE_HELP, STORAGE_HELP, autocast, check_dtype_name, check_storage_dtype, stored_state
from ..models import named_weight_errors, own_memory, portable_name, resolve_model_name
from .base import (CONFIG_NAME, Reranker, check_rows, group_size, make_config, read_reranker_meta, split_rows,
                   write_reranker_meta)


ADAPTERS_NAME = "adapters.safetensors"


@dataclass
class CrossEncoderConfig:
    """How the cross-encoder reads pairs; saved in mtr_reranker.json beside the weights."""

    model_name_or_path: str = field(default="", metadata={"help": "Hugging Face name or local folder"})
    max_length: int = field(default=256, metadata={"help": "pair tokens, special tokens included", "min": 1})
    max_query_length: int = field(default=128, metadata={
        "help": "query tokens kept; longer queries are cut so the passage always has room", "min": 1})
    query_keep: str = field(default="auto", metadata={
        "help": "what a cut query keeps: auto (a dialogue its latest turns, other tasks their start) | start | "
                "end; an entity mention always stays"})
    freeze_position_embeddings: bool = field(default=True, metadata={
        "help": "keep position embeddings fixed in training, as Pezzuti et al. do"})
    inference_dtype: str = field(default="auto", metadata={
        "help": "autocast dtype of rerank(): " + DTYPE_HELP})
    storage_dtype: str = field(default="float32", metadata={"help": STORAGE_HELP})
    lora_rank: int = field(default=0, metadata={
        "help": "0: train every weight; r > 0: train rank-r LoRA adapters on every linear layer and the head "
                "(peft), and save only those (a few MB) with the start model's name", "min": 0})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scale numerator (scale = alpha / rank)",
                                                       "above": 0})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_query_length >= self.max_length - 3:
            raise ValueError(f"max_query_length ({self.max_query_length}) must leave room for a passage "
                             f"within max_length ({self.max_length})")
        check_dtype_name(self.inference_dtype, "inference_dtype")
        check_storage_dtype(self.storage_dtype)
        keeps_end(None, self.query_keep)  # ValueError naming the choices


class CrossEncoderReranker(Reranker):
    """Scores (query, passage) pairs jointly with one transformer and a linear head."""

    method = "cross-encoder"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: CrossEncoderConfig):
        super().__init__()
        if model.config.num_labels != 1:
            raise ValueError(f"a cross-encoder needs a one-logit head, the model has {model.config.num_labels}")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self._warned_truncation = False
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        if config.max_query_length + specials >= config.max_length:
            raise ValueError(f"max_query_length ({config.max_query_length}) and {specials} special tokens leave "
                             f"no room for a passage within max_length ({config.max_length})")
        if config.freeze_position_embeddings:
            for name, param in model.named_parameters():
                if "position_embeddings" in name:
                    param.requires_grad_(False)
        if config.lora_rank:
            import peft

            self.model = peft.get_peft_model(model, peft.LoraConfig(
                task_type=peft.TaskType.SEQ_CLS, r=config.lora_rank, lora_alpha=config.lora_alpha,
                target_modules="all-linear"))

    # ------------------------------------------------------------------ loading
    @classmethod
    def create(cls, model: str = "", **options: Any) -> "CrossEncoderReranker":
        """A cross-encoder from `model` (empty: the packaged all-MiniLM-L6-v2, with a new head)."""
        return cls.from_pretrained(model or "minilm", **options)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> "CrossEncoderReranker":
        """Load a folder we saved, a trained HF cross-encoder, or a plain encoder (new head). A
        saved LoRA cross-encoder rebuilds its start model (`model_name_or_path`) and its adapters."""
        folder = resolve_model_name(path)
        saved = read_reranker_meta(folder, cls.method).get("config", {}) if (Path(folder) / CONFIG_NAME).is_file() \
            else {}
        config = make_config(CrossEncoderConfig, {"model_name_or_path": portable_name(path), **saved, **overrides})
        adapters = bool(saved.get("lora_rank"))
        start = resolve_model_name(config.model_name_or_path) if adapters else folder
        with named_weight_errors(start), _quiet_head_report(adapters):
            model = own_memory(AutoModelForSequenceClassification.from_pretrained(start, num_labels=1,
                                                                                  dtype=torch.float32))
        reranker = cls(model, AutoTokenizer.from_pretrained(start), config)
        if adapters:
            reranker._load_adapters(Path(folder) / ADAPTERS_NAME)
        return reranker

    def save_pretrained(self, path: str | Path) -> None:
        """Write the model (or only its trained adapters and head), the tokenizer and
        mtr_reranker.json into `path`, replacing it only once complete."""
        with atomic_directory(path) as tmp:
            if self.config.lora_rank:
                save_file(self._adapter_state(), str(tmp / ADAPTERS_NAME))
            else:
                self.model.save_pretrained(tmp, state_dict=stored_state(self.model, self.config.storage_dtype))
                self.tokenizer.save_pretrained(tmp)
            write_reranker_meta(tmp, self.method, self.config)

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        """The trained parameters of a LoRA cross-encoder (its adapters and head), by name."""
        return {name: p.detach().contiguous().cpu() for name, p in self.model.named_parameters() if p.requires_grad}

    def _load_adapters(self, file: Path) -> None:
        with named_weight_errors(file):
            state = load_file(str(file))
        expected = self._adapter_state()
        differ = sorted(set(state) ^ set(expected)) or [k for k in state if state[k].shape != expected[k].shape]
        if differ:
            raise ValueError(f"{file}: saved parameters {differ[:5]} do not match a rank-{self.config.lora_rank} "
                             f"LoRA cross-encoder")
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in state:
                    param.copy_(state[name])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ scoring
    def score(self, queries: Sequence[str], passages: Sequence[Sequence[str]],
              tasks: Sequence[str | None] | None = None) -> torch.Tensor:
        """Differentiable scores [B, n] of passages[i][j] for queries[i]; rows must be equally long."""
        n = group_size(queries, passages)
        if n == 0:
            return torch.zeros(len(queries), 0, device=self.device)
        batch = self._encode(queries, passages, tasks, padding=True, return_tensors="pt")
        return self._logits(batch).view(len(queries), n)

    def rerank_many(self, queries: Sequence[str], passages: Sequence[Sequence[str]], batch_size: int = 32,
                    tasks: Sequence[str | None] | None = None) -> list[list[float]]:
        """Scores of passages[i] for queries[i]: every query's pairs together, in length-sorted batches."""
        check_rows(queries, passages)
        rows = [list(row) for row in passages]
        flat: list[float] = []
        if any(rows):
            kept = [(q, row, t) for q, row, t in zip(queries, rows, tasks or [None] * len(rows)) if row]
            features = self._encode(*zip(*kept))
            lengths = [len(ids) for ids in features["input_ids"]]
            order = sorted(range(len(lengths)), key=lambda i: lengths[i])
            flat = [0.0] * len(lengths)
            was_training = self.training
            self.eval()
            try:
                with torch.inference_mode(), self._autocast():
                    for start in range(0, len(order), batch_size):
                        chunk = order[start : start + batch_size]
                        batch = self.tokenizer.pad({key: [values[i] for i in chunk] for key, values in features.items()},
                                                   return_tensors="pt")
                        for i, s in zip(chunk, self._logits(batch).float().tolist()):
                            flat[i] = s
            finally:
                self.train(was_training)
        return split_rows(flat, rows)

    # ------------------------------------------------------------------ internals
    def _logits(self, batch: BatchEncoding | dict) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.model(**batch).logits[:, 0]

    def _cut(self, texts: Sequence[str], limits: Sequence[int],
             tasks: Sequence[str | None] | None = None) -> tuple[list[str], list[int], bool]:
        """Each text cut to limits[i] tokens at token boundaries of the original text: queries
        (those given `tasks`) by the task-aware `kilt.tasks.query_window`, passages at their
        start; returns the texts, their token counts and whether any was cut."""
        whole = tasks is not None  # a query's window may lie anywhere in it
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True) if whole \
            else self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max(limits) + 1,
                                return_offsets_mapping=True)
        out, counts, cut = [], [], False
        for text, offsets, limit, task in zip(texts, enc["offset_mapping"], limits, tasks or [None] * len(texts)):
            if len(offsets) > limit:
                first, stop = query_window(text, offsets, limit, task, self.config.query_keep) if whole \
                    else (0, limit)
                text, cut = text[offsets[first][0]: offsets[stop - 1][1]], True
            out.append(text)
            counts.append(min(len(offsets), limit))
        return out, counts, cut

    def _encode(self, queries: Sequence[str], passages: Sequence[Sequence[str]],
                tasks: Sequence[str | None] | None = None, **kwargs: Any) -> BatchEncoding:
        """Pairs (queries[i], passages[i][j]) in row order: the query (of tasks[i]) is cut to
        `max_query_length` tokens first, then the passage to the rest of `max_length` (passage
        cuts warned about once)."""
        check_queries(queries)
        capped, counts, _ = self._cut(queries, [self.config.max_query_length] * len(queries),
                                      list(tasks) if tasks is not None else [None] * len(queries))
        room = self.config.max_length - self.tokenizer.num_special_tokens_to_add(pair=True)
        pair_queries = [q for q, row in zip(capped, passages) for _ in row]
        limits = [room - count for count, row in zip(counts, passages) for _ in row]
        pair_passages, _, cut = self._cut([p for row in passages for p in row], limits)
        if cut and not self._warned_truncation:
            self._warned_truncation = True
            warnings.warn(f"passages longer than max_length={self.config.max_length} tokens "
                          f"(query included) are truncated", stacklevel=3)
        # re-tokenising a text cut at a token boundary gives the same tokens; longest_first only
        # guards against a tokenizer for which it does not, and never fails as only_second can
        return self.tokenizer(pair_queries, pair_passages, truncation="longest_first",
                              max_length=self.config.max_length, **kwargs)

    def _autocast(self):
        return autocast(self.device, self.config.inference_dtype)


@contextmanager
def _quiet_head_report(quiet: bool) -> Iterator[None]:
    """Silence transformers' "newly initialized head" report while a LoRA cross-encoder's start
    model loads: its head comes from the saved adapters right after."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
