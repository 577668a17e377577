#!/usr/bin/env bash
# More steps: NTP vs NTP+KLAL with 3,000 steps per run (3x the demo), seed 0, on Grid Patch and
# Line Intersection (docs/results.md). About 20 minutes as two streams side by side:
#   STREAM=a (Grid Patch) and STREAM=b (Line Intersection); default both, one after the other.
set -euo pipefail
OUT=${OUT:-runs/experiments/klal_long}
LH=".venv/bin/lookhere experiment klal --seeds 0 --steps 3000 --quiet"
if [[ "${STREAM:-ab}" == *a* ]]; then $LH --out "$OUT/grid_patch" --tasks grid_patch "$@"; fi
if [[ "${STREAM:-ab}" == *b* ]]; then
  $LH --out "$OUT/line_intersection" --tasks line_intersection "$@"
fi
