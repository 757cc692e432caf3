#!/usr/bin/env python
"""A short pilot of a CorpusBrain key model on questions held out of the TRAINING half (never a test question).

Reads a CorpusBrain recipe (its data, split and seed give the same training half as `dengen train corpusbrain`),
holds a seeded --dev of the training questions out, trains a fresh key model of --backbone / --layout (full
fine-tuning) on the other training questions alone for --steps steps, searches the held-out questions under the
title trie, and prints (and with --out writes) the share whose first title is relevant, the step and search times.
Used to choose a recipe's setting before its run (docs/corpusbrain.md).

    .venv/bin/python scripts/corpusbrain_dev_pilot.py --steps 300 --lr 1e-4   # ~13 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from bench_common import write_json
from corpusbrain_exact_check import first
from retrieval import build_retriever
from training import corpusbrain
from training.keymodel_train import start_keymodel, train_keymodel
from training.recipe import read_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="training/configs/corpusbrain-squad-allsent.yaml", help="the recipe whose split is used")
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--layout", default="plain")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dev", type=int, default=300, help="training questions held out (seeded)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = read_recipe(args.config, corpusbrain.DEFAULTS)
    config.update(backbone=args.backbone, layout=args.layout, lora=None, batch_size=args.batch_size, lr=args.lr,
                  max_steps=args.steps, epochs=1, threads=args.threads)
    torch.set_num_threads(args.threads)
    dataset, train, _ = corpusbrain.load_data(config)  # the test half is never read
    ids = sorted(train)
    random.Random(1).shuffle(ids)
    dev = {q: train[q] for q in ids[: args.dev]}
    titles = dict(zip(dataset.corpus.ids, corpusbrain._identifier_texts(dataset.corpus, config["identifier"])))
    pairs = corpusbrain.question_pairs(dataset, {q: train[q] for q in ids[args.dev :]}, titles)
    keymodel = start_keymodel(config, max_source_tokens=config["max_source_tokens"])
    info = train_keymodel(keymodel, pairs, config, desc="pilot")
    with tempfile.TemporaryDirectory() as folder:
        keymodel.save(Path(folder) / "model")
        retriever = build_retriever("corpusbrain", model=str(Path(folder) / "model"), identifier=config["identifier"])
        retriever.index(dataset.corpus)
        start = time.perf_counter()
        run = retriever.search(dev, k=10)
        seconds = time.perf_counter() - start
    relevant = {q: {doc for doc, grade in dataset.qrels[q].items() if grade > 0} for q in dev}
    first_relevant = sum(first(run.get(q, {})) in relevant[q] for q in dev) / len(dev)
    result = {"config": args.config, "backbone": args.backbone, "layout": args.layout, "steps": args.steps, "lr": args.lr,
              "batch_size": args.batch_size, "train_pairs": len(pairs), "dev_questions": len(dev),
              "dev_first_title_relevant": round(first_relevant, 4), "train": info, "search_ms_per_query": round(1000 * seconds / len(dev), 1)}
    print(json.dumps(result))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
