#!/bin/bash
# Copies each new Trainer checkpoint of the pretraining run (save_total_limit=1 keeps one) for learning curves.
while true; do
  for d in runs/pretrain/*/checkpoint-*; do
    [ -d "$d" ] || continue
    stage=$(basename $(dirname $d)); step=${d##*-}
    dst=runs/curve/$stage/step-$step
    if [ ! -d "$dst" ] && [ -f "$d/model.safetensors" ]; then
      sleep 5; mkdir -p $dst; cp $d/model.safetensors $d/config.json $dst/ 2>/dev/null
    fi
  done
  sleep 30
done
