#!/usr/bin/env python
"""Search a SEAL recipe's held-out dev queries with each value of one search option; nDCG@10 and recall@100.

For options that change which keys are generated (beam, length, title_keys, ...), which a recipe's
`dev_choices` (scoring options over keys generated once) cannot compare. Reads a folder written by
`dengen train seal` (its results.json names the data, the test sample and the dev queries; never a test
query is searched) and searches its saved index with the index's own options plus OPTION=VALUE.
Writes FOLDER/dev-sweep-OPTION.json.

    .venv/bin/python scripts/seal_dev_sweep.py results/seal-scifact-lora-all length 10,8,6,5,4
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from bench_common import write_json
from eval.metrics import evaluate_run
from retrieval import load_retriever
from retrieval.errors import SpecError
from retrieval.generative.seal import SEARCH_DEFAULTS
from training.seal import recipe_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("option", help="a SEAL search option, e.g. length")
    parser.add_argument("values", type=lambda text: [yaml.safe_load(v) for v in text.split(",")], help="comma-separated values")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.option not in SEARCH_DEFAULTS:  # before anything loads
        parser.error(f"{args.option!r} is not a SEAL search option; choose from {', '.join(sorted(SEARCH_DEFAULTS))}")
    try:
        config, _, _, dev = recipe_queries(args.folder)
    except SpecError as err:
        parser.error(str(err))
    if dev is None:
        parser.error(f"{args.folder}: the recipe has no dev queries (dev_split)")
    torch.set_num_threads(args.threads)
    retriever = load_retriever(args.folder / "index")
    rows = []
    for value in args.values:
        retriever.set_search_options(**{args.option: value})
        started = time.perf_counter()
        run = retriever.search(dev.queries, k=100)
        seconds = time.perf_counter() - started
        metrics = evaluate_run(dev.qrels, run, ks=(10, 100))
        rows.append({args.option: value, "ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"],
                     "ms_per_query": 1000 * seconds / len(dev.queries)})
        print(f"{args.option}={value}: nDCG@10 {metrics['ndcg@10']:.4f}  recall@100 {metrics['recall@100']:.4f}  "
              f"{rows[-1]['ms_per_query']:.0f} ms/query", flush=True)
    write_json(args.folder / f"dev-sweep-{args.option}.json",
               {"dev_queries": len(dev.queries), "dev_split": config["dev_split"], "threads": args.threads,
                "index_options": {k: retriever.config[k] for k in ("beam", "length", "title_keys", "unigram_scores", "dtype", "batch_size")
                                  if k != args.option},
                "rows": rows})


if __name__ == "__main__":
    main()
