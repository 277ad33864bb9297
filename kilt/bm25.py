"""BM25 over a passage file (bm25s, English Snowball stemmer, English stopwords): passage hits
and page-level rankings.

bm25s runs on its numpy backend, and is imported with jax hidden: bm25s.selection imports jax
when it is installed, and jax then claims most of a GPU's memory.
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import Stemmer
from tqdm.auto import tqdm

from safeio.atomic import atomic_directory

from .hits import PASSAGES_PER_PAGE, Hit, read_hits, search_pages
from .passages import PassageStore, iter_passage_file


@contextmanager
def _jax_hidden() -> Iterator[None]:
    """Make `import jax` fail inside the block, unless jax is imported already."""
    hide = "jax" not in sys.modules
    if hide:
        sys.modules["jax"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if hide and sys.modules.get("jax", 0) is None:
            del sys.modules["jax"]


with _jax_hidden():
    import bm25s
    from bm25s.tokenization import Tokenized, Tokenizer

CONFIG_FILE = "kilt_bm25.json"
#: bm25s scoring and top-k selection backend: numpy needs neither numba nor jax
BACKEND = "numpy"


@dataclass(frozen=True)
class BM25Config:
    """Scoring and text-processing settings; k1/b default to Anserini's passage values."""

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stemmer: str = "english"
    stopwords: str = "en"
    #: passages first asked for per wanted page by search_pages (it asks deeper when short)
    pages_depth: int = PASSAGES_PER_PAGE


class BM25Retriever:
    """BM25 over the passages of a `PassageStore`, each indexed as its page title followed by its
    words; a `SearchBackend` whose hits are read from the store."""

    def __init__(self, model: bm25s.BM25, store: PassageStore, config: BM25Config):
        if model.scores["num_docs"] != len(store):
            raise ValueError(f"the BM25 index holds {model.scores['num_docs']} passages but {store.path} has "
                             f"{len(store)}: index and passage file do not belong together")
        self.model = model
        self.store = store
        self.config = config
        self._stemmer = Stemmer.Stemmer(config.stemmer)

    def __len__(self) -> int:
        return len(self.store)

    @classmethod
    def build(cls, store: PassageStore, config: BM25Config | None = None,
              progress: bool = False) -> "BM25Retriever":
        """Index the store's passage file in one streaming pass; only token ids are kept, not
        text (bm25s holds all documents' token ids in memory while indexing)."""
        config = config or BM25Config()
        texts = (f"{p.title} {p.text}" for p in tqdm(iter_passage_file(store.path), total=len(store),
                                                     desc="BM25 tokenizing", unit=" passages",
                                                     disable=not progress))
        tokenizer = Tokenizer(stemmer=Stemmer.Stemmer(config.stemmer), stopwords=config.stopwords)
        token_ids = list(tokenizer.streaming_tokenize(texts))
        if not token_ids:
            raise ValueError(f"{store.path}: no passages to index")
        model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method, backend=BACKEND)
        model.index(Tokenized(ids=token_ids, vocab=tokenizer.get_vocab_dict()), show_progress=progress)
        return cls(model, store, config)

    def search(self, queries: Sequence[str], task: str | None = None, k: int = 100) -> list[list[Hit]]:
        """Top-``k`` passage hits per query, best first; ``task`` is ignored (BM25 has no prompts).

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
        if isinstance(queries, str):
            raise TypeError("queries must be a sequence of strings, not one string")
        if not queries:
            return []
        tokens = bm25s.tokenize(list(queries), stopwords=self.config.stopwords, stemmer=self._stemmer,
                                return_ids=False, show_progress=False)
        docs, scores = self.model.retrieve(tokens, k=min(k, len(self)), show_progress=False,
                                           backend_selection=BACKEND)
        return [[(int(d), float(s)) for d, s in zip(row_d, row_s) if s > 0]
                for row_d, row_s in zip(docs, scores)]

    def save(self, path: str | Path) -> None:
        """Write the index to directory ``path``, replacing it only once complete."""
        with atomic_directory(path) as tmp:
            self.model.save(tmp, show_progress=False)
            (tmp / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=1))

    @classmethod
    def load(cls, path: str | Path, store: PassageStore, mmap: bool = False) -> "BM25Retriever":
        """Load an index written by :meth:`save` over ``store``'s passage file; ``mmap`` leaves
        the score matrix on disk."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a saved BM25Retriever (no {CONFIG_FILE})")
        config = BM25Config(**json.loads((path / CONFIG_FILE).read_text()))
        model = bm25s.BM25.load(path, mmap=mmap, show_progress=False, backend=BACKEND)
        return cls(model, store, config)
