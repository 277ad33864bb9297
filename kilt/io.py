"""Streaming readers and writers for KILT files: task files, the knowledge source and
prediction files, with validation errors that name file and line.

Every reader is strict by default: a bad line raises :class:`KiltFormatError`
(``path:line: what is wrong``). With ``skip_invalid=True`` bad lines are skipped, counted
and reported in one warning at the end; they never disappear silently.
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence


class KiltFormatError(ValueError):
    """A KILT file is malformed; the message starts with ``path:line:``."""


@dataclass(frozen=True)
class Provenance:
    """One provenance entry: a page and, optionally, the paragraph span it points at."""

    wikipedia_id: str
    title: str = ""
    start_paragraph_id: int | None = None
    end_paragraph_id: int | None = None


@dataclass(frozen=True)
class KiltExample:
    """One task record. ``evidence`` holds one provenance list per output that has one
    (an evidence set); answers are the outputs' answer strings."""

    id: str
    input: str
    answers: list[str] = field(default_factory=list)
    evidence: list[list[Provenance]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def gold_pages(self) -> list[str]:
        """Distinct provenance page ids, in order of first appearance."""
        return list(dict.fromkeys(p.wikipedia_id for ev in self.evidence for p in ev))


@dataclass(frozen=True)
class Page:
    """One knowledge-source page; ``paragraphs[0]`` is the title line, as in KILT."""

    wikipedia_id: str
    title: str
    paragraphs: list[str]


# --------------------------------------------------------------------------- files
@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step,
    on error it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object a file holds; invalid JSON or another value is a ValueError naming file and line."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}:1: expected a JSON object")
    return data


def write_json(path: str | Path, data: Any) -> None:
    """`data` as indented JSON with a final newline, written atomically."""
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2) + "\n")


def _open_text(path: str | Path) -> IO[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


class _Skipped:
    """Counts lines skipped by a lenient reader and warns once, naming the first."""

    def __init__(self, path: str | Path, skip_invalid: bool):
        self.path, self.skip_invalid = path, skip_invalid
        self.count, self.first = 0, ""

    def __call__(self, error: KiltFormatError) -> None:
        if not self.skip_invalid:
            raise error
        self.count += 1
        self.first = self.first or str(error)

    def report(self) -> None:
        if self.count:
            warnings.warn(f"{self.path}: skipped {self.count} invalid line(s); first: {self.first}",
                          stacklevel=3)


def _records(path: str | Path, skipped: _Skipped) -> Iterator[tuple[int, Any]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                skipped(KiltFormatError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})"))


def iter_jsonl(path: str | Path, skip_invalid: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed value) for each non-blank line of a .jsonl(.gz) file."""
    skipped = _Skipped(path, skip_invalid)
    yield from _records(path, skipped)
    skipped.report()


# --------------------------------------------------------------------------- knowledge source
def parse_page(record: Any, path: str | Path = "<page>", lineno: int = 0) -> Page:
    """A knowledge-source record -> Page; raises KiltFormatError naming ``path:lineno``."""
    where = f"{path}:{lineno}"
    if not isinstance(record, dict):
        raise KiltFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if record.get("wikipedia_id") in (None, ""):
        raise KiltFormatError(f"{where}: page has no wikipedia_id")
    text = record.get("text")
    if not isinstance(text, list) or not text or not all(isinstance(p, str) for p in text):
        raise KiltFormatError(f"{where}: page {record['wikipedia_id']}: \"text\" must be a non-empty "
                              "list of paragraph strings")
    title = record.get("wikipedia_title")
    if title is None:
        title = text[0].strip()
    return Page(str(record["wikipedia_id"]).strip(), str(title), text)


def iter_pages(path: str | Path, skip_invalid: bool = False) -> Iterator[Page]:
    """Pages of a KILT knowledge source (.jsonl or .jsonl.gz), one at a time."""
    skipped = _Skipped(path, skip_invalid)
    for lineno, record in _records(path, skipped):
        try:
            yield parse_page(record, path, lineno)
        except KiltFormatError as e:
            skipped(e)
    skipped.report()


# --------------------------------------------------------------------------- task files
def _parse_provenance(p: Any, where: str) -> Provenance:
    if not isinstance(p, dict):
        raise KiltFormatError(f"{where}: provenance entry must be an object")
    if p.get("wikipedia_id") in (None, ""):
        raise KiltFormatError(f"{where}: provenance without wikipedia_id")

    def paragraph(key: str) -> int | None:
        value = p.get(key)
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise KiltFormatError(f"{where}: provenance {key} must be an integer, got {value!r}")
        return value

    return Provenance(str(p["wikipedia_id"]).strip(), str(p.get("title", "")),
                      paragraph("start_paragraph_id"), paragraph("end_paragraph_id"))


def parse_example(record: Any, path: str | Path = "<task>", lineno: int = 0,
                  require_input: bool = True) -> KiltExample:
    """A task-file record -> KiltExample; raises KiltFormatError naming ``path:lineno``."""
    where = f"{path}:{lineno}"
    if not isinstance(record, dict):
        raise KiltFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if record.get("id") in (None, ""):
        raise KiltFormatError(f"{where}: record has no id")
    text = record.get("input", "")
    if require_input and (not isinstance(text, str) or not text.strip()):
        raise KiltFormatError(f"{where}: record {record['id']} has no input text")
    outputs = record.get("output", [])
    if not isinstance(outputs, list):
        raise KiltFormatError(f"{where}: \"output\" must be a list")
    answers: list[str] = []
    evidence: list[list[Provenance]] = []
    for out in outputs:
        if not isinstance(out, dict):
            raise KiltFormatError(f"{where}: each output must be an object")
        if isinstance(out.get("answer"), str):
            answers.append(out["answer"])
        if "provenance" in out:
            if not isinstance(out["provenance"], list):
                raise KiltFormatError(f"{where}: \"provenance\" must be a list")
            evidence.append([_parse_provenance(p, where) for p in out["provenance"]])
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    return KiltExample(str(record["id"]).strip(), text if isinstance(text, str) else "", answers, evidence, meta)


def iter_task_file(path: str | Path, skip_invalid: bool = False,
                   require_input: bool = True) -> Iterator[KiltExample]:
    """Records of a KILT task file, validated one at a time; duplicated ids are errors."""
    skipped = _Skipped(path, skip_invalid)
    seen: dict[str, int] = {}
    for lineno, record in _records(path, skipped):
        try:
            example = parse_example(record, path, lineno, require_input)
            if example.id in seen:
                raise KiltFormatError(f"{path}:{lineno}: duplicated id {example.id} (first on line "
                                      f"{seen[example.id]})")
        except KiltFormatError as e:
            skipped(e)
            continue
        seen[example.id] = lineno
        yield example
    skipped.report()


def read_task_file(path: str | Path, skip_invalid: bool = False) -> list[KiltExample]:
    """All records of a task file; an empty file is an error."""
    examples = list(iter_task_file(path, skip_invalid=skip_invalid))
    if not examples:
        raise KiltFormatError(f"{path}: empty task file (no records)")
    return examples


# --------------------------------------------------------------------------- predictions
def write_predictions(path: str | Path, predictions: Iterable[tuple[str, Sequence[str | dict]]]) -> int:
    """Write a KILT prediction file atomically from (id, ranked pages) pairs; a page is a
    wikipedia_id or a provenance dict. Returns the number of records written."""
    n = 0
    with atomic_write(path) as f:
        for qid, pages in predictions:
            provenance = [p if isinstance(p, dict) else {"wikipedia_id": str(p)} for p in pages]
            f.write(json.dumps({"id": qid, "output": [{"provenance": provenance}]}, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_predictions(path: str | Path) -> dict[str, list[str]]:
    """Ranked page ids per query id of a prediction file (exactly one output per record)."""
    out: dict[str, list[str]] = {}
    for lineno, record in iter_jsonl(path):
        example = parse_example(record, path, lineno, require_input=False)
        if example.id in out:
            raise KiltFormatError(f"{path}:{lineno}: duplicated id {example.id}")
        if len(example.evidence) != 1:
            raise KiltFormatError(f"{path}:{lineno}: prediction {example.id} must have exactly one output "
                                  f"with a provenance list, got {len(example.evidence)}")
        out[example.id] = [p.wikipedia_id for p in example.evidence[0]]
    if not out:
        raise KiltFormatError(f"{path}: empty prediction file (no records)")
    return out
