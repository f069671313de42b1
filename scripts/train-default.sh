#!/usr/bin/env bash
# Trains the shipped default model (models/default, Titans MAL) and its attention-only baseline
# (models/swa-baseline) on the same data and budget, exactly as they were made
# (docs/evaluation.md), and installs them into models/. Stage 1: 3,200 steps of 4 x 1,024 bytes
# each, lr 2e-3 cosine to 2e-4, seed 11, the same data stream for both. Stages 2 and 3: 1,536
# stateful steps each over 32 KiB, then 128 KiB streams. They train side by side, one thread each:
# about 50 + 25 + 25 minutes for the Titans model on this 2-core machine, a third of that for the
# baseline. Resumable: run it again after an interruption.
#
#   scripts/train-default.sh [RUNS_DIR]     (default runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-runs}"
[ -f data/kjv.txt ] || scripts/prepare-data.sh
[ -x build/tools/titans-train ] || scripts/build.sh titans-train
mkdir -p "$RUNS"
ARGS=(--data data/kjv.txt --batch 4 --seq_len 1024 --passkey_fraction 0.3 --recall_fraction 0.2
      --passkey_noise_fraction 0.6 --answer_weight 2 --eval_every 200 --checkpoint_every 100
      --steps 3200 --warmup 100 --lr 2e-3 --min_lr 2e-4 --seed 11)

train() {  # NAME CONFIG: one titans-train run, resumed if it has a checkpoint
  local resume=()
  [ -f "$RUNS/$1/trainer.pt" ] && resume=(--resume)
  OMP_NUM_THREADS=1 build/tools/titans-train "${ARGS[@]}" --config "$2" --name "$1" \
    --out "$RUNS/$1" "${resume[@]}" >> "$RUNS/$1.log" 2>&1
}
train titans-default models/configs/titans-default.json &
train swa-baseline models/configs/swa-baseline.json &
wait

# Stages 2 and 3, stateful: each batch row is a long stream read as steps of 1 KiB, the session
# state carried from step to step (--stream_segments), so the memory learns to work after it has
# read far more than one training window: first 32 KiB streams, then 128 KiB (short to long).
# Both models get the same stages (same data, same steps).
STREAM_ARGS=(--data data/kjv.txt --batch 4 --seq_len 1024 --passkey_fraction 0.3
             --recall_fraction 0.2 --passkey_noise_fraction 0.6 --answer_weight 2
             --eval_every 256 --checkpoint_every 128 --steps 1536 --warmup 64)
stream() {  # NAME FROM TO SEGMENTS LR MIN_LR SEED: fine-tunes $RUNS/FROM/model into $RUNS/TO
  local resume=()
  [ -f "$RUNS/$3/trainer.pt" ] && resume=(--resume)
  OMP_NUM_THREADS=1 build/tools/titans-train "${STREAM_ARGS[@]}" --init "$RUNS/$2/model" \
    --stream_segments "$4" --lr "$5" --min_lr "$6" --seed "$7" \
    --name "$1" --out "$RUNS/$3" "${resume[@]}" >> "$RUNS/$3.log" 2>&1
}
stages() {  # NAME
  stream "$1" "$1" "$1-stream" 32 5e-4 1e-4 12
  stream "$1" "$1-stream" "$1-stream128" 128 3e-4 5e-5 13
}
stages titans-default &
stages swa-baseline &
wait

# The curves for docs/evaluation.md: step, loss, answer loss, held-out bits/byte.
mkdir -p docs/results
for name in titans-default swa-baseline titans-default-stream swa-baseline-stream \
    titans-default-stream128 swa-baseline-stream128; do
  awk 'BEGIN { print "step\tloss\tanswer_loss\theldout_bpb" }
      $1 == "step" && $3 == "loss" {
        a = ""; h = ""
        for (i = 1; i <= NF; ++i) { if ($i == "answers") a = $(i + 1); if ($i == "held-out") h = $(i + 1) }
        print $2 "\t" $4 "\t" a "\t" h }' "$RUNS/$name.log" > "docs/results/training-$name.tsv"
done
rm -rf models/default models/swa-baseline
cp -r "$RUNS/titans-default-stream128/model" models/default
cp -r "$RUNS/swa-baseline-stream128/model" models/swa-baseline
echo "installed models/default and models/swa-baseline"
