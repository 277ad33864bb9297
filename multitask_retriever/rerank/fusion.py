"""Score fusion: the final order of a query's reranked top-k combines the retriever's score
with the reranker's, by interpolation of per-query normalised scores or by reciprocal rank
fusion, with the interpolation weight fitted on held-out training queries.

Everything here is plain data in, plain data out: lists of scores in retrieval order, one
list per query; no model, retriever or pipeline is involved.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from kilt.eval import GoldOutput, r_precision
from kilt.hits import Hit, top_pages
from safeio.atomic import write_json
from safeio.text import read_json_object

METHODS = ("none", "interpolate", "rrf")
FUSION_NAME = "fusion.json"
DEFAULT_GRID = tuple(i / 10 for i in range(11))

T = TypeVar("T")


# ---------------------------------------------------------------------------- arithmetic
def minmax(scores: Sequence[float]) -> list[float]:
    """Scores mapped linearly onto [0, 1] over one query's list; a list of equal scores maps to 0.

    Min-max rather than z-scores: it needs no distribution assumption over a short top-k, keeps
    each list's order and spacing, and puts a cosine and a log-likelihood on one [0, 1] scale.
    """
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [0.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def interpolate(retriever_scores: Sequence[float], reranker_scores: Sequence[float], alpha: float) -> list[float]:
    """alpha * minmax(reranker) + (1 - alpha) * minmax(retriever), per candidate: alpha 0 is
    the retriever's order, alpha 1 the reranker's."""
    _same_length(retriever_scores, reranker_scores)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return [alpha * b + (1.0 - alpha) * a
            for a, b in zip(minmax(retriever_scores), minmax(reranker_scores))]


def ranks(scores: Sequence[float]) -> list[int]:
    """1-based rank of each score, highest first; equal scores rank in input order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    out = [0] * len(scores)
    for rank, i in enumerate(order, start=1):
        out[i] = rank
    return out


def rrf(retriever_ranks: Sequence[int], reranker_ranks: Sequence[int], k: int = 60) -> list[float]:
    """Reciprocal rank fusion (Cormack et al. 2009): 1/(k + r_retriever) + 1/(k + r_reranker),
    with 1-based ranks."""
    _same_length(retriever_ranks, reranker_ranks)
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    if any(r < 1 for r in (*retriever_ranks, *reranker_ranks)):
        raise ValueError("ranks are 1-based")
    return [1.0 / (k + a) + 1.0 / (k + b) for a, b in zip(retriever_ranks, reranker_ranks)]


def fused_order(fused: Sequence[float]) -> list[int]:
    """Candidate indices by fused score, highest first; ties keep the input (retrieval) order."""
    return sorted(range(len(fused)), key=lambda i: -fused[i])


def _same_length(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} retriever values but {len(b)} reranker values")


# ---------------------------------------------------------------------------- configuration
@dataclass
class Fusion:
    """How a query's retriever and reranker scores become its final order; saved as
    fusion.json in a reranker's folder."""

    method: str = field(default="none", metadata={
        "help": "none (the reranker's order) | interpolate (normalised scores weighted by alpha) | "
                "rrf (reciprocal rank fusion)"})
    alpha: float = field(default=0.5, metadata={
        "help": "interpolate: the reranker's weight (0: the retriever's order, 1: the reranker's)"})
    task_alphas: dict[str, float] = field(default_factory=dict, metadata={
        "help": "interpolate: per-task weights that replace alpha for their task"})
    rrf_k: int = field(default=60, metadata={"help": "rrf: the constant k of 1/(k + rank)"})
    fit: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "how fit_alpha chose the weights (metric, queries, value per alpha); empty when set by hand"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"fusion method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name, value in [("alpha", self.alpha), *((f"task_alphas[{t}]", a) for t, a in self.task_alphas.items())]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fusion {name} must be in [0, 1], got {value}")
        if self.rrf_k < 0:
            raise ValueError(f"fusion rrf_k must be non-negative, got {self.rrf_k}")

    def alpha_for(self, task: str | None) -> float:
        """The task's own fitted alpha where there is one, else the global alpha."""
        return self.task_alphas.get(task, self.alpha) if task is not None else self.alpha

    def scores(self, retriever_scores: Sequence[float], reranker_scores: Sequence[float],
               task: str | None = None) -> list[float]:
        """Fused scores of one query's candidates (given in retrieval order)."""
        _same_length(retriever_scores, reranker_scores)
        if self.method == "interpolate":
            return interpolate(retriever_scores, reranker_scores, self.alpha_for(task))
        if self.method == "rrf":
            return rrf(ranks(retriever_scores), ranks(reranker_scores), self.rrf_k)
        return [float(s) for s in reranker_scores]

    def order(self, retriever_scores: Sequence[float], reranker_scores: Sequence[float],
              task: str | None = None) -> list[int]:
        """Candidate indices in their final order; ties keep retrieval order."""
        return fused_order(self.scores(retriever_scores, reranker_scores, task))

    def save(self, folder: str | Path) -> Path:
        """Write fusion.json into `folder` (atomically); returns its path."""
        path = Path(folder) / FUSION_NAME
        write_json(path, dataclasses.asdict(self))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "Fusion":
        """Read the fusion.json that `save` wrote into `folder`."""
        path = Path(folder) / FUSION_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {FUSION_NAME}")
        data = read_json_object(path)
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) - known:
            raise ValueError(f"{path}: unknown fusion fields {sorted(set(data) - known)}; "
                             f"known: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------- fitting
@dataclass
class FusionQuery:
    """One validation query as the fit sees it: its candidates' scores in retrieval order,
    which candidates are gold, and their pages (None: every candidate its own page)."""

    task: str
    retriever_scores: list[float]
    reranker_scores: list[float]
    gold: list[bool]
    page_ids: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.retriever_scores)
        lengths = [len(self.reranker_scores), len(self.gold), *([] if self.page_ids is None else [len(self.page_ids)])]
        if any(m != n for m in lengths):
            raise ValueError(f"query of task {self.task}: candidate lists of unequal lengths {[n, *lengths]}")

    def pages(self) -> list[str]:
        return self.page_ids if self.page_ids is not None else [str(i) for i in range(len(self.gold))]

    def hits(self) -> list[Hit]:
        """The candidates as hits on their pages, in retrieval order (their text is not needed)."""
        return [Hit(i, score, page, "", "")
                for i, (score, page) in enumerate(zip(self.retriever_scores, self.pages()))]


def _page_ranking(query: FusionQuery, order: Sequence[int]) -> tuple[list[str], list[str]]:
    """The distinct pages in fused order, and the gold pages among the candidates."""
    hits = query.hits()
    return top_pages(hits[i] for i in order), top_pages(h for h, gold in zip(hits, query.gold) if gold)


def _r_precision(ranked: list[str], gold: list[str]) -> float:
    return r_precision(ranked, [GoldOutput.of(gold)])


def _mrr(ranked: list[str], gold: list[str]) -> float:
    return next((1.0 / rank for rank, page in enumerate(ranked, start=1) if page in gold), 0.0)


#: page-level metrics of one query, from (ranked pages, gold pages among the candidates)
METRICS: dict[str, Callable[[list[str], list[str]], float]] = {"r-precision": _r_precision, "mrr": _mrr}


def evaluate(queries: Sequence[FusionQuery], fusion: Fusion, metric: str = "r-precision") -> float:
    """Mean `metric` of the queries' pages in `fusion`'s order (R: the gold pages among the candidates)."""
    if metric not in METRICS:
        raise ValueError(f"unknown fusion metric {metric!r}; known: {', '.join(METRICS)}")
    if not queries:
        return 0.0
    total = 0.0
    for q in queries:
        total += METRICS[metric](*_page_ranking(q, fusion.order(q.retriever_scores, q.reranker_scores, q.task)))
    return total / len(queries)


def _best_alpha(queries: Sequence[FusionQuery], grid: Sequence[float], metric: str) -> dict[str, Any]:
    values = {alpha: evaluate(queries, Fusion("interpolate", alpha), metric) for alpha in grid}
    best = max(grid, key=lambda alpha: values[alpha])  # the first in grid order among equals
    return {"alpha": best, "queries": len(queries), "value": values[best],
            "rrf": evaluate(queries, Fusion("rrf"), metric),
            "values": {str(alpha): value for alpha, value in values.items()}}


def fit_alpha(queries: Sequence[FusionQuery], grid: Sequence[float] = DEFAULT_GRID, *,
              metric: str = "r-precision", per_task: bool = False, min_task_queries: int = 50) -> Fusion:
    """An interpolating `Fusion` whose alpha maximises the mean `metric` over `queries`, which
    must be VALIDATION queries held out from the reranker's training (see split_validation).

    Queries with no gold candidate cannot change with alpha and are left out. With
    `per_task`, each task with at least `min_task_queries` such queries gets its own alpha;
    the others fall back to the global one. Among equally good alphas the first in `grid`
    wins. The choice, its value, rrf's value and the whole curve are kept in `Fusion.fit`.
    """
    if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
        raise ValueError(f"the alpha grid must be non-empty values in [0, 1], got {list(grid)}")
    if metric not in METRICS:
        raise ValueError(f"unknown fusion metric {metric!r}; known: {', '.join(METRICS)}")
    usable = [q for q in queries if any(q.gold)]
    if not usable:
        raise ValueError(f"none of the {len(queries)} validation queries has a gold candidate to fit alpha on")
    overall = _best_alpha(usable, grid, metric)
    fit: dict[str, Any] = {"metric": metric, "grid": list(grid), "min_task_queries": min_task_queries,
                           "global": overall, "tasks": {}}
    task_alphas: dict[str, float] = {}
    if per_task:
        for task in sorted({q.task for q in usable}):
            own = [q for q in usable if q.task == task]
            if len(own) >= min_task_queries:
                fit["tasks"][task] = _best_alpha(own, grid, metric)
                task_alphas[task] = fit["tasks"][task]["alpha"]
            else:
                fit["tasks"][task] = {"alpha": overall["alpha"], "queries": len(own), "fallback": True}
    return Fusion("interpolate", overall["alpha"], task_alphas, fit=fit)


# ---------------------------------------------------------------------------- validation split
def _example_id(example: Any) -> str:
    return str(example.qid if hasattr(example, "qid") else example.id)


def split_validation(examples: Sequence[T], fraction: float, seed: int = 0,
                     key: Callable[[T], str] = _example_id, minimum: int = 0) -> tuple[list[T], list[T]]:
    """(train, validation) parts of training `examples`, each in input order.

    The validation part holds round(fraction * distinct ids) ids, raised to `minimum` but
    never above half of them (so a small task still gets enough to fit its own weight on):
    those whose hash of (seed, id) is smallest, so the split depends only on the ids and the
    seed, never on the input order; examples sharing an id stay together. `key` gives an
    example's id (default: `qid`, else `id`, as RerankExample and KiltExample have).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the validation fraction must be in [0, 1], got {fraction}")
    if minimum < 0:
        raise ValueError(f"the validation minimum must be >= 0, got {minimum}")
    ids = list(dict.fromkeys(key(e) for e in examples))

    def digest(qid: str) -> bytes:
        return hashlib.sha256(f"{seed}\0{qid}".encode()).digest()

    size = max(round(fraction * len(ids)), min(minimum, len(ids) // 2)) if fraction else 0
    held = set(sorted(ids, key=digest)[:size])
    train = [e for e in examples if key(e) not in held]
    validation = [e for e in examples if key(e) in held]
    return train, validation
