"""The stage cache: each stage's output lives in a folder stamped with a key of its settings,
so a run with the same settings reuses it and an interrupted stage resumes in place."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from safeio.atomic import atomic_write

log = logging.getLogger("mtr.experiment")

STAMP = "stage.json"
STARTED = "started.json"


def stage_key(**settings: Any) -> str:
    """A short hash of JSON-able settings (key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_key(path: Path) -> str | None:
    """The key in a stamp file; None when it is absent or unreadable."""
    try:
        return json.loads(path.read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class StageCache:
    """Stage folders under a work folder, with the time each named stage took."""

    def __init__(self, work: Path, fresh: bool = False):
        self.work = work
        self.fresh = fresh
        self.timings: dict[str, float] = {}
        self._finished: set[Path] = set()  # stage folders finished by this run

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        log.info("stage %s ...", name)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        log.info("stage %s done in %.1f s", name, seconds)

    def cached(self, folder: Path, key: str) -> bool:
        """True when `folder` holds a finished stage with this key. Otherwise the folder is made
        ready for the stage: work an interrupted run left with the same key is kept (the stages
        resume from it), anything else is cleared. With `fresh`, stages not finished by this
        run are redone."""
        stamp, started = folder / STAMP, folder / STARTED
        if (not self.fresh or folder in self._finished) and read_key(stamp) == key:
            return True
        if self.fresh or read_key(started) != key:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)
        with atomic_write(started) as f:
            json.dump({"key": key, "started": time.time()}, f)
        return False

    def finish(self, folder: Path, key: str) -> None:
        with atomic_write(folder / STAMP) as f:
            json.dump({"key": key, "finished": time.time()}, f)
        self._finished.add(folder)

    def key(self, folder: Path) -> str:
        """The key of the finished stage in `folder`."""
        return json.loads((folder / STAMP).read_text())["key"]
