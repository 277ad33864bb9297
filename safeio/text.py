"""Reading UTF-8 text and JSON files with errors that name file, line and byte."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class TextFormatError(ValueError):
    """A file's bytes are not the text or JSON expected; the message starts with ``path:line:``."""


def decode_utf8(raw: bytes, path: str | Path, lineno: int | None = None,
                error: type[ValueError] = TextFormatError) -> str:
    """`raw`, the bytes of file `path` (or of its line `lineno`), as text; bytes that are not
    UTF-8 are an `error` naming the file, the line and the byte (a file format's readers pass
    their own error class)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = 0
        if lineno is None:  # a whole file: the line the bad byte is on
            lineno = raw.count(b"\n", 0, e.start) + 1
            line_start = raw.rfind(b"\n", 0, e.start) + 1
        raise error(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                    f"{e.start - line_start + 1} of the line); save the file as UTF-8") from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's contents; other bytes are a TextFormatError naming file and line."""
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


