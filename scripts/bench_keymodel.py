#!/usr/bin/env python
"""What a SEAL query costs with each key model on this CPU, and what reading the prompt once saves.

For each key model (`name[:layout[:option=value;...]]`, e.g. `bert2bert`, `smollm2-135m:oneshot`,
`smollm2-135m:oneshot:beam=5;fully_score=200;dtype=bfloat16` with SEAL search options), on SciFact: parameters,
the corpus FM-index under its tokenizer (tokens, seconds), seconds per training step (batch 16 of the SEAL
recipe's examples, after 2 warm-up steps; full fine-tuning), then per query:
- body decoding (15 beams, 10 tokens, FM-index constrained) with Hugging Face `generate` + `KeyRecorder`,
  which expands every prompt to 15 beams and re-reads it, against `diverse_beam_search` (one group) on
  the prompt read once (`KeyModel.context` + `extend`); the two must find the same keys;
- a whole SEAL search (body and title keys, query n-grams, unigrams, scoring), queries in batches of 8.
The models are untrained: this measures cost, not quality. Both kinds of timing run interleaved per query.
Prints a table, writes JSON.

    .venv/bin/python scripts/bench_keymodel.py                                   # about 6 min on 2 idle cores
    .venv/bin/python scripts/bench_keymodel.py --models "smollm2-135m:oneshot:beam=5;dtype=bfloat16" --steps 0
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
from retrieval import build_retriever, load_dataset
from retrieval.data import shared_data
from retrieval.generative.constrained import IndexConstraint, KeyRecorder, diverse_beam_search
from training.seal import DEFAULTS, supervised_examples, unsupervised_examples


def parse_option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def decode_both(keymodel, fm, query: str) -> tuple[float, float, bool]:
    """(ms with generate, ms read-once, same keys) for one query's body decoding."""
    source = [f"{query} || body"]
    started = time.perf_counter()
    recorder = KeyRecorder(15, keymodel.eos_id, keymodel.pad_id)
    keymodel.generate(source, num_beams=15, max_new_tokens=10, recorder=recorder,
                      allowed=IndexConstraint(fm, keymodel.eos_id, vocab_size=keymodel.vocab_size))
    generate_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    keys = diverse_beam_search(keymodel, source, num_beams=15, max_new_tokens=10,
                               allowed=IndexConstraint(fm, keymodel.eos_id, vocab_size=keymodel.vocab_size))
    cached_ms = (time.perf_counter() - started) * 1000
    same = set(keys[0]) == set(recorder.keys[0]) and all(abs(keys[0][k] - v) < 1e-3 for k, v in recorder.keys[0].items())
    return generate_ms, cached_ms, same


def measure(spec: str, dataset, examples, args) -> dict:
    name, _, rest = spec.partition(":")
    layout, _, options = rest.partition(":")
    options = dict(parse_option(o) for o in options.split(";") if o)
    started = time.perf_counter()
    seal = build_retriever("seal", model=name, prompt=layout or None, **options)
    keymodel = seal.keymodel
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    seal.index(dataset.corpus)
    index_seconds = time.perf_counter() - started

    step_times = []
    if args.steps:
        model = keymodel.model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        targets = [keymodel.tokens(t)[:31] + [keymodel.eos_id] for _, t in examples]
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for step in range(args.steps + 2):
            rows = range(step * 16, step * 16 + 16)
            begin = time.perf_counter()
            loss = keymodel.loss([examples[i][0] for i in rows], [targets[i] for i in rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= 2:
                step_times.append(time.perf_counter() - begin)
        model.load_state_dict(state)  # back to the untrained weights for the search timings
        model.eval()

    queries = list(dataset.queries.values())[: args.queries]
    keymodel.set_dtype(seal.config["dtype"])
    decodes = [decode_both(keymodel, seal.fm, q) for q in queries]
    started = time.perf_counter()
    seal.search({str(i): q for i, q in enumerate(queries)}, k=100)
    search_ms = (time.perf_counter() - started) / len(queries) * 1000
    return {"model": spec, "search_options": options, "parameters_m": round(sum(p.numel() for p in keymodel.model.parameters()) / 1e6, 1),
            "load_seconds": round(load_seconds, 1), "corpus_tokens": seal.fm.n_tokens, "index_seconds": round(index_seconds, 1),
            "train_seconds_per_step": round(sum(step_times) / len(step_times), 3) if step_times else None,
            "body_decode_ms_generate": round(sum(d[0] for d in decodes) / len(decodes), 1),
            "body_decode_ms_read_once": round(sum(d[1] for d in decodes) / len(decodes), 1),
            "same_keys": all(d[2] for d in decodes), "seal_search_ms_per_query": round(search_ms, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="bert2bert,smollm2-135m:oneshot", help="comma-separated name[:layout]")
    parser.add_argument("--steps", type=int, default=4, help="training steps to time (0: none)")
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/bench_keymodel.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(shared_data("scifact"), "test")
    rng = random.Random(0)
    examples = supervised_examples(load_dataset(shared_data("scifact"), "train"), DEFAULTS, rng)
    examples += unsupervised_examples(dataset.corpus, DEFAULTS, rng)
    rng.shuffle(examples)
    rows = [measure(spec, dataset, examples, args) for spec in args.models.split(",")]
    print(f"\n{'model':22s} {'params M':>9s} {'s/step':>7s} {'generate ms':>12s} {'read-once ms':>13s} {'same':>5s} {'SEAL ms/q':>10s}")
    for r in rows:
        step = f"{r['train_seconds_per_step']:7.2f}" if r["train_seconds_per_step"] else "      -"
        print(f"{r['model']:22s} {r['parameters_m']:9.1f} {step} {r['body_decode_ms_generate']:12.1f} "
              f"{r['body_decode_ms_read_once']:13.1f} {str(r['same_keys']):>5s} {r['seal_search_ms_per_query']:10.1f}")
    write_json(Path(args.out), {"command": " ".join([sys.executable, *sys.argv]), "threads": args.threads,
                                "machine": machine_info(("torch", "transformers")), "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
