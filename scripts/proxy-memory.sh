#!/usr/bin/env bash
# A 5-10 minute proxy experiment on the memory's retrieval (docs/evaluation.md, "Memory
# ablation"): trains a variant of models/configs/titans-default.json on passkey tasks alone (the
# noise haystack, 8 x 384 bytes per step, lr 3e-3), then measures passkey recall at 256, 1 K
# and 4 K bytes of haystack with titans-eval.
#
#   scripts/proxy-memory.sh NAME STEPS [KEY=VALUE ...]     e.g.
#   scripts/proxy-memory.sh b16_t10 400 variant=lmm memory.theta_max=0.1 memory.eta_bias_init=-2
#
# KEY is a config.json path (memory.chunk_size, variant, ...). Output: runs/proxy/NAME.{train,eval}
# and the model in runs/proxy/NAME/model. One thread; two proxies run side by side on 2 cores.
#
# PROXY_TASK=recall trains on multi-fact recall tasks alone instead (MakeRecallTask: 17 "key=value"
# facts per 384-byte row, a quarter of it noise filler, then every key asked) and measures 4-fact
# recall after 256 and 1 K bytes of noise (20 tasks, 80 facts each).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,12p "$0"; exit 2; }
name="$1" steps="$2"
shift 2
[ -f data/kjv.txt ] || scripts/prepare-data.sh
[ -x build/tools/titans-train ] || scripts/build.sh titans-train titans-eval
out=runs/proxy
mkdir -p "$out"
python3 - "$out/$name.json" "$@" <<'PY'
import json, sys
config = json.load(open("models/configs/titans-default.json"))
for item in sys.argv[2:]:
    key, value = item.split("=", 1)
    node = config
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    # A key the file leaves at its default (e.g. memory.qk_activation) is added; a misspelt one
    # is refused by titans-train's config check, which names it.
    try:
        node[last] = json.loads(value)
    except json.JSONDecodeError:
        node[last] = value
json.dump(config, open(sys.argv[1], "w"), indent=1)
PY
task=(--passkey_fraction 1)
measure=(--lengths 256,1024,4096 --trials 10 --recall_pairs 0)
if [ "${PROXY_TASK:-passkey}" = recall ]; then
  task=(--recall_fraction 1 --passkey_fraction 0)
  measure=(--lengths 256 --trials 1 --recall_pairs 4 --recall_gaps 256,1024)
fi
OMP_NUM_THREADS=1 build/tools/titans-train --data data/kjv.txt --config "$out/$name.json" \
  --out "$out/$name" --steps "$steps" --batch 8 --seq_len 384 "${task[@]}" \
  --passkey_noise_fraction 1 --lr 3e-3 --min_lr 3e-4 --warmup 40 --eval_every 0 \
  --checkpoint_every 100000 --seed 5 > "$out/$name.train" 2>&1
OMP_NUM_THREADS=1 build/tools/titans-eval --model "$out/$name/model" --data data/kjv.txt \
  --bpb_bytes 4096 --bpb_ranges 1024 --fillers noise "${measure[@]}" \
  > "$out/$name.eval" 2>&1
grep -E '^\| (256|1024|4096) ' "$out/$name.eval"
