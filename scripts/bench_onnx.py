#!/usr/bin/env python
"""ONNX backend benchmark: documents per second, agreement with torch, and SciFact nDCG@10, torch vs ONNX.

Encoders (MiniLM, 2D Matryoshka sub-model with `--layers` layers too), each in three backends:
  torch (sentence-transformers, the baseline), onnx fp32, onnx int8 (dynamic quantisation).
Per encoder and backend:
  - docs/s: encoding `--docs` SciFact documents (title + abstract, the model's 256-token cut), best of
    `--repeats` passes after one warm-up pass, same batch size and thread count;
  - cosine to the torch vectors of the same documents (mean and minimum);
  - SciFact test nDCG@10 of a Flat index over the whole corpus (pytrec_eval), with `--ndcg` (the full
    model only: plain MiniLM cut to fewer layers is not a trained 2D Matryoshka model).

    .venv/bin/python scripts/bench_onnx.py --docs 300 --repeats 2 --layers 3 --ndcg   # ~12 min on 2 cores
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench_common import machine_info, write_json

PACKAGES = ("torch", "onnxruntime", "onnx", "sentence-transformers", "dengen")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--layers", type=int, default=None, help="also a 2D Matryoshka sub-model with this many layers")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ndcg", action="store_true", help="also SciFact test nDCG@10 per backend (whole corpus)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_onnx.json"))
    return parser.parse_args(argv)


def encoder_for(model: str, layers, backend: str, quantize, batch_size: int):
    from retrieval.dense.retriever import DenseRetriever

    retriever = DenseRetriever(model=model, layers=layers, backend=backend, quantize=quantize, batch_size=batch_size)
    return retriever, retriever.encoder


def docs_per_second(encoder, texts: list[str], repeats: int) -> tuple[float, np.ndarray]:
    vectors = encoder.encode_documents(texts, progress=False)  # warm-up (and the vectors compared)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        encoder.encode_documents(texts, progress=False)
        best = min(best, time.perf_counter() - started)
    return len(texts) / best, vectors


def main(argv: list[str] | None = None) -> dict:
    import torch

    from eval.metrics import evaluate_run
    from retrieval.data import load_dataset, shared_data

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    test = load_dataset(shared_data() / "scifact", "test")
    texts = [d.full_text for d in list(test.corpus)[: args.docs]]
    result = {"command": shlex.join([sys.executable, *sys.argv]), "date": datetime.now(timezone.utc).isoformat(),
              "machine": machine_info(PACKAGES, threads=args.threads), "docs": len(texts), "rows": []}
    for layers in [None] + ([args.layers] if args.layers else []):
        reference = None
        for backend, quantize in (("torch", None), ("onnx", None), ("onnx", "int8")):
            retriever, encoder = encoder_for(args.model, layers, backend, quantize, args.batch_size)
            speed, vectors = docs_per_second(encoder, texts, args.repeats)
            row = {"model": args.model, "layers": layers, "backend": backend, "quantize": quantize,
                   "docs_per_second": round(speed, 1)}
            if reference is None:
                reference = vectors
            cosine = np.sum(vectors * reference, axis=1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))
            row.update(cosine_mean=round(float(cosine.mean()), 6), cosine_min=round(float(cosine.min()), 6))
            if args.ndcg and layers is None:  # a plain MiniLM cut to 3 layers is not a trained 2D model
                retriever.index(test.corpus)
                row["ndcg@10"] = round(evaluate_run(test.qrels, retriever.search(test.queries, k=100), ks=[10])["ndcg@10"], 4)
            base = next((r for r in result["rows"] if r["layers"] == layers and r["backend"] == "torch"), row)
            row["speedup_vs_torch"] = round(row["docs_per_second"] / base["docs_per_second"], 2)
            result["rows"].append(row)
            print({k: v for k, v in row.items() if k != "model"}, flush=True)
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    write_json(args.out, result)
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
