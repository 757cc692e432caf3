"""Encoding speed of a 2D Matryoshka sub-model per layer count (retrieval.dense.matryoshka2d).

Times the real `Matryoshka2dEncoder` (only the first `layers` transformer layers run) on a fixed sample of
SciFact documents, layer counts interleaved over repeats (forward, then backward order) so that noise from
other jobs on the machine spreads over all of them; reports the best and median docs/s and the speed-up
against all layers. The dimension cut happens after pooling and costs nothing measurable, so it is not
varied here. Writes JSON and prints a table.

    python scripts/bench_matryoshka2d.py --model results/matryoshka2d/model --docs 256 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from indexes.manifest import atomic_write


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="registry name, model folder or saved matryoshka2d module")
    parser.add_argument("--data", default="../shared/data/scifact")
    parser.add_argument("--docs", type=int, default=256, help="documents in the fixed sample (the corpus's first N)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the machine is shared)")
    parser.add_argument("--out", default="results/matryoshka2d/bench.json")
    args = parser.parse_args(argv)

    import torch

    from retrieval import load_corpus
    from retrieval.dense.encoders import load_encoder
    from retrieval.dense.matryoshka2d import Matryoshka2dEncoder

    torch.set_num_threads(args.threads)
    texts = [doc.full_text for doc in load_corpus(args.data)][: args.docs]
    base = load_encoder(args.model, batch_size=args.batch_size, device="cpu")
    top = Matryoshka2dEncoder(base).num_layers
    encoders = {k: Matryoshka2dEncoder(base, layers=k) for k in range(1, top + 1)}
    encoders[top].encode_documents(texts[:8], progress=False)  # warm-up: first-call allocations

    seconds: dict[int, list[float]] = {k: [] for k in encoders}
    for repeat in range(args.repeats):
        order = list(encoders) if repeat % 2 == 0 else list(reversed(encoders))
        for k in order:
            start = time.perf_counter()
            encoders[k].encode_documents(texts, progress=False)
            seconds[k].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1}/{args.repeats} layers={k}: {seconds[k][-1]:.1f} s", flush=True)

    rows = []
    for k, times in seconds.items():
        best, median = min(times), statistics.median(times)
        rows.append({"layers": k, "seconds": [round(t, 3) for t in times], "docs_per_s_best": len(texts) / best,
                     "docs_per_s_median": len(texts) / median,
                     "speedup_best": min(seconds[top]) / best, "speedup_median": statistics.median(seconds[top]) / median})
    report = {
        "command": "python scripts/bench_matryoshka2d.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "model": args.model, "docs": len(texts), "repeats": args.repeats, "batch_size": args.batch_size,
        "threads": args.threads, "max_seq_length": base.max_length, "rows": rows,
    }
    print(f"\n{len(texts)} SciFact docs, batch {args.batch_size}, {args.threads} thread(s), {args.repeats} repeats")
    print(f"{'layers':>6} {'docs/s best':>12} {'docs/s median':>14} {'speed-up best':>14} {'speed-up median':>16}")
    for r in rows:
        print(f"{r['layers']:>6} {r['docs_per_s_best']:12.1f} {r['docs_per_s_median']:14.1f} {r['speedup_best']:14.2f}x {r['speedup_median']:15.2f}x")
    out = Path(args.out)
    atomic_write(out, json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
