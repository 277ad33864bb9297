"""Reranker scores kept across the systems of an experiment: `<r>+<x>`, `<r>+<x>@fused` and
`<r>+<x>@rrf` rerank the same candidates of the same dev queries, so each pair is scored once."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from safeio.atomic import write_json
from safeio.text import read_json_object


class KeptScores:
    """`reranker.rerank_many` that looks every (task, query, passage) up in the score file `path`
    first and asks the reranker only for the rows it lacks; `save` writes the file atomically."""

    def __init__(self, reranker: Any, path: Path):
        self.reranker = reranker
        self.path = path
        self._scores: dict[str, float] = read_json_object(path) if path.is_file() else {}
        self._new = 0

    @staticmethod
    def _key(task: str | None, query: str, passage: str) -> str:
        return hashlib.sha256(json.dumps([task, query, passage]).encode()).hexdigest()[:32]

    def rerank_many(self, queries: Sequence[str], passages: Sequence[Sequence[str]], batch_size: int = 32,
                    tasks: Sequence[str | None] | None = None) -> list[list[float]]:
        tasks = list(tasks) if tasks is not None else [None] * len(queries)
        keys = [[self._key(t, q, p) for p in row] for q, row, t in zip(queries, passages, tasks)]
        missing = [i for i, row in enumerate(keys) if any(k not in self._scores for k in row)]
        if missing:
            fresh = self.reranker.rerank_many([queries[i] for i in missing], [passages[i] for i in missing],
                                              batch_size=batch_size, tasks=[tasks[i] for i in missing])
            for i, row in zip(missing, fresh):
                if len(row) != len(keys[i]):
                    raise RuntimeError(f"reranker returned {len(row)} scores for {len(keys[i])} passages")
                self._scores.update(zip(keys[i], row))
                self._new += len(row)
        return [[self._scores[k] for k in row] for row in keys]

    def save(self) -> None:
        """Write the scores, if any are new, atomically."""
        if self._new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, self._scores)
            self._new = 0
