#!/usr/bin/env bash
# Logit lens of tiny LLaVA models trained on Shapes VQA with NTP and NTP+LLL (same seed, data
# and steps): lens segmentation mIoU/cIoU and pointing per concept type and layer, VQA accuracy.
# About 15 minutes per seed on one thread; SEEDS="0" and SEEDS="1" run side by side with
# OMP_NUM_THREADS=1. Re-running skips seeds already written.
set -euo pipefail
OUT=${OUT:-runs/experiments/lens_final}
SEEDS=${SEEDS:-0 1 2}
# shellcheck disable=SC2086
.venv/bin/lookhere experiment lens --out "$OUT" --seeds $SEEDS --quiet "$@"
.venv/bin/python experiments/summarise_lens.py "$OUT"
