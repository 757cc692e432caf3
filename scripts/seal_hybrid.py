#!/usr/bin/env python
"""Does SEAL add to BM25 + MiniLM? Fusions of the three against fusions of the two, on a SEAL recipe's queries.

Reads a folder written by `dengen train seal` (its results.json names the data, the test sample and the dev
queries; its baselines/ and index/ hold the saved BM25, MiniLM and SEAL indexes), searches each member once
(1,000 results, as the hybrid retriever asks) and fuses the runs with `retrieval.hybrid`'s two fusions:
reciprocal rank fusion (k = 60) and the min-max weighted sum. BM25 and MiniLM keep weight 1; SEAL's weight is
chosen on the recipe's dev queries (held out of training, never test queries) from --weights, per fusion, then
the two-way and three-way fusions are scored with pytrec_eval on the test queries (the recipe's sample, or
--all: every query of the test split, e.g. SciFact's 300, as `make demo` scores the two-way hybrid). Prints a
table and writes FOLDER/hybrid.json (FOLDER/hybrid-all.json with --all).

    .venv/bin/python scripts/seal_hybrid.py results/seal-scifact-lora [--all] [--weights 0.25,0.5,0.75,1]
"""
from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

from bench_common import write_json
from eval.metrics import evaluate_run
from retrieval import load_retriever
from retrieval.errors import SpecError
from retrieval.hybrid import HybridRetriever, fuse
from retrieval.run import ranked
from training.seal import recipe_queries

MAIN = "ndcg@10"


def fused_run(fusion: str, runs: list[dict], weights: list[float], depth: int) -> dict:
    """The hybrid retriever's fusion (`retrieval.hybrid.fuse`, RRF k = 60) of runs searched once, cut to `depth`."""
    qids = dict.fromkeys(qid for run in runs for qid in run)  # a query one member found nothing for still counts
    return {qid: dict(ranked(fuse([run.get(qid, {}) for run in runs], fusion, weights))[:depth]) for qid in qids}


def weight_list(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 0.25,0.5,1") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--all", action="store_true", help="every query of the test split, not the recipe's sample")
    parser.add_argument("--weights", type=weight_list, default=[0.25, 0.5, 0.75, 1.0], help="SEAL weights to choose from on the dev queries")
    args = parser.parse_args()
    try:
        config, test, sample, dev = recipe_queries(args.folder)
    except SpecError as err:
        parser.error(str(err))
    grid = args.weights
    queries = test.queries if args.all else sample
    qrels = {q: test.qrels[q] for q in queries if q in test.qrels}
    if dev is None:
        parser.error(f"{args.folder}: the recipe has no dev queries (dev_split) to choose SEAL's weight on")
    members = [load_retriever(args.folder / "baselines" / name) for name in ("bm25", "dense")] + [load_retriever(args.folder / "index")]
    depth = inspect.signature(HybridRetriever).parameters["depth"].default  # what a hybrid asks of each member
    started = time.perf_counter()
    dev_runs = [m.search(dev.queries, k=depth) for m in members]
    runs = [m.search(queries, k=depth) for m in members]
    rows = [{"name": "seal", "metrics": evaluate_run(qrels, runs[2], ks=(10, 100))}]
    choices = {}
    for fusion in ("rrf", "weighted"):
        dev_scores = {w: evaluate_run(dev.qrels, fused_run(fusion, dev_runs, [1.0, 1.0, w], config["depth"]), ks=(10,))[MAIN] for w in grid}
        best = max(grid, key=lambda w: dev_scores[w])  # the first of equal scores, in --weights order
        choices[fusion] = {"dev": {str(w): round(s, 4) for w, s in dev_scores.items()}, "seal_weight": best}
        for name, member_runs, weights in ((f"bm25+dense {fusion}", runs[:2], [1.0, 1.0]),
                                           (f"bm25+dense+seal {fusion}", runs, [1.0, 1.0, 1.0]),
                                           (f"bm25+dense+seal {fusion}, seal weight {best:g} (dev)", runs, [1.0, 1.0, best])):
            rows.append({"name": name, "fusion": fusion, "weights": weights,
                         "metrics": evaluate_run(qrels, fused_run(fusion, member_runs, weights, config["depth"]), ks=(10, 100))})
    for row in rows:
        print(f"{row['name']:48s} ndcg@10 {row['metrics']['ndcg@10']:.4f}  recall@100 {row['metrics']['recall@100']:.4f}")
    for fusion, choice in choices.items():
        print(f"{fusion}: dev {MAIN} by SEAL weight {choice['dev']} -> {choice['seal_weight']:g}")
    out = args.folder / ("hybrid-all.json" if args.all else "hybrid.json")
    write_json(out, {"queries": len(queries), "dev_queries": len(dev.queries), "dev_split": config["dev_split"],
                     "choices": choices, "seconds": round(time.perf_counter() - started, 1), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
