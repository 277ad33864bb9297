#!/usr/bin/env bash
# Dense retrieval over KILT task files with `mtr retrieve`, then KILT scoring with
# `python -m kilt.eval` (page-level R-precision, recall@k) of the files that carry gold provenance.
#
#   scripts/retrieve.sh --encoder ENC --build-dir DIR --out-dir PRED_DIR [--k 100] [--task NAME]
#                       [--device auto|cpu|cuda] [--ks 1,5,10] [--no-eval] TASK_FILE...
#
# DIR is a folder written by scripts/build_index.sh (DIR/index, DIR/passages.jsonl); or give
# --index IDX --passages FILE instead. ENC must be the encoder that built the index (`minilm`:
# the packaged all-MiniLM-L6-v2). The task (query prompt) comes from each file's name unless
# --task is given. Predictions go to PRED_DIR/<file name>-pred.jsonl.
. "$(dirname "$0")/_env.sh"

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
ENCODER=""; BUILD=""; INDEX=""; PASSAGES=""; OUT=""; K=100; TASK=""; DEVICE="auto"; KS="1,5,10"; EVAL=1; FILES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --encoder) ENCODER="$2"; shift 2 ;;
        --build-dir) BUILD="$2"; shift 2 ;;
        --index) INDEX="$2"; shift 2 ;;
        --passages) PASSAGES="$2"; shift 2 ;;
        --out-dir) OUT="$2"; shift 2 ;;
        --k) K="$2"; shift 2 ;;
        --task) TASK="$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --ks) KS="$2"; shift 2 ;;
        --no-eval) EVAL=0; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "retrieve: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) FILES+=("$1"); shift ;;
    esac
done
if [ -n "$BUILD" ]; then INDEX="${INDEX:-$BUILD/index}"; PASSAGES="${PASSAGES:-$BUILD/passages.jsonl}"; fi
if [ -z "$ENCODER" ] || [ -z "$INDEX" ] || [ -z "$PASSAGES" ] || [ -z "$OUT" ]; then
    echo "retrieve: --encoder, --build-dir (or --index and --passages) and --out-dir are required (see --help)" >&2
    exit 2
fi
if [ ${#FILES[@]} -eq 0 ]; then echo "retrieve: no KILT task files given" >&2; exit 2; fi
if [ "$ENCODER" = "minilm" ]; then
    ENCODER="$(python -c 'from multitask_retriever.models import packaged_minilm_path as p; print(p())')"
fi
mkdir -p "$OUT"

PAIRS=()
for f in "${FILES[@]}"; do
    name="$(basename "$f" .jsonl)"
    pred="$OUT/${name}-pred.jsonl"
    args=(retrieve --encoder "$ENCODER" --index "$INDEX" --passages "$PASSAGES" --queries "$f" --out "$pred"
          --k "$K" --device "$DEVICE")
    [ -n "$TASK" ] && args+=(--task "$TASK")
    mtr "${args[@]}"
    # score only files with gold provenance (test files have none)
    if python -c 'import json,sys
for line in open(sys.argv[1], encoding="utf-8"):
    if line.strip():
        r = json.loads(line)
        sys.exit(0 if any(isinstance(o, dict) and o.get("provenance") for o in r.get("output", [])) else 1)
sys.exit(1)' "$f"; then
        PAIRS+=("$f" "$pred")
    else
        echo "($f has no gold provenance: not scored)"
    fi
done

if [ "$EVAL" = 1 ] && [ ${#PAIRS[@]} -gt 0 ]; then
    echo "== KILT retrieval scores (page level)"
    python -m kilt.eval "${PAIRS[@]}" --ks "$KS"
fi
