"""The one interface every reranker implements, so the Pipeline and the training loop
treat Q-PEFT, ID-SPAM, PEFT baselines and cross-encoders alike, and the metadata file
(mtr_reranker.json) every saved reranker carries."""
from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Sequence, TypeVar

import torch
from torch import nn

from kilt.hits import Hit
from kilt.tasks import check_queries
from safeio.text import read_json_object


def default_passage_text(hit: Hit) -> str:
    """What a reranker reads of a passage: its page title, then its text."""
    return f"{hit.title}\n{hit.text}" if hit.title else hit.text


def group_size(queries: Sequence[str], passages: Sequence[Sequence[str]]) -> int:
    """The common row length n of a `score` call; unequal rows or counts are ValueErrors."""
    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries but {len(passages)} passage lists")
    sizes = {len(row) for row in passages}
    if len(sizes) > 1:
        raise ValueError(f"every query needs the same number of passages, got sizes {sorted(sizes)}")
    return sizes.pop() if sizes else 0


CONFIG_NAME = "mtr_reranker.json"
C = TypeVar("C")


def read_reranker_meta(path: str | Path, method: str | None = None) -> dict[str, Any]:
    """mtr_reranker.json of a saved reranker folder, checked to name a method (`method` when given)."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME} (not a saved reranker)")
    meta = read_json_object(file)
    if not isinstance(meta.get("method"), str):
        raise ValueError(f"{file}: expected a JSON object with a \"method\"")
    if method is not None and meta["method"] != method:
        raise ValueError(f"{file}: not a {method} checkpoint (method: {meta['method']!r})")
    return meta


def write_reranker_meta(folder: Path, method: str, config: Any, **extra: Any) -> None:
    """mtr_reranker.json: the method, its config dataclass and `extra` entries."""
    meta = {"method": method, "config": dataclasses.asdict(config), **extra}
    (Path(folder) / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def make_config(config_class: type[C], values: dict[str, Any]) -> C:
    """`config_class(**values)`; unknown names are a ValueError listing the known fields."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} fields {sorted(unknown)}; known: {', '.join(sorted(known))}")
    return config_class(**values)


def check_rows(queries: Sequence[str], passages: Sequence[Sequence[str]]) -> None:
    """A rerank call's queries are non-empty strs (`kilt.tasks.check_queries`) and each has its
    own passage list."""
    check_queries(queries)
    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries but {len(passages)} passage lists")


def split_rows(flat: Sequence[float], rows: Sequence[Sequence[Any]]) -> list[list[float]]:
    """`flat` (the scores of every row's items, in order) cut back into one list per row."""
    out, start = [], 0
    for row in rows:
        out.append(list(flat[start : start + len(row)]))
        start += len(row)
    return out


class Reranker(nn.Module, ABC):
    """Scores (query, passage) pairs; higher is more relevant."""

    #: registry name, e.g. "qpeft-a" or "cross-encoder"; saved with the checkpoint
    method: ClassVar[str] = ""
    #: the rerank loss (rerank/losses.py LOSSES) a contrastive training stage uses
    training_loss: ClassVar[str] = "lce"

    @abstractmethod
    def score(self, queries: Sequence[str], passages: Sequence[Sequence[str]],
              tasks: Sequence[str | None] | None = None) -> torch.Tensor:
        """Differentiable scores of shape [len(queries), n]: row i scores passages[i].

        Every row has the same number n of passages (training groups); used by the loop.
        tasks[i] is query i's KILT task: rerankers that prompt by task use it, others ignore it.
        """

    def rerank(self, query: str, passages: Sequence[str], batch_size: int = 32,
               task: str | None = None) -> list[float]:
        """Scores of `passages` for `query` (of KILT task `task`, if known), in input order (no gradient)."""
        return self.rerank_many([query], [passages], batch_size=batch_size, tasks=[task])[0]

    def rerank_many(self, queries: Sequence[str], passages: Sequence[Sequence[str]], batch_size: int = 32,
                    tasks: Sequence[str | None] | None = None) -> list[list[float]]:
        """Scores of passages[i] for queries[i] (of task tasks[i]), in input order (no gradient);
        rows may differ in length. Subclasses batch the pairs of many queries together."""
        check_rows(queries, passages)
        out: list[list[float]] = []
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                for query, row, task in zip(queries, passages, tasks or [None] * len(queries)):
                    scores: list[float] = []
                    for i in range(0, len(row), batch_size):
                        chunk = [list(row[i : i + batch_size])]
                        scores.extend(self.score([query], chunk, tasks=[task])[0].float().tolist())
                    out.append(scores)
        finally:
            self.train(was_training)
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    @abstractmethod
    def save_pretrained(self, path: str | Path) -> None:
        """Write only what was trained plus what is needed to rebuild the rest."""

    @classmethod
    @abstractmethod
    def create(cls, model: str = "", **options: Any) -> "Reranker":
        """A fresh reranker over the start model `model` (empty: the packaged default) with
        config fields `options`."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "Reranker":
        """Load what `save_pretrained` wrote."""
