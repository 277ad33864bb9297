"""Build time, size and recall of flat / IVF-PQ / IVF-PQ + exact re-ranking (refine) as the corpus grows.

For each of `--sizes`, clustered synthetic unit vectors (as in benchmarks/search.py: random
centres, log-normal cluster sizes, queries from the same mixture but not in the corpus) are
indexed three ways with the library's defaults for IVF (`default_nlist`, a training sample of
at least 39 vectors per cell): `flat`, `ivfpq`, and `ivfpq+refine` (`IndexConfig.refine`
candidates per result re-scored against stored float32 vectors). Recorded per index: build
seconds, the saved index file's bytes (what it holds in RAM unless loaded with mmap), search
seconds, recall@10 against flat, and whether a memory-mapped load searches identically; per
size, what `index_type=auto` would pick on this machine's CPU.

Meant for large sizes on a machine of its own (KILT: 22-36M passages of 768 dims); a small CPU run
only proves it works:

    python benchmarks/index_scale.py --sizes 20000,50000 --dim 384 --threads 1
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import shlex
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info, write_result  # noqa: E402  (benchmarks/ is on sys.path)
from search import clustered_vectors, recall  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from multitask_retriever import indexing  # noqa: E402
from multitask_retriever.indexing import Index, IndexConfig  # noqa: E402


def configs(args: argparse.Namespace) -> dict[str, IndexConfig]:
    """The three indexes compared, on the CPU unless --device says otherwise."""
    ivfpq = IndexConfig("ivfpq", device=args.device, nprobe=args.nprobe, pq_m=args.pq_m)
    return {"flat": IndexConfig("flat", device=args.device, gpu_float16=False), "ivfpq": ivfpq,
            "ivfpq+refine": dataclasses.replace(ivfpq, refine=args.refine)}


def measure(name: str, config: IndexConfig, corpus: np.ndarray, queries: np.ndarray, k: int,
            reference: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """Build, save, search and mmap-load one index; (its row, its top-k ids)."""
    gc.collect()
    start = time.perf_counter()
    index = Index.build(corpus, config)
    row: dict = {"build_s": time.perf_counter() - start, "config": dataclasses.asdict(index.config)}
    if config.index_type == "ivfpq":
        row["nlist"] = int(faiss.extract_index_ivf(index._searcher.index).nlist)
        row["train_rows"] = indexing._train_rows(index.config, len(corpus))
    start = time.perf_counter()
    _, ids = index.search(queries, k)
    row["search_s"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        folder = index.save(Path(tmp) / "index")
        row["index_bytes"] = (folder / indexing.INDEX_FILE).stat().st_size
        del index
        mapped = Index.load(folder, mmap=True)
        row["mmap_search_identical"] = bool(np.array_equal(mapped.search(queries, k)[1], ids))
        del mapped
    if reference is not None:
        row["recall@10_vs_flat"] = recall(ids, reference, 10)
    print(f"  {name:<13} build {row['build_s']:8.1f} s  {row['index_bytes'] / 2**20:9.1f} MiB  "
          f"search {row['search_s']:6.2f} s  " + (f"recall@10 {row['recall@10_vs_flat']:.4f}" if reference is not None
                                                   else "(reference)"), flush=True)
    return row, ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,5000000", help="comma-separated corpus sizes [1000000,5000000]")
    ap.add_argument("--dim", type=int, default=768, help="dimensions [768, as BERT-base]")
    ap.add_argument("--queries", type=int, default=500, help="queries [500]")
    ap.add_argument("--clusters", type=int, default=2000, help="mixture centres [2000]")
    ap.add_argument("--spread", type=float, default=0.05, help="per-dimension noise around a unit centre [0.05]")
    ap.add_argument("--nprobe", type=int, default=32, help="IVF cells visited per query [32, the library default]")
    ap.add_argument("--pq-m", type=int, default=None, help="PQ subquantisers [library default: about dim/8]")
    ap.add_argument("--refine", type=int, default=4, help="candidates per result re-scored exactly [4]")
    ap.add_argument("--device", default="cpu", help="IndexConfig.device [cpu]")
    ap.add_argument("--threads", type=int, default=0, help="faiss and torch threads; 0: their defaults [0]")
    ap.add_argument("--label", default="", help="a note stored with the results (e.g. 'small-size CPU run')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "index-scale.json")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    k = 10
    doc = {"benchmark": "index-scale", "label": args.label, "command": shlex.join(["python", *sys.argv]),
           "machine": machine_info(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "data": {"dim": args.dim, "queries": args.queries, "k": k, "kind": "clustered synthetic",
                    "clusters": args.clusters, "spread": args.spread, "seed": args.seed,
                    "threads": args.threads or None,
                    "note": "unit vectors around random centres with log-normal cluster sizes (benchmarks/search.py); "
                            "recall@10 is against the flat index; index_bytes is the saved index file"},
           "sizes": {}}
    for n in sizes:
        corpus, centres = clustered_vectors(n, args.dim, args.clusters, args.seed, args.spread)
        queries, _ = clustered_vectors(args.queries, args.dim, args.clusters, args.seed + 1, args.spread,
                                       centres=centres)
        auto = indexing.auto_index_type(n, args.dim, "cpu", IndexConfig().max_flat_bytes)
        print(f"{n} x {args.dim} (index_type=auto on CPU: {auto})", flush=True)
        rows, reference = {}, None
        for name, config in configs(args).items():
            rows[name], ids = measure(name, config, corpus, queries, k, reference)
            if name == "flat":
                reference = ids
        doc["sizes"][str(n)] = {"float32_vector_bytes": n * args.dim * 4, "auto_on_cpu": auto, "indexes": rows}
        write_result(args.out, doc)  # partial results survive an interrupted run
        del corpus
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
