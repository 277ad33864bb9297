"""The KILT task registry: each task's kind, official file names and short prompt names."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

FACT_CHECKING = "fact checking"
ENTITY_LINKING = "entity linking"
SLOT_FILLING = "slot filling"
QA = "open-domain QA"
DIALOGUE = "dialogue"

SPLITS = ("train", "dev", "test")

# KILT entity-linking inputs mark the mention to link: "... [START_ENT] mention [END_ENT] ..."
MENTION_START = "[START_ENT]"
MENTION_END = "[END_ENT]"


def mention_span(text: str) -> tuple[int, int] | None:
    """Character span of the first "[START_ENT] ... [END_ENT]" in `text`, markers included; None if unmarked."""
    begin = text.find(MENTION_START)
    if begin < 0:
        return None
    end = text.find(MENTION_END, begin + len(MENTION_START))
    return None if end < 0 else (begin, end + len(MENTION_END))


def mention_window(offsets: list[tuple[int, int]], span: tuple[int, int], limit: int) -> tuple[int, int]:
    """Token range [first, stop) of at most `limit` tokens (character `offsets`) that holds the
    mention at character `span` with an even share of context on each side; a mention longer
    than `limit` keeps its start."""
    inside = [k for k, (s, e) in enumerate(offsets) if e > span[0] and s < span[1]]
    if not inside or len(offsets) <= limit:
        return 0, min(len(offsets), limit)
    first, stop = inside[0], inside[-1] + 1
    if stop - first >= limit:
        return first, first + limit
    rest = limit - (stop - first)
    left = min(first, max(rest // 2, rest - (len(offsets) - stop)))
    return first - left, stop + (rest - left)


#: what a cut query keeps: auto (task-aware: a dialogue its latest turns, any other task its
#: start), start, or end; a marked entity mention is always kept with its context
QUERY_KEEP = ("auto", "start", "end")


def check_queries(queries: Sequence[str]) -> list[str]:
    """The queries of one call as a list, each a str with some non-blank text: the one query
    check of every encoder, retriever and reranker, so all refuse bad queries alike (a
    ValueError naming the query's position in the call)."""
    if isinstance(queries, str):
        raise ValueError("expected a sequence of queries, got one str")
    out = list(queries)
    for i, query in enumerate(out):
        if not isinstance(query, str):
            raise ValueError(f"query number {i} of the call is a {type(query).__name__}, not a str: {query!r}")
        if not query.strip():
            raise ValueError(f"empty query (number {i} of the call): {query!r}")
    return out


def keeps_end(task: str | None, keep: str = "auto") -> bool:
    """Whether a too-long query of `task` keeps its end: a dialogue's last turn is the one to
    answer, so "auto" keeps the end of dialogue inputs and the start of every other task's."""
    if keep not in QUERY_KEEP:
        raise ValueError(f"query cut must be one of {', '.join(QUERY_KEEP)}, got {keep!r}")
    return keep == "end" or (keep == "auto" and task in TASKS and TASKS[task].kind == DIALOGUE)


def query_window(text: str, offsets: list[tuple[int, int]], limit: int, task: str | None = None,
                 keep: str = "auto") -> tuple[int, int]:
    """Token range [first, stop) of at most `limit` tokens (character `offsets` of `text`) that a
    cut query keeps: the window around a marked entity mention, else its end or start
    (`keeps_end`). The one query cut of the dual encoder and every reranker."""
    n = len(offsets)
    if n <= limit:
        return 0, n
    span = mention_span(text)
    if span is not None:
        return mention_window(offsets, span, limit)
    return (n - limit, n) if keeps_end(task, keep) else (0, limit)


_TURN = re.compile(r"^(?P<conversation>.+)_\d+$")


def query_group(query_id: str, meta: Mapping[str, Any] | None = None, task: str = "") -> str:
    """What a split of `task`'s queries must keep on one side: the file's meta "group" (the
    conversation, document or subject), else a slot-filling query's subject (meta "sub_uri"),
    else a dialogue turn's conversation (the id before its "_<turn>"), else the query alone."""
    meta = meta or {}
    if isinstance(meta.get("group"), str) and meta["group"]:
        return meta["group"]
    kind = TASKS[task].kind if task in TASKS else ""
    if kind == SLOT_FILLING and isinstance(meta.get("sub_uri"), str) and meta["sub_uri"]:
        return meta["sub_uri"]
    if kind == DIALOGUE and (match := _TURN.match(query_id)):
        return match["conversation"]
    return query_id


@dataclass(frozen=True)
class KiltTask:
    """One KILT task. ``files`` maps split -> official file name (only the splits KILT ships);
    ``taco_name`` is the upper-case task name of the official TACO code (default: ``prompt`` upper-cased)."""

    name: str
    kind: str
    prompt: str
    files: dict[str, str] = field(default_factory=dict)
    taco_name: str = ""

    def __post_init__(self) -> None:
        if not self.taco_name:
            object.__setattr__(self, "taco_name", self.prompt.upper())


def _files(name: str, splits: tuple[str, ...] = SPLITS, ids_only: bool = False) -> dict[str, str]:
    suffix = "_id" if ids_only else ""
    return {split: f"{name}-{split}{suffix}{'_without_answers' if split == 'test' else ''}-kilt.jsonl"
            for split in splits}


TASKS: dict[str, KiltTask] = {task.name: task for task in [
    KiltTask("fever", FACT_CHECKING, "fever", _files("fever"), taco_name="FEVER"),
    KiltTask("aidayago2", ENTITY_LINKING, "aida", _files("aidayago2"), taco_name="AIDA"),
    KiltTask("wned", ENTITY_LINKING, "wned", _files("wned", ("dev", "test"))),
    KiltTask("cweb", ENTITY_LINKING, "cweb", _files("cweb", ("dev", "test"))),
    KiltTask("trex", SLOT_FILLING, "trex", _files("trex"), taco_name="TREX"),
    KiltTask("structured_zeroshot", SLOT_FILLING, "zsre", _files("structured_zeroshot"), taco_name="ZSRE"),
    KiltTask("nq", QA, "nq", _files("nq"), taco_name="NQ"),
    KiltTask("hotpotqa", QA, "hotpotqa", _files("hotpotqa"), taco_name="HOPO"),
    KiltTask("triviaqa", QA, "triviaqa", _files("triviaqa", ids_only=True), taco_name="TQA"),
    KiltTask("eli5", QA, "eli5", _files("eli5")),
    KiltTask("wow", DIALOGUE, "wow", _files("wow"), taco_name="WOW"),
]}

_FILENAME = re.compile(r"^(?P<task>[A-Za-z0-9_]+)-(?P<split>train|dev|test)(?:_id)?(?:_without_answers)?"
                       r"-kilt\.jsonl(?:\.gz)?$")


def get_task(name: str) -> KiltTask:
    """The registered task ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown KILT task {name!r}; known: {', '.join(TASKS)}") from None


def parse_task_filename(name: str) -> tuple[str, str] | None:
    """(task, split) of an official KILT file name such as ``triviaqa-dev_id-kilt.jsonl``;
    None when the name is not a registered task's file."""
    match = _FILENAME.match(name)
    if match is None or match["task"] not in TASKS:
        return None
    return match["task"], match["split"]


def find_task_files(folder: str | Path) -> dict[str, dict[str, Path]]:
    """Task files in ``folder`` as {task: {split: path}}, tasks and splits in registry order.

    Files shaped like task files whose task is unknown are skipped with a warning naming them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _FILENAME.match(path.name)
        if match is None:
            continue
        if match["task"] not in TASKS:
            warnings.warn(f"{path}: unknown KILT task {match['task']!r}, file ignored "
                          f"(known: {', '.join(TASKS)})", stacklevel=2)
            continue
        splits = found.setdefault(match["task"], {})
        if match["split"] in splits:
            raise ValueError(f"{folder}: two {match['task']} {match['split']} files: "
                             f"{splits[match['split']].name} and {path.name}")
        splits[match["split"]] = path
    return {name: {s: found[name][s] for s in SPLITS if s in found[name]} for name in TASKS if name in found}
