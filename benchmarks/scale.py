"""Time and peak memory of every CPU stage of a full-KILT run as the corpus grows, fitted against
the corpus size and extrapolated to 25M passages (full KILT: 5.9M pages, 22-36M 100-word passages).

Stages, each measured in a fresh subprocess on `--threads` threads (torch, faiss/OpenMP, numba, BLAS):
  chunk   `kilt.passages.write_passages` over a synthetic knowledge source (KILT pages of ~4
          passages: `bm25_scale.synthesise`'s passages from data/kilt-mini's real ones, grouped by page)
  store   `PassageStore`: first open (builds the offsets cache), reopen, random access of 10k passages
  bm25    `BM25Retriever.build` + save; then a memory-mapped load searching 200 real dev queries at k=100
  flat    `Index.build` of a flat float32 index over clustered synthetic vectors (benchmarks/search.py)
  ivfpq   IVF-PQ with the library's defaults plus refine (train+add, bytes, q/s, recall@10 against
          flat), then a memory-mapped load's resident memory after searching
Peak memory is VmHWM (reset through /proc/self/clear_refs) minus the RSS before the stage. Each
figure y (search as ms per query, not queries/s) is fitted as y = a + b*n by least squares over
the measured sizes and read off at 25M.
Encoding is not measured (no GPU): its 25M row uses a GPU anchor (../shared/gpu-anchors.md).
Training examples' memory is measured by examples_scale.py.

    python benchmarks/scale.py --sizes 200000,600000,2000000 --dense-sizes 20000,50000,100000 --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from _common import machine_info, write_result  # noqa: E402  (benchmarks/ is on sys.path)
from bm25_scale import _reset_peak, _status_mib, dev_queries, folder_bytes, real_passages, synthesise  # noqa: E402
from search import clustered_vectors, recall  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

TARGET = 25_000_000
RAM_BYTES = 128 * 10**9  # the 128 GB machine the extrapolation is checked against
SHARD_SIZE = 100_000  # encode_corpus's default
ANCHOR_PASSAGES_PER_S = 6500  # T5-base encoder, bf16, one H100 (../shared/gpu-anchors.md)
THREAD_VARS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# --------------------------------------------------------------------------- measuring, in a child
@contextmanager
def measured(row: dict, name: str):
    """Record `name`_s (seconds) and `name`_peak_mib (peak RSS above the RSS at entry) in `row`."""
    exact = _reset_peak()
    before = _status_mib("VmRSS")
    start = time.perf_counter()
    yield
    row[f"{name}_s"] = time.perf_counter() - start
    peak = _status_mib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row[f"{name}_peak_mib"] = peak - before


def set_threads(threads: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def stage_chunk(a: dict) -> dict:
    from kilt.passages import write_passages

    row: dict = {"source_bytes": Path(a["source"]).stat().st_size}
    with measured(row, "chunk"):
        row["passages"] = write_passages(a["source"], a["passages"], progress=False)
    row["passage_file_bytes"] = Path(a["passages"]).stat().st_size
    return row


def stage_store(a: dict) -> dict:
    from kilt.passages import PassageStore

    row: dict = {}
    with measured(row, "store_first_open"):
        PassageStore(a["passages"], progress=False)
    rng = np.random.default_rng(0)
    with measured(row, "store_open_access"):
        store = PassageStore(a["passages"], progress=False)
        ids = rng.integers(0, len(store), 10_000)
        store.get_many(ids.tolist())
    row["offsets_cache_bytes"] = store.cache_path.stat().st_size
    return row


def stage_bm25_build(a: dict) -> dict:
    from kilt.bm25 import BM25Retriever
    from kilt.passages import PassageStore

    store, row = PassageStore(a["passages"], progress=False), {}
    with measured(row, "bm25_build"):
        retriever = BM25Retriever.build(store, threads=a["threads"])
    retriever.save(Path(a["index"]))
    row["bm25_index_bytes"] = folder_bytes(Path(a["index"]))
    return row


def stage_bm25_search(a: dict) -> dict:
    from kilt.bm25 import BM25Retriever
    from kilt.passages import PassageStore

    queries, row = json.loads(Path(a["queries"]).read_text()), {}
    with measured(row, "bm25_mmap_load"):
        store = PassageStore(a["passages"], progress=False)
        retriever = BM25Retriever.load(Path(a["index"]), store, mmap=True, threads=a["threads"])
    retriever.search(queries[:1], k=a["k"])  # numba compiles (or loads its cache) on a first call
    with measured(row, "bm25_search"):
        retriever.search(queries, k=a["k"])
    row["bm25_queries_per_s"] = len(queries) / row["bm25_search_s"]
    row["bm25_ms_per_query"] = 1000 * row["bm25_search_s"] / len(queries)
    row["bm25_search_rss_mib"] = _status_mib("VmRSS")
    return row


def vectors(a: dict) -> tuple[np.ndarray, np.ndarray]:
    """The corpus and query vectors of size `a["n"]` (the same in every child)."""
    corpus, centres = clustered_vectors(a["n"], a["dim"], 2000, 0, 0.05)
    queries, _ = clustered_vectors(a["queries"], a["dim"], 2000, 1, 0.05, centres=centres)
    return corpus, queries


def stage_flat(a: dict) -> dict:
    from multitask_retriever import indexing
    from multitask_retriever.indexing import Index, IndexConfig

    corpus, queries = vectors(a)
    row: dict = {}
    with measured(row, "flat_build"):
        index = Index.build(corpus, IndexConfig("flat", device="cpu"))
    start = time.perf_counter()
    _, ids = index.search(queries, 10)
    row["flat_ms_per_query"] = 1000 * (time.perf_counter() - start) / len(queries)
    row["flat_queries_per_s"] = 1000 / row["flat_ms_per_query"]
    np.save(a["reference"], ids)
    row["flat_index_bytes"] = (index.save(Path(a["index"])) / indexing.INDEX_FILE).stat().st_size
    return row


def stage_ivfpq(a: dict) -> dict:
    import gc

    from multitask_retriever import indexing
    from multitask_retriever.indexing import Index, IndexConfig

    corpus, queries = vectors(a)
    config, row = IndexConfig("ivfpq", device="cpu", refine=a["refine"]), {}
    with measured(row, "ivfpq_train_add"):
        index = Index.build(corpus, config)
    start = time.perf_counter()
    _, ids = index.search(queries, 10)
    row["ivfpq_ms_per_query"] = 1000 * (time.perf_counter() - start) / len(queries)
    row["ivfpq_queries_per_s"] = 1000 / row["ivfpq_ms_per_query"]
    row["ivfpq_recall@10_vs_flat"] = recall(ids, np.load(a["reference"]), 10)
    row["ivfpq_index_bytes"] = (index.save(Path(a["index"])) / indexing.INDEX_FILE).stat().st_size
    del index, corpus
    gc.collect()
    before = _status_mib("VmRSS")
    mapped = Index.load(Path(a["index"]), mmap=True)
    mapped.search(queries, 10)
    row["ivfpq_mmap_search_rss_mib"] = _status_mib("VmRSS") - before
    return row


def stage_shards(a: dict) -> dict:
    """Write the corpus vectors as `encode_corpus` does: shards of 100k vectors and ids, a manifest
    (not measured: the input of the from-shards builds)."""
    from safeio.atomic import write_json

    from multitask_retriever.encoding import MANIFEST_NAME, save_npy, shard_paths

    corpus, _ = vectors(a)
    folder, n = Path(a["shards"]), len(corpus)
    folder.mkdir(parents=True)
    starts = range(0, n, SHARD_SIZE)
    for shard, start in enumerate(starts):
        vectors_path, ids_path = shard_paths(folder, shard)
        save_npy(vectors_path, corpus[start:start + SHARD_SIZE])
        save_npy(ids_path, np.arange(start, min(n, start + SHARD_SIZE), dtype=np.int64))
    write_json(folder / MANIFEST_NAME, {"format": 2, "dim": a["dim"], "encoder": "synthetic", "num_passages": n,
                                        "num_shards": len(starts), "complete": True})
    return {}


def stage_from_shards(a: dict) -> dict:
    """`Index.from_shards` (each shard memory-mapped in turn; no array of all vectors) of flat or
    IVF-PQ+refine: time, peak memory above the start, index bytes."""
    from multitask_retriever import indexing
    from multitask_retriever.indexing import Index, IndexConfig

    kind, row = a["kind"], {}
    config = IndexConfig(kind, device="cpu", refine=a["refine"] if kind == "ivfpq" else 0)
    with measured(row, f"{kind}_from_shards"):
        index = Index.from_shards(a["shards"], config, progress=False)
    row[f"{kind}_from_shards_index_bytes"] = (index.save(Path(a["index"])) / indexing.INDEX_FILE).stat().st_size
    return row


def stage_flat_shards(a: dict) -> dict:
    return stage_from_shards({**a, "kind": "flat"})


def stage_ivfpq_shards(a: dict) -> dict:
    return stage_from_shards({**a, "kind": "ivfpq"})


STAGES = {"chunk": stage_chunk, "store": stage_store, "bm25_build": stage_bm25_build,
          "bm25_search": stage_bm25_search, "flat": stage_flat, "ivfpq": stage_ivfpq, "shards": stage_shards,
          "flat_shards": stage_flat_shards, "ivfpq_shards": stage_ivfpq_shards}
DENSE_STAGES = ("flat", "ivfpq", "flat_shards", "ivfpq_shards")


def child(stage: str, args_json: str, out: str) -> None:
    a = json.loads(args_json)
    set_threads(a["threads"])
    Path(out).write_text(json.dumps(STAGES[stage](a)))


def run_stage(stage: str, a: dict, tmp: Path) -> dict:
    """Run one stage in a fresh subprocess on `a["threads"]` threads; its row."""
    out = tmp / f"{stage}.json"
    env = {**os.environ, **{v: str(a["threads"]) for v in THREAD_VARS}}
    subprocess.run([sys.executable, __file__, "--child", stage, json.dumps(a), str(out)], check=True, env=env)
    row = json.loads(out.read_text())
    print(f"    {stage:<12} " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    return row


# --------------------------------------------------------------------------- data
def knowledge_source(real: list, n: int, folder: Path, seed: int) -> Path:
    """A KILT knowledge source that chunks into `n` or more (~1.17n) 100-word passages: `synthesise`'s
    passages (4 a page, each a paragraph; as many as hold n*100 words, real passages being shorter
    than 100 words on average), grouped into pages {wikipedia_id, wikipedia_title, text: [title, paragraphs]}."""
    flat, source = folder / "synthetic-passages.jsonl", folder / f"source-{n}.jsonl"
    synthesise(real, math.ceil(n * 100 / np.mean([len(words) for _, words in real])), flat, seed)
    page: dict | None = None
    with open(flat, encoding="utf-8") as f, open(source, "w", encoding="utf-8") as out:
        for line in f:
            p = json.loads(line)
            if page is None or page["wikipedia_id"] != p["wikipedia_id"]:
                if page is not None:
                    out.write(json.dumps(page) + "\n")
                page = {"wikipedia_id": p["wikipedia_id"], "wikipedia_title": p["title"], "text": [p["title"]]}
            page["text"].append(p["text"])
        if page is not None:
            out.write(json.dumps(page) + "\n")
    flat.unlink()
    return source


# --------------------------------------------------------------------------- one size
def text_stages(n: int, real: list, tmp: Path, args: argparse.Namespace, queries: Path) -> dict:
    """chunk, store, bm25 over a corpus of about `n` passages; the text files are deleted after."""
    start = time.perf_counter()
    source = knowledge_source(real, n, tmp, args.seed)
    a = {"threads": args.threads, "source": str(source), "passages": str(tmp / f"passages-{n}.jsonl"),
         "index": str(tmp / f"bm25-{n}"), "queries": str(queries), "k": args.k}
    row = {"synthesis_s": time.perf_counter() - start}
    for stage in ("chunk", "store", "bm25_build", "bm25_search"):
        row.update(run_stage(stage, a, tmp))
    for path in (source, Path(a["passages"]), Path(a["passages"] + ".offsets.npy")):
        path.unlink()
    shutil.rmtree(a["index"])
    return row


def dense_stages(n: int, tmp: Path, args: argparse.Namespace, row: dict) -> dict:
    """`args.dense_stages` over `n` synthetic vectors, updating `row`; index and shard files are deleted after."""
    a = {"threads": args.threads, "n": n, "dim": args.dim, "queries": args.dense_queries, "refine": args.refine,
         "reference": str(tmp / "flat-ids.npy"), "shards": str(tmp / f"shards-{n}")}
    row["float32_vector_bytes"] = n * args.dim * 4
    stages = args.dense_stages.split(",")
    if any(stage.endswith("_shards") for stage in stages):
        run_stage("shards", a, tmp)
    for stage in stages:
        row.update(run_stage(stage, {**a, "index": str(tmp / f"{stage}-{n}")}, tmp))
        shutil.rmtree(tmp / f"{stage}-{n}")
    shutil.rmtree(a["shards"], ignore_errors=True)
    return row


# --------------------------------------------------------------------------- fit and report
FITTED = {  # figure -> (the x it is fitted against: text or dense sizes, unit)
    "chunk_s": ("passages", "s"), "chunk_peak_mib": ("passages", "MiB"), "passage_file_bytes": ("passages", "B"),
    "store_first_open_s": ("passages", "s"), "store_first_open_peak_mib": ("passages", "MiB"),
    "store_open_access_peak_mib": ("passages", "MiB"), "offsets_cache_bytes": ("passages", "B"),
    "bm25_build_s": ("passages", "s"), "bm25_build_peak_mib": ("passages", "MiB"),
    "bm25_index_bytes": ("passages", "B"), "bm25_mmap_load_peak_mib": ("passages", "MiB"),
    "bm25_search_peak_mib": ("passages", "MiB"), "bm25_ms_per_query": ("passages", "ms/q"),
    "flat_build_s": ("dense", "s"), "flat_build_peak_mib": ("dense", "MiB"), "flat_index_bytes": ("dense", "B"),
    "flat_ms_per_query": ("dense", "ms/q"), "ivfpq_train_add_s": ("dense", "s"),
    "ivfpq_train_add_peak_mib": ("dense", "MiB"), "ivfpq_index_bytes": ("dense", "B"),
    "ivfpq_ms_per_query": ("dense", "ms/q"), "ivfpq_mmap_search_rss_mib": ("dense", "MiB"),
    "flat_from_shards_s": ("dense", "s"), "flat_from_shards_peak_mib": ("dense", "MiB"),
    "ivfpq_from_shards_s": ("dense", "s"), "ivfpq_from_shards_peak_mib": ("dense", "MiB"),
}


def fit(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = a + b*n over the measured sizes, and its value at 25M."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return {"a": float(a), "b": float(b), "at_25M": float(a + b * TARGET)}


def fits(doc: dict) -> dict:
    """Every FITTED figure's law and 25M value; a memory figure fits 128 GB when its 25M value does,
    for a dense build's peak together with the float32 vectors the process already holds."""
    out, vectors_25m = {}, TARGET * doc["dim"] * 4
    for name, (kind, unit) in FITTED.items():
        rows = doc["text"] if kind == "passages" else doc["dense"]
        points = [(r.get("passages", int(n)), r[name]) for n, r in rows.items() if name in r]
        if len(points) >= 2:
            out[name] = {"unit": unit, "x": kind, **fit([p[0] for p in points], [p[1] for p in points])}
            if unit in ("MiB", "B"):
                held = vectors_25m if name.endswith("build_peak_mib") or name.endswith("add_peak_mib") else 0
                out[name]["fits_128GB"] = out[name]["at_25M"] * (2**20 if unit == "MiB" else 1) + held <= RAM_BYTES
    return out


def exact_25m(dim: int, refine: int) -> dict:
    """Bytes that need no fit: float32 / float16 vectors, IVF-PQ codes; encoding hours from the anchor."""
    from multitask_retriever.indexing import default_pq_m

    f32 = TARGET * dim * 4
    return {"flat_float32_bytes": f32, "flat_float16_bytes": f32 // 2,
            "ivfpq_code_and_id_bytes": TARGET * (default_pq_m(dim) + 8),
            "ivfpq_refine_float32_bytes": f32 if refine else 0,
            "encoding_hours_anchor": TARGET / ANCHOR_PASSAGES_PER_S / 3600,
            "note": f"flat float32 {f32 / 1e9:.1f} GB does not fit one 80 GB GPU (nor leaves room for queries); "
                    "float16 sharded over GPUs, or IVF-PQ codes, do. Encoding: anchor of "
                    f"{ANCHOR_PASSAGES_PER_S} passages/s (T5-base, bf16, one H100; ../shared/gpu-anchors.md), "
                    "not a measurement"}


def _human(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value / 1e9:.3g} GB" if value >= 1e8 else f"{value / 1e6:.3g} MB"
    if unit == "MiB":
        return f"{value / 1024:.3g} GiB" if value >= 1024 else f"{value:.3g} MiB"
    if unit == "s":
        return f"{value / 3600:.3g} h" if value >= 3600 else f"{value:.3g} s"
    if unit == "ms/q":
        return f"{value:.3g} ms/q ({1000 / value:.3g} q/s)" if value > 0 else f"{value:.3g} ms/q"
    return f"{value:.3g} {unit}"


def markdown_table(doc: dict) -> str:
    """The README table: measured figures per size, fitted law, 25M value, whether it fits 128 GB."""
    lines = ["| figure | measured (size: value) | fit a + b*n | at 25M | fits 128 GB RAM |", "|---|---|---|---:|---|"]
    for name, f in doc["fits"].items():
        rows = doc["text"] if f["x"] == "passages" else doc["dense"]
        measured_ = ", ".join(f"{r.get('passages', int(n)) / 1e3:.0f}k: {_human(r[name], f['unit'])}"
                              for n, r in rows.items() if name in r)
        law = f"{f['a']:.3g} + {f['b']:.3g}*n {f['unit']}"
        fits_ = {True: "yes", False: "**no**"}.get(f.get("fits_128GB"), "")
        if name in ("flat_build_peak_mib", "ivfpq_train_add_peak_mib"):
            fits_ += f" (+ the {doc['exact_25M']['flat_float32_bytes'] / 1e9:.1f} GB input vectors)"
        lines.append(f"| {name} | {measured_} | {law} | {_human(f['at_25M'], f['unit'])} | {fits_} |")
    e = doc["exact_25M"]
    lines += [f"| flat float32 vectors (exact, 25M x {doc['dim']}) | | n*dim*4 | {e['flat_float32_bytes'] / 1e9:.1f} GB"
              f" | yes (not one 80 GB GPU) |",
              f"| flat float16 (exact) | | n*dim*2 | {e['flat_float16_bytes'] / 1e9:.1f} GB | yes |",
              f"| IVF-PQ codes + ids (exact) | | n*(pq_m+8) | {e['ivfpq_code_and_id_bytes'] / 1e9:.2f} GB | yes |",
              f"| encoding 25M passages (**GPU anchor, not measured**) | | 6,500 passages/s, one H100 | "
              f"{e['encoding_hours_anchor']:.2f} h | |"]
    return "\n".join(lines)


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(argv[1], argv[2], argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200000,600000,2000000", help="passages for the text stages")
    ap.add_argument("--dense-sizes", default=None, help="vectors for the dense stages [--sizes]")
    ap.add_argument("--dense-stages", default=",".join(DENSE_STAGES), help=f"of {', '.join(DENSE_STAGES)} [all]")
    ap.add_argument("--update", action="store_true",
                    help="keep the figures of --out that this run does not measure (e.g. with --sizes '')")
    ap.add_argument("--dim", type=int, default=768, help="vector dimensions [768]")
    ap.add_argument("--dense-queries", type=int, default=1000, help="queries of the dense indexes [1000]")
    ap.add_argument("--refine", type=int, default=4, help="IVF-PQ refine (candidates per result) [4]")
    ap.add_argument("--queries", type=int, default=200, help="real dev queries of data/kilt-mini for BM25 [200]")
    ap.add_argument("--k", type=int, default=100, help="BM25 hits per query [100]")
    ap.add_argument("--threads", type=int, default=1, help="threads of every library in every stage [1]")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/scale-bench"), help="temporary files (deleted)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="", help="a note stored with the results")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.json")
    args = ap.parse_args(argv)
    for var in THREAD_VARS:
        os.environ[var] = str(args.threads)
    set_threads(args.threads)
    doc = {"benchmark": "scale", "label": args.label, "command": shlex.join(["python", *sys.argv]),
           "threads": args.threads, "machine": machine_info(), "load_average_start": load_average(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dim": args.dim, "k": args.k, "queries": args.queries,
           "dense_queries": args.dense_queries, "refine": args.refine, "note": __doc__.split("\n\n")[0],
           "text": {}, "dense": {}}
    if args.update and args.out.is_file():
        old = json.loads(args.out.read_text())
        doc.update(text=old["text"], dense=old["dense"], command=old["command"] + " ; " + doc["command"],
                   label=" ; ".join(x for x in (old.get("label", ""), args.label) if x))
    unknown = set(args.dense_stages.split(",")) - set(DENSE_STAGES)
    if unknown:
        ap.error(f"--dense-stages: unknown {', '.join(sorted(unknown))}; choose from {', '.join(DENSE_STAGES)}")
    args.tmp.mkdir(parents=True, exist_ok=True)
    try:
        run_all(args, doc)
    finally:
        shutil.rmtree(args.tmp, ignore_errors=True)
    print(markdown_table(doc))
    print(f"wrote {args.out}")
    return 0


def run_all(args: argparse.Namespace, doc: dict) -> None:
    """Every size of every stage; the result file is rewritten after each, with fits so far."""
    real = real_passages(args.tmp)
    queries = args.tmp / "queries.json"
    queries.write_text(json.dumps(dev_queries(args.queries)))

    def save() -> None:
        doc.update(fits=fits(doc), exact_25M=exact_25m(args.dim, args.refine), load_average_end=load_average())
        write_result(args.out, doc)

    for n in [int(s) for s in args.sizes.split(",") if s]:
        print(f"text stages, {n} passages", flush=True)
        doc["text"][str(n)] = text_stages(n, real, args.tmp, args, queries)
        save()
    for n in [int(s) for s in (args.dense_sizes or args.sizes).split(",") if s]:
        print(f"dense stages, {n} x {args.dim}", flush=True)
        doc["dense"][str(n)] = dense_stages(n, args.tmp, args, doc["dense"].get(str(n), {}))
        save()


if __name__ == "__main__":
    sys.exit(main())
