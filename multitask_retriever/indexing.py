"""Sharded, resumable corpus encoding and a FAISS (or exact torch) passage index.

Shards are the unit of work and of crash safety: `shard-00007.ids.npy` (int64 passage ids)
and then `shard-00007.npy` (vectors) are each written atomically, and a shard counts as
finished only once its vectors file exists. `manifest.json` records what the shards were
encoded from, so a resumed or extended run cannot mix encoders or passage files.

An `Index` maps FAISS's internal positions to passage ids through an int64 array kept (and
saved) beside the FAISS index, so every index type searches and returns passage ids alike.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import faiss
import numpy as np
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from kilt.io import atomic_write
from kilt.passages import Passage, iter_passage_file

from .devices import resolve_device

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
META_FILE = "index_meta.json"
INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("faiss", "torch")
# IndexConfig fields that only change how a built index is searched (allowed in Index.load)
SEARCH_FIELDS = ("device", "backend", "nprobe", "hnsw_ef_search", "gpu_float16")
_FORMAT = 1
_TRAIN_SEED = 0
_ADD_ROWS = 65_536  # rows converted to float32 and added at a time
_TORCH_SCORE_ELEMENTS = 1 << 27  # query x passage scores held at once by the torch backend
_ENCODE_CHUNK_BATCHES = 16  # batches handed to the encoder per call (it length-sorts within a call)


# =========================================================================== corpus encoding
def shard_paths(out_dir: str | Path, shard: int) -> tuple[Path, Path]:
    """(vectors, ids) file paths of shard number `shard`."""
    stem = Path(out_dir) / f"shard-{shard:05d}"
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".ids.npy")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, mode="wb") as f:
        np.save(f, array)


def _encoder_name(encoder: Any) -> str:
    config = getattr(encoder, "config", None)
    return str(getattr(config, "model_name_or_path", type(encoder).__name__))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}:1: expected a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2) + "\n")


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
                         f"encode again with overwrite=True")
    vectors = np.load(vectors_path, mmap_mode="r")
    if vectors.shape != (len(passages), dim) or vectors.dtype != dtype:
        raise ValueError(f"{vectors_path}: shape {vectors.shape} {vectors.dtype}, expected "
                         f"({len(passages)}, {dim}) {dtype}; encode again with overwrite=True")


def _encode_shard(encoder: Any, passages: list[Passage], batch_size: int, dtype: np.dtype,
                  bar: tqdm) -> np.ndarray:
    vectors = np.empty((len(passages), encoder.dim), dtype=dtype)
    step = batch_size * _ENCODE_CHUNK_BATCHES
    for start in range(0, len(passages), step):
        chunk = passages[start : start + step]
        vectors[start : start + len(chunk)] = encoder.encode_passages(chunk, batch_size=batch_size)
        bar.update(len(chunk))
    return vectors


def encode_corpus(encoder: Any, passage_file: str | Path, out_dir: str | Path, shard_size: int = 100_000,
                  batch_size: int = 128, dtype: str = "float32", max_shards: int | None = None,
                  overwrite: bool = False, progress: bool = True) -> Path:
    """Encode a passage file into vector shards in `out_dir`, skipping shards already finished.

    Under `accelerate launch`, process p of n encodes the shards i with i % n == p.
    `max_shards` stops each process after encoding that many shards (a later call resumes).
    `manifest.json` gets `complete: true` once every shard exists. Memory holds one shard's
    passages and vectors. Returns `out_dir`.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    if max_shards is not None and max_shards < 0:
        raise ValueError(f"max_shards must be >= 0, got {max_shards}")
    np_dtype = np.dtype(dtype)
    if np_dtype not in (np.float32, np.float16):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    passage_file, out_dir = Path(passage_file), Path(out_dir)
    if not passage_file.is_file():
        raise FileNotFoundError(f"{passage_file}: passage file not found")
    stat = passage_file.stat()
    settings = {"encoder": _encoder_name(encoder), "dim": int(encoder.dim), "dtype": np_dtype.name,
                "shard_size": shard_size, "passage_file_bytes": stat.st_size,
                "passage_file_mtime_ns": stat.st_mtime_ns}
    manifest_path = out_dir / MANIFEST_NAME
    state = PartialState()

    if manifest_path.exists() and not overwrite:
        previous = _read_json(manifest_path)
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            details = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(f"{manifest_path}: shards were encoded with other settings ({details}); "
                             f"use another folder or overwrite=True")
    state.wait_for_everyone()  # all processes have checked before the main one changes anything
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            manifest_path.unlink(missing_ok=True)
            for old in out_dir.glob("shard-*.npy"):
                old.unlink()
        if not manifest_path.exists():
            _write_json(manifest_path, {"format": _FORMAT, **settings, "passage_file": str(passage_file),
                                        "num_passages": None, "num_shards": None, "complete": False})
    state.wait_for_everyone()

    encoded, num_passages, num_shards, stopped = 0, 0, 0, False
    with tqdm(desc=f"encoding {passage_file.name}", unit=" passages", unit_scale=True,
              disable=not progress or not state.is_local_main_process) as bar:
        for shard, passages in enumerate(_shards(iter_passage_file(passage_file), shard_size)):
            num_passages += len(passages)
            num_shards = shard + 1
            if shard % state.num_processes != state.process_index:
                continue
            vectors_path, ids_path = shard_paths(out_dir, shard)
            if vectors_path.exists():
                _check_finished_shard(out_dir, shard, passages, settings["dim"], np_dtype, passage_file)
                continue
            if max_shards is not None and encoded >= max_shards:
                stopped = True
                break
            vectors = _encode_shard(encoder, passages, batch_size, np_dtype, bar)
            _save_npy(ids_path, np.array([p.id for p in passages], dtype=np.int64))
            _save_npy(vectors_path, vectors)  # last: its presence marks the shard finished
            encoded += 1
    if num_shards == 0 and not stopped:
        raise ValueError(f"{passage_file}: no passages")

    state.wait_for_everyone()
    if state.is_main_process and not stopped:
        missing = [i for i in range(num_shards) if not shard_paths(out_dir, i)[0].exists()]
        if missing:
            logger.info("%s: %d of %d shards finished; run again to encode the rest",
                        out_dir, num_shards - len(missing), num_shards)
        else:
            _write_json(manifest_path, {"format": _FORMAT, **settings, "passage_file": str(passage_file),
                                        "num_passages": num_passages, "num_shards": num_shards,
                                        "complete": True})
    return out_dir


def read_manifest(shard_dir: str | Path, require_complete: bool = True) -> dict[str, Any]:
    """The manifest of an encoded shard folder; ValueError if unfinished (when required)."""
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shard manifest (not a folder written by encode_corpus?)")
    manifest = _read_json(path)
    for key in ("dim", "encoder", "complete"):
        if key not in manifest:
            raise ValueError(f"{path}: manifest lacks {key!r}")
    if require_complete and not manifest["complete"]:
        raise ValueError(f"{path}: encoding is not finished; run encode_corpus again to resume it")
    return manifest


# =========================================================================== index
@dataclass
class IndexConfig:
    """What kind of index to build over passage vectors, and where and how to search it."""

    index_type: str = field(default="flat", metadata={"help": "flat | hnsw | ivf | ivfpq"})
    metric: str = field(default="ip", metadata={"help": "similarity; only inner product (ip) is supported"})
    device: str = field(default="auto", metadata={
        "help": "auto | cpu | cuda; auto uses GPUs when faiss (or, for flat, torch) can"})
    backend: str = field(default="faiss", metadata={
        "help": "faiss | torch; torch is exact flat search by matmul + top-k, for GPUs without faiss-gpu"})
    hnsw_m: int = field(default=32, metadata={"help": "HNSW neighbours per node"})
    hnsw_ef_search: int = field(default=128, metadata={"help": "HNSW search beam width"})
    hnsw_ef_construction: int = field(default=200, metadata={"help": "HNSW build beam width"})
    ivf_nlist: int | None = field(default=None, metadata={
        "help": "IVF cells; unset: about 4*sqrt(n), at most n/39 and 65536"})
    nprobe: int = field(default=32, metadata={"help": "IVF cells visited per query"})
    pq_m: int | None = field(default=None, metadata={
        "help": "PQ subquantisers, must divide dim; unset: about dim/8"})
    pq_bits: int = field(default=8, metadata={"help": "bits per PQ code"})
    train_size: int = field(default=300_000, metadata={"help": "most vectors sampled to train IVF / PQ"})
    gpu_float16: bool = field(default=False, metadata={"help": "store vectors as float16 on GPU"})

    def __post_init__(self) -> None:
        for name, allowed in (("index_type", INDEX_TYPES), ("metric", ("ip",)), ("device", DEVICES),
                              ("backend", BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.backend == "torch" and self.index_type != "flat":
            raise ValueError(f"the torch backend searches exactly: index_type must be 'flat', "
                             f"got {self.index_type!r}")
        for name in ("hnsw_m", "hnsw_ef_search", "hnsw_ef_construction", "nprobe", "train_size",
                     "ivf_nlist", "pq_m"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 1 <= self.pq_bits <= 16:
            raise ValueError(f"pq_bits must be in 1..16, got {self.pq_bits}")


def default_nlist(n: int) -> int:
    """About 4*sqrt(n) IVF cells, with at least 39 training vectors per cell and at most 65536."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39, 65536)))


def default_pq_m(dim: int) -> int:
    """The largest divisor of `dim` not above dim/8 (8 dimensions per subquantiser)."""
    target = max(1, dim // 8)
    return next(m for m in range(target, 0, -1) if dim % m == 0)


def _new_faiss_index(config: IndexConfig, dim: int, n: int) -> faiss.Index:
    """An empty CPU index of the configured type for `n` vectors of `dim` dimensions."""
    ip = faiss.METRIC_INNER_PRODUCT
    if config.index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if config.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, ip)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        return index
    nlist = config.ivf_nlist or default_nlist(n)
    if config.index_type == "ivf":
        return faiss.index_factory(dim, f"IVF{nlist},Flat", ip)
    pq_m = config.pq_m or default_pq_m(dim)
    if dim % pq_m:
        raise ValueError(f"pq_m={pq_m} does not divide the vector dim {dim}")
    # "np": no polysemous training, which index_factory would otherwise run and we never use
    return faiss.index_factory(dim, f"IVF{nlist},PQ{pq_m}x{config.pq_bits}np", ip)


def _set_search_params(index: faiss.Index, config: IndexConfig) -> None:
    if config.index_type == "hnsw":
        index.hnsw.efSearch = config.hnsw_ef_search
    elif config.index_type in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = config.nprobe


def _placement(config: IndexConfig) -> tuple[str, str]:
    """(backend, device) to search on: ("faiss", "cpu" | "gpu") or ("torch", "cpu" | "cuda")."""
    device = resolve_device(config.device)
    if config.backend == "torch":
        return "torch", device
    if device == "cpu":
        return "faiss", "cpu"
    faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if config.index_type == "hnsw":
        if config.device == "cuda":
            raise ValueError("faiss has no GPU HNSW; use device='cpu' (or 'auto') for an hnsw index")
        return "faiss", "cpu"
    if faiss_gpus > 0:
        return "faiss", "gpu"
    if config.index_type == "flat":
        return "torch", "cuda"
    if config.device == "cuda":
        raise ValueError(f"device='cuda' for an {config.index_type} index needs faiss with GPU support "
                         f"(this faiss sees no GPU); use flat (searched with torch) or device='cpu'")
    return "faiss", "cpu"


class _FaissSearcher:
    """A FAISS index on CPU, or cloned onto all GPUs (sharded) when asked to."""

    def __init__(self, cpu_index: faiss.Index, config: IndexConfig, gpu: bool):
        _set_search_params(cpu_index, config)
        self.index = cpu_index
        if gpu:  # GPU-only path: not exercised by the CPU test suite
            options = faiss.GpuMultipleClonerOptions()
            options.shard = True
            options.useFloat16 = config.gpu_float16
            self.index = faiss.index_cpu_to_all_gpus(cpu_index, co=options)
        self.gpu = gpu

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def train(self, sample: np.ndarray) -> None:
        self.index.train(sample)

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    def cpu_index(self) -> faiss.Index:
        return faiss.index_gpu_to_cpu(self.index) if self.gpu else self.index


class _TorchSearcher:
    """Exact inner-product search by chunked matmul + top-k (CPU, or CUDA without faiss-gpu)."""

    def __init__(self, dim: int, device: str, float16: bool):
        self.dim = dim
        self.device = torch.device(device)
        self.dtype = torch.float16 if float16 and self.device.type == "cuda" else torch.float32
        self.chunks: list[torch.Tensor] = []
        self.is_trained = True

    @classmethod
    def from_flat(cls, index: faiss.Index, device: str, float16: bool) -> "_TorchSearcher":
        searcher = cls(index.d, device, float16)
        for start in range(0, index.ntotal, _ADD_ROWS):
            searcher.add(index.reconstruct_n(start, min(_ADD_ROWS, index.ntotal - start)))
        return searcher

    @property
    def ntotal(self) -> int:
        return sum(len(c) for c in self.chunks)

    def add(self, vectors: np.ndarray) -> None:
        self.chunks.append(torch.tensor(vectors, dtype=self.dtype, device=self.device))  # a copy: callers may reuse the array

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(queries).to(self.device, self.dtype)
        best_scores = torch.full((len(q), k), -math.inf, device=self.device)
        best_pos = torch.full((len(q), k), -1, dtype=torch.int64, device=self.device)
        rows = max(1, _TORCH_SCORE_ELEMENTS // max(1, len(q)))
        offset = 0
        for chunk in self.chunks:
            for start in range(0, len(chunk), rows):
                scores = (q @ chunk[start : start + rows].T).float()
                top, pos = scores.topk(min(k, scores.shape[1]), dim=1)
                merged = torch.cat([best_scores, top], dim=1)
                order = merged.topk(k, dim=1).indices
                best_scores = merged.gather(1, order)
                best_pos = torch.cat([best_pos, pos + offset + start], dim=1).gather(1, order)
            offset += len(chunk)
        return best_scores.cpu().numpy(), best_pos.cpu().numpy()

    def cpu_index(self) -> faiss.Index:
        index = faiss.IndexFlatIP(self.dim)
        for chunk in self.chunks:
            index.add(chunk.float().cpu().numpy())
        return index


def _sha256(ids: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(ids, dtype="<i8"))).hexdigest()


class Index:
    """Passage vectors searchable by inner product; `search` returns passage ids.

    Create with `build`, `from_shards` or `load`.
    """

    def __init__(self, searcher: _FaissSearcher | _TorchSearcher, config: IndexConfig, dim: int,
                 ids: np.ndarray, encoder_name: str | None = None):
        self._searcher = searcher
        self.config = config
        self.dim = dim
        self._ids = ids
        self.encoder_name = encoder_name

    @classmethod
    def _empty(cls, config: IndexConfig, dim: int, n: int, encoder_name: str | None) -> "Index":
        backend, device = _placement(config)
        if backend == "torch":
            searcher: _FaissSearcher | _TorchSearcher = _TorchSearcher(dim, device, config.gpu_float16)
        else:
            searcher = _FaissSearcher(_new_faiss_index(config, dim, n), config, gpu=device == "gpu")
        return cls(searcher, config, dim, np.empty(0, dtype=np.int64), encoder_name)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> np.ndarray:
        """Passage id of each indexed vector, in insertion order (read-only)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    @property
    def on_gpu(self) -> bool:
        """Whether searches run on a GPU (faiss-gpu or the torch backend on CUDA)."""
        s = self._searcher
        return s.gpu if isinstance(s, _FaissSearcher) else s.device.type == "cuda"

    def _add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        for start in range(0, len(vectors), _ADD_ROWS):
            self._searcher.add(np.ascontiguousarray(vectors[start : start + _ADD_ROWS], dtype=np.float32))
        self._ids = np.concatenate([self._ids, ids.astype(np.int64, copy=False)])

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig | None = None, ids: Sequence[int] | None = None,
              encoder_name: str | None = None) -> "Index":
        """Index `vectors` [n, dim] (float32 or float16); `ids` default to 0..n-1."""
        config = config or IndexConfig()
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D [n, dim], got shape {vectors.shape}")
        n, dim = vectors.shape
        if n == 0:
            raise ValueError("no vectors to index")
        ids_array = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids)
        if ids_array.shape != (n,) or not np.issubdtype(ids_array.dtype, np.integer):
            raise ValueError(f"ids must be {n} integers, got shape {ids_array.shape} {ids_array.dtype}")
        if len(np.unique(ids_array)) != n:
            raise ValueError("ids must be unique")
        index = cls._empty(config, dim, n, encoder_name)
        if not index._searcher.is_trained:
            sample = np.sort(np.random.default_rng(_TRAIN_SEED).choice(n, min(n, config.train_size), replace=False))
            index._searcher.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        index._add(vectors, ids_array)
        return index

    @classmethod
    def from_shards(cls, shard_dir: str | Path, config: IndexConfig | None = None,
                    progress: bool = True) -> "Index":
        """Index a folder written by `encode_corpus`, one shard in memory at a time.

        IVF / PQ are first trained on up to `train_size` vectors sampled across all shards.
        """
        config = config or IndexConfig()
        shard_dir = Path(shard_dir)
        manifest = read_manifest(shard_dir)
        dim = int(manifest["dim"])
        files = [shard_paths(shard_dir, i) for i in range(int(manifest["num_shards"]))]
        sizes = []
        for vectors_path, ids_path in files:
            for path in (vectors_path, ids_path):
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: shard file missing although {MANIFEST_NAME} "
                                            f"says encoding is complete")
            shape = np.load(vectors_path, mmap_mode="r").shape
            if len(shape) != 2 or shape[1] != dim:
                raise ValueError(f"{vectors_path}: vectors of shape {shape}, expected [n, {dim}]")
            sizes.append(shape[0])
        n = sum(sizes)
        index = cls._empty(config, dim, n, manifest["encoder"])
        if not index._searcher.is_trained:
            index._searcher.train(_sample_shards([v for v, _ in files], sizes, config.train_size))
        for vectors_path, ids_path in tqdm(files, desc=f"indexing {shard_dir.name}", unit="shard",
                                           disable=not progress):
            vectors, ids = np.load(vectors_path, mmap_mode="r"), np.load(ids_path)
            if ids.shape != (len(vectors),):
                raise ValueError(f"{ids_path}: {ids.shape} ids for {len(vectors)} vectors")
            index._add(vectors, ids)
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` (scores float32 [n, k], passage ids int64 [n, k]), best first.

        Missing results (k above the index size, or an approximate search finding fewer)
        have id -1 and score -inf.
        """
        queries = np.asarray(queries)
        if queries.ndim != 2:
            raise ValueError(f"queries must be 2-D [n, dim], got shape {queries.shape}")
        if queries.shape[1] != self.dim:
            raise ValueError(f"query dim {queries.shape[1]} != index dim {self.dim}")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        scores, positions = self._searcher.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        found = positions >= 0
        ids = np.full(positions.shape, -1, dtype=np.int64)
        ids[found] = self._ids[positions[found]]
        return np.where(found, scores, -np.inf).astype(np.float32), ids

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write index.faiss, ids.npy and index_meta.json (last) into folder `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / META_FILE).unlink(missing_ok=True)  # a half-finished save must not load as the old one
        index_path = path / INDEX_FILE
        tmp = index_path.with_name(f".{INDEX_FILE}.{os.getpid()}.tmp")
        try:
            faiss.write_index(self._searcher.cpu_index(), str(tmp))
            os.replace(tmp, index_path)
        finally:
            tmp.unlink(missing_ok=True)
        _save_npy(path / IDS_FILE, self._ids)
        _write_json(path / META_FILE, {
            "format": _FORMAT, "encoder": self.encoder_name, "dim": self.dim, "metric": self.config.metric,
            "count": len(self), "index_type": self.config.index_type, "config": dataclasses.asdict(self.config),
            "ids_sha256": _sha256(self._ids), "index_file_bytes": index_path.stat().st_size,
            "faiss_version": faiss.__version__})
        return path

    @classmethod
    def load(cls, path: str | Path, expected_dim: int | None = None, **overrides: Any) -> "Index":
        """Load a folder written by `save`, checking it is whole and consistent.

        `overrides` may change the search-time fields (`SEARCH_FIELDS`) of the saved config;
        `expected_dim` is the query encoder's dim.
        """
        path = Path(path)
        unknown = set(overrides) - set(SEARCH_FIELDS)
        if unknown:
            raise TypeError(f"Index.load can override only {', '.join(SEARCH_FIELDS)}; got {sorted(unknown)}")
        meta_path, index_path, ids_path = path / META_FILE, path / INDEX_FILE, path / IDS_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not found (not an index folder written by Index.save?)")
        meta = _read_json(meta_path)
        missing = [k for k in ("dim", "count", "config", "ids_sha256", "index_file_bytes") if k not in meta]
        if missing:
            raise ValueError(f"{meta_path}: lacks {', '.join(missing)}")
        dim, count = int(meta["dim"]), int(meta["count"])
        if expected_dim is not None and expected_dim != dim:
            raise ValueError(f"index dim {dim} != encoder dim {expected_dim} ({path})")
        try:
            config = IndexConfig(**{**meta["config"], **overrides})
        except TypeError as e:
            raise ValueError(f"{meta_path}: bad config ({e})") from None

        try:
            ids = np.load(ids_path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{ids_path}: not found") from None
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{ids_path}: cannot read ids (truncated or corrupt?): {e}") from None
        if ids.shape != (count,) or ids.dtype != np.int64 or _sha256(ids) != meta["ids_sha256"]:
            raise ValueError(f"{ids_path}: does not match {META_FILE} (expected {count} int64 ids with "
                             f"sha256 {meta['ids_sha256']}); the folder is corrupt or mixed")

        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path}: not found")
        size = index_path.stat().st_size
        if size != meta["index_file_bytes"]:
            raise ValueError(f"{index_path}: {size} bytes, but {META_FILE} says {meta['index_file_bytes']} "
                             f"(truncated or replaced)")
        try:
            cpu_index = faiss.read_index(str(index_path))
        except RuntimeError as e:
            raise ValueError(f"{index_path}: cannot read the FAISS index (corrupt?): {e}") from None
        if cpu_index.ntotal != count or cpu_index.d != dim:
            raise ValueError(f"{index_path}: holds {cpu_index.ntotal} vectors of dim {cpu_index.d}, but "
                             f"{META_FILE} says {count} of dim {dim}")
        if cpu_index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{index_path}: not an inner-product index")

        backend, device = _placement(config)
        if backend == "torch":
            searcher: _FaissSearcher | _TorchSearcher = _TorchSearcher.from_flat(cpu_index, device,
                                                                                  config.gpu_float16)
        else:
            searcher = _FaissSearcher(cpu_index, config, gpu=device == "gpu")
        return cls(searcher, config, dim, ids, meta.get("encoder"))


def _sample_shards(vector_files: Sequence[Path], sizes: Sequence[int], train_size: int) -> np.ndarray:
    """Up to `train_size` rows drawn uniformly without replacement across the shards (float32)."""
    n = sum(sizes)
    picked = np.sort(np.random.default_rng(_TRAIN_SEED).choice(n, min(n, train_size), replace=False))
    parts, start = [], 0
    for path, size in zip(vector_files, sizes):
        rows = picked[(picked >= start) & (picked < start + size)] - start
        if len(rows):
            parts.append(np.asarray(np.load(path, mmap_mode="r")[rows], dtype=np.float32))
        start += size
    return np.ascontiguousarray(np.concatenate(parts))
