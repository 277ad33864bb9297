"""What identifies an input file's version cheaply: a cache built from a file records this and
is rebuilt when it differs (for what the bytes are, whatever the name, see `kilt.digest`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def file_version(path: str | Path) -> dict[str, Any]:
    """A file's resolved path, size and mtime (ns): a file replaced or changed differs."""
    path = Path(path)
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
