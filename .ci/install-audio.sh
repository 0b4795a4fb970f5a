#!/usr/bin/env bash
# Install stable-audio-tools into the active Python without letting pip touch torch.
#
# Plain `pip install stable-audio-tools` resolves ~170 packages including a CUDA torch (via
# k-diffusion -> torchvision). The route measured in shared/research/feasibility.md instead:
#   1. the packages below with --no-deps (their pins would pull torch/torchvision/etc.);
#   2. the few pure dependencies the diffusion_cond (DiT + conditioners + generate) path imports;
#   3. delete torchaudio/lib/*.so: the 2.11.1 wheel ships CUDA builds that fail to load
#      (libc10_cuda.so); without them `import torchaudio` works and Resample/MelSpectrogram run.
# k_diffusion's top-level imports of torchvision/clean-fid/clip/scikit-image are NOT installed:
# tests/sat_support.py stubs them only while `import k_diffusion` runs.
# Not needed on that path (imported lazily by other model types, never installed here):
# vector-quantize-pytorch, x-transformers, local-attention, ema-pytorch, encodec, laion-clap,
# prefigure, auraloss, wandb, gradio, v-diffusion-pytorch, PyWavelets, descript-audio-codec,
# pytorch-lightning, webdataset, pandas.
#
# Idempotent: when everything is already in place it exits after one short Python check.
# Requires torch to be installed already; never installs, upgrades or replaces it.
# Usage: bash .ci/install-audio.sh      (PYTHON=/path/to/python to pick an interpreter)
set -euo pipefail

PY="${PYTHON:-python}"

NODEPS=(
  "stable-audio-tools==0.0.19"
  "k-diffusion==0.1.1"
  "alias-free-torch==0.0.6"
  "einops-exts==0.0.4"
  "torchaudio==2.11.1"
  "dctorch==0.1.2"
)
# installed normally (pure Python / CPU wheels; their torch requirement is already satisfied)
WITHDEPS=(scipy torchsde torchdiffeq jsonmerge tqdm pillow)

# Prints "ok" if nothing needs installing (no torch import: this stays well under a second).
state="$("$PY" - "${NODEPS[@]}" -- "${WITHDEPS[@]}" <<'EOF'
import importlib.metadata as md, importlib.util, os, sys, glob
args = sys.argv[1:]
sep = args.index("--")
pinned, loose = args[:sep], args[sep + 1:]
ok = True
for spec in pinned:
    name, version = spec.split("==")
    try:
        ok &= md.version(name) == version
    except md.PackageNotFoundError:
        ok = False
for name in loose:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        ok = False
spec = importlib.util.find_spec("torchaudio")
lib = os.path.join(spec.submodule_search_locations[0], "lib") if spec else ""
if lib and glob.glob(os.path.join(lib, "*.so")):
    ok = False
print("ok" if ok else "todo")
EOF
)"
if [[ "$state" == "ok" ]]; then
  echo "install-audio: stable-audio-tools route already installed"
  exit 0
fi

torch_version="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
if [[ -z "$torch_version" ]]; then
  echo "install-audio: torch is not installed in $("$PY" -c 'import sys; print(sys.executable)'); install a CPU torch first" >&2
  exit 1
fi

# Pin torch to what is installed, so nothing below can replace it (e.g. with a CUDA build).
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==${torch_version}" >"$constraints"

PIP=("$PY" -m pip install --disable-pip-version-check --no-input -q -c "$constraints")

"${PIP[@]}" --no-deps "${NODEPS[@]}"
echo "install-audio: pip may now list 'dependency conflicts' for k-diffusion, stable-audio-tools"
echo "install-audio: and dctorch (numpy<2 pin); they are expected with --no-deps and harmless here."
"${PIP[@]}" "${WITHDEPS[@]}"

# torchaudio's bundled extension libraries are CUDA builds; remove them so the import works.
lib="$("$PY" -c 'import importlib.util, os; s = importlib.util.find_spec("torchaudio"); print(os.path.join(s.submodule_search_locations[0], "lib"))')"
rm -f "$lib"/*.so

# Smoke check: the modules the diffusion_cond path imports (k_diffusion needs the test stubs, so
# only its dependencies are checked here).
"$PY" -c 'import torchaudio, torchaudio.transforms, einops_exts, dctorch, scipy, torchsde, torchdiffeq, jsonmerge, tqdm, PIL'
echo "install-audio: done (torch ${torch_version} untouched)"
