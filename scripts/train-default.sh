#!/usr/bin/env bash
# Trains the candidate default models (Titans MAL and Titans LMM) and the attention-only baseline
# on the same data and budget, exactly as they were made (docs/evaluation.md): about 50 minutes per
# model on one core (one thread each; they run side by side). Resumable: run it again after an
# interruption. Which candidate became models/default, and why: docs/evaluation.md.
#
#   scripts/train-default.sh [RUNS_DIR]     (default runs/; the models end in RUNS_DIR/*/model)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-runs}"
[ -f data/kjv.txt ] || scripts/prepare-data.sh
[ -x build/tools/titans-train ] || scripts/build.sh titans-train
mkdir -p "$RUNS"
COMMON=(--data data/kjv.txt --steps 3200 --batch 4 --seq_len 1024 --warmup 100 --lr 2e-3
        --min_lr 2e-4 --passkey_fraction 0.3 --recall_fraction 0.2 --passkey_noise_fraction 0.6
        --answer_weight 2 --eval_every 200 --checkpoint_every 100 --seed 11)
train() {  # NAME CONFIG
  local resume=()
  [ -f "$RUNS/$1/trainer.pt" ] && resume=(--resume)
  OMP_NUM_THREADS=1 build/tools/titans-train "${COMMON[@]}" --config "$2" --name "$1" \
    --out "$RUNS/$1" "${resume[@]}" >> "$RUNS/$1.log" 2>&1
}
train titans-default models/configs/titans-default.json &
train titans-lmm models/configs/titans-lmm.json &
train swa-baseline models/configs/swa-baseline.json &
wait
# The curves for docs/evaluation.md: step, loss, answer loss, held-out bits/byte.
mkdir -p docs/results
for name in titans-default titans-lmm swa-baseline; do
  awk 'BEGIN { print "step\tloss\tanswer_loss\theldout_bpb" }
    $1 == "step" && $3 == "loss" {
      a = ""; h = ""
      for (i = 1; i <= NF; ++i) { if ($i == "answers") a = $(i + 1); if ($i == "held-out") h = $(i + 1) }
      print $2 "\t" $4 "\t" a "\t" h }' "$RUNS/$name.log" > "docs/results/training-$name.tsv"
done
echo "trained: $RUNS/{titans-default,titans-lmm,swa-baseline}/model"
