"""Cross-encoder reranker: a transformer reads "[CLS] query [SEP] passage [SEP]" and a
one-logit head scores the pair (the point-wise "mono" encoder of Pezzuti et al., ECIR 2025).

The model is `AutoModelForSequenceClassification` with one label: a trained cross-encoder
(e.g. an MS MARCO one) keeps its head, and a plain encoder folder (all-MiniLM-L6-v2, BERT,
ELECTRA) gets a freshly initialised head, drawn from torch's global RNG.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BatchEncoding

from ..models import own_memory
from .base import Reranker, group_size
from kilt.io import atomic_directory

CONFIG_NAME = "mtr_reranker.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class CrossEncoderConfig:
    """How the cross-encoder reads pairs; saved in mtr_reranker.json beside the weights."""

    model_name_or_path: str = field(default="", metadata={"help": "Hugging Face name or local folder"})
    max_length: int = field(default=256, metadata={"help": "pair tokens, special tokens included"})
    max_query_length: int = field(default=128, metadata={
        "help": "query tokens kept; longer queries are cut so the passage always has room"})
    freeze_position_embeddings: bool = field(default=True, metadata={
        "help": "keep position embeddings fixed in training, as Pezzuti et al. do"})
    inference_dtype: str = field(default="auto", metadata={
        "help": "autocast dtype for rerank() on GPU: auto (bfloat16 where supported, else float16) | "
                + " | ".join(DTYPES)})

    def __post_init__(self) -> None:
        if self.max_query_length >= self.max_length - 3:
            raise ValueError(f"max_query_length ({self.max_query_length}) must leave room for a passage "
                             f"within max_length ({self.max_length})")
        if self.inference_dtype != "auto" and self.inference_dtype not in DTYPES:
            raise ValueError(f"inference_dtype must be auto or one of {', '.join(DTYPES)}, "
                             f"got {self.inference_dtype!r}")


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

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> "CrossEncoderReranker":
        """Load a folder we saved, a trained HF cross-encoder, or a plain encoder (new head)."""
        path = str(path)
        known = {f.name for f in dataclasses.fields(CrossEncoderConfig)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown CrossEncoderConfig fields {sorted(unknown)}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        saved = Path(path) / CONFIG_NAME
        if saved.is_file():
            data = json.loads(saved.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("method") != cls.method:
                raise ValueError(f"{saved}: not a {cls.method} checkpoint (method: {data.get('method')!r})"
                                 if isinstance(data, dict) else f"{saved}: expected a JSON object")
            values = data.get("config", {})
            if set(values) - known:
                raise ValueError(f"{saved}: unknown config fields {sorted(set(values) - known)}")
        values.update(overrides)
        values.setdefault("model_name_or_path", path)
        config = CrossEncoderConfig(**values)
        model = own_memory(AutoModelForSequenceClassification.from_pretrained(path, num_labels=1))
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, config)

    def save_pretrained(self, path: str | Path) -> None:
        """Write model, tokenizer and mtr_reranker.json into `path`, replacing it only once complete."""
        with atomic_directory(path) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            meta = {"method": self.method, "config": dataclasses.asdict(self.config)}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ scoring
    def score(self, queries: Sequence[str], passages: Sequence[Sequence[str]]) -> torch.Tensor:
        """Differentiable scores [B, n] of passages[i][j] for queries[i]; rows must be equally long."""
        n = group_size(queries, passages)
        if n == 0:
            return torch.zeros(len(queries), 0, device=self.device)
        batch = self._encode(queries, passages, padding=True, return_tensors="pt")
        return self._logits(batch).view(len(queries), n)

    def rerank(self, query: str, passages: Sequence[str], batch_size: int = 32) -> list[float]:
        """Scores of `passages` for `query` in input order, computed in length-sorted batches."""
        if not query or not query.strip():
            raise ValueError("empty query")
        if len(passages) == 0:
            return []
        features = self._encode([query], [list(passages)])
        lengths = [len(ids) for ids in features["input_ids"]]
        order = sorted(range(len(passages)), key=lambda i: lengths[i])
        scores = [0.0] * len(passages)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), self._autocast():
                for start in range(0, len(order), batch_size):
                    chunk = order[start : start + batch_size]
                    batch = self.tokenizer.pad(
                        {key: [values[i] for i in chunk] for key, values in features.items()},
                        return_tensors="pt",
                    )
                    for i, s in zip(chunk, self._logits(batch).float().tolist()):
                        scores[i] = s
        finally:
            self.train(was_training)
        return scores

    # ------------------------------------------------------------------ internals
    def _logits(self, batch: BatchEncoding | dict) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.model(**batch).logits[:, 0]

    def _cut(self, texts: Sequence[str], limits: Sequence[int]) -> tuple[list[str], list[int], bool]:
        """Each text cut after its first limits[i] tokens, at a token boundary of the original
        text; returns the texts, their token counts and whether any was cut."""
        enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                             max_length=max(limits) + 1, return_offsets_mapping=True)
        out, counts, cut = [], [], False
        for text, offsets, limit in zip(texts, enc["offset_mapping"], limits):
            if len(offsets) > limit:
                text, cut = text[: offsets[limit - 1][1]], True
            out.append(text)
            counts.append(min(len(offsets), limit))
        return out, counts, cut

    def _encode(self, queries: Sequence[str], passages: Sequence[Sequence[str]], **kwargs: Any) -> BatchEncoding:
        """Pairs (queries[i], passages[i][j]) in row order: the query is cut to `max_query_length`
        tokens first, then the passage to the rest of `max_length` (passage cuts warned about once)."""
        if any(not q or not q.strip() for q in queries):
            raise ValueError("empty query")
        capped, counts, _ = self._cut(queries, [self.config.max_query_length] * len(queries))
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
        device = self.device
        if device.type != "cuda":
            return nullcontext()
        name = self.config.inference_dtype
        if name == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = DTYPES[name]
        return nullcontext() if dtype == torch.float32 else torch.autocast("cuda", dtype=dtype)
