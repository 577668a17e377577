#!/bin/bash
# Copies each new Trainer checkpoint of a pretraining run (save_total_limit=1 keeps one) into
# CURVE/<stage>/step-N, with the processor files of the run's vision/final, so that
# pretrain_binding.py and pretrain_caption_binding.py can load every step for learning curves.
#   nohup experiments/pretrain_watch.sh runs/pretrain4 runs/curve4 > /dev/null 2>&1 &
RUN=${1:?usage: pretrain_watch.sh RUN CURVE}
CURVE=${2:?usage: pretrain_watch.sh RUN CURVE}
while true; do
  for d in "$RUN"/*/checkpoint-*; do
    [ -d "$d" ] || continue
    stage=$(basename "$(dirname "$d")"); step=${d##*-}
    [ "$stage" = vision ] && continue  # the tower with its dense heads, not a LLaVA model
    dst=$CURVE/$stage/step-$step
    if [ ! -d "$dst" ] && [ -f "$d/model.safetensors" ] && [ -d "$RUN/vision/final" ]; then
      sleep 5; mkdir -p "$dst"
      cp "$d/model.safetensors" "$d/config.json" "$dst/" 2>/dev/null
      for f in "$RUN"/vision/final/*; do
        case $(basename "$f") in model.safetensors|config.json) ;; *) cp "$f" "$dst/" ;; esac
      done
    fi
  done
  sleep 30
done
