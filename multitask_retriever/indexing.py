"""A FAISS (or exact torch) passage index over vectors from `encoding.encode_corpus` shards.

An `Index` maps FAISS's internal positions to passage ids through an int64 array kept (and
saved) beside the FAISS index, so every index type searches and returns passage ids alike.

An index built from shards records what its vectors came from (`IndexSource`): the passage
file's content digest and passage count and the encoder's files' digest, so that it refuses
(`IndexMismatchError`) another passage file or encoder, whatever their sizes, names or paths.
Indexes saved before these digests (format 1) still load; they are checked as then, by the
passage file's size and the encoder's name, with a warning to re-encode and rebuild them.

At scale (KILT's 22-36M passages): `index_type="auto"` keeps a flat index while its vectors fit
`max_flat_bytes` (or, on CUDA, the GPU's free memory in float16) and builds IVF-PQ beyond;
IVF training always samples at least 39 vectors per cell; `refine` re-scores IVF-PQ's
candidates exactly from stored float vectors; `Index.load(..., mmap=True)` maps the index
file instead of reading it into RAM.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from safeio.atomic import atomic_directory, write_json
from safeio.text import read_json_object

from .config import check_fields
from .devices import resolve_device
from .encoding import MANIFEST_NAME, read_manifest, save_npy, shard_paths

if TYPE_CHECKING:
    from kilt.passages import PassageStore

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
META_FILE = "index_meta.json"
# what an index folder may hold: its files, and temporary files of earlier (killed) saves
_INDEX_NAMES = re.compile(r"(\.)?(index\.faiss|ids\.npy|index_meta\.json)(?(1)\..+\.tmp)")
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("faiss", "torch")
# IndexConfig fields that only change how a built index is searched (allowed in Index.load)
SEARCH_FIELDS = ("device", "backend", "nprobe", "hnsw_ef_search", "gpu_float16")
_FORMAT = 2  # 2: IndexSource's digests and passage count
_TRAIN_SEED = 0
_ADD_ROWS = 65_536  # rows converted to float32 and added at a time
_TORCH_SCORE_ELEMENTS = 1 << 27  # query x passage scores held at once by the torch backend
MIN_TRAIN_PER_CELL = 39  # faiss's minimum of training vectors per k-means centroid
DEFAULT_TRAIN_SIZE = 300_000
_GPU_FLAT_SHARE = 0.75  # of the GPUs' free memory a flat index may fill (the rest: queries, scores)


@dataclass
class IndexConfig:
    """What kind of index to build over passage vectors, and where and how to search it."""

    index_type: str = field(default="auto", metadata={
        "help": "auto | flat | hnsw | ivf | ivfpq; auto: flat while the vectors fit max_flat_bytes (on CUDA: "
                "the GPU's free memory), else ivfpq"})
    metric: str = field(default="ip", metadata={"help": "similarity; only inner product (ip) is supported"})
    device: str = field(default="auto", metadata={
        "help": "auto | cpu | cuda; auto uses GPUs when faiss (or, for flat, torch) can"})
    backend: str = field(default="faiss", metadata={
        "help": "faiss | torch; torch is exact flat search by matmul + top-k, for GPUs without faiss-gpu"})
    hnsw_m: int = field(default=32, metadata={"help": "HNSW neighbours per node", "min": 1})
    hnsw_ef_search: int = field(default=128, metadata={"help": "HNSW search beam width", "min": 1})
    hnsw_ef_construction: int = field(default=200, metadata={"help": "HNSW build beam width", "min": 1})
    ivf_nlist: int | None = field(default=None, metadata={
        "help": "IVF cells; unset: about 4*sqrt(n), at most n/39 and 65536", "min": 1})
    nprobe: int = field(default=32, metadata={"help": "IVF cells visited per query", "min": 1})
    pq_m: int | None = field(default=None, metadata={
        "help": "PQ subquantisers, must divide dim; unset: about dim/8", "min": 1})
    pq_bits: int = field(default=8, metadata={"help": "bits per PQ code", "min": 1, "max": 16})
    train_size: int | None = field(default=None, metadata={
        "help": "vectors sampled to train IVF / PQ; unset: max(300000, 39*ivf_nlist), at most all; "
                "a sample of fewer than 39 per IVF cell is refused", "min": 1})
    gpu_float16: bool = field(default=True, metadata={
        "help": "store vectors as float16 on GPU (faiss-gpu; exact torch search re-scores its top k in float32)"})
    max_flat_bytes: int = field(default=32 * 2**30, metadata={
        "help": "largest float32 vectors (bytes) index_type=auto keeps flat on CPU; above it ivfpq", "min": 1})
    refine: int = field(default=0, metadata={
        "help": "ivfpq: re-score refine*k candidates exactly against stored float32 vectors (4*dim more bytes "
                "a vector; load with mmap to keep them on disk); 0: off", "min": 0})

    def __post_init__(self) -> None:
        check_fields(self)
        for name, allowed in (("index_type", INDEX_TYPES), ("metric", ("ip",)), ("device", DEVICES),
                              ("backend", BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.backend == "torch" and self.index_type not in ("auto", "flat"):
            raise ValueError(f"the torch backend searches exactly: index_type must be 'flat', "
                             f"got {self.index_type!r}")
        if self.refine and self.index_type not in ("auto", "ivfpq"):
            raise ValueError(f"refine re-scores IVF-PQ's candidates: index_type must be 'ivfpq' (or 'auto'), "
                             f"got {self.index_type!r}")


def default_nlist(n: int) -> int:
    """About 4*sqrt(n) IVF cells, with at least 39 training vectors per cell and at most 65536."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39, 65536)))


def default_train_size(n: int, nlist: int) -> int:
    """Vectors sampled to train `nlist` IVF cells on `n`: 300000, or 39 per cell where that is
    more, and at most all `n`."""
    return min(n, max(DEFAULT_TRAIN_SIZE, MIN_TRAIN_PER_CELL * nlist))


def train_sample_size(n: int, nlist: int, train_size: int | None) -> int:
    """The IVF / PQ training sample for `n` vectors in `nlist` cells: `train_size` (at most `n`),
    or unset `default_train_size`. An explicit `train_size` sampling fewer than 39 vectors per
    cell where the corpus has them is refused: k-means on fewer gives poor cells (faiss only warns)."""
    if train_size is None:
        return default_train_size(n, nlist)
    wanted = min(n, MIN_TRAIN_PER_CELL * nlist)
    if train_size < wanted:
        raise ValueError(f"train_size={train_size} samples {train_size // nlist} vectors per IVF cell of "
                         f"{nlist}; at least {MIN_TRAIN_PER_CELL} are needed: set train_size >= {wanted} "
                         f"(or leave it unset), or a smaller ivf_nlist")
    return min(n, train_size)


def _train_rows(config: IndexConfig, n: int) -> int:
    """`train_sample_size` for `config` on `n` vectors. An explicit ivf_nlist above n/39 (a
    corpus too small for its cells) is warned about, not refused, so tiny corpora can still be
    indexed with a few cells."""
    nlist = _nlist(config, n)
    if config.ivf_nlist is not None and n < MIN_TRAIN_PER_CELL * nlist:
        logger.warning("ivf_nlist=%d cells get %d of the %d vectors each to train on, below faiss's minimum of "
                       "%d; set ivf_nlist <= %d (or leave it unset) for well-trained cells", nlist, n // nlist, n,
                       MIN_TRAIN_PER_CELL, max(1, n // MIN_TRAIN_PER_CELL))
    return train_sample_size(n, nlist, config.train_size)


def auto_index_type(n: int, dim: int, device: str, max_flat_bytes: int, gpu_free_bytes: int = 0,
                    float16: bool = True) -> str:
    """'flat' or 'ivfpq' for `n` vectors of `dim` on `device` (a torch device name): on CUDA flat
    while the vectors (float16 if `float16`) fill at most 3/4 of the GPUs' free memory, else on
    CPU flat while their float32 bytes are at most `max_flat_bytes`."""
    if device.startswith("cuda"):
        return "flat" if n * dim * (2 if float16 else 4) <= _GPU_FLAT_SHARE * gpu_free_bytes else "ivfpq"
    return "flat" if n * dim * 4 <= max_flat_bytes else "ivfpq"


def _gpu_free_bytes(device: str) -> int:
    """Free memory of the GPUs a flat index on `device` would use: all of them under faiss-gpu
    (it shards across them), else the one torch device."""
    if (faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0) > 0:
        return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    return int(torch.cuda.mem_get_info(torch.device(device))[0])


def resolve_index_type(config: IndexConfig, n: int, dim: int) -> IndexConfig:
    """`config`, with index_type 'auto' replaced by the type `auto_index_type` picks for `n`
    vectors of `dim` (flat for the torch backend, which searches only flat); refine is kept
    for ivfpq only (a flat index is exact)."""
    if config.index_type != "auto":
        return config
    if config.backend == "torch":
        chosen = "flat"
    else:
        device = resolve_device(config.device)
        gpu_free = _gpu_free_bytes(device) if device.startswith("cuda") else 0
        chosen = auto_index_type(n, dim, device, config.max_flat_bytes, gpu_free, config.gpu_float16)
    logger.info("index_type=auto: %s for %d vectors of dim %d", chosen, n, dim)
    return dataclasses.replace(config, index_type=chosen, refine=config.refine if chosen == "ivfpq" else 0)


def _nlist(config: IndexConfig, n: int) -> int:
    return config.ivf_nlist or default_nlist(n)


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
    nlist = _nlist(config, n)
    needed = max(nlist, 2 ** config.pq_bits if config.index_type == "ivfpq" else 0)
    if n < needed:
        raise ValueError(f"an {config.index_type} index of {nlist} cells needs at least {needed} vectors to train "
                         f"on, got {n}; use a flat index or a smaller ivf_nlist")
    if config.index_type == "ivf":
        return faiss.index_factory(dim, f"IVF{nlist},Flat", ip)
    pq_m = config.pq_m or default_pq_m(dim)
    if dim % pq_m:
        raise ValueError(f"pq_m={pq_m} does not divide the vector dim {dim}")
    # "np": no polysemous training, which index_factory would otherwise run and we never use;
    # "RFlat": float32 copies of the vectors that re-score the candidates (IndexRefineFlat)
    return faiss.index_factory(dim, f"IVF{nlist},PQ{pq_m}x{config.pq_bits}np{',RFlat' if config.refine else ''}", ip)


def _reserve(index: faiss.Index, n: int) -> None:
    """Room for `n` vectors in a flat index (or IVF-PQ's exact refine copy) before any is added:
    added in chunks, its storage would grow by doubling, each time copied, up to twice the index
    size at the peak (153 GB instead of 77 GB for 25M float32 vectors of 768 dimensions)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.refine_index)
    if isinstance(index, faiss.IndexFlatCodes) and index.ntotal == 0:
        index.codes.resize(n * index.code_size)  # allocates once; shrinking keeps the capacity
        index.codes.resize(0)


def _set_search_params(index: faiss.Index, config: IndexConfig) -> None:
    if config.index_type == "hnsw":
        index.hnsw.efSearch = config.hnsw_ef_search
    elif config.index_type in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = config.nprobe
    if config.refine:
        faiss.downcast_index(index).k_factor = float(config.refine)


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
            self.index = _with_base_moved(cpu_index, lambda base: faiss.index_cpu_to_all_gpus(base, co=options))
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
        return _with_base_moved(self.index, faiss.index_gpu_to_cpu) if self.gpu else self.index


def _with_base_moved(index: faiss.Index, move: Any) -> faiss.Index:
    """`move(index)`; for an IndexRefine, its base index moved and its float vectors kept where
    they are (in RAM or memory-mapped, not on the GPU), in a new IndexRefine of the same k_factor."""
    refine = faiss.downcast_index(index)
    if not isinstance(refine, faiss.IndexRefine):
        return move(index)
    base = move(refine.base_index)
    moved = faiss.IndexRefine(base, refine.refine_index)
    moved.k_factor = refine.k_factor
    moved.referenced_objects = [base, index]  # `index` owns the float vectors
    return moved


class _TorchSearcher:
    """Exact inner-product search by matmul + top-k, in query batches sized to the memory at hand.

    On CUDA the vectors are kept in float16 by default (`IndexConfig.gpu_float16`); the top k
    found by half-precision scores are then re-scored in float32, so rankings equal float32
    search except between scores that tie within half precision.
    """

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

    def _memory_budget(self) -> int:
        """Bytes one query batch may take: half the free CUDA memory (torch's cached blocks
        included), or a fixed share on CPU."""
        if self.device.type == "cuda":
            cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            return (torch.cuda.mem_get_info(self.device)[0] + cached) // 2
        return _TORCH_SCORE_ELEMENTS * 4

    def _batch_shape(self, n_queries: int, k: int) -> tuple[int, int]:
        """(queries per batch, stored vectors per matmul) that fit the memory budget."""
        size = torch.empty((), dtype=self.dtype).element_size()
        per_score = 2 * size  # the scores and top-k's working copy
        per_query = self.dim * (4 + size) + k * (2 * per_score + 16)
        if self.dtype != torch.float32:
            per_query += k * self.dim * (size + 4)  # the candidates re-scored in float32
        budget = self._memory_budget()
        longest = max((len(c) for c in self.chunks), default=1)
        rows = max(1, min(longest, (budget - per_query) // per_score))
        return max(1, min(n_queries, budget // (rows * per_score + per_query))), rows

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.empty((len(queries), k), dtype=np.float32)
        positions = np.empty((len(queries), k), dtype=np.int64)
        batch, rows = self._batch_shape(len(queries), k)
        for start in range(0, len(queries), batch):
            q = torch.from_numpy(queries[start : start + batch]).to(self.device)
            top, pos = self._search_batch(q, k, rows)
            scores[start : start + len(q)], positions[start : start + len(q)] = top.cpu().numpy(), pos.cpu().numpy()
        return scores, positions

    def _search_batch(self, q32: torch.Tensor, k: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (float32 scores, positions) of float32 queries on the device, best first."""
        q = q32.to(self.dtype)
        best_scores = torch.full((len(q), k), -math.inf, dtype=self.dtype, device=self.device)
        best_pos = torch.full((len(q), k), -1, dtype=torch.int64, device=self.device)
        offset = 0
        for chunk in self.chunks:
            for start in range(0, len(chunk), rows):
                scores = q @ chunk[start : start + rows].T
                top, pos = scores.topk(min(k, scores.shape[1]), dim=1)
                merged = torch.cat([best_scores, top], dim=1)
                order = merged.topk(k, dim=1).indices
                best_scores = merged.gather(1, order)
                best_pos = torch.cat([best_pos, pos + offset + start], dim=1).gather(1, order)
            offset += len(chunk)
        if self.dtype == torch.float32:
            return best_scores, best_pos
        exact = self._rescore(q32, best_pos)
        order = exact.argsort(dim=1, descending=True, stable=True)
        return exact.gather(1, order), best_pos.gather(1, order)

    def _rescore(self, q32: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """float32 inner products of the queries with the stored vectors at `positions` (-inf at -1)."""
        vectors = torch.zeros((*positions.shape, self.dim), dtype=self.dtype, device=self.device)
        offset = 0
        for chunk in self.chunks:
            inside = (positions >= offset) & (positions < offset + len(chunk))
            vectors[inside] = chunk[positions[inside] - offset]
            offset += len(chunk)
        exact = torch.einsum("qd,qkd->qk", q32, vectors.float())
        return exact.masked_fill(positions < 0, -math.inf)

    def cpu_index(self) -> faiss.Index:
        index = faiss.IndexFlatIP(self.dim)
        for chunk in self.chunks:
            index.add(chunk.float().cpu().numpy())
        return index


def _sha256(ids: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(ids, dtype="<i8"))).hexdigest()


class IndexMismatchError(ValueError):
    """An index used with a passage file or an encoder other than those its vectors came from."""


@dataclass(frozen=True)
class IndexSource:
    """What an index's vectors were encoded from; None where unknown (vectors given to `build`)."""

    encoder: str | None = None  # the name or folder the encoder was loaded from
    encoder_digest: str | None = None  # `encoding.model_fingerprint` of its files
    passage_file: str | None = None  # the passage file's path when it was encoded
    passage_file_bytes: int | None = None
    passage_file_digest: str | None = None  # `kilt.digest.file_digest`
    passages: int | None = None  # the passage file's passage count


def _short(digest: str) -> str:
    """A digest shortened for messages: its algorithm and first 16 hex digits."""
    return digest[:digest.index(":") + 17] + "..."


def _same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def _checked_finite(vectors: np.ndarray, where: str | Path, rows: Sequence[int], fix: str = "") -> np.ndarray:
    """`vectors` as contiguous float32, refused (naming `where` and the row of the first bad one,
    `rows` numbering them) if any value is NaN or infinite: FAISS would index such a vector but
    never return it, so its passage would silently vanish from results."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise ValueError(f"{where}: vector {rows[int(np.flatnonzero(bad)[0])]} is not finite (NaN or inf)"
                         f"{'; ' + fix if fix else ''}")
    return vectors


def _redo_shard(path: Path) -> str:
    """What to do about a corrupt shard (`path` one of its files): its vectors file marks it
    finished, so without it encode redoes the shard, ids included."""
    return f"the shard is corrupt: delete {path.name.replace('.ids.npy', '.npy')} and run encode again to redo it"


class Index:
    """Passage vectors searchable by inner product; `search` returns passage ids.

    Create with `build`, `from_shards` or `load`.
    """

    def __init__(self, searcher: _FaissSearcher | _TorchSearcher, config: IndexConfig, dim: int,
                 ids: np.ndarray, source: IndexSource | None = None, path: Path | None = None):
        self._searcher = searcher
        self.config = config
        self.dim = dim
        self._ids = ids
        #: what the vectors came from (fields None where unknown)
        self.source = source or IndexSource()
        #: the folder it was loaded from (None for an index built here)
        self.path = path
        self._warned = False  # that it predates content digests

    @property
    def encoder_name(self) -> str | None:
        """The name or folder of the encoder the vectors came from (None where unknown)."""
        return self.source.encoder

    @property
    def passage_file_bytes(self) -> int | None:
        """The size of the passage file the vectors came from (None where unknown)."""
        return self.source.passage_file_bytes

    @classmethod
    def _empty(cls, config: IndexConfig, dim: int, n: int, source: IndexSource) -> "Index":
        backend, device = _placement(config)
        if backend == "torch":
            searcher: _FaissSearcher | _TorchSearcher = _TorchSearcher(dim, device, config.gpu_float16)
        else:
            cpu_index = _new_faiss_index(config, dim, n)
            if device != "gpu":
                _reserve(cpu_index, n)
            searcher = _FaissSearcher(cpu_index, config, gpu=device == "gpu")
        return cls(searcher, config, dim, np.empty(0, dtype=np.int64), source)

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

    def _add(self, vectors: np.ndarray, ids: np.ndarray, where: str | Path, fix: str = "") -> None:
        for start in range(0, len(vectors), _ADD_ROWS):
            chunk = vectors[start : start + _ADD_ROWS]
            self._searcher.add(_checked_finite(chunk, where, range(start, start + len(chunk)), fix))
        self._ids = np.concatenate([self._ids, ids.astype(np.int64, copy=False)])

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig | None = None, ids: Sequence[int] | None = None,
              encoder_name: str | None = None) -> "Index":
        """Index `vectors` [n, dim] (float32 or float16); `ids` default to 0..n-1. index_type
        'auto' is resolved (`resolve_index_type`): the result's config names the type built."""
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
        index = cls._empty(resolve_index_type(config, n, dim), dim, n, IndexSource(encoder=encoder_name))
        if not index._searcher.is_trained:
            rows = _train_rows(index.config, n)
            sample = np.sort(np.random.default_rng(_TRAIN_SEED).choice(n, rows, replace=False))
            index._searcher.train(_checked_finite(vectors[sample], "vectors", sample))
        index._add(vectors, ids_array, "vectors")
        return index

    @classmethod
    def from_shards(cls, shard_dir: str | Path, config: IndexConfig | None = None,
                    progress: bool = True) -> "Index":
        """Index a folder written by `encode_corpus`, one shard in memory at a time.

        Every shard is checked first: its ids int64, one per vector, each a passage of the
        file and in no other shard; its vectors finite (checked as they are added). A bad
        shard is a ValueError naming its file. IVF / PQ are first trained on up to
        `train_size` vectors sampled across all shards (`train_sample_size`); index_type
        'auto' is resolved to the type built (`resolve_index_type`), as by `build`.
        """
        config = config or IndexConfig()
        shard_dir = Path(shard_dir)
        manifest = read_manifest(shard_dir)
        dim, num_passages = int(manifest["dim"]), manifest.get("num_passages")
        if not isinstance(num_passages, int) or num_passages < 1:
            raise ValueError(f"{shard_dir / MANIFEST_NAME}: no passage count (num_passages); encode again")
        files = [shard_paths(shard_dir, i) for i in range(int(manifest["num_shards"]))]
        owner = np.full(num_passages, -1, dtype=np.int32)  # the shard holding each passage id
        shard_ids = [_checked_shard_ids(shard, files, dim, owner) for shard in range(len(files))]
        if sum(map(len, shard_ids)) != num_passages:
            raise ValueError(f"{shard_dir}: the shards hold {sum(map(len, shard_ids))} of the {num_passages} "
                             f"passages {MANIFEST_NAME} counts; encode again with overwrite")
        source = IndexSource(encoder=manifest["encoder"], encoder_digest=manifest.get("encoder_digest"),
                             passage_file=manifest.get("passage_file"),
                             passage_file_bytes=manifest.get("passage_file_bytes"),
                             passage_file_digest=manifest.get("passage_file_digest"), passages=num_passages)
        index = cls._empty(resolve_index_type(config, num_passages, dim), dim, num_passages, source)
        if not index._searcher.is_trained:
            index._searcher.train(_sample_shards([v for v, _ in files], [len(i) for i in shard_ids],
                                                 _train_rows(index.config, num_passages)))
        for (vectors_path, _), ids in tqdm(list(zip(files, shard_ids)), desc=f"indexing {shard_dir.name}",
                                           unit="shard", disable=not progress):
            index._add(_load_npy(vectors_path, mmap=True), ids, vectors_path, _redo_shard(vectors_path))
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` (scores float32 [n, k'], passage ids int64 [n, k']), best first, where k' is
        `k` clamped to the index size (so a huge k allocates nothing for passages that do not
        exist). Missing results (an approximate search finding fewer) have id -1 and score -inf.
        """
        queries = np.asarray(queries)
        if queries.ndim != 2:
            raise ValueError(f"queries must be 2-D [n, dim], got shape {queries.shape}")
        if queries.shape[1] != self.dim:
            raise ValueError(f"query dim {queries.shape[1]} != index dim {self.dim}")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        k = min(k, max(len(self), 1))
        scores, positions = self._searcher.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        found = positions >= 0
        ids = np.full(positions.shape, -1, dtype=np.int64)
        ids[found] = self._ids[positions[found]]
        return np.where(found, scores, -np.inf).astype(np.float32), ids

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write index.faiss, ids.npy and index_meta.json into folder `path`.

        They are written into a temporary folder that then replaces `path` whole, so an
        interrupted save leaves the previous index loadable; `path` may hold nothing else.
        """
        path = Path(path)
        if path.is_dir():
            foreign = sorted(p.name for p in path.iterdir() if not _INDEX_NAMES.fullmatch(p.name))
            if foreign:
                raise ValueError(f"{path}: holds files that are not part of an index ({', '.join(foreign[:3])}"
                                 f"{', ...' if len(foreign) > 3 else ''}); save an index to a folder of its own")
        with atomic_directory(path) as tmp:
            faiss.write_index(self._searcher.cpu_index(), str(tmp / INDEX_FILE))
            save_npy(tmp / IDS_FILE, self._ids)
            write_json(tmp / META_FILE, {
                "format": _FORMAT, **dataclasses.asdict(self.source),
                "dim": self.dim, "metric": self.config.metric,
                "count": len(self), "index_type": self.config.index_type,
                "config": dataclasses.asdict(self.config), "ids_sha256": _sha256(self._ids),
                "index_file_bytes": (tmp / INDEX_FILE).stat().st_size, "faiss_version": faiss.__version__})
        return path

    @classmethod
    def load(cls, path: str | Path, expected_dim: int | None = None, mmap: bool = False,
             **overrides: Any) -> "Index":
        """Load a folder written by `save`, checking it is whole and consistent.

        `overrides` may change the search-time fields (`SEARCH_FIELDS`) of the saved config;
        `expected_dim` is the query encoder's dim. `mmap`: map the index file's vectors and
        codes into memory instead of reading them (`read_faiss_index`), so a large index is paged
        in from disk as searches touch it; a GPU placement still copies them onto the GPU.
        """
        path = Path(path)
        unknown = set(overrides) - set(SEARCH_FIELDS)
        if unknown:
            raise TypeError(f"Index.load can override only {', '.join(SEARCH_FIELDS)}; got {sorted(unknown)}")
        meta_path, index_path, ids_path = path / META_FILE, path / INDEX_FILE, path / IDS_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not found (not an index folder written by Index.save?)")
        meta = read_json_object(meta_path)
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
        cpu_index = read_faiss_index(index_path, mmap)
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
        source = IndexSource(**{f.name: meta.get(f.name) for f in dataclasses.fields(IndexSource)})
        return cls(searcher, config, dim, ids, source, path)

    # ------------------------------------------------------------------ what the vectors came from
    def _name(self) -> str:
        return f"the index {self.path}" if self.path is not None else "the index"

    def _predates_digests(self) -> bool:
        """Whether this index was built from shards before indexes recorded content digests
        (format 1); warns once that it is then checked by size and name only."""
        old = self.source.passage_file_digest is None and self.source.passage_file_bytes is not None
        if old and not self._warned:
            self._warned = True
            logger.warning("%s predates content digests: its passage file is checked by size and its encoder by "
                           "name only; encode and index again to have them checked by content", self._name())
        return old

    def check_passages(self, store: PassageStore) -> None:
        """Refuse (`IndexMismatchError`) a passage store (`kilt.passages.PassageStore`) whose file
        is not the one the vectors were encoded from: by passage count and content digest; an
        index saved before digests by the file's byte size only, with a warning."""
        source, path = self.source, Path(store.path)
        refuse = (f"index and passage file do not belong together: give the passage file the index was "
                  f"built from{f' ({source.passage_file})' if source.passage_file else ''} or rebuild the "
                  f"index from this one (force to use them anyway)")
        if source.passage_file_digest is None:
            if not self._predates_digests():
                return  # built from vectors given in memory: nothing recorded to check
            size = path.stat().st_size
            if size != source.passage_file_bytes:
                raise IndexMismatchError(f"{path}: {size} bytes, but {self._name()} was built from a passage file "
                                         f"of {source.passage_file_bytes} bytes; {refuse}")
            return
        if len(store) != source.passages:
            raise IndexMismatchError(f"{path}: {len(store)} passages, but {self._name()} was built from a passage "
                                     f"file of {source.passages}; {refuse}")
        if store.digest != source.passage_file_digest:
            raise IndexMismatchError(f"{path}: content differs from the passage file {self._name()} was built from "
                                     f"(digest {_short(store.digest)}, recorded {_short(source.passage_file_digest)}); "
                                     f"{refuse}")

    def check_encoder(self, name_or_path: str | Path, digest: str | None) -> None:
        """Refuse (`IndexMismatchError`) an encoder other than the one the vectors came from: by
        the digest of its files (`encoding.model_fingerprint`) where both sides have one, so a
        copy elsewhere is accepted and a symlink to other weights refused; else by name or path."""
        source, name = self.source, str(name_or_path)
        refuse = (f"index and encoder do not belong together: use the encoder the index was built with "
                  f"({source.encoder}) or encode and index the passages with this one (force to use them anyway)")
        if source.encoder_digest is not None and digest is not None:
            if digest != source.encoder_digest:
                raise IndexMismatchError(f"{name}: its files differ from those of the encoder {self._name()} was "
                                         f"built with (digest {_short(digest)}, recorded "
                                         f"{_short(source.encoder_digest)}); {refuse}")
            return
        self._predates_digests()
        if source.encoder is not None and not _same_model(source.encoder, name):
            raise IndexMismatchError(f"{name}: not the encoder {self._name()} was built with ({source.encoder}); "
                                     f"{refuse}")


def read_faiss_index(path: Path, mmap: bool = False) -> faiss.Index:
    """The FAISS index in file `path`; with `mmap`, its arrays memory-mapped (read-only) rather
    than read: faiss's IO_FLAG_MMAP_IFC (flat, HNSW, IVF, IVF-PQ, refine) where this faiss has it, else
    IO_FLAG_MMAP, which maps only IVF lists. A file faiss cannot read is a ValueError naming it."""
    flag = 0
    if mmap:
        flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None) or faiss.IO_FLAG_MMAP
    try:
        return faiss.read_index(str(path), flag)
    except RuntimeError as e:
        how = " memory-mapped (this faiss may not map this index type; load without mmap)" if mmap else ""
        raise ValueError(f"{path}: cannot read the FAISS index{how} (corrupt?): {e}") from None


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """A shard's array; a missing file or one numpy cannot read is an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard file missing although {MANIFEST_NAME} says encoding is complete")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read it (truncated or corrupt?): {e}; {_redo_shard(path)}") from None


def _checked_shard_ids(shard: int, files: Sequence[tuple[Path, Path]], dim: int, owner: np.ndarray) -> np.ndarray:
    """The ids of shard number `shard` of `files`, checked against its vectors file (float
    [n, dim]): n int64 ids, each a passage of the file (0 <= id < len(owner)), none twice nor
    in an earlier shard (`owner`: each passage's shard, updated here). A fault names the file."""
    vectors_path, ids_path = files[shard]
    vectors = _load_npy(vectors_path, mmap=True)
    if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.dtype not in (np.float32, np.float16):
        raise ValueError(f"{vectors_path}: vectors of shape {vectors.shape} {vectors.dtype}, expected "
                         f"[n, {dim}] float32 or float16; {_redo_shard(vectors_path)}")
    ids, rows = _load_npy(ids_path), len(vectors)
    if ids.dtype != np.int64 or ids.shape != (rows,):
        raise ValueError(f"{ids_path}: {ids.shape} {ids.dtype} ids for {rows} vectors, expected ({rows},) int64; "
                         f"{_redo_shard(vectors_path)}")
    outside = (ids < 0) | (ids >= len(owner))
    if outside.any():
        raise ValueError(f"{ids_path}: passage id {int(ids[outside][0])} is out of range (the passage file has "
                         f"{len(owner)} passages); {_redo_shard(vectors_path)}")
    ordered = np.sort(ids)
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(twice):
        raise ValueError(f"{ids_path}: passage id {int(twice[0])} appears twice; {_redo_shard(vectors_path)}")
    taken = owner[ids] >= 0
    if taken.any():
        pid = int(ids[taken][0])
        raise ValueError(f"{ids_path}: passage id {pid} is also in {files[owner[pid]][1].name}; "
                         f"{_redo_shard(vectors_path)}")
    owner[ids] = shard
    return ids


def _sample_shards(vector_files: Sequence[Path], sizes: Sequence[int], train_size: int) -> np.ndarray:
    """Up to `train_size` rows drawn uniformly without replacement across the shards (float32,
    checked finite)."""
    n = sum(sizes)
    picked = np.sort(np.random.default_rng(_TRAIN_SEED).choice(n, min(n, train_size), replace=False))
    parts, start = [], 0
    for path, size in zip(vector_files, sizes):
        rows = picked[(picked >= start) & (picked < start + size)] - start
        if len(rows):
            parts.append(_checked_finite(_load_npy(path, mmap=True)[rows], path, rows, _redo_shard(path)))
        start += size
    return np.ascontiguousarray(np.concatenate(parts))
