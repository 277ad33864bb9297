"""KILT retrieval metrics, computed as the official scorer (facebookresearch/KILT,
``kilt/eval_retrieval.py``) computes them, without requiring ``input``.

Ids: each provenance entry's ``rank_keys`` values, each made a string (``str``) and stripped,
joined by ``+``. Entries lacking a rank key are left out, except from the evidence sets of
the rank, where such an entry counts by the keys it has (which usually keeps its set from
completing). Repeated ids are dropped (first kept) from each gold output and from the
prediction; outputs without ``provenance`` are ignored, and a prediction has exactly one
output with it.

Per query:

- ``Rprec``: for each gold output with R distinct ids, the share of them among the first R
  distinct predicted ids (0 when R = 0); the maximum over outputs.
- the rank: predicted ids are walked in order; each gold evidence set (the provenance of
  one output, duplicates removed) counts as one relevant item, placed where its last
  member is predicted; partial sets hold a place that moves with their latest member;
  other ids count as misses.
- ``precision@k`` = hits in the first k places / k; ``recall@k`` = hits / distinct
  evidence sets; ``success_rate@k`` = 1 if any hit in the first k places (k > 1 for both).

Averages are over gold queries; a query with no predicted id, or no evidence set, scores 0
on the rank metrics, as in the official scorer. Where the official scorer would silently
drop a prediction (an id not in the gold file), this one stops with an error.

Not in the official scorer, only on request (``per_query(..., ndcg_ks=(10,))``): ``ndcg@k``
over the same rank, each completed evidence set a relevant item of gain 1, the ideal
placing min(sets, k) of them first.

CLI: ``python -m kilt.eval GOLD GUESS [GOLD GUESS ...] --ks 1,5,10 [--rank-keys ...] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .io import KiltFormatError, iter_jsonl

DEFAULT_KS = (1, 5, 10)
DEFAULT_RANK_KEYS = ("wikipedia_id",)


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


@dataclass(frozen=True)
class GoldOutput:
    """One gold output's provenance as the scorer reads it: ``ids`` (entries with every rank
    key, distinct, in order) for R-precision and ``evidence`` (every entry) for the rank."""

    ids: tuple[str, ...]
    evidence: frozenset[str]

    @classmethod
    def of(cls, ids: Sequence[str]) -> "GoldOutput":
        """An output whose entries all have every rank key."""
        return cls(tuple(_unique(ids)), frozenset(ids))


# --------------------------------------------------------------------------- reading
def _provenance_ids(provenance: Any, rank_keys: Sequence[str], where: str) -> tuple[list[str], set[str]]:
    """(ids of the entries with every rank key, in order; the evidence set of all entries)."""
    if not isinstance(provenance, list):
        raise KiltFormatError(f"{where}: \"provenance\" must be a list")
    ids, evidence = [], set()
    for p in provenance:
        if not isinstance(p, dict):
            raise KiltFormatError(f"{where}: provenance entry must be an object")
        values = [str(p[key]).strip() for key in rank_keys if key in p]
        evidence.add("+".join(values))
        if len(values) == len(rank_keys):
            ids.append("+".join(values))
    return ids, evidence


def _outputs(record: dict, rank_keys: Sequence[str], where: str) -> list[tuple[list[str], set[str]]]:
    """The ids of each output that has a provenance list."""
    outputs = record.get("output")
    if not isinstance(outputs, list):
        raise KiltFormatError(f"{where}: record {record.get('id')} has no \"output\" list")
    if not all(isinstance(out, dict) for out in outputs):
        raise KiltFormatError(f"{where}: each output must be an object")
    return [_provenance_ids(out["provenance"], rank_keys, where) for out in outputs
            if out.get("provenance") is not None]


def _read(path: str | Path, rank_keys: Sequence[str], guess: bool) -> dict[str, tuple[int, Any]]:
    """{id: (line, predicted ids or gold outputs)} in file order; ids must be present and unique."""
    records: dict[str, tuple[int, Any]] = {}
    for lineno, record in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(record, dict):
            raise KiltFormatError(f"{where}: expected a JSON object")
        if record.get("id") in (None, ""):
            raise KiltFormatError(f"{where}: record has no id")
        qid = str(record["id"]).strip()
        if qid in records:
            raise KiltFormatError(f"{where}: duplicated id {qid} (first on line {records[qid][0]})")
        outputs = _outputs(record, rank_keys, where)
        if not guess:
            records[qid] = (lineno, [GoldOutput(tuple(_unique(ids)), frozenset(ev)) for ids, ev in outputs])
        elif len(outputs) != 1:
            raise KiltFormatError(f"{where}: prediction {qid} must have exactly one output with provenance, "
                                  f"got {len(outputs)}")
        else:
            records[qid] = (lineno, outputs[0][0])
    if not records:
        raise KiltFormatError(f"{path}: empty file (no records)")
    return records


# --------------------------------------------------------------------------- metrics
def rank(guess_ids: Sequence[str], gold: Sequence[GoldOutput]) -> tuple[list, int]:
    """The official evidence-set rank of the distinct predicted ids: True for a completed
    set, False for a miss, and a set marker for a partial set; and the number of distinct
    evidence sets (0 without a predicted id)."""
    guess_ids = _unique(guess_ids)
    if not guess_ids:
        return [], 0
    evidence_sets: list[frozenset[str]] = []
    for out in gold:
        if out.evidence not in evidence_sets:
            evidence_sets.append(out.evidence)
    remaining = [set(s) for s in evidence_sets]
    ranked: list = []
    for guess_id in guess_ids:
        found = False
        for idx, members in enumerate(remaining):
            if guess_id in members:
                found = True
                marker = ("evidence_set", idx)
                if marker in ranked:
                    ranked.remove(marker)
                members.remove(guess_id)
                ranked.append(True if not members else marker)
        if not found:
            ranked.append(False)
    return ranked, len(evidence_sets)


def r_precision(guess_ids: Sequence[str], gold: Sequence[GoldOutput]) -> float:
    """Max over gold outputs of |first R distinct guesses among the output's R distinct ids| / R."""
    guess_ids = _unique(guess_ids)
    best = 0.0
    for out in gold:
        r = len(out.ids)
        if r:
            best = max(best, sum(1 for g in guess_ids[:r] if g in out.ids) / r)
    return best


def metric_names(ks: Sequence[int]) -> list[str]:
    ks = sorted(set(ks))
    return (["Rprec"] + [f"precision@{k}" for k in ks]
            + [f"recall@{k}" for k in ks if k > 1] + [f"success_rate@{k}" for k in ks if k > 1])


def query_metrics(guess_ids: Sequence[str], gold: Sequence[GoldOutput],
                  ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """All metrics of one query."""
    result = dict.fromkeys(metric_names(ks), 0.0)
    result["Rprec"] = r_precision(guess_ids, gold)
    ranked, n_sets = rank(guess_ids, gold)
    if n_sets:
        for k in sorted(set(ks)):
            hits = ranked[:k].count(True)
            result[f"precision@{k}"] = hits / k
            if k > 1:
                result[f"recall@{k}"] = hits / n_sets
                result[f"success_rate@{k}"] = float(hits > 0)
    return result


def ndcg(guess_ids: Sequence[str], gold: Sequence[GoldOutput], k: int) -> float:
    """nDCG@k of the evidence-set rank (binary gains); 0 without a guess or an evidence set."""
    ranked, n_sets = rank(guess_ids, gold)
    if not n_sets:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i, hit in enumerate(ranked[:k]) if hit is True)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(n_sets, k)))
    return dcg / ideal


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def per_query(gold: str | Path, guess: str | Path, ks: Sequence[int] = DEFAULT_KS,
              rank_keys: Sequence[str] = DEFAULT_RANK_KEYS, subset: bool = False,
              ndcg_ks: Sequence[int] = ()) -> dict[str, dict[str, float]]:
    """{query id: metrics} for every gold query, in gold order; ``ndcg@k`` added for each
    k of `ndcg_ks` (not an official KILT metric).

    Every gold query needs a prediction, and every prediction a gold query; with
    ``subset=True`` only the predicted gold queries are scored (e.g. a capped rerank run).
    """
    ks = _check_ks(ks)
    gold_records = _read(gold, rank_keys, guess=False)
    guess_records = _read(guess, rank_keys, guess=True)
    for qid, (lineno, _) in guess_records.items():
        if qid not in gold_records:
            raise KiltFormatError(f"{guess}:{lineno}: id {qid} is not in {gold}")
    scores = {}
    for qid, (lineno, gold_outputs) in gold_records.items():
        if qid not in guess_records:
            if subset:
                continue
            raise KiltFormatError(f"{gold}:{lineno}: no prediction for id {qid} in {guess}")
        guess_ids = guess_records[qid][1]
        scores[qid] = query_metrics(guess_ids, gold_outputs, ks)
        for k in _check_ks(ndcg_ks) if ndcg_ks else ():
            scores[qid][f"ndcg@{k}"] = ndcg(guess_ids, gold_outputs, k)
    return scores


def average(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over queries (summed in query order, as the official scorer)."""
    if not scores:
        return {}
    names = list(next(iter(scores.values())))
    totals = dict.fromkeys(names, 0.0)
    for metrics in scores.values():
        for name in names:
            totals[name] += metrics[name]
    return {name: total / len(scores) for name, total in totals.items()}


def evaluate(gold: str | Path, guess: str | Path, ks: Sequence[int] = DEFAULT_KS,
             rank_keys: Sequence[str] = DEFAULT_RANK_KEYS) -> dict[str, float]:
    """Official-compatible averages for one gold/guess pair."""
    return average(per_query(gold, guess, ks, rank_keys))


# --------------------------------------------------------------------------- CLI
def _task_name(path: str | Path) -> str:
    from .tasks import parse_task_filename

    name = Path(path).name
    parsed = parse_task_filename(name)
    return parsed[0] if parsed else name


def format_table(results: dict[str, dict[str, float]], names: Sequence[str]) -> str:
    """A plain-text table, one row per task, with the macro average when there are several."""
    rows = dict(results)
    if len(results) > 1:
        rows["average"] = {n: sum(r[n] for r in results.values()) / len(results) for n in names}
    width = max(len("task"), *(len(t) for t in rows))
    head = "task".ljust(width) + "".join(f"  {n:>15}" for n in names)
    lines = [head, "-" * len(head)]
    for task, metrics in rows.items():
        lines.append(task.ljust(width) + "".join(f"  {metrics[n]:>15.4f}" for n in names))
    return "\n".join(lines)


DESCRIPTION = ("KILT page-level retrieval metrics (R-precision, precision/recall/success rate @k), identical to "
               "the official scorer. Give one or more GOLD GUESS pairs; several pairs give a per-task table with "
               "the macro average.")


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The scorer's command line (`mtr evaluate` takes it as a parent, hence `add_help`)."""
    parser = argparse.ArgumentParser(prog="python -m kilt.eval", description=DESCRIPTION, add_help=add_help)
    parser.add_argument("files", nargs="+", metavar="GOLD GUESS", help="gold task file, then its prediction file")
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="cut-offs, comma-separated [1,5,10]")
    parser.add_argument("--rank-keys", default=",".join(DEFAULT_RANK_KEYS),
                        help="provenance keys that identify a retrieved item [wikipedia_id]; "
                             "e.g. wikipedia_id,start_paragraph_id,end_paragraph_id")
    parser.add_argument("--json", action="store_true", help="print JSON (one flat object for one pair)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Score the GOLD GUESS pairs of parsed `build_parser` arguments and print the table (or
    JSON); bad arguments and unreadable files are ValueErrors or OSErrors naming them."""
    if len(args.files) % 2:
        raise ValueError("files must come in GOLD GUESS pairs")
    try:
        ks = _check_ks([int(k) for k in args.ks.split(",") if k.strip()])
    except ValueError as e:
        raise ValueError(f"--ks: {e}") from None
    rank_keys = [k.strip() for k in args.rank_keys.split(",") if k.strip()]
    results: dict[str, dict[str, float]] = {}
    for gold, guess in zip(args.files[::2], args.files[1::2]):
        name = _task_name(gold)
        if name in results:
            name = f"{name} ({gold})"
        results[name] = evaluate(gold, guess, ks, rank_keys)
    if args.json:
        out: Any = next(iter(results.values())) if len(results) == 1 else results
        print(json.dumps(out, indent=1))
    else:
        print(format_table(results, metric_names(ks)))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except (ValueError, OSError) as e:
        print(f"kilt.eval: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
