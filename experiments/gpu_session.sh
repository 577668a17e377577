#!/bin/bash
# One lease of a GPU machine (an H200 here, lent for 15 minutes): the GPU benchmarks and a longer
# instruct stage of the pretrained miniature, from v9's aligned model. Run from the repository
# root on the GPU machine; writes everything under $OUT.
#
#   experiments/gpu_session.sh probe           # versions, 300 instruct steps (speed), benchmarks
#   experiments/gpu_session.sh instruct STEPS  # the instruct stage, STEPS x 32, checkpoints to $OUT
#
# Needs, carried beside the tree in .dev/ (git-ignored): whl/ (transformers 5.23.0, pycocotools:
# the machine's own transformers is older) and align_final/ (runs/pretrain9/align/final).
# The instruct stage is `lookhere pretrain train --stages instruct` with v9's recipe except the
# batch (32) and the step count; the run folder's align/final is v9's, so vision and align are
# v9's exactly.
set -u
MODE=${1:?usage: gpu_session.sh probe|instruct STEPS}
OUT=${OUT:?OUT must be set}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .dev/whl/*.whl >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src
LOG=$OUT/session.log
lookhere() { python3 -c 'import sys; from lookhere.cli import main; sys.exit(main())' "$@"; }

instruct() {  # STEPS SAVE_EVERY
  local run=/tmp/pretrain10-$1
  mkdir -p $run/align && cp -r .dev/align_final $run/align/final
  ( while sleep 5; do  # copy each Trainer checkpoint's weights out (save_total_limit keeps one)
      for d in $run/instruct/checkpoint-*; do
        [ -f "$d/model.safetensors" ] || continue
        dst=$OUT/step-${d##*-}.safetensors
        [ -f "$dst" ] || { sleep 2; cp "$d/model.safetensors" "$dst"; }
      done
    done ) &
  local watcher=$!
  lookhere pretrain train --out $run --stages instruct --instruct-steps "$1" \
    --instruct-batch-size 32 --save-steps "$2" --workers 10 --quiet 2>&1 | grep -v Warning
  kill $watcher; wait $watcher 2>/dev/null
  cp $run/instruct/final/model.safetensors $OUT/final-$1.safetensors
  cp $run/instruct/record.json $OUT/record-$1.json
  cp $run/config.json $OUT/config-$1.json
}

{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, transformers, sys; print(sys.version.split()[0], torch.__version__,
    torch.version.cuda, transformers.__version__, torch.cuda.get_device_name())'
  if [ "$MODE" = probe ]; then
    time instruct 300 300
    rm -f $OUT/*.safetensors
    for cmd in "bench/probe.py --device cuda --dtype bf16 --size all --sweep" \
               "bench/train_step.py --device cuda --size all" \
               "bench/heads.py --device cuda --dtype bf16 --size 7b"; do
      echo "== $cmd"; time timeout 75 python3 $cmd 2>&1 | grep -v Warning
    done
  else
    time instruct "${2:?STEPS}" $(( ${2} / 4 ))
  fi
  date -u
} 2>&1 | tee $LOG
