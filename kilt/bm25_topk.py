"""Exact BM25 top-k over a CSC score matrix (bm25s's layout: one column of (doc, score) postings
per token), compiled with numba on all cores when numba imports, else in numpy on one.

Both backends add the same float32 postings in the same order and select the same way, so they
return the same passages and scores bit for bit. Work per query is proportional to the postings
of its tokens, not to the corpus size: only the documents a query touches are scored, and the
scratch row is cleared by those documents alone. Ties are broken by passage id (lower first),
at the cut-off too, so the result does not depend on the backend or the thread count.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import numpy as np

#: the scores, indices and indptr arrays of a bm25s index
Matrix = tuple[np.ndarray, np.ndarray, np.ndarray]


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _select(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best of documents `ids` (any order) with `scores` (> 0): best score first, lower
    id first among equal scores (also at the cut-off). Written so numba compiles it as is."""
    if len(ids) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        above = scores > kth
        at_kth = scores == kth
        tied = np.sort(ids[at_kth])[:k - np.sum(above)]
        ids = np.concatenate((ids[above], tied))
        scores = np.concatenate((scores[above], scores[at_kth][:len(tied)]))
    by_id = np.argsort(ids, kind="mergesort")
    ids, scores = ids[by_id], scores[by_id]
    order = np.argsort(-scores, kind="mergesort")
    return ids[order], scores[order]


def _query_numpy(tokens: np.ndarray, matrix: Matrix, num_docs: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One query's top-k in numpy (a full score row; postings are added token by token)."""
    data, indices, indptr = matrix
    row = np.zeros(num_docs, dtype=np.float32)
    for t in tokens:
        start, end = indptr[t], indptr[t + 1]
        row[indices[start:end]] += data[start:end]  # a column holds each document once
    ids = np.flatnonzero(row > 0)
    return _select(ids, row[ids], k)


def _query_compiled(tokens, data, indices, indptr, row, k):
    """One query's top-k, scoring only the documents its postings touch; clears `row` after."""
    total = 0
    for t in tokens:
        total += indptr[t + 1] - indptr[t]
    touched = np.empty(total, dtype=np.int64)
    m = 0
    for t in tokens:
        for j in range(indptr[t], indptr[t + 1]):
            d = indices[j]
            if row[d] == 0:
                touched[m] = d
                m += 1
            row[d] += data[j]
    ids = touched[:m]
    scores = row[ids]
    row[ids] = 0
    positive = scores > 0
    return _select_c(ids[positive], scores[positive], k)


def _batch_compiled(flat, bounds, data, indices, indptr, num_docs, k, blocks, out_ids, out_scores, counts):
    """Queries in `blocks` contiguous runs, one per thread, each with its own scratch row."""
    n = len(bounds) - 1
    for b in _prange(blocks):
        row = np.zeros(num_docs, dtype=np.float32)
        for q in range(b * n // blocks, (b + 1) * n // blocks):
            ids, scores = _query_c(flat[bounds[q]:bounds[q + 1]], data, indices, indptr, row, k)
            counts[q] = len(ids)
            out_ids[q, :len(ids)] = ids
            out_scores[q, :len(ids)] = scores


#: what the compiled functions call, bound to their numba versions by `_compiled`
_prange, _select_c, _query_c = range, _select, _query_compiled


@functools.cache
def _compiled() -> Callable | None:
    """The numba-compiled batch search, or None where numba does not import."""
    global _prange, _select_c, _query_c
    try:
        import numba
    except ImportError:
        return None
    _prange = numba.prange
    _select_c = numba.njit(cache=True, nogil=True)(_select)
    _query_c = numba.njit(cache=True, nogil=True)(_query_compiled)
    return numba.njit(cache=True, parallel=True, nogil=True)(_batch_compiled)


def available_backend() -> str:
    """"numba" where numba imports, else "numpy"."""
    return "numba" if _compiled() is not None else "numpy"


def top_k(queries: Sequence[np.ndarray], matrix: Matrix, num_docs: int, k: int, backend: str = "auto",
          threads: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(document ids, float32 scores) per query of token ids: at most `k` documents with a
    score > 0, best first. `backend`: auto | numba | numpy; `threads` (numba): 0 = all cores."""
    backend = available_backend() if backend == "auto" else backend
    if backend == "numpy":
        return [_query_numpy(np.asarray(q, dtype=np.int64), matrix, num_docs, k) for q in queries]
    if backend != "numba":
        raise ValueError(f"backend must be auto, numba or numpy, got {backend!r}")
    batch = _compiled()
    if batch is None:
        raise ImportError("the numba BM25 backend needs numba (pip install numba)")
    import numba

    n = len(queries)
    bounds = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(q) for q in queries], out=bounds[1:])
    flat = np.concatenate([np.asarray(q, dtype=np.int64) for q in queries] + [np.zeros(0, np.int64)])
    out_ids, out_scores = np.zeros((n, k), dtype=np.int64), np.zeros((n, k), dtype=np.float32)
    counts = np.zeros(n, dtype=np.int64)
    threads = min(threads or usable_cores(), numba.config.NUMBA_NUM_THREADS)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        data, indices, indptr = (np.asarray(a) for a in matrix)
        batch(flat, bounds, data, indices, indptr, num_docs, k, max(1, min(threads, n)), out_ids, out_scores, counts)
    finally:
        numba.set_num_threads(before)
    return [(out_ids[q, :counts[q]], out_scores[q, :counts[q]]) for q in range(n)]
