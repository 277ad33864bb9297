"""KILT pages -> 100-word passages (DPR/KILT style), a streaming passage file, and random
access to it by passage id without holding any passage text in memory.

Chunking rules: ``paragraphs[0]`` (the title line) is skipped, as are KILT section headers
(lines starting with ``Section::::``): they name a part of the page rather than say
anything, and the page title is kept in its own field. ``BULLET::::-`` list markers are
dropped and the item's words kept. The remaining words of a page, split on whitespace
across paragraph boundaries, are cut into windows of ``words`` words; the last, shorter
window stays a passage of its own. Each passage records the span of KILT paragraph ids
(indices into the page's ``text`` list) its words come from.
"""
from __future__ import annotations

import json
import logging
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from safeio.atomic import atomic_write
from safeio.text import decode_utf8

from .digest import file_digest
from .io import KiltFormatError, Page, Provenance, iter_pages

logger = logging.getLogger(__name__)

SECTION_PREFIX = "Section::::"
BULLET_PREFIX = "BULLET::::-"
_FIELDS = ("id", "wikipedia_id", "title", "text", "start_paragraph_id", "end_paragraph_id")


@dataclass(frozen=True)
class Passage:
    """A window of a page's words; ``id`` is its line number (from 0) in the passage file."""

    id: int
    wikipedia_id: str
    title: str
    text: str
    start_paragraph_id: int
    end_paragraph_id: int

    def holds(self, provenance: Provenance) -> bool:
        """Whether this passage is on `provenance`'s page and shares a paragraph with its span
        (never for provenance that names no paragraph)."""
        start = provenance.start_paragraph_id
        if start is None or provenance.wikipedia_id != self.wikipedia_id:
            return False
        end = start if provenance.end_paragraph_id is None else provenance.end_paragraph_id
        return self.start_paragraph_id <= end and start <= self.end_paragraph_id


def chunk_page(page: Page, words: int = 100, first_id: int = 0) -> list[Passage]:
    """Cut one page into passages of ``words`` words, numbered from ``first_id``.

    A page with no words outside its title and section headers gives no passage.
    """
    if words < 1:
        raise ValueError(f"words must be >= 1, got {words}")
    tokens: list[str] = []
    paragraph_of: list[int] = []
    for pid, paragraph in enumerate(page.paragraphs[1:], start=1):
        line = paragraph.strip()
        if line.startswith(SECTION_PREFIX):
            continue
        if line.startswith(BULLET_PREFIX):
            line = line[len(BULLET_PREFIX):]
        split = line.split()
        tokens.extend(split)
        paragraph_of.extend([pid] * len(split))
    return [
        Passage(
            id=first_id + n,
            wikipedia_id=page.wikipedia_id,
            title=page.title,
            text=" ".join(tokens[start:start + words]),
            start_paragraph_id=paragraph_of[start],
            end_paragraph_id=paragraph_of[min(start + words, len(tokens)) - 1],
        )
        for n, start in enumerate(range(0, len(tokens), words))
    ]


def iter_passages(pages: Iterable[Page], words: int = 100) -> Iterator[Passage]:
    """Passages of all ``pages`` in order, with ids 0..N-1."""
    next_id = 0
    for page in pages:
        passages = chunk_page(page, words=words, first_id=next_id)
        next_id += len(passages)
        yield from passages


def write_passages(knowledge_source: str | Path, out_path: str | Path, words: int = 100,
                   progress: bool = True, skip_invalid: bool = False) -> int:
    """Stream a KILT knowledge source (.jsonl or .jsonl.gz) into a passage JSONL file.

    Written atomically: ``out_path`` appears only when complete. Returns the passage count.
    A bad or repeated page is an error naming file and line, or with ``skip_invalid`` skipped
    and reported; a source that gives no passage at all is an error.
    """
    count = 0
    pages = tqdm(iter_pages(knowledge_source, skip_invalid=skip_invalid), desc="chunking pages", unit=" pages",
                 disable=not progress)
    with atomic_write(out_path) as f:
        for passage in iter_passages(pages, words=words):
            f.write(json.dumps(vars(passage), ensure_ascii=False) + "\n")
            count += 1
        if not count:
            raise KiltFormatError(f"{knowledge_source}: no passage to write (no valid page with text "
                                  "beyond its title and section headers)")
    return count


def _parse_passage(line: bytes, path: str | Path, lineno: int) -> Passage:
    try:
        record = json.loads(decode_utf8(line, path, lineno))
    except json.JSONDecodeError as e:
        raise KiltFormatError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(record, dict) or any(k not in record for k in _FIELDS):
        missing = [k for k in _FIELDS if not isinstance(record, dict) or k not in record]
        raise KiltFormatError(f"{path}:{lineno}: passage lacks field(s) {', '.join(missing)}")
    try:
        return Passage(int(record["id"]), str(record["wikipedia_id"]), str(record["title"]),
                       str(record["text"]), int(record["start_paragraph_id"]),
                       int(record["end_paragraph_id"]))
    except (TypeError, ValueError) as e:
        raise KiltFormatError(f"{path}:{lineno}: bad passage field ({e})") from None


def iter_passage_file(path: str | Path) -> Iterator[Passage]:
    """Read a passage file written by :func:`write_passages`, one passage at a time."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield _parse_passage(line, path, lineno)


class PassageStore:
    """Random access to a passage file by passage id.

    Keeps only a byte offset and the page id per passage (memory-mapped from a cache file
    ``<file>.offsets.npy`` beside the passage file), never passage text. The cache is keyed
    by the passage file's content digest (``kilt.digest.file_digest``, kept as the title of
    its offset field, so key and offsets are one file): any other content rebuilds it, even
    at the same size and mtime.
    """

    def __init__(self, path: str | Path, progress: bool = True):
        self.path = Path(path)
        self.cache_path = self.path.with_name(self.path.name + ".offsets.npy")
        if not self.path.is_file():
            raise FileNotFoundError(f"passage file {self.path} does not exist")
        #: the passage file's content digest: what identifies it (``kilt.digest``)
        self.digest = file_digest(self.path)
        self._index = self._load_cache()
        if self._index is None:
            self._index = self._build(progress)
        # row i: byte offset of passage i; the final row's offset is the file size
        self._offsets = self._index["offset"]
        self._pages = self._index["page"]

    def __len__(self) -> int:
        return len(self._index) - 1

    def __getitem__(self, pid: int) -> Passage:
        self._check(pid)
        with open(self.path, "rb") as f:
            return self._read(f, int(pid))

    def get_many(self, pids: Sequence[int]) -> list[Passage]:
        """Passages for ``pids``, in the given order; read in file order for locality."""
        for pid in pids:
            self._check(pid)
        found: dict[int, Passage] = {}
        with open(self.path, "rb") as f:
            for pid in sorted({int(p) for p in pids}):
                found[pid] = self._read(f, pid)
        return [found[int(p)] for p in pids]

    def page_id(self, pid: int) -> str:
        """The wikipedia_id of passage ``pid``'s page, without reading the passage file."""
        self._check(pid)
        return self._pages[int(pid)].decode("utf-8")

    def page_ranges(self, pages: Iterable[str], chunk: int = 1 << 20) -> dict[str, range]:
        """Passage ids of each of `pages` held here (a page's passages are consecutive); pages
        not here are left out. One vectorised pass over the page column, `chunk` rows at a time."""
        width = self._pages.dtype.itemsize
        wanted = np.array([p for p in {page.encode("utf-8") for page in pages} if len(p) <= width],
                          dtype=self._pages.dtype)
        found: dict[str, range] = {}
        if not len(wanted):
            return found
        run: tuple[bytes, int, int] | None = None  # (page, first id, last id) of the run being read
        for first in range(0, len(self), chunk):
            block = self._pages[first:min(first + chunk, len(self))]
            for offset in np.flatnonzero(np.isin(block, wanted)):
                pid, page = first + int(offset), bytes(block[offset])
                if run is not None and run[0] == page and run[2] == pid - 1:
                    run = (page, run[1], pid)
                    continue
                if run is not None:
                    found[run[0].decode("utf-8")] = range(run[1], run[2] + 1)
                run = (page, pid, pid)
        if run is not None:
            found[run[0].decode("utf-8")] = range(run[1], run[2] + 1)
        return found

    def provenance_passage(self, provenance: Iterable[Provenance], page: range) -> Passage | None:
        """The first passage of `page` (passage ids, e.g. from `page_ranges`) that holds one of
        `provenance`'s paragraph spans (`Passage.holds`); None when none does."""
        provenance = [p for p in provenance if p.start_paragraph_id is not None]
        if not provenance:
            return None
        return next((p for p in self.get_many(list(page)) if any(p.holds(prov) for prov in provenance)), None)

    def _check(self, pid: int) -> None:
        if not 0 <= pid < len(self):
            raise IndexError(f"passage id {pid} out of range for {self.path} ({len(self)} passages)")

    def _read(self, f, pid: int) -> Passage:
        start, end = int(self._offsets[pid]), int(self._offsets[pid + 1])
        f.seek(start)
        return _parse_passage(f.read(end - start), self.path, pid + 1)

    def _load_cache(self) -> np.ndarray | None:
        """The cached offsets if they were built from this content, else None."""
        try:
            index = np.load(self.cache_path, mmap_mode="r")
        except (ValueError, OSError):
            return None
        if index.dtype.names != ("offset", "page") or index.dtype.fields["offset"][2:] != (self.digest,) \
                or len(index) == 0 or int(index["offset"][-1]) != self.path.stat().st_size:
            return None
        return index

    def _build(self, progress: bool) -> np.ndarray:
        """One pass over the file: offsets, and page ids run-length encoded while reading."""
        offsets = array("q", [0])  # compact: 8 bytes per passage, not a Python int each
        run_pages: list[bytes] = []
        run_starts = array("q")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True,
                                               desc=f"indexing {self.path.name}",
                                               disable=not progress) as bar:
            position = 0
            for line in f:
                position += len(line)
                bar.update(len(line))
                if not line.strip():
                    raise KiltFormatError(f"{self.path}:{len(offsets)}: empty line in passage file")
                passage = _parse_passage(line, self.path, len(offsets))
                if passage.id != len(offsets) - 1:
                    raise KiltFormatError(f"{self.path}:{len(offsets)}: passage id {passage.id}, "
                                          f"expected {len(offsets) - 1} (ids must be 0..N-1 in order)")
                page = passage.wikipedia_id.encode("utf-8")
                if not run_pages or run_pages[-1] != page:
                    run_pages.append(page)
                    run_starts.append(passage.id)
                offsets.append(position)
        n = len(offsets) - 1
        width = max((len(p) for p in run_pages), default=1)
        index = np.zeros(n + 1, dtype=[((self.digest, "offset"), np.int64), ("page", f"S{width}")])
        index["offset"] = np.frombuffer(offsets, dtype=np.int64)
        if run_pages:
            lengths = np.diff(np.append(np.frombuffer(run_starts, dtype=np.int64), n))
            index["page"][:n] = np.repeat(np.array(run_pages, dtype=f"S{width}"), lengths)
        try:
            with atomic_write(self.cache_path, mode="wb") as f:
                np.save(f, index)
        except OSError as e:
            logger.warning("could not cache the passage index at %s (%s); keeping it in memory",
                           self.cache_path, e)
        return index

