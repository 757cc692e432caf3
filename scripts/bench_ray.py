#!/usr/bin/env python
"""Indexing on Ray against the same work in this process, in one run: dense encoding (Ray Data actors,
`retrieval.ray_engine.encode_on_ray`) and FM-index shard builds (Ray tasks, `build_fm_on_ray`).

Baselines: `encode_documents` of the same encoder here (torch on all cores) and `ShardedFMIndex.build`
with the same shards here. Ray's start (or joining `--ray-address`) is timed apart from the work. Checks
that the results agree: vectors (max |difference|, least cosine) and FM-index shards (identical arrays).
Writes JSON.

    .venv/bin/python scripts/bench_ray.py                              # 1,000 SciFact documents, 2 workers
    .venv/bin/python scripts/bench_ray.py --docs 200 --out /tmp/ray.json
    RAY_AUTH_MODE=token .venv/bin/python scripts/bench_ray.py --ray-address 127.0.0.1:6379   # a started cluster
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
from bench_common import machine_info, minilm_tokenizer, timed, write_json

from retrieval.data import load_dataset, shared_data

PACKAGES = ("ray", "torch", "sentence-transformers", "faiss-cpu", "pydivsufsort", "wavelet-matrix", "dengen")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1000, help="first N SciFact documents (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="encoder actors and FM-index shards (default: %(default)s)")
    parser.add_argument("--spec", default="dense:model=minilm", help="dense retriever spec (default: %(default)s)")
    parser.add_argument("--ray-address", default=None, help="join this cluster instead of starting a local Ray")
    parser.add_argument("--out", type=Path, default=Path("results/bench_ray.json"))
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from indexes.fm_shards import ShardedFMIndex
    from retrieval.ray_engine import build_fm_on_ray, encode_on_ray, ray_session
    from retrieval.spec import parse_spec

    machine = machine_info(PACKAGES)
    corpus = load_dataset(shared_data("scifact")).corpus
    texts = [d.full_text for d in corpus][: args.docs]
    retriever = parse_spec(args.spec)
    retriever.encoder.encode_documents(texts[:8], progress=False)  # the model is loaded before timing
    local_vectors, local_s = timed(lambda: retriever.encoder.encode_documents(texts, progress=False))
    docs = [np.asarray(ids, dtype=np.int64) for ids in minilm_tokenizer()(texts, add_special_tokens=False)["input_ids"]]
    local_fm, local_fm_s = timed(lambda: ShardedFMIndex.build(docs, args.workers))

    started = time.perf_counter()
    with ray_session(args.ray_address) as ray:
        start_s = time.perf_counter() - started
        resources = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "memory")}
        (ray_vectors, workers), ray_s = timed(lambda: encode_on_ray(retriever.config, texts, workers=args.workers))
        ray_fm, ray_fm_s = timed(lambda: build_fm_on_ray(docs, args.workers))

    cosines = np.sum(local_vectors * ray_vectors, axis=1) / (
        np.linalg.norm(local_vectors, axis=1) * np.linalg.norm(ray_vectors, axis=1))
    same_fm = all(np.array_equal(getattr(a, name), getattr(b, name))
                  for a, b in zip(local_fm.shards, ray_fm.shards) for name in a.ARRAYS)
    result = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine, "spec": args.spec, "docs": len(texts), "workers": workers,
        "ray_address": args.ray_address, "ray_cluster": resources, "ray_start_seconds": start_s,
        "encode": {"local_seconds": local_s, "ray_seconds": ray_s, "local_docs_per_s": len(texts) / local_s,
                   "ray_docs_per_s": len(texts) / ray_s, "max_abs_difference": float(np.abs(local_vectors - ray_vectors).max()),
                   "min_cosine": float(cosines.min())},
        "fmindex": {"tokens": int(sum(d.size for d in docs)), "shards": len(ray_fm.shards), "local_seconds": local_fm_s,
                    "ray_seconds": ray_fm_s, "identical_arrays": same_fm},
    }
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    write_json(args.out, result)
    e, f = result["encode"], result["fmindex"]
    print(f"{len(texts)} docs, {workers} workers; Ray start {start_s:.1f} s")
    print(f"encode: here {e['local_seconds']:.1f} s ({e['local_docs_per_s']:.1f} docs/s), Ray {e['ray_seconds']:.1f} s "
          f"({e['ray_docs_per_s']:.1f} docs/s); max |diff| {e['max_abs_difference']:.2e}, min cosine {e['min_cosine']:.6f}")
    print(f"fm-index: {f['tokens']} tokens in {f['shards']} shards: here {f['local_seconds']:.2f} s, Ray {f['ray_seconds']:.2f} s, "
          f"identical arrays: {f['identical_arrays']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
