#!/usr/bin/env python
"""Search a SEAL or UGR recipe's held-out dev queries with each value of one search option; nDCG@10 and recall@100.

For options that change which keys are generated (beam, length, title_keys, ...), which a recipe's
`dev_choices` (scoring options over keys generated once) cannot compare. Reads a folder written by
`dengen train seal` or, with --granularity, `dengen train ugr` (its results.json names the data, the test
sample and the dev queries) and searches its saved index with the index's own options (for UGR, the
granularity's and the scoring options its dev queries chose) plus OPTION=VALUE. Never a test query is
searched, unless --test asks for the value dev chose (the best nDCG@10, the first of equals) to be scored
once on the recipe's test sample or on every test query. Writes FOLDER/dev-sweep-OPTION-VALUES[-GRANULARITY][-test-WHICH].json
(one file per sweep: another sweep of the same option does not overwrite this one's record).

    .venv/bin/python scripts/seal_dev_sweep.py results/seal-scifact-lora-all length 10,8,6,5,4
    .venv/bin/python scripts/seal_dev_sweep.py results/ugr-smollm2-lora-400 beam 5,15 --granularity sentence --test all
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
import yaml

from bench_common import write_json
from indexes.manifest import IndexLoadError
from eval.metrics import evaluate_run
from retrieval import load_retriever
from retrieval.errors import SpecError
from retrieval.generative.seal import SEARCH_DEFAULTS
from training import seal, ugr


def scored(retriever, dataset, label: str) -> dict:
    """Search `dataset` once; its nDCG@10, recall@100 and ms per query, printed after `label`."""
    started = time.perf_counter()
    run = retriever.search(dataset.queries, k=100)
    seconds = time.perf_counter() - started
    metrics = evaluate_run(dataset.qrels, run, ks=(10, 100))
    row = {"ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"], "ms_per_query": 1000 * seconds / len(dataset.queries)}
    print(f"{label}: nDCG@10 {row['ndcg@10']:.4f}  recall@100 {row['recall@100']:.4f}  {row['ms_per_query']:.0f} ms/query", flush=True)
    return row


def sweep_name(option: str, values: list, granularity: str | None, test: str | None) -> str:
    """The sweep's file name: its option, values, granularity and test mode, so sweeps do not overwrite each other."""
    parts = [option, ",".join(map(str, values)), granularity, test and f"test-{test}"]
    return "dev-sweep-" + "-".join(p for p in parts if p) + ".json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("option", help="a SEAL search option, e.g. length")
    parser.add_argument("values", type=lambda text: [yaml.safe_load(v) for v in text.split(",")], help="comma-separated values")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--granularity", help="the folder is a UGR recipe's; sweep at this granularity")
    parser.add_argument("--test", choices=["sample", "all"],
                        help="then score the value dev chose on the recipe's test sample or on every test query")
    args = parser.parse_args()
    if args.option not in SEARCH_DEFAULTS:  # before anything loads
        parser.error(f"{args.option!r} is not a SEAL search option; choose from {', '.join(sorted(SEARCH_DEFAULTS))}")
    try:
        if args.granularity:
            config, test, sample, dev, index, options = ugr.recipe_queries(args.folder, args.granularity)
            options = {"granularity": args.granularity, **options}
        else:
            (config, test, sample, dev), index, options = seal.recipe_queries(args.folder), args.folder / "index", {}
    except SpecError as err:
        parser.error(str(err))
    if dev is None:
        parser.error(f"{args.folder}: the recipe has no dev queries (dev_split)")
    torch.set_num_threads(args.threads)
    try:
        retriever = load_retriever(index)
    except IndexLoadError as err:  # the recipe's index deleted or never written
        parser.error(str(err))
    retriever.set_search_options(**options)
    rows = []
    for value in args.values:
        retriever.set_search_options(**{args.option: value})
        rows.append({args.option: value, **scored(retriever, dev, f"dev {args.option}={value}")})
    result = {"dev_queries": len(dev.queries), "dev_split": config["dev_split"], "threads": args.threads, "options": options,
              "index_options": {k: retriever.config[k] for k in ("beam", "length", "title_keys", "unigram_scores", "dtype", "batch_size")
                                if k != args.option},
              "rows": rows}
    out = args.folder / sweep_name(args.option, args.values, args.granularity, args.test)
    write_json(out, result)  # the dev figures kept even if the test search is stopped
    if args.test:
        best = max(rows, key=lambda row: row["ndcg@10"])[args.option]  # max keeps the first of equals
        queries = sample if args.test == "sample" else test.queries
        chosen = dataclasses.replace(test, queries=queries, qrels={q: test.qrels[q] for q in queries})
        retriever.set_search_options(**{args.option: best})
        result["test"] = {args.option: best, "queries": len(queries), "which": args.test,
                          **scored(retriever, chosen, f"test ({len(queries)} queries) {args.option}={best}")}
        write_json(out, result)


if __name__ == "__main__":
    main()
