#!/usr/bin/env bash
# Localization heads of tiny LLaVA models trained on Shapes VQA (untrained, NTP, NTP+KLAL):
# search on 1,000 REC samples (3 disjoint repeats), REC vs baselines (docs/results.md).
# About 15 minutes per seed on one thread; SEEDS="0" and SEEDS="1" run side by side with
# OMP_NUM_THREADS=1. Re-running skips seeds
# already written.
set -euo pipefail
OUT=${OUT:-runs/experiments/heads_seeds}
SEEDS=${SEEDS:-0 1 2}
# shellcheck disable=SC2086
.venv/bin/lookhere experiment heads --out "$OUT" --seeds $SEEDS --quiet "$@"
