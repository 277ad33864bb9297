"""Scoring a system on the dev files (page-level KILT metrics per query and task) and paired
significance tests between systems."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from kilt.eval import per_query
from kilt.stats import compare, compare_macro

from .systems import RERANKERS

METRICS = ("Rprec", "recall@5", "success_rate@5", "ndcg@10")  # per task; ndcg@10 is not an official KILT metric
AVERAGED = ("Rprec", "recall@5", "ndcg@10")


@dataclass
class SystemResult:
    per_task: dict[str, dict[str, float]]
    per_query: dict[str, dict[str, dict[str, float]]]  # task -> qid -> metric -> value
    seconds: float
    fusion: dict[str, Any] | None = None  # how the final order combined both scores, when it did
    models: dict[str, str] = field(default_factory=dict)  # the files it read (`SystemBuilder.models`)

    def avg(self) -> dict[str, float]:
        tasks = list(self.per_task)
        return {m: sum(self.per_task[t][m] for t in tasks) / len(tasks) for m in AVERAGED} if tasks else {}


def score_task(gold: Path, predictions: Path, subset: bool) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean of each metric with the query count `n`, per-query metrics) of one prediction
    file; `subset` scores only the queries it answers."""
    scores = per_query(gold, predictions, ks=(1, 5, 10), subset=subset, ndcg_ks=(10,))
    n = len(scores)
    means: dict[str, float] = {m: sum(s[m] for s in scores.values()) / n for m in METRICS}
    means["n"] = n
    return means, scores


def compared_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The (a, b) pairs worth a test: zero-shot against BM25, each fine-tuned retriever against
    zero-shot, taco against naive, every reranked system (raw and fused) against its retriever,
    each fused system against its raw order, each cross-encoder schedule against single-stage
    contrastive (the paper's question), and trained LLM rerankers against untrained query likelihood."""
    pairs = []
    if "zero-shot" in names and "bm25" in names:
        pairs.append(("zero-shot", "bm25"))
    if "zero-shot" in names:
        pairs += [(n, "zero-shot") for n in names if not {"+", "@"} & set(n) and n not in ("bm25", "zero-shot")]
    if "taco" in names and "naive" in names:
        pairs.append(("taco", "naive"))
    pairs += [(n, n.split("+", 1)[0]) for n in names if "+" in n and n.split("+", 1)[0] in names]
    pairs += [(n, n.split("@", 1)[0]) for n in names if "@" in n and n.split("@", 1)[0] in names]
    for n in names:
        retriever, _, reranker = n.partition("+")
        plain = f"{retriever}+cross-encoder"
        if reranker.startswith("cross-encoder.") and plain in names and n != plain:
            pairs.append((n, plain))
        upr = f"{retriever}+zero-shot"
        if reranker in RERANKERS and reranker not in ("cross-encoder", "zero-shot") and upr in names:
            pairs.append((n, upr))
    return pairs


def significance(results: dict[str, SystemResult], tasks: Sequence[str], seed: int) -> list[dict[str, Any]]:
    """Paired tests of R-precision over the queries both systems answered: per task, over all
    queries pooled ("all") and on the mean over tasks ("macro", the tables' avg)."""
    rows = []
    for a, b in compared_pairs(list(results)):
        ra, rb = results[a], results[b]
        per_a: list[list[float]] = []
        per_b: list[list[float]] = []
        for task in tasks:
            ids = [q for q in ra.per_query[task] if q in rb.per_query[task]]
            per_a.append([ra.per_query[task][q]["Rprec"] for q in ids])
            per_b.append([rb.per_query[task][q]["Rprec"] for q in ids])
            rows.append({"a": a, "b": b, "task": task, "metric": "Rprec",
                         **asdict(compare(per_a[-1], per_b[-1], seed=seed))})
        pooled = compare([x for xs in per_a for x in xs], [x for xs in per_b for x in xs], seed=seed)
        rows.append({"a": a, "b": b, "task": "all", "metric": "Rprec", **asdict(pooled)})
        rows.append({"a": a, "b": b, "task": "macro", "metric": "Rprec",
                     **asdict(compare_macro(per_a, per_b, seed=seed))})
    return rows
