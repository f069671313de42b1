#!/usr/bin/env bash
# Carries an unfinished scripts/train-default.sh run from one machine (or work session) to the
# next: the recipe takes longer than one sitting on a 2-core machine, and only the repository
# survives between sittings.
#
#   scripts/carry-training.sh save RUNS_DIR      copies what resuming needs into models/training-resume/
#   scripts/carry-training.sh restore RUNS_DIR   copies it back (then run scripts/train-default.sh RUNS_DIR)
#
# Kept per stage: its log, its `done` marker, its model (the next stage's --init) and, while the
# stage is unfinished, its latest checkpoint (trainer.pt: weights, optimiser, step, data RNG).
# Run `save` while the trainer is stopped (kill -STOP) or between checkpoints, so trainer.pt is
# not caught half-written.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?usage: carry-training.sh save|restore RUNS_DIR}"
runs="${2:?usage: carry-training.sh save|restore RUNS_DIR}"
carry=models/training-resume
case "$mode" in
  save)
    rm -rf "$carry"
    mkdir -p "$carry"
    for stage_dir in "$runs"/*/; do
      stage="$(basename "$stage_dir")"
      [ -f "$stage_dir/model/config.json" ] || continue
      mkdir -p "$carry/$stage"
      cp -r "$stage_dir/model" "$carry/$stage/model"
      [ -f "$runs/$stage.log" ] && cp "$runs/$stage.log" "$carry/$stage.log"
      if [ -f "$stage_dir/done" ]; then
        touch "$carry/$stage/done"
      elif [ -f "$stage_dir/trainer.pt" ]; then
        # A checkpoint writes model/ first, then trainer.pt: a newer model means one was caught
        # half-way (the two would not match).
        if [ "$stage_dir/model/model.safetensors" -nt "$stage_dir/trainer.pt" ] ||
           [ -f "$stage_dir/trainer.pt.tmp" ]; then
          echo "$stage: a checkpoint is being written; run save again in a moment" >&2
          exit 1
        fi
        cp "$stage_dir/trainer.pt" "$carry/$stage/trainer.pt"
      fi
    done
    du -sh "$carry"
    ;;
  restore)
    [ -d "$carry" ] || { echo "nothing to restore: no $carry"; exit 1; }
    mkdir -p "$runs"
    cp -r "$carry"/. "$runs"/
    echo "restored into $runs; continue with scripts/train-default.sh $runs"
    ;;
  *)
    echo "usage: carry-training.sh save|restore RUNS_DIR" >&2
    exit 2
    ;;
esac
