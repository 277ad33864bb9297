"""Reranker training examples: a positive and hard negatives per query from first-stage
candidates (`examples_from_search` searches for them: what `mtr train-reranker` and
`mtr benchmark-quality` train on), and teacher scores read from, attached to and written to
teacher files."""
from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from kilt.hits import Hit, SearchBackend
from kilt.io import KiltExample, KiltFormatError, iter_jsonl
from kilt.passages import Passage, PassageStore
from safeio.atomic import atomic_write

from .base import Reranker, default_passage_text

log = logging.getLogger("mtr.rerank.examples")


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
    task: str | None = None

    def __post_init__(self) -> None:
        n = 1 + len(self.candidates)
        if self.teacher_scores is not None and len(self.teacher_scores) != n:
            raise ValueError(f"query {self.qid}: {len(self.teacher_scores)} teacher scores for {n} passages")
        if self.passage_ids is not None and len(self.passage_ids) != n:
            raise ValueError(f"query {self.qid}: {len(self.passage_ids)} passage ids for {n} passages")

    @property
    def passages(self) -> list[str]:
        return [self.positive, *self.candidates]


def examples_from_candidates(
    task_examples: Sequence[KiltExample],
    hits_per_query: Sequence[Sequence[Hit | int]],
    store: PassageStore,
    *,
    num_negatives: int | None = None,
    passage_text: Callable[[Hit], str] = default_passage_text,
    task: str | None = None,
) -> list[RerankExample]:
    """Training examples from first-stage candidates (hits or passage ids, best first).

    The positive is a passage of a gold page, preferably the one holding a provenance
    paragraph (looked up on any retrieved gold page); the negatives are the candidates on
    no gold page, in rank order. Queries with no gold page among their candidates are
    skipped: the reranker only ever sees retrieved candidates.
    """
    if len(task_examples) != len(hits_per_query):
        raise ValueError(f"{len(task_examples)} examples but {len(hits_per_query)} candidate lists")

    def text(passage: Passage) -> str:
        return passage_text(Hit(passage.id, 0.0, passage.wikipedia_id, passage.title, passage.text))

    out: list[RerankExample] = []
    skipped = 0
    gold_ranges: dict[str, range] | None = None  # passage ids of every gold page, read on first need
    for example, hits in zip(task_examples, hits_per_query):
        gold = set(example.gold_pages)
        pids = list(dict.fromkeys(h.passage_id if isinstance(h, Hit) else int(h) for h in hits))
        passages = store.get_many(pids)
        on_gold = [p for p in passages if p.wikipedia_id in gold]
        if not on_gold:
            skipped += 1
            continue
        provenance = [p for group in example.evidence for p in group]
        positive = next((p for p in on_gold if any(p.holds(prov) for prov in provenance)), None)
        if positive is None and any(p.start_paragraph_id is not None for p in provenance):
            if gold_ranges is None:
                gold_ranges = store.page_ranges({page for e in task_examples for page in e.gold_pages})
            pages = dict.fromkeys(p.wikipedia_id for p in on_gold)
            positive = next((found for page in pages
                             if (found := store.provenance_passage(provenance, gold_ranges[page])) is not None), None)
        if positive is None:
            positive = on_gold[0]
        negatives = [p for p in passages if p.wikipedia_id not in gold][:num_negatives]
        out.append(RerankExample(
            qid=example.id, query=example.input, positive=text(positive),
            candidates=[text(p) for p in negatives], passage_ids=[str(p.id) for p in (positive, *negatives)],
            task=task,
        ))
    if skipped:
        log.info("skipped %d of %d queries with no gold page among their candidates", skipped, len(task_examples))
    return out


def examples_from_search(
    queries: Mapping[str, Sequence[KiltExample]],
    search: SearchBackend,
    store: PassageStore,
    depth: int,
    *,
    num_negatives: int | None = None,
    batch_size: int = 256,
) -> list[RerankExample]:
    """Training examples of each task's queries (task -> queries, in order) from the first
    stage's top `depth` candidates, searched `batch_size` queries at a time with the task's
    prompt; see `examples_from_candidates` for the positive, the negatives and skipped queries."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    out: list[RerankExample] = []
    for task, task_queries in queries.items():
        hits: list = []
        for i in range(0, len(task_queries), batch_size):
            hits += search.search([e.input for e in task_queries[i : i + batch_size]], task=task, k=depth)
        out += examples_from_candidates(task_queries, hits, store, num_negatives=num_negatives, task=task)
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
                       batch_size: int = 32, progress: bool = True,
                       combine: Callable[[RerankExample, list[float]], list[float]] | None = None) -> int:
    """Score every example's passages with `reranker` and write `{"qid", "pid", "score"}`
    lines (atomically), so any of our rerankers can teach another; returns the line count.
    `combine` turns an example's reranker scores into the teacher's (e.g. fused with the retriever's)."""
    lines = 0
    with atomic_write(path) as f:
        for example in tqdm(examples, desc="teacher", unit="query", disable=not progress):
            if example.passage_ids is None:
                raise ValueError(f"query {example.qid}: writing teacher scores needs passage ids")
            scores = reranker.rerank(example.query, example.passages, batch_size=batch_size, task=example.task)
            if combine is not None:
                scores = combine(example, list(scores))
            for pid, score in zip(example.passage_ids, scores):
                f.write(json.dumps({"qid": example.qid, "pid": pid, "score": score}) + "\n")
                lines += 1
    return lines
