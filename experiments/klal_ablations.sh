#!/usr/bin/env bash
# Ablations of NTP+KLAL on the demo's settings, seed 0 (docs/results.md, ablations). Each compares
# with the seed-0 NTP run of klal_seeds.sh (same data, steps and initial weights).
#   query role: answer_start and all_answer (the paper's last_answer is the main table), on the
#               tasks with a one-token answer (Line Intersection) and a multi-token one (Grid Patch);
#   lambda:     0.1 and 10 (main table: 1) on Grid Patch;
#   Qwen2-VL:   the second architecture, NTP and NTP+KLAL on all three tasks.
# STREAM=a or STREAM=b runs half of it (two processes side by side on 2 cores); default both.
set -euo pipefail
OUT=${OUT:-runs/experiments/klal_ablations}
LH=".venv/bin/lookhere experiment klal --seeds 0 --quiet"
if [[ "${STREAM:-ab}" == *a* ]]; then
  for q in answer_start all_answer; do
    $LH --out "$OUT/query_$q" --conditions klal --klal-query "$q" \
        --tasks grid_patch line_intersection "$@"
  done
  for w in 0.1 10; do
    $LH --out "$OUT/lambda_$w" --conditions klal --klal-weight "$w" --tasks grid_patch "$@"
  done
fi
if [[ "${STREAM:-ab}" == *b* ]]; then
  $LH --out "$OUT/qwen2_vl" --family qwen2_vl "$@"
fi
if [[ "${STREAM:-ab}" == "ab" ]]; then
  .venv/bin/python experiments/summarise.py "$OUT"/*/
fi
