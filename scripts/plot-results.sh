#!/usr/bin/env bash
# Draws the PNG plots of docs/evaluation.md and docs/benchmarks.md from the TSV files in
# docs/results/ (gnuplot, from scripts/setup.sh). Plots whose data is missing are skipped.
set -euo pipefail
cd "$(dirname "$0")/../docs/results"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
term='set terminal pngcairo size 800,480 font ",11"; set grid; set key top left'
if ! gnuplot -e 'set terminal pngcairo' -e 'exit' 2>/dev/null; then
  term='set terminal png size 800,480; set grid; set key top left'
fi

if [ -f evaluation.tsv ]; then
  # what subject length value -> one file per (what, subject)
  awk -F'\t' -v d="$tmp" 'NR > 1 && $1 ~ /^(passkey|digits)-/ {
      n = $2; gsub(/[^A-Za-z0-9]/, "_", n); print $3 "\t" $4 > (d "/" $1 "." n) }' evaluation.tsv
  for f in "$tmp"/passkey-* "$tmp"/digits-*; do [ -f "$f" ] && sort -n -o "$f" "$f"; done
  # Bits per byte by position in one long held-out stream (x: the end of each range).
  awk -F'\t' -v d="$tmp" 'NR > 1 && $1 == "bpb-at" {
      n = $2; gsub(/[^A-Za-z0-9]/, "_", n); print $3 "\t" $4 > (d "/bpb-at." n) }' evaluation.tsv
  plots=""
  for f in "$tmp"/bpb-at.*; do
    [ -f "$f" ] || continue
    sort -n -o "$f" "$f"
    name="$(basename "$f")"
    title="${name#bpb-at.}"
    plots="$plots${plots:+, }'$f' using 1:2 with linespoints lw 2 title '${title//_/ }'"
  done
  if [ -n "$plots" ]; then
    gnuplot -e "$term; set output 'bpb-by-position.png'; set logscale x 2; set key top left;
      set xlabel 'position in the stream (end of range, bytes)'; set ylabel 'bits per byte';
      set title 'Held-out bits per byte by position in one long session (lower is better)';
      plot $plots"
  fi
  for filler in noise text; do
    plots=""
    for f in "$tmp"/passkey-$filler.* "$tmp"/digits-$filler.*; do
      [ -f "$f" ] || continue
      name="$(basename "$f")"
      plots="$plots${plots:+, }'$f' using 1:2 with linespoints lw 2 title '${name//_/ }'"
    done
    [ -n "$plots" ] || continue
    gnuplot -e "$term; set output 'passkey-$filler.png'; set logscale x 2;
      set xlabel 'haystack bytes (attention window: 64)'; set ylabel 'accuracy';
      set yrange [0:1.05]; set title 'Passkey retrieval, $filler haystack (whole key and per digit)';
      plot $plots"
  done
fi

if [ -f sweep.tsv ]; then
  awk -F'\t' -v d="$tmp" 'NR > 1 { print $2 "\t" $5 "\t" $14 "\t" $16 "\t" $11 "\t" $13 > (d "/sweep." $3) }' sweep.tsv
  gnuplot -e "$term; set output 'sweep-throughput.png'; set logscale x 2;
    set xlabel 'concurrent sessions'; set ylabel 'tokens/s (appended + generated)';
    set title 'Aggregate throughput vs concurrency (mixed load, closed loop)';
    plot '$tmp/sweep.grpc' using 1:2 with linespoints lw 2 title 'gRPC server',
         '$tmp/sweep.in-process' using 1:2 with linespoints lw 2 title 'in-process engine'"
  gnuplot -e "$term; set output 'sweep-latency.png'; set logscale x 2; set logscale y;
    set xlabel 'concurrent sessions'; set ylabel 'seconds';
    set title 'Latency vs concurrency (gRPC): chat turn and append, p50 and p99';
    plot '$tmp/sweep.grpc' using 1:3 with linespoints lw 2 title 'turn p50',
         '$tmp/sweep.grpc' using 1:4 with linespoints lw 2 title 'turn p99',
         '$tmp/sweep.grpc' using 1:5 with linespoints lw 2 title 'append p50',
         '$tmp/sweep.grpc' using 1:6 with linespoints lw 2 title 'append p99'"
fi

if [ -f sweep-chat.tsv ]; then
  awk -F'\t' 'NR > 1 { print $2 "\t" $5 "\t" $17 "\t" $19 "\t" $20 "\t" $22 }' sweep-chat.tsv > "$tmp/chat"
  gnuplot -e "$term; set output 'sweep-chat.png'; set logscale x 2; set logscale y;
    set xlabel 'concurrent chat sessions'; set ylabel 'seconds';
    set y2label 'tokens/s'; set y2tics; set logscale y2;
    set title 'Chat turns (256-byte append + 32 generated tokens): batching across sessions';
    plot '$tmp/chat' using 1:2 axes x1y2 with linespoints lw 2 title 'tokens/s (right)',
         '$tmp/chat' using 1:3 with linespoints lw 2 title 'TTFT p50',
         '$tmp/chat' using 1:5 with linespoints lw 2 title 'ITL p50',
         '$tmp/chat' using 1:6 with linespoints lw 2 title 'ITL p99'"
fi

if [ -f history.tsv ]; then
  awk -F'\t' -v d="$tmp" 'NR > 1 { n = $1; gsub(/[^A-Za-z0-9]/, "_", n); print $2 "\t" $3 "\t" $4 "\t" $5 > (d "/history." n) }' history.tsv
  plots_a=""; plots_d=""
  for f in "$tmp"/history.*; do
    name="$(basename "$f")"; name="${name#history.}"; name="${name//_/-}"
    plots_a="$plots_a${plots_a:+, }'$f' using 1:2 with linespoints lw 2 title '$name'"
    plots_d="$plots_d${plots_d:+, }'$f' using 1:3 with linespoints lw 2 title '$name'"
  done
  gnuplot -e "$term; set output 'history-append.png'; set logscale xy;
    set xlabel 'session history (tokens)'; set ylabel 'microseconds per appended token';
    set title 'Append cost vs history: Titans (constant) vs full attention'; plot $plots_a"
  gnuplot -e "$term; set output 'history-decode.png'; set logscale xy;
    set xlabel 'session history (tokens)'; set ylabel 'milliseconds per decoded token';
    set title 'Decode cost vs history: Titans (constant) vs full attention'; plot $plots_d"
fi
ls -1 ./*.png 2>/dev/null || true

# Training curves: training-<model>.tsv (step, loss, answer loss, held-out bits/byte or empty),
# written by scripts/train-default.sh from the logs.
if ls training-*.tsv >/dev/null 2>&1; then
  plots_h=""; plots_a=""
  for f in training-*.tsv; do
    name="${f#training-}"; name="${name%.tsv}"
    awk -F'\t' 'NR > 1 && $4 != "" { print $1 "\t" $4 }' "$f" > "$tmp/heldout.$name"
    # 100-step means of the answer loss (single steps are noisy).
    awk -F'\t' 'NR > 1 && $3 != "" { b = int($1 / 100); s[b] += $3; n[b]++ }
      END { for (b in n) print b * 100 + 50 "\t" s[b] / n[b] }' "$f" | sort -n > "$tmp/answers.$name"
    plots_h="$plots_h${plots_h:+, }'$tmp/heldout.$name' using 1:2 with linespoints lw 2 title '$name'"
    plots_a="$plots_a${plots_a:+, }'$tmp/answers.$name' using 1:2 with lines lw 2 title '$name'"
  done
  gnuplot -e "$term; set key top right; set output 'training-heldout.png'; set xlabel 'step';
    set ylabel 'held-out bits per byte'; set title 'Held-out bits per byte during training';
    plot $plots_h"
  gnuplot -e "$term; set key top right; set output 'training-answers.png'; set xlabel 'step';
    set ylabel 'nats per answer digit (chance 2.30)';
    set title 'Passkey and recall answer loss during training (100-step means)'; plot $plots_a"
fi
