"""BM25 build time, peak memory, index size and queries/s as the corpus grows: the old path
(bm25s's `BM25.index` over per-passage token lists, bm25s's numpy search on one thread) against
the new one (`BM25Retriever.build`: block-built numpy arrays; `kilt.bm25_topk`: numba on all
cores, or numpy where numba is absent).

Passages are synthesised from the real passages of data/kilt-mini (its knowledge source cut
into 100-word passages by `kilt.passages.write_passages`): synthetic passage i copies the title
and word count of a real passage drawn at random, and fills it with words drawn, with
replacement, 70 % from that passage and 30 % from another random real passage, in random order.
So the corpus keeps real words, their frequencies and topical co-occurrence while growing past
the 2k real pages; repeated title words also give realistic score ties. Queries are `--queries`
real dev queries of data/kilt-mini (all tasks, in file order). Each (size, path) runs in a
fresh subprocess; `build_peak_mib` is the peak RSS while building (VmHWM, reset just before
through /proc/self/clear_refs; ru_maxrss where that cannot be reset) minus the RSS before it.
The new path's hits are checked against the old path's (same scores; same passages wherever
scores do not tie at the cut-off). The new path is also timed on one thread.

    python benchmarks/bm25_scale.py --sizes 20000,100000,300000
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info, write_result  # noqa: E402  (benchmarks/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

MINI = REPO / "data" / "kilt-mini"


# --------------------------------------------------------------------------- data
def real_passages(folder: Path) -> list[tuple[str, list[str]]]:
    """(title, words) of data/kilt-mini's knowledge source cut into 100-word passages."""
    from kilt.passages import iter_passage_file, write_passages

    path = folder / "real-passages.jsonl"
    write_passages(MINI / "knowledge_source.jsonl.gz", path, progress=False)
    return [(p.title, p.text.split()) for p in iter_passage_file(path)]


def synthesise(real: list[tuple[str, list[str]]], n: int, path: Path, seed: int) -> None:
    """Write `n` synthetic passages sampled from `real` (module docstring) as a passage file."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            title, words = rng.choice(real)
            _, other = rng.choice(real)
            own = round(0.7 * len(words))
            text = rng.choices(words, k=own) + rng.choices(other, k=len(words) - own)
            rng.shuffle(text)
            f.write(json.dumps({"id": i, "wikipedia_id": str(i // 4), "title": title, "text": " ".join(text),
                                "start_paragraph_id": 1, "end_paragraph_id": 1}) + "\n")


def dev_queries(n: int) -> list[str]:
    from kilt.io import read_task_file

    queries = [e.input for path in sorted(MINI.glob("*-dev-kilt.jsonl")) for e in read_task_file(path)]
    return queries[:n]


# --------------------------------------------------------------------------- one path, in a subprocess
def old_build(store, config):
    """kilt.bm25's build before this change: token ids as Python lists, bm25s's `index`."""
    import bm25s
    import Stemmer
    from bm25s.tokenization import Tokenized, Tokenizer

    from kilt.passages import iter_passage_file

    tokenizer = Tokenizer(stemmer=Stemmer.Stemmer(config.stemmer), stopwords=config.stopwords)
    ids = list(tokenizer.streaming_tokenize(f"{p.title} {p.text}" for p in iter_passage_file(store.path)))
    model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method, backend="numpy")
    model.index(Tokenized(ids=ids, vocab=tokenizer.get_vocab_dict()), show_progress=False)
    return model


def old_search(model, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
    """kilt.bm25's search before this change: bm25s's numpy backend, one thread."""
    import bm25s
    import Stemmer

    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
                            show_progress=False)
    docs, scores = model.retrieve(tokens, k=k, show_progress=False, backend_selection="numpy")
    return [[(int(d), float(s)) for d, s in zip(rd, rs) if s > 0] for rd, rs in zip(docs, scores)]


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def child(path: str, which: str, queries_file: str, k: int, repeats: int, out: str) -> None:
    """Build, save, load and search one path over passage file `path`; write its row to `out`."""
    from kilt.bm25 import BM25Config, BM25Retriever
    from kilt.passages import PassageStore

    queries = json.loads(Path(queries_file).read_text())
    store, config = PassageStore(path, progress=False), BM25Config()
    exact_peak = _reset_peak()
    rss_before = _status_mib("VmRSS")
    start = time.perf_counter()
    if which == "old":
        model = old_build(store, config)
    else:
        retriever = BM25Retriever.build(store, config)
    build_s = time.perf_counter() - start
    peak = _status_mib("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"build_s": build_s, "build_peak_mib": peak - rss_before, "rss_before_build_mib": rss_before,
           "peak_measure": "VmHWM after reset" if exact_peak else "ru_maxrss"}
    with tempfile.TemporaryDirectory() as tmp:
        if which == "old":
            model.save(tmp, show_progress=False)
            search = lambda: old_search(model, queries, k)  # noqa: E731
        else:
            retriever.save(Path(tmp) / "index")
            retriever = BM25Retriever.load(Path(tmp) / "index", store, mmap=True)
            row.update(backend=retriever.backend, threads=retriever.threads or "all usable cores")
            start = time.perf_counter()
            retriever._search_docs(queries[:1], k)  # compiles on a first run (numba caches it on disk)
            row["first_query_s"] = time.perf_counter() - start
            one = BM25Retriever(retriever.model, store, config, backend=retriever.backend, threads=1)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                one._search_docs(queries, k)
                times.append(time.perf_counter() - start)
            row["queries_per_s_1_thread"] = len(queries) / statistics.median(times)
            search = lambda: retriever._search_docs(queries, k)  # noqa: E731
        row["index_bytes"] = folder_bytes(Path(tmp) / "index" if which == "new" else Path(tmp))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            hits = search()
            times.append(time.perf_counter() - start)
    row.update(search_s=times, queries_per_s=len(queries) / statistics.median(times))
    Path(out).write_text(json.dumps({"row": row, "hits": hits}))


def run_child(path: Path, which: str, queries_file: Path, k: int, repeats: int, tmp: Path) -> tuple[dict, list]:
    out = tmp / f"{which}.json"
    subprocess.run([sys.executable, __file__, "--child", str(path), which, str(queries_file), str(k), str(repeats),
                    str(out)], check=True)
    done = json.loads(out.read_text())
    return done["row"], done["hits"]


def agreement(new: list, old: list) -> dict:
    """Whether new and old hits have the same scores, and the same passages above tied cut-offs."""
    scores_equal, sets_equal = True, True
    for a, b in zip(new, old):
        sa, sb = [s for _, s in a], [s for _, s in b]
        scores_equal &= len(sa) == len(sb) and bool(np.allclose(sa, sb, rtol=1e-6))
        last = sa[-1] if sa else 0.0
        sets_equal &= {d for d, s in a if s > last} == {d for d, s in b if s > last}
    return {"scores_allclose": scores_equal, "passages_equal_above_cutoff_ties": sets_equal}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(argv[1], argv[2], argv[3], int(argv[4]), int(argv[5]), argv[6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,100000,300000", help="synthetic passages [20000,100000,300000]")
    ap.add_argument("--queries", type=int, default=200, help="real dev queries [200]")
    ap.add_argument("--k", type=int, default=100, help="hits per query [100, as negative mining]")
    ap.add_argument("--old-repeats", type=int, default=1, help="timed searches of the old path (median) [1]")
    ap.add_argument("--new-repeats", type=int, default=3, help="timed searches of the new path (median) [3]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="", help="a note stored with the results")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bm25-scale.json")
    args = ap.parse_args(argv)
    from kilt import bm25_topk

    doc = {"benchmark": "bm25-scale", "label": args.label, "command": shlex.join(["python", *sys.argv]),
           "machine": {**machine_info(), "numba": _numba_version(), "usable_cores": bm25_topk.usable_cores()},
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "data": {"queries": args.queries, "k": args.k, "seed": args.seed,
                    "note": "passages synthesised from data/kilt-mini's real 100-word passages (benchmarks/"
                            "bm25_scale.py docstring); old = bm25s index + numpy search on one thread, new = "
                            "kilt.bm25 block build + kilt.bm25_topk on all usable cores; index loaded with mmap"},
           "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        real = real_passages(tmp)
        queries_file = tmp / "queries.json"
        queries_file.write_text(json.dumps(dev_queries(args.queries)))
        for n in [int(s) for s in args.sizes.split(",") if s]:
            path = tmp / f"passages-{n}.jsonl"
            synthesise(real, n, path, args.seed)
            old, old_hits = run_child(path, "old", queries_file, args.k, args.old_repeats, tmp)
            new, new_hits = run_child(path, "new", queries_file, args.k, args.new_repeats, tmp)
            doc["sizes"][str(n)] = {"old": old, "new": new, "agreement": agreement(new_hits, old_hits),
                                    "search_speedup": new["queries_per_s"] / old["queries_per_s"],
                                    "build_speedup": old["build_s"] / new["build_s"],
                                    "build_peak_ratio_old_to_new": old["build_peak_mib"] / max(new["build_peak_mib"],
                                                                                                1e-9)}
            print(f"{n:>9} passages  build {old['build_s']:6.1f} s -> {new['build_s']:6.1f} s  peak "
                  f"{old['build_peak_mib']:7.1f} -> {new['build_peak_mib']:7.1f} MiB  q/s {old['queries_per_s']:8.1f}"
                  f" -> {new['queries_per_s']:8.1f} ({doc['sizes'][str(n)]['search_speedup']:.1f}x; one thread "
                  f"{new['queries_per_s_1_thread']:.1f})  "
                  f"{doc['sizes'][str(n)]['agreement']}", flush=True)
            write_result(args.out, doc)  # partial results survive an interrupted run
            path.unlink()
    print(f"wrote {args.out}")
    return 0


def _numba_version() -> str | None:
    try:
        import numba
    except ImportError:
        return None
    return numba.__version__


if __name__ == "__main__":
    sys.exit(main())
