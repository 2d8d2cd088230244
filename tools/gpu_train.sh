#!/usr/bin/env bash
# Issue 11 on a lent GPU, in one device call of about 10 minutes: train emoji2 variants side by side
# on the one GPU for MINUTES each, judge each there (samples: benchmarks/quality.py, seeds 0 and 1;
# held-out classification by likelihood over 8 noisy copies: benchmarks/classify.py), and pack each
# run's model (float16, about 15 MB) with its metrics and sample grid under $OUT for a closer look here.
#
#   device run, carry ["data/emoji2.npz"]:  bash tools/gpu_train.sh 6
#   here, a dry run on the CPU:  OUT=/tmp/gpu-out TEST_SET="batch_size=8 warmup_steps=1" \
#       QUALITY_ARGS="--per-class 2" CLASSIFY_ARGS="--limit 18" DEVICE=cpu bash tools/gpu_train.sh 0.2
#
# What comes back (the device returns at most 8 files, 16 MB each, 64 MB in all): summary.txt (every
# variant's numbers), logs.tar.gz (training logs, metrics, grids, judge output) and one
# <variant>.tar.gz per variant (model folder: config.json, model.safetensors in float16). Unpack a
# model with `tar xzf <variant>.tar.gz -C runs/` and judge it here as the cards do.
set -uo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-6}
OUT=${OUT:-runs/gpu-out}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-runs/gpu}
rm -rf "$RUNS"  # a run folder left by an earlier call would resume (and end at once) instead of training
mkdir -p "$OUT" "$RUNS"
STOP=$("$PY" -c "print($MINUTES + 2)")  # a clean stop if the fitted schedule overruns its budget

# name | share of MINUTES | overrides of configs/emoji2.json (all: mirroring but Symbols and Flags, 7.3 M parameters)
VARIANTS=(
  "scratch|1|batch_size=256 lr=1e-3 warmup_steps=300"
  "scratch-balanced|1|batch_size=256 lr=1e-3 warmup_steps=300 class_balance=0.5"
  "scratch-short|0.5|batch_size=256 lr=1e-3 warmup_steps=300"
  "finetune|1|init=checkpoints/emoji batch_size=128 lr=3e-4 warmup_steps=100"
)

if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/machine.txt"; fi
echo "started $(date -u +%FT%TZ), $MINUTES min per variant" > "$RUNS/timeline.txt"
pids=()
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name share sets <<< "$v"
  minutes=$("$PY" -c "print($MINUTES * $share)")
  # shellcheck disable=SC2086  # the overrides are words on purpose
  "$PY" -m tarflow train --config configs/emoji2.json --minutes "$minutes" --stop-after "$STOP" --quiet \
    --set threads=3 hflip=true 'no_flip=["Symbols","Flags"]' eval_every=0 eval_images=692 eval_classify=692 \
    checkpoint_minutes=1000 out="$RUNS/$name" $sets ${TEST_SET:-} > "$RUNS/$name.train.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "trained $(date -u +%FT%TZ)" >> "$RUNS/timeline.txt"

: > "$OUT/summary.txt"
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name share sets <<< "$v"; model="$RUNS/$name/model"
  {
    echo "== $name: $share x $MINUTES min, $sets"
    grep '"eval_' "$RUNS/$name/metrics.jsonl" | tail -n 1
    grep '"loss"' "$RUNS/$name/metrics.jsonl" | tail -n 1
  } >> "$OUT/summary.txt" 2>&1
  [ -f "$model/model.safetensors" ] || { echo "no model (see $name.train.log)" >> "$OUT/summary.txt"; continue; }
  for seed in 0 1; do
    # shellcheck disable=SC2086
    "$PY" benchmarks/quality.py --model "$model" --seed "$seed" --device "$DEVICE" ${QUALITY_ARGS:-} \
      > "$RUNS/$name.quality$seed.log" 2>&1
    grep -E "^samples|per class" "$RUNS/$name.quality$seed.log" | sed "s/^/seed $seed /" >> "$OUT/summary.txt"
  done
  # shellcheck disable=SC2086
  "$PY" benchmarks/classify.py --model "$model" --draws 8 --device "$DEVICE" ${CLASSIFY_ARGS:-} \
    > "$RUNS/$name.classify.log" 2>&1
  grep -E '"(accuracy|balanced_accuracy)"' "$RUNS/$name.classify.log" | tr -d ' \n' >> "$OUT/summary.txt"
  echo >> "$OUT/summary.txt"
  "$PY" - "$model" <<'EOF' >> "$OUT/summary.txt" 2>&1
import sys
from safetensors.torch import load_file, save_file
path = sys.argv[1] + "/model.safetensors"
save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(path).items()}, path)
EOF
  tar czf "$OUT/$name.tar.gz" -C "$RUNS" "$name/model"
done
echo "judged $(date -u +%FT%TZ)" >> "$RUNS/timeline.txt"
tar czf "$OUT/logs.tar.gz" -C "$RUNS" --exclude='*/model' --exclude='*/checkpoint' .
cat "$RUNS/timeline.txt" "$OUT/summary.txt"
