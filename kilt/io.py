"""Streaming readers and writers for KILT files: task files, the knowledge source and
prediction files, with validation errors that name file and line.

Every reader is strict by default: a bad line raises :class:`KiltFormatError`
(``path:line: what is wrong``). With ``skip_invalid=True`` bad lines are skipped, counted
and reported in one warning at the end; they never disappear silently. Writers write
atomically (`safeio.atomic`).
"""
from __future__ import annotations

import gzip
import json
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from safeio.atomic import atomic_write
from safeio.text import TextFormatError, decode_utf8


class KiltFormatError(TextFormatError):
    """A KILT file is malformed; the message starts with ``path:line:`` (a TextFormatError,
    so bytes that are not UTF-8 are one too)."""


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


# --------------------------------------------------------------------------- JSONL
def _open_binary(path: str | Path) -> IO[bytes]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


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
    lineno = 0
    with _open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(decode_utf8(raw, path, lineno, KiltFormatError))
                except KiltFormatError as e:
                    skipped(e)
                    continue
                except json.JSONDecodeError as e:
                    skipped(KiltFormatError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})"))
                    continue
                yield lineno, record
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise KiltFormatError(f"{path}:{lineno + 1}: truncated or corrupt gzip file ({e})") from None


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


class _PageIds:
    """A set of page ids in little memory: one bit per numeric id (KILT's ids are numbers
    below 2**27), a set only for other ids, so a full knowledge source costs a few MB."""

    _BITMAP_LIMIT = 1 << 27

    def __init__(self) -> None:
        self._bits = bytearray()
        self._others: set[str] = set()

    def add(self, page_id: str) -> bool:
        """Add ``page_id``; False when it was already there."""
        canonical = page_id.isascii() and page_id.isdigit() and (page_id == "0" or page_id[0] != "0")
        if not canonical or int(page_id) >= self._BITMAP_LIMIT:
            if page_id in self._others:
                return False
            self._others.add(page_id)
            return True
        n = int(page_id)
        byte, bit = n >> 3, 1 << (n & 7)
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        if self._bits[byte] & bit:
            return False
        self._bits[byte] |= bit
        return True


def iter_pages(path: str | Path, skip_invalid: bool = False) -> Iterator[Page]:
    """Pages of a KILT knowledge source (.jsonl or .jsonl.gz), one at a time; a page id
    listed a second time is an invalid line."""
    skipped = _Skipped(path, skip_invalid)
    seen = _PageIds()
    for lineno, record in _records(path, skipped):
        try:
            page = parse_page(record, path, lineno)
            if not seen.add(page.wikipedia_id):
                raise KiltFormatError(f"{path}:{lineno}: page {page.wikipedia_id} listed a second time")
        except KiltFormatError as e:
            skipped(e)
            continue
        yield page
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


def write_task_records(path: str | Path, source: str | Path, ids: Iterable[str]) -> int:
    """The records of task file `source` whose ids are in `ids`, unchanged and in file order,
    written atomically to `path`; returns their count."""
    keep, count = set(ids), 0
    with atomic_write(path) as f:
        for _, record in iter_jsonl(source):
            if isinstance(record, dict) and str(record.get("id", "")).strip() in keep:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
    return count


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
