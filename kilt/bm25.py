"""BM25 baseline over passages (bm25s, English Snowball stemmer, English stopwords), with
page-level rankings and KILT prediction files."""
from __future__ import annotations

import json
from array import array
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import bm25s
import numpy as np
import Stemmer
from bm25s.tokenization import Tokenized, Tokenizer
from tqdm.auto import tqdm

from .io import atomic_directory, iter_task_file, write_predictions
from .passages import Passage, page_ranking

CONFIG_FILE = "kilt_bm25.json"
PASSAGES_FILE = "kilt_passages.npy"


@dataclass(frozen=True)
class BM25Config:
    """Scoring and text-processing settings; k1/b default to Anserini's passage values."""

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stemmer: str = "english"
    stopwords: str = "en"
    #: passages asked for per wanted page, so that k distinct pages usually come out
    pages_depth: int = 4


class _DocPages:
    """Page id of each indexed document, by document position."""

    def __init__(self, pages: np.ndarray):
        self.pages = pages

    def page_id(self, pid: int) -> str:
        return self.pages[pid].decode("utf-8")


class BM25Retriever:
    """Sparse retriever: passage text is the page title followed by the passage words."""

    def __init__(self, model: bm25s.BM25, passages: np.ndarray, config: BM25Config):
        self.model = model
        self.config = config
        self._ids = passages["id"]
        self._pages = _DocPages(passages["page"])
        self._stemmer = Stemmer.Stemmer(config.stemmer)

    def __len__(self) -> int:
        return len(self._ids)

    @classmethod
    def build(cls, passages: Iterable[Passage], config: BM25Config | None = None,
              progress: bool = False) -> "BM25Retriever":
        """Index ``passages`` in one streaming pass; only token ids are kept, not text
        (bm25s holds all documents' token ids in memory while indexing)."""
        config = config or BM25Config()
        ids = array("q")
        pages: list[bytes] = []  # consecutive passages of a page share one bytes object

        def texts() -> Iterator[str]:
            for p in tqdm(passages, desc="BM25 tokenizing", unit=" passages", disable=not progress):
                ids.append(p.id)
                page = p.wikipedia_id.encode("utf-8")
                pages.append(pages[-1] if pages and pages[-1] == page else page)
                yield f"{p.title} {p.text}"

        tokenizer = Tokenizer(stemmer=Stemmer.Stemmer(config.stemmer), stopwords=config.stopwords)
        token_ids = list(tokenizer.streaming_tokenize(texts()))
        if not token_ids:
            raise ValueError("BM25Retriever.build: no passages to index")
        model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        model.index(Tokenized(ids=token_ids, vocab=tokenizer.get_vocab_dict()), show_progress=progress)
        width = max(len(p) for p in pages)
        table = np.empty(len(ids), dtype=[("id", np.int64), ("page", f"S{width}")])
        table["id"] = np.frombuffer(ids, dtype=np.int64)
        table["page"] = pages
        return cls(model, table, config)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` (passage id, score) per query, best first.

        Passages sharing no term with the query (score 0) are left out, so a query may get
        fewer than ``k`` hits, or none.
        """
        return [[(int(self._ids[d]), s) for d, s in ranked] for ranked in self._search_docs(queries, k)]

    def search_pages(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """Top-``k`` distinct pages per query, each ranked by its best passage.

        Asks for ``pages_depth * k`` passages, and for more (doubling) for the queries whose
        passages fill fewer than ``k`` pages while more scored passages may exist.
        """
        depth = self.config.pages_depth * k
        queries = list(queries)
        ranked = self._search_docs(queries, depth)
        pages = [page_ranking((d for d, _ in r), self._pages, k) for r in ranked]
        todo = [i for i, r in enumerate(ranked) if len(pages[i]) < k and len(r) == depth]
        while todo and depth < len(self):
            depth *= 2
            for i, r in zip(todo, self._search_docs([queries[i] for i in todo], depth)):
                pages[i] = page_ranking((d for d, _ in r), self._pages, k)
                ranked[i] = r
            todo = [i for i in todo if len(pages[i]) < k and len(ranked[i]) == min(depth, len(self))]
        return pages

    def _search_docs(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if isinstance(queries, str):
            raise TypeError("queries must be a sequence of strings, not one string")
        if not queries:
            return []
        tokens = bm25s.tokenize(list(queries), stopwords=self.config.stopwords, stemmer=self._stemmer,
                                return_ids=False, show_progress=False)
        docs, scores = self.model.retrieve(tokens, k=min(k, len(self)), show_progress=False)
        return [[(int(d), float(s)) for d, s in zip(row_d, row_s) if s > 0]
                for row_d, row_s in zip(docs, scores)]

    def save(self, path: str | Path) -> None:
        """Write the index to directory ``path``, replacing it only once complete."""
        with atomic_directory(path) as tmp:
            self.model.save(tmp, show_progress=False)
            table = np.empty(len(self), dtype=[("id", np.int64), ("page", self._pages.pages.dtype)])
            table["id"], table["page"] = self._ids, self._pages.pages
            np.save(tmp / PASSAGES_FILE, table)
            (tmp / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=1))

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> "BM25Retriever":
        """Load an index written by :meth:`save`; ``mmap`` leaves the score matrix on disk."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / PASSAGES_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a saved BM25Retriever (no {CONFIG_FILE} / {PASSAGES_FILE})")
        config = BM25Config(**json.loads((path / CONFIG_FILE).read_text()))
        model = bm25s.BM25.load(path, mmap=mmap, show_progress=False)
        return cls(model, np.load(path / PASSAGES_FILE), config)


def bm25_predictions(retriever: BM25Retriever, task_file: str | Path, out_path: str | Path,
                     k: int = 100, batch_size: int = 256, progress: bool = False) -> int:
    """Write a KILT prediction file ranking ``k`` pages for every query of ``task_file``.

    Returns the number of queries written.
    """
    def predictions() -> Iterator[tuple[str, list[str]]]:
        examples = iter(tqdm(iter_task_file(task_file), desc=f"BM25 {Path(task_file).name}",
                             unit=" queries", disable=not progress))
        while batch := list(islice(examples, batch_size)):
            ranked = retriever.search_pages([e.input for e in batch], k)
            yield from ((e.id, pages) for e, pages in zip(batch, ranked))

    return write_predictions(out_path, predictions())
