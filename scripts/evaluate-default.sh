#!/usr/bin/env bash
# Measures the default model against its attention-only baseline (docs/evaluation.md): bits per
# byte on held-out text (with gzip and xz for scale) and passkey accuracy against haystack length
# in both haystacks. Writes docs/results/evaluation.{md,tsv} and the PNG plots.
#
#   scripts/evaluate-default.sh [MODEL [BASELINE]]   (default models/default models/swa-baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-models/default}"
BASELINE="${2:-models/swa-baseline}"
[ -f data/kjv.txt ] || scripts/prepare-data.sh
[ -x build/tools/titans-eval ] || scripts/build.sh titans-eval
mkdir -p docs/results
build/tools/titans-eval --model "$MODEL" --baseline "$BASELINE" --data data/kjv.txt \
  --lengths 1024,4096,16384,65536,262144 --trials 10 --seed 7 \
  --tsv docs/results/evaluation.tsv | tee docs/results/evaluation.md
scripts/plot-results.sh
