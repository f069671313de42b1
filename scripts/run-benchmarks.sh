#!/usr/bin/env bash
# Runs the end-to-end benchmarks of docs/benchmarks.md on this machine and writes the raw results
# to docs/results/ (sweep.tsv, fixed-rate.txt, history.tsv, long-session.txt, soak.txt and the
# console output of each), then the plots. Run it on an otherwise idle machine: about 20 minutes
# on 2 cores.
#
#   scripts/run-benchmarks.sh [--quick]    (--quick: shorter runs, for trying it out)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1
[ -x build/tools/titans-bench ] && [ -x build/tools/titans-bench-history ] ||
  scripts/build.sh titans-bench titans-bench-history titans-server
out=docs/results
mkdir -p "$out"
seconds=10; sessions=1,2,4,8,16,32,64,128,256; long=2000000; soak=180
histories=1024,16384,262144,2097152
if [ "$quick" = 1 ]; then
  seconds=2; sessions=1,4,16; long=100000; soak=20; histories=1024,16384
fi
bench=build/tools/titans-bench

echo "== concurrency sweep (mixed load, closed loop, gRPC vs in-process)"
rm -f "$out/sweep.tsv"
$bench --sessions "$sessions" --seconds "$seconds" --mix mixed --tsv "$out/sweep.tsv" |
  tee "$out/sweep.txt"

echo "== decode-heavy sweep (chat turns only): what batching decode steps across sessions buys"
rm -f "$out/sweep-chat.tsv"
$bench --sessions "$sessions" --seconds "$seconds" --mix chat --baseline=false \
  --tsv "$out/sweep-chat.tsv" | tee "$out/sweep-chat.txt"

echo "== fixed rate: 16 chat sessions at 8 turns/s"
$bench --sessions 16 --seconds "$((seconds * 3))" --mix chat --rate 8 | tee "$out/fixed-rate.txt"

echo "== per-token cost against history: Titans vs full attention"
build/tools/titans-bench-history --histories "$histories" --tsv "$out/history.tsv" |
  tee "$out/history.txt"

echo "== one long session through the server, passkey at the start"
$bench --long_tokens "$long" --long_append_bytes 65536 | tee "$out/long-session.txt"

echo "== soak"
$bench --soak --seconds "$soak" --sample_seconds 10 --sessions 8 | tee "$out/soak.txt"

scripts/plot-results.sh
