"""Search speed and recall of the Index types on >= 1M vectors.

The vectors are synthetic but clustered like sentence embeddings, not uniform: unit vectors
drawn around `--clusters` random centres of uneven (log-normal) sizes, a point's cosine to
its centre about 0.7; queries come from the same mixture but are not in the corpus. (On
uniform random vectors every IVF cell is alike and recall figures say little about real
embeddings.) Every approximate index is scored against the exact `flat` index (recall@10 and
recall@100: the share of flat's top k found in the approximate top k), and `flat` itself
against a numpy brute force (chunked float32 matmul + argpartition) for exactness and speed.

Speed is queries/s for one batched `Index.search(queries, k)` call (median of `--repeats`),
on all CPU threads faiss uses (OpenMP), or on the GPU where one is present (faiss-gpu, or the
torch backend for flat).

    python benchmarks/search.py                  # 1M x 384, writes benchmarks/results/search.json
    python benchmarks/search.py --n 200000 --types flat,ivf
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import shlex
import statistics
import sys
import time
from pathlib import Path

from _common import machine_info, write_result  # noqa: E402  (benchmarks/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from multitask_retriever import indexing  # noqa: E402
from multitask_retriever.indexing import Index, IndexConfig  # noqa: E402

TYPES = ("flat", "torch", "hnsw", "ivf", "ivfpq")


# --------------------------------------------------------------------------- data
def clustered_vectors(n: int, dim: int, clusters: int, seed: int, spread: float,
                      centres: np.ndarray | None = None, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """`n` unit vectors around unit `centres` (drawn here unless given), cluster sizes log-normal."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = np.random.default_rng(12345).lognormal(0.0, 1.0, len(centres))  # same sizes for corpus and queries
    labels = rng.choice(len(centres), size=n, p=weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        block = centres[labels[rows]] + rng.standard_normal((rows.stop - start, dim), dtype=np.float32) * spread
        out[rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, centres


def numpy_top_k(corpus: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products by chunked float32 matmul and argpartition."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(corpus), chunk):
        scores = queries @ corpus[start : start + chunk].T
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        i = np.concatenate([best_i, part + start], axis=1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact)]))


def timed_search(search, queries: np.ndarray, k: int, repeats: int) -> tuple[list[float], tuple]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = search(queries, k)
        times.append(time.perf_counter() - start)
    return times, result


def set_search_param(index: Index, name: str, value: int) -> None:
    """Change nprobe / efSearch of a built CPU faiss index in place (for the sweeps)."""
    inner = index._searcher.index
    if name == "nprobe":
        faiss.extract_index_ivf(inner).nprobe = value
    else:
        inner.hnsw.efSearch = value
    index.config = dataclasses.replace(index.config, **{"nprobe" if name == "nprobe" else "hnsw_ef_search": value})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="corpus vectors [1000000]")
    ap.add_argument("--dim", type=int, default=384, help="dimensions [384, as MiniLM]")
    ap.add_argument("--queries", type=int, default=1000, help="queries [1000]")
    ap.add_argument("--k", type=int, default=100, help="results per query [100]")
    ap.add_argument("--clusters", type=int, default=2000, help="mixture centres [2000]")
    ap.add_argument("--spread", type=float, default=0.05,
                    help="per-dimension noise around a unit centre [0.05: cosine to centre about 0.7 at 384 dims]")
    ap.add_argument("--types", default=",".join(TYPES), help=f"comma-separated, from {','.join(TYPES)} [all]")
    ap.add_argument("--repeats", type=int, default=3, help="timed searches per setting (median) [3]")
    ap.add_argument("--hnsw-m", type=int, default=16, help="HNSW neighbours [16; library default 32]")
    ap.add_argument("--hnsw-ef-construction", type=int, default=40, help="HNSW build beam [40; library 200]")
    ap.add_argument("--hnsw-ef-search", default="64,128,256", help="efSearch values swept [64,128,256]")
    ap.add_argument("--ivf-nlist", type=int, default=1024, help="IVF cells [1024; library default about 4*sqrt(n)]")
    ap.add_argument("--nprobe", default="8,32,128", help="nprobe values swept [8,32,128]")
    ap.add_argument("--pq-m", type=int, default=48, help="PQ subquantisers [48 = dim/8, the library default]")
    ap.add_argument("--train-size", type=int, default=100_000, help="IVF/PQ training sample [100000]")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda, IndexConfig.device [auto]")
    ap.add_argument("--threads", type=int, default=0,
                    help="faiss (OpenMP) and torch threads; 0: their defaults (all cores). On a shared, "
                         "oversubscribed machine 1 avoids OpenMP spin-waiting that slows faiss many-fold")
    ap.add_argument("--no-polysemous", action="store_true",
                    help="build ivfpq without faiss's polysemous training (index_factory turns it on for PQ "
                         "codes; the Index never uses it to search, and it costs minutes of build time)")
    ap.add_argument("--no-numpy", action="store_true",
                    help="skip the numpy brute-force check of flat (minutes on CPU at 1M vectors x 10k queries)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "search.json")
    args = ap.parse_args(argv)
    types = [t for t in args.types.split(",") if t]
    unknown = set(types) - set(TYPES)
    if unknown:
        ap.error(f"unknown --types {sorted(unknown)}")
    k = args.k
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    corpus, centres = clustered_vectors(args.n, args.dim, args.clusters, args.seed, args.spread)
    queries, _ = clustered_vectors(args.queries, args.dim, args.clusters, args.seed + 1, args.spread, centres=centres)
    cos_to_centre = float(np.mean(np.max(queries[:200] @ centres.T, axis=1)))
    print(f"data: {args.n} x {args.dim} clustered unit vectors ({args.clusters} centres, mean cosine of a query "
          f"to its nearest centre {cos_to_centre:.2f}), {args.queries} queries, "
          f"{time.perf_counter() - start:.1f} s", flush=True)

    results: dict[str, dict] = {}

    def save() -> None:
        doc = {"benchmark": "search", "command": shlex.join(["python", *sys.argv]), "machine": machine_info(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "data": {"n": args.n, "dim": args.dim, "queries": args.queries, "k": k, "kind": "clustered synthetic",
                        "clusters": args.clusters, "spread": args.spread, "seed": args.seed,
                        "threads": args.threads or None, "ivfpq_polysemous_training": not args.no_polysemous,
                        "query_cosine_to_nearest_centre": cos_to_centre,
                        "note": "unit vectors around random centres with log-normal cluster sizes; queries from the "
                                "same mixture, not in the corpus; recall is measured against the flat index"},
               "results": results}
        write_result(args.out, doc)

    exact_ids = flat_scores = None

    def run(name: str, config: IndexConfig, sweep: tuple[str, list[int]] | None = None) -> None:
        nonlocal exact_ids, flat_scores
        gc.collect()
        t0 = time.perf_counter()
        index = Index.build(corpus, config)
        build_s = time.perf_counter() - t0
        settings = [(None, None)] if sweep is None else [(sweep[0], v) for v in sweep[1]]
        rows = []
        for param, value in settings:
            if param is not None:
                set_search_param(index, param, value)
            times, (scores, ids) = timed_search(index.search, queries, k, args.repeats)
            median = statistics.median(times)
            row = {"queries_per_s": args.queries / median, "median_s": median, "times_s": times}
            if param is not None:
                row[param] = value
            if exact_ids is not None:
                row["recall@10"] = recall(ids, exact_ids, 10)
                row[f"recall@{k}"] = recall(ids, exact_ids, k)
            rows.append(row)
            print(f"  {name:<6} {'' if param is None else f'{param}={value:<4}'} build {build_s:7.1f} s  "
                  f"{row['queries_per_s']:9.1f} q/s  " + "  ".join(f"{m} {row[m]:.4f}" for m in row if m.startswith("recall")),
                  flush=True)
        results[name] = {"config": dataclasses.asdict(config), "build_s": build_s, "on_gpu": index.on_gpu,
                         "searches": rows}
        if name == "flat":
            exact_ids, flat_scores = ids, scores
        del index
        gc.collect()
        save()  # partial results survive an interrupted run

    if args.no_polysemous:
        new_index = indexing._new_faiss_index

        def without_polysemous(config, dim, n):
            index = new_index(config, dim, n)
            if config.index_type == "ivfpq":
                faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
            return index

        indexing._new_faiss_index = without_polysemous

    base = dict(device=args.device, train_size=args.train_size)
    if "flat" in types or any(t in types for t in ("hnsw", "ivf", "ivfpq")):
        run("flat", IndexConfig("flat", gpu_float16=False, **base))  # the float32 reference, also on a GPU
        if not args.no_numpy:
            # numpy brute force: exactness of flat and its speed
            times, (np_scores, np_ids) = timed_search(lambda q, kk: numpy_top_k(corpus, q, kk), queries, k, args.repeats)
            median = statistics.median(times)
            same_rows = float(np.mean(np.all(np_ids == exact_ids, axis=1)))
            results["numpy_brute_force"] = {
                "queries_per_s": args.queries / median, "median_s": median, "times_s": times,
                "flat_ids_identical_rows": same_rows,
                f"flat_recall@{k}_vs_numpy": recall(exact_ids, np_ids, k),
                "flat_max_abs_score_diff": float(np.max(np.abs(flat_scores - np_scores))),
                "flat_speedup_vs_numpy": results["flat"]["searches"][0]["queries_per_s"] / (args.queries / median)}
            print(f"  numpy  {args.queries / median:9.1f} q/s; flat identical rows {same_rows:.4f}, "
                  f"max score diff {results['numpy_brute_force']['flat_max_abs_score_diff']:.2e}", flush=True)
            save()
    if "torch" in types:
        run("torch", IndexConfig("flat", backend="torch", device=args.device))
    if "ivf" in types:
        run("ivf", IndexConfig("ivf", ivf_nlist=args.ivf_nlist, **base), ("nprobe", [int(v) for v in args.nprobe.split(",")]))
    if "ivfpq" in types:
        run("ivfpq", IndexConfig("ivfpq", ivf_nlist=args.ivf_nlist, pq_m=args.pq_m, pq_bits=8, **base),
            ("nprobe", [int(v) for v in args.nprobe.split(",")]))
    if "hnsw" in types:
        run("hnsw", IndexConfig("hnsw", hnsw_m=args.hnsw_m, hnsw_ef_construction=args.hnsw_ef_construction, **base),
            ("hnsw_ef_search", [int(v) for v in args.hnsw_ef_search.split(",")]))
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
