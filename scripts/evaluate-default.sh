#!/usr/bin/env bash
# Measures the default model and the attention-only baseline (docs/evaluation.md): bits per byte
# on the held-out text read as one stream (with gzip and xz for scale), by position in that
# stream, passkey accuracy against haystack length in both haystacks (RULER's noise, and English
# the model never trained on: the licence texts every Debian system has), and multi-fact recall. One titans-eval run per
# model, all in parallel with one thread each, written to docs/results/evaluation-NAME.{md,tsv};
# then the merged evaluation.tsv and the plots.
#
#   scripts/evaluate-default.sh [MODEL_DIR ...]   (default: models/default models/swa-baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$#" -gt 0 ] || set -- models/default models/swa-baseline
[ -f data/kjv.txt ] || scripts/prepare-data.sh
[ -x build/tools/titans-eval ] || scripts/build.sh titans-eval
mkdir -p docs/results
for dir in "$@"; do  # one thread per model, all models at once
  name="$(basename "$dir")"
  [ "$name" = model ] && name="$(basename "$(dirname "$dir")")"
  OMP_NUM_THREADS=1 build/tools/titans-eval --model "$dir" --data data/kjv.txt \
    --bpb_bytes 0 --bpb_ranges 1024,4096,16384,65536,131072 \
    --lengths 1024,4096,16384,65536,262144 --trials 10 --seed 7 \
    --text_haystack "$(ls /usr/share/common-licenses/* | grep -v -e GFDL$ -e GPL$ -e LGPL$ | paste -sd,)" \
    --recall_pairs 4 --recall_gaps 1024,4096 --recall_trials 20 \
    --tsv "docs/results/evaluation-$name.tsv" > "docs/results/evaluation-$name.md" &
done
wait
cat docs/results/evaluation-*.md
{
  printf 'what\tsubject\tlength\tvalue\n'
  for f in docs/results/evaluation-*.tsv; do tail -n +2 "$f"; done | sort -u
} > docs/results/evaluation.tsv
scripts/plot-results.sh
