#!/usr/bin/env bash
# Build benchmarks/.venv-peers: the peer libraries (nnsight, pyvene; baukit is vendored) beside
# this package, in their own virtual environment so their pins never touch ours.
#
# Order matters: the CPU torch goes in FIRST, at the same version as the calling interpreter's,
# and every later install runs under a constraint that pins it, so nothing can swap in a CUDA
# build. nnsight and pyvene are installed with --no-deps plus the dependencies they import.
# transformers/diffusers are pinned to the calling interpreter's versions so that both
# environments run the same model code. Idempotent: a finished venv is reused (delete it, or
# pass --force, to rebuild).
#
#   bash benchmarks/peers.sh [--force]        (PYTHON=... picks the base interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv-peers"
base_py="${PYTHON:-python3}"
NNSIGHT_SPEC="${NNSIGHT_SPEC:-nnsight==0.8.1}"
PYVENE_SPEC="${PYVENE_SPEC:-pyvene==0.1.8}"
stamp_version="v1 $NNSIGHT_SPEC $PYVENE_SPEC"

if [[ "${1:-}" == "--force" ]]; then rm -rf "$venv"; fi
if [[ -f "$venv/.peers-ready" && "$(cat "$venv/.peers-ready")" == "$stamp_version" ]]; then
    echo "peers venv ready: $venv"
    exit 0
fi

read -r torch_v tf_v df_v st_v < <("$base_py" - <<'EOF'
import importlib.metadata as m
print(*(m.version(p) for p in ("torch", "transformers", "diffusers", "safetensors")))
EOF
)
echo "peers venv: torch==$torch_v transformers==$tf_v diffusers==$df_v safetensors==$st_v, $NNSIGHT_SPEC, $PYVENE_SPEC"

rm -rf "$venv"
"$base_py" -m venv "$venv"
py="$venv/bin/python"
pip=("$py" -m pip install --quiet --disable-pip-version-check)

# 1. torch, first and alone, the exact build of the base interpreter (e.g. 2.13.0+cpu).
"${pip[@]}" "torch==$torch_v"
cons="$venv/constraints.txt"
echo "torch==$torch_v" > "$cons"
export PIP_CONSTRAINT="$cons"

# 2. the model libraries at the base interpreter's versions, and this package's own deps.
"${pip[@]}" "transformers==$tf_v" "diffusers==$df_v" "safetensors==$st_v" accelerate \
    numpy einops jaxtyping tqdm psutil

# 3. the peers without their dependency pins, then what they import.
"${pip[@]}" --no-deps "$NNSIGHT_SPEC" "$PYVENE_SPEC"
# nnsight: greenlet pydantic pyyaml cloudpickle websocket-client zstandard httpx (its runtime imports)
# pyvene: imports seaborn/networkx/matplotlib at module level (plots); datasets/plotnine/ipywidgets it
# lists are only used by tutorials and are left out.
"${pip[@]}" greenlet pydantic pyyaml cloudpickle websocket-client zstandard httpx \
    seaborn matplotlib networkx sentencepiece protobuf

# 4. this package, editable, without deps (they are above).
"${pip[@]}" --no-deps -e "$root"

# 5. nothing may have replaced torch.
"$py" - "$torch_v" <<'EOF'
import sys
import torch
import nnsight, pyvene, interventions  # noqa: F401  (import check)
want = sys.argv[1]
assert torch.__version__ == want, f"torch changed: {torch.__version__} != {want}"
assert torch.version.cuda is None or "+cpu" not in want, "a CUDA torch was pulled in"
print("peers venv ok:", torch.__version__, "nnsight", nnsight.__version__, "pyvene", getattr(pyvene, "__version__", "0.1.8?"))
EOF
echo "$stamp_version" > "$venv/.peers-ready"
