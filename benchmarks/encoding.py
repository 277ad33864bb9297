"""Passage-encoding throughput: DualEncoder.encode_passages vs sentence-transformers, and encode_corpus.

Same model (the packaged all-MiniLM-L6-v2, real weights), same texts (real Wikipedia
passages of 100 words from ../shared/realkilt, formatted "Title: <title> Text: <text>"),
same maximum length, batch size, device and thread count. The variants run interleaved,
in a rotating order, and the medians of the repeats give the ratio; the embeddings are
compared (cosine) so that both sides do the same work.

Variants:
  dual_encoder           DualEncoder.encode_passages (tokenise a window, sort by length, batch)
  sentence_transformers  SentenceTransformer(...).encode (also length-sorted internally)
  unsorted               DualEncoder.embed on batches in input order (no length bucketing)
and, separately, encode_corpus (passage file -> shards on disk) in passages/s.

    python benchmarks/encoding.py                 # writes benchmarks/results/encoding.json
    python benchmarks/encoding.py --passages 5000 --repeats 5 --device cuda
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
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

import numpy as np  # noqa: E402
import torch  # noqa: E402


# --------------------------------------------------------------------------- shared helpers
def command_line() -> str:
    return shlex.join(["python", *sys.argv])


# --------------------------------------------------------------------------- data
def real_passages(knowledge_source: Path, n: int, skip_pages: int = 0) -> list:
    """The first `n` 100-word passages of the knowledge source (after `skip_pages` pages)."""
    from kilt.io import iter_pages
    from kilt.passages import iter_passages

    pages = itertools.islice(iter_pages(knowledge_source), skip_pages, None)
    passages = list(itertools.islice(iter_passages(pages), n))
    if len(passages) < n:
        raise SystemExit(f"{knowledge_source}: only {len(passages)} passages, asked for {n}")
    return passages


def write_passage_file(passages: list, path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for p in passages:
            f.write(json.dumps(vars(p), ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------- variants
def encode_unsorted(encoder, passages: list, batch_size: int) -> np.ndarray:
    """DualEncoder.embed over batches in input order: padding to each batch's longest, no sorting."""
    out = []
    encoder.eval()
    with torch.inference_mode():
        for start in range(0, len(passages), batch_size):
            chunk = passages[start : start + batch_size]
            batch = encoder.tokenize_passages([p.title for p in chunk], [p.text for p in chunk])
            out.append(encoder.embed(batch).float().cpu().numpy())
    return np.concatenate(out)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--knowledge-source", type=Path, default=REPO.parent / "shared" / "realkilt" / "knowledge_source.jsonl",
                    help="KILT knowledge source with real pages [../shared/realkilt/knowledge_source.jsonl]")
    ap.add_argument("--model", default=None, help="encoder folder [the packaged all-MiniLM-L6-v2]")
    ap.add_argument("--passages", type=int, default=2000, help="passages per timed pass [2000]")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per variant, interleaved [3]")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size of every variant [64]")
    ap.add_argument("--max-length", type=int, default=160, help="passage tokens, both sides [160]")
    ap.add_argument("--corpus-passages", type=int, default=2000, help="passages for encode_corpus [2000]")
    ap.add_argument("--shard-size", type=int, default=500, help="encode_corpus shard size [500]")
    ap.add_argument("--no-unsorted", action="store_true", help="skip the no-bucketing variant")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda [auto]")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "encoding.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sentence_transformers import SentenceTransformer

    from multitask_retriever.devices import resolve_device, resolve_dtype
    from multitask_retriever.encoder import DualEncoder
    from multitask_retriever.encoding import encode_corpus
    from multitask_retriever.models import packaged_minilm_path

    device = resolve_device(args.device)
    model = str(args.model or packaged_minilm_path())
    passages = real_passages(args.knowledge_source, args.passages)
    encoder = DualEncoder.from_pretrained(model, passage_max_length=args.max_length).to(device)
    texts = [encoder.format_passage(p.title, p.text) for p in passages]
    st = SentenceTransformer(model, device=device)
    st.max_seq_length = args.max_length
    if device == "cuda":  # same compute dtype on both sides (DualEncoder autocasts to bf16/fp16)
        st = st.to(resolve_dtype(encoder.config.dtype, device))
    lengths = [len(ids) for ids in encoder.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    print(f"{len(passages)} passages, tokens mean {statistics.mean(lengths):.1f} min {min(lengths)} "
          f"max {max(lengths)}, device {device}, torch threads {torch.get_num_threads()}", flush=True)

    variants = {
        "dual_encoder": lambda: encoder.encode_passages(passages, batch_size=args.batch_size),
        "sentence_transformers": lambda: st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True,
                                                   show_progress_bar=False),
    }
    if not args.no_unsorted:
        variants["unsorted"] = lambda: encode_unsorted(encoder, passages, args.batch_size)
    warm = passages[: 2 * args.batch_size]
    encoder.encode_passages(warm, batch_size=args.batch_size)
    st.encode(texts[: 2 * args.batch_size], batch_size=args.batch_size, show_progress_bar=False)

    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, np.ndarray] = {}
    names = list(variants)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            seconds, out = timed(variants[name])
            times[name].append(seconds)
            outputs[name] = np.asarray(out, dtype=np.float32)
            print(f"  repeat {r}: {name:<22} {seconds:7.2f} s  {len(passages) / seconds:8.1f} passages/s", flush=True)

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    ref = outputs["sentence_transformers"]
    agreement = {name: {"min_cosine_vs_sentence_transformers": float(cosine(outputs[name], ref).min()),
                        "mean_cosine_vs_sentence_transformers": float(cosine(outputs[name], ref).mean())}
                 for name in names if name != "sentence_transformers"}
    medians = {name: statistics.median(t) for name, t in times.items()}
    results = {name: {"median_s": medians[name], "times_s": times[name],
                      "passages_per_s": len(passages) / medians[name]} for name in names}
    ratio = medians["sentence_transformers"] / medians["dual_encoder"]
    per_repeat = [s / d for s, d in zip(times["sentence_transformers"], times["dual_encoder"])]

    # encode_corpus: passage file -> shards, timed against encode_passages on the same passages
    corpus = real_passages(args.knowledge_source, args.corpus_passages)
    with tempfile.TemporaryDirectory(prefix="mtr-bench-encoding-") as tmp:
        passage_file = write_passage_file(corpus, Path(tmp) / "passages.jsonl")
        seconds, _ = timed(lambda: encode_corpus(encoder, passage_file, Path(tmp) / "shards",
                                                 shard_size=args.shard_size, batch_size=args.batch_size,
                                                 progress=False))
        direct, _ = timed(lambda: encoder.encode_passages(corpus, batch_size=args.batch_size))
        num_shards = len(list((Path(tmp) / "shards").glob("shard-*.ids.npy")))
    corpus_result = {"passages": len(corpus), "shard_size": args.shard_size, "shards": num_shards,
                     "seconds": seconds, "passages_per_s": len(corpus) / seconds,
                     "encode_passages_same_passages_s": direct,
                     "overhead_vs_encode_passages": seconds / direct}

    doc = {
        "benchmark": "encoding", "command": command_line(), "machine": machine_info(), "device": device,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "setup": {"model": model, "passages": len(passages), "source": str(args.knowledge_source),
                  "batch_size": args.batch_size, "max_length": args.max_length, "repeats": args.repeats,
                  "tokens_mean": statistics.mean(lengths), "tokens_min": min(lengths), "tokens_max": max(lengths),
                  "compute_dtype": str(resolve_dtype(encoder.config.dtype, device)).removeprefix("torch."),
                  "note": "real weights; timings include tokenisation; variants interleaved, medians reported"},
        "results": results,
        "ratio_dual_encoder_vs_sentence_transformers": ratio,
        "ratio_per_repeat": per_repeat,
        "ratio_dual_encoder_vs_unsorted": (medians["unsorted"] / medians["dual_encoder"]
                                           if "unsorted" in medians else None),
        "agreement": agreement,
        "encode_corpus": corpus_result,
    }
    write_result(args.out, doc)
    print(json.dumps({k: doc[k] for k in ("ratio_dual_encoder_vs_sentence_transformers", "ratio_per_repeat",
                                          "ratio_dual_encoder_vs_unsorted", "agreement", "encode_corpus")}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
