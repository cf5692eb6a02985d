#!/usr/bin/env bash
# The shipped compact model (vos_core/weights/MODEL_CARD.md): stage 1 then stage 2, resumable: rerun this
# script after a machine restart and each stage continues from its last.pth. Outputs in runs/ (git-ignored).
set -euo pipefail
# Threads that spin while waiting cost a shared machine dearly (BENCHMARKS.md: OMP_WAIT_POLICY A/B)
export OMP_WAIT_POLICY=PASSIVE
cd "$(dirname "$0")/../.."
. .venv/bin/activate
D=../shared/data
HOLD=bear,hockey,motorbike,dog-agility,rollerblade,soccerball
TRUNK=${TRUNK:-efficientnet_lite0}
COMMON="--config compact --trunk $TRUNK --batch 4 --crop 192 --frames 3 --precision bf16 --channels-last --threads 2
        --val-seqs $HOLD --val-frames 25 --save-every 50 --log-every 10 --no-progress --working-size 240"
run_stage() {  # out, init (or ""), then the stage's own options
  local out=$1 init=$2; shift 2
  if [ -f "$out/done" ]; then return; fi
  if [ -f "$out/last.pth" ]; then
    python -m vos_train "$@" $COMMON --out "$out" --resume "$out/last.pth"
  elif [ -n "$init" ]; then
    python -m vos_train "$@" $COMMON --out "$out" --init "$init"
  else
    python -m vos_train "$@" $COMMON --out "$out"
  fi
  python - "$out" <<'PY'
import sys, torch
ck = torch.load(f"{sys.argv[1]}/last.pth", map_location="cpu", weights_only=True)
a = __import__("json").loads(ck["args"])
sys.exit(0 if ck["iteration"] >= a["iters"] else 1)
PY
  touch "$out/done"
}
run_stage runs/s1 "" --stage 1 --coco-root $D/coco128-seg --data-root $D/davis16-train-240p --iters 300 \
  --lr 2e-4 --warmup 100 --max-objects 2 --val-every 200 --seed 11
run_stage runs/s2 runs/s1/best.pth --stage 2 --data-root $D/davis16-train-240p --coco-root $D/coco128-seg \
  --static-fraction 0.25 --max-objects 2 --iters 900 --lr 2e-4 --warmup 100 --max-skip 5 --val-every 450 --seed 12
# fp16 copy with the working size it was trained for, then the quality estimate fitted on the held-out sequences
python -c "from vos_core.model import load_model, save_checkpoint; \
  save_checkpoint(load_model('runs/s2/best.pth'), 'runs/uncalibrated.pth', half=True, extra={'working_size': 240})"
vos calibrate --checkpoint runs/uncalibrated.pth --data $D/davis16-train-240p --sequences $HOLD --sizes 240,180 \
  --out vos_core/weights/compact.pth
