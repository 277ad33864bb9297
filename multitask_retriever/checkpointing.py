"""Atomic folders: written whole beside their final name and swapped in, so a crash leaves the
previous version; `remove_orphan_directories` clears what a killed write left."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_orphan_directories(parent: str | Path) -> list[Path]:
    """Clear what `atomic_directory` left in `parent` when a process was killed mid-write:
    `.NAME.*.tmp` folders are deleted, a `.NAME.*.old` folder is put back as NAME when NAME
    is missing (killed between the two renames) and deleted otherwise. Returns the paths
    removed. Call it only while no other process writes into `parent`."""
    removed = []
    for path in sorted(Path(parent).glob(".*.old")) + sorted(Path(parent).glob(".*.tmp")):
        if not path.is_dir():
            continue
        original = path.with_name(path.name[1:].rsplit(".", 2)[0])
        if path.suffix == ".old" and not original.exists():
            os.replace(path, original)
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
