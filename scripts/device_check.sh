#!/usr/bin/env bash
# Issue 25 on a GPU machine: the device tests, SAE training against sparsify on the same GPU, and
# the calorimeter GAN trained there for a few epochs plus its generators' events/s against the
# Monte-Carlo simulator on one CPU thread (the papers' comparison). Writes $OUT/device_check.json
# (one entry per part, each with its exit code, so one failing part leaves the others' numbers)
# and each part's log. About 5 minutes at SIZE=full.
#
# The device image has torch; what else it has is not known beforehand. Carry the pure-Python
# packages the SAE comparison imports, built here first (git-ignored):
#   bash scripts/device_check.sh --prepare        # -> benchmarks/.device-site (sparsify and co.)
#   run(command="bash scripts/device_check.sh", carry=["benchmarks/.device-site"], timeout_s=480)
# then copy $OUT's device_check.json and the sae_training_cuda.{json,md} to benchmarks/results/.
#
#   DEVICE=cuda  SIZE=full|tiny   (a dry run here: DEVICE=cpu SIZE=tiny bash scripts/device_check.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
SITE=benchmarks/.device-site
if [[ "${1:-}" == "--prepare" ]]; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$SITE" \
        eai-sparsify==1.3.3 natsort simple-parsing docstring-parser schedulefree jaxtyping wadler-lindig einops
    echo '*' > "$SITE/.gitignore"
    du -sh "$SITE"
    exit 0
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}${SITE:+:$PWD/$SITE}"
DEVICE="${DEVICE:-cuda}"
SIZE="${SIZE:-full}"
OUT_DIR="${OUT:-/tmp/device_check}"
mkdir -p "$OUT_DIR"
if [[ "$SIZE" == tiny ]]; then QUICK=--quick; EPOCHS=1; CONDITIONS=64; EVENTS=200; ROUNDS=1; else
    QUICK=; EPOCHS=3; CONDITIONS=1500; EVENTS=20000; ROUNDS=5; fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT_DIR/torch.txt"

part() {  # part NAME COMMAND...: run it, keep its log and exit code
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$OUT_DIR/$name.log"
    echo "{\"rc\": $rc, \"seconds\": $((SECONDS - start))}" >"$OUT_DIR/$name.rc.json"
}

# 1. every loop's one-step test, here on this device too (the CUDA cases run where CUDA is present)
part device_tests python3 -m pytest -q -p no:cacheprovider tests/test_devices.py
# 2. SAE training, ours against sparsify's SparseCoder, same activations, same device
part sae_training python3 -m benchmarks.sae_training $QUICK --device "$DEVICE" --python python3 --out "$OUT_DIR"
# 3. the calorimeter GAN: a few epochs of training on the device
part gan_training python3 - "$DEVICE" "$EPOCHS" "$CONDITIONS" "$OUT_DIR/gan_training.json" <<'EOF'
import json, sys, time
import torch
from recipes.gan.data import make_split, prepare
from recipes.sdi_gan import default_config
from recipes.gan.trainer import GanTrainer

device, epochs, conditions, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
train, _ = make_split(conditions, 8)
trainer = GanTrainer(default_config(epochs=epochs), prepare(train), device=device)
sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
sync(); start = time.perf_counter()
history = trainer.fit(progress=False)
sync(); seconds = time.perf_counter() - start
events = trainer.step * trainer.cfg.batch_size
result = {"device": str(trainer.device), "epochs": epochs, "steps": trainer.step, "seconds": seconds,
          "train_events_per_s": events / seconds, "last_epoch": history[-1]}
print(json.dumps(result))
json.dump(result, open(out, "w"), indent=1)
EOF
# 4. generator events/s on the device against the simulator on one CPU thread
part gan_speed python3 -m benchmarks.bench_calorimeter_gan --device "$DEVICE" --events "$EVENTS" \
    --batch-size "$EVENTS" --rounds "$ROUNDS" --out "$OUT_DIR/calorimeter_gan_speed.json"

python3 - "$OUT_DIR" "$DEVICE" "$SIZE" <<'EOF'
import json, pathlib, sys
out, device, size = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def read(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
suffix = "_quick" if size == "tiny" else ""
suffix += "" if device == "cpu" else f"_{device}"
report = {"device": device, "size": size, "gpu": (out / "gpu.txt").read_text() if (out / "gpu.txt").exists() else None}
for name, result in [("device_tests", None), ("sae_training", f"sae_training{suffix}.json"),
                     ("gan_training", "gan_training.json"), ("gan_speed", "calorimeter_gan_speed.json")]:
    report[name] = {**(read(f"{name}.rc.json") or {}), "result": read(result) if result else None,
                    "log_tail": (out / f"{name}.log").read_text()[-1500:]}
(out / "device_check.json").write_text(json.dumps(report, indent=1))
print("wrote", out / "device_check.json", {k: v.get("rc") for k, v in report.items() if isinstance(v, dict)})
EOF
