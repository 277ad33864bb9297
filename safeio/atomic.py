"""Atomic writes: a file or a folder is written under a temporary name beside its target and
renamed over it in one step, so a reader sees the old version or the new one, never a part.

Temporary names are ``.NAME.PID.RANDOM.tmp`` (``.old`` while a folder is swapped); what a
killed write left behind is removed by the next write of the same target, or for a whole
folder by `remove_orphans_in`.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


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


