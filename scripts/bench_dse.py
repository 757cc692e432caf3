"""Scoring-time speed-up of the DSE student (bi-encoder) over its cross-encoder teacher.

Task (the paper's scenario, Barkan et al. 2020, arXiv:1908.05161): rank 1 query sentence against 1,000
candidate sentences (distinct STS-B test sentences).
  - cross-encoder: 1,000 (query, candidate) forward passes through the teacher, batched.
  - bi-encoder, candidates indexed: encode the query once, one dot product against 1,000 precomputed
    candidate vectors, sort. This is the case DSE is built for.
  - bi-encoder, nothing precomputed: encode the 1,000 candidates too (an upper bound on its cost).
Same torch thread count for all, one warm-up call each, then `--repeats` timed runs; medians reported.
Also reports how often the student's top 10 agrees with the teacher's (overlap@10) for the query.

    python scripts/bench_dse.py --teacher results/dse/teacher --student results/dse/student
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from indexes.manifest import atomic_write


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up (allocations, lazy init)
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="results/dse/teacher")
    parser.add_argument("--student", default="results/dse/student")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for every method")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs / sentences per forward pass")
    parser.add_argument("--out", default="results/dse/bench.json")
    args = parser.parse_args(argv)

    import torch

    from eval.sts import load_sts_pairs
    from retrieval.dense.dse import CrossEncoderScorer
    from retrieval.dense.encoders import load_encoder

    torch.set_num_threads(args.threads)
    sentences = list(dict.fromkeys(s for p in load_sts_pairs("stsbenchmark", "test") for s in (p.sentence1, p.sentence2)))
    query, candidates = sentences[0], sentences[1 : args.candidates + 1]
    if len(candidates) < args.candidates:
        raise SystemExit(f"only {len(candidates)} distinct candidate sentences")
    teacher = CrossEncoderScorer.load(args.teacher, batch_size=args.batch_size)
    student = load_encoder(args.student, batch_size=args.batch_size, device="cpu")

    def cross_encoder():
        return teacher.score([query] * len(candidates), candidates)

    doc_vectors = student.encode_documents(candidates, progress=False)

    def bi_encoder_indexed():
        q = student.encode_queries([query])[0]
        scores = doc_vectors @ q
        return scores, np.argsort(-scores)

    def bi_encoder_full():
        docs = student.encode_documents(candidates, progress=False)
        scores = docs @ student.encode_queries([query])[0]
        return scores, np.argsort(-scores)

    ce_seconds, ce_scores = timed(cross_encoder, args.repeats)
    indexed_seconds, (bi_scores, _) = timed(bi_encoder_indexed, max(args.repeats, 20))
    full_seconds, _ = timed(bi_encoder_full, args.repeats)

    top_teacher = set(np.argsort(-ce_scores)[:10].tolist())
    top_student = set(np.argsort(-bi_scores)[:10].tolist())
    rows = [
        {"method": "cross-encoder (teacher), 1,000 pairs", "seconds": ce_seconds, "speedup": 1.0},
        {"method": "bi-encoder (student), candidates indexed", "seconds": indexed_seconds, "speedup": ce_seconds / indexed_seconds},
        {"method": "bi-encoder (student), candidates encoded too", "seconds": full_seconds, "speedup": ce_seconds / full_seconds},
    ]
    report = {
        "command": "python scripts/bench_dse.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "query": query,
        "candidates": len(candidates),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "rows": rows,
        "top10_overlap_student_vs_teacher": len(top_teacher & top_student) / 10,
        "teacher": str(args.teacher),
        "student": str(args.student),
    }

    print(f"rank 1 query against {len(candidates)} STS-B test sentences; torch threads {args.threads}; "
          f"median of {args.repeats} (indexed: {max(args.repeats, 20)}) runs; load average {report['load_average_1min_at_end']}")
    print(f"{'method':48} {'seconds':>10} {'speed-up':>10}")
    for row in rows:
        print(f"{row['method']:48} {row['seconds']:10.4f} {row['speedup']:9.1f}x")
    print(f"top-10 overlap, student vs teacher: {report['top10_overlap_student_vs_teacher']:.1f}")
    out = Path(args.out)
    atomic_write(out, json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
