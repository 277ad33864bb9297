#!/usr/bin/env bash
# Rebuild data/kilt-mini, the embedded real benchmark, from the realkilt2 compilation with the
# project's own `mtr kilt-subset`; the same source folder gives byte-identical files.
#
#   scripts/make_kilt_mini.sh REALKILT2_DIR [OUT_DIR]      (OUT_DIR defaults to data/kilt-mini)
#
# Only the redistributable tasks are taken (fever, hotpotqa, nq, wow; see data/kilt-mini/LICENSE).
# Train and dev are sampled separately from realkilt2's own grouped splits, so no wow conversation
# crosses splits; then one last pass keeps every sampled query and adds the gold pages and random
# distractor pages. README.md and LICENSE in OUT_DIR are kept; the data files are replaced.
set -euo pipefail
SRC="$(cd "${1:?usage: scripts/make_kilt_mini.sh REALKILT2_DIR [OUT_DIR]}" && pwd)"
OUT="${2:-$(dirname "$0")/../data/kilt-mini}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
. "$(dirname "$0")/_env.sh"

TASKS="fever hotpotqa nq wow"
TRAIN_QUERIES=250      # per task; hotpotqa has only 173 training queries and keeps them all
DEV_QUERIES=100        # per task
DISTRACTORS=1000       # random pages besides the gold ones
SEED=0

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/train-src" "$TMP/dev-src" "$TMP/queries"
for task in $TASKS; do
    ln -s "$SRC/$task-train-kilt.jsonl" "$TMP/train-src/"
    ln -s "$SRC/$task-dev-kilt.jsonl" "$TMP/dev-src/"
done

# 1. a seeded sample of each task's train and dev queries (no pages yet)
mtr kilt-subset "$TMP/train-src" "$SRC/knowledge_source.jsonl.gz" "$TMP/train" \
    --queries "$TRAIN_QUERIES" --distractors 0 --seed "$SEED" > /dev/null
mtr kilt-subset "$TMP/dev-src" "$SRC/knowledge_source.jsonl.gz" "$TMP/dev" \
    --queries "$DEV_QUERIES" --distractors 0 --seed "$SEED" > /dev/null
cp "$TMP"/train/*-kilt.jsonl "$TMP"/dev/*-kilt.jsonl "$TMP/queries/"

# 2. every sampled query kept as is (--queries above any file's size), plus the pages
mtr kilt-subset "$TMP/queries" "$SRC/knowledge_source.jsonl.gz" "$TMP/out" \
    --queries 1000000 --distractors "$DISTRACTORS" --seed "$SEED" > "$TMP/summary.json"
python - "$TMP/summary.json" <<'EOF'
import json, sys
summary = json.load(open(sys.argv[1]))
if summary["missing_pages"]:
    sys.exit(f"make_kilt_mini: gold pages missing from the knowledge source: {summary['missing_pages'][:5]}")
print(f"{sum(summary['queries'].values())} queries, {summary['gold_pages']} gold and "
      f"{summary['distractor_pages']} distractor pages")
EOF

# 3. the knowledge source gzip'd without name or time stamp, so that rebuilding changes no byte
gzip -9 -n < "$TMP/out/knowledge_source.jsonl" > "$TMP/out/knowledge_source.jsonl.gz"
rm -f "$OUT"/*-kilt.jsonl "$OUT"/knowledge_source.jsonl*
cp "$TMP"/out/*-kilt.jsonl "$TMP/out/knowledge_source.jsonl.gz" "$OUT/"
ls -l "$OUT"
