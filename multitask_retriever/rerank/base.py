"""The one interface every reranker implements, so the Pipeline and the training loop
treat Q-PEFT, ID-SPAM, PEFT baselines and cross-encoders alike."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from kilt.hits import Hit


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


class Reranker(nn.Module, ABC):
    """Scores (query, passage) pairs; higher is more relevant."""

    #: registry name, e.g. "qpeft-a" or "cross-encoder"; saved with the checkpoint
    method: str = ""

    @abstractmethod
    def score(self, queries: Sequence[str], passages: Sequence[Sequence[str]]) -> torch.Tensor:
        """Differentiable scores of shape [len(queries), n]: row i scores passages[i].

        Every row has the same number n of passages (training groups); used by the loop.
        """

    def rerank(
        self, query: str, passages: Sequence[str], batch_size: int = 32
    ) -> list[float]:
        """Scores of `passages` for `query`, in input order (no gradient)."""
        if not query or not query.strip():
            raise ValueError("empty query")
        if len(passages) == 0:
            return []
        out: list[float] = []
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            for i in range(0, len(passages), batch_size):
                chunk = list(passages[i : i + batch_size])
                out.extend(self.score([query], [chunk])[0].float().tolist())
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
    def from_pretrained(cls, path: str | Path, **kwargs) -> "Reranker":
        """Load what `save_pretrained` wrote."""
