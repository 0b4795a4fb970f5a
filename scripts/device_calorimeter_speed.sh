#!/usr/bin/env bash
# Issue 6's speed item on a GPU machine: events per second of the SDI-GAN and ExpertSim generators
# on the GPU against the calorimeter world's Monte-Carlo simulator on one CPU thread (the papers'
# setting: GEANT4 on a CPU core against the generator on a GPU). About 2 minutes; needs only torch
# (the bench imports no diffusers / transformers), so the device image runs it as it is.
#
# With the device tool, from the repository root:
#   run(command="bash scripts/device_calorimeter_speed.sh", timeout_s=420)
# then copy $OUT's calorimeter_gan_speed_cuda.json to recipes/results/ and write the numbers into
# recipes/results/README.md (Speed).
#
#   DEVICE=cuda  EVENTS=20000   where the generators run, and how many held-out conditions
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
DEVICE="${DEVICE:-cuda}"
EVENTS="${EVENTS:-20000}"
OUT_DIR="${OUT:-/tmp}"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
fi
python3 -c "import torch; print('torch', torch.__version__, 'accelerator', torch.accelerator.current_accelerator())"
python3 -m benchmarks.bench_calorimeter_gan --device "$DEVICE" --events "$EVENTS" --batch-size "$EVENTS" \
    --rounds 5 --out "$OUT_DIR/calorimeter_gan_speed_$DEVICE.json" 2>&1 | tee "$OUT_DIR/speed_log.txt"
