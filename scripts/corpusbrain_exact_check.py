#!/usr/bin/env python
"""Is CorpusBrain's beam search the limit? Top-1 of a recipe's saved run (its beam) against exact search.

With a beam as wide as the number of titles, constrained beam search keeps every prefix of the trie at every
step, so it returns the model's exact argmax title. Reads a folder written by `dengen train corpusbrain`
(results.json gives the recipe's settings, runs/corpusbrain.json the run its beam made), searches a seeded
sample of the same test questions again with the exact beam, and writes FOLDER/exact-search.json: the share
of questions whose first title is relevant under each search, and how often the two first titles agree.

    .venv/bin/python scripts/corpusbrain_exact_check.py results/corpusbrain-squad-allsent-ls --sample 400
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from bench_common import write_json
from retrieval import load_retriever
from training.corpusbrain import load_data


def first(hits: dict[str, float]) -> str | None:
    return max(hits, key=hits.get) if hits else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a `dengen train corpusbrain` out folder")
    parser.add_argument("--sample", type=int, default=400, help="test questions to search again (seeded)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    needed = [args.folder / name for name in ("results.json", "runs/corpusbrain.json", "index-finetuned")]
    if missing := [str(path) for path in needed if not path.exists()]:
        parser.error(f"{args.folder}: not a fine-tuned `dengen train corpusbrain` folder ({', '.join(missing)} missing)")
    torch.set_num_threads(args.threads)
    config = json.loads((args.folder / "results.json").read_text(encoding="utf-8"))["config"]
    dataset, _, test = load_data(config)
    saved = json.loads((args.folder / "runs" / "corpusbrain.json").read_text(encoding="utf-8"))
    ids = sorted(test)
    random.Random(0).shuffle(ids)
    ids = ids[:args.sample]

    retriever = load_retriever(args.folder / "index-finetuned")
    beam = retriever.config["beam"]
    retriever.set_search_options(beam=len(dataset.corpus))
    start = time.perf_counter()
    exact = retriever.search({q: test[q] for q in ids}, k=1)
    seconds = time.perf_counter() - start

    def relevant(q: str, doc: str | None) -> bool:
        return dataset.qrels[q].get(doc, 0) > 0

    result = {"folder": str(args.folder), "questions": len(ids), "titles": len(dataset.corpus),
              f"top1_relevant_beam_{beam}": sum(relevant(q, first(saved[q])) for q in ids) / len(ids),
              "top1_relevant_exact": sum(relevant(q, first(exact[q])) for q in ids) / len(ids),
              "same_top1": sum(first(saved[q]) == first(exact[q]) for q in ids) / len(ids),
              "exact_seconds_per_question": seconds / len(ids)}
    write_json(args.folder / "exact-search.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
