"""A bm25s score matrix built from a stream of texts in blocks, holding numpy arrays only.

bm25s's own `BM25.index` wants every document's token ids as Python lists at once (about
50 GB at 25M passages) and counts terms in a Python loop per document. Here each block of
documents is tokenised, reduced to (term, frequency) pairs with numpy and kept as such
(6 bytes a pair); once the document frequencies are known, the pairs are scored with bm25s's
own idf and tf formulas and written straight into their CSC columns. The arrays equal those
bm25s builds from the same tokens (tests/test_bm25_scale.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, islice
from typing import Iterable, Iterator

import numpy as np

from ._bm25s import Tokenizer, select_idf, select_tfc

#: documents tokenised and reduced at a time
BLOCK_DOCS = 10_000
#: methods whose scores are all in the postings (bm25l / bm25+ score every document)
METHODS = ("robertson", "lucene", "atire")


@dataclass
class _Pairs:
    """A block's distinct (document, term) pairs: terms and frequencies in document order."""

    per_doc: np.ndarray  # int32: pairs of each document of the block
    terms: np.ndarray  # int32
    tf: np.ndarray  # uint16, or int32 where a frequency does not fit


def _token_blocks(texts: Iterable[str], tokenizer: Tokenizer, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(token ids, document lengths) of successive blocks of `block` documents."""
    stream = tokenizer.streaming_tokenize(texts)
    while docs := list(islice(stream, block)):
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        yield np.fromiter(chain.from_iterable(docs), dtype=np.int64, count=int(lengths.sum())), lengths


def _pairs(tokens: np.ndarray, lengths: np.ndarray) -> _Pairs:
    """Term frequencies of each document of a block, terms ascending within a document."""
    width = int(tokens.max(initial=0)) + 1
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    keys, tf = np.unique(doc * width + tokens, return_counts=True)
    per_doc = np.bincount(keys // width, minlength=len(lengths)).astype(np.int32)
    small = tf.max(initial=0) <= np.iinfo(np.uint16).max
    return _Pairs(per_doc, (keys % width).astype(np.int32), tf.astype(np.uint16 if small else np.int32))


def _idf(df: np.ndarray, n_docs: int, method: str) -> np.ndarray:
    """bm25s's idf per term (0 for a term in no document), with its own scalar formula."""
    idf = select_idf(method)
    return np.array([idf(d, N=n_docs) if d else 0.0 for d in df.tolist()], dtype=np.float32)


def _fill_columns(blocks: list[_Pairs], lengths: np.ndarray, idf: np.ndarray, indptr: np.ndarray,
                  k1: float, b: float, delta: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Score every pair and write it into its term's column, documents ascending (CSC)."""
    tfc = select_tfc(method)
    avg_len = lengths.mean()
    data = np.empty(indptr[-1], dtype=np.float32)
    indices = np.empty(indptr[-1], dtype=np.int32)
    heads = indptr[:-1].copy()
    first = 0
    while blocks:
        pairs = blocks.pop(0)  # freed as soon as written
        docs = np.repeat(np.arange(first, first + len(pairs.per_doc), dtype=np.int64), pairs.per_doc)
        first += len(pairs.per_doc)
        scores = idf[pairs.terms] * tfc(tf_array=pairs.tf.astype(np.float32), l_d=lengths[docs], l_avg=avg_len,
                                        k1=k1, b=b, delta=delta)
        order = np.argsort(pairs.terms, kind="stable")
        terms = pairs.terms[order]
        starts = np.flatnonzero(np.r_[True, terms[1:] != terms[:-1]])
        counts = np.diff(np.r_[starts, len(terms)])
        rank = np.arange(len(terms)) - np.repeat(starts, counts)
        where = heads[terms] + rank
        data[where] = scores[order]
        indices[where] = docs[order]
        heads[terms[starts]] += counts
    return data, indices


def build_matrix(texts: Iterable[str], tokenizer: Tokenizer, k1: float, b: float, method: str,
                 delta: float = 0.5, block: int = BLOCK_DOCS) -> tuple[dict, dict[str, int]]:
    """(bm25s `scores` dict: data, indices, indptr, num_docs; the vocabulary) of `texts`,
    tokenised by `tokenizer` as bm25s's `Tokenizer.streaming_tokenize` does."""
    if method not in METHODS:
        raise ValueError(f"BM25 method must be one of {', '.join(METHODS)}, got {method!r}")
    blocks, lengths = [], []
    for tokens, block_lengths in _token_blocks(texts, tokenizer, block):
        blocks.append(_pairs(tokens, block_lengths))
        lengths.append(block_lengths)
    if not blocks:
        raise ValueError("no documents to index")
    vocab = tokenizer.get_vocab_dict()
    n_docs = sum(len(x) for x in lengths)
    df = np.zeros(len(vocab), dtype=np.int64)
    for pairs in blocks:
        df += np.bincount(pairs.terms, minlength=len(vocab))
    indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    data, indices = _fill_columns(blocks, np.concatenate(lengths), _idf(df, n_docs, method), indptr,
                                  k1, b, delta, method)
    return {"data": data, "indices": indices, "indptr": indptr, "num_docs": n_docs}, vocab
