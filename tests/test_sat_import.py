"""A user's route to stable-audio-tools: the install script adds without deleting, and
``interventions.adapters.sat_import`` imports and runs a model with nothing from tests/."""

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from interventions.adapters import sat_import

ROOT = Path(__file__).resolve().parents[1]
SAT_INSTALLED = all(importlib.util.find_spec(m) for m in ("stable_audio_tools", "k_diffusion"))
needs_sat = pytest.mark.skipif(not SAT_INSTALLED, reason=sat_import.INSTALL_HINT)

# What a user writes: the helper, then stable-audio-tools' own API on a tiny model built from a
# config (number conditioners only: no tokenizer, no download). The last line printed is JSON.
USER_SCRIPT = """
import json, sys
import torch
import torch._dynamo.config as dynamo

dynamo_before = (dynamo.suppress_errors, dynamo.cache_size_limit)
from interventions.adapters.sat_import import import_stable_audio_tools

import_stable_audio_tools()
from stable_audio_tools.inference.generation import generate_diffusion_cond
from stable_audio_tools.models.factory import create_model_from_config

numbers = {"min_val": 0, "max_val": 512}
config = {
    "model_type": "diffusion_cond", "sample_size": 16, "sample_rate": 16000, "audio_channels": 1,
    "model": {
        "io_channels": 4,
        "conditioning": {"cond_dim": 32, "configs": [
            {"id": "seconds_start", "type": "number", "config": numbers},
            {"id": "seconds_total", "type": "number", "config": numbers},
        ]},
        "diffusion": {
            "type": "dit", "diffusion_objective": "v",
            "cross_attention_cond_ids": ["seconds_start", "seconds_total"],
            "global_cond_ids": ["seconds_start", "seconds_total"],
            "config": {"io_channels": 4, "embed_dim": 64, "depth": 2, "num_heads": 2, "cond_token_dim": 32,
                       "global_cond_dim": 64, "project_cond_tokens": False,
                       "transformer_type": "continuous_transformer", "zero_init_branch_outputs": False},
        },
    },
}
torch.manual_seed(0)
model = create_model_from_config(config).eval()
cond = [{"seconds_start": 0.0, "seconds_total": 1.0}] * 2

def run(seed):
    return generate_diffusion_cond(model, steps=4, cfg_scale=3.0, conditioning=cond, batch_size=2,
                                   sample_size=16, seed=seed, device="cpu", sampler_type="dpmpp-3m-sde")

out = run(0)
resample_error = ""
try:
    from stable_audio_tools.models.pretransforms import Resample
    Resample(1, 2)
except ImportError as exc:
    resample_error = str(exc)
stand_ins = sorted(m for m in sys.modules if m.split(".")[0] in ("torchvision", "cleanfid", "clip", "skimage"))
import transformers

print(json.dumps({
    "shape": list(out.shape), "finite": bool(torch.isfinite(out).all()), "sum": out.double().sum().item(),
    "same_seed_equal": torch.equal(out, run(0)), "other_seed_equal": torch.equal(out, run(1)),
    "dynamo_kept": dynamo_before == (dynamo.suppress_errors, dynamo.cache_size_limit),
    "stand_ins_left": stand_ins, "torchaudio_loaded": "torchaudio" in sys.modules,
    "transformers_ok": transformers.T5Config(d_model=8).d_model == 8, "resample_error": resample_error,
}))
"""

# torchaudio as PyPI ships it for Linux next to a CPU torch: present, but its import fails.
BROKEN_TORCHAUDIO = """
import importlib.abc, importlib.machinery, sys

class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise OSError("libc10_cuda.so: cannot open shared object file: No such file or directory")

class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchaudio":
            return importlib.machinery.ModuleSpec(name, _Loader(), is_package=True)

sys.meta_path.insert(0, _Finder())
"""


def _run_user_script(prefix: str = "") -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", prefix + USER_SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def user_run():
    return _run_user_script()


@needs_sat
def test_user_imports_and_generates_through_the_helper(user_run):
    assert user_run["shape"] == [2, 4, 16] and user_run["finite"]
    assert user_run["same_seed_equal"] and not user_run["other_seed_equal"]
    assert user_run["stand_ins_left"] == [] and user_run["transformers_ok"]
    assert user_run["dynamo_kept"]  # stable-audio-tools sets suppress_errors=True at import


@needs_sat
def test_a_torchaudio_that_fails_to_load_is_stood_in_and_named_when_needed(user_run):
    broken = _run_user_script(BROKEN_TORCHAUDIO)
    assert broken["sum"] == user_run["sum"] and broken["shape"] == user_run["shape"]
    assert not broken["torchaudio_loaded"] and broken["stand_ins_left"] == []
    assert "torchaudio.transforms.Resample is unavailable" in broken["resample_error"]
    assert "OSError: libc10_cuda.so" in broken["resample_error"]
    assert "pip install torchaudio==" in broken["resample_error"]


def test_missing_stable_audio_tools_names_the_install_command(monkeypatch):
    monkeypatch.delitem(sys.modules, "stable_audio_tools", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "stable_audio_tools" else real(n, *a))
    with pytest.raises(ImportError, match=r"run `bash \.ci/install-audio\.sh`"):
        sat_import.import_stable_audio_tools()


# The install route ---------------------------------------------------------------------------


def _install_module():
    spec = importlib.util.spec_from_file_location("install_audio", ROOT / ".ci" / "install_audio.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_adds_only_what_is_missing_and_never_torchaudio():
    ia = _install_module()
    have = {"torch": "2.13.0", "torchaudio": "2.11.1", "k-diffusion": "0.1.0", "scipy": "1.11.0", "tqdm": "4.0"}
    pinned, loose, notes = ia.plan(have)
    assert pinned == ["stable-audio-tools==0.0.19", "alias-free-torch==0.0.6", "einops-exts==0.0.4", "dctorch==0.1.2"]
    assert loose == ["einops", "safetensors", "huggingface-hub", "torchsde", "torchdiffeq", "jsonmerge", "pillow"]
    assert notes == ["k-diffusion 0.1.0 is installed (this route was tested with 0.1.1); left as it is"]
    assert not any("torchaudio" in s for s in pinned + loose)
    everything = {**have, **dict.fromkeys(["stable-audio-tools", "alias-free-torch", "einops-exts", "dctorch"], "x")}
    assert ia.plan({**everything, **dict.fromkeys(loose, "1")})[:2] == ([], [])


def test_a_dry_run_that_would_replace_an_installed_distribution_is_refused():
    ia = _install_module()
    report = {
        "install": [
            {"metadata": {"name": "torchsde", "version": "0.2.6"}},
            {"metadata": {"name": "NumPy", "version": "2.4.6"}},
            {"metadata": {"name": "trampoline", "version": "0.1.2"}},
        ]
    }
    assert ia.replaced(report, {"numpy": "1.26.4", "torch": "2.13.0"}) == ["numpy 1.26.4 -> 2.4.6"]
    assert ia.replaced(report, {"torch": "2.13.0"}) == []


def _tree(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}


@needs_sat
def test_install_script_leaves_an_installed_torchaudio_and_its_libraries_alone(tmp_path):
    """A fresh environment that sees ours (a .pth) and has its own torchaudio with CUDA
    libraries: the script must leave every file of it where it is."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "env")], check=True)
    python = tmp_path / "env" / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (purelib / "ours.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (purelib / "torchaudio" / "lib").mkdir(parents=True)
    (purelib / "torchaudio" / "__init__.py").write_text("")
    (purelib / "torchaudio" / "lib" / "libtorchaudio.so").write_bytes(b"\x7fELF not really")
    info = purelib / "torchaudio-2.11.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchaudio\nVersion: 2.11.1\n")
    (info / "RECORD").write_text("torchaudio/__init__.py,,\ntorchaudio/lib/libtorchaudio.so,,\n")
    (info / "INSTALLER").write_text("pip\n")
    before = _tree(purelib)

    done = subprocess.run(
        ["bash", str(ROOT / ".ci" / "install-audio.sh")],
        env={**os.environ, "PYTHON": str(python)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    after = {k: v for k, v in _tree(purelib).items() if "__pycache__" not in k}
    assert after == before
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already in place" in done.stdout
