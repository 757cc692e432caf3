#!/usr/bin/env python
"""Does SEAL add to BM25 + MiniLM? RRF of the three against RRF of the two, on a SEAL recipe's queries.

Reads a folder written by `dengen train seal` (its results.json names the data and the query sample; its
baselines/ and index/ hold the saved BM25, MiniLM and SEAL indexes), fuses them with the hybrid retriever
(reciprocal rank fusion, k = 60, 1,000 results a member) and scores both fusions with pytrec_eval on the
recipe's evaluated queries. Prints a table and writes FOLDER/hybrid.json.

    .venv/bin/python scripts/seal_hybrid.py results/seal-scifact-lora
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_common import write_json
from eval.metrics import evaluate_run
from retrieval import load_dataset, load_retriever
from retrieval.hybrid import HybridRetriever
from training.generative_eval import sample_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    config = json.loads((args.folder / "results.json").read_text())["config"]
    test = load_dataset(config["data"], config["test_split"])
    queries = sample_queries(test.queries, config["query_sample"], config["seed"])
    qrels = {q: test.qrels[q] for q in queries if q in test.qrels}
    bm25, dense = (load_retriever(args.folder / "baselines" / name) for name in ("bm25", "dense"))
    seal = load_retriever(args.folder / "index")
    rows = []
    for name, members in (("bm25+dense", [bm25, dense]), ("bm25+dense+seal", [bm25, dense, seal])):
        started = time.perf_counter()
        run = HybridRetriever(members=members, fusion="rrf").search(queries, k=config["depth"])
        rows.append({"name": name, "metrics": evaluate_run(qrels, run, ks=(10, 100)),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(f"{name:18s} ndcg@10 {rows[-1]['metrics']['ndcg@10']:.4f}  recall@100 {rows[-1]['metrics']['recall@100']:.4f}")
    write_json(args.folder / "hybrid.json", {"queries": len(queries), "fusion": "rrf", "rows": rows})
    print(f"wrote {args.folder / 'hybrid.json'}")


if __name__ == "__main__":
    main()
