"""cProfile the engine's hot paths (entering a session; hooks firing), to find where the time goes.

    python -m benchmarks.profile_engine [--what enter,fire,pipeline] [--top 25]

Prints the top functions by own time (tottime) and by cumulative time, with file:line.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import warnings

import torch
from torch import nn


def _stats(prof: cProfile.Profile, top: int, title: str) -> str:
    out = io.StringIO()
    out.write(f"\n=== {title} ===\n")
    st = pstats.Stats(prof, stream=out)
    st.strip_dirs().sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", default="enter,fire,pipeline")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    from interventions import AddVector, Cache, attach

    from .hook_overhead import build_gpt2_target, build_pipeline_target, build_unet_target
    from .models import sd_pipeline

    pipe = sd_pipeline()
    what = set(args.what.split(","))
    if "enter" in what:
        targets = [build_unet_target(pipe), build_pipeline_target(pipe, 2), build_gpt2_target()]
        for t in targets:
            hooks = {t.prefix + s: Cache() for s in t.sites}
            with attach(t.attach_to, hooks, on_unfired="ignore"):
                pass
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(200):
                with attach(t.attach_to, hooks, on_unfired="ignore"):
                    pass
            prof.disable()
            print(_stats(prof, args.top, f"enter+exit, 20 sites, {t.name}, x200"))
    if "fire" in what:
        net = nn.Sequential(*[nn.Linear(8, 8) for _ in range(20)]).eval()
        x, v = torch.randn(1, 8), torch.randn(8)
        for name, hook in (("Cache", Cache()), ("AddVector", AddVector(v))):
            with attach(net, {str(i): hook for i in range(20)}):
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(200):
                    net(x)
                prof.disable()
            print(_stats(prof, args.top, f"per fire: {name} on 20 Linear(8,8), 200 forwards (4000 fires)"))
    if "pipeline" in what:
        t = build_pipeline_target(pipe, 5)
        c = Cache()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5):
            with attach(pipe, {"unet." + s: c for s in t.sites}):
                t.run()
        prof.disable()
        print(_stats(prof, args.top, "pipeline call, 5 steps, cache 20 sites, x5"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
