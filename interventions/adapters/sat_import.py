"""Import stable-audio-tools without the packages its text-to-audio path never uses.

``import stable_audio_tools.inference.generation`` fails in an environment set up as the README
says (``bash .ci/install-audio.sh``), and :func:`import_stable_audio_tools` is the fix:

* ``k_diffusion/__init__`` imports torchvision, clean-fid, clip and scikit-image at top level,
  though the samplers stable-audio-tools calls need none of them (installing them would pull a
  CUDA torch). Empty stand-ins for the ones that are missing sit in ``sys.modules`` only while
  ``k_diffusion`` imports; a torchvision stand-in left behind would break ``import transformers``.
* torchaudio is imported at top level, but used only to resample audio (``init_audio`` at another
  sample rate, oversampling pretransforms, training data). PyPI has no torchaudio for every torch
  (none for 2.13, and its Linux wheels carry CUDA libraries that fail to load without a CUDA
  torch), so the install script leaves it out. A torchaudio that imports is used; otherwise
  stable-audio-tools gets a stand-in whose classes raise an ImportError naming the fix when built.
* ``stable_audio_tools.models.utils`` sets ``torch._dynamo.config.suppress_errors = True`` and
  raises ``cache_size_limit`` at import, which would change how ``torch.compile`` behaves for the
  whole process; the dynamo config is restored afterwards.

After one call, ``from stable_audio_tools... import ...`` works as usual in the same process.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import io
import sys
import types
from collections.abc import Iterator
from typing import Any

INSTALL_HINT = "stable-audio-tools is not installed; run `bash .ci/install-audio.sh` (see README.md, Install)"

# Imported at the top of k_diffusion, never called on stable-audio-tools' sampling path.
# name -> attributes its stand-in must carry.
_K_DIFFUSION_UNUSED: dict[str, dict[str, Any]] = {
    "torchvision": {},
    "torchvision.transforms": {},
    "torchvision.transforms.functional": {},
    "cleanfid": {},
    "cleanfid.inception_torchscript": {"InceptionV3W": type("InceptionV3W", (), {})},
    "clip": {},
    "skimage": {},
    "skimage.transform": {},
}

# The stable-audio-tools modules of the diffusion_cond path (DiT, conditioners, generate) and of
# Stable Audio Open's autoencoder pretransform (imported lazily by the factory otherwise, after
# the torchaudio stand-in is gone).
_SAT_MODULES = (
    "stable_audio_tools",
    "stable_audio_tools.inference.generation",
    "stable_audio_tools.inference.sampling",
    "stable_audio_tools.models.diffusion",
    "stable_audio_tools.models.factory",
    "stable_audio_tools.models.autoencoders",
    "stable_audio_tools.models.bottleneck",
)


def _package(name: str, attrs: dict[str, Any], getattr_fn: Any = None) -> types.ModuleType:
    mod = types.ModuleType(name, "stand-in from interventions.adapters.sat_import (not the real package)")
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    mod.__path__ = []  # a package, so `from pkg import sub` works
    mod.__dict__.update(attrs)
    if getattr_fn is not None:
        mod.__getattr__ = getattr_fn  # type: ignore[method-assign]
    return mod


@contextlib.contextmanager
def _stand_ins(modules: dict[str, types.ModuleType]) -> Iterator[None]:
    """``modules`` in ``sys.modules`` (each bound on its parent) for the duration; afterwards every
    module under their top-level names is gone again, whatever happened."""
    tops = {name.split(".")[0] for name in modules}
    try:
        for name, mod in modules.items():
            sys.modules[name] = mod
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, mod)
        yield
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in tops]:
            del sys.modules[name]


def _missing_k_diffusion_imports() -> dict[str, types.ModuleType]:
    missing = {n.split(".")[0] for n in _K_DIFFUSION_UNUSED}
    missing = {top for top in missing if top not in sys.modules and importlib.util.find_spec(top) is None}
    return {n: _package(n, a) for n, a in _K_DIFFUSION_UNUSED.items() if n.split(".")[0] in missing}


def _torchaudio_stand_in(reason: str) -> dict[str, types.ModuleType]:
    """``torchaudio`` and ``torchaudio.transforms`` whose public names are classes that raise."""

    def missing(name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise ImportError(
                f"torchaudio.transforms.{name} is unavailable: torchaudio {reason}. stable-audio-tools "
                "needs it only to resample audio; install a torchaudio built for your torch version "
                "(`pip install torchaudio==<your torch version>` where PyPI has one)"
            )

        return type(name, (), {"__new__": unavailable})

    return {
        "torchaudio": _package("torchaudio", {}, missing),
        "torchaudio.transforms": _package("torchaudio.transforms", {}, missing),
    }


def _torchaudio_or_stand_in() -> dict[str, types.ModuleType]:
    """Nothing if torchaudio imports; else its stand-in (and no half-imported torchaudio left)."""
    if importlib.util.find_spec("torchaudio") is None:
        return _torchaudio_stand_in("is not installed")
    before = set(sys.modules)
    try:
        importlib.import_module("torchaudio")
        return {}
    except (ImportError, OSError, RuntimeError) as exc:  # OSError: its CUDA libraries fail to load
        for name in set(sys.modules) - before:
            if name.split(".")[0] == "torchaudio":
                del sys.modules[name]
        return _torchaudio_stand_in(f"does not import ({type(exc).__name__}: {exc})")


@contextlib.contextmanager
def _dynamo_config_kept() -> Iterator[None]:
    """Put back every ``torch._dynamo.config`` value that changed meanwhile (only those: reading or
    setting its deprecated keys warns)."""
    import torch._dynamo.config as cfg

    saved = cfg.get_config_copy()
    try:
        yield
    finally:
        now = cfg.get_config_copy()
        for key, value in saved.items():
            if now[key] != value:
                setattr(cfg, key, value)


def import_stable_audio_tools() -> types.ModuleType:
    """Import stable-audio-tools' text-to-audio path (models, conditioners, samplers,
    ``generate_diffusion_cond``) and return the ``stable_audio_tools`` package.

    Leaves no stand-in in ``sys.modules`` and the ``torch._dynamo`` config as it found it; calling
    it again is cheap. Raises ImportError naming the install command if stable-audio-tools or
    k-diffusion is not installed.
    """
    if all(name in sys.modules for name in _SAT_MODULES):
        return sys.modules["stable_audio_tools"]
    if any(importlib.util.find_spec(name) is None for name in ("stable_audio_tools", "k_diffusion")):
        raise ImportError(INSTALL_HINT)
    stand_ins = {} if "k_diffusion" in sys.modules else _missing_k_diffusion_imports()
    stand_ins.update(_torchaudio_or_stand_in())
    # stable_audio_tools.models.transformer prints "flash_attn not installed" on import
    with _dynamo_config_kept(), _stand_ins(stand_ins), contextlib.redirect_stdout(io.StringIO()):
        for name in ("k_diffusion", *_SAT_MODULES):
            importlib.import_module(name)
    return sys.modules["stable_audio_tools"]
