#!/usr/bin/env python
"""Which backbone should SEAL's key model default to? bert2bert (MiniLM x 2) against SmolLM2-135M on this CPU.

For each backbone, on SciFact: parameters, the corpus FM-index under its tokenizer (tokens, build seconds),
seconds per training step (batch 16 of the SEAL recipe's examples, after 2 warm-up steps), and
constrained beam search (15 beams, 10 tokens, SEAL's defaults) in ms per query. Both models are the
offline starting points, untrained: this measures cost, not quality. Prints a table, writes JSON.

    .venv/bin/python scripts/bench_keymodel.py                  # about 3 min on 2 idle cores
    .venv/bin/python scripts/bench_keymodel.py --steps 3 --queries 2
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

from indexes.fmindex import FMIndex
from retrieval import load_dataset
from retrieval.data import shared_data
from retrieval.generative.constrained import IndexConstraint, KeyRecorder
from retrieval.generative.keymodel import BACKBONES, KeyModel
from training.seal import DEFAULTS, supervised_examples, unsupervised_examples


def measure(backbone: str, dataset, examples, args) -> dict:
    started = time.perf_counter()
    keymodel = KeyModel.create(backbone)
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    streams = [keymodel.tokens(d.title) + [keymodel.eos_id] + keymodel.tokens(d.text) for d in dataset.corpus]
    fm = FMIndex.build(streams)
    index_seconds = time.perf_counter() - started

    model = keymodel.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    targets = [keymodel.tokens(t)[:31] + [keymodel.eos_id] for _, t in examples]
    times = []
    for step in range(args.steps + 2):
        rows = range(step * 16, step * 16 + 16)
        begin = time.perf_counter()
        loss = keymodel.loss([examples[i][0] for i in rows], [targets[i] for i in rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - begin)
    model.eval()

    queries = list(dataset.queries.values())[: args.queries]
    begin = time.perf_counter()
    for query in queries:
        constraint = IndexConstraint(fm, keymodel.eos_id, vocab_size=keymodel.vocab_size)
        recorder = KeyRecorder(15, keymodel.eos_id, keymodel.pad_id)
        keymodel.generate([f"{query} || body"], num_beams=15, max_new_tokens=10, allowed=constraint, recorder=recorder)
    generate_ms = (time.perf_counter() - begin) / len(queries) * 1000
    return {"backbone": backbone, "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "load_seconds": round(load_seconds, 1), "corpus_tokens": fm.n_tokens, "index_seconds": round(index_seconds, 1),
            "train_seconds_per_step": round(sum(times) / len(times), 3), "constrained_beam_ms_per_query": round(generate_ms, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/bench_keymodel.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(shared_data("scifact"), "test")
    rng = random.Random(0)
    examples = supervised_examples(load_dataset(shared_data("scifact"), "train"), DEFAULTS, rng)
    examples += unsupervised_examples(dataset.corpus, DEFAULTS, rng)
    rng.shuffle(examples)
    rows = [measure(backbone, dataset, examples, args) for backbone in BACKBONES]
    print(f"\n{'backbone':14s} {'params M':>9s} {'corpus tok':>11s} {'s/step':>7s} {'ms/query':>9s}")
    for r in rows:
        print(f"{r['backbone']:14s} {r['parameters_m']:9.1f} {r['corpus_tokens']:11d} "
              f"{r['train_seconds_per_step']:7.2f} {r['constrained_beam_ms_per_query']:9.1f}")
    report = {"command": " ".join([sys.executable, *sys.argv]), "machine": platform.processor() or platform.machine(),
              "threads": args.threads, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
