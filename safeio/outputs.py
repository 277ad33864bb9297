"""Output checks before a command runs: no output may replace, hold or lie inside one of the
command's inputs or another of its outputs, and each must be writable where it goes."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable


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

