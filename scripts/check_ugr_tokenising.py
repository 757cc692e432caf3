#!/usr/bin/env python
"""UGR's index tokenises the units of many parents in one `KeyModel.tokens_batch` call. Same ids as one
`KeyModel.tokens` call per unit, and how much faster? SciFact's sentence units (UGR's sentence granularity)
with SEAL's default key model's tokenizer (SmolLM2), both ways interleaved, best of --rounds.
Exit status 1 when the ids differ.

    .venv/bin/python scripts/check_ugr_tokenising.py   # ~30 s on 2 cores
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    from retrieval.generative.keymodel import KeyModel
    from training.ugr_data import granularity_corpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    texts = [d.text for d in granularity_corpus("sentence", args.data).corpus]
    km = KeyModel.create(args.model, layout="plain")
    ways = {"one call per unit": lambda: [km.tokens(t) for t in texts],
            "chunked tokens_batch": lambda: [ids for i in range(0, len(texts), 8192) for ids in km.tokens_batch(texts[i : i + 8192])]}
    results = {name: way() for name, way in ways.items()}
    same = results["one call per unit"] == results["chunked tokens_batch"]
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(args.rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            best[name] = min(best[name], time.perf_counter() - start)
    print(json.dumps({"units": len(texts), "tokens": sum(map(len, results["chunked tokens_batch"])), "same_ids": same,
                      "seconds": {k: round(v, 2) for k, v in best.items()},
                      "speedup": round(best["one call per unit"] / best["chunked tokens_batch"], 2)}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
