#!/usr/bin/env bash
# Ablations of NTP+KLAL on the demo's settings, seed 0 (docs/results.md, ablations):
#   the query role, the weight lambda, and Qwen2-VL as the second architecture.
# The NTP baseline they compare with is the seed-0 run of klal_seeds.sh (same data and steps).
set -euo pipefail
OUT=${OUT:-runs/experiments/klal_ablations}
LH=".venv/bin/lookhere experiment klal --seeds 0 --quiet"
for q in answer_start all_answer; do
  $LH --out "$OUT/query_$q" --conditions klal --query "$q" "$@"
done
for w in 0.1 10; do
  $LH --out "$OUT/lambda_$w" --conditions klal --weight "$w" "$@"
done
$LH --out "$OUT/qwen2_vl" --family qwen2_vl "$@"
.venv/bin/python experiments/summarise.py "$OUT"/*/
