"""How much a named group costs to resolve: ``@blocks`` (and the other groups) on a 24-layer GPT-2
built from its config, against attaching the same 24 sites written out and against an empty attach.

Each variant is a whole ``attach(...)`` then ``remove()`` with a fresh session (so nothing is kept
between rounds but what the package caches itself), timed interleaved and paired
(:mod:`benchmarks.timing`). The group's cost is its delta to the empty attach.

    python -m benchmarks.groups_bench            # ~20 s
"""

from __future__ import annotations

import argparse
import json

from benchmarks.timing import interleaved, pin_one_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--layers", type=int, default=24)
    args = parser.parse_args()
    pin_one_thread()

    from transformers import GPT2Config, GPT2LMHeadModel

    from interventions import Cache, attach
    from interventions.adapters import detect

    config = GPT2Config(
        n_layer=args.layers, n_embd=64, n_head=4, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()
    blocks = [f"transformer.h.{i}" for i in range(args.layers)]
    cache = Cache()

    def session(hooks: dict) -> None:
        attach(model, hooks).remove()

    variants = {
        "plain": lambda: session({}),
        "literal 24 sites": lambda: session(dict.fromkeys(blocks, cache)),
        "@blocks": lambda: session({"@blocks": cache}),
        "@blocks @self_attn @mlp": lambda: session({"@blocks": cache, "@self_attn": cache, "@mlp": cache}),
        "groups() cold": lambda: detect(model).groups(),
    }
    stats = interleaved(variants, rounds=args.rounds)
    rows = {
        name: {"median_ms": round(s["median"] * 1e3, 3), "delta_ms": round(s["delta"] * 1e3, 3)}
        for name, s in stats.items()
    }
    print(json.dumps({"layers": args.layers, "rounds": args.rounds, "variants": rows}, indent=1))
    print(f"resolving @blocks: {rows['@blocks']['delta_ms']:.2f} ms over an empty attach (target < 5 ms)")


if __name__ == "__main__":
    main()
