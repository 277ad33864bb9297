#!/usr/bin/env bash
# Build a dense passage index: (KILT knowledge source -> 100-word passages) -> `mtr encode`
# (resumable shards) -> `mtr index` (FAISS). Re-running resumes: finished passages, shards
# and a finished index are kept.
#
#   scripts/build_index.sh --encoder ENC --out DIR (--knowledge-source KS | --passages FILE)
#                          [--index-type flat|hnsw|ivf|ivfpq] [--shard-size N] [--batch-size N]
#                          [--device auto|cpu|cuda] [--launch] [--force] [-- MORE `mtr index` FLAGS]
#
# ENC is a DualEncoder folder, a Hugging Face name, or `minilm` (the packaged all-MiniLM-L6-v2).
# Writes DIR/passages.jsonl (unless --passages), DIR/shards/, DIR/index/. --launch encodes under
# `accelerate launch` (shards split over all GPUs / nodes of `accelerate config`, or of the options in
# ACCELERATE_ARGS, as for scripts/train.sh). --force rebuilds the index (the shards are kept; delete
# DIR/shards to re-encode). Then: scripts/retrieve.sh.
. "$(dirname "$0")/_env.sh"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
ENCODER=""; OUT=""; KS=""; PASSAGES=""; TYPE="flat"; SHARD_SIZE=100000; BATCH=128; DEVICE="auto"
LAUNCH=0; FORCE=0; EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --encoder) ENCODER="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --knowledge-source) KS="$2"; shift 2 ;;
        --passages) PASSAGES="$2"; shift 2 ;;
        --index-type) TYPE="$2"; shift 2 ;;
        --shard-size) SHARD_SIZE="$2"; shift 2 ;;
        --batch-size) BATCH="$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --launch) LAUNCH=1; shift ;;
        --force) FORCE=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build_index: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$ENCODER" ] || [ -z "$OUT" ]; then echo "build_index: --encoder and --out are required (see --help)" >&2; exit 2; fi
if [ -n "$KS" ] && [ -n "$PASSAGES" ]; then echo "build_index: give --knowledge-source or --passages, not both" >&2; exit 2; fi
if [ -z "$KS" ] && [ -z "$PASSAGES" ]; then echo "build_index: --knowledge-source or --passages is required" >&2; exit 2; fi
if [ "$ENCODER" = "minilm" ]; then
    ENCODER="$(python -c 'from multitask_retriever.models import packaged_minilm_path as p; print(p())')"
fi
mkdir -p "$OUT"

if [ -z "$PASSAGES" ]; then
    PASSAGES="$OUT/passages.jsonl"
    if [ -f "$PASSAGES" ]; then
        echo "== passages: $PASSAGES exists, kept"
    else
        echo "== chunking $KS -> $PASSAGES"
        mtr chunk "$KS" "$PASSAGES"
    fi
fi

echo "== encoding $PASSAGES with $ENCODER -> $OUT/shards"
ENCODE=(encode --encoder "$ENCODER" --passages "$PASSAGES" --out-dir "$OUT/shards"
        --shard-size "$SHARD_SIZE" --batch-size "$BATCH" --device "$DEVICE")
if [ "$LAUNCH" = 1 ]; then
    read -ra LAUNCH_OPTS <<< "${ACCELERATE_ARGS:-}"
    accelerate launch "${LAUNCH_OPTS[@]}" -m multitask_retriever.cli "${ENCODE[@]}"
else
    mtr "${ENCODE[@]}"
fi

if [ -f "$OUT/index/index_meta.json" ] && [ "$FORCE" = 0 ]; then
    echo "== index: $OUT/index exists, kept (--force rebuilds it)"
else
    echo "== indexing $OUT/shards -> $OUT/index ($TYPE)"
    mtr index --shards "$OUT/shards" --out "$OUT/index" --index-type "$TYPE" "${EXTRA[@]}"
fi
NEXT="--encoder $ENCODER --build-dir $OUT"
[ "$PASSAGES" = "$OUT/passages.jsonl" ] || NEXT="$NEXT --passages $PASSAGES"   # retrieve.sh's default is DIR's
echo "done: scripts/retrieve.sh $NEXT --out-dir PRED_DIR TASK_FILE..."
