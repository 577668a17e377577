#!/usr/bin/env bash
# NTP vs NTP+KLAL, 3 seeds, the demo's settings (docs/results.md, main table).
# About 12 minutes per seed on 2 CPU cores. Re-running skips seeds already written.
set -euo pipefail
OUT=${OUT:-runs/experiments/klal_seeds}
.venv/bin/lookhere experiment klal --out "$OUT" --seeds 0 1 2 --quiet "$@"
.venv/bin/python experiments/summarise.py "$OUT"
