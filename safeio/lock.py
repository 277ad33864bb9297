"""One writer per output folder: an exclusive advisory lock on ``FOLDER/.mtr-lock``, held while a
process writes there, so that a second process started on the same folder outside a distributed
launch is refused at once instead of writing beside the first. The lock goes with the process
(released, or the process killed); a released lock's file is removed, a killed one's stays,
naming its last holder, and is taken over by the next writer."""
from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from .outputs import OutputError

try:
    import fcntl
except ImportError:  # no advisory locks (Windows): nothing is refused
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".mtr-lock"


class FolderBusyError(OutputError):
    """Another process holds the folder's lock."""


class FolderLock:
    """`with FolderLock(folder): ...` writes in `folder` as its only writer (created if absent)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        if fcntl is None or self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise FolderBusyError(f"{self.path.parent}: another process (pid {holder}) is writing here; wait "
                                      "for it to end, or start several processes with `accelerate launch` to "
                                      "share one run") from None
            if self._names_file(fd):  # else a holder released (and removed) it meanwhile: take the new one
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode("ascii"))
                self._fd = fd
            else:
                os.close(fd)
        return self

    def _names_file(self, fd: int) -> bool:
        """Whether `self.path` is still the file `fd` has open."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still held: nobody can be holding another file
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()
