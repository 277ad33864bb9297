"""BM25 over a passage file (bm25s, English Snowball stemmer, English stopwords): passage hits
and page-level rankings, built once per passage file and memory-mapped on load.

bm25s tokenises and stores the index; the matrix is built in blocks of numpy arrays
(`kilt.bm25_index`) and searched by `kilt.bm25_topk` (numba on all cores where numba imports,
else numpy; the same hits either way). bm25s is imported with jax hidden (`kilt._bm25s`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import Stemmer
from tqdm.auto import tqdm

from safeio.atomic import atomic_directory

from . import bm25_topk
from ._bm25s import Tokenizer, bm25s
from .bm25_index import build_matrix
from .digest import cache_root
from .hits import PASSAGES_PER_PAGE, Hit, SearchBackend, read_hits, search_pages
from .passages import PassageStore, iter_passage_file
from .tasks import check_queries

CONFIG_FILE = "kilt_bm25.json"
#: the bm25s model's own backend (it never searches here: `kilt.bm25_topk` does)
BACKEND = "numpy"
#: saved indexes at least this large (their score array) are memory-mapped by default
MMAP_BYTES = 256 << 20
#: what changes when the saved index format does (part of the cache folder's name)
CACHE_FORMAT = 2


@dataclass(frozen=True)
class BM25Config:
    """Scoring and text-processing settings; k1/b default to Anserini's passage values."""

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"  # robertson | lucene | atire (`kilt.bm25_index.METHODS`)
    stemmer: str = "english"
    stopwords: str = "en"
    #: passages first asked for per wanted page by search_pages (it asks deeper when short)
    pages_depth: int = PASSAGES_PER_PAGE


class BM25Retriever:
    """BM25 over the passages of a `PassageStore`, each indexed as its page title followed by its
    words; a `SearchBackend` whose hits are read from the store.

    `backend` (auto | numba | numpy) and `threads` (0: all usable cores) only change speed."""

    def __init__(self, model: bm25s.BM25, store: PassageStore, config: BM25Config, backend: str = "auto",
                 threads: int = 0):
        if model.scores["num_docs"] != len(store):
            raise ValueError(f"the BM25 index holds {model.scores['num_docs']} passages but {store.path} has "
                             f"{len(store)}: index and passage file do not belong together")
        self.model = model
        self.store = store
        self.config = config
        self.backend = bm25_topk.available_backend() if backend == "auto" else backend
        self.threads = threads
        self._stemmer = Stemmer.Stemmer(config.stemmer)

    def __len__(self) -> int:
        return len(self.store)

    @classmethod
    def build(cls, store: PassageStore, config: BM25Config | None = None, progress: bool = False,
              backend: str = "auto", threads: int = 0) -> "BM25Retriever":
        """Index the store's passage file in one streaming pass, in blocks of numpy arrays
        (`kilt.bm25_index`): neither texts nor per-passage token lists are kept."""
        config = config or BM25Config()
        texts = (f"{p.title} {p.text}" for p in tqdm(iter_passage_file(store.path), total=len(store),
                                                     desc="BM25 indexing", unit=" passages",
                                                     disable=not progress))
        tokenizer = Tokenizer(stemmer=Stemmer.Stemmer(config.stemmer), stopwords=config.stopwords)
        if not len(store):
            raise ValueError(f"{store.path}: no passages to index")
        scores, vocab = build_matrix(texts, tokenizer, k1=config.k1, b=config.b, method=config.method)
        model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method, backend=BACKEND)
        model.scores, model.vocab_dict, model.nonoccurrence_array = scores, vocab, None
        model.unique_token_ids_set = set(vocab.values())
        return cls(model, store, config, backend=backend, threads=threads)

    def search(self, queries: Sequence[str], task: str | None = None, k: int = 100) -> list[list[Hit]]:
        """Top-``k`` passage hits per query, best first (lower passage id first among equal
        scores); ``task`` is ignored (BM25 has no prompts).

        Passages sharing no term with the query (score 0) are left out, so a query may get
        fewer than ``k`` hits, or none.
        """
        return [read_hits(self.store, [pid for pid, _ in ranked], [score for _, score in ranked])
                for ranked in self._search_docs(queries, k)]

    def search_pages(self, queries: Sequence[str], task: str | None = None, k: int = 100) -> list[list[str]]:
        """Top-``k`` distinct pages per query, each ranked by its best passage (`kilt.hits`'s page
        contract; the search starts at ``pages_depth * k`` passages)."""
        return search_pages(self, queries, k, task=task, depth=self.config.pages_depth * k)

    def _search_docs(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """(passage id, score) per query, best first: a document's position is its passage id."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = check_queries(queries)
        if not queries:
            return []
        tokens = bm25s.tokenize(queries, stopwords=self.config.stopwords, stemmer=self._stemmer,
                                return_ids=False, show_progress=False)
        ids = [np.array(self.model.get_tokens_ids(q), dtype=np.int64) for q in tokens]
        scores = self.model.scores
        ranked = bm25_topk.top_k(ids, (scores["data"], scores["indices"], scores["indptr"]), len(self), k,
                                 backend=self.backend, threads=self.threads)
        return [[(int(d), float(s)) for d, s in zip(docs, values)] for docs, values in ranked]

    def save(self, path: str | Path) -> None:
        """Write the index to directory ``path``, replacing it only once complete; the config
        file also records the search backend of this machine (informative only)."""
        with atomic_directory(path) as tmp:
            self.model.save(tmp, show_progress=False)
            record = {**asdict(self.config), "search_backend": self.backend, "format": CACHE_FORMAT}
            (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=1))

    @classmethod
    def load(cls, path: str | Path, store: PassageStore, mmap: bool | None = None, backend: str = "auto",
             threads: int = 0) -> "BM25Retriever":
        """Load an index written by :meth:`save` over ``store``'s passage file; ``mmap`` leaves
        the score matrix on disk (None: when its score array is >= `MMAP_BYTES`)."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a saved BM25Retriever (no {CONFIG_FILE})")
        saved = json.loads((path / CONFIG_FILE).read_text())
        config = BM25Config(**{f.name: saved[f.name] for f in fields(BM25Config) if f.name in saved})
        if mmap is None:
            mmap = (path / "data.csc.index.npy").stat().st_size >= MMAP_BYTES
        model = bm25s.BM25.load(path, mmap=mmap, show_progress=False, backend=BACKEND)
        return cls(model, store, config, backend=backend, threads=threads)

    @classmethod
    def cached(cls, store: PassageStore, cache_dir: str | Path | None = None, config: BM25Config | None = None,
               progress: bool = False, backend: str = "auto", threads: int = 0) -> "BM25Retriever":
        """The index of ``store``'s passage file, built once into `cached_index_dir` (keyed by
        the file's content digest and the config) and loaded from there afterwards."""
        config = config or BM25Config()
        folder = cached_index_dir(store, cache_dir, config)
        if not (folder / CONFIG_FILE).is_file():
            cls.build(store, config, progress=progress).save(folder)
        return cls.load(folder, store, backend=backend, threads=threads)


def cached_index_dir(store: PassageStore, cache_dir: str | Path | None = None,
                     config: BM25Config | None = None) -> Path:
    """``cache_root(cache_dir)/bm25/<passage file digest>-<config digest>``: one folder per
    passage-file content and BM25 settings, whatever the file's name or path."""
    settings = json.dumps({**asdict(config or BM25Config()), "format": CACHE_FORMAT}, sort_keys=True)
    config_key = hashlib.blake2b(settings.encode("utf-8"), digest_size=8).hexdigest()
    content = store.digest.split(":", 1)[1][:32]
    return cache_root(cache_dir) / "bm25" / f"{content}-{config_key}"


# --------------------------------------------------------------------------- mining in shards
def shard_slice(n: int, shard_index: int, num_shards: int) -> slice:
    """The contiguous share of ``n`` queries of shard ``shard_index`` of ``num_shards``; shards
    in index order cover 0..n-1 once, so results merge by concatenation in that order."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index} of {num_shards}")
    return slice(shard_index * n // num_shards, (shard_index + 1) * n // num_shards)


def search_shard(backend: SearchBackend, queries: Sequence[str], k: int, shard_index: int, num_shards: int,
                 task: str | None = None, batch_size: int = 4096) -> list[list[Hit]]:
    """Hits of this shard's share of ``queries`` (`shard_slice`), searched in batches, so that
    ``num_shards`` processes each mine a share of one query list."""
    share = list(queries[shard_slice(len(queries), shard_index, num_shards)])
    return [hits for start in range(0, len(share), batch_size)
            for hits in backend.search(share[start:start + batch_size], task=task, k=k)]


def merge_shards(shards: Sequence[Sequence[list[Hit]]]) -> list[list[Hit]]:
    """The results of shards 0, 1, ... (`search_shard`) as one list in query order."""
    return [hits for shard in shards for hits in shard]
