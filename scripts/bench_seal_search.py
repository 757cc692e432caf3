#!/usr/bin/env python
"""Where a SEAL query's time goes on a saved index: key generation and scoring, per query, in batches.

Searches a seeded sample of SciFact *train* queries (never the test queries) batch by batch with the given
search options, timing `generate_keys` and `rank` apart; `--unmerged` alternates runs with the LoRA adapters
merged (how a saved key model loads) and unmerged, to measure what merging saves. Writes JSON.

    .venv/bin/python scripts/bench_seal_search.py results/seal-scifact-lora/index \
        --options "beam=5,fully_score=200,unigram_scores=false,dtype=bfloat16" --unmerged
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import yaml

from bench_common import machine_info, write_json
from retrieval import load_dataset, load_retriever
from retrieval.data import shared_data


def timed(retriever, texts: list[str]) -> tuple[float, float]:
    """(ms of key generation, ms of scoring) per query, batch by batch as a search runs."""
    size, keys_s, rank_s = retriever.config["batch_size"], 0.0, 0.0
    for start in range(0, len(texts), size):
        batch = texts[start : start + size]
        begin = time.perf_counter()
        keys = retriever.generate_keys(batch)
        keys_s += time.perf_counter() - begin
        begin = time.perf_counter()
        for text, query_keys in zip(batch, keys):
            retriever.rank(text, query_keys, 100)
        rank_s += time.perf_counter() - begin
    return 1000 * keys_s / len(texts), 1000 * rank_s / len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("--options", default="", help="comma-separated search options, e.g. beam=5,dtype=bfloat16")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--unmerged", action="store_true", help="alternate with the LoRA adapters unmerged")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/bench_seal_search.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retriever = load_retriever(args.index)
    options = dict(o.split("=", 1) for o in args.options.split(",") if o)
    retriever.set_search_options(**{k: yaml.safe_load(v) for k, v in options.items()})
    train = load_dataset(shared_data("scifact"), "train")
    texts = [train.queries[q] for q in sorted(random.Random(7).sample(sorted(train.queries), args.queries))]
    retriever.generate_keys(texts[:4])  # warm-up
    model = retriever.keymodel.model
    variants = ["merged", "unmerged"] if args.unmerged else ["as loaded"]
    rows = []
    for repeat in range(args.repeats):
        for variant in variants:
            if variant == "unmerged":
                model.unmerge_adapter()
            keys_ms, rank_ms = timed(retriever, texts)
            if variant == "unmerged":
                model.merge_adapter()
            rows.append({"repeat": repeat, "variant": variant, "keys_ms": round(keys_ms, 1), "rank_ms": round(rank_ms, 1)})
            print(f"{variant:10s} keys {keys_ms:7.1f} ms/q  scoring {rank_ms:6.1f} ms/q")
    write_json(Path(args.out), {"command": " ".join([sys.executable, *sys.argv]), "index": str(args.index),
                                "options": options, "queries": len(texts), "config": {k: retriever.config[k] for k in ("beam", "dtype", "batch_size", "fully_score", "unigram_scores")},
                                "machine": machine_info(("torch", "transformers")), "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
