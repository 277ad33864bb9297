"""Peak memory vs corpus size: corpus encoding, index build from shards, KILT chunking.

Each measurement runs in a fresh child process. Once set up (imports, model loaded) it
resets the kernel's RSS high-water mark (`/proc/self/clear_refs`, Linux; elsewhere the
never-reset `ru_maxrss` is used and small peaks may hide below the import peak) and reads it
again after the work: the difference is the work's own peak above the set-up process. The claims checked:

- `encode_corpus` streams: its peak is bounded by one batch plus one shard, so it must not
  grow with the number of passages (same shard size at every corpus size).
- `Index.from_shards` holds one shard at a time besides the index: its peak should be about
  the index's own size (n x dim x 4 bytes for flat / IVF-Flat) plus one shard and the
  training sample, not twice the corpus.
- `kilt.passages.write_passages` streams pages: its peak must not grow with the number of pages.

The encoder is a tiny BERT built from a config (hidden 64, 2 layers, random weights; the
packaged MiniLM tokenizer) so that the run takes minutes: memory of the streaming, not of
the model, is what is measured. Passages are real (chunked from ../shared/realkilt) when the
knowledge source is there, synthetic otherwise; index shards are random dim-384 vectors.

    python benchmarks/memory.py                  # writes benchmarks/results/memory.json
    python benchmarks/memory.py --encode-sizes 2000,8000,32000 --index-sizes 25000,100000,400000
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info, write_result  # noqa: E402  (benchmarks/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MiB = 1 << 20


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """This process's RSS high-water mark in bytes: VmHWM on Linux (resettable), else ru_maxrss."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def baseline() -> int:
    """Reset the high-water mark where possible and return it: the work's peak is measured from here."""
    import gc

    gc.collect()
    reset_peak()
    return peak_rss()


# --------------------------------------------------------------------------- workers (child processes)
def worker_encode(args) -> dict:
    from multitask_retriever.encoder import DualEncoder
    from multitask_retriever.encoding import encode_corpus

    encoder = DualEncoder.from_pretrained(args.model)
    encoder.encode_passages([("warm", "up " * 200)] * 4)  # allocator and kernels set up before the baseline
    before = baseline()
    start = time.perf_counter()
    encode_corpus(encoder, args.input, args.output, shard_size=args.shard_size, batch_size=args.batch_size,
                  progress=False)
    return {"before": before, "peak": peak_rss(), "seconds": time.perf_counter() - start}


def worker_index(args) -> dict:
    import numpy as np

    from multitask_retriever.indexing import Index, IndexConfig

    config = IndexConfig(args.index_type, device="cpu", ivf_nlist=args.ivf_nlist, train_size=args.train_size)
    Index.build(np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32),
                IndexConfig("ivf", device="cpu", ivf_nlist=8))  # faiss set up before the baseline
    before = baseline()
    start = time.perf_counter()
    index = Index.from_shards(args.input, config, progress=False)
    return {"before": before, "peak": peak_rss(), "seconds": time.perf_counter() - start, "count": len(index)}


def worker_chunk(args) -> dict:
    from kilt.passages import write_passages

    before = baseline()
    start = time.perf_counter()
    n = write_passages(args.input, args.output, progress=False)
    return {"before": before, "peak": peak_rss(), "seconds": time.perf_counter() - start, "passages": n}


WORKERS = {"encode": worker_encode, "index": worker_index, "chunk": worker_chunk}


def child(kind: str, **kwargs) -> dict:
    """Run one worker in a fresh interpreter and return its report (byte counts)."""
    cmd = [sys.executable, __file__, "--worker", kind]
    for key, value in kwargs.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"worker {kind} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["extra_mib"] = (report["peak"] - report["before"]) / MiB
    report["before_mib"], report["peak_mib"] = report.pop("before") / MiB, report.pop("peak") / MiB
    return report


# --------------------------------------------------------------------------- inputs (parent)
def make_tiny_encoder(path: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from multitask_retriever.models import packaged_minilm_path

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(packaged_minilm_path()).save_pretrained(path)
    return path


def passage_records(knowledge_source: Path, n: int):
    """`n` passage records: real ones chunked from the knowledge source, else synthetic."""
    if knowledge_source.is_file():
        from kilt.io import iter_pages
        from kilt.passages import iter_passages

        real = [vars(p) for p in itertools.islice(iter_passages(iter_pages(knowledge_source)), n)]
        if len(real) == n:
            return real, "real (realkilt)"
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    return [{"id": i, "wikipedia_id": str(i // 3), "title": f"Page {i // 3}",
             "text": " ".join(words[(i + j) % len(words)] for j in range(100)),
             "start_paragraph_id": 1, "end_paragraph_id": 1} for i in range(n)], "synthetic"


def write_shards(folder: Path, n: int, dim: int, shard_size: int) -> Path:
    """A shard folder as encode_corpus writes it, holding random vectors."""
    import numpy as np

    from multitask_retriever.encoding import MANIFEST_NAME, shard_paths

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards = 0
    for shards, start in enumerate(range(0, n, shard_size), start=1):
        rows = min(shard_size, n - start)
        vectors_path, ids_path = shard_paths(folder, shards - 1)
        np.save(ids_path, np.arange(start, start + rows, dtype=np.int64))
        np.save(vectors_path, rng.standard_normal((rows, dim), dtype=np.float32))
    (folder / MANIFEST_NAME).write_text(json.dumps({
        "format": 1, "encoder": "random", "dim": dim, "dtype": "float32", "shard_size": shard_size,
        "num_passages": n, "num_shards": shards, "complete": True}))
    return folder


def sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--knowledge-source", type=Path,
                    default=REPO.parent / "shared" / "realkilt" / "knowledge_source.jsonl",
                    help="real KILT pages for passages and chunking [../shared/realkilt/knowledge_source.jsonl]")
    ap.add_argument("--encode-sizes", default="2000,8000,32000", help="passages encoded [2000,8000,32000]")
    ap.add_argument("--encode-shard-size", type=int, default=1000, help="encode_corpus shard size [1000]")
    ap.add_argument("--index-sizes", default="25000,100000,400000", help="vectors indexed [25000,100000,400000]")
    ap.add_argument("--index-dim", type=int, default=384, help="vector dim of the index shards [384]")
    ap.add_argument("--index-shard-size", type=int, default=25000, help="rows per index shard [25000]")
    ap.add_argument("--index-types", default="flat,ivf", help="index types built [flat,ivf]")
    ap.add_argument("--chunk-pages", default="1000,4000,16000,30000", help="pages chunked [1000,4000,16000,30000]")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "memory.json")
    # worker-only arguments
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    for name in ("--input", "--output", "--model", "--index-type"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    for name, default in (("--shard-size", 1000), ("--batch-size", 64), ("--ivf-nlist", 256), ("--train-size", 50000)):
        ap.add_argument(name, type=int, default=default, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    doc = {"benchmark": "memory", "command": shlex.join(["python", *sys.argv]), "machine": machine_info(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "note": "peak RSS (VmHWM, reset once set up; ru_maxrss where it cannot be reset) of a fresh child per "
                   "measurement; extra = peak minus RSS once set up. Encoder: tiny BERT from a config (random weights, hidden 64)."}
    with tempfile.TemporaryDirectory(prefix="mtr-bench-memory-") as tmp:
        tmp = Path(tmp)
        # 1. corpus encoding
        model = make_tiny_encoder(tmp / "tiny-bert")
        encode_sizes = sizes(args.encode_sizes)
        records, kind = passage_records(args.knowledge_source, max(encode_sizes)) if encode_sizes else ([], None)
        rows = []
        for n in encode_sizes:
            passage_file = tmp / f"passages-{n}.jsonl"
            with open(passage_file, "w", encoding="utf-8") as f:
                for record in records[:n]:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            report = child("encode", input=passage_file, output=tmp / f"shards-{n}", model=model,
                           shard_size=args.encode_shard_size, batch_size=64)
            rows.append({"passages": n, "passage_file_mib": passage_file.stat().st_size / MiB, **report})
            print(f"encode {n:>7} passages: extra peak {report['extra_mib']:7.1f} MiB "
                  f"(process peak {report['peak_mib']:.0f} MiB), {report['seconds']:.1f} s", flush=True)
        doc["encode_corpus"] = {"passages": kind, "shard_size": args.encode_shard_size, "batch_size": 64,
                                "encoder": "tiny BERT from a config (hidden 64, 2 layers)", "rows": rows}
        if len(rows) > 1:
            doc["encode_corpus"]["extra_peak_ratio_largest_vs_smallest"] = (
                max(rows[-1]["extra_mib"], 1e-9) / max(rows[0]["extra_mib"], 1e-9))

        # 2. index build from shards
        doc["index_from_shards"] = {"dim": args.index_dim, "shard_size": args.index_shard_size,
                                    "vectors": "random float32", "ivf_nlist": 256, "train_size": 50000, "rows": []}
        for n in sizes(args.index_sizes):
            shard_dir = write_shards(tmp / f"index-shards-{n}", n, args.index_dim, args.index_shard_size)
            for index_type in [t for t in args.index_types.split(",") if t]:
                report = child("index", input=shard_dir, index_type=index_type, ivf_nlist=256, train_size=50000)
                vectors_mib = n * args.index_dim * 4 / MiB
                row = {"vectors": n, "index_type": index_type, "vectors_mib": vectors_mib,
                       "extra_over_vectors": report["extra_mib"] / vectors_mib, **report}
                doc["index_from_shards"]["rows"].append(row)
                print(f"index {index_type:<5} {n:>7} x {args.index_dim}: extra peak {report['extra_mib']:7.1f} MiB "
                      f"for {vectors_mib:.1f} MiB of vectors ({row['extra_over_vectors']:.2f}x), "
                      f"{report['seconds']:.1f} s", flush=True)
            for path in shard_dir.iterdir():
                path.unlink()

        # 3. KILT knowledge-source chunking
        rows = []
        if args.knowledge_source.is_file():
            for pages in sizes(args.chunk_pages):
                source = tmp / f"ks-{pages}.jsonl"
                with open(args.knowledge_source, encoding="utf-8") as src, open(source, "w", encoding="utf-8") as dst:
                    got = 0
                    for line in itertools.islice(src, pages):
                        dst.write(line)
                        got += 1
                report = child("chunk", input=source, output=tmp / f"ks-{pages}.passages.jsonl")
                rows.append({"pages": got, "source_mib": source.stat().st_size / MiB, **report})
                print(f"chunk {got:>7} pages: extra peak {report['extra_mib']:7.1f} MiB, "
                      f"{report['passages']} passages, {report['seconds']:.1f} s", flush=True)
        doc["write_passages"] = {"source": str(args.knowledge_source), "rows": rows}
        if len(rows) > 1:
            doc["write_passages"]["extra_peak_ratio_largest_vs_smallest"] = (
                max(rows[-1]["extra_mib"], 1e-9) / max(rows[0]["extra_mib"], 1e-9))
    write_result(args.out, doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
