"""Content digests of files: what identifies a passage file or a model's weights, whatever
its name, size or path.

`file_digest(path)` hashes the file's bytes once and caches the result in the user's cache
folder (``cache_root()/digests``, never beside the file: input folders are not written to),
keyed by the file's resolved path, size, mtime, ctime and inode. Any write changes the ctime,
which ``os.utime`` cannot set back, so a file changed in place (even to the same size and
mtime) or replaced is hashed again; the cache only saves the reading. Where the cache cannot
be written, the digest is just computed each time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Mapping

from safeio.atomic import atomic_write

logger = logging.getLogger(__name__)

ALGORITHM = "blake2b"
_DIGEST_BYTES = 32
_CHUNK_BYTES = 1 << 20


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The toolkit's cache folder: `cache_dir`, else $MTR_CACHE, else ~/.cache/multitask-retriever."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("MTR_CACHE"):
        return Path(os.environ["MTR_CACHE"])
    return Path.home() / ".cache" / "multitask-retriever"


def digest_cache_path(path: str | Path) -> Path:
    """Where the digest of `path` is cached: a file in `cache_root()/digests` named by its resolved path."""
    name = hashlib.blake2b(str(Path(path).resolve()).encode("utf-8"), digest_size=16).hexdigest()
    return cache_root() / "digests" / f"{name}.json"


def _stat_key(path: Path, stat: os.stat_result) -> list:
    """What must be unchanged for a cached digest to be trusted."""
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _new_hash() -> "hashlib.blake2b":
    return hashlib.blake2b(digest_size=_DIGEST_BYTES)


def _hash_file(path: Path) -> str:
    """`ALGORITHM:hex` of the bytes of `path`, read in chunks."""
    h = _new_hash()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return f"{ALGORITHM}:{h.hexdigest()}"


def combined_digest(digests: Mapping[str, str]) -> str:
    """One digest over named digests (say a folder's files by relative path), in sorted name
    order, so it depends on the names and contents only."""
    h = _new_hash()
    for name in sorted(digests):
        h.update(f"{name}\t{digests[name]}\n".encode("utf-8"))
    return f"{ALGORITHM}:{h.hexdigest()}"


def file_digest(path: str | Path) -> str:
    """The content digest of the file at `path` ("blake2b:<64 hex digits>"), from the cache
    beside it while the file is unchanged, else computed (and cached where possible)."""
    path = Path(path)
    cache = digest_cache_path(path)
    before = os.stat(path)
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached["key"] == _stat_key(path, before) and cached["digest"].startswith(f"{ALGORITHM}:"):
            return cached["digest"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no cache, or an unreadable one: compute
    digest = _hash_file(path)
    if _stat_key(path, os.stat(path)) != _stat_key(path, before):
        return digest  # changed while read: nothing worth caching
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as f:
            json.dump({"key": _stat_key(path, before), "digest": digest}, f)
    except OSError as e:
        logger.info("could not cache the digest of %s at %s (%s); it is computed each time", path, cache, e)
    return digest
