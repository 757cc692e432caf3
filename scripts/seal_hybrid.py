#!/usr/bin/env python
"""Does SEAL add to BM25 + MiniLM? RRF of the three against RRF of the two, on a SEAL recipe's queries.

Reads a folder written by `dengen train seal` (its results.json names the data and the query sample; its
baselines/ and index/ hold the saved BM25, MiniLM and SEAL indexes), fuses them with the hybrid retriever
(reciprocal rank fusion, k = 60, 1,000 results a member: `retrieval.hybrid.rrf` on runs searched once) and scores both fusions with pytrec_eval on the
recipe's evaluated queries (--all: every query of the test split, e.g. SciFact's 300, as `make demo` scores the
two-way hybrid). Prints a table and writes FOLDER/hybrid.json (FOLDER/hybrid-all.json with --all), each row
with SEAL alone too.

    .venv/bin/python scripts/seal_hybrid.py results/seal-scifact-lora [--all]
"""
from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

from bench_common import write_json
from eval.metrics import evaluate_run
from retrieval import load_dataset, load_retriever
from retrieval.hybrid import HybridRetriever, rrf
from retrieval.run import ranked
from training.generative_eval import sample_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--all", action="store_true", help="every query of the test split, not the recipe's sample")
    args = parser.parse_args()
    config = json.loads((args.folder / "results.json").read_text())["config"]
    test = load_dataset(config["data"], config["test_split"])
    queries = test.queries if args.all else sample_queries(test.queries, config["query_sample"], config["seed"])
    qrels = {q: test.qrels[q] for q in queries if q in test.qrels}
    bm25, dense = (load_retriever(args.folder / "baselines" / name) for name in ("bm25", "dense"))
    seal = load_retriever(args.folder / "index")
    started = time.perf_counter()
    depth = inspect.signature(HybridRetriever).parameters["depth"].default  # what a hybrid asks of each member
    runs = {"bm25": bm25.search(queries, k=depth), "dense": dense.search(queries, k=depth), "seal": seal.search(queries, k=depth)}
    rows = [{"name": "seal", "metrics": evaluate_run(qrels, runs["seal"], ks=(10, 100))}]
    for names in (("bm25", "dense"), ("bm25", "dense", "seal")):  # the hybrid retriever's fusion, on runs searched once
        fused = {q: dict(ranked(rrf([runs[n].get(q, {}) for n in names]))[: config["depth"]]) for q in queries}
        rows.append({"name": "+".join(names), "metrics": evaluate_run(qrels, fused, ks=(10, 100))})
    for row in rows:
        print(f"{row['name']:18s} ndcg@10 {row['metrics']['ndcg@10']:.4f}  recall@100 {row['metrics']['recall@100']:.4f}")
    out = args.folder / ("hybrid-all.json" if args.all else "hybrid.json")
    write_json(out, {"queries": len(queries), "fusion": "rrf", "seconds": round(time.perf_counter() - started, 1), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
