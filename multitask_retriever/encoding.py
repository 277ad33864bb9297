"""Sharded, resumable corpus encoding: a passage file -> vector shards for `Index.from_shards`.

Shards are the unit of work and of crash safety: `shard-00007.ids.npy` (int64 passage ids)
and then `shard-00007.npy` (vectors) are each written atomically, and a shard counts as
finished only once its vectors file exists. `manifest.json` records what the shards were
encoded from, so a resumed or extended run cannot mix encoders or passage files: the passage
file and the encoder's files are identified by their content digests (`kilt.digest`).
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
from accelerate import PartialState
from tqdm.auto import tqdm

from kilt.digest import combined_digest, file_digest
from kilt.passages import Passage, iter_passage_file
from safeio.atomic import atomic_write, write_json
from safeio.lock import FolderLock
from safeio.text import read_json_object

from .distributed import distributed_state

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_FORMAT = 2  # 2: records the passage file's and the encoder's content digests
_ENCODE_CHUNK_BATCHES = 16  # batches handed to the encoder per call (it length-sorts within a call)


class QueryEncoder(Protocol):
    """What a retriever needs of an encoder (a `DualEncoder` is one): its vector size and the
    vectors [len(texts), dim] of queries with `task`'s prompt."""

    @property
    def dim(self) -> int: ...

    def encode_queries(self, texts: Sequence[str], task: str | None = None, batch_size: int = 64) -> np.ndarray: ...


class PassageEncoder(Protocol):
    """What encoding a passage file needs of an encoder (a `DualEncoder` is one): its vector size
    and the vectors [len(passages), dim] of passages. Its `config.model_name_or_path`, where it
    has one, names the files the vectors came from (`encoder_fingerprint`)."""

    @property
    def dim(self) -> int: ...

    def encode_passages(self, passages: Sequence[Passage], batch_size: int = 64) -> np.ndarray: ...


def shard_paths(out_dir: str | Path, shard: int) -> tuple[Path, Path]:
    """(vectors, ids) file paths of shard number `shard`."""
    stem = Path(out_dir) / f"shard-{shard:05d}"
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".ids.npy")


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write `array` as a .npy file atomically."""
    with atomic_write(path, mode="wb") as f:
        np.save(f, array)


def _encoder_name(encoder: PassageEncoder) -> str:
    config = getattr(encoder, "config", None)
    return str(getattr(config, "model_name_or_path", type(encoder).__name__))


#: the files of a model folder that decide its vectors: weights (.safetensors, .bin), configs
#: (.json: the model's, mtr_encoder.json, the tokenizer's, sentence-transformers pooling) and
#: vocabularies (.txt, .model); README files, other frameworks' weights and hidden files are not
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def _model_folder(name_or_path: str | Path) -> Path | None:
    """The local folder a model loads from: the folder itself, or a hub name's cached snapshot
    (never downloaded here); None where there is none."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    try:
        from transformers.utils import cached_file

        config = cached_file(str(name_or_path), "config.json", local_files_only=True,
                             _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    return Path(config).parent if config else None


def model_fingerprint(name_or_path: str | Path) -> str | None:
    """The content digest of the model at `name_or_path` (a folder or a cached hub name): one
    digest over its `MODEL_FILE_SUFFIXES` files (and those one folder down), by relative path
    in sorted order; the same weights give the same digest at any path, through any symlink.
    None where no local model folder is found (an encoder that is not loaded from files)."""
    from .models import is_packaged, resolve_model_name

    folder = _model_folder(resolve_model_name(name_or_path) if is_packaged(name_or_path) else name_or_path)
    if folder is None:
        return None
    files = [p for p in [*folder.glob("*"), *folder.glob("*/*")]
             if p.suffix in MODEL_FILE_SUFFIXES and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if not files:
        return None
    return combined_digest({p.relative_to(folder).as_posix(): file_digest(p) for p in files})


def encoder_fingerprint(encoder: PassageEncoder | QueryEncoder) -> str | None:
    """`model_fingerprint` of the files `encoder` was loaded from (its config's model_name_or_path):
    what the vectors came from, unless the encoder was changed in memory after loading."""
    name = getattr(getattr(encoder, "config", None), "model_name_or_path", None)
    return None if name is None else model_fingerprint(name)


def _shards(passages: Iterable[Passage], shard_size: int) -> Iterator[list[Passage]]:
    shard: list[Passage] = []
    for passage in passages:
        shard.append(passage)
        if len(shard) == shard_size:
            yield shard
            shard = []
    if shard:
        yield shard


def _check_finished_shard(out_dir: Path, shard: int, passages: Sequence[Passage], dim: int,
                          dtype: np.dtype, passage_file: Path) -> None:
    """A finished shard must hold exactly these passages' ids and one vector of `dim` each."""
    vectors_path, ids_path = shard_paths(out_dir, shard)
    if not ids_path.is_file():
        raise ValueError(f"{ids_path}: missing although {vectors_path.name} exists; "
                         f"delete {vectors_path} to re-encode the shard")
    ids = np.load(ids_path)
    if not np.array_equal(ids, [p.id for p in passages]):
        raise ValueError(f"{ids_path}: its passage ids differ from shard {shard} of {passage_file}; "
                         f"encode again with overwrite=True (mtr encode --overwrite)")
    vectors = np.load(vectors_path, mmap_mode="r")
    if vectors.shape != (len(passages), dim) or vectors.dtype != dtype:
        raise ValueError(f"{vectors_path}: shape {vectors.shape} {vectors.dtype}, expected "
                         f"({len(passages)}, {dim}) {dtype}; encode again with overwrite=True (mtr encode --overwrite)")


def _encode_shard(encoder: PassageEncoder, passages: list[Passage], batch_size: int, dtype: np.dtype,
                  bar: tqdm) -> np.ndarray:
    vectors = np.empty((len(passages), encoder.dim), dtype=dtype)
    step = batch_size * _ENCODE_CHUNK_BATCHES
    for start in range(0, len(passages), step):
        chunk = passages[start : start + step]
        vectors[start : start + len(chunk)] = encoder.encode_passages(chunk, batch_size=batch_size)
        bar.update(len(chunk))
    return vectors


def encode_corpus(encoder: PassageEncoder, passage_file: str | Path, out_dir: str | Path, shard_size: int = 100_000,
                  batch_size: int = 128, dtype: str = "float32", max_shards: int | None = None,
                  overwrite: bool = False, progress: bool = True) -> Path:
    """Encode a passage file into vector shards in `out_dir`, skipping shards already finished.

    Under `accelerate launch`, process p of n encodes the shards i with i % n == p.
    `max_shards` stops each process after encoding that many shards (a later call resumes).
    `manifest.json` gets `complete: true` once every shard exists. Memory holds one shard's
    passages and vectors. Returns `out_dir`.
    """
    np_dtype = _check_arguments(shard_size, batch_size, max_shards, dtype)
    passage_file, out_dir = Path(passage_file), Path(out_dir)
    if not passage_file.is_file():
        raise FileNotFoundError(f"{passage_file}: passage file not found")
    settings, compared = _settings(encoder, passage_file, np_dtype, batch_size, shard_size)
    state = distributed_state()
    with FolderLock(out_dir) if state.is_main_process else nullcontext():  # one run per shard folder
        _prepare_folder(out_dir, settings, compared, overwrite, passage_file, state)
        with tqdm(desc=f"encoding {passage_file.name}", unit=" passages", unit_scale=True,
                  disable=not progress or not state.is_local_main_process) as bar:
            num_passages, num_shards, stopped = _encode_shards(encoder, passage_file, out_dir, settings, np_dtype,
                                                               max_shards, state, bar)
        if num_shards == 0 and not stopped:
            raise ValueError(f"{passage_file}: no passages")

        state.wait_for_everyone()
        if state.is_main_process and not stopped:
            _finish_manifest(out_dir, settings, passage_file, num_passages, num_shards)
    return out_dir


def _check_arguments(shard_size: int, batch_size: int, max_shards: int | None, dtype: str) -> np.dtype:
    """The numpy dtype of `dtype`; ValueError for sizes, counts or a dtype `encode_corpus` cannot use."""
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    if max_shards is not None and max_shards < 0:
        raise ValueError(f"max_shards must be >= 0, got {max_shards}")
    np_dtype = np.dtype(dtype)
    if np_dtype not in (np.float32, np.float16):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    return np_dtype


def _settings(encoder: PassageEncoder, passage_file: Path, np_dtype: np.dtype, batch_size: int,
              shard_size: int) -> tuple[dict[str, Any], list[str]]:
    """What shards are encoded with, as the manifest records it, and the keys a resumed run must
    match: the encoder is identified by its files' digest where it has files, else by its name."""
    encoder_digest = encoder_fingerprint(encoder)
    settings = {"encoder": _encoder_name(encoder), "encoder_digest": encoder_digest, "dim": int(encoder.dim),
                "dtype": np_dtype.name,
                "batch_size": batch_size,  # padding differs by batch: resumed shards must match
                "shard_size": shard_size, "passage_file_bytes": passage_file.stat().st_size,
                "passage_file_digest": file_digest(passage_file)}
    return settings, [k for k in settings if k != "encoder" or encoder_digest is None]


def _prepare_folder(out_dir: Path, settings: dict[str, Any], compared: list[str], overwrite: bool,
                    passage_file: Path, state: PartialState) -> None:
    """Refuse a folder encoded with other settings (unless `overwrite`, which empties it); the
    main process then writes an unfinished manifest. Every process waits for both steps."""
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.exists() and not overwrite:
        previous = read_json_object(manifest_path)
        changed = {k: (previous.get(k), settings[k]) for k in compared if previous.get(k) != settings[k]}
        if changed:
            details = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(f"{manifest_path}: shards were encoded with other settings ({details}); "
                             f"use another folder or overwrite=True (mtr encode --overwrite)")
    state.wait_for_everyone()  # all processes have checked before the main one changes anything
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            manifest_path.unlink(missing_ok=True)
            for old in out_dir.glob("shard-*.npy"):
                old.unlink()
        if not manifest_path.exists():
            write_json(manifest_path, {"format": _FORMAT, **settings, "passage_file": str(passage_file),
                                        "num_passages": None, "num_shards": None, "complete": False})
    state.wait_for_everyone()


def _encode_shards(encoder: PassageEncoder, passage_file: Path, out_dir: Path, settings: dict[str, Any],
                   np_dtype: np.dtype, max_shards: int | None, state: PartialState,
                   bar: tqdm) -> tuple[int, int, bool]:
    """Encode this process's unfinished shards, checking its finished ones; returns the passage
    and shard counts of the whole file (as far as it was read) and whether `max_shards` stopped it."""
    encoded, num_passages, num_shards = 0, 0, 0
    for shard, passages in enumerate(_shards(iter_passage_file(passage_file), settings["shard_size"])):
        num_passages += len(passages)
        num_shards = shard + 1
        if shard % state.num_processes != state.process_index:
            continue
        vectors_path, ids_path = shard_paths(out_dir, shard)
        if vectors_path.exists():
            _check_finished_shard(out_dir, shard, passages, settings["dim"], np_dtype, passage_file)
            continue
        if max_shards is not None and encoded >= max_shards:
            return num_passages, num_shards, True
        vectors = _encode_shard(encoder, passages, settings["batch_size"], np_dtype, bar)
        save_npy(ids_path, np.array([p.id for p in passages], dtype=np.int64))
        save_npy(vectors_path, vectors)  # last: its presence marks the shard finished
        encoded += 1
    return num_passages, num_shards, False


def _finish_manifest(out_dir: Path, settings: dict[str, Any], passage_file: Path, num_passages: int,
                     num_shards: int) -> None:
    """Mark the manifest complete once every shard exists; else log how many are left."""
    missing = [i for i in range(num_shards) if not shard_paths(out_dir, i)[0].exists()]
    if missing:
        logger.info("%s: %d of %d shards finished; run again to encode the rest",
                    out_dir, num_shards - len(missing), num_shards)
    else:
        write_json(out_dir / MANIFEST_NAME, {"format": _FORMAT, **settings, "passage_file": str(passage_file),
                                             "num_passages": num_passages, "num_shards": num_shards,
                                             "complete": True})


def read_manifest(shard_dir: str | Path, require_complete: bool = True) -> dict[str, Any]:
    """The manifest of an encoded shard folder; ValueError if unfinished (when required)."""
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shard manifest (not a folder written by encode_corpus?)")
    manifest = read_json_object(path)
    for key in ("dim", "encoder", "complete"):
        if key not in manifest:
            raise ValueError(f"{path}: manifest lacks {key!r}")
    if require_complete and not manifest["complete"]:
        raise ValueError(f"{path}: encoding is not finished; run encode_corpus again to resume it")
    return manifest
