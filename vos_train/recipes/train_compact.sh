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
# bf16 autocast where the CPU has bf16 units (AVX-512 BF16 / AMX: ~4x faster); without them bf16 is emulated
# and ~4x slower than fp32 (an AVX2-only AMD EPYC: over 12 s against 3.4 s per iteration), so fp32 there
if [ -z "${PRECISION:-}" ]; then
  if grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then PRECISION=bf16; else PRECISION=fp32; fi
fi
COMMON="--config compact --trunk $TRUNK --batch 4 --crop 192 --frames 3 --precision $PRECISION --channels-last --threads 2
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
# Stage 3: more real clips, a fresh cosine schedule and longer frame gaps (the shipped weights of
# 2026-12-01's second round were trained from the fp16 stage-2 weights; MODEL_CARD.md).
run_stage runs/s3 runs/s2/best.pth --stage 2 --data-root $D/davis16-train-240p --coco-root $D/coco128-seg \
  --static-fraction 0.25 --max-objects 2 --iters 650 --lr 1.5e-4 --warmup 50 --max-skip 8 --val-every 650 --seed 13
# fp16 copy with its working size: 480 (the stages' --working-size 240 records the scale of the 240p
# training frames, which is also the size their held-out validation runs at), the shorter side DAVIS is evaluated at and Cutie's and XMem's default
# internal size (larger inputs are scaled down to it, smaller ones run at their own size), then the quality
# estimate fitted on the held-out sequences
python -c "from vos_core.model import load_model, save_checkpoint; \
  save_checkpoint(load_model('runs/s3/best.pth'), 'runs/uncalibrated.pth', half=True, extra={'working_size': 480})"
vos calibrate --checkpoint runs/uncalibrated.pth --data $D/davis16-train-240p --sequences $HOLD --sizes 240,180 \
  --out vos_core/weights/compact.pth
