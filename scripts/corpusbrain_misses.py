#!/usr/bin/env python
"""Which test questions do two CorpusBrain recipes (and BM25) put a wrong page first for? Reads two folders written
by `dengen train corpusbrain` on the same split (their saved fine-tuned runs) and the first folder's BM25 index,
and prints the share each gets right, how their misses overlap, and how many any of the three gets right.

    .venv/bin/python scripts/corpusbrain_misses.py results/corpusbrain-squad-smollm2 results/corpusbrain-squad-allsent-replay
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from retrieval import load_retriever
from training.corpusbrain import DEFAULTS, load_data
from training.generative_eval import load_run
from corpusbrain_exact_check import first


def firsts(run: dict) -> dict:
    return {q: first(hits) for q, hits in run.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    configs = [{**DEFAULTS, **json.loads((f / "results.json").read_text(encoding="utf-8"))["config"]} for f in (args.a, args.b)]
    if any(configs[0][k] != configs[1][k] for k in ("data", "corpus_file", "split", "finetune_fraction", "seed", "test_sample")):
        parser.error(f"{args.a} and {args.b} were not tested on the same questions")
    dataset, _, test = load_data(configs[0])
    relevant = {q: {d for d, grade in dataset.qrels[q].items() if grade > 0} for q in test}
    runs = {"a": firsts(load_run(args.a / "runs" / "corpusbrain.json")), "b": firsts(load_run(args.b / "runs" / "corpusbrain.json")),
            "bm25": firsts(load_retriever(args.a / "baselines" / "bm25").search(test, k=10))}
    right = {name: {q for q in test if run.get(q) in relevant[q]} for name, run in runs.items()}
    miss_a, miss_b = set(test) - right["a"], set(test) - right["b"]
    n = len(test)
    print(json.dumps({"questions": n, **{f"right_{k}": round(len(v) / n, 4) for k, v in right.items()},
                      "misses_a": len(miss_a), "misses_a_right_b": len(miss_a & right["b"]), "misses_a_right_bm25": len(miss_a & right["bm25"]),
                      "misses_b": len(miss_b), "both_miss": len(miss_a & miss_b), "both_miss_right_bm25": len(miss_a & miss_b & right["bm25"]),
                      "misses_bm25": n - len(right["bm25"]), "misses_bm25_right_a": len(right["a"] - right["bm25"]),
                      "right_a_or_b": round(len(right["a"] | right["b"]) / n, 4),
                      "right_any_of_three": round(len(right["a"] | right["b"] | right["bm25"]) / n, 4)}))


if __name__ == "__main__":
    main()
