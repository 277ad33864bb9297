"""Streaming readers and writers for KILT files: task files, the knowledge source and
prediction files, with validation errors that name file and line.

Every reader is strict by default: a bad line raises :class:`KiltFormatError`
(``path:line: what is wrong``). With ``skip_invalid=True`` bad lines are skipped, counted
and reported in one warning at the end; they never disappear silently.
"""
from __future__ import annotations

import ctypes
import errno
import gzip
import json
import os
import re
import shutil
import stat
import tempfile
import warnings
import zlib
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
class OutputError(ValueError):
    """An output cannot be written safely; the message names it and what is in the way."""


class InputOverwriteError(OutputError):
    """An output would replace, hold or lie inside one of the command's own inputs."""


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same path once links are resolved, or hard links."""
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def _overlap(a: Path, b: Path) -> str | None:
    """How ``a`` stands to ``b``, links resolved: "is", "holds" or "lies inside"; None when apart."""
    if _same_file(a, b):
        return "is"
    if b.resolve().is_relative_to(a.resolve()):
        return "holds"
    if a.resolve().is_relative_to(b.resolve()):
        return "lies inside"
    return None


def _kind(path: Path) -> str:
    """What an existing path is, in words (links followed)."""
    mode = path.stat().st_mode
    kinds = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _check_writable(output: Path, folder: bool) -> None:
    """Raise OSError naming ``output`` when it could not be written: the nearest existing folder
    it would be written in (a folder output itself, when it exists) is not a folder or not writable."""
    ancestor = output.absolute() if folder else output.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"{output}: cannot write there ({ancestor} is not a folder)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"{output}: cannot write there ({ancestor} is not writable)")


def check_outputs(files: Iterable[str | Path] = (), folders: Iterable[str | Path] = (),
                  inputs: Iterable[str | Path | None] = ()) -> None:
    """Raise before any work unless every output of a command can be written without harm.

    ``files`` are the files a command writes (each replaced whole), ``folders`` the folders it
    writes into or replaces, ``inputs`` every file and folder it reads (absent ones, and None or ""
    for an input not given, are skipped).
    Refused, links resolved: an output that is, holds or lies inside an input
    (InputOverwriteError; no option allows it: no command writes over its own inputs); two
    outputs that are one path or one inside the other; an existing file output that is not a
    regular file, or folder output that is not a folder (OutputError); a place this process
    cannot write in (OSError).
    """
    files, folders = [Path(p) for p in files], [Path(p) for p in folders]
    outputs = files + folders
    existing = [Path(p) for p in inputs if p and Path(p).exists()]
    for output in outputs:
        for given in existing:
            if overlap := _overlap(output, given):
                raise InputOverwriteError(f"{output}: {overlap} the input {given}; refusing to write over an "
                                          f"input (no option allows it: choose another output)")
    for i, output in enumerate(outputs):
        for other in outputs[i + 1:]:
            if overlap := _overlap(output, other):
                raise OutputError(f"{output}: {overlap} another output of the same command, {other}; "
                                  f"each output needs a path of its own")
    for output in files:
        if output.exists() and not output.is_file():
            raise OutputError(f"{output}: exists and is {_kind(output)}; only a regular file is replaced")
    for output in folders:
        if output.exists() and not output.is_dir():
            raise OutputError(f"{output}: exists and is {_kind(output)}, not a folder")
    for output in outputs:
        _check_writable(output, folder=output in folders)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# temporary names beside a target: ".NAME.PID.RANDOM.tmp" (and ".old" while a folder is swapped);
# ".NAME.RANDOM.tmp" / ".old" are earlier versions' names, always orphans now
_TEMP_SUFFIXES = (".tmp", ".old")
_TEMP_MIDDLE = re.compile(r"(?:(\d+)\.)?[a-z0-9_]{8}")
_TEMP_NAME = re.compile(r"\.(.+?)\.(?:\d+\.)?[a-z0-9_]{8}\.(?:tmp|old)")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return True


def _remove_orphans(path: Path) -> list[Path]:
    """Remove the temporary files and folders that killed writes of ``path`` left beside it
    (those of a process still running are kept); returns what was removed."""
    prefix = f".{path.name}."
    removed = []
    try:
        candidates = [c for c in path.parent.iterdir() if c.name.startswith(prefix)]
    except FileNotFoundError:
        return removed
    for candidate in sorted(candidates, key=lambda c: not c.name.endswith(".old")):
        middle, suffix = candidate.name[len(prefix):-4], candidate.name[-4:]
        match = _TEMP_MIDDLE.fullmatch(middle) if suffix in _TEMP_SUFFIXES else None
        if not match or (match.group(1) and _alive(int(match.group(1)))):
            continue
        if suffix == ".old" and candidate.is_dir() and not path.exists():
            os.replace(candidate, path)  # killed between a folder swap's two renames: the previous version
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def remove_orphans_in(folder: str | Path) -> list[Path]:
    """`_remove_orphans` for every target in ``folder``: what killed atomic writes left there,
    whatever the target's name (a killed checkpoint's folder, say); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = {m.group(1) for c in folder.iterdir() if (m := _TEMP_NAME.fullmatch(c.name))}
    return [p for name in sorted(names) for p in _remove_orphans(folder / name)]


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step,
    on error it is removed and ``path`` is left as it was.

    The file gets the mode a plain ``open`` would give (0666 less the umask); temporary files
    of earlier, killed writes of ``path`` are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def decode_utf8(raw: bytes, path: str | Path, lineno: int | None = None) -> str:
    """`raw`, the bytes of file `path` (or of its line `lineno`), as text; bytes that are not
    UTF-8 are a KiltFormatError naming the file, the line and the byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = 0
        if lineno is None:  # a whole file: the line the bad byte is on
            lineno = raw.count(b"\n", 0, e.start) + 1
            line_start = raw.rfind(b"\n", 0, e.start) + 1
        raise KiltFormatError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                              f"{e.start - line_start + 1} of the line); save the file as UTF-8") from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's contents; other bytes are a KiltFormatError naming file and line."""
    return decode_utf8(Path(path).read_bytes(), path)


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object a file holds; invalid UTF-8 or JSON, or another value, is a ValueError
    naming file and line."""
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}:1: expected a JSON object")
    return data


def write_json(path: str | Path, data: Any) -> None:
    """`data` as indented JSON with a final newline, written atomically."""
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2) + "\n")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` whole,
    in one step where the system can swap two folders (Linux), else by two renames.

    The folder gets the mode ``mkdir`` would give (0777 less the umask); temporary folders of
    earlier, killed writes of ``path`` are removed first, and on error the new one is. Where
    ``path`` is a link, the folder it points to is replaced and the link kept.
    """
    path = Path(path).resolve() if Path(path).is_symlink() else Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp)  # the previous folder, now under the temporary name
        else:
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".old", dir=path.parent))
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
                    record = json.loads(decode_utf8(raw, path, lineno))
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
